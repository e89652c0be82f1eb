//! The `syncd` command line.
//!
//! Each verb reads its inputs, calls the library and prints; exit status 0
//! means success, 1 means the input was refused (a cycle, an invalid
//! definition), 2 means the command line itself was wrong.

use crate::cmd;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use syncd_core::ids::TenantId;
use syncd_core::plan::DependencyGraph;
use syncd_core::workflow::{self, DefinitionErrors, Workflow};

#[derive(Parser)]
#[command(name = "syncd", version, about = "A durable, bidirectional data-sync engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The state store (`sqlite://...` or `postgres://...`); else
    /// SYNCD_DATABASE_URL, else sqlite://syncd.db here (said on stderr).
    #[arg(long, global = true, value_name = "URL")]
    db: Option<String>,
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
        /// Also connect to every system of every tenant (or `--tenant`) and
        /// check tables, columns and rules against them; writes nothing.
        #[arg(long)]
        connect: bool,
        /// With --connect: only this tenant's systems.
        #[arg(long, requires = "connect")]
        tenant: Option<String>,
    },
    /// Run a sync now, to its end or to suspension, and print a summary.
    Run {
        /// A workflow definition (workflows/*.toml).
        workflow: PathBuf,
        /// The tenant to sync for.
        #[arg(long)]
        tenant: String,
        /// Records per page (each page is one checkpoint).
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        /// Entity types of one stage synced at once; one when a system or
        /// the state store is SQLite [default: the number of cores].
        #[arg(long, value_name = "N")]
        parallel: Option<usize>,
    },
    /// Fire schedules and execute runs until SIGTERM or SIGINT.
    Worker {
        /// Where the workflow definitions are.
        #[arg(long, default_value = "workflows")]
        workflows: PathBuf,
        /// How often to look for due schedules and runs when idle.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
        /// This worker's name in leases (default: pid and a random suffix).
        #[arg(long)]
        worker_id: Option<String>,
        /// Also serve /metrics (Prometheus text, no token) on this address.
        #[arg(long, value_name = "ADDR")]
        metrics_bind: Option<String>,
    },
    /// Serve the HTTP API for operators and reviewers.
    Serve {
        /// The address to listen on (host:port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// Where the definitions of the integrations whose runs may be
        /// started through the API (`POST /api/runs`) are.
        #[arg(long, default_value = "workflows")]
        workflows: PathBuf,
        /// Also serve /metrics (Prometheus text, no token) on this address;
        /// the API's /metrics needs an admin token.
        #[arg(long, value_name = "ADDR")]
        metrics_bind: Option<String>,
    },
    /// API tokens.
    Tokens {
        #[command(subcommand)]
        verb: TokensVerb,
    },
    /// Look at, resume and cancel runs.
    Runs {
        #[command(subcommand)]
        verb: RunsVerb,
    },
    /// What the workers' schedules fire next.
    Schedules {
        #[command(subcommand)]
        verb: SchedulesVerb,
    },
    /// Review conflicts: list, show, resolve.
    Conflicts {
        #[command(subcommand)]
        verb: ConflictsVerb,
    },
    /// Find where records went in the ID map.
    Mappings {
        #[command(subcommand)]
        verb: MappingsVerb,
    },
    /// Build a CRM and an ERP as SQLite databases and sync them both ways
    /// (its state store is its own, DIR/syncd.db: it takes no `--db`, and
    /// leaves the store SYNCD_DATABASE_URL names alone).
    Demo {
        /// Where the demo databases go.
        #[arg(long, default_value = "demo-data")]
        dir: PathBuf,
    },
    /// Measure throughput and print figures (never run in timed tests).
    Bench {
        #[command(subcommand)]
        what: BenchTarget,
    },
}

#[derive(Subcommand)]
enum TokensVerb {
    /// Create a token scoped to one tenant (or an admin token); prints it once.
    Create {
        /// The tenant whose objects the token sees (and only those).
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        tenant: Option<String>,
        /// A token for every tenant, and for creating and revoking tokens.
        #[arg(long)]
        admin: bool,
        /// Refused after this long (`12h`, `30d`); valid until revoked otherwise.
        #[arg(long, value_name = "INTERVAL")]
        expires_in: Option<String>,
        /// The folder of definitions that must name the tenant.
        #[arg(long, default_value = "workflows")]
        workflows: PathBuf,
        /// Create it even though no definition names the tenant.
        #[arg(long)]
        force: bool,
        /// Who holds it (a reviewer's user id): the API records the
        /// decisions made with it under this name.
        #[arg(long)]
        holder: Option<String>,
    },
    /// Every token: prefix, tenant, created, last used, expiry, revocation
    /// (never the secret).
    List,
    /// Revoke a token, named by its prefix (or id): refused at once.
    Revoke {
        /// The token's prefix (`syncd_1a2b3c4d`, as `tokens list` shows it) or id.
        name: String,
    },
}

/// Whose objects an operator verb sees.
#[derive(clap::Args)]
struct AccessArgs {
    /// Only this tenant's objects.
    #[arg(long)]
    tenant: Option<String>,
    /// An API token (`syncd tokens create`), checked as the API checks it:
    /// the verb sees only the token's tenant [env: SYNCD_TOKEN].
    #[arg(long)]
    token: Option<String>,
}

impl From<AccessArgs> for cmd::Access {
    fn from(a: AccessArgs) -> cmd::Access {
        cmd::Access::new(a.tenant, a.token)
    }
}

#[derive(Subcommand)]
enum RunsVerb {
    /// Runs, newest first.
    List {
        #[command(flatten)]
        access: AccessArgs,
        /// Only runs in this state.
        #[arg(long, value_parser = ["planned", "running", "suspended", "succeeded", "failed", "cancelled"])]
        state: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One run with its steps.
    Show {
        /// The run's id, or its first 4 or more characters (`runs list` shows them).
        run: String,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Apply reviewed resolutions and finish a suspended or interrupted run.
    Resume {
        /// The run's id, or its first 4 or more characters (`runs list` shows them).
        run: String,
        /// Where the run's workflow definition is.
        #[arg(long, default_value = "workflows")]
        workflows: PathBuf,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Cancel an active run.
    Cancel {
        /// The run's id, or its first 4 or more characters (`runs list` shows them).
        run: String,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Let a run held by the mass-deletion brake go on and delete what it
    /// counted; a worker (or `runs resume`) then resumes it.
    ConfirmDeletes {
        /// The run's id (`runs list --state suspended` shows it).
        run: String,
        #[command(flatten)]
        access: AccessArgs,
        /// Who confirms, recorded with the hold.
        #[arg(long, default_value = "operator")]
        by: String,
    },
}

#[derive(Subcommand)]
enum SchedulesVerb {
    /// Every schedule a worker registered, soonest first, with its next tick.
    List {
        #[command(flatten)]
        access: AccessArgs,
    },
}

#[derive(Subcommand)]
enum ConflictsVerb {
    /// Conflicts, oldest first.
    List {
        #[command(flatten)]
        access: AccessArgs,
        /// Which conflicts: waiting for a decision, decided, or both.
        #[arg(long, default_value = "pending", value_parser = ["pending", "resolved", "all"])]
        status: String,
        /// Only conflicts of this entity type.
        #[arg(long)]
        entity: Option<String>,
        /// At most this many conflicts.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One conflict: base, source and target side by side.
    Show {
        /// The conflict's id, or its first 4 or more characters (`conflicts list` shows them).
        conflict: String,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Decide a conflict.
    Resolve {
        /// The conflict's id, or its first 4 or more characters (`conflicts list` shows them).
        conflict: String,
        /// Take every conflicting field from one side.
        #[arg(long, conflicts_with = "values", value_parser = ["source", "target"])]
        take: Option<String>,
        /// A JSON object of field values.
        #[arg(long)]
        values: Option<String>,
        /// The reviewer's user id.
        #[arg(long)]
        by: String,
        #[command(flatten)]
        access: AccessArgs,
    },
}

/// One entity type of one integration; the tenant is `--tenant` or the
/// token's.
#[derive(clap::Args)]
struct ScopeArgs {
    #[command(flatten)]
    access: AccessArgs,
    /// The integration's name (`name` in its definition).
    #[arg(long)]
    integration: String,
    /// The entity type (`account`, `contact`, ...).
    #[arg(long)]
    entity: String,
}

#[derive(Subcommand)]
enum MappingsVerb {
    /// The mapping of one record, by its source or target id.
    Lookup {
        #[command(flatten)]
        scope: ScopeArgs,
        /// The record's id in the source system.
        #[arg(long, conflicts_with = "target_id", required_unless_present = "target_id")]
        source_id: Option<String>,
        /// The record's id in the target system.
        #[arg(long)]
        target_id: Option<String>,
    },
    /// Mappings with a status (failed, stale, ...) and their reasons.
    List {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Mappings in this status: creates in flight or cut off, synced,
        /// failed (with the reason), or stale (gone on one side).
        #[arg(long, default_value = "failed", value_parser = ["pending", "mapped", "failed", "stale"])]
        status: String,
        /// At most this many mappings.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum BenchTarget {
    /// End-to-end one-way sync over three stages, against a bulk copy.
    Sync {
        /// Records to sync (10% accounts, 30% contacts, 60% orders).
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Skip SQLite -> SQLite.
        #[arg(long)]
        no_sqlite: bool,
        /// PostgreSQL server for PostgreSQL -> PostgreSQL (schemas are
        /// created and dropped) [default: postgres://postgres@127.0.0.1:5432/test].
        #[arg(long)]
        postgres_url: Option<String>,
        /// Skip PostgreSQL -> PostgreSQL.
        #[arg(long)]
        no_postgres: bool,
        /// MariaDB or MySQL server for MariaDB -> PostgreSQL (a database is
        /// created and dropped) [default: mysql://root@127.0.0.1:3306/test].
        #[arg(long)]
        mysql_url: Option<String>,
        /// Skip MariaDB -> PostgreSQL.
        #[arg(long)]
        no_mysql: bool,
        /// Instead of the pairs: run one sync a tenant through this many
        /// `syncd worker` processes on the PostgreSQL server, one
        /// measurement per number (e.g. `1,2,4`), and print the total
        /// records per second of each.
        #[arg(long, value_delimiter = ',', value_name = "N,...")]
        workers: Vec<usize>,
        /// Tenants for `--workers`, the records split evenly over them.
        #[arg(long, default_value_t = 8)]
        tenants: usize,
    },
    /// Mapping lookups and transitions of the store, against the raw clients.
    Store {
        /// Mappings to create and look up, in batches of 1,000.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// PostgreSQL to use [default: SYNCD_DATABASE_URL when it is
        /// PostgreSQL, else postgres://postgres@127.0.0.1:5432/test].
        #[arg(long)]
        postgres_url: Option<String>,
        /// Redis to use [default: SYNCD_REDIS_URL, else redis://127.0.0.1:6379].
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// One run's reconciliation pass over a large ID map with some source records gone.
    Reconcile {
        /// Mapped records (rows in each table, mappings in the ID map).
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// Source records deleted before the run.
        #[arg(long, default_value_t = 1_000)]
        gone: usize,
        /// Records per page, as `syncd run --page-size`.
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        /// PostgreSQL to use [default: SYNCD_DATABASE_URL when it is
        /// PostgreSQL, else postgres://postgres@127.0.0.1:5432/test].
        #[arg(long)]
        postgres_url: Option<String>,
    },
    /// API latency under concurrent clients, and scheduler tick-to-run-start latency.
    Api {
        /// Concurrent clients, each with its own keep-alive connection.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Seconds each endpoint is measured, after a second of warm-up.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Scheduler ticks (one a second) to measure; 0 skips the scheduler.
        #[arg(long, default_value_t = 100)]
        ticks: usize,
        /// The worker's idle poll, as `syncd worker --poll-ms`.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
        /// PostgreSQL to use [default: SYNCD_DATABASE_URL when it is
        /// PostgreSQL, else postgres://postgres@127.0.0.1:5432/test].
        #[arg(long)]
        postgres_url: Option<String>,
    },
}

impl From<ScopeArgs> for cmd::mappings::Scope {
    fn from(a: ScopeArgs) -> Self {
        cmd::mappings::Scope {
            access: a.access.into(),
            integration: a.integration,
            entity: a.entity,
        }
    }
}

/// Lets a write to a closed pipe end the process (exit by SIGPIPE, 141 in
/// a shell), as the default action does for every Unix tool; Rust ignores
/// the signal and `println!` then panics. Only for verbs that do nothing
/// but print after their work is done.
fn quiet_on_closed_stdout() {
    #[cfg(target_os = "linux")]
    // SAFETY: restores the default action of one signal before any thread
    // starts; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs on stderr, filtered by `SYNCD_LOG` (default `warn`, the progress of
/// `syncd run` off a terminal, `syncd::progress=info`, and what a worker
/// fires and executes, `syncd_engine::worker=info`): one JSON
/// object a line with `SYNCD_LOG_FORMAT=json` (each with the spans it is
/// in: the run's id, tenant and integration, the step's entity and
/// direction), else text, coloured only on a terminal.
fn init_logs() {
    use std::io::IsTerminal;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("SYNCD_LOG")
            .unwrap_or_else(|_| "warn,syncd::progress=info,syncd_engine::worker=info".into())
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    if std::env::var("SYNCD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter())
            .init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter())
            .init();
    }
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    if let Some(db) = cli.db.clone() {
        cmd::set_db_flag(db);
    }
    // Verbs that only read and print: a closed stdout (`syncd runs list |
    // head`) ends them quietly, as it ends Unix tools, instead of a panic.
    // (Not the verbs that write, which must report a broken connection.)
    if matches!(
        &cli.command,
        Command::Plan { .. }
            | Command::Check { .. }
            | Command::Mappings { .. }
            | Command::Schedules { .. }
            | Command::Runs {
                verb: RunsVerb::List { .. } | RunsVerb::Show { .. }
            }
            | Command::Conflicts {
                verb: ConflictsVerb::List { .. } | ConflictsVerb::Show { .. }
            }
            | Command::Tokens {
                verb: TokensVerb::List
            }
    ) {
        quiet_on_closed_stdout();
    }
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
        Command::Check {
            workflow,
            connect,
            tenant,
        } => check(&workflow, connect, tenant.map(TenantId::from)),
        Command::Run {
            workflow,
            tenant,
            page_size,
            parallel,
        } => cmd::run::run(&workflow, &tenant, page_size, parallel),
        Command::Schedules {
            verb: SchedulesVerb::List { access },
        } => cmd::runs::schedules(access.into()),
        Command::Runs { verb } => match verb {
            RunsVerb::List { access, state, limit } => cmd::runs::list(access.into(), state, limit),
            RunsVerb::Show { run, access } => cmd::runs::show(&run, access.into()),
            RunsVerb::Resume {
                run,
                workflows,
                access,
            } => cmd::runs::resume(&run, &workflows, access.into()),
            RunsVerb::Cancel { run, access } => cmd::runs::cancel(&run, access.into()),
            RunsVerb::ConfirmDeletes { run, access, by } => {
                cmd::runs::confirm_deletes(&run, access.into(), &by)
            }
        },
        Command::Conflicts { verb } => match verb {
            ConflictsVerb::List {
                access,
                status,
                entity,
                limit,
            } => cmd::conflicts::list(access.into(), Some(status), entity, limit),
            ConflictsVerb::Show { conflict, access } => cmd::conflicts::show(&conflict, access.into()),
            ConflictsVerb::Resolve {
                conflict,
                take,
                values,
                by,
                access,
            } => cmd::conflicts::resolve(&conflict, take.as_deref(), values.as_deref(), &by, access.into()),
        },
        Command::Mappings { verb } => match verb {
            MappingsVerb::Lookup {
                scope,
                source_id,
                target_id,
            } => {
                let (side, id) = match (source_id, target_id) {
                    (Some(id), _) => (syncd_core::record::Side::Source, id),
                    (None, Some(id)) => (syncd_core::record::Side::Target, id),
                    (None, None) => unreachable!("clap requires one id"),
                };
                cmd::mappings::lookup(scope.into(), side, &id)
            }
            MappingsVerb::List { scope, status, limit } => cmd::mappings::list(scope.into(), &status, limit),
        },
        // A store named for the demo would be taken for the operator's:
        // the demo rebuilds its own from scratch instead, and says so.
        Command::Demo { .. } if cli.db.is_some() => Err(
            "error: the demo keeps its state in a store of its own (DIR/syncd.db, made anew); it takes no \
             --db"
                .into(),
        ),
        Command::Demo { dir } => cmd::demo::demo(&dir),
        Command::Serve {
            bind,
            workflows,
            metrics_bind,
        } => cmd::serve::serve(&bind, &workflows, metrics_bind.as_deref()),
        Command::Tokens {
            verb:
                TokensVerb::Create {
                    tenant,
                    admin,
                    expires_in,
                    workflows,
                    force,
                    holder,
                },
        } => cmd::serve::create_token(
            tenant,
            admin,
            expires_in.as_deref(),
            &workflows,
            force,
            holder.as_deref(),
        ),
        Command::Tokens {
            verb: TokensVerb::List,
        } => cmd::serve::list_tokens(),
        Command::Tokens {
            verb: TokensVerb::Revoke { name },
        } => cmd::serve::revoke_token(&name),
        Command::Worker {
            workflows,
            poll_ms,
            worker_id,
            metrics_bind,
        } => cmd::worker::worker(&workflows, poll_ms, worker_id, metrics_bind.as_deref()),
        Command::Bench {
            what:
                BenchTarget::Sync {
                    records,
                    postgres_url,
                    workers,
                    tenants,
                    ..
                },
        } if !workers.is_empty() => bench_workers(syncd_bench::workers::WorkersBench {
            records,
            tenants,
            workers,
            postgres_url: postgres_url.unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into()),
        }),
        Command::Bench {
            what:
                BenchTarget::Sync {
                    records,
                    no_sqlite,
                    postgres_url,
                    no_postgres,
                    mysql_url,
                    no_mysql,
                    ..
                },
        } => bench_sync(syncd_bench::sync::SyncBench {
            records,
            sqlite: !no_sqlite,
            postgres_url: (!no_postgres)
                .then(|| postgres_url.unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())),
            mysql_url: (!no_mysql)
                .then(|| mysql_url.unwrap_or_else(|| "mysql://root@127.0.0.1:3306/test".into())),
        }),
        Command::Bench {
            what:
                BenchTarget::Store {
                    records,
                    postgres_url,
                    redis_url,
                },
        } => bench_store(syncd_bench::StoreBench {
            records,
            postgres_url: syncd_bench::StoreBench::postgres_url(postgres_url),
            redis_url: syncd_bench::StoreBench::redis_url(redis_url),
        }),
        Command::Bench {
            what:
                BenchTarget::Reconcile {
                    records,
                    gone,
                    page_size,
                    postgres_url,
                },
        } => bench_reconcile(syncd_bench::reconcile::ReconcileBench {
            records,
            gone,
            page_size,
            postgres_url: syncd_bench::StoreBench::postgres_url(postgres_url),
        }),
        Command::Bench {
            what:
                BenchTarget::Api {
                    clients,
                    seconds,
                    ticks,
                    poll_ms,
                    postgres_url,
                },
        } => bench_api(syncd_bench::api::ApiBench {
            clients,
            window: std::time::Duration::from_secs(seconds),
            ticks,
            poll: std::time::Duration::from_millis(poll_ms),
            postgres_url: syncd_bench::StoreBench::postgres_url(postgres_url),
        }),
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
pub(crate) fn load(
    path: &Path,
    partner: Option<&str>,
) -> Result<(Workflow, DependencyGraph), DefinitionErrors> {
    let (wf, graph) = load_definition(path, partner)?;
    wf.tenants_apart(None, |var| std::env::var(var).ok())?;
    Ok((wf, graph))
}

/// [`load`] without refusing tenants that share a system (`check` reports
/// that with everything else it finds).
fn load_definition(
    path: &Path,
    partner: Option<&str>,
) -> Result<(Workflow, DependencyGraph), DefinitionErrors> {
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
                // A partner without a graph file of its own uses the
                // default, unless other partners here have theirs: then a
                // missing one is more likely a misspelt name.
                Err(e) => {
                    let others = partner_graphs(graph_path.parent().unwrap_or(Path::new(".")));
                    if !others.is_empty() {
                        return Err(one(format!(
                            "cannot read the graph of partner `{name}` at {}: {e}; the partners with a graph \
                             here are {} (a partner that keeps the default graph needs a file saying \
                             `extends = \"default\"`)",
                            graph_path.display(),
                            others.join(", ")
                        )));
                    }
                    DependencyGraph::builtin_default()
                }
            }
        }
    };
    let graph = wf.graph_within(&graph)?;
    Ok((wf, graph))
}

/// The names of the partner graph files in `dir` (`NAME.toml`), sorted.
fn partner_graphs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".toml").map(|n| format!("`{n}`"))
        })
        .collect();
    names.sort();
    names
}

fn plan_workflow(path: &Path, partner: Option<&str>) -> Result<(), String> {
    let (_, graph) = load_definition(path, partner).map_err(|e| e.to_string())?;
    print_plan(&graph)
}

fn check(path: &Path, connect: bool, tenant: Option<TenantId>) -> Result<(), String> {
    let errors = |e: DefinitionErrors| {
        let n = e.0.len();
        format!("{e}\n{n} error{} found", if n == 1 { "" } else { "s" })
    };
    let (wf, graph) = load_definition(path, None).map_err(errors)?;
    graph
        .stages()
        .map_err(|e| format!("{}: error: {e}", path.display()))?;
    let env = |var: &str| std::env::var(var).ok();
    let mut problems: Vec<String> = match wf.tenants_apart(tenant.as_ref(), env) {
        Ok(()) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    };
    let rules = wf.check_rules();
    problems.extend(rules.errors.iter().map(ToString::to_string));
    // Connected, the columns decide (`inspect` reports a rule on a field
    // that is not synced); without, say what only they could confirm.
    if !connect {
        for warning in &rules.warnings {
            eprintln!("warning: {warning}");
        }
    }
    if connect {
        // Each tenant's systems (a definition without tenants: the systems'
        // own URLs, as any tenant would use them).
        let tenants: Vec<TenantId> = match (&tenant, wf.tenants.is_empty()) {
            (Some(t), _) => vec![t.clone()],
            (None, false) => wf.tenants.keys().cloned().collect(),
            (None, true) => vec![TenantId::from("")],
        };
        let runtime = cmd::runtime()?;
        for t in &tenants {
            let found = runtime.block_on(syncd_engine::run::executor::inspect(&wf, t));
            let who = match t.as_str() {
                "" => String::new(),
                t => format!("tenant `{t}`: "),
            };
            problems.extend(found.into_iter().map(|p| format!("{}: {who}{p}", path.display())));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        return Err(format!(
            "{}\n{n} problem{} found",
            problems.join("\n"),
            if n == 1 { "" } else { "s" }
        ));
    }
    let warned = match (connect, rules.warnings.len()) {
        (true, _) => ", every system reached and checked".to_owned(),
        (false, 0) => String::new(),
        (false, 1) => ", 1 warning".to_owned(),
        (false, n) => format!(", {n} warnings"),
    };
    let count = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    // A definition that names no tenants runs for the tenant it is run as.
    let tenants = match wf.tenants.len() {
        0 => "no tenants named (any tenant it is run as)".to_owned(),
        n => count(n, "tenant", "tenants"),
    };
    println!(
        "{}: ok: integration `{}`, {}, {tenants}{warned}",
        path.display(),
        wf.name,
        count(wf.entities.len(), "entity type", "entity types"),
    );
    Ok(())
}

fn bench_sync(bench: syncd_bench::sync::SyncBench) -> Result<(), String> {
    let report = cmd::runtime()?
        .block_on(syncd_bench::sync::run(&bench))
        .map_err(|e| format!("error: {e}"))?;
    print!("{report}");
    Ok(())
}

fn bench_workers(bench: syncd_bench::workers::WorkersBench) -> Result<(), String> {
    let report = cmd::runtime()?
        .block_on(syncd_bench::workers::run(&bench))
        .map_err(|e| format!("error: {e}"))?;
    print!("{report}");
    Ok(())
}

fn bench_store(bench: syncd_bench::StoreBench) -> Result<(), String> {
    if bench.records == 0 {
        return Err("error: --records must be at least 1".into());
    }
    let runtime = cmd::runtime()?;
    println!(
        "syncd bench store: {} records on {} cores",
        bench.records,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let report = runtime
        .block_on(syncd_bench::store(&bench))
        .map_err(|e| format!("error: {e}"))?;
    println!("{report}");
    if !report.all_met() {
        println!("some figures are below their targets");
    }
    Ok(())
}

fn bench_reconcile(bench: syncd_bench::reconcile::ReconcileBench) -> Result<(), String> {
    let runtime = cmd::runtime()?;
    println!(
        "syncd bench reconcile on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let report = runtime
        .block_on(syncd_bench::reconcile::run(&bench))
        .map_err(|e| format!("error: {e}"))?;
    println!("{report}");
    Ok(())
}

fn bench_api(bench: syncd_bench::api::ApiBench) -> Result<(), String> {
    let runtime = cmd::server_runtime()?;
    println!(
        "syncd bench api on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let report = runtime
        .block_on(syncd_bench::api::run(&bench))
        .map_err(|e| format!("error: {e}"))?;
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every argument of every verb says what it is in `--help`.
    #[test]
    fn every_argument_is_described() {
        fn walk(command: &clap::Command, path: &str, undescribed: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !["help", "version"].contains(&id) {
                    undescribed.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() {
                    undescribed.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), undescribed);
            }
        }
        let mut undescribed = Vec::new();
        walk(&Cli::command(), "syncd", &mut undescribed);
        assert!(undescribed.is_empty(), "no help for: {undescribed:?}");
    }
}
