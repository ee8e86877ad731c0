//! The command line's arguments (clap derive): every command, subcommand and flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "runbook",
    version,
    about = "Runbooks as playbooks: YAML playbooks that diagnose and repair a streaming platform, run from the shell or the HTTP API, on an embedded streaming runtime."
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
    /// Log lines on stderr as text, or as one JSON object a line (with the run's and the step's
    /// span fields); `RUNBOOK_LOG` sets the level.
    #[arg(
        long,
        global = true,
        env = "RUNBOOK_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    /// Who acts, as written in audit records and run answers [default: `cli:USER`, USER being
    /// the `USER` environment variable, else the operating system's name for the process's user].
    #[arg(long, global = true, env = "RUNBOOK_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,
}

/// The formats `runbook schema` describes.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum SchemaOf {
    /// A playbook file.
    #[default]
    Playbook,
    /// The config file, `runbook.yaml`.
    Config,
    /// A test file of `runbook test` (`runbooks/tests/*.yaml`).
    Test,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Lines of text, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum Format {
    /// Lines for a person.
    #[default]
    Human,
    /// JSON for a program.
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
        /// The playbook's name (`runbook list` shows them).
        name: String,
        /// A parameter override, `key=value` (repeatable).
        #[arg(long = "param", short = 'p', value_name = "K=V")]
        params: Vec<String>,
        /// Print what would run (rendered SQL with bound values, requests, argv) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run the steps that only read, then print what the run would change, on the data as
        /// it is now (each change's rendered input, each skip with its `when`); change nothing.
        #[arg(long, conflicts_with = "dry_run")]
        plan: bool,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
        /// Start even when a guard (concurrency, cooldown, max_runs_per_hour) or the global pause
        /// would hold the run back; written to the audit log.
        #[arg(long)]
        force: bool,
    },
    /// Pause every new run that changes things (read-only playbooks still run; alerts are still recorded).
    Pause {
        /// Why, shown by `runbook status` and in every skipped run.
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// End the global pause.
    Resume,
    /// The global pause (reason, who, since) and the runs queued and running.
    Status {
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Alerts: `runbook alert fire NAME` posts a webhook as Alertmanager would.
    Alert {
        #[command(subcommand)]
        command: AlertCommand,
    },
    /// Check playbooks and print every problem as path:line:col: message.
    Validate {
        /// A playbook file or folder [default: the runbooks folder].
        path: Option<PathBuf>,
    },
    /// Run the playbooks' test cases (`runbooks/tests/*.yaml`) against mocked step results;
    /// nothing outside is touched.
    Test {
        /// A test file, a folder of test files, or a playbooks folder with a `tests/` folder
        /// [default: the runbooks folder].
        path: Option<PathBuf>,
        /// Output for a person (`human`, like `cargo test`) or for CI (`json`, one document).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// List playbooks with their triggers.
    List {
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Print the JSON Schema of the playbook format, or of the config file (for editors' YAML
    /// language servers).
    Schema {
        /// Which format: `playbook` (a file under runbooks/) or `config` (`runbook.yaml`).
        #[arg(value_enum, default_value_t)]
        of: SchemaOf,
    },
    /// Scheduled playbooks: zone, last recorded tick (from the store) and next fire times.
    Schedule {
        /// How many next fire times to show per playbook.
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
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
    /// The runtime's live settings next to the config's values, and who changed them when.
    Settings {
        #[command(subcommand)]
        command: Option<SettingsCommand>,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Outbox events parked after the broker refused them `streaming.outbox_max_attempts` times.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Parked events, oldest first, with how many newer events of their entity wait behind each.
    Parked {
        /// The most events to show.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Send a parked event again (its attempts count from 0 again).
    Retry {
        /// The parked event's id (`runbook outbox parked` shows them).
        id: i64,
    },
    /// Delete a parked event without sending it; its entity's newer events flow again.
    Drop {
        /// The parked event's id (`runbook outbox parked` shows them).
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Post an Alertmanager webhook (version 4) for one alert to `runbook serve` and print the
    /// runs it started.
    Fire {
        /// The alert's name (the `alertname` label).
        name: String,
        /// A label, `key=value` (repeatable).
        #[arg(long = "label", short = 'l', value_name = "K=V")]
        labels: Vec<String>,
        /// An annotation, `key=value` (repeatable).
        #[arg(long = "annotation", short = 'a', value_name = "K=V")]
        annotations: Vec<String>,
        /// Send it resolved (endsAt now; startsAt is the one of the last `fire` of this alert).
        #[arg(long)]
        resolve: bool,
        /// The receiver's URL [default: http://<server.listen>/api/webhooks/alertmanager].
        #[arg(long)]
        url: Option<String>,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List {
        /// Only the runs of this playbook.
        #[arg(long)]
        playbook: Option<String>,
        /// The most runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// One run with every step attempt, the polls of a step grouped, and its report.
    Show {
        /// The run's id (`runbook runs list` shows them).
        id: i64,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
        /// Only this step's attempts, each whole however long.
        #[arg(long)]
        step: Option<String>,
        /// Only the step's Nth attempt (as `runs show` numbers them); needs --step.
        #[arg(long, requires = "step")]
        attempt: Option<usize>,
    },
    /// Approve (or with --reject, reject) a run waiting at an `approve` step.
    Approve {
        /// The run's id.
        id: i64,
        /// Reject instead: the run stops at the step.
        #[arg(long)]
        reject: bool,
        /// Why, recorded with the answer.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Stop a running run where it is (it ends `cancelled`).
    Cancel {
        /// The run's id.
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Enqueue one command.
    Enqueue {
        /// The entity the command is about, e.g. `user`.
        #[arg(long)]
        entity: String,
        /// The entity's id; commands of one entity never run at once.
        #[arg(long = "entity-id")]
        entity_id: String,
        /// The command type; `streaming.handlers` in the config says what a worker does with it.
        #[arg(long = "type")]
        command_type: String,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// A synthetic producer: enqueue commands at a steady rate.
    Load {
        /// The command type; `streaming.handlers` in the config says what a worker does with it.
        #[arg(long = "type")]
        command_type: String,
        /// Commands per second, e.g. `200/s` or `200`.
        #[arg(long)]
        rate: String,
        /// How long to produce, e.g. `1m`.
        #[arg(long)]
        duration: crate::duration::Dur,
        /// The entity of every command.
        #[arg(long, default_value = "user")]
        entity: String,
        /// Distinct entity ids to spread the commands over.
        #[arg(long, default_value_t = 1000)]
        entities: u32,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
    },
    /// Depth per priority and status, oldest pending, DLQ by error type, unsent outbox, locks, settings.
    Stats {
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Commands in the DLQ, oldest first, a page at a time.
    List {
        /// Only this entity's commands.
        #[arg(long)]
        entity: Option<String>,
        /// Only commands that failed with this error type, e.g. `TimeoutException`.
        #[arg(long = "error-type")]
        error_type: Option<String>,
        /// The most commands to show (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// How many to skip: the next page starts at the previous offset plus the limit.
        #[arg(long, default_value_t = 0)]
        offset: i64,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Send DLQ commands back to the queue (all, or by entity and/or error type), after a
    /// preview and a confirmation.
    Retry {
        /// Only this entity's commands.
        #[arg(long)]
        entity: Option<String>,
        /// Only commands that failed with this error type, e.g. `TimeoutException`.
        #[arg(long = "error-type")]
        error_type: Option<String>,
        /// Do it without asking (required when stdin or stdout is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Delete DLQ commands older than a duration, after a preview and a confirmation.
    Cleanup {
        /// Only commands last updated longer ago than this, e.g. `7d`.
        #[arg(long = "older-than", default_value = "7d")]
        older_than: crate::duration::Dur,
        /// Only this entity's commands.
        #[arg(long)]
        entity: Option<String>,
        /// Only commands that failed with this error type, e.g. `TimeoutException`.
        #[arg(long = "error-type")]
        error_type: Option<String>,
        /// Do it without asking (required when stdin or stdout is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Output for a person (`human`) or for a program (`json`).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Drop every runtime change: the runtime goes back to the config's values (audited).
    Reset,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Walks every command and subcommand: an argument (option or positional) without help
    /// text is a finding.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "runbook", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
