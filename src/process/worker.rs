//! The worker pool: claim a batch and take its entities' locks (one statement on PostgreSQL),
//! run the handlers with `workerConcurrency` tasks, acknowledge the batch in one transaction while
//! the next batch is claimed, repeat. When batches are smaller than the concurrency, several claim
//! loops run side by side so that `workerConcurrency` commands can be in flight. Settings are
//! re-read every second, so a `scale_workers` from any process takes effect here within seconds.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::handlers::{backoff, HandlerError, Handlers};
use crate::{
    metrics::{EntityLabel, ErrorLabels, Metrics},
    secrets::Masker,
    services::Services,
    status::ErrorType,
    stream::{
        queue::{self, Ack, Claimed, Failure, Lock},
        Settings,
    },
};

/// What the workers use of the process: the store, config and masker, and the metrics.
pub struct WorkerCx {
    pub services: Arc<Services>,
    pub metrics: Arc<Metrics>,
}

/// How long a command waits when another command of its entity holds the lock.
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// How long a run claimed while every run slot was busy waits on the queue before it is claimed
/// again.
const RUN_SLOT_WAIT: Duration = Duration::from_millis(500);
/// Claim loops at most (each with its own batch in hand).
const MAX_LOOPS: usize = 16;

pub struct Workers {
    pub cx: Arc<WorkerCx>,
    pub handlers: Arc<Handlers>,
    /// This process's worker id, recorded as `locked_by`.
    pub id: String,
    /// Playbook runs in progress, each acknowledged on its own.
    runs: std::sync::Mutex<tokio::task::JoinSet<()>>,
    run_slots: Arc<tokio::sync::Semaphore>,
}

/// Claim loops wanted: enough batches in hand for `workerConcurrency` commands in flight.
fn loops_for(s: &Settings) -> usize {
    (s.worker_concurrency.max(1) as usize)
        .div_ceil(s.worker_batch_size.max(1) as usize)
        .clamp(1, MAX_LOOPS)
}

impl Workers {
    pub fn new(cx: WorkerCx, handlers: Handlers) -> Self {
        let id = format!(
            "{}-{}-{:04x}",
            hostname(),
            std::process::id(),
            fastrand::u16(..)
        );
        let slots = cx.services.config.streaming.worker_concurrency.max(1) as usize;
        Workers {
            cx: Arc::new(cx),
            handlers: Arc::new(handlers),
            id,
            runs: Default::default(),
            run_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
        }
    }

    /// Runs until `shutdown`; every loop finishes and acknowledges the batch in hand first.
    pub async fn run(self, shutdown: CancellationToken) {
        let streaming = self.cx.services.config.streaming.clone();
        let initial = Settings::load(&self.cx.services.store, &streaming)
            .await
            .unwrap_or_else(|_| Settings::from_config(&streaming));
        let (tx, rx) = watch::channel(initial);
        tracing::info!(worker = %self.id, "Workers started.");
        let this = Arc::new(self);
        let mut loops = tokio::task::JoinSet::new();
        for i in 0..MAX_LOOPS {
            loops.spawn(this.clone().claim_loop(i, rx.clone(), shutdown.clone()));
        }
        this.maintain(tx, shutdown.clone()).await;
        while loops.join_next().await.is_some() {}
        // Playbook runs in progress finish between steps; wait for them and their acknowledgements.
        let mut runs = std::mem::take(&mut *this.runs.lock().expect("runs lock"));
        while runs.join_next().await.is_some() {}
        tracing::info!(worker = %this.id, "Workers stopped.");
    }

    /// Re-reads settings every second and returns expired leases to the queue.
    async fn maintain(&self, tx: watch::Sender<Settings>, shutdown: CancellationToken) {
        let cx = &self.cx;
        let streaming = &cx.services.config.streaming;
        let lease = streaming.lease.as_std();
        let mut last_rescue = Instant::now() - Duration::from_secs(3600);
        while !shutdown.is_cancelled() {
            match Settings::load(&cx.services.store, streaming).await {
                Ok(s) if s != *tx.borrow() => {
                    tracing::info!(worker = %self.id, settings = ?s, "Runtime settings changed.");
                    let _ = tx.send(s);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Reading runtime settings failed."),
            }
            if last_rescue.elapsed() >= (lease / 2).max(Duration::from_millis(500)) {
                let max_retries = tx.borrow().max_retries;
                match queue::rescue(&cx.services.store, max_retries).await {
                    Ok((0, _)) => {}
                    Ok((n, locks)) => {
                        cx.metrics.lock_expiries.inc_by(locks);
                        tracing::warn!(
                            commands = n,
                            locks,
                            "Leases expired; commands returned to the queue."
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "Rescuing expired leases failed."),
                }
                last_rescue = Instant::now();
            }
            // Reap finished playbook-run tasks.
            while self
                .runs
                .lock()
                .expect("runs lock")
                .try_join_next()
                .is_some()
            {}
            sleep_or_stop(&shutdown, Duration::from_secs(1)).await;
        }
    }

    async fn claim_loop(
        self: Arc<Self>,
        index: usize,
        settings: watch::Receiver<Settings>,
        shutdown: CancellationToken,
    ) {
        let cx = &self.cx;
        let lease = cx.services.config.streaming.lease.as_std();
        let poll = cx.services.config.streaming.poll_interval.as_std();
        let mut pending_ack: Option<tokio::task::JoinHandle<()>> = None;
        while !shutdown.is_cancelled() {
            let s = settings.borrow().clone();
            if index >= loops_for(&s) {
                // Not needed at the current settings; look again later.
                sleep_or_stop(&shutdown, Duration::from_millis(500)).await;
                continue;
            }
            let batch = match queue::claim_locked(
                &cx.services.store,
                &self.id,
                s.worker_batch_size,
                lease,
                s.lock_ttl.as_std(),
                self.handlers.shared_types(),
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "Claiming commands failed; retrying.");
                    sleep_or_stop(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                sleep_or_stop(&shutdown, poll).await;
                continue;
            }
            let ack = self.process(batch, &s, lease).await;
            if matches!(cx.services.store, crate::store::Db::Sqlite(_)) {
                // SQLite has one writer: overlapping the acknowledgement with the next claim only
                // makes the two wait on each other's lock.
                acknowledge(cx, &self.id, ack).await;
                continue;
            }
            // Acknowledge this batch while the next one is claimed; one acknowledgement in flight a loop.
            if let Some(prev) = pending_ack.take() {
                let _ = prev.await;
            }
            let (cx, id) = (self.cx.clone(), self.id.clone());
            pending_ack = Some(tokio::spawn(
                async move { acknowledge(&cx, &id, ack).await },
            ));
        }
        if let Some(prev) = pending_ack.take() {
            let _ = prev.await;
        }
    }

    async fn process(
        &self,
        batch: Vec<(Claimed, Lock)>,
        settings: &Settings,
        lease: Duration,
    ) -> Ack {
        let cx = &self.cx;
        let mut wait = Vec::new();
        let mut held = HashSet::new();
        let mut runnable = Vec::with_capacity(batch.len());
        for (c, lock) in batch {
            match lock {
                Lock::Busy => wait.push(c.id),
                Lock::Held { takeover } => {
                    if takeover {
                        cx.metrics.lock_expiries.inc();
                    }
                    held.insert(c.id);
                    runnable.push(c);
                }
                Lock::Shared => runnable.push(c),
            }
        }
        if let Err(e) = queue::defer(&cx.services.store, &self.id, &wait, LOCK_WAIT).await {
            tracing::warn!(error = %e, "Deferring commands failed; their lease will return them.");
        }
        // Playbook runs can take minutes (an approval, hours): each gets its own task and its own
        // acknowledgement, so the batch, and the queue behind it, does not wait for them.
        let (runs, commands): (Vec<Claimed>, Vec<Claimed>) = runnable
            .into_iter()
            .partition(|c| self.handlers.own_lane(&c.command_type));
        // A run starts only with a free slot in hand. One claimed without a slot goes back to the
        // queue at once (its attempt not counted): waiting here for a slot kept it `processing`
        // with no heartbeat, so under a backlog every claim added a waiting task, their leases
        // expired and were claimed again, memory grew without bound and the other commands
        // starved.
        let mut no_slot = Vec::new();
        for run in runs {
            let Ok(slot) = self.run_slots.clone().try_acquire_owned() else {
                no_slot.push(run.id);
                continue;
            };
            let locked = held.contains(&run.id);
            let (cx, handlers, id, s) = (
                self.cx.clone(),
                self.handlers.clone(),
                self.id.clone(),
                settings.clone(),
            );
            self.runs.lock().expect("runs lock").spawn(async move {
                let _slot = slot;
                let held: HashSet<i64> = if locked {
                    [run.id].into()
                } else {
                    HashSet::new()
                };
                let ack = execute(&cx, &handlers, &id, vec![run], &held, &s, lease).await;
                acknowledge(&cx, &id, ack).await;
            });
        }
        if let Err(e) = queue::defer(&cx.services.store, &self.id, &no_slot, RUN_SLOT_WAIT).await {
            tracing::warn!(error = %e, "Returning runs to the queue failed; their lease will return them.");
        }
        execute(
            &self.cx,
            &self.handlers,
            &self.id,
            commands,
            &held,
            settings,
            lease,
        )
        .await
    }
}

/// Aborts the lease heartbeat when the work it covers ends, however it ends.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    /// Renews the leases of `ids` every third of `lease` until dropped.
    fn start(cx: &Arc<WorkerCx>, worker: &str, ids: Vec<i64>, lease: Duration) -> Heartbeat {
        let (cx, id) = (cx.clone(), worker.to_owned());
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = queue::heartbeat(&cx.services.store, &id, &ids, lease).await {
                    tracing::warn!(error = %e, "Lease heartbeat failed.");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a handler made of one command.
type Outcome = Result<Vec<queue::Event>, HandlerError>;

/// Runs commands with `workerConcurrency` tasks while their leases are kept alive, and turns the
/// outcomes into an acknowledgement.
async fn execute(
    cx: &Arc<WorkerCx>,
    handlers: &Arc<Handlers>,
    worker: &str,
    commands: Vec<Claimed>,
    held: &HashSet<i64>,
    settings: &Settings,
    lease: Duration,
) -> Ack {
    let ids: Vec<i64> = commands.iter().map(|c| c.id).collect();
    let _heartbeat = Heartbeat::start(cx, worker, ids.clone(), lease);
    let outcomes = run_handlers(handlers, commands, settings.worker_concurrency).await;
    for (c, outcome) in &outcomes {
        count(&cx.metrics, c, outcome);
    }
    ack_for(&ids, held, outcomes, settings, &cx.services.masker)
}

/// Runs each command's handler, `concurrency` at a time. A handler that panics fails its
/// command instead of taking the loop down.
async fn run_handlers(
    handlers: &Arc<Handlers>,
    commands: Vec<Claimed>,
    concurrency: u32,
) -> Vec<(Claimed, Outcome)> {
    futures::stream::iter(commands)
        .map(|c| {
            let handlers = handlers.clone();
            async move {
                let outcome = std::panic::AssertUnwindSafe(handlers.handle(&c))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panicked(&*panic)));
                (c, outcome)
            }
        })
        .buffer_unordered(concurrency.max(1) as usize)
        .collect()
        .await
}

/// The error of a handler that panicked, with the panic's message when it has one.
fn panicked(panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    HandlerError::new(
        ErrorType::PanicException,
        format!("the handler panicked: {what}"),
        false,
    )
}

/// Counts a command's outcome: successes with their latency since enqueue, errors by type.
fn count(metrics: &Metrics, c: &Claimed, outcome: &Outcome) {
    match outcome {
        Ok(_) => {
            metrics
                .worker_success
                .get_or_create(&EntityLabel {
                    entity: c.entity.clone(),
                })
                .inc();
            let latency = (Utc::now() - c.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics
                .latency
                .get_or_create(&EntityLabel {
                    entity: c.entity.clone(),
                })
                .observe(latency);
        }
        Err(e) => {
            metrics
                .worker_error
                .get_or_create(&ErrorLabels {
                    entity: c.entity.clone(),
                    error_type: e.error_type.to_string(),
                })
                .inc();
        }
    }
}

/// The acknowledgement of a batch (`ids`, of which `held` hold their entity's lock): completed
/// commands with their events, failed ones back to the queue or to the DLQ ([`retry_in`]), their
/// messages masked.
fn ack_for(
    ids: &[i64],
    held: &HashSet<i64>,
    outcomes: Vec<(Claimed, Outcome)>,
    settings: &Settings,
    masker: &Masker,
) -> Ack {
    let mut ack = Ack {
        locked: ids.iter().copied().filter(|id| held.contains(id)).collect(),
        ..Ack::default()
    };
    for (c, outcome) in outcomes {
        match outcome {
            Ok(events) => {
                ack.completed.push((c.id, c.entity, c.entity_id));
                ack.events.extend(events);
            }
            Err(e) => {
                let retry_in = retry_in(&e, c.attempts, settings);
                tracing::debug!(command = c.id, error_type = %e.error_type, attempts = c.attempts, dlq = retry_in.is_none(), "Command failed.");
                ack.failed.push(Failure {
                    id: c.id,
                    entity: c.entity,
                    entity_id: c.entity_id,
                    error_type: e.error_type,
                    message: masker.mask_str(&e.message),
                    retry_in,
                });
            }
        }
    }
    ack
}

/// When a failed command runs again: after a backoff if its error is retryable and it has tries
/// left (`attempts`, this one included, at most `maxRetries`), never (`None`: the DLQ) otherwise.
fn retry_in(e: &HandlerError, attempts: i32, settings: &Settings) -> Option<Duration> {
    (e.retryable && (attempts as u32) <= settings.max_retries)
        .then(|| backoff(attempts, settings.max_backoff_ms))
}

async fn acknowledge(cx: &WorkerCx, worker: &str, ack: Ack) {
    for attempt in 1..=5u32 {
        match queue::ack(&cx.services.store, worker, &ack).await {
            Ok(accepted) => {
                let refused = ack.completed.len() - accepted.len();
                if refused > 0 {
                    tracing::warn!(
                        refused,
                        "Completions refused: their leases were taken over by another worker."
                    );
                }
                return;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "Acknowledging a batch failed; retrying.");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(
        commands = ack.completed.len() + ack.failed.len(),
        "Acknowledgement failed; the leases will return these commands."
    );
}

async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "runbook".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::StreamingConfig;

    fn settings(max_retries: u32) -> Settings {
        Settings {
            max_retries,
            max_backoff_ms: 1_000,
            ..Settings::from_config(&StreamingConfig::default())
        }
    }

    fn command(id: i64, attempts: i32) -> Claimed {
        Claimed {
            id,
            entity: "user".into(),
            entity_id: format!("u{id}"),
            command_type: "user.update".into(),
            priority: 0,
            payload: json!({}),
            attempts,
            created_at: Utc::now(),
        }
    }

    fn error(error_type: ErrorType, retryable: bool) -> HandlerError {
        HandlerError::new(error_type, "it failed", retryable)
    }

    #[test]
    fn a_retryable_error_is_retried_until_max_retries_then_goes_to_the_dlq() {
        let e = error(ErrorType::NetworkException, true);
        for attempts in 1..=3 {
            let delay = retry_in(&e, attempts, &settings(3)).expect("retried");
            assert!(delay <= Duration::from_millis(1_000), "{delay:?}");
        }
        assert_eq!(retry_in(&e, 4, &settings(3)), None);
        assert_eq!(retry_in(&e, 1, &settings(0)), None);
    }

    #[test]
    fn an_error_that_is_not_retryable_goes_to_the_dlq_at_once() {
        let e = error(ErrorType::ValidationException, false);
        assert_eq!(retry_in(&e, 1, &settings(10)), None);
    }

    #[test]
    fn outcomes_become_one_acknowledgement() {
        let masker = Masker::default();
        masker.add("s3cret");
        let event = crate::process::handlers::event(&command(1, 1), json!({ "ok": true }));
        let outcomes = vec![
            (command(1, 1), Ok(vec![event])),
            (
                command(2, 1),
                Err(HandlerError::new(
                    ErrorType::NetworkException,
                    "token s3cret refused",
                    true,
                )),
            ),
            (command(3, 5), Err(error(ErrorType::NetworkException, true))),
            (
                command(4, 1),
                Err(error(ErrorType::ValidationException, false)),
            ),
        ];
        let held = HashSet::from([1, 3]);
        let ack = ack_for(&[1, 2, 3, 4], &held, outcomes, &settings(3), &masker);
        assert_eq!(ack.completed, [(1, "user".to_owned(), "u1".to_owned())]);
        assert_eq!(ack.events.len(), 1);
        assert_eq!(ack.locked, [1, 3]);
        let failed: Vec<(i64, bool)> = ack
            .failed
            .iter()
            .map(|f| (f.id, f.retry_in.is_some()))
            .collect();
        assert_eq!(failed, [(2, true), (3, false), (4, false)]);
        assert_eq!(ack.failed[0].message, "token **** refused");
        assert_eq!(ack.failed[2].error_type, ErrorType::ValidationException);
    }

    #[test]
    fn a_panic_becomes_a_panic_exception_with_its_message() {
        let e = panicked(&"index out of bounds");
        assert_eq!(e.error_type, ErrorType::PanicException);
        assert!(!e.retryable);
        assert_eq!(e.message, "the handler panicked: index out of bounds");
        let e = panicked(&String::from("formatted 42"));
        assert_eq!(e.message, "the handler panicked: formatted 42");
        assert_eq!(panicked(&42).message, "the handler panicked: ");
    }
}
