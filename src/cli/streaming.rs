//! The streaming runtime from the shell: `queue enqueue|load|stats`, `dlq list|retry|cleanup`,
//! `outbox parked|retry|drop`, and the recorded runs (`runs list|show|approve|cancel`).

use anyhow::Result;
use serde_json::{json, Value as Json};

use super::{
    args::{DlqCommand, Format, OutboxCommand, QueueCommand, RunsCommand},
    output::{self, errln, outln},
    Setup, EXIT_USAGE,
};
use crate::{
    store::{runs, Db},
    stream::{
        ops::{self, Op},
        queue::{
            self,
            parked::{self, Action, ParkedError},
            NewCommand,
        },
    },
};

pub(super) async fn runs(setup: &Setup, cmd: RunsCommand) -> Result<i32> {
    let db = setup.store().await?;
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
            actor,
        } => {
            let actor = actor.unwrap_or_else(cli_actor);
            return decide(&db, id, reject, &actor, comment.as_deref()).await;
        }
        RunsCommand::Cancel { id } => match runs::cancel(&db, id, &cli_actor()).await {
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

/// Who the CLI acts as in audit records: `cli:<user>`.
fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
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

pub(super) async fn dlq(setup: &Setup, cmd: DlqCommand) -> Result<i32> {
    let db = setup.store().await?;
    let (op, format) = match cmd {
        DlqCommand::List {
            entity,
            error_type,
            limit,
            output,
        } => (
            Op::DlqList {
                entity,
                error_type,
                limit: Some(limit),
                offset: None,
            },
            output,
        ),
        DlqCommand::Retry { entity, error_type } => {
            (Op::DlqRetry { entity, error_type }, Format::Human)
        }
        DlqCommand::Cleanup { older_than } => (
            Op::DlqCleanup {
                older_than,
                error_type: None,
            },
            Format::Human,
        ),
    };
    let out = ops::run(&db, &setup.config.streaming, &op, &cli_actor()).await?;
    let out: Json = setup.masker.mask_json(&out);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Human => output::dlq(&op, &out),
    }
    Ok(0)
}

/// `outbox parked|retry|drop`: the events the dispatcher parked; changes are audited as
/// `cli:<user>`.
pub(super) async fn outbox(setup: &Setup, cmd: OutboxCommand) -> Result<i32> {
    let db = setup.store().await?;
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
    match parked::act(&db, id, action, &cli_actor()).await {
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
            let ids = queue::enqueue(
                &db,
                &[NewCommand {
                    entity,
                    entity_id,
                    command_type,
                    priority,
                    payload,
                }],
            )
            .await?;
            outln!("{}", ids[0]);
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
            let db = setup.store().await?;
            let stats = ops::queue_stats(&db, &setup.config.streaming).await?;
            output::queue_stats(&stats, output);
            Ok(0)
        }
    }
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
