//! `runbook test`: the shipped playbooks pass their cases, and the framework itself holds: an
//! unmocked step fails its case by name, a wrong expectation prints a diff and exits non-zero,
//! mocks differ per poll, per item and per child run, and nothing outside is touched.

use std::{collections::BTreeSet, path::Path};

use serde_json::Value as Json;

use crate::util::Workdir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const CONFIG: &str = "notify:\n  ops: { webhook: { url_env: OPS_URL } }\n";

/// A playbook that counts pending commands, polls until the count is low, and tells ops.
const POLLER: &str = r#"
name: poller
params:
  entity: { type: string, default: user }
steps:
  - id: count
    sql: "SELECT COUNT(*) AS n FROM command_queue WHERE entity = {{ params.entity }}"
  - id: drain
    when: "steps.count.rows[0].n > 10"
    runtime: { op: scale_workers, concurrency: 6 }
  - id: verify
    until: "steps.verify.rows[0].n < 10"
    every: 30s
    within: 2m
    sql: "SELECT COUNT(*) AS n FROM command_queue"
  - id: per_type
    for_each: ["TimeoutException", "NetworkException"]
    runtime: { op: dlq_retry, error_type: "{{ item }}" }
  - id: tell
    notify: { to: ops, text: "was {{ steps.count.rows[0].n }}, now {{ steps.verify.rows[0].n }}; retried {{ steps.per_type.output | map(attribute='retried') | join('+') }}" }
"#;

fn workdir(tests: &str) -> Workdir {
    let w = Workdir::new();
    w.config(CONFIG);
    w.playbook("poller", POLLER);
    std::fs::create_dir_all(w.path().join("runbooks/tests")).unwrap();
    std::fs::write(w.path().join("runbooks/tests/poller.yaml"), tests).unwrap();
    w
}

#[test]
fn shipped_playbooks_pass_their_cases_with_a_healthy_case_each() {
    let w = Workdir::new();
    let config = root().join("runbook.yaml");
    let runbooks = root().join("runbooks");
    let out = w.run(&[
        "--config",
        config.to_str().unwrap(),
        "test",
        runbooks.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    assert_eq!(doc["result"], "ok", "{doc:#}");
    let names: Vec<&str> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let shipped: BTreeSet<String> = std::fs::read_dir(&runbooks)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "yaml")
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    for pb in &shipped {
        let cases: Vec<&&str> = names
            .iter()
            .filter(|n| n.starts_with(&format!("{pb}::")))
            .collect();
        assert!(
            cases.iter().any(|n| n.contains("::healthy")),
            "playbook {pb} has no healthy case: {cases:?}"
        );
        assert!(
            cases.len() >= 2,
            "playbook {pb} has no incident case: {cases:?}"
        );
    }
    // Nothing outside was touched: no store was created where the command ran.
    assert!(!w.path().join("runbook.db").exists());
}

#[test]
fn a_step_without_a_mock_fails_its_case_by_name() {
    let w = workdir(
        r#"
playbook: poller
cases:
  - name: forgot-verify
    mocks:
      count: { rows: [{ n: 3 }] }
      per_type: { output: { retried: 0 } }
"#,
    );
    let out = w.run(&["test"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("test poller::forgot-verify ... FAILED"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("step `verify` executed without a mock"),
        "{out:?}"
    );
    assert!(!w.path().join("runbook.db").exists());
}

#[test]
fn a_wrong_expectation_prints_a_diff_and_exits_non_zero() {
    let w = workdir(
        r#"
playbook: poller
cases:
  - name: quiet
    mocks:
      count: { rows: [{ n: 3 }] }
      verify: { rows: [{ n: 3 }] }
      per_type: { output: { retried: 0 } }
    expect:
      status: failed
      changes: [drain]
"#,
    );
    let out = w.run(&["test"]);
    assert_eq!(out.code, 1, "{out:?}");
    for line in [
        "--- expected",
        "+++ actual",
        "-status: failed",
        "+status: succeeded",
        "-- drain",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
    assert!(
        out.stdout
            .contains("test result: FAILED. 0 passed; 1 failed"),
        "{out:?}"
    );
    let json = w.run(&["test", "-o", "json"]);
    assert_eq!(json.code, 1);
    let doc = json.json();
    assert_eq!(doc["cases"][0]["outcome"], "failed");
    assert!(doc["cases"][0]["diff"]
        .as_str()
        .unwrap()
        .contains("+status: succeeded"));
}

#[test]
fn mocks_differ_per_poll_and_per_item_and_the_rendered_sql_is_compared() {
    let w = workdir(
        r#"
playbook: poller
cases:
  - name: drains
    params: { entity: "x'; DROP TABLE command_queue; --" }
    mocks:
      count: { rows: [{ n: 50 }] }
      drain: { output: { before: { workerConcurrency: 3 }, after: { workerConcurrency: 6 } } }
      verify:
        - rows: [{ n: 40 }]
        - rows: [{ n: 20 }]
        - rows: [{ n: 5 }]
      per_type:
        by_item:
          TimeoutException: { output: { retried: 4 } }
          NetworkException: { output: { retried: 2 } }
    expect:
      status: succeeded
      changes: [drain, per_type, per_type]
      runtime_ops:
        - { op: scale_workers, concurrency: 6 }
        - { op: dlq_retry, error_type: TimeoutException }
        - { op: dlq_retry, error_type: NetworkException }
      steps:
        count:
          sql: "SELECT COUNT(*) AS n FROM command_queue WHERE entity = ?1"
          params: ["x'; DROP TABLE command_queue; --"]
        verify: { executions: 3, status: succeeded }
      notify:
        - { to: ops, text: "was 50, now 5; retried 4+2" }
  - name: postgres-dialect
    dialect: postgres
    mocks:
      count: { rows: [{ n: 1 }] }
      verify: { rows: [{ n: 1 }] }
      per_type: { output: { retried: 0 } }
    expect:
      steps:
        count: { sql: "SELECT COUNT(*) AS n FROM command_queue WHERE entity = $1", params: [user] }
  - name: never-drains
    mocks:
      count: { rows: [{ n: 50 }] }
      drain: { output: {} }
      verify: { rows: [{ n: 40 }] }
    expect:
      status: failed
      failed_step: verify
      error: "still false after 5 checks within 2m"
      not_ran: [per_type, tell]
      steps:
        verify: { executions: 5 }
"#,
    );
    let started = std::time::Instant::now();
    let out = w.run(&["test"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("test poller::drains ... ok"), "{out:?}");
    assert!(
        out.stdout.contains("test result: ok. 3 passed; 0 failed"),
        "{out:?}"
    );
    // Polls every 30s within 2m take no time under test.
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
}

#[test]
fn child_runs_take_their_own_mocks_and_a_rejected_approval_stops_the_run() {
    let w = Workdir::new();
    w.config(CONFIG);
    w.playbook(
        "child",
        "name: child\nsteps:\n  - id: look\n    sql: SELECT 1 AS one\n",
    );
    w.playbook(
        "parent",
        r#"
name: parent
steps:
  - id: ask
    approve: { text: "go on?", timeout: 1h }
  - id: call
    playbook: child
  - id: after
    assert: "steps.call.status == 'succeeded'"
"#,
    );
    std::fs::create_dir_all(w.path().join("runbooks/tests")).unwrap();
    std::fs::write(
        w.path().join("runbooks/tests/parent.yaml"),
        r#"
playbook: parent
cases:
  - name: approved
    run_id: 41
    mocks:
      ask: { approved: true, by: "cli:alice" }
      child/look: { rows: [{ one: 1 }] }
    expect:
      status: succeeded
      ran: [ask, call, after]
      steps:
        child/look: { status: succeeded, executions: 1, sql: SELECT 1 AS one }
  - name: rejected
    mocks:
      ask: { approved: false, by: "cli:bob", comment: not now }
    expect:
      status: cancelled
      error: "rejected by cli:bob: not now"
      not_ran: [call, after]
  - name: known-defect
    xfail: the child should not be called
    mocks:
      ask: { approved: true }
      child/look: { rows: [] }
    expect:
      not_ran: [call]
"#,
    )
    .unwrap();
    let out = w.run(&["test", "runbooks"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("test parent::known-defect ... xfail"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("2 passed; 0 failed; 1 xfail"),
        "{out:?}"
    );
}

#[test]
fn a_playbooks_folder_without_tests_is_a_usage_error() {
    let w = Workdir::new();
    w.config(CONFIG);
    w.playbook("poller", POLLER);
    let out = w.run(&["test"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("runbooks has no tests/ folder"),
        "{out:?}"
    );
}

#[test]
fn bad_test_files_are_usage_errors_with_their_place() {
    let w = workdir("playbook: poller\ncases:\n  - name: x\n    mocks: {}\n    expct: {}\n");
    let out = w.run(&["test"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("poller.yaml:5:"), "{out:?}");
    assert!(out.stderr.contains("unknown field `expct`"), "{out:?}");
}

/// Every key of `runbook schema test` is named in docs/testing.md, and every key the doc's
/// tables name is in the schema.
#[test]
fn testing_doc_names_every_key_of_the_test_schema() {
    let w = Workdir::new();
    let out = w.run(&["schema", "test"]);
    assert_eq!(out.code, 0, "{out:?}");
    let schema = out.json();
    let mut keys = BTreeSet::new();
    fn walk(v: &Json, keys: &mut BTreeSet<String>) {
        match v {
            Json::Object(o) => {
                if let Some(Json::Object(props)) = o.get("properties") {
                    keys.extend(props.keys().cloned());
                }
                o.values().for_each(|v| walk(v, keys));
            }
            Json::Array(a) => a.iter().for_each(|v| walk(v, keys)),
            _ => {}
        }
    }
    walk(&schema, &mut keys);
    assert!(
        keys.contains("by_item") && keys.contains("runtime_ops"),
        "{keys:?}"
    );
    let doc = std::fs::read_to_string(root().join("docs/testing.md")).unwrap();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")) && !doc.contains(&format!("`{k}:")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/testing.md does not name: {missing:?}"
    );
    // The doc's key tables name only keys of the schema.
    let documented: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    assert!(documented.len() > 20, "{documented:?}");
    let unknown: Vec<&String> = documented.iter().filter(|k| !keys.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "docs/testing.md tables name keys the schema lacks: {unknown:?}"
    );
}
