//! Inputs and conditions that must not break `runbook`: shell steps that leave processes behind,
//! durations and rates out of range, stores opened by many processes at once or read-only, escape
//! sequences in values, and playbooks too big or too deep to parse.

use std::time::{Duration, Instant};

use crate::util::Workdir;

/// The processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// A number no other test or process uses, as a `sleep` argument that marks its processes.
fn marker() -> String {
    format!(
        "300.{}{:06}",
        std::process::id(),
        fastrand::u32(..1_000_000)
    )
}

#[test]
fn a_shell_step_that_times_out_leaves_none_of_its_processes_behind() {
    let w = Workdir::new();
    w.config("shell: { allow: [sh] }\n");
    let m = marker();
    w.playbook(
        "spawner",
        &format!(
            "name: spawner\nsteps:\n  - id: sleepers\n    timeout: 1s\n    shell: [sh, -c, \"sleep {m} & sleep {m}\"]\n"
        ),
    );
    let out = w.run(&["run", "spawner"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("timed out after 1s"), "{out:?}");
    // TERM at the timeout, KILL after a short grace: give it a generous while to be gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = processes_with(&m);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_with(&m);
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn a_shell_step_whose_program_left_a_background_process_ends_with_the_program() {
    let w = Workdir::new();
    w.config("shell: { allow: [sh] }\n");
    let m = marker();
    w.playbook(
        "daemon",
        &format!(
            "name: daemon\nsteps:\n  - id: start\n    timeout: 60s\n    shell: [sh, -c, \"(sleep {m} &) ; echo done\"]\n"
        ),
    );
    let started = Instant::now();
    let out = w.run(&["run", "daemon", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    assert_eq!(run["status"], "succeeded", "{out:?}");
    assert_eq!(run["steps"]["start"]["output"]["stdout"], "done\n");
    // Not the 60 s timeout, nor the 300 s of the background sleep.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_with(&m).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_with(&m),
        Vec::<String>::new(),
        "the step ended its process group"
    );
}

#[test]
fn durations_over_a_year_are_refused_where_they_are_written() {
    let w = Workdir::new();
    w.playbook(
        "forever",
        "name: forever\nsteps:\n  - id: w\n    timeout: 18446744073709551615s\n    wait: 1s\n",
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.contains("forever.yaml:4:"), "{out:?}");
    assert!(out.stdout.contains("`18446744073709551615s`"), "{out:?}");
    assert!(out.stdout.contains("maximum of 365d"), "{out:?}");

    let w = Workdir::new();
    w.playbook(
        "old",
        "name: old\nparams:\n  older_than: { type: duration, default: 7d }\nsteps:\n  - id: s\n    sql: \"SELECT {{ ago(params.older_than) }} AS t\"\n",
    );
    let out = w.run(&["run", "old", "--param", "older_than=18446744073709551615"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("has no unit"), "{out:?}");
    for value in ["18446744073709551615s", "400d"] {
        let param = format!("older_than={value}");
        let out = w.run(&["run", "old", "--param", &param]);
        assert_eq!(out.code, 2, "{value}: {out:?}");
        assert!(out.stderr.contains("maximum of 365d"), "{value}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{value}: {out:?}");
    }
    // Nothing ran, so nothing was left `running`: no store was even created.
    assert!(!w.path().join("runbook.db").exists());
    let out = w.run(&["run", "old", "--param", "older_than=365d"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn queue_load_refuses_rates_that_are_not_finite() {
    let w = Workdir::new();
    for rate in ["inf/s", "NaN/s", "-5/s", "0/s"] {
        let arg = format!("--rate={rate}");
        let out = w.run(&["queue", "load", "--type", "t", &arg, "--duration", "1s"]);
        assert_eq!(out.code, 2, "{rate}: {out:?}");
        assert!(out.stderr.contains(&format!("--rate `{rate}`")), "{out:?}");
        assert!(out.stderr.contains("finite number"), "{out:?}");
    }
    assert!(
        !w.path().join("runbook.db").exists(),
        "nothing was enqueued: no store was even created"
    );
}

#[test]
fn many_processes_opening_one_fresh_store_at_once_all_succeed() {
    for round in 0..8 {
        let w = Workdir::new();
        let store = w.sqlite_url();
        let children: Vec<_> = (0..16)
            .map(|_| {
                w.command()
                    // A command that writes: one that only reads never creates a store.
                    .args(["--store", &store, "resume"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let recorded = migrations_recorded(&store);
        let known: Vec<i64> = runbook::store::migrate::MIGRATIONS
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(
            recorded, known,
            "round {round}: each migration recorded once"
        );
    }
}

/// The versions `runbook_schema_migrations` records, in order, one entry per row.
fn migrations_recorded(store: &str) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = runbook::store::Db::connect(store, true, 1).await.unwrap();
        let rows = db
            .sql(
                "SELECT version FROM runbook_schema_migrations ORDER BY version",
                vec![],
            )
            .await
            .unwrap()
            .rows;
        db.close().await;
        rows.iter().filter_map(|r| r["version"].as_i64()).collect()
    })
}

#[test]
fn a_read_only_store_is_read_and_never_written() {
    use std::os::unix::fs::PermissionsExt;
    let w = Workdir::new();
    w.playbook(
        "hello",
        "name: hello\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n",
    );
    assert_eq!(w.run(&["run", "hello"]).code, 0);
    // The file and its WAL companions are its owner's only.
    for file in ["runbook.db", "runbook.db-wal", "runbook.db-shm"] {
        let path = w.path().join(file);
        if file == "runbook.db" || path.exists() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file} is {mode:o}");
        }
    }
    let ro = format!("{}?mode=ro", w.sqlite_url());
    let out = w.run(&["--store", &ro, "run", "hello"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(
            "the store is opened read-only (mode=ro): `runbook run` records runs; use a writable store"
        ),
        "{out:?}"
    );
    for args in [
        &["pause", "--reason", "x"][..],
        &[
            "queue",
            "enqueue",
            "--entity",
            "e",
            "--entity-id",
            "1",
            "--type",
            "t",
            "--payload",
            "{}",
        ],
    ] {
        let mut all = vec!["--store", ro.as_str()];
        all.extend_from_slice(args);
        let out = w.run(&all);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains("read-only (mode=ro)"), "{out:?}");
    }
    let runs = w.run(&["--store", &ro, "runs", "list", "-o", "json"]);
    assert_eq!(runs.code, 0, "{runs:?}");
    assert_eq!(runs.json().as_array().map(Vec::len), Some(1), "{runs:?}");
    let status = w.run(&["--store", &ro, "status"]);
    assert_eq!(status.code, 0, "{status:?}");
    // Still the one run, and not paused: nothing was written.
    let runs = w.run(&["runs", "list", "-o", "json"]).json();
    assert_eq!(runs.as_array().map(Vec::len), Some(1));
    assert!(w.run(&["status"]).stdout.contains("running (not paused)"));
    // A read-only store that does not exist is not created.
    let missing = format!("sqlite://{}?mode=ro", w.path().join("none.db").display());
    let out = w.run(&["--store", &missing, "runs", "list"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!w.path().join("none.db").exists());
}

#[test]
fn escape_sequences_in_values_are_shown_escaped_and_json_stays_exact() {
    let w = Workdir::new();
    w.playbook(
        "echo",
        "name: echo\nparams:\n  x: { type: string }\nsteps:\n  - id: sel\n    sql: \"SELECT {{ params.x }} AS x\"\n  - id: check\n    assert:\n      that: \"false\"\n      message: \"bad value {{ params.x }}\"\n",
    );
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\rover\u{9b}31m\tline\nnext";
    let param = format!("x={hostile}");
    let out = w.run(&["run", "echo", "--param", &param]);
    assert_eq!(out.code, 1, "{out:?}");
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}']),
            "raw control characters reached the terminal: {text:?}"
        );
    }
    assert!(
        out.stdout
            .contains("bad value \\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{d}over\\u{9b}31m\tline\nnext"),
        "{out:?}"
    );
    let show = w.run(&["runs", "show", "1"]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(
        !show.stdout.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}']),
        "{show:?}"
    );
    assert!(show.stdout.contains("\\u{1b}]0;pwned"), "{show:?}");
    // JSON output keeps the exact value.
    let out = w.run(&["run", "echo", "--param", &param, "--output", "json"]);
    assert_eq!(
        out.run()["steps"]["sel"]["rows"][0]["x"],
        hostile,
        "{out:?}"
    );
    let show = w.run(&["runs", "show", "1", "-o", "json"]).json();
    assert_eq!(show["params"]["x"], hostile);
    // Errors, too: an unknown playbook's name is printed escaped.
    let out = w.run(&["run", "no\u{1b}]0;x\u{7}pe"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains('\u{1b}'), "{out:?}");
}

#[test]
fn playbooks_too_big_or_too_deep_are_refused_before_parsing() {
    let w = Workdir::new();
    let mut big = String::from("name: big\ndescription: |\n");
    while big.len() <= 2 * 1024 * 1024 {
        big.push_str(
            "  a line of padding that makes the file larger than any playbook needs to be\n",
        );
    }
    big.push_str("steps:\n  - id: w\n    wait: 1s\n");
    w.playbook("big", &big);
    let depth = 100_000;
    let deep = format!(
        "name: deep\nsteps:\n  - id: w\n    wait: 1s\nparams:\n  x: {{ type: string, default: {}{} }}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    w.playbook("deep", &deep);
    let started = Instant::now();
    let out = w.run(&["validate"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout.contains(
            "runbooks/big.yaml:1:1: the file is larger than the limit of 1 MiB for a playbook"
        ),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&format!(
            "runbooks/deep.yaml:6:{}: maps and lists nest deeper than the limit of 64 levels here",
            // The flow map `{` is one level; the 64th `[` after it is the 65th.
            "  x: { type: string, default: ".len() + 64
        )),
        "{out:?}"
    );
}

/// Polls `ready()` until it answers `want` (it is cached for a second).
async fn wait_ready(db: &runbook::store::Db, want: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = db.ready().await;
        if r.is_ok() == want || Instant::now() > deadline {
            assert_eq!(r.is_ok(), want, "ready() answered {r:?}");
            return r.err().map(|e| e.to_string()).unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One write as the application makes them: a change and its audit record in one transaction.
async fn audited_write(db: &runbook::store::Db, filler: &str) -> Result<u64, String> {
    db.mutate_audited(
        "UPDATE runbook_audit SET rows = rows WHERE 0 = 1",
        vec![],
        runbook::store::Audit {
            actor: "test",
            op: "fill",
            filter: serde_json::json!({ "filler": filler }),
        },
    )
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ran_out_of_space_takes_writes_again_without_a_restart() {
    use std::str::FromStr;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
    // An operator's connection, without a size limit, as another process would be.
    let operator = runbook::store::Db::connect(&url, false, 1).await.unwrap();
    operator.migrate().await.unwrap();
    let pages = operator
        .sql("PRAGMA page_count", vec![])
        .await
        .unwrap()
        .rows[0]["page_count"]
        .as_i64()
        .unwrap();
    // The application's pool on a "disk" that holds 64 more pages than the store has now.
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .unwrap()
        .pragma("max_page_count", (pages + 64).to_string());
    let app = runbook::store::Db::connect_sqlite(opts, false, 4)
        .await
        .unwrap();
    wait_ready(&app, true).await;

    // Fill it: writes fail, and go on failing, as the disk is full.
    let filler = "x".repeat(1500);
    let mut written = 0;
    let full = loop {
        match audited_write(&app, &filler).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "the limit never hit");
    };
    assert!(full.contains("full"), "{full}");
    let writes = futures::future::join_all((0..8).map(|_| audited_write(&app, &filler))).await;
    assert!(writes.iter().all(Result::is_err), "{writes:?}");
    let not_ready = wait_ready(&app, false).await;
    assert!(not_ready.contains("full"), "{not_ready}");

    // Free space: the operator deletes what filled it.
    let freed = operator
        .sql("DELETE FROM runbook_audit WHERE op = 'fill'", vec![])
        .await;
    assert!(freed.is_ok(), "{freed:?}");

    // Transactions that give up after a write (dropped, so rolled back), on every connection
    // of the pool: none may leave its transaction open behind it, holding the write lock.
    let mut txs = Vec::new();
    for _ in 0..4 {
        txs.push(app.begin().await.unwrap());
    }
    for tx in txs {
        let runbook::store::Tx::Sqlite(mut tx) = tx else {
            unreachable!("a SQLite store")
        };
        let inserted = sqlx::query(
            "INSERT INTO runbook_audit (actor, op, filter, rows) VALUES ('test', 'abandoned', '{}', 0)",
        )
        .execute(&mut *tx)
        .await;
        assert!(inserted.is_ok(), "{inserted:?}");
    }

    // Every connection of the pool takes writes again, and the store says it is ready.
    let writes = futures::future::join_all((0..16).map(|_| audited_write(&app, "small"))).await;
    assert!(writes.iter().all(Result::is_ok), "{writes:?}");
    wait_ready(&app, true).await;
    let recorded = operator
        .sql(
            "SELECT COUNT(*) AS n FROM runbook_audit WHERE op = 'fill'",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(recorded.rows[0]["n"], 16, "the writes were committed");
    let abandoned = operator
        .sql(
            "SELECT COUNT(*) AS n FROM runbook_audit WHERE op = 'abandoned'",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        abandoned.rows[0]["n"], 0,
        "the abandoned writes were rolled back"
    );
}
