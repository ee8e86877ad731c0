//! The queue and the DLQ: depth per priority and the oldest pending age, workers and live
//! settings, locks held, the outbox; the DLQ grouped by error type and entity with payloads
//! masked, and bulk retry or clean-up that first shows how many entries it will touch, then asks
//! (the same preview-then-act of `runbook dlq`: the change acts on exactly the entries counted).

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{
    page as html_page,
    pages::{base, with},
    session::{Form, Me},
    ConsoleError,
};
use crate::{
    duration::Dur,
    server::{Role, Shared},
    store::console as records,
    stream::{
        dlq::{self, Action, Filter},
        ops::{self, Op},
    },
};

/// How far back the queue page's history chart reaches.
const HISTORY_HOURS: u32 = 6;

/// `GET /ui/queue` (viewer; a PlatformAdmin also gets the settings form).
pub async fn page_queue(
    s: &Shared,
    me: &Me,
    changed: Option<&str>,
) -> Result<Response, ConsoleError> {
    let store = &s.services.store;
    let stats = ops::queue_stats(store, &s.services.config.streaming)
        .await
        .map_err(ConsoleError::internal)?;
    let locks = records::locks(store, 50)
        .await
        .map_err(ConsoleError::internal)?;
    let oldest_age = stats["oldest_pending"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0);
            humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
        });
    // The depth chart: one bar per priority, scaled to the deepest (drawn here, as SVG).
    let depth = stats["depth"].as_array().cloned().unwrap_or_default();
    let max = depth
        .iter()
        .filter_map(|r| r["count"].as_i64())
        .max()
        .unwrap_or(0)
        .max(1);
    let bars: Vec<Json> = depth
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = r["count"].as_i64().unwrap_or(0);
            json!({
                "y": i * 22, "width": (n * 300 / max).max(1), "label": format!("p{} {}", r["priority"], r["status"].as_str().unwrap_or_default()),
                "count": n,
            })
        })
        .collect();
    // The depth over the last hours, from the sampler's records.
    let to = chrono::Utc::now().timestamp();
    let from = to - i64::from(HISTORY_HOURS) * 3600;
    let samples = crate::store::queue_samples::since(store, from)
        .await
        .map_err(ConsoleError::internal)?;
    let history = super::chart::draw(&samples, from, to, HISTORY_HOURS);
    let every = s.services.config.console.queue_sample_every.to_string();
    html_page(
        "queue.html",
        with(
            base(me, "queue", "Queue"),
            minijinja::context! {
                stats, locks, oldest_age, bars, chart_height => bars.len() * 22,
                history, every,
                changed => changed.filter(|c| *c == "yes"),
            },
        ),
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct QueueQuery {
    changed: Option<String>,
}

pub async fn page(
    State(s): State<Shared>,
    me: Me,
    Query(q): Query<QueueQuery>,
) -> Result<Response, ConsoleError> {
    page_queue(&s, &me, q.changed.as_deref()).await
}

/// A number of the settings form, `None` when left blank.
fn number<T: std::str::FromStr>(form: &Form, key: &str) -> Result<Option<T>, ConsoleError> {
    form.text(key)
        .map(|v| {
            v.parse::<T>().map_err(|_| {
                ConsoleError::BadRequest(format!("{key}: `{v}` is not a whole number"))
            })
        })
        .transpose()
}

/// `POST /ui/settings` (PlatformAdmin): the live worker settings, through the runtime ops a
/// playbook uses (`scale_workers`, `set_retry_policy`, `set_lock_ttl`), each audited as
/// `console:<token name>`. Blank fields stay as they are.
pub async fn settings(
    State(s): State<Shared>,
    me: Me,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    let form = Form::parse(&body)?;
    me.check_csrf(&form)?;
    me.need(Role::PlatformAdmin)?;
    let concurrency = number::<u32>(&form, "workerConcurrency")?;
    let batch_size = number::<u32>(&form, "workerBatchSize")?;
    let max_retries = number::<u32>(&form, "maxRetries")?;
    let max_backoff_ms = number::<u64>(&form, "maxBackoffMs")?;
    let ttl = form
        .text("lockTtl")
        .map(|v| {
            v.parse::<Dur>()
                .map_err(|e| ConsoleError::BadRequest(format!("lockTtl: {e}")))
        })
        .transpose()?;
    let mut ops = Vec::new();
    if concurrency.is_some() || batch_size.is_some() {
        ops.push(Op::ScaleWorkers {
            concurrency,
            batch_size,
        });
    }
    if max_retries.is_some() || max_backoff_ms.is_some() {
        ops.push(Op::SetRetryPolicy {
            max_retries,
            max_backoff_ms,
        });
    }
    if let Some(ttl) = ttl {
        ops.push(Op::SetLockTtl { ttl });
    }
    if ops.is_empty() {
        return Err(ConsoleError::BadRequest("no setting was given".into()));
    }
    for op in &ops {
        ops::run(
            &s.services.store,
            &s.services.config.streaming,
            op,
            &me.actor(),
        )
        .await
        .map_err(op_error)?;
    }
    tracing::info!(actor = %me.actor(), changes = ops.len(), "Runtime settings changed from the console.");
    Ok(Redirect::to("/ui/queue?changed=yes").into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct DlqQuery {
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    entity: Option<String>,
    /// After a bulk action: how many entries it changed, and how (`retried`, `deleted`).
    done: Option<u64>,
    did: Option<String>,
}

/// `GET /ui/dlq` (PlatformAdmin): the groups, and the entries of the group chosen.
pub async fn dlq(
    State(s): State<Shared>,
    me: Me,
    q: Result<Query<DlqQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ConsoleError> {
    me.need(Role::PlatformAdmin)?;
    let Query(q) = q.map_err(|e| ConsoleError::BadRequest(e.body_text()))?;
    let store = &s.services.store;
    let groups = records::dlq_groups(store)
        .await
        .map_err(ConsoleError::internal)?;
    let chosen = q.error_type.is_some() || q.entity.is_some();
    let entries = if chosen {
        let op = Op::DlqList {
            entity: q.entity.clone(),
            error_type: q.error_type.clone(),
            limit: Some(20),
            offset: Some(0),
        };
        let out = ops::run(store, &s.services.config.streaming, &op, &me.actor())
            .await
            .map_err(op_error)?;
        s.services.masker.mask_json(&out)
    } else {
        Json::Null
    };
    html_page(
        "dlq.html",
        with(
            base(&me, "dlq", "DLQ"),
            minijinja::context! {
                groups, entries, error_type => q.error_type, entity => q.entity,
                done => q.done,
                did => q.did.filter(|d| d == "retried" || d == "deleted"),
            },
        ),
    )
}

fn op_error(e: ops::OpError) -> ConsoleError {
    match e {
        ops::OpError::Invalid(m) => ConsoleError::BadRequest(m),
        ops::OpError::Db(e) => ConsoleError::internal(e),
    }
}

/// The filter of a bulk action's form.
fn filter(form: &Form, older: bool) -> Result<Filter, ConsoleError> {
    let older_than = if older {
        Some(
            form.text("older_than")
                .unwrap_or_else(|| "7d".into())
                .parse::<Dur>()
                .map_err(|e| ConsoleError::BadRequest(format!("older_than: {e}")))?,
        )
    } else {
        None
    };
    let no_error_type = form.get("errorTypeNull") == Some("yes");
    Ok(Filter {
        entity: form.text("entity"),
        // A group without an error type is matched as NULL, not by a name it does not have.
        error_type: form.text("errorType").filter(|_| !no_error_type),
        older_than,
        no_error_type,
    })
}

/// `POST /ui/dlq/retry` (PlatformAdmin).
pub async fn dlq_retry(
    State(s): State<Shared>,
    me: Me,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    bulk(&s, &me, &body, Action::Retry).await
}

/// `POST /ui/dlq/cleanup` (PlatformAdmin).
pub async fn dlq_cleanup(
    State(s): State<Shared>,
    me: Me,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    bulk(&s, &me, &body, Action::Delete).await
}

/// Without `confirm`, or when the count changed since the preview: the page that says how many
/// entries it will touch and asks. With `confirm=N` and still N entries: the change, on exactly
/// the entries counted, audited as `console:<token name>`.
async fn bulk(s: &Shared, me: &Me, body: &[u8], action: Action) -> Result<Response, ConsoleError> {
    let form = Form::parse(body)?;
    me.check_csrf(&form)?;
    me.need(Role::PlatformAdmin)?;
    let f = filter(&form, action == Action::Delete)?;
    let store = &s.services.store;
    let entries = dlq::select(store, &f)
        .await
        .map_err(ConsoleError::internal)?;
    let confirmed = form
        .get("confirm")
        .and_then(|c| c.parse::<usize>().ok())
        .is_some_and(|n| n == entries.len() && n > 0);
    if !confirmed {
        let changed_since = form.get("confirm").is_some();
        let verb = match action {
            Action::Retry => "retry",
            Action::Delete => "delete",
        };
        return html_page(
            "confirm.html",
            with(
                base(me, "dlq", "Confirm"),
                minijinja::context! {
                    verb, count => entries.len(), changed_since,
                    by_error_type => dlq::preview_json(&entries)["by_error_type"].clone(),
                    error_type => f.error_type, entity => f.entity,
                    no_error_type => f.no_error_type,
                    older_than => form.text("older_than"),
                    action => if action == Action::Retry { "/ui/dlq/retry" } else { "/ui/dlq/cleanup" },
                },
            ),
        );
    }
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    let changed = dlq::act(store, action, &ids, &f, &me.actor())
        .await
        .map_err(ConsoleError::internal)?;
    tracing::info!(?action, changed, actor = %me.actor(), "DLQ bulk action from the console.");
    let did = match action {
        Action::Retry => "retried",
        Action::Delete => "deleted",
    };
    Ok(Redirect::to(&format!("/ui/dlq?done={changed}&did={did}")).into_response())
}
