//! `runbook runs show ID`: a recorded run with every attempt's input and output (whole, or
//! above [`WHOLE_UP_TO`] its start and how to get it whole), the polls of an `until` step
//! grouped into one line, the answers to its approvals, and its report.

use serde_json::Value as Json;

use super::findings::poll_value;
use super::{outln, Format};

/// The most bytes of an attempt's input and output printed whole; past it, their start.
pub const WHOLE_UP_TO: usize = 4 * 1024;

/// Which attempts `runs show` prints: all of them, one step's, or one attempt of one step
/// (its `N`th, in the order `runs show` numbers them).
#[derive(Debug, Default, Clone)]
pub struct ShowOnly {
    pub step: Option<String>,
    pub attempt: Option<usize>,
}

/// One recorded attempt with its number among its step's attempts (from 1).
struct Numbered<'a> {
    n: usize,
    record: &'a Json,
}

fn numbered(run: &Json) -> Vec<Numbered<'_>> {
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|record| {
            let n = counts
                .entry(record["step_id"].as_str().unwrap_or(""))
                .or_default();
            *n += 1;
            Numbered { n: *n, record }
        })
        .collect()
}

/// Prints run `run` (as [`crate::store::runs::get_run`] reads it). With `only`, just those
/// attempts, each whole. Returns `false` when `only` names a step or an attempt the run does
/// not have.
pub fn run_show(run: &Json, format: Format, only: &ShowOnly) -> bool {
    let attempts: Vec<Numbered> = numbered(run)
        .into_iter()
        .filter(|a| {
            only.step
                .as_deref()
                .is_none_or(|s| a.record["step_id"].as_str() == Some(s))
                && only.attempt.is_none_or(|n| a.n == n)
        })
        .collect();
    let filtered = only.step.is_some();
    if filtered && attempts.is_empty() {
        return false;
    }
    if format == Format::Json {
        let mut run = run.clone();
        if filtered {
            run["steps"] = Json::Array(attempts.iter().map(|a| a.record.clone()).collect());
        }
        println!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
        return true;
    }
    let id = run["id"].as_i64().unwrap_or_default();
    if !filtered {
        header(run);
    }
    let mut i = 0;
    while i < attempts.len() {
        // The polls of an `until` step that did not hold, then (usually) the one that did: one line.
        let polls = attempts[i..]
            .iter()
            .take_while(|a| {
                a.record["status"] == "polled"
                    && a.record["step_id"] == attempts[i].record["step_id"]
                    && a.record["item"] == attempts[i].record["item"]
            })
            .count();
        if polls > 1 && !filtered {
            let first = &attempts[i];
            let last = &attempts[i + polls - 1];
            let step = first.record["step_id"].as_str().unwrap_or("");
            let seen = poll_value(&last.record["output"]);
            let seen = if seen.is_empty() {
                String::new()
            } else {
                format!(", last {seen}")
            };
            outln!(
                "  {step}: {polls} polls (#{}–#{}) from {} to {}{seen}; each whole: runbook runs show {id} --step {step}",
                first.n,
                last.n,
                first.record["started_at"].as_str().unwrap_or("?"),
                last.record["started_at"].as_str().unwrap_or("?"),
            );
            i += polls;
            continue;
        }
        attempt(id, &attempts[i], filtered);
        i += 1;
    }
    if !filtered && run["status"] == "waiting_approval" {
        waiting_changes(run);
    }
    if !filtered {
        if let Some(report) = run["report"].as_str() {
            outln!("\nReport");
            for l in report.lines() {
                outln!("  {l}");
            }
        }
    }
    true
}

/// What approving the step the run waits at lets happen: each following step as rendered when
/// the run stopped there (see `engine/preview.rs`).
fn waiting_changes(run: &Json) {
    let Some(list) = run["waiting_changes"].as_array() else {
        return;
    };
    outln!(
        "\nApproving {} lets happen",
        run["waiting_step"].as_str().unwrap_or("?")
    );
    if list.is_empty() {
        outln!("  nothing: no step follows");
    }
    for ch in list {
        let id = ch["id"].as_str().unwrap_or("?");
        let when = match (ch["when"].as_str(), &ch["when_now"]) {
            (Some(w), Json::Bool(b)) => format!(" when `{w}` ({b} now)"),
            (Some(w), _) => format!(" when `{w}`"),
            _ => String::new(),
        };
        let what = ch["would"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| ch["for_each"].as_str().map(|f| format!("runs {f}")))
            .or_else(|| {
                ch["not_rendered"]
                    .as_str()
                    .map(|e| format!("rendered when the run gets there ({e})"))
            })
            .unwrap_or_default();
        outln!("  {id}{when}: {what}");
    }
}

fn header(run: &Json) {
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
}

/// One attempt: its line, its input and its output or error, whole up to [`WHOLE_UP_TO`]
/// (always whole when asked for by `--step`).
fn attempt(run_id: i64, a: &Numbered, whole: bool) {
    let s = a.record;
    let step = s["step_id"].as_str().unwrap_or("");
    let item = s["item"]
        .as_i64()
        .map(|i| format!("[{i}]"))
        .unwrap_or_default();
    let retry = s["attempt"]
        .as_i64()
        .filter(|&t| t > 1)
        .map(|t| format!(" (try {t})"))
        .unwrap_or_default();
    outln!(
        "  {step}{item} #{}{retry} {} {} ms  {}",
        a.n,
        s["status"].as_str().unwrap_or(""),
        s["duration_ms"],
        s["started_at"].as_str().unwrap_or("")
    );
    let input = s["input"].to_string();
    let (label, result) = match s["error"].as_str() {
        Some(e) => ("error ", e.to_owned()),
        None => ("output", s["output"].to_string()),
    };
    let size = input.len() + result.len();
    if whole || size <= WHOLE_UP_TO {
        outln!("      input  {input}");
        outln!("      {label} {result}");
        return;
    }
    let half = WHOLE_UP_TO / 2;
    outln!("      input  {}", start(&input, half));
    outln!("      {label} {}", start(&result, half));
    outln!(
        "      ({size} bytes, cut; whole: runbook runs show {run_id} --step {step} --attempt {}, or -o json)",
        a.n
    );
}

/// The first `max` bytes of `text` (on a character boundary), with `…` when cut.
fn start(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn attempts_are_numbered_per_step_in_record_order() {
        let run = json!({"steps": [
            {"step_id": "a"}, {"step_id": "verify"}, {"step_id": "verify"}, {"step_id": "a"}
        ]});
        let n: Vec<(String, usize)> = numbered(&run)
            .iter()
            .map(|a| (a.record["step_id"].as_str().unwrap().to_owned(), a.n))
            .collect();
        assert_eq!(
            n,
            vec![
                ("a".into(), 1),
                ("verify".into(), 1),
                ("verify".into(), 2),
                ("a".into(), 2)
            ]
        );
    }

    #[test]
    fn the_start_of_a_long_text_is_cut_on_a_character_boundary() {
        assert_eq!(start("ééé", 3), "é…");
        assert_eq!(start("abc", 3), "abc");
    }
}
