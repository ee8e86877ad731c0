//! `runbook run` as it happens: a line per step with what it found under it, a spinner while a
//! step polls or waits (on a terminal), and the run's end with its report; or, with
//! `--output json`, one JSON object a line.

use std::io::{IsTerminal, Write};

use serde_json::{json, Value as Json};

use super::{findings, table, term, Format};
use crate::{
    cli::progress::{Clock, Spinner},
    engine::{Observer, RunOutcome, StepEvent},
    status::{RunStatus, StepEventStatus},
};

/// The width tables are fitted to when stdout is not a terminal.
const PIPE_WIDTH: usize = 100;

/// The width findings are fitted to: the terminal's, or [`PIPE_WIDTH`] off a terminal.
pub fn table_width(terminal: bool) -> usize {
    if terminal {
        console::Term::stdout()
            .size_checked()
            .map_or(PIPE_WIDTH, |(_, cols)| usize::from(cols).max(40))
    } else {
        PIPE_WIDTH
    }
}

/// Prints step events as they happen: a line per step for a person, a JSON object per line for a machine.
pub struct Printer {
    format: Format,
    /// Colours and the spinner: a person's output on a terminal.
    terminal: bool,
    width: usize,
    spinner: Spinner,
    clock: Clock,
}

#[derive(Clone, Copy)]
enum Colour {
    Red,
    Yellow,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        let terminal = format == Format::Human && std::io::stdout().is_terminal();
        let width = table_width(terminal);
        Printer {
            format,
            terminal,
            width,
            spinner: Spinner::default(),
            clock: Clock::default(),
        }
    }

    /// `text` (already passed through [`term`]) in `colour` on a terminal that allows colours.
    fn paint(&self, text: &str, colour: Colour) -> String {
        if !self.terminal || std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return text.to_owned();
        }
        let code = match colour {
            Colour::Red => "31",
            Colour::Yellow => "33",
        };
        format!("\u{1b}[{code}m{text}\u{1b}[0m")
    }

    /// The run's end, then its report under "Report".
    pub fn outcome(&self, o: &RunOutcome) {
        self.spinner.clear();
        match self.format {
            Format::Json => println!("{}", json!({ "event": "run", "run": o })),
            Format::Human => {
                let mark = match o.status {
                    RunStatus::Succeeded => "✔",
                    RunStatus::Planned => "○",
                    _ => "✘",
                };
                let mut line = format!(
                    "{mark} {} {} in {} ms (run {})",
                    o.playbook, o.status, o.duration_ms, o.run_id
                );
                if let (Some(step), Some(err)) = (&o.failed_step, &o.error) {
                    line.push_str(&format!(": step `{step}`: {err}"));
                } else if let Some(err) = &o.error {
                    line.push_str(&format!(": {err}"));
                }
                let line = term(&line).into_owned();
                let line = if o.status.is_success() {
                    line
                } else {
                    self.paint(&line, Colour::Red)
                };
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                if let Some(report) = &o.report {
                    let _ = writeln!(out, "\nReport");
                    for l in table::wrap(report, self.width.saturating_sub(2)) {
                        let _ = writeln!(out, "  {l}");
                    }
                }
            }
        }
    }

    fn human(&self, e: &StepEvent) {
        let indent = "  ".repeat(e.depth as usize + 1);
        let dur = e
            .duration_ms
            .map(|d| format!(" {d} ms"))
            .unwrap_or_default();
        let mut lines: Vec<String> = Vec::new();
        match e.status {
            StepEventStatus::Started => {
                self.clock.start(&e.step);
                lines.push(format!("{indent}▸ {} ({})", e.step, e.kind));
            }
            StepEventStatus::Succeeded => {
                lines.push(format!("{indent}✔ {}{dur}", e.step));
                let found = e.found.as_ref().map(|f| {
                    let width = self.width.saturating_sub(indent.len() + 4);
                    findings::lines(e.kind, f, width)
                });
                match found {
                    Some(found) if !found.is_empty() => {
                        lines.extend(found.into_iter().map(|l| format!("{indent}    {l}")));
                    }
                    // Without findings to show, the one-line summary.
                    _ => {
                        if let Some(s) = e.summary.as_deref().filter(|s| !s.is_empty()) {
                            lines[0].push_str(&format!("  {s}"));
                        }
                    }
                }
            }
            StepEventStatus::Planned | StepEventStatus::Polled => {}
            StepEventStatus::Waiting => lines.push(format!(
                "{indent}⏸ {} waiting for approval: {}",
                e.step,
                e.summary.as_deref().unwrap_or("")
            )),
            // The condition, cut to the width (`runs show` and `-o json` have it whole).
            StepEventStatus::Skipped => lines.push(table::cut(
                &format!(
                    "{indent}↷ {} skipped ({})",
                    e.step,
                    table::one_line(e.summary.as_deref().unwrap_or(""))
                ),
                self.width,
            )),
            StepEventStatus::Plan => {
                let input = e.input.clone().unwrap_or(Json::Null);
                lines.push(format!("{indent}  would run: {}", plan_text(&input)));
            }
            StepEventStatus::Failed => {
                let (what, colour) = if e.continued {
                    ("failed (continued)", Colour::Yellow)
                } else {
                    ("failed", Colour::Red)
                };
                let head = term(&format!("{indent}✘ {}{dur}", e.step)).into_owned();
                let error = term(e.error.as_deref().unwrap_or("")).into_owned();
                let line = format!("{head}  {}: {error}", self.paint(what, colour));
                self.spinner.clear();
                let _ = writeln!(std::io::stdout().lock(), "{line}");
                return;
            }
        }
        if !lines.is_empty() {
            self.spinner.clear();
            let mut out = std::io::stdout().lock();
            for l in &lines {
                let _ = writeln!(out, "{}", term(l));
            }
        }
        self.progress(e, &indent);
    }

    /// The spinner, on a terminal: while a step polls, waits, or waits for an approval.
    fn progress(&self, e: &StepEvent, indent: &str) {
        if !self.terminal {
            return;
        }
        let since = self.clock.since(&e.step);
        match e.status {
            StepEventStatus::Started if e.kind == "wait" => {
                self.spinner.wait(indent, &e.step, "waiting", since)
            }
            StepEventStatus::Waiting => {
                self.spinner
                    .wait(indent, &e.step, "waiting for approval", since)
            }
            StepEventStatus::Polled => {
                if let (Some(found), Some(poll)) = (&e.found, e.poll) {
                    let value = findings::poll_value(found);
                    self.spinner
                        .poll(indent, &e.step, value, (poll.n, poll.of), since);
                }
            }
            _ => {}
        }
    }
}

impl Observer for Printer {
    fn step_event(&self, e: &StepEvent) {
        if self.format == Format::Json {
            let _ = writeln!(
                std::io::stdout().lock(),
                "{}",
                json!({ "event": "step", "step": e })
            );
            // A message to a channel that is not configured is still said, beside the JSON.
            if let Some(found) = &e.found {
                if e.kind == "notify" && found["output"]["delivered"] == Json::Bool(false) {
                    let text = findings::lines("notify", found, usize::MAX).join("\n");
                    let _ = writeln!(std::io::stderr().lock(), "{}", term(&text));
                }
            }
            return;
        }
        self.human(e);
    }
}

/// A rendered input as one readable line: SQL with its bound values, a request, an argv.
fn plan_text(input: &Json) -> String {
    if let Some(sql) = input.get("sql").and_then(Json::as_str) {
        let params = input.get("params").cloned().unwrap_or(json!([]));
        let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        return format!(
            "[{}] {sql}  -- bound: {params}",
            input["datasource"].as_str().unwrap_or("store")
        );
    }
    if let (Some(m), Some(u)) = (
        input.get("method").and_then(Json::as_str),
        input.get("url").and_then(Json::as_str),
    ) {
        let body = input
            .get("json")
            .map(|j| format!(" {j}"))
            .unwrap_or_default();
        return format!("{m} {u}{body}");
    }
    if let Some(argv) = input.get("argv") {
        return format!("argv {argv}");
    }
    input.to_string()
}
