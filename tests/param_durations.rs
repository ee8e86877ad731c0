//! Issue 10: poll intervals and waits as params. `every`, `within` and `wait` take a template
//! rendered when the step runs, and the config's `playbooks.NAME.params` sets a playbook's params
//! for every trigger, below the run's own `--param`.

use crate::util::{assert_run_error, Workdir};

const POLLED: &str = r#"
name: polled
params:
  every: { type: string, default: 100ms }
  within: { type: duration, default: 1s }
  pause: { type: duration, default: 1h }
steps:
  - id: rest
    wait: "{{ params.pause }}"
    timeout: 10s
  - id: never
    until: "false"
    every: "{{ params.every }}"
    within: "{{ params.within }}"
    sql: "SELECT 1 AS n"
"#;

#[test]
fn templated_poll_times_come_from_the_config_and_the_run_params_win() {
    let w = Workdir::new();
    w.playbook("polled", POLLED);
    w.config("playbooks:\n  polled: { params: { pause: 0s, within: 2s } }\n");
    assert_eq!(w.run(&["validate"]).code, 0);

    // The config's `pause: 0s` replaces the playbook's 1h; its `within: 2s` bounds the poll.
    let out = w.run(&["run", "polled", "--output", "json"]);
    let run = out.run();
    assert_eq!(run["status"], "failed", "{out:?}");
    assert_eq!(run["steps"]["rest"]["output"], "0s", "{out:?}");
    assert_run_error(&run, "`false` still false after");
    assert_run_error(&run, "checks within 2s");

    // An explicit param wins over the config.
    let out = w.run(&["run", "polled", "-p", "within=1s", "--output", "json"]);
    assert_run_error(&out.run(), "checks within 1s");
}

#[test]
fn a_template_that_renders_no_duration_fails_the_step_naming_the_key() {
    let w = Workdir::new();
    w.playbook("polled", POLLED);
    w.config("playbooks:\n  polled: { params: { pause: 0s } }\n");
    let out = w.run(&["run", "polled", "-p", "every=often", "--output", "json"]);
    let run = out.run();
    assert_eq!(run["failed_step"], "never", "{out:?}");
    assert_run_error(
        &run,
        "`every`: `{{ params.every }}` rendered `often`, which is not a duration",
    );

    // A wait longer than its step's timeout says so instead of being cut short.
    let out = w.run(&["run", "polled", "-p", "pause=1m", "--output", "json"]);
    let run = out.run();
    assert_eq!(run["failed_step"], "rest", "{out:?}");
    assert_run_error(&run, "longer than the step's timeout of 10s");
}

#[test]
fn validate_checks_duration_templates_and_the_configs_playbook_params() {
    let w = Workdir::new();
    w.playbook(
        "bad",
        "name: bad\nsteps:\n  - id: a\n    wait: \"{{ params.nope }}\"\n  - id: b\n    until: \"true\"\n    every: \"{{ steps.zzz.rows }}\"\n    sql: SELECT 1\n",
    );
    let out = w.run(&["validate"]);
    assert_ne!(out.code, 0, "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("bad.yaml:4:"), "{text}");
    assert!(text.contains("nope"), "{text}");
    assert!(text.contains("bad.yaml:7:"), "{text}");

    let w = Workdir::new();
    w.playbook("polled", POLLED);
    w.config(
        "playbooks:\n  polled: { params: { paus: 0s, within: soon } }\n  missing: { params: {} }\n",
    );
    let out = w.run(&["validate"]);
    assert_ne!(out.code, 0, "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    for needle in [
        "the config's `playbooks.polled.params.paus`: playbook `polled` has no param `paus` (it has: every, pause, within)",
        "the config's `playbooks.polled.params.within`",
        "the config's `playbooks.missing` names no playbook",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
}
