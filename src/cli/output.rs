//! What the CLI prints: for a person by default, JSON with `--output json`.
//!
//! Everything printed for a person goes through [`term`]: parameters, alert labels, step results
//! and errors carry text from outside, and an escape sequence in them must not reach the
//! terminal raw (`\e]0;title\a` retitles the window, others move the cursor or hide text). JSON
//! output is printed as serde_json writes it, which escapes control characters in strings itself.

use std::{borrow::Cow, io::Write};

use serde_json::{json, Value as Json};

use super::Format;
use crate::{
    engine::{Observer, RunOutcome, StepEvent},
    playbook::Catalog,
    status::{RunStatus, StepEventStatus},
    stream::ops::Op,
};

/// Text for a terminal: every control character (ESC, BEL, carriage return, DEL, the C1 codes)
/// shown escaped as `\u{1b}`, except the newlines and tabs of multi-line text.
pub fn term(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `println!` for a person: the formatted line goes through [`term`].
macro_rules! outln {
    ($($arg:tt)*) => {
        println!("{}", $crate::cli::output::term(&format!($($arg)*)))
    };
}

/// `eprintln!` for a person: the formatted line goes through [`term`].
macro_rules! errln {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::cli::output::term(&format!($($arg)*)))
    };
}

pub(super) use {errln, outln};

/// Prints step events as they happen: a line per step for a person, a JSON object per line for a machine.
pub struct Printer {
    format: Format,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Printer { format }
    }

    pub fn outcome(&self, o: &RunOutcome) {
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
                outln!("{line}");
            }
        }
    }
}

impl Observer for Printer {
    fn step_event(&self, e: &StepEvent) {
        let mut out = std::io::stdout().lock();
        if self.format == Format::Json {
            let _ = writeln!(out, "{}", json!({ "event": "step", "step": e }));
            return;
        }
        let indent = "  ".repeat(e.depth as usize + 1);
        let dur = e
            .duration_ms
            .map(|d| format!(" {d} ms"))
            .unwrap_or_default();
        let mut out = Term(&mut out);
        let _ = match e.status {
            StepEventStatus::Started => writeln!(out, "{indent}▸ {} ({})", e.step, e.kind),
            StepEventStatus::Succeeded => writeln!(
                out,
                "{indent}✔ {}{dur}  {}",
                e.step,
                e.summary.as_deref().unwrap_or("")
            ),
            StepEventStatus::Planned => Ok(()),
            StepEventStatus::Waiting => writeln!(
                out,
                "{indent}⏸ {} waiting for approval: {}",
                e.step,
                e.summary.as_deref().unwrap_or("")
            ),
            StepEventStatus::Skipped => writeln!(
                out,
                "{indent}↷ {} skipped ({})",
                e.step,
                e.summary.as_deref().unwrap_or("")
            ),
            StepEventStatus::Plan => {
                let input = e.input.clone().unwrap_or(Json::Null);
                let text = plan_text(&input);
                writeln!(out, "{indent}  would run: {text}")
            }
            StepEventStatus::Failed => writeln!(
                out,
                "{indent}✘ {}{dur}  {}",
                e.step,
                e.error.as_deref().unwrap_or("")
            ),
        };
    }
}

/// A writer that passes what is written through [`term`] (one `writeln!` is one `write_fmt`).
struct Term<W>(W);

impl<W: Write> Term<W> {
    fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
        self.0.write_all(term(&args.to_string()).as_bytes())
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

pub fn list(catalog: &Catalog, format: Format) {
    let items: Vec<Json> = catalog
        .playbooks
        .values()
        .map(|p| {
            let alerts: Vec<String> = p
                .triggers
                .alerts
                .iter()
                .map(|m| {
                    m.matchers
                        .iter()
                        .map(matcher_text)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            json!({
                "name": p.name,
                "description": p.description,
                "alerts": alerts,
                "schedule": p.triggers.schedule.as_ref().map(|s| s.expr.clone()),
                "params": p.params.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        );
        return;
    }
    for item in items {
        let mut triggers: Vec<String> = item["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(|a| format!("alert {{{a}}}")))
            .collect();
        if let Some(s) = item["schedule"].as_str() {
            triggers.push(format!("cron \"{s}\""));
        }
        if triggers.is_empty() {
            triggers.push("manual".into());
        }
        outln!(
            "{:<22} {}",
            item["name"].as_str().unwrap_or(""),
            triggers.join("; ")
        );
        if let Some(d) = item["description"].as_str().filter(|d| !d.is_empty()) {
            outln!("{:<22} {}", "", d);
        }
    }
}

/// `runbook schedule`: per scheduled playbook its zone, last recorded tick and next fire times.
pub fn schedule(items: &[Json], format: Format) {
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(items).unwrap_or_default()
        );
        return;
    }
    if items.is_empty() {
        outln!("no scheduled playbooks");
        return;
    }
    for item in items {
        let text = |k: &str| item[k].as_str().unwrap_or("").to_owned();
        outln!(
            "{:<22} {:<20} {} (missed: {})",
            text("name"),
            text("schedule"),
            text("timezone"),
            text("missed")
        );
        let last = &item["last"];
        let last = if last == &Json::Bool(false) {
            "(the store could not be read)".to_owned()
        } else if last.is_null() {
            "never".to_owned()
        } else {
            let command = last["command_id"]
                .as_i64()
                .map(|id| format!(", command {id}"))
                .unwrap_or_default();
            format!(
                "{}, fired {} ({}{command})",
                last["scheduled_at"].as_str().unwrap_or(""),
                last["fired_at"].as_str().unwrap_or(""),
                last["outcome"].as_str().unwrap_or("")
            )
        };
        outln!("{:<22} last  {last}", "");
        let next: Vec<&str> = item["next"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        outln!("{:<22} next  {}", "", next.join("  "));
    }
}

fn matcher_text(m: &crate::playbook::LabelMatcher) -> String {
    use crate::playbook::LabelMatcher as M;
    match m {
        M::Eq(n, v) => format!("{n}=\"{v}\""),
        M::Ne(n, v) => format!("{n}!=\"{v}\""),
        M::Re(n, r) => format!("{n}=~\"{}\"", strip_anchor(r.as_str())),
        M::NotRe(n, r) => format!("{n}!~\"{}\"", strip_anchor(r.as_str())),
    }
}

fn strip_anchor(r: &str) -> &str {
    r.strip_prefix("^(?:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(r)
}

pub fn runs_list(rows: &[Json], format: Format) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
        return;
    }
    outln!(
        "{:>6}  {:<22} {:<17} {:<10} {:<25} ERROR",
        "ID",
        "PLAYBOOK",
        "STATUS",
        "TRIGGER",
        "STARTED"
    );
    for r in rows {
        outln!(
            "{:>6}  {:<22} {:<17} {:<10} {:<25} {}",
            r["id"].to_string(),
            r["playbook"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["trigger"]["kind"].as_str().unwrap_or(""),
            r["started_at"].as_str().unwrap_or(""),
            r["error"].as_str().unwrap_or("")
        );
    }
}

pub fn run_show(run: &Json, format: Format) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(run).unwrap_or_default());
        return;
    }
    outln!(
        "run {}  {}  {}",
        run["id"],
        run["playbook"].as_str().unwrap_or(""),
        run["status"].as_str().unwrap_or("")
    );
    outln!("trigger  {}", run["trigger"]);
    outln!("params   {}", run["params"]);
    outln!(
        "started  {}  finished {}",
        run["started_at"].as_str().unwrap_or("-"),
        run["finished_at"].as_str().unwrap_or("-")
    );
    if let Some(e) = run["error"].as_str() {
        outln!(
            "error    {} (step {})",
            e,
            run["failed_step"].as_str().unwrap_or("-")
        );
    }
    approvals(run);
    for s in run["steps"].as_array().into_iter().flatten() {
        let item = s["item"]
            .as_i64()
            .map(|i| format!("[{i}]"))
            .unwrap_or_default();
        outln!(
            "  {}{} #{} {} {} ms",
            s["step_id"].as_str().unwrap_or(""),
            item,
            s["attempt"],
            s["status"].as_str().unwrap_or(""),
            s["duration_ms"]
        );
        outln!("      input  {}", s["input"]);
        if let Some(e) = s["error"].as_str() {
            outln!("      error  {e}");
        } else {
            let mut out = s["output"].to_string();
            if out.len() > 300 {
                let mut end = 300;
                while !out.is_char_boundary(end) {
                    end -= 1;
                }
                out.truncate(end);
                out.push('…');
            }
            outln!("      output {out}");
        }
    }
}

/// `approval  ask  rejected by alice at ...: not now`, one line per answer.
fn approvals(run: &Json) {
    for a in run["approvals"].as_array().into_iter().flatten() {
        let comment = a["comment"]
            .as_str()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        outln!(
            "approval {}  {} by {} at {}{comment}",
            a["step_id"].as_str().unwrap_or(""),
            a["decision"].as_str().unwrap_or(""),
            a["actor"].as_str().unwrap_or(""),
            a["at"].as_str().unwrap_or("")
        );
    }
}

pub fn queue_stats(s: &Json, format: Format) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    outln!(
        "pending {}  processing {}  oldest pending {}",
        s["pending"],
        s["processing"],
        s["oldest_pending"].as_str().unwrap_or("-")
    );
    for d in s["depth"].as_array().into_iter().flatten() {
        outln!(
            "  priority {:>3}  {:<11} {}",
            d["priority"],
            d["status"].as_str().unwrap_or(""),
            d["count"]
        );
    }
    outln!("dlq {}", s["dlq"]["total"]);
    for d in s["dlq"]["by_error_type"].as_array().into_iter().flatten() {
        outln!(
            "  {:<28} {}",
            d["error_type"].as_str().unwrap_or(""),
            d["count"]
        );
    }
    outln!("outbox unsent {}", s["outbox_unsent"]);
    outln!(
        "locks held {}  expired {}",
        s["locks"]["held"],
        s["locks"]["expired"]
    );
    outln!("settings {}", s["settings"]);
}

pub fn dlq(op: &Op, out: &Json) {
    match op {
        Op::DlqList { .. } => {
            outln!("{} in the DLQ", out["totalElements"]);
            for c in out["content"].as_array().into_iter().flatten() {
                outln!(
                    "{:>8}  {}/{}  {}  {}: {}",
                    c["id"],
                    c["entity"].as_str().unwrap_or(""),
                    c["entity_id"].as_str().unwrap_or(""),
                    c["command_type"].as_str().unwrap_or(""),
                    c["error_type"].as_str().unwrap_or(""),
                    c["error_message"].as_str().unwrap_or("")
                );
            }
        }
        _ => outln!("{out}"),
    }
}
