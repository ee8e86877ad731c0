//! `runbook validate`: every error in every file, each with file, line and column.

use crate::util::Workdir;

#[test]
fn reports_every_error_in_every_file_with_its_location() {
    let w = Workdir::new();
    // Shape error: serde reports the unknown key where it stands.
    w.playbook(
        "typo",
        "name: typo\nsteps:\n  - id: a\n    sql: SELECT 1\n  - id: b\n    sqll: SELECT 2\n",
    );
    // Several semantic errors in one file.
    w.playbook(
        "refs",
        r#"name: refs
params:
  limit: { type: integer, default: ten }
steps:
  - id: first
    when: "steps.later.rows | length > 0"
    sql: "SELECT {{ params.nope }}"
  - id: later
    sql: "SELECT {{ oops( }}"
  - id: later
    wait: 1s
"#,
    );
    // Triggers: bad cron and bad matcher; a step without a kind.
    w.playbook(
        "triggers",
        r#"name: triggers
on:
  schedule: "every monday"
  alerts:
    - matchers: ['alertname=~"(unclosed"']
steps:
  - id: nothing
"#,
    );
    w.playbook(
        "good",
        "name: good\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n",
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let expect = [
        ("runbooks/typo.yaml:6:5:", "unknown field `sqll`"),
        (
            "runbooks/refs.yaml:3:27:",
            "default of `limit`: expected an integer",
        ),
        ("runbooks/refs.yaml:6:5:", "step `later` runs later"),
        ("runbooks/refs.yaml:7:5:", "unknown parameter `nope`"),
        ("runbooks/refs.yaml:9:5:", "template syntax error"),
        ("runbooks/refs.yaml:10:5:", "duplicate step id `later`"),
        (
            "runbooks/triggers.yaml:3:3:",
            "bad cron expression `every monday`",
        ),
        ("runbooks/triggers.yaml:5:18:", "bad regex"),
        ("runbooks/triggers.yaml:7:5:", "step `nothing` has no kind"),
    ];
    for (place, message) in expect {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(place) && l.contains(message)),
            "expected `{place} ...{message}...` in:\n{}",
            out.stdout
        );
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("runbooks/")).count(),
        expect.len(),
        "no other findings: {}",
        out.stdout
    );
    assert!(out.stderr.contains("9 problems found"), "{out:?}");
}

#[test]
fn comparing_a_step_status_with_ok_is_flagged_where_it_stands() {
    let w = Workdir::new();
    w.playbook(
        "old",
        r#"name: old
steps:
  - id: check
    sql: SELECT 1 AS one
  - id: after
    when: "steps.check.status == 'ok'"
    sql: "SELECT {{ steps.check.status == 'succeeded' }} AS fine"
"#,
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("runbooks/"))
        .collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(
        lines[0].starts_with("runbooks/old.yaml:6:5:")
            && lines[0].contains("step status `ok` is spelled `succeeded`"),
        "{out:?}"
    );
}

#[test]
fn a_clean_folder_validates_and_lists() {
    let w = Workdir::new();
    w.playbook(
        "backlog",
        r#"name: backlog
description: Queue depth over 1000.
on:
  alerts:
    - alertname: StreamingQueueDepthHigh
  schedule: "0 */5 * * * *"
steps:
  - id: depth
    sql: SELECT COUNT(*) AS n FROM command_queue WHERE status = 'pending'
"#,
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("1 playbook OK"));
    let out = w.run(&["list"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("backlog")
            && out.stdout.contains("alertname=\"StreamingQueueDepthHigh\""),
        "{out:?}"
    );
    assert!(out.stdout.contains("Queue depth over 1000."), "{out:?}");
    // The schedule shown is the one computed from the cron text: the next fire times fall on every
    // fifth minute, at second 0, five minutes apart, the first within five minutes from now.
    let before = chrono::Utc::now();
    let out = w.run(&["schedule", "--count", "3", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let shown = out.json();
    assert_eq!(shown[0]["name"], "backlog", "{shown}");
    let next: Vec<chrono::DateTime<chrono::Utc>> = shown[0]["next"]
        .as_array()
        .unwrap_or_else(|| panic!("no next times: {shown}"))
        .iter()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc)
        })
        .collect();
    assert_eq!(next.len(), 3, "{shown}");
    use chrono::Timelike;
    for t in &next {
        assert_eq!(
            (t.minute() % 5, t.second()),
            (0, 0),
            "{t} is not on a 5-minute mark"
        );
    }
    for pair in next.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::minutes(5), "{next:?}");
    }
    assert!(
        next[0] > before && next[0] <= before + chrono::Duration::minutes(5),
        "the next tick {} is the first 5-minute mark after {before}",
        next[0]
    );
}

#[test]
fn the_shipped_playbooks_validate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let w = Workdir::new();
    let out = w.run(&[
        "--config",
        &format!("{root}/runbook.yaml"),
        "validate",
        &format!("{root}/runbooks"),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn schema_describes_the_format() {
    let w = Workdir::new();
    let out = w.run(&["schema"]);
    assert_eq!(out.code, 0, "{out:?}");
    let schema = out.json();
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown keys are rejected by editors too"
    );
    let props = &schema["properties"];
    for key in ["name", "on", "params", "steps", "on_failure", "timeout"] {
        assert!(props.get(key).is_some(), "schema lacks `{key}`");
    }
    let step = serde_json::to_string(&schema["$defs"]["RawStep"]).unwrap();
    for kind in [
        "sql", "promql", "http", "shell", "notify", "runtime", "until", "for_each",
    ] {
        assert!(
            step.contains(&format!("\"{kind}\"")),
            "step schema lacks `{kind}`"
        );
    }
}

#[test]
fn global_options_work_before_or_after_the_subcommand_and_from_the_environment() {
    let w = Workdir::new();
    std::fs::create_dir(w.path().join("other")).unwrap();
    std::fs::write(
        w.path().join("other/x.yaml"),
        "name: x\nsteps:\n  - id: a\n    wait: 0s\n",
    )
    .unwrap();
    assert_eq!(w.run(&["--runbooks", "other", "validate"]).code, 0);
    assert_eq!(w.run(&["validate", "--runbooks", "other"]).code, 0);
    // Each global option from its environment variable, checked by its effect.
    let listed = |out: &crate::util::Output| -> Vec<String> {
        assert_eq!(out.code, 0, "{out:?}");
        out.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    w.playbook("y", "name: y\nsteps:\n  - id: a\n    wait: 0s\n");
    let w2 = Workdir {
        dir: w.dir,
        env: vec![("RUNBOOK_RUNBOOKS".into(), "other".into())],
    };
    assert_eq!(listed(&w2.run(&["list", "-o", "json"])), ["x"]);
    // The flag wins over the variable.
    assert_eq!(
        listed(&w2.run(&["list", "-o", "json", "--runbooks", "runbooks"])),
        ["y"]
    );
    let w3 = Workdir {
        dir: w2.dir,
        env: vec![("RUNBOOK_STORE".into(), "sqlite://elsewhere.db".into())],
    };
    let out = w3.run(&["run", "y"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        w3.path().join("elsewhere.db").exists(),
        "RUNBOOK_STORE names the store"
    );
    assert!(
        !w3.path().join("runbook.db").exists(),
        "not the default store"
    );
    let w4 = Workdir {
        dir: w3.dir,
        env: vec![("RUNBOOK_CONFIG".into(), "no-such-config.yaml".into())],
    };
    let out = w4.run(&["list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no-such-config.yaml"), "{out:?}");
    let w5 = Workdir {
        dir: w4.dir,
        env: vec![
            ("RUNBOOK_LOG_FORMAT".into(), "json".into()),
            ("RUNBOOK_LOG".into(), "info".into()),
        ],
    };
    let out = w5.run(&["run", "y"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(!lines.is_empty(), "info logs were written: {out:?}");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v.is_object(), "{l}");
    }
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let w = Workdir::new();
    // `runbook schema | true`: the reader is gone before the schema is written.
    let mut child = w
        .command()
        .args(["schema"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start runbook schema");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
