//! The command line: the arguments ([`args`]), the set-up every command shares ([`Setup`]), and
//! one file per group of commands. This is the only layer that uses `anyhow`; everything below
//! returns typed errors.

mod actor;
mod args;
mod dlq;
mod output;
mod plan;
mod playbooks;
mod progress;
mod serve;
mod settings;
mod streaming;
mod test;
mod triggers;

pub(crate) use actor::actor;
pub use args::{
    AlertCommand, Cli, Command, DlqCommand, Format, Global, LogFormat, QueueCommand, RunsCommand,
    SchemaOf, SettingsCommand,
};

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use output::errln;

use crate::{
    config::{Config, DEFAULT_STORE},
    engine::Engine,
    secrets::Masker,
    store::Db,
};

/// Exit code for usage and validation errors.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a run that failed.
pub const EXIT_FAILED: i32 = 1;

/// Resolved locations and config.
pub struct Setup {
    pub config: Arc<Config>,
    /// The config file read, if any.
    pub config_path: Option<PathBuf>,
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
        masker.add_url(&store_url);
        config.check_secrets(&store_url)?;
        Ok(Setup {
            config: Arc::new(config),
            config_path,
            runbooks,
            store_url,
            masker,
        })
    }

    /// What was looked for where, for an error about the wrong folder: the playbooks folder,
    /// the config file and the store, with where each came from.
    pub fn looked_for(&self) -> String {
        let cwd = std::env::current_dir().unwrap_or_default();
        let abs = |p: &Path| {
            if p.is_relative() {
                cwd.join(p)
            } else {
                p.to_path_buf()
            }
        };
        let config = match &self.config_path {
            Some(p) => format!("config {}", abs(p).display()),
            None => format!(
                "config {} (not found; built-in defaults used; --config or RUNBOOK_CONFIG)",
                cwd.join("runbook.yaml").display()
            ),
        };
        format!(
            "looked in {}: playbooks {}{} (--runbooks or RUNBOOK_RUNBOOKS), {config}, store {} \
             (--store or RUNBOOK_STORE)",
            cwd.display(),
            abs(&self.runbooks).display(),
            if self.runbooks.is_dir() {
                ""
            } else {
                " (no such folder)"
            },
            self.masker
                .mask_str(&crate::store::redact_url(&self.store_url)),
        )
    }

    /// The store for a command that only reads it: a SQLite file that does not exist is an
    /// error naming it (an empty store would report zeros), never created.
    pub async fn existing_store(&self) -> Result<Db> {
        if let Some(file) = crate::store::sqlite_file(&self.store_url) {
            if !file.exists() {
                bail!(
                    "the store {} does not exist ({} is not there); run from the folder that \
                     holds it, or name it with --store\n{}",
                    self.masker
                        .mask_str(&crate::store::redact_url(&self.store_url)),
                    file.display(),
                    self.looked_for()
                );
            }
        }
        self.store().await
    }

    pub async fn store(&self) -> Result<Db> {
        let db = Db::connect(&self.store_url, false, 8)
            .await
            .map_err(|e| anyhow::anyhow!(self.masker.mask_str(&crate::text::error_chain(&e))))?;
        db.migrate()
            .await
            .map_err(|e| anyhow::anyhow!(self.masker.mask_str(&crate::text::error_chain(&e))))?;
        Ok(db)
    }
}

/// Sends the engine's logs to stderr at the level `RUNBOOK_LOG` says (default `warn`): as text,
/// coloured only when stderr is a terminal, or as one JSON object a line whose `span` and `spans`
/// carry the run's `run_id` and `playbook` and the step's `step`.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUNBOOK_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// Runs the command; returns the process exit code. An error is printed here, its control
/// characters escaped like every other line for a person, and gives exit code 1.
pub async fn main(cli: Cli) -> Result<i32> {
    match command(cli).await {
        Ok(code) => Ok(code),
        Err(e) => {
            errln!("error: {e:#}");
            Ok(EXIT_FAILED)
        }
    }
}

async fn command(cli: Cli) -> Result<i32> {
    actor::set(cli.global.actor.as_deref());
    // The schemas need no config: the config's own schema helps most when the config is broken.
    if let Command::Schema { of } = cli.command {
        return print_schema(of);
    }
    // A config that does not load is a usage error, like a playbook that does not validate.
    let setup = match Setup::load(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            errln!("error: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    if let Some((name, what)) = records(&cli.command) {
        if crate::store::is_read_only_url(&setup.store_url) {
            errln!(
                "error: the store is opened read-only (mode=ro): `runbook {name}` {what}; use a \
                 writable store"
            );
            return Ok(EXIT_USAGE);
        }
    }
    match cli.command {
        Command::Validate { path } => {
            if path.is_none() && !setup.runbooks.is_dir() {
                errln!("error: no playbooks folder; {}", setup.looked_for());
                return Ok(EXIT_USAGE);
            }
            Ok(playbooks::validate(&setup, path.as_deref()))
        }
        Command::Test { path, output } => test::test(&setup, path.as_deref(), output).await,
        Command::Schema { of } => print_schema(of),
        Command::List { output } => {
            if !setup.runbooks.is_dir() {
                errln!("error: no playbooks folder; {}", setup.looked_for());
                return Ok(EXIT_USAGE);
            }
            playbooks::list(&setup, output)
        }
        Command::Schedule { count, output } => playbooks::schedule(&setup, count, output).await,
        Command::Run {
            name,
            params,
            dry_run,
            plan,
            output,
            force,
        } => {
            let mode = match (dry_run, plan) {
                (true, _) => crate::engine::RunMode::DryRun,
                (_, true) => crate::engine::RunMode::Plan,
                _ => crate::engine::RunMode::Execute,
            };
            playbooks::run(&setup, name, params, mode, output, force).await
        }
        Command::Pause { reason } => triggers::pause(&setup, &reason).await,
        Command::Resume => triggers::resume(&setup).await,
        Command::Status { output } => triggers::status(&setup, output).await,
        Command::Alert { command } => triggers::alert(&setup, command).await,
        Command::Runs { command } => {
            streaming::runs(
                &setup,
                command.unwrap_or(RunsCommand::List {
                    playbook: None,
                    limit: 20,
                    output: Format::Human,
                }),
            )
            .await
        }
        Command::Serve { listen, no_workers } => serve::serve(&setup, listen, no_workers).await,
        Command::Queue { command } => streaming::queue(&setup, command).await,
        Command::Dlq { command } => dlq::dlq(&setup, command).await,
        Command::Settings { command, output } => settings::settings(&setup, command, output).await,
        Command::Outbox { command } => streaming::outbox(&setup, command).await,
    }
}

/// The commands that write to the store: their name and what they record, for the error a
/// read-only store gives them. The others only read it, or do not open it.
/// `runbook schema [playbook|config]`: the format's JSON Schema, pretty-printed.
fn print_schema(of: SchemaOf) -> Result<i32> {
    let schema = match of {
        SchemaOf::Playbook => crate::schema::playbook_schema(),
        SchemaOf::Config => crate::schema::config_schema(),
        SchemaOf::Test => crate::testing::schema(),
    };
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(0)
}

fn records(command: &Command) -> Option<(&'static str, &'static str)> {
    match command {
        Command::Serve { .. } => Some(("serve", "runs commands and records runs")),
        Command::Run { .. } => Some(("run", "records runs")),
        Command::Pause { .. } => Some(("pause", "records the pause")),
        Command::Resume => Some(("resume", "records the end of the pause")),
        Command::Runs {
            command: Some(RunsCommand::Approve { .. }),
        } => Some(("runs approve", "records the answer")),
        Command::Runs {
            command: Some(RunsCommand::Cancel { .. }),
        } => Some(("runs cancel", "records the cancel")),
        Command::Queue {
            command: QueueCommand::Enqueue { .. },
        } => Some(("queue enqueue", "enqueues commands")),
        Command::Queue {
            command: QueueCommand::Load { .. },
        } => Some(("queue load", "enqueues commands")),
        Command::Dlq {
            command: DlqCommand::Retry { .. },
        } => Some(("dlq retry", "changes the DLQ")),
        Command::Dlq {
            command: DlqCommand::Cleanup { .. },
        } => Some(("dlq cleanup", "changes the DLQ")),
        Command::Settings {
            command: Some(SettingsCommand::Reset),
            ..
        } => Some(("settings reset", "changes the runtime settings")),
        _ => None,
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

/// The problems of the playbooks that did not load, on stderr, by file: exit code 1 when there
/// are any (the others were listed), 0 when there are none.
fn broken_playbooks(diags: &[crate::diagnostics::Diagnostic]) -> i32 {
    if diags.is_empty() {
        return 0;
    }
    let mut files: Vec<&Path> = diags.iter().map(|d| d.path.as_path()).collect();
    files.dedup();
    errln!(
        "warning: {} playbook file{} did not load (not listed above):",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    for d in diags {
        errln!("  {d}");
    }
    EXIT_FAILED
}

fn print_diags(diags: &[crate::diagnostics::Diagnostic]) -> i32 {
    for d in diags {
        errln!("{d}");
    }
    errln!("playbooks have errors; fix them or run `runbook validate`");
    EXIT_USAGE
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
    n.checked_mul(mult)
        .with_context(|| format!("size `{text}` is too large"))
}
