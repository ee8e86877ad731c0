//! `runbook run NAME --plan`: what a run would change, on the data as it is now. The engine
//! runs the playbook in [`RunMode::Plan`] (its reads run, everything else is described); this
//! file prints the plan's entries as they come, for a person, or the whole plan as one JSON
//! document with `--output json`.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value as Json};

use super::{args::Format, output::term, EXIT_FAILED, EXIT_USAGE};
use crate::engine::{
    Engine, Observer, PlanAction, PlanNote, RunMode, RunOutcome, RunRequest, StepEvent,
};
use crate::status::StepEventStatus;

/// Runs `req` as a plan and prints it; returns the exit code (0 when the plan was made, 1 when
/// a read failed so the run would stop, 2 for usage errors).
pub(super) async fn run(engine: Arc<Engine>, mut req: RunRequest, format: Format) -> Result<i32> {
    req.mode = RunMode::Plan;
    if format == Format::Human {
        super::output::outln!(
            "Plan of {}: its reads run, everything else is only shown; nothing is changed.",
            req.playbook
        );
    }
    let printer = Arc::new(PlanPrinter::new(format));
    // Ctrl-C stops the plan where it is, and it is recorded `cancelled`.
    let canceller = engine.clone();
    let on_signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            canceller.cancel_all_here("cancelled by Ctrl-C");
        }
    });
    let result = engine.run(req, printer.clone()).await;
    on_signal.abort();
    match result {
        Ok(outcome) => {
            printer.finish(&outcome);
            Ok(if outcome.status.is_success() {
                0
            } else {
                EXIT_FAILED
            })
        }
        Err(e) if e.is_usage() => {
            super::output::errln!("error: {e}");
            Ok(EXIT_USAGE)
        }
        Err(e) => Err(e).context("the plan could not start"),
    }
}

/// What `--dry-run` says after it, for a person: the dry run read nothing, and a plan would.
pub(super) fn dry_run_note(playbook: &str, format: Format) {
    if format == Format::Human {
        super::output::outln!(
            "A dry run executes nothing, not even the reads: its `when`s saw no results, so a step \
             skipped here may run for real. `runbook run {playbook} --plan` runs the reads and \
             shows what the run would change."
        );
    }
}

/// Prints a plan: each entry as it comes for a person; for a machine, every entry, collected,
/// in one JSON document at the end.
struct PlanPrinter {
    format: Format,
    entries: Mutex<Vec<Json>>,
    /// The width a read's findings are fitted to.
    width: usize,
}

impl PlanPrinter {
    fn new(format: Format) -> Self {
        use std::io::IsTerminal;
        PlanPrinter {
            format,
            entries: Mutex::default(),
            width: super::output::table_width(std::io::stdout().is_terminal()),
        }
    }

    fn finish(&self, o: &RunOutcome) {
        let entries = self.entries.lock().map(|e| e.clone()).unwrap_or_default();
        let mut counts = Map::new();
        for e in &entries {
            if let Some(a) = e["action"].as_str() {
                let n = counts.get(a).and_then(Json::as_u64).unwrap_or(0);
                counts.insert(a.to_owned(), json!(n + 1));
            }
        }
        if self.format == Format::Json {
            let doc = json!({
                "plan": {
                    "playbook": o.playbook,
                    "run_id": o.run_id,
                    "status": o.status,
                    "failed_step": o.failed_step,
                    "error": o.error,
                    "duration_ms": o.duration_ms,
                    "counts": counts,
                    "steps": entries,
                }
            });
            let _ = writeln!(std::io::stdout().lock(), "{doc}");
            return;
        }
        let count = |a: &str| counts.get(a).and_then(Json::as_u64).unwrap_or(0);
        let mut line = format!(
            "Plan of {}: {} read{}, {} change{}, {} skipped, {} would run if, {} unknown",
            o.playbook,
            count("read"),
            plural(count("read")),
            count("change"),
            plural(count("change")),
            count("skip"),
            count("would_run_if"),
            count("unknown"),
        );
        if o.status.is_success() {
            line.push_str(&format!(
                ". Nothing was changed; recorded as run {} ({}).",
                o.run_id, o.status
            ));
        } else {
            let at = o
                .failed_step
                .as_deref()
                .map(|s| format!(" at step `{s}`"))
                .unwrap_or_default();
            line.push_str(&format!(
                ". The run would stop{at}: {}. Nothing was changed; recorded as run {} ({}).",
                o.error.as_deref().unwrap_or(""),
                o.run_id,
                o.status
            ));
        }
        super::output::outln!("{line}");
    }

    fn entry(e: &StepEvent, note: Option<&PlanNote>) -> Json {
        let mut v = json!({
            "step": e.step,
            "playbook": e.playbook,
            "run_id": e.run_id,
            "depth": e.depth,
            "kind": e.kind,
        });
        match note {
            Some(n) => {
                if let (Json::Object(m), Ok(Json::Object(n))) = (&mut v, serde_json::to_value(n)) {
                    m.extend(n);
                }
            }
            None => {
                v["action"] = json!("failed");
                v["error"] = json!(e.error);
            }
        }
        if let Some(input) = &e.input {
            v["input"] = input.clone();
        }
        v
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl Observer for PlanPrinter {
    fn step_event(&self, e: &StepEvent) {
        let note = e.plan.as_ref();
        if note.is_none() && e.status != StepEventStatus::Failed {
            return;
        }
        if self.format == Format::Json {
            if let Ok(mut entries) = self.entries.lock() {
                entries.push(Self::entry(e, note));
            }
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.push(json!({ "action": note.map(|n| n.action.as_str()) }));
        }
        let indent = "  ".repeat(e.depth as usize + 1);
        let item = note
            .and_then(|n| n.item)
            .map(|i| format!("[{i}]"))
            .unwrap_or_default();
        let text = match note {
            None => format!(
                "✘ {}{item}  failed: {}",
                e.step,
                e.error.as_deref().unwrap_or("")
            ),
            Some(n) => {
                let mark = match n.action {
                    PlanAction::Read => "✔",
                    PlanAction::Change => "→",
                    PlanAction::Skip => "↷",
                    PlanAction::WouldRunIf | PlanAction::Unknown => "?",
                };
                // A read shows what it found, as `runbook run` does, in place of its summary.
                let found = (n.action == PlanAction::Read)
                    .then_some(e.found.as_ref())
                    .flatten()
                    .map(|f| {
                        let width = self.width.saturating_sub(indent.len() + 4);
                        super::output::findings::lines(e.kind, f, width)
                    })
                    .filter(|l| !l.is_empty());
                let mut t = match &found {
                    Some(lines) => {
                        let mut t = format!("{mark} {}{item}  read", e.step);
                        for l in lines {
                            t.push_str(&format!("\n{indent}    {l}"));
                        }
                        t
                    }
                    None => format!("{mark} {}{item}  {}", e.step, n.would),
                };
                if !n.unknown.is_empty() {
                    t.push_str(&format!(
                        "\n{indent}    unknown until the run makes its changes: {}",
                        n.unknown.join(", ")
                    ));
                }
                if n.action == PlanAction::Change && e.kind == "runtime" {
                    if let Some(input) = &e.input {
                        t.push_str(&format!("\n{indent}    runtime {input}"));
                    }
                }
                t
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{indent}{}", term(&text));
    }
}
