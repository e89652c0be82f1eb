//! Dependency graphs of entity types and the stages a run executes.
//!
//! An edge `order_line -> product` says "an order line needs its product":
//! products must exist in the target before order lines that reference them
//! are written. [`DependencyGraph::stages`] runs Kahn's algorithm level by
//! level, so every type in stage *k* depends only on types in stages before
//! *k*, and the types of one stage may sync concurrently. Inside a stage the
//! order is alphabetical, so the same graph always gives the same plan.
//!
//! A self-reference (`account.parent_id -> account`) is not a cycle between
//! stages: the record is written first and the reference patched once its
//! target exists, so the plan lists it as a deferred reference. A real cycle
//! stops planning with the cycle path.
//!
//! Pure: graphs in, plans out. Reading graph files is the caller's job.

use petgraph::Direction as EdgeDirection;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The graph has a cycle; `path` lists it in dependency order with the
    /// first type repeated at the end (`order -> invoice -> order`).
    #[error("dependency cycle: {}", path.join(" -> "))]
    Cycle { path: Vec<String> },
}

/// A directed graph of entity types; an edge goes from a type to a type it
/// depends on.
#[derive(Clone, Debug, Default)]
pub struct DependencyGraph {
    graph: DiGraph<String, ()>,
    nodes: BTreeMap<String, NodeIndex>,
}

/// The types of one stage, alphabetical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// 1-based, as printed.
    pub number: usize,
    pub entity_types: Vec<String>,
}

/// A dependency of a type on itself: its records are written first and the
/// reference is patched afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredReference {
    pub entity_type: String,
}

/// The order a run syncs entity types in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub stages: Vec<Stage>,
    pub deferred: Vec<DeferredReference>,
}

impl Plan {
    /// The stage number of `entity_type`, if it is planned.
    pub fn stage_of(&self, entity_type: &str) -> Option<usize> {
        self.stages
            .iter()
            .find(|s| s.entity_types.iter().any(|t| t == entity_type))
            .map(|s| s.number)
    }
}

impl fmt::Display for Plan {
    /// One line per stage (`stage 1: account, product`), then one line per
    /// deferred self-reference.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for stage in &self.stages {
            writeln!(f, "stage {}: {}", stage.number, stage.entity_types.join(", "))?;
        }
        for d in &self.deferred {
            writeln!(
                f,
                "deferred: {0} -> {0} (written first, reference patched once its target exists)",
                d.entity_type
            )?;
        }
        Ok(())
    }
}

impl DependencyGraph {
    /// A graph from `(type, dependencies)` pairs; a dependency that is not
    /// listed as a type of its own becomes one.
    pub fn from_dependencies<'a, I, D>(entries: I) -> DependencyGraph
    where
        I: IntoIterator<Item = (&'a str, D)>,
        D: IntoIterator<Item = &'a str>,
    {
        let mut g = DependencyGraph::default();
        for (entity, deps) in entries {
            g.add_entity(entity);
            for dep in deps {
                g.add_dependency(entity, dep);
            }
        }
        g
    }

    /// The graph that ships with the engine, for the common CDM types.
    pub fn builtin_default() -> DependencyGraph {
        DependencyGraph::from_dependencies([
            ("account", vec!["account"]),
            ("contact", vec!["account"]),
            ("product", vec![]),
            ("order", vec!["account", "contact"]),
            ("order_line", vec!["order", "product"]),
            ("invoice", vec!["account", "order"]),
            ("payment", vec!["invoice"]),
        ])
    }

    /// Adds a type with no dependencies, if it is not there yet.
    pub fn add_entity(&mut self, entity: &str) -> NodeIndex {
        if let Some(&ix) = self.nodes.get(entity) {
            return ix;
        }
        let ix = self.graph.add_node(entity.to_owned());
        self.nodes.insert(entity.to_owned(), ix);
        ix
    }

    /// Records that `entity` depends on `dependency` (adding either if new).
    pub fn add_dependency(&mut self, entity: &str, dependency: &str) {
        let from = self.add_entity(entity);
        let to = self.add_entity(dependency);
        self.graph.update_edge(from, to, ());
    }

    /// Removes a type and every edge to or from it.
    pub fn remove_entity(&mut self, entity: &str) {
        // Rebuilding keeps node indices dense and the name map true.
        let rebuilt = DependencyGraph::from_dependencies(
            self.entries()
                .into_iter()
                .filter(|&(e, _)| e != entity)
                .map(|(e, deps)| (e, deps.into_iter().filter(move |&d| d != entity))),
        );
        *self = rebuilt;
    }

    /// Replaces the dependencies of `entity` with `dependencies`.
    pub fn set_dependencies(&mut self, entity: &str, dependencies: &[&str]) {
        let mut rebuilt =
            DependencyGraph::from_dependencies(self.entries().into_iter().filter(|&(e, _)| e != entity));
        rebuilt.add_entity(entity);
        for dep in dependencies {
            rebuilt.add_dependency(entity, dep);
        }
        *self = rebuilt;
    }

    /// Each type with its sorted dependencies, sorted by type.
    pub fn entries(&self) -> Vec<(&str, Vec<&str>)> {
        self.nodes
            .iter()
            .map(|(name, &ix)| {
                let mut deps: Vec<&str> = self
                    .graph
                    .neighbors_directed(ix, EdgeDirection::Outgoing)
                    .map(|d| self.graph[d].as_str())
                    .collect();
                deps.sort_unstable();
                (name.as_str(), deps)
            })
            .collect()
    }

    /// True when the graph has the type.
    pub fn contains(&self, entity: &str) -> bool {
        self.nodes.contains_key(entity)
    }

    /// True when `entity` directly depends on `dependency`.
    pub fn depends_on(&self, entity: &str, dependency: &str) -> bool {
        match (self.nodes.get(entity), self.nodes.get(dependency)) {
            (Some(&a), Some(&b)) => self.graph.contains_edge(a, b),
            _ => false,
        }
    }

    /// The subgraph on `keep`: types outside it and their edges are dropped.
    pub fn restricted_to(&self, keep: &BTreeSet<&str>) -> DependencyGraph {
        DependencyGraph::from_dependencies(
            self.entries()
                .into_iter()
                .filter(|(e, _)| keep.contains(e))
                .map(|(e, deps)| (e, deps.into_iter().filter(|d| keep.contains(d)))),
        )
    }

    /// Kahn's algorithm, one level at a time.
    pub fn stages(&self) -> Result<Plan, PlanError> {
        let mut plan = Plan::default();
        // Remaining dependencies of each type, not counting itself.
        let mut pending: BTreeMap<&str, usize> = BTreeMap::new();
        for (name, &ix) in &self.nodes {
            let deps = self
                .graph
                .neighbors_directed(ix, EdgeDirection::Outgoing)
                .filter(|&d| {
                    if d == ix {
                        plan.deferred.push(DeferredReference {
                            entity_type: name.clone(),
                        });
                        false
                    } else {
                        true
                    }
                })
                .count();
            pending.insert(name.as_str(), deps);
        }
        let mut ready: Vec<&str> = pending
            .iter()
            .filter(|&(_, &n)| n == 0)
            .map(|(&e, _)| e)
            .collect();
        while !ready.is_empty() {
            for entity in &ready {
                pending.remove(entity);
            }
            let mut next = BTreeSet::new();
            for entity in &ready {
                let ix = self.nodes[*entity];
                for dependent in self.graph.neighbors_directed(ix, EdgeDirection::Incoming) {
                    let name = self.graph[dependent].as_str();
                    if let Some(n) = pending.get_mut(name) {
                        *n -= 1;
                        if *n == 0 {
                            next.insert(name);
                        }
                    }
                }
            }
            plan.stages.push(Stage {
                number: plan.stages.len() + 1,
                entity_types: ready.iter().map(|s| s.to_string()).collect(),
            });
            ready = next.into_iter().collect();
        }
        if pending.is_empty() {
            Ok(plan)
        } else {
            Err(PlanError::Cycle {
                path: self.find_cycle(&pending.keys().copied().collect()),
            })
        }
    }

    /// A cycle among `stuck`, the types Kahn's algorithm could not place.
    /// Each of them still waits on another stuck type, so walking from one to
    /// a stuck dependency must revisit a type; the walk from that type on is
    /// the cycle. Choices are alphabetical, so the answer is reproducible.
    fn find_cycle(&self, stuck: &BTreeSet<&str>) -> Vec<String> {
        let mut walk: Vec<&str> = Vec::new();
        let mut current = *stuck.first().expect("a cycle leaves types unplaced");
        loop {
            if let Some(start) = walk.iter().position(|&e| e == current) {
                let mut path: Vec<String> = walk[start..].iter().map(|s| s.to_string()).collect();
                path.push(current.to_owned());
                return path;
            }
            walk.push(current);
            let ix = self.nodes[current];
            current = self
                .graph
                .neighbors_directed(ix, EdgeDirection::Outgoing)
                .map(|d| self.graph[d].as_str())
                .filter(|d| *d != current && stuck.contains(d))
                .min()
                .expect("a stuck type waits on another stuck type");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(entries: &[(&'static str, &[&'static str])]) -> DependencyGraph {
        DependencyGraph::from_dependencies(entries.iter().map(|(e, d)| (*e, d.iter().copied())))
    }

    /// Plans `entries` and renders the plan or the error as text.
    fn check(entries: &[(&'static str, &[&'static str])], expect: &str) {
        let got = match graph(entries).stages() {
            Ok(plan) => plan.to_string(),
            Err(e) => format!("{e}\n"),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn empty_graph_has_no_stages() {
        check(&[], "");
    }

    #[test]
    fn chain() {
        check(
            &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
            "stage 1: a\nstage 2: b\nstage 3: c\n",
        );
    }

    #[test]
    fn diamond() {
        check(
            &[
                ("top", &[]),
                ("left", &["top"]),
                ("right", &["top"]),
                ("bottom", &["left", "right"]),
            ],
            "stage 1: top\nstage 2: left, right\nstage 3: bottom\n",
        );
    }

    #[test]
    fn disconnected_parts_share_stages() {
        check(
            &[
                ("product", &[]),
                ("account", &[]),
                ("contact", &["account"]),
                ("sku", &["product"]),
            ],
            "stage 1: account, product\nstage 2: contact, sku\n",
        );
    }

    #[test]
    fn self_reference_is_deferred_not_a_cycle() {
        check(
            &[("account", &["account"]), ("contact", &["account"])],
            "stage 1: account\nstage 2: contact\n\
             deferred: account -> account (written first, reference patched once its target exists)\n",
        );
    }

    #[test]
    fn two_cycle() {
        check(
            &[("order", &["invoice"]), ("invoice", &["order"])],
            "dependency cycle: invoice -> order -> invoice\n",
        );
    }

    #[test]
    fn three_cycle_inside_a_larger_graph_reports_only_the_cycle() {
        // `aaa` depends on the cycle but is not part of it; `account` and
        // `product` plan fine; the path must be exactly b -> c -> d -> b.
        check(
            &[
                ("account", &[]),
                ("product", &["account"]),
                ("aaa", &["b"]),
                ("b", &["c", "account"]),
                ("c", &["d"]),
                ("d", &["b", "product"]),
                ("zzz", &["aaa"]),
            ],
            "dependency cycle: b -> c -> d -> b\n",
        );
    }

    #[test]
    fn builtin_default_plan() {
        assert_eq!(
            DependencyGraph::builtin_default().stages().unwrap().to_string(),
            "stage 1: account, product\nstage 2: contact\nstage 3: order\nstage 4: invoice, order_line\n\
             stage 5: payment\n\
             deferred: account -> account (written first, reference patched once its target exists)\n"
        );
    }

    #[test]
    fn editing_a_graph() {
        let mut g = DependencyGraph::builtin_default();
        g.remove_entity("invoice");
        g.set_dependencies("payment", &["order"]);
        g.set_dependencies("order", &["account"]);
        assert!(!g.contains("invoice"));
        assert!(g.depends_on("payment", "order"));
        assert!(!g.depends_on("order", "contact"));
        let keep: BTreeSet<&str> = ["order", "payment", "product"].into();
        assert_eq!(
            g.restricted_to(&keep).stages().unwrap().to_string(),
            "stage 1: order, product\nstage 2: payment\n"
        );
    }

    /// Random DAGs: an edge only from a higher-numbered node to a lower one.
    fn dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
        (1usize..25).prop_flat_map(|n| {
            let edges = proptest::collection::vec((0..n, 0..n), 0..(n * 3));
            (Just(n), edges)
        })
    }

    proptest! {
        #[test]
        fn stages_respect_every_edge_and_match_the_longest_path((n, raw) in dag()) {
            let edges: Vec<(usize, usize)> = raw
                .into_iter()
                .filter(|(a, b)| a != b)
                .map(|(a, b)| (a.max(b), a.min(b)))
                .collect();
            let name = |i: usize| format!("t{i:02}");
            let mut g = DependencyGraph::default();
            for i in 0..n {
                g.add_entity(&name(i));
            }
            for &(a, b) in &edges {
                g.add_dependency(&name(a), &name(b));
            }
            let plan = g.stages().unwrap();
            for &(a, b) in &edges {
                prop_assert!(plan.stage_of(&name(a)).unwrap() > plan.stage_of(&name(b)).unwrap());
            }
            // Longest path (in edges) ending at each node, by increasing index.
            let mut longest = vec![0usize; n];
            for i in 0..n {
                for &(a, b) in &edges {
                    if a == i {
                        longest[i] = longest[i].max(longest[b] + 1);
                    }
                }
            }
            prop_assert_eq!(plan.stages.len(), longest.iter().max().unwrap() + 1);
            let planned: usize = plan.stages.iter().map(|s| s.entity_types.len()).sum();
            prop_assert_eq!(planned, n);
            for stage in &plan.stages {
                let mut sorted = stage.entity_types.clone();
                sorted.sort();
                prop_assert_eq!(&sorted, &stage.entity_types);
            }
        }
    }
}
