//! The `syncd` command line.
//!
//! Each verb reads its inputs, calls the library and prints; exit status 0
//! means success, 1 means the input was refused (a cycle, an invalid
//! definition), 2 means the command line itself was wrong.

use crate::plan::DependencyGraph;
use crate::workflow::{self, DefinitionErrors, Workflow};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "syncd", version, about = "A durable, bidirectional data-sync engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the stages a sync runs in, or the dependency cycle that stops it.
    Plan {
        /// A workflow definition (workflows/*.toml).
        #[arg(required_unless_present = "graph", conflicts_with = "graph")]
        workflow: Option<PathBuf>,
        /// Plan a bare dependency graph file instead of a workflow.
        #[arg(long)]
        graph: Option<PathBuf>,
        /// Use this partner's graph (workflows/partners/NAME.toml) instead of
        /// the one the workflow names.
        #[arg(long)]
        partner: Option<String>,
    },
    /// Validate a workflow definition and print every error found.
    Check {
        /// A workflow definition (workflows/*.toml).
        workflow: PathBuf,
    },
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan {
            workflow: Some(path),
            partner,
            ..
        } => plan_workflow(&path, partner.as_deref()),
        Command::Plan {
            graph: Some(path), ..
        } => plan_graph(&path),
        Command::Plan { .. } => unreachable!("clap requires a workflow or --graph"),
        Command::Check { workflow } => check(&workflow),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn plan_graph(path: &Path) -> Result<(), String> {
    let graph =
        workflow::parse_graph(&path.display().to_string(), &read(path)?).map_err(|e| e.to_string())?;
    print_plan(&graph)
}

fn print_plan(graph: &DependencyGraph) -> Result<(), String> {
    let plan = graph.stages().map_err(|e| format!("error: {e}"))?;
    print!("{plan}");
    Ok(())
}

/// Loads a workflow and the graph it plans with (its partner's, or the
/// built-in default), checked against each other.
fn load(path: &Path, partner: Option<&str>) -> Result<(Workflow, DependencyGraph), DefinitionErrors> {
    let file = path.display().to_string();
    let one = |reason: String| {
        DefinitionErrors(vec![workflow::DefinitionError {
            file: file.clone(),
            entity: None,
            field: None,
            reason,
        }])
    };
    let text = std::fs::read_to_string(path).map_err(|e| one(format!("cannot read: {e}")))?;
    let wf = Workflow::parse(&file, &text)?;
    let explicit = partner.is_some();
    let graph = match partner.or(wf.partner.as_deref()) {
        None => DependencyGraph::builtin_default(),
        Some(name) => {
            let graph_path = path
                .parent()
                .unwrap_or(Path::new("."))
                .join("partners")
                .join(format!("{name}.toml"));
            match std::fs::read_to_string(&graph_path) {
                Ok(text) => workflow::parse_graph(&graph_path.display().to_string(), &text)?,
                Err(e) if explicit || e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(one(format!(
                        "cannot read the graph of partner `{name}` at {}: {e}",
                        graph_path.display()
                    )));
                }
                // A partner without a graph file of its own uses the default.
                Err(_) => DependencyGraph::builtin_default(),
            }
        }
    };
    let graph = wf.graph_within(&graph)?;
    Ok((wf, graph))
}

fn plan_workflow(path: &Path, partner: Option<&str>) -> Result<(), String> {
    let (_, graph) = load(path, partner).map_err(|e| e.to_string())?;
    print_plan(&graph)
}

fn check(path: &Path) -> Result<(), String> {
    let (wf, graph) = load(path, None).map_err(|e| {
        let n = e.0.len();
        format!("{e}\n{n} error{} found", if n == 1 { "" } else { "s" })
    })?;
    graph
        .stages()
        .map_err(|e| format!("{}: error: {e}", path.display()))?;
    println!(
        "{}: ok: integration `{}`, {} entity types, {} tenants",
        path.display(),
        wf.name,
        wf.entities.len(),
        wf.tenants.len()
    );
    Ok(())
}
