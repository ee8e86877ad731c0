//! The command line: clap definitions and one function per command. This is the only layer that
//! uses `anyhow`; everything below returns typed errors.

mod output;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value as Json};

use crate::{
    config::{Config, DEFAULT_STORE},
    engine::{Engine, RunRequest},
    metrics::Metrics,
    secrets::Masker,
    services::Services,
    store::{runs, Db},
    stream::ops::{self, Op},
    stream::queue::{self, NewCommand},
};

/// Exit code for usage and validation errors.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a run that failed.
pub const EXIT_FAILED: i32 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "runbook",
    version,
    about = "Runbooks as playbooks: Alertmanager webhooks and cron run YAML playbooks against an embedded streaming runtime."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Config file [default: ./runbook.yaml when present].
    #[arg(long, global = true, env = "RUNBOOK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder of playbooks [default: ./runbooks].
    #[arg(long, global = true, env = "RUNBOOK_RUNBOOKS", value_name = "DIR")]
    pub runbooks: Option<PathBuf>,
    /// Store URL: sqlite://FILE or postgres://USER@HOST/DB [default: sqlite://runbook.db].
    #[arg(long, global = true, env = "RUNBOOK_STORE", value_name = "URL")]
    pub store: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the workers, the outbox dispatcher and the HTTP API until SIGTERM/SIGINT.
    Serve {
        /// Address to listen on [default: server.listen from the config, 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<String>,
        /// Serve the API and dispatch the outbox, but run no workers.
        #[arg(long)]
        no_workers: bool,
    },
    /// Run a playbook now and print each step as it happens.
    Run {
        name: String,
        /// A parameter override, `key=value` (repeatable).
        #[arg(long = "param", short = 'p', value_name = "K=V")]
        params: Vec<String>,
        /// Print what would run (rendered SQL with bound values, requests, argv) and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Check playbooks and print every problem as path:line:col: message.
    Validate {
        /// A playbook file or folder [default: the runbooks folder].
        path: Option<PathBuf>,
    },
    /// List playbooks with their triggers.
    List {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Print the JSON Schema of the playbook format (for editors' YAML language servers).
    Schema,
    /// Next fire times of scheduled playbooks.
    Schedule {
        #[arg(long, default_value_t = 3)]
        count: usize,
    },
    /// Recorded runs.
    Runs {
        #[command(subcommand)]
        command: Option<RunsCommand>,
    },
    /// The streaming queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List {
        #[arg(long)]
        playbook: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// One run with every step attempt.
    Show {
        id: i64,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Approve (or with --reject, reject) a run waiting at an `approve` step.
    Approve {
        id: i64,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long, default_value = "cli")]
        actor: String,
    },
    /// Ask a running run to stop before its next step.
    Cancel { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Enqueue one command.
    Enqueue {
        #[arg(long)]
        entity: String,
        #[arg(long = "entity-id")]
        entity_id: String,
        #[arg(long = "type")]
        command_type: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// A synthetic producer: enqueue commands at a steady rate.
    Load {
        #[arg(long = "type")]
        command_type: String,
        /// Commands per second, e.g. `200/s` or `200`.
        #[arg(long)]
        rate: String,
        #[arg(long)]
        duration: crate::duration::Dur,
        #[arg(long, default_value = "user")]
        entity: String,
        /// Distinct entity ids to spread the commands over.
        #[arg(long, default_value_t = 1000)]
        entities: u32,
        #[arg(long, default_value_t = 0)]
        priority: i32,
    },
    /// Depth per priority and status, oldest pending, DLQ by error type, unsent outbox, locks, settings.
    Stats {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Commands in the DLQ.
    List {
        #[arg(long)]
        entity: Option<String>,
        #[arg(long = "error-type")]
        error_type: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Send DLQ commands back to the queue (all, or by entity and/or error type).
    Retry {
        #[arg(long)]
        entity: Option<String>,
        #[arg(long = "error-type")]
        error_type: Option<String>,
    },
    /// Delete DLQ commands older than a duration.
    Cleanup {
        #[arg(long = "older-than", default_value = "7d")]
        older_than: crate::duration::Dur,
    },
}

/// Resolved locations and config.
pub struct Setup {
    pub config: Arc<Config>,
    pub runbooks: PathBuf,
    pub store_url: String,
    pub masker: Masker,
}

impl Setup {
    pub fn load(g: &Global) -> Result<Setup> {
        let config_path = g.config.clone().or_else(|| {
            Path::new("runbook.yaml")
                .exists()
                .then(|| PathBuf::from("runbook.yaml"))
        });
        let config = match &config_path {
            Some(p) => Config::load(p).map_err(|d| anyhow::anyhow!("{d}"))?,
            None => Config::default(),
        };
        let base = config_path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let runbooks = g
            .runbooks
            .clone()
            .or_else(|| {
                config.runbooks.as_ref().map(|r| {
                    if r.is_relative() {
                        base.join(r)
                    } else {
                        r.clone()
                    }
                })
            })
            .unwrap_or_else(|| PathBuf::from("runbooks"));
        let store_url = g
            .store
            .clone()
            .or_else(|| config.store.clone())
            .unwrap_or_else(|| DEFAULT_STORE.to_owned());
        let masker = Masker::new(config.streaming.sensitive_fields.clone());
        config.register_secrets(&masker);
        if let Some(pw) = store_url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .and_then(|(c, _)| c.split_once(':'))
        {
            masker.add(pw.1);
        }
        Ok(Setup {
            config: Arc::new(config),
            runbooks,
            store_url,
            masker,
        })
    }

    pub async fn store(&self) -> Result<Db> {
        let db = Db::connect(&self.store_url, false, 8)
            .await
            .map_err(|e| anyhow::anyhow!(self.masker.mask_str(&e.to_string())))?;
        db.migrate()
            .await
            .map_err(|e| anyhow::anyhow!(self.masker.mask_str(&e.to_string())))?;
        Ok(db)
    }
}

/// Runs the command; returns the process exit code.
pub async fn main(cli: Cli) -> Result<i32> {
    // A config that does not load is a usage error, like a playbook that does not validate.
    let setup = match Setup::load(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Validate { path } => Ok(validate(&setup, path.as_deref())),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::schema::playbook_schema())?
            );
            Ok(0)
        }
        Command::List { output } => list(&setup, output),
        Command::Schedule { count } => schedule(&setup, count),
        Command::Run {
            name,
            params,
            dry_run,
            output,
        } => run(&setup, name, params, dry_run, output).await,
        Command::Runs { command } => {
            runs_cmd(
                &setup,
                command.unwrap_or(RunsCommand::List {
                    playbook: None,
                    limit: 20,
                    output: Format::Human,
                }),
            )
            .await
        }
        Command::Serve { listen, no_workers } => serve(&setup, listen, no_workers).await,
        Command::Queue {
            command:
                QueueCommand::Enqueue {
                    entity,
                    entity_id,
                    command_type,
                    priority,
                    payload,
                },
        } => {
            let payload: Json = match serde_json::from_str(&payload) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: --payload is not JSON: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            let db = setup.store().await?;
            let ids = queue::enqueue(
                &db,
                &[NewCommand {
                    entity,
                    entity_id,
                    command_type,
                    priority,
                    payload,
                }],
            )
            .await?;
            println!("{}", ids[0]);
            Ok(0)
        }
        Command::Queue {
            command:
                QueueCommand::Load {
                    command_type,
                    rate,
                    duration,
                    entity,
                    entities,
                    priority,
                },
        } => {
            let Ok(rate) = rate.trim_end_matches("/s").parse::<f64>() else {
                eprintln!(
                    "error: --rate `{rate}` must be a number of commands per second, like 200/s"
                );
                return Ok(EXIT_USAGE);
            };
            let db = setup.store().await?;
            load(
                &db,
                &command_type,
                rate,
                duration,
                &entity,
                entities.max(1),
                priority,
            )
            .await
        }
        Command::Queue {
            command: QueueCommand::Stats { output },
        } => {
            let db = setup.store().await?;
            let stats = ops::queue_stats(&db, &setup.config.streaming).await?;
            output::queue_stats(&stats, output);
            Ok(0)
        }
        Command::Dlq { command } => dlq(&setup, command).await,
    }
}

fn load_catalog(
    setup: &Setup,
) -> std::result::Result<crate::playbook::Catalog, Vec<crate::diagnostics::Diagnostic>> {
    let (catalog, diags) = Engine::load_playbooks(&setup.runbooks, &setup.config);
    if diags.is_empty() {
        Ok(catalog)
    } else {
        Err(diags)
    }
}

fn validate(setup: &Setup, path: Option<&Path>) -> i32 {
    let path = path.unwrap_or(&setup.runbooks);
    let files = crate::playbook::playbook_files(path)
        .map(|f| f.len())
        .unwrap_or(0);
    let (catalog, diags) = crate::playbook::load(path, &Engine::compile_env(&setup.config));
    for d in &diags {
        println!("{d}");
    }
    if diags.is_empty() {
        if files == 0 {
            eprintln!("no playbooks found in {}", path.display());
            return EXIT_USAGE;
        }
        println!(
            "{} playbook{} OK",
            catalog.playbooks.len(),
            if catalog.playbooks.len() == 1 {
                ""
            } else {
                "s"
            }
        );
        0
    } else {
        eprintln!(
            "{} problem{} found",
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        );
        EXIT_USAGE
    }
}

fn list(setup: &Setup, format: Format) -> Result<i32> {
    let catalog = match load_catalog(setup) {
        Ok(c) => c,
        Err(diags) => return Ok(print_diags(&diags)),
    };
    output::list(&catalog, format);
    Ok(0)
}

fn print_diags(diags: &[crate::diagnostics::Diagnostic]) -> i32 {
    for d in diags {
        eprintln!("{d}");
    }
    eprintln!("playbooks have errors; fix them or run `runbook validate`");
    EXIT_USAGE
}

fn schedule(setup: &Setup, count: usize) -> Result<i32> {
    let catalog = match load_catalog(setup) {
        Ok(c) => c,
        Err(diags) => return Ok(print_diags(&diags)),
    };
    let mut any = false;
    for pb in catalog.playbooks.values() {
        if let Some(s) = &pb.triggers.schedule {
            any = true;
            let next: Vec<String> = s
                .cron
                .upcoming(chrono::Utc)
                .take(count)
                .map(|t| t.to_rfc3339())
                .collect();
            println!("{:<24} {:<20} {}", pb.name, s.expr, next.join("  "));
        }
    }
    if !any {
        println!("no scheduled playbooks");
    }
    Ok(0)
}

fn parse_params(params: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param `{p}` must be key=value");
        };
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

async fn run(
    setup: &Setup,
    name: String,
    params: Vec<String>,
    dry_run: bool,
    format: Format,
) -> Result<i32> {
    let params = match parse_params(&params) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    // A broken playbook never runs, and never stops the others from running.
    let (catalog, diags) = Engine::load_playbooks(&setup.runbooks, &setup.config);
    let (own, others): (Vec<_>, Vec<_>) = diags
        .iter()
        .partition(|d| d.path.file_stem().and_then(|s| s.to_str()) == Some(name.as_str()));
    if !own.is_empty() {
        for d in own {
            eprintln!("{d}");
        }
        eprintln!("error: playbook `{name}` has errors and does not run");
        return Ok(EXIT_USAGE);
    }
    for d in &others {
        eprintln!("warning: {d}");
    }
    if catalog.get(&name).is_none() {
        let known: Vec<&str> = catalog.playbooks.keys().map(String::as_str).collect();
        eprintln!(
            "error: unknown playbook `{name}` (known: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
        return Ok(EXIT_USAGE);
    }
    // Parameters are checked before anything (even the store) is touched.
    if let Err(errors) =
        crate::playbook::resolve_params(&catalog.get(&name).expect("checked above").params, &params)
    {
        for e in errors {
            eprintln!("error: {e}");
        }
        return Ok(EXIT_USAGE);
    }
    let store = setup.store().await?;
    let services = Arc::new(Services::new(
        store,
        setup.config.clone(),
        setup.masker.clone(),
    ));
    let engine = Engine::new(services, Arc::new(Metrics::new()), catalog);
    let observer = Arc::new(output::Printer::new(format));
    let req = RunRequest {
        playbook: name,
        params,
        trigger: json!({ "kind": "cli" }),
        dry_run,
        ..Default::default()
    };
    match engine.run(req, observer.clone()).await {
        Ok(outcome) => {
            observer.outcome(&outcome);
            Ok(if outcome.status.is_success() {
                0
            } else {
                EXIT_FAILED
            })
        }
        Err(e) if e.is_usage() => {
            eprintln!("error: {e}");
            Ok(EXIT_USAGE)
        }
        Err(e) => Err(e).context("the run could not start"),
    }
}

async fn runs_cmd(setup: &Setup, cmd: RunsCommand) -> Result<i32> {
    let db = setup.store().await?;
    match cmd {
        RunsCommand::List {
            playbook,
            limit,
            output,
        } => {
            let rows = runs::list_runs(&db, playbook.as_deref(), limit).await?;
            output::runs_list(&rows, output);
        }
        RunsCommand::Show { id, output } => match runs::get_run(&db, id).await? {
            Some(run) => output::run_show(&run, output),
            None => {
                eprintln!("error: no run {id}");
                return Ok(EXIT_USAGE);
            }
        },
        RunsCommand::Approve {
            id,
            reject,
            comment,
            actor,
        } => match runs::decide(&db, id, !reject, &actor, comment.as_deref()).await {
            Ok(step) => println!(
                "run {id} {} at step `{step}`",
                if reject { "rejected" } else { "approved" }
            ),
            Err(runs::DecideError::Db(e)) => return Err(e.into()),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(EXIT_USAGE);
            }
        },
        RunsCommand::Cancel { id } => {
            if !runs::request_cancel(&db, id).await? {
                eprintln!("error: run {id} is not running");
                return Ok(EXIT_USAGE);
            }
            runs::audit(&db, "cli", "run_cancel", json!({ "run_id": id }), 1).await?;
            println!("run {id}: cancel requested; it stops before its next step");
        }
    }
    Ok(0)
}

async fn dlq(setup: &Setup, cmd: DlqCommand) -> Result<i32> {
    let db = setup.store().await?;
    let (op, format) = match cmd {
        DlqCommand::List {
            entity,
            error_type,
            limit,
            output,
        } => (
            Op::DlqList {
                entity,
                error_type,
                limit: Some(limit),
                offset: None,
            },
            output,
        ),
        DlqCommand::Retry { entity, error_type } => {
            (Op::DlqRetry { entity, error_type }, Format::Human)
        }
        DlqCommand::Cleanup { older_than } => (Op::DlqCleanup { older_than }, Format::Human),
    };
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let out = ops::run(&db, &setup.config.streaming, &op, &actor).await?;
    let out: Json = setup.masker.mask_json(&out);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Human => output::dlq(&op, &out),
    }
    Ok(0)
}

/// `1MiB`, `512KiB`, `2MB`, `1000` (bytes).
fn parse_size(text: &str) -> Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().with_context(|| format!("size `{text}`"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "KB" | "kB" => 1000,
        "MiB" => 1024 * 1024,
        "MB" => 1_000_000,
        other => bail!("size `{text}`: unknown unit `{other}` (B, KiB, MiB, KB, MB)"),
    };
    Ok(n * mult)
}

async fn serve(setup: &Setup, listen: Option<String>, no_workers: bool) -> Result<i32> {
    use crate::{process::app::App, server};
    let store = setup.store().await?;
    let tokens = server::Tokens::from_config(&setup.config, &setup.masker)
        .map_err(|e| anyhow::anyhow!(e))?;
    let max_body = parse_size(setup.config.server.max_body.as_deref().unwrap_or("1MiB"))?;
    let (mut app, diags) = App::build(
        store,
        setup.config.clone(),
        setup.masker.clone(),
        &setup.runbooks,
    )?;
    for d in &diags {
        tracing::error!(%d, "Playbook not loaded.");
        eprintln!("{d}");
    }

    let addr = listen.unwrap_or_else(|| setup.config.server.listen.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    tracing::info!(%local, playbooks = app.engine.catalog().playbooks.len(), "Serving.");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    app.start(!no_workers, &mut tasks, &shutdown);
    let state = Arc::new(server::AppState {
        engine: app.engine.clone(),
        services: app.services.clone(),
        metrics: app.metrics.clone(),
        tokens,
    });
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = server::serve(listener, state, max_body, http_shutdown).await {
            tracing::error!(error = %e, "HTTP server stopped.");
        }
    });
    server::signal().await;
    eprintln!("shutting down: finishing the work in hand");
    shutdown.cancel();
    let grace = std::time::Duration::from_secs(30);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    let store = &app.services.store;
    if drained.is_err() {
        let running = runs::list_runs(store, None, 20).await.unwrap_or_default();
        let ids: Vec<String> = running
            .iter()
            .filter(|r| r["status"] == crate::status::RunStatus::Running.as_str())
            .map(|r| r["id"].to_string())
            .collect();
        eprintln!("grace period over; runs still going: {}", ids.join(", "));
    }
    store.close().await;
    Ok(0)
}

async fn load(
    db: &Db,
    command_type: &str,
    rate: f64,
    duration: crate::duration::Dur,
    entity: &str,
    entities: u32,
    priority: i32,
) -> Result<i32> {
    let tick = std::time::Duration::from_millis(100);
    let started = std::time::Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut sent: u64 = 0;
    let mut interval = tokio::time::interval(tick);
    while sent < total {
        interval.tick().await;
        let due = ((rate * started.elapsed().as_secs_f64()).ceil() as u64).min(total);
        let n = due.saturating_sub(sent).min(10_000);
        if n == 0 {
            continue;
        }
        let batch: Vec<NewCommand> = (0..n)
            .map(|i| NewCommand {
                entity: entity.to_owned(),
                entity_id: fastrand::u32(..entities).to_string(),
                command_type: command_type.to_owned(),
                priority,
                payload: json!({ "seq": sent + i }),
            })
            .collect();
        queue::enqueue(db, &batch).await?;
        sent += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "enqueued {sent} `{command_type}` commands in {secs:.1} s ({:.0}/s)",
        sent as f64 / secs
    );
    Ok(0)
}
