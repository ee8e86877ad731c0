//! The queue sampler of `runbook serve` on both stores: with `console.queue_sample_every: 1s`
//! and no workers, the depth per priority and the oldest pending age reach
//! `runbook_queue_samples`, one row per interval even with two replicas on one PostgreSQL, and
//! the queue page draws them.

use serde_json::json;

use super::{postgres::Session, VIEWER};
use crate::util::{rows, store, PgDb, Workdir};

fn config() -> String {
    format!(
        r#"auth:
  tokens:
    - {{ name: viewer, role: viewer, token: {VIEWER} }}
console: {{ queue_sample_every: 1s }}
streaming: {{ workers: false }}
"#
    )
}

fn enqueue(w: &Workdir, url: &str, priority: &str, id: &str) {
    let out = w.run(&[
        "--store",
        url,
        "queue",
        "enqueue",
        "--entity",
        "user",
        "--entity-id",
        id,
        "--type",
        "user.update",
        "--priority",
        priority,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// Enqueues 2 commands of priority 5 and 1 of priority 9, serves with `replicas` servers, and
/// waits for a sample that holds them; returns the workdir and servers (kept alive).
async fn sampled(url: &str, replicas: usize) {
    let w = Workdir::new();
    w.config(&config());
    enqueue(&w, url, "5", "a");
    enqueue(&w, url, "5", "b");
    enqueue(&w, url, "9", "c");
    let servers: Vec<_> = (0..replicas).map(|_| w.serve(&["--store", url])).collect();
    let db = store(url).await;
    // Three intervals with the commands in them, so both replicas sampled at least twice.
    let samples = crate::util::eventually(60, "three samples of the queue", || async {
        let r = rows(
            &db,
            "SELECT at, depths, total, oldest_age_secs FROM runbook_queue_samples WHERE total = 3 ORDER BY at",
        )
        .await;
        (r.len() >= 3).then_some(r)
    })
    .await;
    // JSON text; the SQLite reader hands JSON-looking text back parsed.
    let depths = match &samples[0]["depths"] {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap(),
        parsed => parsed.clone(),
    };
    assert_eq!(depths, json!({ "5": 2, "9": 1 }));
    assert!(samples[0]["oldest_age_secs"].as_i64().unwrap() >= 0);
    // One row per interval, whichever replica took it.
    let per_interval = rows(
        &db,
        "SELECT at, COUNT(*) AS n FROM runbook_queue_samples GROUP BY at HAVING COUNT(*) > 1",
    )
    .await;
    assert!(per_interval.is_empty(), "{per_interval:?}");
    for server in &servers {
        assert!(
            !server.log().contains("Queue sample not recorded"),
            "{}",
            server.log()
        );
    }
    // The queue page draws them, with the values as a table.
    let viewer = Session::sign_in(&servers[0].base, VIEWER).await;
    let (status, page) = viewer.get("/ui/queue").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(
            "<title id=\"history-title\">Pending commands per priority, last 6 hours</title>"
        ),
        "{page}"
    );
    assert!(page.contains("priority 5 now 2"), "{page}");
    assert!(page.contains("priority 9 now 1"), "{page}");
    assert!(
        page.contains("<th>Priority 9</th><th>Priority 5</th>"),
        "{page}"
    );
    assert_eq!(
        page.matches("<polyline class=\"depth\"").count(),
        2,
        "{page}"
    );
}

#[tokio::test]
async fn the_queue_is_sampled_on_sqlite() {
    let w = Workdir::new();
    sampled(&w.sqlite_url(), 1).await;
}

#[tokio::test]
async fn two_replicas_sample_the_queue_once_per_interval_on_postgres() {
    let pg = PgDb::new().await;
    sampled(&pg.url, 2).await;
}
