//! Guards: whether a new run of a playbook may start. The rule is one pure function
//! ([`decide`]); the numbers it decides on are read here ([`counts_all`]; for a batch of
//! admissions, with the alert keys and the pause, [`super::admission::read`]) inside the transaction
//! that records the run, after [`begin`] has serialised every decider of the playbook:
//! PostgreSQL takes a transaction-scoped advisory lock per playbook name (so replicas sharing the
//! database decide one at a time), SQLite starts the transaction with `BEGIN IMMEDIATE` (the
//! file's write lock, so processes sharing the file decide one at a time). A playbook's open runs
//! are its row of `runbook_open_runs`, which triggers on `runbook_runs` keep (migration 0010) and
//! which only this module reads.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use super::{
    batch::Col, bind_pg, bind_sqlite, decode, dollar_to_question, runs::timestamp, Db, DbError, Tx,
};
use crate::status::RunStatus;

/// A transaction in which the guards of `playbooks` are decided: nobody else decides for them
/// until it ends. Locks are taken in key order, so two deciders never wait on each other. On
/// PostgreSQL the locks go in the `BEGIN` itself (one simple query, one round trip however many
/// playbooks a batch touches); the keys spliced there are numbers this process computed from
/// the names, never text.
///
/// On PostgreSQL the transaction also plans without sequential scans (`enable_seqscan` off,
/// for it alone). Its reads are lookups by key in tables that only grow (an alert's run, the
/// alerts in cooldown, the open runs), and its statements are prepared: PostgreSQL fixes a
/// prepared statement's plan after its fifth call and keeps it until the table is next
/// analysed (autovacuum looks once a minute), so a plan made while a table was nearly empty, a
/// scan of the whole table, stayed for every batch of a burst into a new store. Planned
/// without scans, the lookups go by their indexes however small the table was; planning each
/// call instead cost 0.8 ms of the database's time a batch. For the same reason the transaction
/// takes the generic plan of every statement at once (`plan_cache_mode`): PostgreSQL went on
/// planning the admission's one read (`store::admission`) at each call, whose parameters are
/// all arrays and whose plan never depends on them (0.2 ms of a 60-notification batch's 4.6).
pub async fn begin(db: &Db, playbooks: &[&str]) -> Result<Tx, DbError> {
    match db {
        Db::Sqlite(pool) => Ok(Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)),
        Db::Postgres(pool) => {
            let mut keys: Vec<i64> = playbooks.iter().map(|p| lock_key(p)).collect();
            keys.sort_unstable();
            keys.dedup();
            let mut begin = String::from(
                "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = force_generic_plan",
            );
            for key in keys {
                begin.push_str(&format!("; SELECT pg_advisory_xact_lock({key})"));
            }
            Ok(Tx::Postgres(pool.begin_with(begin).await?))
        }
    }
}

/// The advisory lock key of a playbook: FNV-1a (64 bits) of `runbook.guard:<name>`, stable
/// across processes and releases.
pub fn lock_key(playbook: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "runbook.guard:".bytes().chain(playbook.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Runs one statement written with `$n` placeholders inside `tx`; its rows as JSON objects.
pub(crate) async fn tx_sql(
    tx: &mut Tx,
    sql: &str,
    params: Vec<Json>,
) -> Result<Vec<Json>, DbError> {
    Ok(match tx {
        Tx::Sqlite(tx) => {
            let sql = dollar_to_question(sql);
            bind_sqlite(sqlx::query(&sql), &params)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(decode::sqlite_row)
                .collect()
        }
        Tx::Postgres(tx) => bind_pg(sqlx::query(sql), &params)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(decode::pg_row)
            .collect(),
    })
}

/// A timestamp parameter `$n` compared with a timestamp column.
pub(crate) fn ts_param(tx: &Tx, n: usize) -> String {
    match tx {
        Tx::Postgres(_) => format!("CAST(${n} AS TIMESTAMPTZ)"),
        Tx::Sqlite(_) => format!("${n}"),
    }
}

/// A playbook's guard, as the store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Runs queued or running at once.
    pub concurrency: u32,
    /// No new run within this of the last one (per alert fingerprint for alert triggers).
    pub cooldown: Option<Duration>,
    pub max_runs_per_hour: Option<u32>,
}

/// For an alert trigger, the default cooldown per fingerprint when the playbook names none: an
/// alert that flaps (fires, resolves, fires again) within it does not restart remediation.
pub const DEFAULT_FLAP_WINDOW: Duration = Duration::from_secs(300);

/// What a trigger is about, for the cooldown: an alert (per fingerprint and firing/resolved), or
/// the playbook as a whole.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    Playbook,
    Alert { fingerprint: &'a str, kind: &'a str },
}

/// The numbers a guard decides on, counted at decision time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Runs of the playbook queued, running, waiting for approval or being cancelled.
    pub open: i64,
    /// Runs (not skipped) within the cooldown window, in the trigger's scope.
    pub in_cooldown: i64,
    /// Runs (not skipped) started in the last hour.
    pub last_hour: i64,
}

/// Why a trigger did not start a run. `guard()` names it in metrics and answers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("runs are paused: {reason} (by {by} since {since}); `runbook resume` ends the pause")]
    Paused {
        reason: String,
        by: String,
        since: String,
    },
    #[error("guard.concurrency: {open} run(s) of this playbook already queued or running (limit {limit})")]
    Concurrency { open: i64, limit: u32 },
    #[error("guard.cooldown: a run started within the last {window}{scope}")]
    Cooldown { window: String, scope: String },
    #[error("guard.max_runs_per_hour: {count} run(s) in the last hour (limit {limit})")]
    MaxRunsPerHour { count: i64, limit: u32 },
}

impl Refusal {
    pub fn guard(&self) -> &'static str {
        match self {
            Refusal::Paused { .. } => "paused",
            Refusal::Concurrency { .. } => "concurrency",
            Refusal::Cooldown { .. } => "cooldown",
            Refusal::MaxRunsPerHour { .. } => "max_runs_per_hour",
        }
    }
}

/// The global pause, when on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Paused {
    pub reason: String,
    pub by: String,
    pub since: String,
}

/// The rule: a run may start unless the pause holds it (only runs that change things), or one
/// of the guards does. `force` overrides all of them.
pub fn decide(
    limits: &Limits,
    window: Option<Duration>,
    scope: Scope<'_>,
    counts: &Counts,
    paused: Option<&Paused>,
    changes_things: bool,
) -> Result<(), Refusal> {
    if let Some(p) = paused.filter(|_| changes_things) {
        return Err(Refusal::Paused {
            reason: p.reason.clone(),
            by: p.by.clone(),
            since: p.since.clone(),
        });
    }
    if counts.open >= i64::from(limits.concurrency) {
        return Err(Refusal::Concurrency {
            open: counts.open,
            limit: limits.concurrency,
        });
    }
    if let Some(w) = window.filter(|_| counts.in_cooldown > 0) {
        let scope = match scope {
            Scope::Playbook => String::new(),
            Scope::Alert { fingerprint, kind } => {
                format!(" for alert {fingerprint} ({kind})")
            }
        };
        return Err(Refusal::Cooldown {
            window: crate::duration::Dur(w).to_string(),
            scope,
        });
    }
    match limits.max_runs_per_hour {
        Some(limit) if counts.last_hour >= i64::from(limit) => Err(Refusal::MaxRunsPerHour {
            count: counts.last_hour,
            limit,
        }),
        _ => Ok(()),
    }
}

/// The cooldown window of a trigger: the playbook's, or for an alert without one the default
/// flap window.
pub fn window(limits: &Limits, scope: Scope<'_>) -> Option<Duration> {
    match scope {
        Scope::Playbook => limits.cooldown,
        Scope::Alert { .. } => Some(limits.cooldown.unwrap_or(DEFAULT_FLAP_WINDOW)),
    }
}

/// The statuses of a run that is not over.
pub fn open_statuses() -> Vec<RunStatus> {
    RunStatus::ALL
        .iter()
        .copied()
        .filter(|s| !s.is_final())
        .collect()
}

/// What [`counts_all`] counts for one playbook.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    pub playbook: &'a str,
    pub limits: &'a Limits,
    /// The cooldown per playbook, when a trigger of the batch is not an alert.
    pub window: Option<Duration>,
}

/// Counts what [`decide`] needs for `playbook` as a whole (the cooldown per playbook; the per-alert
/// cooldown of a batch is [`alerts_in_cooldown`]), at time `now`, inside the deciding transaction.
pub async fn counts(
    tx: &mut Tx,
    playbook: &str,
    limits: &Limits,
    window: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<Counts, DbError> {
    let wanted = Wanted {
        playbook,
        limits,
        window,
    };
    Ok(counts_all(tx, &[wanted], now).await?.remove(0))
}

/// [`counts`] for several playbooks, in order. The open runs are the playbooks' counters
/// (`runbook_open_runs`, kept by the store's triggers as runs start and end), read in one
/// statement for them all ([`open_counts`]), so deciding costs the same however many runs are
/// open; the rest is [`counts_from`].
pub async fn counts_all(
    tx: &mut Tx,
    wanted: &[Wanted<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Counts>, DbError> {
    let names: Vec<&str> = wanted.iter().map(|w| w.playbook).collect();
    let open = open_counts(tx, &names).await?;
    counts_from(tx, wanted, &open, now).await
}

/// The open runs of `playbooks` (those with none are absent), in one statement.
pub async fn open_counts(tx: &mut Tx, playbooks: &[&str]) -> Result<HashMap<String, i64>, DbError> {
    let names: Vec<Vec<Json>> = playbooks.iter().map(|p| vec![json!(p)]).collect();
    let found = super::batch::values(
        tx,
        "SELECT o.playbook, o.open FROM runbook_open_runs o JOIN (VALUES",
        &[Col::Plain],
        &names,
        ") k ON o.playbook = k.column1",
    )
    .await?;
    Ok(found
        .iter()
        .filter_map(|r| Some((r["playbook"].as_str()?.to_owned(), r["open"].as_i64()?)))
        .collect())
}

/// [`counts`] for several playbooks, in order, given their open runs (`open`, from
/// [`open_counts`]): the runs of the last hour and the cooldown per playbook are counted only for
/// the playbooks whose guard has them, each count stopping at the limit it is compared with (a
/// cooldown at 1).
pub async fn counts_from(
    tx: &mut Tx,
    wanted: &[Wanted<'_>],
    open: &HashMap<String, i64>,
    now: DateTime<Utc>,
) -> Result<Vec<Counts>, DbError> {
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let last_hour = match w.limits.max_runs_per_hour {
            None => 0,
            Some(max) => {
                started_since(tx, w.playbook, now - chrono::Duration::hours(1), max).await?
            }
        };
        let in_cooldown = match w.window {
            None => 0,
            Some(d) => {
                let since = now - chrono::Duration::from_std(d).unwrap_or_default();
                started_since(tx, w.playbook, since, 1).await?
            }
        };
        out.push(Counts {
            open: open.get(w.playbook).copied().unwrap_or(0),
            in_cooldown,
            last_hour,
        });
    }
    Ok(out)
}

/// Runs of `playbook` (not skipped) created since `since`, counted up to `cap`.
async fn started_since(
    tx: &mut Tx,
    playbook: &str,
    since: DateTime<Utc>,
    cap: u32,
) -> Result<i64, DbError> {
    let sql = format!(
        "SELECT 1 FROM runbook_runs WHERE playbook = $1 AND NOT dry_run \
         AND status <> $2 AND created_at >= {}",
        ts_param(tx, 3)
    );
    let params = vec![
        json!(playbook),
        json!(RunStatus::Skipped),
        json!(timestamp(since)),
    ];
    count(tx, &sql, params, cap).await
}

/// An alert (fingerprint, kind) asked about for a playbook's cooldown: whether it has a run of
/// the playbook (not skipped) decided since `since` (a timestamp's text).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoolKey {
    pub playbook: String,
    pub fingerprint: String,
    pub kind: String,
}

/// Of the alerts `keys` (each with the start of its playbook's cooldown window), those with a run
/// of their playbook (not skipped) decided since then: the per-alert cooldown of a whole batch,
/// every playbook at once, in one statement.
pub async fn alerts_in_cooldown(
    tx: &mut Tx,
    keys: &[(CoolKey, String)],
) -> Result<HashSet<CoolKey>, DbError> {
    let rows: Vec<Vec<Json>> = keys
        .iter()
        .map(|(k, since)| {
            vec![
                json!(k.playbook),
                json!(k.fingerprint),
                json!(k.kind),
                json!(since),
            ]
        })
        .collect();
    let found = super::batch::values(
        tx,
        "SELECT DISTINCT a.playbook, a.fingerprint, a.kind FROM (VALUES",
        &[Col::Plain, Col::Plain, Col::Plain, Col::Timestamp],
        &rows,
        // The status is this program's constant, written in; the keys are bound.
        &format!(
            ") k JOIN runbook_alert_runs a ON a.playbook = k.column1 AND a.fingerprint = k.column2 \
             AND a.kind = k.column3 AND a.decided_at >= k.column4 \
             JOIN runbook_runs r ON r.id = a.run_id WHERE r.status <> '{}'",
            RunStatus::Skipped.as_str()
        ),
    )
    .await?;
    let text = |v: &Json| v.as_str().unwrap_or_default().to_owned();
    Ok(found
        .iter()
        .map(|r| CoolKey {
            playbook: text(&r["playbook"]),
            fingerprint: text(&r["fingerprint"]),
            kind: text(&r["kind"]),
        })
        .collect())
}

/// The rows `select` gives, counted up to `cap`.
async fn count(tx: &mut Tx, select: &str, params: Vec<Json>, cap: u32) -> Result<i64, DbError> {
    let sql = format!("SELECT COUNT(*) AS n FROM ({select} LIMIT {cap}) t");
    let rows = tx_sql(tx, &sql, params).await?;
    Ok(rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(0))
}

/// Runs not yet over, per status (for `runbook status`).
pub async fn open_runs(db: &Db) -> Result<Vec<Json>, DbError> {
    let open = open_statuses();
    let list: Vec<String> = (0..open.len()).map(|i| format!("${}", i + 1)).collect();
    let sql = format!(
        "SELECT status, COUNT(*) AS count FROM runbook_runs WHERE status IN ({}) GROUP BY status ORDER BY status",
        list.join(", ")
    );
    Ok(db
        .sql(&sql, open.iter().map(|s| json!(s)).collect())
        .await?
        .rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: u32, cooldown: Option<u64>, per_hour: Option<u32>) -> Limits {
        Limits {
            concurrency,
            cooldown: cooldown.map(Duration::from_secs),
            max_runs_per_hour: per_hour,
        }
    }

    fn counts(open: i64, in_cooldown: i64, last_hour: i64) -> Counts {
        Counts {
            open,
            in_cooldown,
            last_hour,
        }
    }

    const ALERT: Scope<'static> = Scope::Alert {
        fingerprint: "abc",
        kind: "firing",
    };

    #[test]
    fn concurrency_counts_open_runs() {
        let l = limits(2, None, None);
        let w = window(&l, Scope::Playbook);
        assert!(decide(&l, w, Scope::Playbook, &counts(1, 0, 9), None, true).is_ok());
        let e = decide(&l, w, Scope::Playbook, &counts(2, 0, 9), None, true).unwrap_err();
        assert_eq!(e, Refusal::Concurrency { open: 2, limit: 2 });
        assert_eq!(e.guard(), "concurrency");
        assert_eq!(
            e.to_string(),
            "guard.concurrency: 2 run(s) of this playbook already queued or running (limit 2)"
        );
    }

    #[test]
    fn cooldown_per_playbook_and_default_flap_window_for_alerts() {
        let none = limits(5, None, None);
        assert_eq!(window(&none, Scope::Playbook), None);
        // No cooldown: a playbook trigger is never held by an earlier run.
        assert!(decide(&none, None, Scope::Playbook, &counts(0, 3, 3), None, true).is_ok());
        // An alert trigger gets the flap window.
        let w = window(&none, ALERT);
        assert_eq!(w, Some(DEFAULT_FLAP_WINDOW));
        let e = decide(&none, w, ALERT, &counts(0, 1, 1), None, true).unwrap_err();
        assert_eq!(e.guard(), "cooldown");
        assert_eq!(
            e.to_string(),
            "guard.cooldown: a run started within the last 5m for alert abc (firing)"
        );
        let l = limits(5, Some(900), None);
        assert_eq!(window(&l, ALERT), Some(Duration::from_secs(900)));
        let e = decide(
            &l,
            window(&l, Scope::Playbook),
            Scope::Playbook,
            &counts(0, 1, 1),
            None,
            true,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "guard.cooldown: a run started within the last 15m"
        );
        assert!(decide(&l, window(&l, ALERT), ALERT, &counts(0, 0, 4), None, true).is_ok());
    }

    #[test]
    fn max_runs_per_hour() {
        let l = limits(5, None, Some(3));
        assert!(decide(&l, None, Scope::Playbook, &counts(0, 0, 2), None, true).is_ok());
        let e = decide(&l, None, Scope::Playbook, &counts(0, 0, 3), None, true).unwrap_err();
        assert_eq!(e, Refusal::MaxRunsPerHour { count: 3, limit: 3 });
    }

    #[test]
    fn the_pause_holds_only_runs_that_change_things_and_comes_first() {
        let p = Paused {
            reason: "db failover".into(),
            by: "cli:ops".into(),
            since: "2026-01-01T00:00:00.000Z".into(),
        };
        let l = limits(1, None, None);
        let e = decide(&l, None, Scope::Playbook, &counts(1, 0, 0), Some(&p), true).unwrap_err();
        assert_eq!(e.guard(), "paused");
        assert!(e.to_string().contains("db failover"), "{e}");
        // A read-only playbook is not paused, but still guarded.
        let e = decide(&l, None, Scope::Playbook, &counts(1, 0, 0), Some(&p), false).unwrap_err();
        assert_eq!(e.guard(), "concurrency");
        assert!(decide(&l, None, Scope::Playbook, &counts(0, 0, 0), Some(&p), false).is_ok());
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("queue-backlog"), lock_key("queue-backlog"));
        assert_ne!(lock_key("queue-backlog"), lock_key("dlq-rate"));
    }
}

#[cfg(test)]
mod open_runs;
