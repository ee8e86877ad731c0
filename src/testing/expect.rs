//! Expectations against what a case's run did: the actual document is built with the keys the
//! expectation names (objects compared on the keys given), both are printed as YAML, and any
//! difference is shown as a unified diff.

use serde_json::{json, Map, Value as Json};

use super::{mocks::Call, spec::Expect};

/// What a run did, as the expectations read it.
pub struct Actual<'a> {
    pub status: String,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    /// The run's steps in playbook order (steps, then `on_failure`): id and recorded result.
    pub steps: Vec<(String, Json)>,
    pub calls: &'a [Call],
}

/// `None` when the run meets the expectation, else the diff of expected and actual.
pub fn compare(expect: &Expect, actual: &Actual<'_>) -> Option<String> {
    let expected = serde_json::to_value(expect).unwrap_or_default();
    let doc = actual_doc(expect, actual);
    let mut got = project(&expected, &doc, "");
    explain_status(&expected, &doc, &mut got);
    let expected = normalize(&expected, "");
    let (e, a) = (yaml(&expected), yaml(&got));
    if e == a {
        return None;
    }
    let diff = similar::TextDiff::from_lines(&e, &a);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header("expected", "actual")
            .to_string(),
    )
}

/// A step whose status differs from the expected one shows its error too: the why of the
/// difference.
fn explain_status(expected: &Json, doc: &Json, got: &mut Json) {
    let Some(steps) = expected["steps"].as_object() else {
        return;
    };
    for (id, e) in steps {
        let actual = &doc["steps"][id];
        let differs = e.get("status").is_some_and(|s| s != &actual["status"]);
        if differs && e.get("error").is_none() && !actual["error"].is_null() {
            got["steps"][id]["error"] = actual["error"].clone();
        }
    }
}

fn yaml(v: &Json) -> String {
    serde_yaml::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn ran(status: &Json) -> bool {
    matches!(status.as_str(), Some("succeeded" | "failed"))
}

/// The actual document, with every key the expectation may name.
fn actual_doc(expect: &Expect, a: &Actual<'_>) -> Json {
    let mut doc = Map::new();
    doc.insert("status".into(), json!(a.status));
    doc.insert("failed_step".into(), json!(a.failed_step));
    doc.insert("error".into(), json!(a.error));
    let status_of = |id: &str| {
        a.steps
            .iter()
            .find(|(s, _)| s == id)
            .map(|(_, r)| r["status"].clone())
    };
    doc.insert(
        "ran".into(),
        json!(a
            .steps
            .iter()
            .filter(|(_, r)| ran(&r["status"]))
            .map(|(id, _)| id)
            .collect::<Vec<_>>()),
    );
    doc.insert(
        "skipped".into(),
        json!(a
            .steps
            .iter()
            .filter(|(_, r)| r["status"] == "skipped")
            .map(|(id, _)| id)
            .collect::<Vec<_>>()),
    );
    if let Some(not_ran) = &expect.not_ran {
        let marked: Vec<String> = not_ran
            .iter()
            .map(|id| {
                let executed = a.calls.iter().any(|c| &c.key == id);
                if executed || status_of(id).is_some_and(|s| ran(&s)) {
                    format!("{id} (ran)")
                } else {
                    id.clone()
                }
            })
            .collect();
        doc.insert("not_ran".into(), json!(marked));
    }
    let changing: Vec<&Call> = a
        .calls
        .iter()
        .filter(|c| {
            c.changes
                && !matches!(
                    c.kind,
                    "notify" | "approve" | "wait" | "assert" | "playbook"
                )
        })
        .collect();
    doc.insert(
        "changes".into(),
        json!(changing.iter().map(|c| &c.key).collect::<Vec<_>>()),
    );
    doc.insert(
        "runtime_ops".into(),
        json!(changing
            .iter()
            .filter(|c| c.kind == "runtime")
            .map(|c| strip_nulls(&c.input))
            .collect::<Vec<_>>()),
    );
    doc.insert(
        "notify".into(),
        json!(a
            .calls
            .iter()
            .filter(|c| c.kind == "notify" && c.error.is_none())
            .map(|c| json!({ "to": c.input["to"], "text": c.input["text"] }))
            .collect::<Vec<_>>()),
    );
    let mut steps = Map::new();
    for key in expect.steps.keys() {
        let calls: Vec<&Call> = a.calls.iter().filter(|c| &c.key == key).collect();
        let recorded = a.steps.iter().find(|(s, _)| s == key).map(|(_, r)| r);
        let status = match (recorded, calls.last()) {
            (Some(r), _) => r["status"].clone(),
            (None, Some(c)) if c.error.is_some() => json!("failed"),
            (None, Some(_)) => json!("succeeded"),
            (None, None) => json!("not_run"),
        };
        let first = calls.first().map(|c| strip_nulls(&c.input));
        let mut s = Map::new();
        s.insert("status".into(), status);
        s.insert("executions".into(), json!(calls.len()));
        s.insert(
            "sql".into(),
            first.as_ref().map(|i| i["sql"].clone()).unwrap_or_default(),
        );
        s.insert(
            "params".into(),
            first
                .as_ref()
                .map(|i| i["params"].clone())
                .unwrap_or_default(),
        );
        s.insert("input".into(), first.clone().unwrap_or_default());
        s.insert(
            "inputs".into(),
            json!(calls
                .iter()
                .map(|c| strip_nulls(&c.input))
                .collect::<Vec<_>>()),
        );
        s.insert(
            "output".into(),
            recorded.map(|r| r["output"].clone()).unwrap_or_default(),
        );
        let error = recorded
            .and_then(|r| r["error"].as_str().map(str::to_owned))
            .or_else(|| calls.last().and_then(|c| c.error.clone()));
        s.insert("error".into(), json!(error));
        steps.insert(key.clone(), Json::Object(s));
    }
    doc.insert("steps".into(), Json::Object(steps));
    Json::Object(doc)
}

fn strip_nulls(v: &Json) -> Json {
    match v {
        Json::Object(o) => Json::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Whitespace runs as one space (SQL, notification texts).
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The expectation, with its texts squeezed as the actual ones are.
fn normalize(expected: &Json, key: &str) -> Json {
    match expected {
        Json::String(s) if matches!(key, "sql" | "text") => Json::String(squeeze(s)),
        Json::Object(o) => Json::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), normalize(v, k)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(|v| normalize(v, key)).collect()),
        other => other.clone(),
    }
}

/// `actual` cut down to the shape of `expected`: objects keep the keys `expected` names, lists
/// are compared item by item, texts under `sql`/`text` are squeezed, an `error` that contains
/// the expected text counts as it, and `contains` lists the pieces found.
fn project(expected: &Json, actual: &Json, key: &str) -> Json {
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => {
            let mut out = Map::new();
            for (k, ev) in e {
                if k == "contains" {
                    let text = squeeze(a.get("text").and_then(Json::as_str).unwrap_or(""));
                    let found: Vec<Json> = ev
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Json::as_str)
                        .map(|piece| {
                            if text.contains(&squeeze(piece)) {
                                json!(piece)
                            } else {
                                json!(format!("(not in the text) {piece}"))
                            }
                        })
                        .collect();
                    out.insert(k.clone(), Json::Array(found));
                    continue;
                }
                if let Some(av) = a.get(k) {
                    out.insert(k.clone(), project(ev, av, k));
                }
            }
            Json::Object(out)
        }
        (Json::Array(e), Json::Array(a)) => Json::Array(
            a.iter()
                .enumerate()
                .map(|(i, av)| match e.get(i) {
                    Some(ev) => project(ev, av, key),
                    None => normalize(av, key),
                })
                .collect(),
        ),
        (Json::String(e), Json::String(a)) if key == "error" && a.contains(e.as_str()) => {
            expected.clone()
        }
        (_, Json::String(a)) if matches!(key, "sql" | "text") => Json::String(squeeze(a)),
        _ => actual.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_compare_on_the_keys_given_and_texts_by_their_words() {
        let expected =
            json!({ "steps": { "s": { "sql": "SELECT  1\n FROM t", "status": "succeeded" } } });
        let actual = json!({ "steps": { "s": { "sql": "SELECT 1 FROM t", "status": "succeeded", "output": 5 } } });
        assert_eq!(project(&expected, &actual, ""), normalize(&expected, ""));
    }

    #[test]
    fn an_error_matches_by_containing_and_missing_pieces_are_named() {
        let expected = json!({ "error": "within 10m", "notify": [{ "contains": ["a b", "zz"] }] });
        let actual = json!({ "error": "`x` still false after 21 checks within 10m", "notify": [{ "to": "ops", "text": "a\n b c" }] });
        assert_eq!(
            project(&expected, &actual, ""),
            json!({ "error": "within 10m", "notify": [{ "contains": ["a b", "(not in the text) zz"] }] })
        );
    }

    #[test]
    fn a_longer_actual_list_shows_its_extra_items() {
        let expected = json!({ "changes": ["scale"] });
        let actual = json!({ "changes": ["scale", "retry"] });
        assert_eq!(project(&expected, &actual, ""), actual);
    }
}
