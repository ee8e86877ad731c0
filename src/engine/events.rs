//! What a run tells whoever watches it (the CLI prints these): a step starting, planned,
//! skipped, waiting or ending, and a one-line summary of what it found.

use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::{
    playbook::Step,
    secrets::Masker,
    status::StepEventStatus,
    steps::{RunMeta, StepEvent, StepOutput},
};

/// An event of `step` with its identity and status; the caller fills in the rest.
pub(super) fn event(meta: &RunMeta, step: &Step, status: StepEventStatus) -> StepEvent {
    StepEvent {
        run_id: meta.id,
        playbook: meta.playbook.clone(),
        step: step.id.clone(),
        kind: step.kind.name(),
        depth: meta.depth,
        status,
        duration_ms: None,
        summary: None,
        error: None,
        input: None,
        found: None,
        continued: false,
        poll: None,
        plan: None,
    }
}

/// What a step found, masked, for whoever watches: `{"rows": [...], "output": ...}`.
pub(super) fn found(masker: &Masker, out: &StepOutput) -> Json {
    masker.mask_json(&json!({ "rows": out.rows, "output": out.output }))
}

/// The most checks an `until` step makes: one at once, then one every `every` within `within`.
pub(super) fn max_polls(every: Duration, within: Duration) -> u32 {
    let every = every.as_millis().max(1);
    u32::try_from(within.as_millis() / every)
        .unwrap_or(u32::MAX)
        .saturating_add(1)
}

/// What a step found, in one line: its row count and the start of its output.
pub(super) fn summarize(out: &StepOutput) -> String {
    let mut parts = Vec::new();
    if !out.rows.is_empty() {
        parts.push(format!(
            "{} row{}",
            out.rows.len(),
            if out.rows.len() == 1 { "" } else { "s" }
        ));
    }
    if !out.output.is_null() {
        let mut text = out.output.to_string();
        if text.len() > 120 {
            let mut end = 117;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        parts.push(text);
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_rows_and_cuts_long_output() {
        let out = StepOutput {
            rows: vec![json!({"n": 1})],
            output: json!({"row_count": 1}),
        };
        assert_eq!(summarize(&out), r#"1 row {"row_count":1}"#);
        let long = StepOutput::value(json!("x".repeat(500)));
        let s = summarize(&long);
        assert!(s.ends_with('…') && s.chars().count() <= 118, "{s}");
        assert_eq!(summarize(&StepOutput::default()), "");
    }

    #[test]
    fn an_until_step_checks_once_at_once_then_once_every_period() {
        let s = Duration::from_secs;
        assert_eq!(max_polls(s(15), s(300)), 21);
        assert_eq!(max_polls(s(10), s(5)), 1);
        assert_eq!(max_polls(Duration::ZERO, s(1)), 1001);
    }
}
