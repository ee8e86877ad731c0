//! Parked outbox events: rows the broker refused `streaming.outbox_max_attempts` times in a row
//! (a message over its size limit, a topic it will not create). The dispatcher stops sending a
//! parked row and the newer events of its entity (they wait behind it, so the entity's order
//! holds); every other entity's events flow. An operator lists them, retries one (it goes back to
//! the dispatcher with a fresh count of attempts) or drops one (deleted; the entity's events
//! behind it flow again). Both mutations leave an audit record in their transaction.

use serde_json::{json, Value as Json};

use crate::{
    store::{Audit, Db, DbError},
    template::Dialect,
};

/// What an operator may do with a parked event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Back to the dispatcher, with its attempts counted from 0 again.
    Retry,
    /// Deleted without being sent.
    Drop,
}

impl Action {
    /// The audit record's `op`.
    pub fn op(self) -> &'static str {
        match self {
            Action::Retry => "outbox_retry",
            Action::Drop => "outbox_drop",
        }
    }
}

/// Why an operator's action on a parked event did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    #[error("no parked outbox event {0} (see `runbook outbox parked`)")]
    NotParked(i64),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The parked events, oldest first, each with `blocked`: how many newer unsent events of its
/// entity wait behind it. The payload is left out (it may be what the broker refused, and
/// large); `payload_bytes` gives its size.
pub async fn list(db: &Db, limit: i64) -> Result<Vec<Json>, DbError> {
    let payload = match db.dialect() {
        Dialect::Postgres => "LENGTH(p.payload::text)",
        Dialect::Sqlite => "LENGTH(p.payload)",
    };
    Ok(db
        .sql(
            &format!(
                "SELECT p.id, p.command_id, p.entity, p.entity_id, p.event_type, p.topic, p.attempts, \
                        p.last_error, p.created_at, p.parked_at, {payload} AS payload_bytes, \
                        (SELECT COUNT(*) FROM outbox_final b WHERE b.sent_at IS NULL AND b.entity = p.entity \
                           AND b.entity_id = p.entity_id AND b.id > p.id) AS blocked \
                 FROM outbox_final p WHERE p.parked_at IS NOT NULL AND p.sent_at IS NULL \
                 ORDER BY p.id LIMIT $1"
            ),
            vec![json!(limit)],
        )
        .await?
        .rows)
}

/// Retries or drops parked event `id`, with its audit record (actor, op, the event's id).
///
/// # Errors
///
/// `NotParked` when no unsent parked event has that id (it was sent, dropped, or never parked).
pub async fn act(db: &Db, id: i64, action: Action, actor: &str) -> Result<(), ParkedError> {
    // Nothing to change, nothing to audit.
    let parked = db
        .sql(
            "SELECT COUNT(*) AS n FROM outbox_final WHERE id = $1 AND parked_at IS NOT NULL AND sent_at IS NULL",
            vec![json!(id)],
        )
        .await?
        .rows;
    if parked.first().and_then(|r| r["n"].as_i64()).unwrap_or(0) == 0 {
        return Err(ParkedError::NotParked(id));
    }
    let sql = match action {
        Action::Retry => {
            "UPDATE outbox_final SET parked_at = NULL, attempts = 0 \
             WHERE id = $1 AND parked_at IS NOT NULL AND sent_at IS NULL"
        }
        Action::Drop => {
            "DELETE FROM outbox_final WHERE id = $1 AND parked_at IS NOT NULL AND sent_at IS NULL"
        }
    };
    let audit = Audit {
        actor,
        op: action.op(),
        filter: json!({ "event_id": id }),
    };
    match db.mutate_audited(sql, vec![json!(id)], audit).await? {
        0 => Err(ParkedError::NotParked(id)),
        _ => Ok(()),
    }
}
