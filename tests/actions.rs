//! Issue 10: `action` steps run what the config's `actions:` names, a command (argv, each element
//! rendered on its own) or an HTTP request, and audit it; an action the config does not name tells
//! a person what to do and changes nothing.

use std::{
    os::unix::fs::PermissionsExt,
    sync::{Arc, Mutex},
};

use axum::{extract::Path, http::HeaderMap, routing::post, Json as AxJson, Router};
use serde_json::{json, Value as Json};

use crate::util::{listen, rows, store, Workdir};

const PLAYBOOK: &str = r#"
name: act
params:
  replicas: { type: integer, default: 3 }
  note: { type: string, default: "a b; rm -rf x" }
  service: { type: string, default: backend }
steps:
  - id: scale
    action:
      name: scale_backend
      args: { replicas: "{{ params.replicas }}", note: "{{ params.note }}", service: "{{ params.service }}" }
      manual: "docker compose up -d --scale backend={{ params.replicas }}"
"#;

/// The audit records of `action:NAME`: `(actor, outcome)` in order, and the filters.
async fn audited(w: &Workdir, name: &str) -> Vec<Json> {
    let db = store(&w.sqlite_url()).await;
    rows(
        &db,
        &format!(
            "SELECT actor, op, filter FROM runbook_audit WHERE op = 'action:{name}' ORDER BY id"
        ),
    )
    .await
}

fn filter(record: &Json) -> Json {
    match &record["filter"] {
        Json::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    }
}

#[tokio::test]
async fn a_configured_command_runs_with_each_argument_whole_and_is_audited() {
    let w = Workdir::new();
    w.playbook("act", PLAYBOOK);
    let script = w.path().join("scale.sh");
    let out_file = w.path().join("args.txt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$#\" > '{out}'\nfor a in \"$@\"; do echo \"$a\" >> '{out}'; done\necho scaled\n",
            out = out_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = script.display().to_string();
    w.config(&format!(
        "shell: {{ allow: [\"{program}\"] }}\nactions:\n  scale_backend:\n    argv: [\"{program}\", \"--replicas={{{{ args.replicas }}}}\", \"{{{{ args.note }}}}\"]\n"
    ));
    assert_eq!(w.run(&["validate"]).code, 0);

    // The plan shows the command as a change, and runs nothing.
    let plan = w.run(&["run", "act", "--plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "would run action `scale_backend`: {program} --replicas=3"
        )),
        "{plan:?}"
    );
    assert!(!out_file.exists(), "the plan ran the action");

    let out = w.run(&["run", "act", "--output", "json"]);
    let run = out.run();
    assert_eq!(run["status"], "succeeded", "{out:?}");
    assert_eq!(run["steps"]["scale"]["output"]["configured"], true, "{run}");
    // Two arguments: the value with spaces and `;` stayed one, and no shell ran it.
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "2\n--replicas=3\na b; rm -rf x\n"
    );
    let records = audited(&w, "scale_backend").await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["actor"], format!("run:{}:act", run["run_id"]));
    assert_eq!(filter(&records[0])["outcome"], "started");
    assert_eq!(filter(&records[1])["outcome"], "succeeded");
    assert_eq!(
        filter(&records[1])["argv"],
        json!([program, "--replicas=3", "a b; rm -rf x"])
    );

    // A command that fails fails the step, and the audit says so.
    std::fs::write(&script, "#!/bin/sh\necho 'no such service' >&2\nexit 3\n").unwrap();
    let out = w.run(&["run", "act", "--output", "json"]);
    let run = out.run();
    assert_eq!(run["status"], "failed", "{out:?}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("exited with 3: no such service"),
        "{run}"
    );
    let records = audited(&w, "scale_backend").await;
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(filter(&records[3])["outcome"]["failed"]
        .as_str()
        .unwrap()
        .contains("exited with 3"));
}

// The binary runs while this test's server answers it: the server needs threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_http_action_sends_its_request_with_a_masked_token_and_is_audited() {
    let seen: Arc<Mutex<Vec<Json>>> = Arc::default();
    let app = {
        let seen = seen.clone();
        Router::new().route(
            "/scale/{service}",
            post(
                move |Path(service): Path<String>,
                      headers: HeaderMap,
                      AxJson(body): AxJson<Json>| {
                    let seen = seen.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        seen.lock()
                            .unwrap()
                            .push(json!({ "service": service, "auth": auth, "body": body }));
                        (
                            axum::http::StatusCode::ACCEPTED,
                            AxJson(json!({ "accepted": true })),
                        )
                    }
                },
            ),
        )
    };
    let base = listen(app).await;
    let token = "deploy-token-0123456789abcdef";
    let w = Workdir::new().env("DEPLOY_TOKEN", token);
    w.playbook("act", PLAYBOOK);
    w.config(&format!(
        "actions:\n  scale_backend:\n    http:\n      url: \"{base}/scale/{{{{ args.service }}}}\"\n      json: {{ replicas: \"{{{{ args.replicas }}}}\" }}\n      token_env: DEPLOY_TOKEN\n      expect: [202]\n"
    ));
    let out = w.run(&[
        "run",
        "act",
        "-p",
        "service=back end",
        "-p",
        "replicas=5",
        "--output",
        "json",
    ]);
    let run = out.run();
    assert_eq!(run["status"], "succeeded", "{out:?}");
    assert_eq!(run["steps"]["scale"]["output"]["status"], 202, "{run}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            json!({ "service": "back end", "auth": format!("Bearer {token}"), "body": { "replicas": 5 } })
        ]
    );
    let records = audited(&w, "scale_backend").await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(filter(&records[1])["outcome"], "succeeded");
    assert_eq!(
        filter(&records[1])["url"],
        format!("{base}/scale/back%20end")
    );
    assert_eq!(filter(&records[1])["method"], "POST");
    // The token is in no record and no output.
    let all = format!("{records:?}{}{}", out.stdout, out.stderr);
    assert!(!all.contains(token), "the token leaked: {all}");
    let shown = w.run(&[
        "runs",
        "show",
        &run["run_id"].to_string(),
        "--output",
        "json",
    ]);
    assert!(!shown.stdout.contains(token), "{shown:?}");
}

#[tokio::test]
async fn an_unconfigured_action_tells_a_person_and_changes_nothing() {
    let w = Workdir::new();
    w.playbook("act", PLAYBOOK);
    let out = w.run(&["run", "act", "-p", "replicas=4", "--output", "json"]);
    let run = out.run();
    assert_eq!(run["status"], "succeeded", "{out:?}");
    assert_eq!(
        run["steps"]["scale"]["output"],
        json!({ "configured": false, "action": "scale_backend", "manual": "docker compose up -d --scale backend=4" })
    );
    assert!(audited(&w, "scale_backend").await.is_empty());

    // Without `manual`, an action the config does not name is a validation error.
    w.playbook(
        "act",
        "name: act\nsteps:\n  - id: scale\n    action: { name: scale_backend }\n",
    );
    let out = w.run(&["validate"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        format!("{}{}", out.stdout, out.stderr)
            .contains("action `scale_backend` is not configured"),
        "{out:?}"
    );
    // A command action's program must be allowed.
    w.config("actions:\n  scale_backend: { argv: [docker, compose, restart, kafka] }\n");
    let out = w.run(&["validate"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains(
            "actions.scale_backend: program `docker` is not allowed: add it to `shell.allow`"
        ),
        "{out:?}"
    );
}
