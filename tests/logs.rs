//! Logs: `--log-format json` (or `RUNBOOK_LOG_FORMAT=json`) writes one JSON object a line whose
//! spans carry the run's id and playbook and the step's id; text logs have no colour codes when
//! stderr is not a terminal.

use serde_json::Value as Json;

use crate::util::Workdir;

const FLAKY: &str =
    "name: flaky\nsteps:\n  - id: probe\n    tcp_check: 127.0.0.1:1\n    retry: { attempts: 2, backoff: 10ms }\n";

#[test]
fn json_logs_carry_the_run_and_the_step_on_every_line_inside_them() {
    let w = Workdir::new()
        .env("RUNBOOK_LOG", "info")
        .env("RUNBOOK_LOG_FORMAT", "json");
    w.playbook("flaky", FLAKY);
    let out = w.run(&["run", "flaky", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run_id = out.run()["run_id"].clone();
    let lines: Vec<Json> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let retry = lines
        .iter()
        .find(|l| l["message"] == "Step failed; retrying.")
        .unwrap_or_else(|| panic!("no retry line:\n{}", out.stderr));
    assert_eq!(retry["level"], "WARN");
    let spans = retry["spans"].as_array().unwrap();
    assert_eq!(spans[0]["name"], "run");
    assert_eq!(
        (&spans[0]["run_id"], &spans[0]["playbook"]),
        (&run_id, &Json::from("flaky"))
    );
    assert_eq!(
        (&spans[1]["name"], &spans[1]["step"]),
        (&Json::from("step"), &Json::from("probe"))
    );
    let finished = lines
        .iter()
        .find(|l| l["message"] == "Run finished.")
        .unwrap_or_else(|| panic!("no end line:\n{}", out.stderr));
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["span"]["run_id"], run_id);

    // The flag says the same; text logs to a pipe have no escape codes.
    let w = Workdir::new().env("RUNBOOK_LOG", "info");
    w.playbook("flaky", FLAKY);
    let out = w.run(&["--log-format", "json", "run", "flaky"]);
    assert!(out.stderr.lines().all(|l| l.starts_with('{')), "{out:?}");
    let out = w.run(&["run", "flaky"]);
    assert!(out.stderr.contains("Step failed; retrying."), "{out:?}");
    assert!(!out.stderr.contains('\u{1b}'), "colour codes in {out:?}");
    assert!(out.stderr.contains("run{run_id="), "{out:?}");
}
