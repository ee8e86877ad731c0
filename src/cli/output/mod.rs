//! What the CLI prints: for a person by default, JSON with `--output json`.
//!
//! Everything printed for a person goes through [`term`]: parameters, alert labels, step results
//! and errors carry text from outside, and an escape sequence in them must not reach the
//! terminal raw (`\e]0;title\a` retitles the window, others move the cursor or hide text). JSON
//! output is printed as serde_json writes it, which escapes control characters in strings itself.

pub mod findings;
mod printer;
mod runs;
pub mod table;

use std::borrow::Cow;

use serde_json::{json, Value as Json};

pub use printer::{table_width, Printer};
pub use runs::{run_show, ShowOnly};

use super::Format;
use crate::{playbook::Catalog, stream::ops::Op};

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
