//! What a step found, as lines for a person under the step's line in `runbook run`: the first
//! rows of a query as a table, Prometheus values with their labels, an assertion's message, an
//! HTTP status and the start of its body, an operation's result as `key: value` lines.

use serde_json::{Map, Value as Json};

use super::table::{cell, cut, one_line, table, wrap};

/// The most rows (or series) shown; the rest are counted.
pub const SHOWN_ROWS: usize = 10;
/// The most lines of one multi-line value shown.
const SHOWN_TEXT_LINES: usize = 8;
/// The most characters of an HTTP body shown.
const SHOWN_BODY: usize = 400;

/// The lines for `found` (`{"rows": [...], "output": ...}`) of a step of `kind`, none wider than
/// `width`. Control characters come out escaped.
pub fn lines(kind: &str, found: &Json, width: usize) -> Vec<String> {
    let empty = Vec::new();
    let rows = found["rows"].as_array().unwrap_or(&empty);
    let output = &found["output"];
    let width = width.max(20);
    match kind {
        "sql" => sql(rows, output, width),
        "promql" => promql(rows, width),
        "assert" => wrap(output["message"].as_str().unwrap_or(""), width),
        "http" => http(output, width),
        "notify" => notify(output, width),
        "wait" | "approve" => Vec::new(),
        _ => generic(rows, output, width),
    }
}

/// The first rows as a table, then how many more there are.
fn rows_table(rows: &[Json], total: Option<u64>, width: usize) -> Vec<String> {
    let mut lines = table(&rows[..rows.len().min(SHOWN_ROWS)], width);
    let shown = rows.len().min(SHOWN_ROWS);
    let total = total.unwrap_or(rows.len() as u64);
    if total > shown as u64 {
        let more = total - shown as u64;
        lines.push(format!(
            "and {} more row{}",
            thousands(more),
            if more == 1 { "" } else { "s" }
        ));
    }
    lines
}

fn sql(rows: &[Json], output: &Json, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(n) = output["rows_affected"].as_u64() {
        lines.push(format!("rows affected: {}", thousands(n)));
    }
    if rows.is_empty() {
        if lines.is_empty() {
            lines.push("no rows".to_owned());
        }
        return lines;
    }
    lines.extend(rows_table(rows, None, width));
    if output["truncated"] == Json::Bool(true) {
        lines.push(format!(
            "(the result was cut at {} rows by the step's max_rows; more rows exist)",
            thousands(rows.len() as u64)
        ));
    }
    lines
}

/// `{instance="a", job="b"}  0.42`, one line a series; a range shows its last value.
fn promql(rows: &[Json], width: usize) -> Vec<String> {
    if rows.is_empty() {
        return vec!["no series".to_owned()];
    }
    let mut lines: Vec<String> = rows
        .iter()
        .take(SHOWN_ROWS)
        .map(|r| {
            let labels: Vec<String> = r
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !matches!(k.as_str(), "value" | "values" | "timestamp"))
                .map(|(k, v)| format!("{k}=\"{}\"", cell(v)))
                .collect();
            let value = match r.get("values").and_then(Json::as_array) {
                Some(samples) => format!(
                    "{} (last of {} samples)",
                    samples.last().map(|s| sample(&s[1])).unwrap_or_default(),
                    samples.len()
                ),
                None => sample(&r["value"]),
            };
            let line = if labels.is_empty() {
                value
            } else {
                format!("{{{}}}  {value}", labels.join(", "))
            };
            cut(&line, width)
        })
        .collect();
    if rows.len() > SHOWN_ROWS {
        lines.push(format!("and {} more series", rows.len() - SHOWN_ROWS));
    }
    lines
}

/// A Prometheus sample as Prometheus writes it: `1`, not `1.0`.
fn sample(v: &Json) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => cell(v),
    }
}

fn http(output: &Json, width: usize) -> Vec<String> {
    let mut lines = vec![format!("status {}", cell(&output["status"]))];
    let body = match &output["body"] {
        Json::Null => return lines,
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    if !body.is_empty() {
        lines.extend(text_lines(&cut(&body, SHOWN_BODY), width, 4));
    }
    lines
}

fn notify(output: &Json, width: usize) -> Vec<String> {
    if output["delivered"] == Json::Bool(false) {
        let mut lines = vec![cut(
            &format!(
                "notify {} (not configured): {}",
                one_line(output["channel"].as_str().unwrap_or("")),
                output["reason"].as_str().unwrap_or("")
            ),
            width,
        )];
        lines.extend(wrap(output["text"].as_str().unwrap_or(""), width));
        return lines;
    }
    vec![format!(
        "sent to {} ({})",
        one_line(output["channel"].as_str().unwrap_or("")),
        cell(&output["status"])
    )]
}

/// Any other kind: its output as `key: value` lines, then its rows as a table (with the true
/// total when the output says it, as `dlq_list`'s `totalElements` does).
fn generic(rows: &[Json], output: &Json, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    match output {
        Json::Object(map) => lines.extend(key_values(map, rows, width)),
        Json::Null => {}
        // A `for_each` step's outputs, one an item.
        Json::Array(items) if items.is_empty() && rows.is_empty() => lines.push("no items".into()),
        Json::Array(items) if items.iter().all(Json::is_object) && rows.is_empty() => {
            lines.extend(rows_table(items, None, width));
        }
        other => lines.extend(text_lines(&cell_text(other), width, SHOWN_TEXT_LINES)),
    }
    if !rows.is_empty() {
        let total = output["totalElements"].as_u64();
        lines.extend(rows_table(rows, total, width));
    }
    lines
}

/// `key: value` for each entry; a list that is the step's rows is left to the table.
fn key_values(map: &Map<String, Json>, rows: &[Json], width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for (k, v) in map {
        if !rows.is_empty() && v.as_array().is_some_and(|a| a.as_slice() == rows) {
            continue;
        }
        match v {
            Json::String(s) if s.contains('\n') => {
                lines.push(format!("{}:", one_line(k)));
                lines.extend(
                    text_lines(s, width.saturating_sub(2), SHOWN_TEXT_LINES)
                        .into_iter()
                        .map(|l| format!("  {l}")),
                );
            }
            _ => lines.push(cut(&format!("{}: {}", one_line(k), cell(v)), width)),
        }
    }
    lines
}

fn cell_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Multi-line text: at most `max` lines, each cut to `width`, control characters escaped.
fn text_lines(text: &str, width: usize, max: usize) -> Vec<String> {
    let all: Vec<&str> = text.trim_end().lines().collect();
    let mut lines: Vec<String> = all
        .iter()
        .take(max)
        .map(|l| cut(&one_line(l), width))
        .collect();
    if all.len() > max {
        lines.push(format!("… {} more lines", all.len() - max));
    }
    lines
}

/// What one poll saw, in a few words: the columns of a one-row result (`n 5,051`), a single
/// Prometheus value, or the row count.
pub fn poll_value(found: &Json) -> String {
    let empty = Vec::new();
    let rows = found["rows"].as_array().unwrap_or(&empty);
    match rows.as_slice() {
        [] => String::new(),
        [Json::Object(row)] => {
            let parts: Vec<String> = row
                .iter()
                .filter(|(k, _)| k.as_str() != "timestamp")
                .take(3)
                .map(|(k, v)| {
                    let v = match v.as_u64() {
                        Some(n) => thousands(n),
                        None => cell(v),
                    };
                    if k == "value" {
                        v
                    } else {
                        format!("{} {v}", cell(&Json::String(k.clone())))
                    }
                })
                .collect();
            cut(&parts.join(", "), 60)
        }
        rows => format!("{} rows", thousands(rows.len() as u64)),
    }
}

/// `2001` as `2,001`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_query_shows_its_first_rows_and_counts_the_rest() {
        let rows: Vec<Json> = (0..25).map(|i| json!({"id": i})).collect();
        let found = json!({"rows": rows, "output": {"row_count": 25, "truncated": false}});
        let lines = lines("sql", &found, 100);
        assert_eq!(lines[0], "id");
        assert_eq!(lines.len(), 1 + SHOWN_ROWS + 1, "{lines:?}");
        assert_eq!(lines.last().unwrap(), "and 15 more rows");
        let none = json!({"rows": [], "output": {"row_count": 0, "truncated": false}});
        assert_eq!(super::lines("sql", &none, 100), vec!["no rows"]);
        let change = json!({"rows": [], "output": {"rows_affected": 1200, "row_count": 0}});
        assert_eq!(
            super::lines("sql", &change, 100),
            vec!["rows affected: 1,200"]
        );
    }

    #[test]
    fn prometheus_values_come_with_their_labels() {
        let found = json!({"rows": [
            {"instance": "w1", "job": "worker", "value": "0.42", "timestamp": 1.0},
            {"instance": "w2", "values": [[1.0, 1.0], [2.0, 3.0]]},
        ], "output": {"resultType": "vector", "series": 2}});
        assert_eq!(
            lines("promql", &found, 100),
            vec![
                r#"{instance="w1", job="worker"}  0.42"#,
                r#"{instance="w2"}  3 (last of 2 samples)"#
            ]
        );
    }

    #[test]
    fn an_operation_shows_key_values_and_its_rows_with_the_true_total() {
        let found = json!({"rows": [{"id": 1, "error_type": "X"}], "output": {
            "content": [{"id": 1, "error_type": "X"}], "totalElements": 40
        }});
        let lines = lines("runtime", &found, 100);
        assert_eq!(lines[0], "totalElements: 40");
        assert!(lines.contains(&"and 39 more rows".to_owned()), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("content")), "{lines:?}");
    }

    #[test]
    fn an_unconfigured_notify_shows_its_whole_text() {
        let found = json!({"rows": [], "output": {
            "channel": "oncall", "delivered": false, "reason": "SLACK_URL is not set",
            "text": "dlq grew\n2,001 UnknownCommandTypeException"
        }});
        assert_eq!(
            lines("notify", &found, 100),
            vec![
                "notify oncall (not configured): SLACK_URL is not set",
                "dlq grew",
                "2,001 UnknownCommandTypeException"
            ]
        );
    }

    #[test]
    fn a_poll_is_summed_up_by_its_one_row_or_its_row_count() {
        let one = json!({"rows": [{"n": 5051}], "output": {}});
        assert_eq!(poll_value(&one), "n 5,051");
        let prom = json!({"rows": [{"value": "0.5", "timestamp": 1.0}], "output": {}});
        assert_eq!(poll_value(&prom), "0.5");
        let many = json!({"rows": [{"a": 1}, {"a": 2}], "output": {}});
        assert_eq!(poll_value(&many), "2 rows");
        assert_eq!(poll_value(&json!({"rows": [], "output": null})), "");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2001), "2,001");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
