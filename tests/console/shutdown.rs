//! A browser watching a run does not hold `runbook serve` open: on SIGTERM the run page's event
//! stream ends (the page then reconnects to whichever replica answers).

use super::{config, postgres::Session, start_held, HELD, VIEWER};
use crate::util::Workdir;

#[tokio::test]
async fn an_open_event_stream_ends_when_the_server_shuts_down() {
    // No workers: the run stays queued, so its stream has no end of its own.
    let w = Workdir::new();
    w.config(&format!("{}  workers: false\n", config()));
    w.playbook("held", HELD);
    let url = w.sqlite_url();
    let mut server = w.serve(&["--store", &url]);
    let base = server.base.clone();
    let id = start_held(&base).await;
    let viewer = Session::sign_in(&base, VIEWER).await;
    let mut resp = viewer
        .http
        .get(format!("{base}/ui/runs/{id}/events"))
        .header("cookie", &viewer.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The first event: the run's status so far.
    let first = resp.chunk().await.unwrap().expect("an event");
    assert!(
        String::from_utf8_lossy(&first).contains("event: update"),
        "{first:?}"
    );
    server.stop();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream stayed open after SIGTERM");
    let log = server.log();
    assert!(
        !log.contains("grace period over"),
        "the open stream held the shutdown:\n{log}"
    );
}
