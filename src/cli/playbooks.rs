//! Commands on playbooks: `validate`, `list`, `schedule`, `run`, and `runs show`.

use std::{collections::BTreeMap, io::Write, path::Path, sync::Arc};

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    args::Format,
    load_catalog,
    output::{self, errln, outln},
    parse_params, print_diags, Setup, EXIT_FAILED, EXIT_USAGE,
};
use crate::{
    engine::{Engine, RunMode, RunRequest},
    metrics::Metrics,
    playbook::Catalog,
    services::Services,
    store::{runs, ticks, Db},
};

pub(super) fn validate(setup: &Setup, path: Option<&Path>) -> i32 {
    let path = path.unwrap_or(&setup.runbooks);
    let files = crate::playbook::playbook_files(path)
        .map(|f| f.len())
        .unwrap_or(0);
    let (catalog, diags) = crate::playbook::load(path, &Engine::compile_env(&setup.config));
    for d in &diags {
        outln!("{d}");
    }
    for d in catalog.playbooks.values().flat_map(|p| &p.warnings) {
        outln!("warning: {d}");
    }
    if diags.is_empty() {
        if files == 0 {
            errln!("no playbooks found in {}", path.display());
            return EXIT_USAGE;
        }
        outln!(
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
        errln!(
            "{} problem{} found",
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        );
        EXIT_USAGE
    }
}

/// The playbooks that load, on stdout; a broken file does not hide them: its problems follow
/// on stderr, and the exit code is 1.
pub(super) fn list(setup: &Setup, format: Format) -> Result<i32> {
    let (catalog, diags) = Engine::load_playbooks(&setup.runbooks, &setup.config);
    output::list(&catalog, format);
    Ok(super::broken_playbooks(&diags))
}

pub(super) async fn schedule(setup: &Setup, count: usize, format: Format) -> Result<i32> {
    let catalog = match load_catalog(setup) {
        Ok(c) => c,
        Err(diags) => return Ok(print_diags(&diags)),
    };
    let scheduled: Vec<_> = catalog
        .playbooks
        .values()
        .filter_map(|p| p.triggers.schedule.as_ref().map(|s| (p, s)))
        .collect();
    // The last ticks come from the store; without it the schedule is still shown.
    let latest = if scheduled.is_empty() {
        Some(Default::default())
    } else {
        let names: Vec<String> = scheduled.iter().map(|(p, _)| p.name.clone()).collect();
        match last_ticks(setup, &names).await {
            Ok(l) => Some(l),
            Err(e) => {
                errln!("warning: recorded ticks not shown: {e:#}");
                None
            }
        }
    };
    let now = chrono::Utc::now();
    let items: Vec<serde_json::Value> = scheduled
        .iter()
        .map(|(p, s)| {
            let last = latest.as_ref().map(|l| {
                l.get(&p.name).map(|t: &ticks::Tick| {
                    json!({
                        "scheduled_at": runs::timestamp(t.scheduled_at),
                        "fired_at": runs::timestamp(t.fired_at),
                        "outcome": t.outcome.as_str(),
                        "command_id": t.command_id,
                    })
                })
            });
            json!({
                "name": p.name,
                "schedule": s.expr,
                "timezone": s.tz.name(),
                "missed": s.missed,
                // `false` when the store could not be read.
                "last": last.map_or(json!(false), |l| json!(l)),
                "next": s.upcoming(now, count).iter()
                    .map(|t| t.with_timezone(&s.tz).to_rfc3339())
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    output::schedule(&items, format);
    Ok(0)
}

async fn last_ticks(setup: &Setup, names: &[String]) -> Result<BTreeMap<String, ticks::Tick>> {
    // No store file, no recorded ticks: reading the schedule creates no store.
    if crate::store::sqlite_file(&setup.store_url).is_some_and(|f| !f.exists()) {
        return Ok(BTreeMap::new());
    }
    let db = setup.store().await?;
    let latest = ticks::latest(&db, names).await;
    db.close().await;
    Ok(latest?)
}

pub(super) async fn run(
    setup: &Setup,
    name: String,
    params: Vec<String>,
    mode: RunMode,
    format: Format,
    force: bool,
) -> Result<i32> {
    let (catalog, params) = match runnable(setup, &name, &params) {
        Ok(ready) => ready,
        Err(code) => return Ok(code),
    };
    let store = setup.store().await?;
    let services = Arc::new(Services::new(
        store,
        setup.config.clone(),
        setup.masker.clone(),
    ));
    let engine = Arc::new(Engine::new(services, Arc::new(Metrics::new()), catalog));
    let observer = Arc::new(output::Printer::new(format));
    let mut req = RunRequest {
        playbook: name,
        params,
        trigger: json!({ "kind": "cli" }),
        mode,
        ..Default::default()
    };
    if mode == RunMode::Plan {
        return super::plan::run(engine, req, format).await;
    }
    if mode == RunMode::Execute {
        match super::triggers::admit_cli(&engine, &req, force).await? {
            Ok(run_id) => req.resume = Some(run_id),
            Err(code) => return Ok(code),
        }
    }
    let stopped = Arc::new(std::sync::Mutex::new(None));
    // Listening starts here, before the run does, so no signal finds the default action.
    let signals = Signals::listen();
    let on_signal = tokio::spawn(cancel_on_signal(signals, engine.clone(), stopped.clone()));
    let result = engine.run(req, observer.clone()).await;
    on_signal.abort();
    let stopped = stopped.lock().ok().and_then(|s| *s);
    match result {
        Ok(outcome) => {
            observer.outcome(&outcome);
            if mode == RunMode::DryRun {
                super::plan::dry_run_note(&outcome.playbook, format);
            }
            Ok(if let Some(signal) = stopped {
                signal.exit_code()
            } else if outcome.status.is_success() {
                0
            } else {
                EXIT_FAILED
            })
        }
        Err(e) if e.is_usage() => {
            errln!("error: {e}");
            Ok(EXIT_USAGE)
        }
        Err(e) => Err(e).context("the run could not start"),
    }
}

/// `runs show ID [--step STEP [--attempt N]]`.
pub(super) async fn runs_show(
    db: &Db,
    id: i64,
    format: Format,
    step: Option<String>,
    attempt: Option<usize>,
) -> Result<i32> {
    let Some(run) = runs::get_run(db, id).await? else {
        errln!("error: no run {id}");
        return Ok(EXIT_USAGE);
    };
    let only = output::ShowOnly {
        step: step.clone(),
        attempt,
    };
    if output::run_show(&run, format, &only) {
        return Ok(0);
    }
    let step = step.unwrap_or_default();
    match attempt {
        Some(n) => errln!("error: run {id} has no attempt #{n} of step `{step}`"),
        None => errln!("error: run {id} has no attempts of step `{step}`"),
    }
    Ok(EXIT_USAGE)
}

/// Exit code of `run` after Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// A signal that stops `runbook run`: Ctrl-C (SIGINT), SIGTERM (a service manager, `kill`, a
/// container stopping) or SIGHUP (the terminal closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    CtrlC,
    Term,
    Hangup,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::CtrlC => "Ctrl-C",
            Stop::Term => "SIGTERM",
            Stop::Hangup => "SIGHUP",
        }
    }

    /// 128 + the signal's number, as shells report it.
    fn exit_code(self) -> i32 {
        match self {
            Stop::CtrlC => EXIT_INTERRUPTED,
            Stop::Term => 143,
            Stop::Hangup => 129,
        }
    }
}

/// The stopping signals SIGTERM and SIGHUP, listened to from the moment the run is about to
/// start (a signal before that has its default effect); Ctrl-C through tokio's own listener.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next stopping signal; pending forever when none can be listened to.
    async fn next(&mut self) -> Stop {
        #[cfg(unix)]
        async fn or_never(s: Option<&mut tokio::signal::unix::Signal>) {
            let received = match s {
                Some(s) => s.recv().await.is_some(),
                None => false,
            };
            if !received {
                std::future::pending::<()>().await;
            }
        }
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        {
            tokio::select! {
                () = ctrl_c => Stop::CtrlC,
                () = or_never(self.term.as_mut()) => Stop::Term,
                () = or_never(self.hangup.as_mut()) => Stop::Hangup,
            }
        }
        #[cfg(not(unix))]
        {
            ctrl_c.await;
            Stop::CtrlC
        }
    }
}

/// The first stopping signal (Ctrl-C, SIGTERM or SIGHUP) cancels the run, which stops where it
/// is and is recorded `cancelled` (`cancelled by SIGTERM`); `run` then exits 128 + the signal's
/// number. A second one exits at once (the run's lease then expires, and `runbook serve` marks
/// it `interrupted`).
async fn cancel_on_signal(
    mut signals: Signals,
    engine: Arc<Engine>,
    stopped: Arc<std::sync::Mutex<Option<Stop>>>,
) {
    let first = signals.next().await;
    if let Ok(mut s) = stopped.lock() {
        *s = Some(first);
    }
    // Cancelled before anything is written: after SIGHUP the terminal may be gone, and a
    // failed write must not stop the cancel.
    engine.cancel_all_here(&format!("cancelled by {}", first.name()));
    let _ = writeln!(
        std::io::stderr(),
        "{}: cancelling the run; send it again to quit at once",
        first.name()
    );
    let again = signals.next().await;
    let _ = writeln!(
        std::io::stderr(),
        "{} again: quitting without recording the run's end",
        again.name()
    );
    std::process::exit(again.exit_code());
}

/// Everything `run` checks before it touches the store: the `--param`s parse, playbook `name`
/// loads and exists, and its parameters resolve. Returns the catalog and the parameters, or
/// prints why not and returns the usage exit code.
fn runnable(
    setup: &Setup,
    name: &str,
    params: &[String],
) -> Result<(Catalog, BTreeMap<String, String>), i32> {
    let params = match parse_params(params) {
        Ok(p) => p,
        Err(e) => {
            errln!("error: {e}");
            return Err(EXIT_USAGE);
        }
    };
    // A broken playbook never runs, and never stops the others from running.
    let (catalog, diags) = Engine::load_playbooks(&setup.runbooks, &setup.config);
    let (own, others): (Vec<_>, Vec<_>) = diags
        .iter()
        .partition(|d| d.path.file_stem().and_then(|s| s.to_str()) == Some(name));
    if !own.is_empty() {
        for d in own {
            errln!("{d}");
        }
        errln!("error: playbook `{name}` has errors and does not run");
        return Err(EXIT_USAGE);
    }
    for d in &others {
        errln!("warning: {d}");
    }
    let Some(playbook) = catalog.get(name) else {
        let known: Vec<&str> = catalog.playbooks.keys().map(String::as_str).collect();
        errln!(
            "error: unknown playbook `{name}` (known: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
        return Err(EXIT_USAGE);
    };
    if let Err(errors) = crate::playbook::resolve_params(&playbook.params, &params) {
        for e in errors.0 {
            errln!("error: {e}");
        }
        return Err(EXIT_USAGE);
    }
    Ok((catalog, params))
}
