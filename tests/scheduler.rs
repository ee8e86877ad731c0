//! The scheduler of `runbook serve`: two replicas on one PostgreSQL database fire each tick of a
//! per-second schedule exactly once, none missing; a server that finds ticks missed since the last
//! recorded one gives one catch-up run; `runbook schedule` shows the zone, the last tick and the
//! next fire times; `runbook validate` points at an unknown zone.

use chrono::{DurationRound, Timelike, Utc};
use serde_json::json;

use crate::util::{eventually, rows, scalar, store, until_scalar, PgDb, Workdir};

const EVERY_SECOND: &str = r#"name: tick
on:
  schedule: "* * * * * *"
  timezone: Europe/Berlin
steps:
  - id: one
    sql: SELECT 1 AS one
"#;

#[tokio::test]
async fn two_replicas_fire_each_tick_once_with_none_missing() {
    let pg = PgDb::new().await;
    let w = Workdir::new();
    w.playbook("tick", EVERY_SECOND);
    // Migrated first, so both replicas start at once.
    assert_eq!(w.run(&["--store", &pg.url, "queue", "stats"]).code, 0);
    let mut a = w.serve(&["--store", &pg.url]);
    let mut b = w.serve(&["--store", &pg.url]);
    let db = store(&pg.url).await;
    // Once both replicas are up, every tick is on time. A tick due while the second one was still
    // starting may be taken by it as missed (a catch-up, or skipped), as after any downtime.
    let both_up = scalar(&db, "SELECT EXTRACT(EPOCH FROM now())::bigint + 1").await;
    until_scalar(
        30,
        "ten ticks",
        &db,
        "SELECT COUNT(*) FROM runbook_schedule_ticks",
        |n| n >= 10,
    )
    .await;
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("runbook_scheduler_lag_seconds_count"),
        "{metrics}"
    );
    a.stop();
    b.stop();

    let ticks = scalar(&db, "SELECT COUNT(*) FROM runbook_schedule_ticks").await;
    let span = scalar(
        &db,
        "SELECT EXTRACT(EPOCH FROM MAX(scheduled_at) - MIN(scheduled_at))::bigint FROM runbook_schedule_ticks",
    )
    .await;
    assert_eq!(ticks, span + 1, "one tick a second, none missing");
    assert_eq!(
        scalar(
            &db,
            &format!(
                "SELECT COUNT(*) FROM runbook_schedule_ticks \
                 WHERE scheduled_at > to_timestamp({both_up}) AND (outcome <> 'run' OR command_id IS NULL)"
            )
        )
        .await,
        0,
        "every tick on time once both replicas are up, with its run"
    );
    assert!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM runbook_schedule_ticks WHERE scheduled_at > to_timestamp({both_up})")
        )
        .await
            >= 5,
        "most of the ten ticks came after both replicas were up"
    );
    // One run command per tick that ran, and it is the tick's own.
    let with_run = scalar(
        &db,
        "SELECT COUNT(*) FROM runbook_schedule_ticks WHERE command_id IS NOT NULL",
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE command_type = 'runbook.run'"
        )
        .await,
        with_run
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_schedule_ticks t JOIN command_queue c ON c.id = t.command_id \
             WHERE c.payload->>'playbook' = 'tick' AND c.payload->'params' = '{}'::jsonb \
               AND c.payload->'trigger'->>'kind' = 'schedule' \
               AND (c.payload->'trigger'->>'catch_up')::boolean = (t.outcome = 'catch_up') \
               AND (c.payload->'trigger'->>'scheduled_at')::timestamptz = t.scheduled_at"
        )
        .await,
        with_run
    );
    let by = rows(
        &db,
        "SELECT fired_by, COUNT(*) AS n FROM runbook_schedule_ticks GROUP BY fired_by ORDER BY fired_by",
    )
    .await;
    eprintln!("ticks by replica: {by:?}");
}

#[tokio::test]
async fn ticks_missed_while_no_server_ran_give_one_catch_up_run() {
    let w = Workdir::new();
    let url = w.sqlite_url();
    // Daily, twelve hours away from now, so no tick is anywhere near due while the test runs.
    let now = Utc::now();
    let hour = (now.hour() + 12) % 24;
    w.playbook(
        "daily",
        &format!(
            "name: daily\non:\n  schedule: \"0 0 {hour} * * *\"\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n"
        ),
    );
    // Its last recorded tick is three days before the latest that has fallen due.
    let mut latest = now.duration_trunc(chrono::Duration::hours(1)).unwrap();
    while latest.hour() != hour {
        latest -= chrono::Duration::hours(1);
    }
    let recorded = latest - chrono::Duration::days(3);
    w.create_store(&url);
    let db = store(&url).await;
    db.sql(
        "INSERT INTO runbook_schedule_ticks (playbook, scheduled_at, fired_at, outcome, fired_by) \
         VALUES ('daily', $1, $1, 'run', 'an earlier server')",
        vec![json!(stamp(recorded))],
    )
    .await
    .unwrap();
    // No workers: the run stays on the queue as the scheduler put it there.
    w.config("streaming:\n  workers: false\n");
    let server = w.serve(&["--store", &url]);
    until_scalar(
        10,
        "the missed ticks to be recorded",
        &db,
        "SELECT COUNT(*) FROM runbook_schedule_ticks",
        |n| n == 4,
    )
    .await;
    let ticks = rows(
        &db,
        "SELECT scheduled_at, outcome, command_id IS NOT NULL AS has_run FROM runbook_schedule_ticks ORDER BY scheduled_at",
    )
    .await;
    let expect: Vec<_> = (0..=3)
        .map(|d| {
            let (outcome, has_run) = match d {
                0 => ("run", 0),
                3 => ("catch_up", 1),
                _ => ("skipped", 0),
            };
            json!({
                "scheduled_at": stamp(recorded + chrono::Duration::days(d)),
                "outcome": outcome,
                "has_run": has_run,
            })
        })
        .collect();
    assert_eq!(ticks, expect);
    let commands = rows(&db, "SELECT payload FROM command_queue").await;
    assert_eq!(commands.len(), 1, "one catch-up run: {commands:?}");
    assert_eq!(
        commands[0]["payload"]["trigger"],
        json!({"kind": "schedule", "scheduled_at": stamp(latest), "catch_up": true})
    );
    eventually(5, "the tick in the log", || async {
        server.log().contains("Schedule tick fired.").then_some(())
    })
    .await;

    let out = w.run(&["--store", &url, "schedule", "--count", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("last  {}, fired ", stamp(latest)))
            && out.stdout.contains("(catch_up, command 1)")
            && out.stdout.contains("UTC (missed: run_once)"),
        "{out:?}"
    );
    let json = w.run(&["--store", &url, "schedule", "-o", "json"]).json();
    assert_eq!(json[0]["last"]["outcome"], "catch_up");
    assert_eq!(json[0]["timezone"], "UTC");
    let next = (latest + chrono::Duration::days(1)).to_rfc3339();
    assert_eq!(json[0]["next"][0], json!(next));
}

#[test]
fn timezone_and_missed_are_checked() {
    let w = Workdir::new();
    w.playbook(
        "zoned",
        "name: zoned\non:\n  schedule: \"0 30 2 * * *\"\n  timezone: Europe/Berlln\n  missed: skip\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n",
    );
    w.playbook(
        "unscheduled",
        "name: unscheduled\non:\n  missed: run_once\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n",
    );
    w.playbook(
        "berlin",
        "name: berlin\non:\n  schedule: \"0 30 2 * * *\"\n  timezone: Europe/Berlin\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n",
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout
            .contains("runbooks/zoned.yaml:4:3: unknown timezone `Europe/Berlln`"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(
            "runbooks/unscheduled.yaml:3:3: `missed` applies to `schedule`, which this playbook does not have"
        ),
        "{out:?}"
    );
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
}

/// The store's timestamp text (UTC, milliseconds).
fn stamp(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
