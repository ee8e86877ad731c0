//! The scheduler of `runbook serve`: fires the playbooks' `on.schedule` ticks as runs on the queue.
//!
//! Every replica runs one. A pass reads the catalog from the engine (so a reload is seen at the
//! next pass), the newest recorded tick of every playbook from the store, and fires each tick that
//! has fallen due since: it inserts the tick's row and enqueues its run in one transaction, and a
//! replica whose insert finds the row there already does nothing ([`crate::store::ticks`]). So
//! each tick runs once however many replicas there are, and a replica that was down finds the
//! ticks it would have fired recorded by the others.
//!
//! A playbook with no recorded tick counts from when this process first saw it (a new server, or a
//! new playbook after a reload, does not replay history). A tick that fell due while no scheduler
//! was watching is *missed*: before this process started (less [`START_GRACE`], within which a
//! running replica is expected to fire it), or before this process's previous pass began (which
//! should have fired it, and failed: the store was unreachable). Missed ticks are all recorded;
//! with `missed: run_once` the newest of them runs as the catch-up when no tick is on time in the
//! same pass, the others are `skipped`; with `missed: skip` they are all `skipped`.
//!
//! Which ticks are due is decided by this process's [`Clock`], never by the store's `NOW()`; the
//! tests pass a clock they move by hand.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::runs::{self, priority_for};
use crate::{
    engine::{Engine, RunRequest},
    playbook::{Missed, Schedule},
    store::{
        runs as store_runs,
        ticks::{self, NewTick, Outcome},
        DbError,
    },
};

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// How long before this process started a tick may have fallen due and still be on time for it.
pub const START_GRACE: chrono::Duration = chrono::Duration::seconds(5);

/// The longest the loop sleeps, so that a reloaded catalog and the shutdown are seen soon.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The most ticks of one playbook a pass records; more (a long downtime of a fine schedule) are
/// recorded over the next passes.
const MAX_TICKS_PER_PASS: usize = 5_000;

/// The scheduler of one process.
pub struct Scheduler {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    /// Written into each tick's `fired_by`.
    id: String,
    /// Ticks due at or before this are missed: the previous pass's start, or before the process's.
    watched_since: DateTime<Utc>,
    /// When this process first saw each scheduled playbook: where one never recorded counts from.
    first_seen: HashMap<String, DateTime<Utc>>,
}

/// What a pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Ticks this process recorded, by outcome.
    pub runs: usize,
    pub catch_ups: usize,
    pub skipped: usize,
    /// The earliest tick of any playbook after the ones seen, for the sleep.
    pub next_due: Option<DateTime<Utc>>,
    /// A playbook had more ticks due than one pass records: pass again at once.
    pub more: bool,
}

impl Scheduler {
    pub fn new(engine: Arc<Engine>, clock: Arc<dyn Clock>) -> Self {
        let started = clock.now();
        let first_seen = engine
            .catalog()
            .playbooks
            .values()
            .filter(|p| p.triggers.schedule.is_some())
            .map(|p| (p.name.clone(), started))
            .collect();
        Scheduler {
            engine,
            clock,
            id: format!("{}-{}", super::worker::hostname(), std::process::id()),
            watched_since: started - START_GRACE,
            first_seen,
        }
    }

    /// Passes until `shutdown`, sleeping until the next tick is due (at most [`MAX_SLEEP`]).
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(id = %self.id, "Scheduler started.");
        while !shutdown.is_cancelled() {
            let sleep = match self.pass().await {
                Ok(pass) if pass.more => Duration::ZERO,
                Ok(pass) => pass
                    .next_due
                    .and_then(|t| (t - self.clock.now()).to_std().ok())
                    .map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP)),
                Err(e) => {
                    tracing::warn!(error = %e, "Scheduler pass failed; trying again.");
                    MAX_SLEEP
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        tracing::info!("Scheduler stopped.");
    }

    /// One pass: fires every tick due by the clock's time, in order, playbook by playbook.
    pub async fn pass(&mut self) -> Result<Pass, DbError> {
        let now = self.clock.now();
        // The next pass counts ticks due before this one began as missed: this one fires them.
        let watched_since = std::mem::replace(&mut self.watched_since, now);
        let catalog = self.engine.catalog();
        let scheduled: Vec<_> = catalog
            .playbooks
            .values()
            .filter_map(|p| p.triggers.schedule.as_ref().map(|s| (p.name.as_str(), s)))
            .collect();
        // A playbook that lost its schedule in a reload and gets one back counts from then.
        self.first_seen
            .retain(|name, _| scheduled.iter().any(|(n, _)| n == name));
        let names: Vec<String> = scheduled.iter().map(|(n, _)| n.to_string()).collect();
        let latest = ticks::latest(&self.engine.services().store, &names).await?;
        let mut pass = Pass::default();
        for (name, schedule) in scheduled {
            let seen = *self.first_seen.entry(name.to_owned()).or_insert(now);
            let from = latest.get(name).map_or(seen, |t| t.scheduled_at);
            let (due, more) = due(schedule, from, now);
            pass.more |= more;
            let plan = plan(&due, watched_since, schedule.missed, more);
            self.fire(name, &plan, &mut pass).await?;
            let last = due.last().copied().unwrap_or(from);
            if let Some(next) = schedule.next_after(last) {
                pass.next_due = Some(pass.next_due.map_or(next, |n| n.min(next)));
            }
        }
        Ok(pass)
    }

    /// Records the planned ticks of one playbook: the skipped first (they are the older), then
    /// each run with its command.
    async fn fire(
        &self,
        playbook: &str,
        plan: &[(DateTime<Utc>, Outcome)],
        pass: &mut Pass,
    ) -> Result<(), DbError> {
        let store = &self.engine.services().store;
        let version = self.version(playbook, plan).await?;
        let mut skipped: Vec<DateTime<Utc>> = Vec::new();
        for &(scheduled_at, outcome) in plan {
            let fired_at = self.clock.now();
            let tick = NewTick {
                playbook,
                scheduled_at,
                fired_at,
                outcome,
                fired_by: &self.id,
            };
            let Some(mut claim) = ticks::claim(store, &tick).await? else {
                continue;
            };
            if outcome == Outcome::Skipped {
                claim.commit(None).await?;
                skipped.push(scheduled_at);
                pass.skipped += 1;
                continue;
            }
            let req = RunRequest {
                playbook: playbook.to_owned(),
                trigger: json!({
                    "kind": "schedule",
                    "scheduled_at": store_runs::timestamp(scheduled_at),
                    "catch_up": outcome == Outcome::CatchUp,
                }),
                version: version.clone(),
                ..Default::default()
            };
            let Some(admission) = self.admit(claim.tx(), playbook, &req, fired_at).await? else {
                claim.commit(None).await?;
                continue;
            };
            let id = match &admission {
                runs::Admission::Queued { command_id, .. } => *command_id,
                _ => None,
            };
            claim.commit(id).await?;
            runs::note(self.engine.metrics(), playbook, &admission);
            let lag = (fired_at - scheduled_at).to_std().unwrap_or_default();
            self.engine
                .metrics()
                .scheduler_lag
                .observe(lag.as_secs_f64());
            match outcome {
                Outcome::CatchUp => pass.catch_ups += 1,
                _ => pass.runs += 1,
            }
            tracing::info!(
                playbook,
                scheduled_at = %scheduled_at,
                fired_at = %fired_at,
                outcome = outcome.as_str(),
                run_id = admission.run_id(),
                command_id = id,
                "Schedule tick fired."
            );
        }
        if let (Some(first), Some(last)) = (skipped.first(), skipped.last()) {
            tracing::info!(
                playbook,
                count = skipped.len(),
                first = %first,
                last = %last,
                "Missed schedule ticks recorded as skipped."
            );
        }
        Ok(())
    }
}

impl Scheduler {
    /// Admits a tick's run under the playbook's guards, in the tick's transaction; `None` when
    /// the playbook left the catalog meanwhile.
    async fn admit(
        &self,
        tx: &mut crate::store::Tx,
        playbook: &str,
        req: &RunRequest,
        now: DateTime<Utc>,
    ) -> Result<Option<runs::Admission>, DbError> {
        let catalog = self.engine.catalog();
        let Some(pb) = catalog.get(playbook) else {
            return Ok(None);
        };
        let admit = runs::Admit {
            req,
            priority: priority_for(None),
            alert: None,
            queue: true,
            forced_by: None,
            now,
        };
        match runs::admit_in(tx, self.engine.services(), pb, &admit).await {
            Ok(a) => Ok(Some(a)),
            Err(runs::AdmitError::Db(e)) => Err(e),
            Err(runs::AdmitError::Params(e)) => {
                tracing::error!(playbook, error = %e, "Scheduled run not started: its parameters do not resolve.");
                Ok(None)
            }
        }
    }

    /// The version the runs of `plan` are pinned to, stored before any tick is claimed (a claim
    /// holds SQLite's write lock until it commits); `None` when the plan runs nothing.
    async fn version(
        &self,
        playbook: &str,
        plan: &[(DateTime<Utc>, Outcome)],
    ) -> Result<Option<String>, DbError> {
        if plan.iter().all(|(_, o)| *o == Outcome::Skipped) {
            return Ok(None);
        }
        let mut req = RunRequest {
            playbook: playbook.to_owned(),
            ..Default::default()
        };
        self.engine.pin(&mut req).await?;
        Ok(req.version)
    }
}

/// The schedule's ticks after `from` up to `now`, oldest first, at most [`MAX_TICKS_PER_PASS`];
/// `true` when there are more.
fn due(schedule: &Schedule, from: DateTime<Utc>, now: DateTime<Utc>) -> (Vec<DateTime<Utc>>, bool) {
    let mut out = Vec::new();
    let mut t = from;
    while let Some(next) = schedule.next_after(t).filter(|&n| n <= now) {
        if out.len() == MAX_TICKS_PER_PASS {
            return (out, true);
        }
        out.push(next);
        t = next;
    }
    (out, false)
}

/// What each due tick does: on time (after `watched_since`) it runs; missed, it is skipped, but
/// with `run_once` the newest missed tick runs as the catch-up when no tick is on time (and the
/// pass has seen the newest missed one: not when `more` are still to come).
fn plan(
    due: &[DateTime<Utc>],
    watched_since: DateTime<Utc>,
    missed: Missed,
    more: bool,
) -> Vec<(DateTime<Utc>, Outcome)> {
    let on_time = due.iter().filter(|&&t| t > watched_since).count();
    let mut out: Vec<(DateTime<Utc>, Outcome)> = due
        .iter()
        .map(|&t| {
            let outcome = if t > watched_since {
                Outcome::Run
            } else {
                Outcome::Skipped
            };
            (t, outcome)
        })
        .collect();
    if missed == Missed::RunOnce && on_time == 0 && !more {
        if let Some(last) = out.last_mut() {
            last.1 = Outcome::CatchUp;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Mutex};

    use chrono::TimeZone;

    use super::*;
    use crate::{
        config::Config,
        metrics::Metrics,
        playbook::{compile_source, Catalog, CompileEnv},
        secrets::Masker,
        services::Services,
        store::{ticks::Tick, Db},
    };

    /// A clock the test moves.
    struct Hand(Mutex<DateTime<Utc>>);

    impl Clock for Hand {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
    }

    impl Hand {
        fn set(&self, t: DateTime<Utc>) {
            *self.0.lock().unwrap() = t;
        }
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 4, h, m, s).unwrap()
    }

    fn catalog(playbooks: &[(&str, &str)]) -> Catalog {
        let mut catalog = Catalog::default();
        for (name, on) in playbooks {
            // Runs are never worked off here: a concurrency above the ticks keeps every run.
            let yaml = format!(
                "name: {name}\non:\n{on}\nguard: {{ concurrency: 100 }}\nsteps:\n  - id: one\n    wait: 1s\n"
            );
            let path = format!("{name}.yaml");
            let (pb, _) = compile_source(Path::new(&path), &yaml, &CompileEnv::default())
                .unwrap_or_else(|d| panic!("{d:?}"));
            catalog.playbooks.insert(pb.name.clone(), pb);
        }
        catalog
    }

    async fn engine(catalog: Catalog) -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
        let db = Db::connect(&url, false, 4).await.unwrap();
        db.migrate().await.unwrap();
        let services = Arc::new(Services::new(
            db,
            Arc::new(Config::default()),
            Masker::new(Vec::new()),
        ));
        let engine = Arc::new(Engine::new(services, Arc::new(Metrics::new()), catalog));
        (dir, engine)
    }

    async fn recorded(engine: &Engine, playbook: &str) -> Vec<Tick> {
        ticks::of_playbook(&engine.services().store, playbook)
            .await
            .unwrap()
    }

    /// The run commands on the queue: (playbook, trigger).
    async fn commands(engine: &Engine) -> Vec<serde_json::Value> {
        engine
            .services()
            .store
            .sql(
                "SELECT id, entity_id, command_type, payload FROM command_queue ORDER BY id",
                vec![],
            )
            .await
            .unwrap()
            .rows
    }

    #[tokio::test]
    async fn a_tick_over_its_playbooks_guard_is_recorded_with_a_skipped_run() {
        let mut catalog = Catalog::default();
        let yaml =
            "name: busy\non:\n  schedule: '0 * * * * *'\nsteps:\n  - id: one\n    wait: 1s\n";
        let (pb, _) = compile_source(Path::new("busy.yaml"), yaml, &CompileEnv::default()).unwrap();
        catalog.playbooks.insert(pb.name.clone(), pb);
        let (_dir, engine) = engine(catalog).await;
        let clock = Arc::new(Hand(Mutex::new(at(10, 0, 30))));
        let mut scheduler = Scheduler::new(engine.clone(), clock.clone());
        for secs in [61, 121] {
            clock.set(at(10, 0, 0) + chrono::Duration::seconds(secs));
            scheduler.pass().await.unwrap();
        }
        // The first tick's run is still queued (no worker here), so concurrency 1 holds the second.
        let ticks = recorded(&engine, "busy").await;
        assert_eq!(ticks.len(), 2);
        assert!(
            ticks[0].command_id.is_some() && ticks[1].command_id.is_none(),
            "{ticks:?}"
        );
        let runs = engine
            .services()
            .store
            .sql("SELECT status, error FROM runbook_runs ORDER BY id", vec![])
            .await
            .unwrap()
            .rows;
        assert_eq!(runs[0]["status"], "queued");
        assert_eq!(runs[1]["status"], "skipped");
        assert_eq!(
            runs[1]["error"],
            "guard.concurrency: 1 run(s) of this playbook already queued or running (limit 1)"
        );
        assert_eq!(
            commands(&engine).await.len(),
            1,
            "nothing queued behind the guard"
        );
    }

    #[tokio::test]
    async fn ticks_on_time_run_each_and_a_downtime_gives_one_catch_up_with_every_tick_recorded() {
        let (_dir, engine) = engine(catalog(&[
            ("every-minute", "  schedule: '0 * * * * *'"),
            (
                "skipper",
                "  schedule: '0 * * * * *'\n  timezone: Europe/Berlin\n  missed: skip",
            ),
        ]))
        .await;
        let clock = Arc::new(Hand(Mutex::new(at(10, 0, 30))));
        let mut first = Scheduler::new(engine.clone(), clock.clone());
        // Nothing due yet: a new server does not replay the ticks before it started.
        let pass = first.pass().await.unwrap();
        assert_eq!(pass.runs, 0);
        assert_eq!(pass.next_due, Some(at(10, 1, 0)));
        // Two minutes later, passing every few seconds: each tick runs on time, once.
        for secs in (35..=150).step_by(5) {
            clock.set(at(10, 0, 0) + chrono::Duration::seconds(secs));
            first.pass().await.unwrap();
        }
        let ticks = recorded(&engine, "every-minute").await;
        let times: Vec<_> = ticks.iter().map(|t| t.scheduled_at).collect();
        assert_eq!(times, [at(10, 1, 0), at(10, 2, 0)]);
        assert!(ticks.iter().all(|t| t.outcome == Outcome::Run));
        assert_eq!(ticks[0].fired_at, at(10, 1, 0));
        let cmds = commands(&engine).await;
        assert_eq!(cmds.len(), 4, "two ticks of two playbooks: {cmds:?}");
        assert_eq!(cmds[0]["command_type"], "runbook.run");
        assert_eq!(cmds[0]["entity_id"], "every-minute");
        assert_eq!(
            cmds[0]["payload"],
            json!({
                "playbook": "every-minute", "params": {}, "alert": null, "alerts": [],
                "trigger": {"kind": "schedule", "scheduled_at": "2026-05-04T10:01:00.000Z", "catch_up": false},
            })
        );
        assert_eq!(
            Some(cmds[0]["id"].as_i64().unwrap()),
            ticks[0].command_id,
            "the tick names its run's command"
        );

        // The server is down from 10:02:30 to 10:09:40; a new one starts.
        clock.set(at(10, 9, 40));
        let mut second = Scheduler::new(engine.clone(), clock.clone());
        let pass = second.pass().await.unwrap();
        assert_eq!(
            pass,
            Pass {
                runs: 0,
                catch_ups: 1,
                skipped: 6 + 7,
                next_due: Some(at(10, 10, 0)),
                more: false,
            }
        );
        let ticks = recorded(&engine, "every-minute").await;
        assert_eq!(ticks.len(), 2 + 7, "every tick recorded: {ticks:?}");
        let missed: Vec<_> = ticks[2..]
            .iter()
            .map(|t| (t.scheduled_at, t.outcome))
            .collect();
        assert_eq!(
            missed,
            (3..=9)
                .map(|m| (
                    at(10, m, 0),
                    if m == 9 {
                        Outcome::CatchUp
                    } else {
                        Outcome::Skipped
                    }
                ))
                .collect::<Vec<_>>()
        );
        assert!(ticks[2..8].iter().all(|t| t.command_id.is_none()));
        let cmds = commands(&engine).await;
        assert_eq!(cmds.len(), 5, "one catch-up run, not a burst");
        assert_eq!(
            cmds[4]["payload"]["trigger"],
            json!({"kind": "schedule", "scheduled_at": "2026-05-04T10:09:00.000Z", "catch_up": true})
        );
        assert_eq!(ticks[8].command_id, cmds[4]["id"].as_i64());
        // `missed: skip`: every missed tick recorded, none run.
        let skipper = recorded(&engine, "skipper").await;
        assert_eq!(skipper.len(), 9);
        assert!(skipper[2..].iter().all(|t| t.outcome == Outcome::Skipped));

        // The old replica's next pass finds the ticks taken: nothing happens twice.
        let pass = first.pass().await.unwrap();
        assert_eq!((pass.runs, pass.catch_ups, pass.skipped), (0, 0, 0));
        // Both go on; the next tick runs once.
        clock.set(at(10, 10, 0));
        let a = first.pass().await.unwrap();
        let b = second.pass().await.unwrap();
        assert_eq!(a.runs + b.runs, 2, "{a:?} {b:?}");
        assert_eq!(commands(&engine).await.len(), 7);
    }

    #[tokio::test]
    async fn a_tick_just_before_start_is_on_time_and_a_failed_pass_makes_its_ticks_missed() {
        let (_dir, engine) = engine(catalog(&[("p", "  schedule: '*/10 * * * * *'")])).await;
        let store = engine.services().store.clone();
        // A tick recorded at 10:00:00 by a replica; this one starts at 10:00:12, and the 10:00:10
        // tick (within the grace) is still on time.
        let clock = Arc::new(Hand(Mutex::new(at(10, 0, 0))));
        let mut other = Scheduler::new(engine.clone(), clock.clone());
        let claim = ticks::claim(
            &store,
            &NewTick {
                playbook: "p",
                scheduled_at: at(10, 0, 0),
                fired_at: at(10, 0, 0),
                outcome: Outcome::Run,
                fired_by: "other",
            },
        )
        .await
        .unwrap()
        .unwrap();
        claim.commit(None).await.unwrap();
        clock.set(at(10, 0, 12));
        let mut s = Scheduler::new(engine.clone(), clock.clone());
        let pass = s.pass().await.unwrap();
        assert_eq!((pass.runs, pass.catch_ups), (1, 0));
        // A pass that fails (the store is away) leaves the ticks due then to be missed later.
        sqlx::query("ALTER TABLE runbook_schedule_ticks RENAME TO away")
            .execute(match &store {
                Db::Sqlite(p) => p,
                Db::Postgres(_) => unreachable!(),
            })
            .await
            .unwrap();
        clock.set(at(10, 0, 45));
        assert!(s.pass().await.is_err());
        sqlx::query("ALTER TABLE away RENAME TO runbook_schedule_ticks")
            .execute(match &store {
                Db::Sqlite(p) => p,
                Db::Postgres(_) => unreachable!(),
            })
            .await
            .unwrap();
        clock.set(at(10, 0, 51));
        let pass = s.pass().await.unwrap();
        // 10:00:20, :30, :40 were due at the failed pass: missed; 10:00:50 is on time.
        assert_eq!((pass.runs, pass.catch_ups, pass.skipped), (1, 0, 3));
        // The replica that fired 10:00:00 finds nothing left to do.
        let pass = other.pass().await.unwrap();
        assert_eq!((pass.runs, pass.catch_ups, pass.skipped), (0, 0, 0));
        let outcomes: Vec<_> = recorded(&engine, "p")
            .await
            .iter()
            .map(|t| t.outcome)
            .collect();
        use Outcome::*;
        assert_eq!(outcomes, [Run, Run, Skipped, Skipped, Skipped, Run]);
    }

    #[test]
    fn plans() {
        let t = |s| at(10, 0, s);
        use Outcome::*;
        let due = [t(1), t(2), t(3)];
        assert_eq!(
            plan(&due, t(0), Missed::RunOnce, false),
            [(t(1), Run), (t(2), Run), (t(3), Run)]
        );
        assert_eq!(
            plan(&due, t(3), Missed::RunOnce, false),
            [(t(1), Skipped), (t(2), Skipped), (t(3), CatchUp)]
        );
        assert_eq!(
            plan(&due, t(3), Missed::RunOnce, true),
            [(t(1), Skipped), (t(2), Skipped), (t(3), Skipped)]
        );
        assert_eq!(
            plan(&due, t(2), Missed::RunOnce, false),
            [(t(1), Skipped), (t(2), Skipped), (t(3), Run)]
        );
        assert_eq!(
            plan(&due, t(3), Missed::Skip, false),
            [(t(1), Skipped), (t(2), Skipped), (t(3), Skipped)]
        );
        assert!(plan(&[], t(3), Missed::RunOnce, false).is_empty());
    }

    #[tokio::test]
    async fn the_loop_stops_on_shutdown() {
        let (_dir, engine) = engine(catalog(&[("p", "  schedule: '0 0 3 * * *'")])).await;
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(Scheduler::new(engine, Arc::new(SystemClock)).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stopped")
            .unwrap();
    }
}
