//! The streaming runtime from the shell: `queue enqueue|load|stats`, `dlq list|retry|cleanup`,
//! `outbox parked|retry|drop`, and the recorded runs (`runs list|show|approve|cancel`).

use anyhow::Result;
use serde_json::{json, Value as Json};

use super::{
    actor,
    args::{Format, OutboxCommand, QueueCommand, RunsCommand},
    output::{self, errln, outln},
    Setup, EXIT_USAGE,
};
use crate::{
    store::{runs, Db},
    stream::{
        ops,
        queue::{
            self,
            parked::{self, Action, ParkedError},
            NewCommand,
        },
    },
};

pub(super) async fn runs(setup: &Setup, cmd: RunsCommand) -> Result<i32> {
    let db = match cmd {
        RunsCommand::List { .. } | RunsCommand::Show { .. } => setup.existing_store().await?,
        _ => setup.store().await?,
    };
    match cmd {
        RunsCommand::List {
            playbook,
            limit,
            output,
        } => {
            let rows = runs::list_runs(&db, playbook.as_deref(), limit).await?;
            output::runs_list(&rows, output);
        }
        RunsCommand::Show {
            id,
            output,
            step,
            attempt,
        } => return super::playbooks::runs_show(&db, id, output, step, attempt).await,
        RunsCommand::Approve {
            id,
            reject,
            comment,
        } => {
            return decide(&db, id, reject, &actor(), comment.as_deref()).await;
        }
        RunsCommand::Cancel { id } => match runs::cancel(&db, id, &actor()).await {
            Ok(()) => outln!(
                "run {id}: cancel requested; it stops within a second, where it is (a statement \
                 or request in flight finishes first)"
            ),
            Err(runs::CancelError::Db(e)) => return Err(e.into()),
            Err(e) => {
                errln!("error: {e}");
                return Ok(EXIT_USAGE);
            }
        },
    }
    Ok(0)
}

/// `runs approve ID [--reject] [--comment TEXT]`.
async fn decide(db: &Db, id: i64, reject: bool, actor: &str, comment: Option<&str>) -> Result<i32> {
    match runs::decide(db, id, !reject, actor, comment).await {
        Ok(step) => outln!(
            "run {id} {} at step `{step}`",
            if reject { "rejected" } else { "approved" }
        ),
        Err(runs::DecideError::Db(e)) => return Err(e.into()),
        Err(e) => {
            errln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    }
    Ok(0)
}

/// `outbox parked|retry|drop`: the events the dispatcher parked; changes are audited as
/// `cli:<user>`.
pub(super) async fn outbox(setup: &Setup, cmd: OutboxCommand) -> Result<i32> {
    let db = match cmd {
        OutboxCommand::Parked { .. } => setup.existing_store().await?,
        _ => setup.store().await?,
    };
    let (id, action) = match cmd {
        OutboxCommand::Parked { limit, output } => {
            let rows: Json = setup
                .masker
                .mask_json(&json!(parked::list(&db, limit).await?));
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Human => {
                    let rows = rows.as_array().cloned().unwrap_or_default();
                    if rows.is_empty() {
                        println!("no parked outbox events");
                    }
                    for r in rows {
                        println!(
                            "{}  {} {}:{}  attempts {}  blocked {}  parked {}\n      error  {}",
                            r["id"],
                            r["topic"].as_str().unwrap_or(""),
                            r["entity"].as_str().unwrap_or(""),
                            r["entity_id"].as_str().unwrap_or(""),
                            r["attempts"],
                            r["blocked"],
                            r["parked_at"].as_str().unwrap_or(""),
                            r["last_error"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            return Ok(0);
        }
        OutboxCommand::Retry { id } => (id, Action::Retry),
        OutboxCommand::Drop { id } => (id, Action::Drop),
    };
    match parked::act(&db, id, action, &actor()).await {
        Ok(()) => {
            let done = match action {
                Action::Retry => "goes back to the dispatcher",
                Action::Drop => "dropped",
            };
            println!("outbox event {id}: {done}");
            Ok(0)
        }
        Err(ParkedError::Db(e)) => Err(e.into()),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(EXIT_USAGE)
        }
    }
}

/// `queue enqueue|load|stats`.
pub(super) async fn queue(setup: &Setup, cmd: QueueCommand) -> Result<i32> {
    match cmd {
        QueueCommand::Enqueue {
            entity,
            entity_id,
            command_type,
            priority,
            payload,
        } => {
            let payload: Json = match serde_json::from_str(&payload) {
                Ok(p) => p,
                Err(e) => {
                    errln!("error: --payload is not JSON: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            let db = setup.store().await?;
            warn_without_handler(setup, &command_type);
            let ids = queue::enqueue(
                &db,
                &[NewCommand {
                    entity: entity.clone(),
                    entity_id: entity_id.clone(),
                    command_type: command_type.clone(),
                    priority,
                    payload,
                }],
            )
            .await?;
            let id = ids.first().copied().unwrap_or_default();
            outln!(
                "enqueued command {id}: `{command_type}` for {entity} {entity_id}, priority \
                 {priority}, pending (`runbook queue stats` shows the queue)"
            );
            Ok(0)
        }
        QueueCommand::Load {
            command_type,
            rate,
            duration,
            entity,
            entities,
            priority,
        } => {
            let rate = match parse_rate(&rate) {
                Ok(r) => r,
                Err(e) => {
                    errln!("error: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            let db = setup.store().await?;
            warn_without_handler(setup, &command_type);
            load(
                &db,
                &command_type,
                rate,
                duration,
                &entity,
                entities.max(1),
                priority,
            )
            .await
        }
        QueueCommand::Stats { output } => {
            let db = setup.existing_store().await?;
            let stats = ops::queue_stats(&db, &setup.config.streaming).await?;
            output::queue_stats(&stats, output);
            Ok(0)
        }
    }
}

/// A warning when no `streaming.handlers` entry takes `command_type`: a worker sends such a
/// command to the DLQ as `UnknownCommandTypeException`.
fn warn_without_handler(setup: &Setup, command_type: &str) {
    let handlers = &setup.config.streaming.handlers;
    if handlers.contains_key(command_type) || command_type == crate::process::runs::RUN_COMMAND {
        return;
    }
    let known: Vec<&str> = handlers.keys().map(String::as_str).collect();
    errln!(
        "warning: no handler for command type `{command_type}` in the config's \
         streaming.handlers (configured: {}); workers will send it to the DLQ as \
         UnknownCommandTypeException",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    );
}

/// `--rate 200/s`: a finite number of commands per second above zero (`inf`, `NaN`, `0` and
/// negative rates are refused).
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches("/s").trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "--rate `{text}` must be a finite number of commands per second above 0, like 200/s"
        )),
    }
}

/// `queue load`: a synthetic producer that enqueues commands at a steady rate.
pub(super) async fn load(
    db: &Db,
    command_type: &str,
    rate: f64,
    duration: crate::duration::Dur,
    entity: &str,
    entities: u32,
    priority: i32,
) -> Result<i32> {
    let tick = std::time::Duration::from_millis(100);
    let started = std::time::Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut sent: u64 = 0;
    let mut interval = tokio::time::interval(tick);
    let bar = super::progress::load_bar(total);
    while sent < total {
        interval.tick().await;
        let due = ((rate * started.elapsed().as_secs_f64()).ceil() as u64).min(total);
        let n = due.saturating_sub(sent).min(10_000);
        if n == 0 {
            continue;
        }
        let batch: Vec<NewCommand> = (0..n)
            .map(|i| NewCommand {
                entity: entity.to_owned(),
                entity_id: fastrand::u32(..entities).to_string(),
                command_type: command_type.to_owned(),
                priority,
                payload: json!({ "seq": sent + i }),
            })
            .collect();
        queue::enqueue(db, &batch).await?;
        sent += n;
        bar.set_position(sent);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    outln!(
        "enqueued {sent} `{command_type}` commands in {secs:.1} s ({:.0}/s)",
        sent as f64 / secs
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn a_rate_is_a_finite_positive_number_per_second() {
        assert_eq!(parse_rate("200/s"), Ok(200.0));
        assert_eq!(parse_rate("0.5/s"), Ok(0.5));
        for bad in [
            "inf/s",
            "NaN/s",
            "-inf/s",
            "infinity/s",
            "0/s",
            "-3/s",
            "fast",
        ] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains("finite"), "{err}");
        }
    }
}
