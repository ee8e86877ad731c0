//! The mocks a case gives, as the engine asks for them: each execution of a step takes its
//! result from the case, and is recorded with its rendered input for the expectations.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use serde_json::{json, Value as Json};

use super::spec::{Mock, MockResult};
use crate::{
    steps::{MockAnswer, MockCall, StepError, StepMocks, StepOutput},
    template::Dialect,
};

/// One execution, as the expectations read it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The step id, or `child/step` for a step of a child run.
    pub key: String,
    pub kind: &'static str,
    pub input: Json,
    pub changes: bool,
    pub error: Option<String>,
}

/// How often an `until` step polls before the engine gives up, in the case's virtual time:
/// the limit, and the error the engine then reports.
#[derive(Debug, Clone)]
pub struct PollLimit {
    pub polls: usize,
    pub error: String,
}

#[derive(Debug)]
pub struct CaseMocks {
    root: String,
    mocks: BTreeMap<String, Mock>,
    limits: BTreeMap<String, PollLimit>,
    dialect: Option<Dialect>,
    now: Option<chrono::DateTime<chrono::Utc>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    counts: HashMap<String, usize>,
    calls: Vec<Call>,
    unmocked: Vec<String>,
}

impl CaseMocks {
    pub fn new(
        root: String,
        mocks: BTreeMap<String, Mock>,
        limits: BTreeMap<String, PollLimit>,
        dialect: Option<Dialect>,
        now: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Self {
        CaseMocks {
            root,
            mocks,
            limits,
            dialect,
            now,
            state: Mutex::default(),
        }
    }

    /// Every execution so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .lock()
            .map(|s| s.calls.clone())
            .unwrap_or_default()
    }

    /// Steps that executed without a mock.
    pub fn unmocked(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.unmocked.clone())
            .unwrap_or_default()
    }

    fn key(&self, call: &MockCall<'_>) -> String {
        if call.playbook == self.root {
            call.step.to_owned()
        } else {
            format!("{}/{}", call.playbook, call.step)
        }
    }

    fn result(&self, key: &str, n: usize, call: &MockCall<'_>) -> MockAnswer {
        let Some(mock) = self.mocks.get(key) else {
            return match call.kind {
                "assert" | "playbook" => MockAnswer::Execute,
                // Waiting takes no time under test.
                "wait" => MockAnswer::Result(Ok(StepOutput::value(
                    call.input["wait"].clone(),
                ))),
                // Notifications are captured, not sent.
                "notify" => MockAnswer::Result(Ok(StepOutput::value(
                    json!({ "to": call.input["to"], "sent": false }),
                ))),
                // An action the config does not name changes nothing: it tells a person.
                "action" if call.input["configured"] == json!(false) => {
                    MockAnswer::Result(Ok(StepOutput::value(json!({
                        "configured": false,
                        "action": call.input["action"],
                        "manual": call.input["manual"],
                    }))))
                }
                kind => MockAnswer::Result(Err(StepError::fatal(format!(
                    "step `{key}` ({kind}) has no mock in this case: give its result under `mocks: {{ {key}: ... }}`"
                )))),
            };
        };
        let r = match mock {
            Mock::One(r) => r,
            Mock::Each(list) => match list.get(n).or(list.last()) {
                Some(r) => r,
                None => {
                    return MockAnswer::Result(Err(StepError::fatal(format!(
                        "mock `{key}` is an empty list"
                    ))))
                }
            },
        };
        let r = match (&r.by_item, &call.item) {
            (Some(by), Some(item)) => {
                let k = item_key(item);
                match by.get(&k) {
                    Some(r) => &**r,
                    None => {
                        return MockAnswer::Result(Err(StepError::fatal(format!(
                            "mock `{key}` has no `by_item` result for item `{k}` (it has: {})",
                            by.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))))
                    }
                }
            }
            _ => r,
        };
        answer(key, r, call)
    }
}

impl StepMocks for CaseMocks {
    fn answer(&self, call: MockCall<'_>) -> MockAnswer {
        let key = self.key(&call);
        let n = {
            let Ok(mut s) = self.state.lock() else {
                return MockAnswer::Result(Err(StepError::fatal("mock state poisoned")));
            };
            let c = s.counts.entry(key.clone()).or_default();
            *c += 1;
            *c - 1
        };
        // Past the polls the virtual time allows, the engine has given up: not an execution.
        if let Some(limit) = self.limits.get(&key).filter(|l| n >= l.polls) {
            return MockAnswer::Result(Err(StepError::fatal(limit.error.clone())));
        }
        let answer = self.result(&key, n, &call);
        // An action the config does not name needs no mock: it only tells a person.
        let tells_a_person = call.kind == "action" && call.input["configured"] == json!(false);
        let unmocked = !self.mocks.contains_key(&key)
            && !matches!(call.kind, "assert" | "playbook" | "wait" | "notify")
            && !tells_a_person;
        let error = match &answer {
            MockAnswer::Result(Err(e)) => Some(e.to_string()),
            MockAnswer::Cancel(reason) => Some(reason.clone()),
            _ => None,
        };
        if let Ok(mut s) = self.state.lock() {
            if unmocked {
                s.unmocked.push(key.clone());
            }
            s.calls.push(Call {
                key,
                kind: call.kind,
                input: call.input,
                changes: call.changes,
                error,
            });
        }
        answer
    }

    fn dialect(&self) -> Option<Dialect> {
        self.dialect
    }

    fn now(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.now
    }
}

/// How a `for_each` item is named in `by_item`.
fn item_key(item: &Json) -> String {
    match item {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        Json::Object(o) => ["error_type", "entity", "name", "id", "topic"]
            .iter()
            .find_map(|k| o.get(*k).filter(|v| !v.is_null()).map(item_key))
            .unwrap_or_else(|| item.to_string()),
        other => other.to_string(),
    }
}

/// One mocked result, as the step kind would have produced it.
fn answer(key: &str, r: &MockResult, call: &MockCall<'_>) -> MockAnswer {
    let fail = |m: String| {
        MockAnswer::Result(Err(if r.retryable {
            StepError::retryable(m)
        } else {
            StepError::fatal(m)
        }))
    };
    if let Some(e) = &r.error {
        return fail(e.clone());
    }
    match call.kind {
        "http" if r.status.is_some() => http(r, &call.input),
        "shell" if r.exit_code.is_some() || r.stdout.is_some() || r.stderr.is_some() => {
            shell(r, &call.input)
        }
        "approve" => match r.approved {
            Some(true) => MockAnswer::Result(Ok(StepOutput::value(json!({
                "decision": "approved", "actor": r.by.as_deref().unwrap_or("cli:operator"), "comment": r.comment,
            })))),
            Some(false) => MockAnswer::Cancel(format!(
                "rejected by {}{}",
                r.by.as_deref().unwrap_or("cli:operator"),
                r.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            )),
            None => MockAnswer::Result(Err(StepError::fatal(format!(
                "mock `{key}`: an approve step needs `approved: true|false` (or `error:` for nobody answering)"
            )))),
        },
        _ => MockAnswer::Result(Ok(StepOutput {
            rows: r.rows.clone().unwrap_or_default(),
            output: r.output.clone().unwrap_or(Json::Null),
        })),
    }
}

/// An `http` answer, judged as the step judges a real one.
fn http(r: &MockResult, input: &Json) -> MockAnswer {
    let status = r.status.unwrap_or(200);
    let expect: Vec<u64> = input["expect"]
        .as_array()
        .map(|a| a.iter().filter_map(Json::as_u64).collect())
        .unwrap_or_default();
    let ok = if expect.is_empty() {
        (200..300).contains(&status)
    } else {
        expect.contains(&u64::from(status))
    };
    let body = match (&r.json, &r.body) {
        (Some(j), _) => j.clone(),
        (None, Some(b)) => serde_json::from_str(b).unwrap_or_else(|_| Json::String(b.clone())),
        (None, None) => Json::String(String::new()),
    };
    if !ok {
        let text = match &body {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let msg = format!(
            "{} {} answered {status}: {}",
            input["method"].as_str().unwrap_or("GET"),
            input["url"].as_str().unwrap_or(""),
            crate::text::truncate(&text, 300)
        );
        return MockAnswer::Result(Err(if status >= 500 || status == 429 {
            StepError::retryable(msg)
        } else {
            StepError::fatal(msg)
        }));
    }
    let rows = match &body {
        Json::Array(items) => items.clone(),
        _ => r.rows.clone().unwrap_or_default(),
    };
    MockAnswer::Result(Ok(StepOutput {
        rows,
        output: json!({ "status": status, "headers": {}, "body": body }),
    }))
}

/// A `shell` program's end, judged as the step judges a real one.
fn shell(r: &MockResult, input: &Json) -> MockAnswer {
    let code = r.exit_code.unwrap_or(0);
    let out = r.stdout.clone().unwrap_or_default();
    let err = r.stderr.clone().unwrap_or_default();
    if code != 0 {
        let program = input["argv"][0].as_str().unwrap_or("?");
        return MockAnswer::Result(Err(StepError::fatal(format!(
            "`{program}` exited with {code}: {}",
            crate::text::truncate(err.trim(), 500)
        ))));
    }
    MockAnswer::Result(Ok(StepOutput {
        rows: out.lines().map(|l| json!({ "line": l })).collect(),
        output: json!({ "exit_code": code, "stdout": out, "stderr": err }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_named_by_themselves_or_their_telling_field() {
        assert_eq!(item_key(&json!("TimeoutException")), "TimeoutException");
        assert_eq!(item_key(&json!(7)), "7");
        assert_eq!(
            item_key(&json!({ "error_type": "NetworkException", "count": 2 })),
            "NetworkException"
        );
        assert_eq!(item_key(&json!({ "topic": "user-events" })), "user-events");
        assert_eq!(item_key(&json!({ "x": 1 })), r#"{"x":1}"#);
    }

    #[test]
    fn an_http_answer_is_judged_by_the_steps_expect() {
        let r = MockResult {
            status: Some(200),
            ..Default::default()
        };
        let input = json!({ "method": "GET", "url": "http://x/", "expect": [401] });
        match http(&r, &input) {
            MockAnswer::Result(Err(StepError::Fatal(m))) => {
                assert_eq!(m, "GET http://x/ answered 200: ")
            }
            _ => panic!("a 200 where 401 is expected fails the step"),
        }
        let r = MockResult {
            status: Some(503),
            body: Some("busy".into()),
            ..Default::default()
        };
        assert!(matches!(
            http(&r, &json!({ "method": "GET", "url": "u" })),
            MockAnswer::Result(Err(StepError::Retryable { .. }))
        ));
    }

    #[test]
    fn a_program_that_exits_non_zero_fails_the_step() {
        let r = MockResult {
            exit_code: Some(2),
            stderr: Some("no such pod\n".into()),
            ..Default::default()
        };
        match shell(&r, &json!({ "argv": ["kubectl", "get"] })) {
            MockAnswer::Result(Err(e)) => {
                assert_eq!(e.to_string(), "`kubectl` exited with 2: no such pod")
            }
            _ => panic!("exit 2 fails the step"),
        }
        let r = MockResult {
            stdout: Some("a\nb".into()),
            ..Default::default()
        };
        match shell(&r, &json!({ "argv": ["kubectl"] })) {
            MockAnswer::Result(Ok(out)) => assert_eq!(
                out.rows,
                vec![json!({ "line": "a" }), json!({ "line": "b" })]
            ),
            _ => panic!("exit 0 succeeds"),
        }
    }
}
