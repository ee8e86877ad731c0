//! What every page shares: the user, the section of the navigation, and how a step's recorded
//! output becomes a table or a text.

use serde_json::{json, Value as Json};

use super::session::Me;

/// Rows shown of a step's table before "and N more".
pub const SHOWN_ROWS: usize = 50;
/// Characters of a long text output shown, from its end (the tail is what usually matters).
pub const SHOWN_TAIL: usize = 4000;

/// The context every page starts from.
pub fn base(me: &Me, nav: &str, title: &str) -> minijinja::Value {
    minijinja::context! { me => me.view(), nav, title }
}

/// Adds `extra` to the page's context.
pub fn with(base: minijinja::Value, extra: minijinja::Value) -> minijinja::Value {
    minijinja::context! { ..extra, ..base }
}

/// What a step found, shaped for the page: `{table: {columns, rows, more}}` for rows of
/// objects, `{text, cut}` for a long text (its tail), `{value}` for anything else.
pub fn found(output: &Json) -> Json {
    if let Some(rows) = output.get("rows").and_then(Json::as_array) {
        if rows.iter().all(Json::is_object) && !rows.is_empty() {
            let mut columns: Vec<String> = Vec::new();
            for row in rows.iter().take(SHOWN_ROWS) {
                for k in row.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
            }
            let shown: Vec<Vec<Json>> = rows
                .iter()
                .take(SHOWN_ROWS)
                .map(|r| columns.iter().map(|c| r[c].clone()).collect())
                .collect();
            let mut out = json!({
                "table": { "columns": columns, "rows": shown, "more": rows.len().saturating_sub(SHOWN_ROWS) }
            });
            // The row count the table already shows is not repeated; anything else is shown.
            if let Some(rest) = output.get("output").and_then(Json::as_object) {
                let said = |k: &str, v: &Json| {
                    (k == "row_count" && v.as_u64() == Some(rows.len() as u64))
                        || (k == "truncated" && v == &Json::Bool(false))
                };
                let more: serde_json::Map<String, Json> = rest
                    .iter()
                    .filter(|(k, v)| !said(k, v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !more.is_empty() {
                    out["value"] = Json::Object(more);
                }
            }
            return out;
        }
    }
    let value = output
        .get("output")
        .cloned()
        .unwrap_or_else(|| output.clone());
    let text = match &value {
        Json::String(s) => s.clone(),
        Json::Null => return json!({}),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    let chars = text.chars().count();
    if chars > SHOWN_TAIL {
        let tail: String = text.chars().skip(chars - SHOWN_TAIL).collect();
        json!({ "text": tail, "cut": chars - SHOWN_TAIL })
    } else {
        json!({ "text": text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_a_table_with_the_union_of_their_columns() {
        let f = found(
            &json!({ "rows": [{ "a": 1 }, { "a": 2, "b": "x" }], "output": { "row_count": 2, "truncated": false } }),
        );
        assert_eq!(f["table"]["columns"], json!(["a", "b"]));
        assert_eq!(f["table"]["rows"], json!([[1, null], [2, "x"]]));
        assert!(f.get("value").is_none(), "the count the table shows: {f}");
        let f = found(
            &json!({ "rows": [{ "a": 1 }], "output": { "row_count": 1000, "truncated": true } }),
        );
        assert_eq!(f["value"]["row_count"], 1000);
    }

    #[test]
    fn a_long_text_shows_its_tail_and_how_much_was_cut() {
        let text = format!("{}END", "x".repeat(SHOWN_TAIL + 10));
        let f = found(&json!({ "output": text }));
        assert!(f["text"].as_str().unwrap().ends_with("END"));
        assert_eq!(f["cut"], 13);
    }
}
