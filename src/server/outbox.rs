//! Parked outbox events (`/api/admin/streaming/outbox/parked`): list, retry, drop; role operator,
//! every change audited as `api:<token name>`.

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{auth::Role, AppError, Shared};
use crate::stream::queue::parked::{self, Action, ParkedError};

#[derive(Deserialize)]
pub struct ParkedQuery {
    limit: Option<i64>,
}

/// `GET /api/admin/streaming/outbox/parked?limit=`: the parked events, oldest first, each with
/// `blocked` (its entity's newer events waiting behind it).
pub async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<ParkedQuery>,
) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::Operator)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = parked::list(&s.services.store, limit)
        .await
        .map_err(AppError::internal)?;
    Ok(Json(
        s.services.masker.mask_json(&json!({ "parked": rows })),
    ))
}

/// `POST /api/admin/streaming/outbox/parked/{id}/retry`: back to the dispatcher; audited.
pub async fn retry(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, AppError> {
    act(s, headers, id, Action::Retry).await
}

/// `DELETE /api/admin/streaming/outbox/parked/{id}`: deleted unsent; audited.
pub async fn drop(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, AppError> {
    act(s, headers, id, Action::Drop).await
}

async fn act(
    s: Shared,
    headers: HeaderMap,
    id: i64,
    action: Action,
) -> Result<Json<Value>, AppError> {
    let who = s.tokens.authorize(&headers, Role::Operator)?;
    let actor = format!("api:{}", who.name);
    match parked::act(&s.services.store, id, action, &actor).await {
        Ok(()) => Ok(Json(
            json!({ "event_id": id, "op": action.op(), "by": actor }),
        )),
        Err(e @ ParkedError::NotParked(_)) => Err(AppError::NotFound(e.to_string())),
        Err(ParkedError::Db(e)) => Err(AppError::internal(e)),
    }
}
