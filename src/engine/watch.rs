//! Each run's watcher, and the runs of this process. While a run goes, a small task renews its
//! lease in the store (`runbook_runs.lease_until`, every third of `streaming.run_lease`) and reads
//! its status every second (one read by primary key); when an operator asked the run to stop
//! (`runbook runs cancel`, `POST /api/runs/{id}/cancel`, from any process), it fires the run's
//! [`Cancel`], which every wait of the engine and of the steps is `select!`ed with. A cancel made
//! in this process (the API of the replica that runs it, Ctrl-C on `runbook run`) fires it at
//! once through [`Live`]. A run whose process died stops renewing its lease; `runbook serve`
//! finds it when the lease has expired (`process::runs`).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    status::RunStatus,
    steps::Cancel,
    store::{
        runs::{self, Standing},
        Db,
    },
};

/// The shortest lease a run takes, whatever the config says.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// The runs going in this process, by id, under one root whose cancel reaches them all.
#[derive(Default)]
pub(super) struct Live {
    root: Cancel,
    runs: Mutex<HashMap<i64, Cancel>>,
}

impl Live {
    /// The cancellation of a new top-level run (fired with the root).
    pub fn new_run(&self) -> Cancel {
        self.root.child()
    }

    /// Fires run `id`'s cancel if it runs here; `false` when it does not.
    pub fn cancel(&self, id: i64, reason: &str) -> bool {
        let cancel = self.runs.lock().expect("live runs").get(&id).cloned();
        cancel.map(|c| c.cancel(reason)).is_some()
    }

    /// Fires the cancel of every run of this process, and of every run it starts from now on.
    pub fn cancel_all(&self, reason: &str) {
        self.root.cancel(reason);
    }

    /// Registers run `id`, renews its lease once, and starts its watcher; the run leaves the
    /// registry and the watcher stops when the returned guard is dropped.
    pub async fn enter<'a>(
        &'a self,
        db: &Db,
        id: i64,
        cancel: &Cancel,
        lease: Duration,
    ) -> Watched<'a> {
        self.runs
            .lock()
            .expect("live runs")
            .insert(id, cancel.clone());
        let lease = lease.max(MIN_LEASE);
        // The first renewal before any step, so a run killed at once still has a lease to expire.
        observe(runs::heartbeat(db, id, lease).await, id, cancel);
        let task = tokio::spawn(watch(db.clone(), id, cancel.clone(), lease));
        Watched {
            live: self,
            id,
            task,
        }
    }
}

/// A run registered in [`Live`] with its watcher running.
pub(super) struct Watched<'a> {
    live: &'a Live,
    id: i64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.task.abort();
        self.live.runs.lock().expect("live runs").remove(&self.id);
    }
}

/// How often the watcher looks at the run's record: every second, or more often for a lease
/// shorter than three seconds (so that it is renewed three times within it).
pub fn tick(lease: Duration) -> Duration {
    (lease / 3).min(Duration::from_secs(1))
}

async fn watch(db: Db, id: i64, cancel: Cancel, lease: Duration) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(tick(lease)).await;
        let standing = if renewed.elapsed() >= lease / 3 {
            let r = runs::heartbeat(&db, id, lease).await;
            if r.is_ok() {
                renewed = Instant::now();
            }
            r
        } else {
            runs::standing(&db, id).await
        };
        observe(standing, id, &cancel);
    }
}

/// Fires the run's cancel when its record says it must stop.
fn observe(standing: Result<Option<Standing>, crate::store::DbError>, id: i64, cancel: &Cancel) {
    match standing {
        Ok(Some(s)) => {
            if let Some(reason) = stop_reason(&s) {
                if !cancel.is_cancelled() {
                    tracing::info!(run_id = id, reason = %reason, "Run stopping.");
                }
                cancel.cancel(reason);
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(run_id = id, error = %e, "Reading or renewing the run's lease failed.")
        }
    }
}

/// Whether a running run's record says it must stop, and why: an operator asked it to (the
/// record's error says who), or another process already ended it, taking it for dead.
pub fn stop_reason(s: &Standing) -> Option<String> {
    match s.status {
        RunStatus::CancelRequested => Some(
            s.error
                .clone()
                .unwrap_or_else(|| "cancelled by an operator".to_owned()),
        ),
        status if status.is_final() => Some(format!(
            "another process marked the run {status} (its lease had expired)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(status: RunStatus, error: Option<&str>) -> Standing {
        Standing {
            status,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_run_stops_when_asked_or_when_another_process_ended_it() {
        assert_eq!(stop_reason(&standing(RunStatus::Running, None)), None);
        assert_eq!(
            stop_reason(&standing(RunStatus::WaitingApproval, None)),
            None
        );
        assert_eq!(
            stop_reason(&standing(
                RunStatus::CancelRequested,
                Some("cancelled by api:ops")
            ))
            .as_deref(),
            Some("cancelled by api:ops")
        );
        assert_eq!(
            stop_reason(&standing(RunStatus::CancelRequested, None)).as_deref(),
            Some("cancelled by an operator")
        );
        let taken = stop_reason(&standing(RunStatus::Interrupted, Some("dead"))).unwrap();
        assert!(taken.contains("marked the run interrupted"), "{taken}");
    }

    #[test]
    fn the_watcher_looks_every_second_and_renews_three_times_a_lease() {
        assert_eq!(tick(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(
            tick(Duration::from_millis(1500)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_cancel_in_this_process_reaches_the_run_by_id_or_all_of_them() {
        let live = Live::default();
        let a = live.new_run();
        live.runs.lock().unwrap().insert(1, a.clone());
        assert!(!live.cancel(2, "nobody"));
        assert!(live.cancel(1, "cancelled by api:ops"));
        assert_eq!(a.reason().as_deref(), Some("cancelled by api:ops"));
        let b = live.new_run();
        live.cancel_all("cancelled by Ctrl-C");
        assert_eq!(b.reason().as_deref(), Some("cancelled by Ctrl-C"));
        // A run started after Ctrl-C is born cancelled.
        assert!(live.new_run().is_cancelled());
    }
}
