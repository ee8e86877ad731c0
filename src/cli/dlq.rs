//! `runbook dlq list|retry|cleanup`. A change is shown before it is made: how many entries, by
//! error type; on a terminal it asks for a yes, elsewhere it needs `--yes`. The confirmed change
//! touches exactly the entries the preview counted.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use serde_json::{json, Value as Json};

use super::{
    actor,
    args::{DlqCommand, Format},
    output::{self, errln, outln},
    Setup, EXIT_USAGE,
};
use crate::stream::{
    dlq::{self, Action, Entry, Filter},
    ops::{self, Op},
};

pub(super) async fn dlq(setup: &Setup, cmd: DlqCommand) -> Result<i32> {
    match cmd {
        DlqCommand::List {
            entity,
            error_type,
            limit,
            offset,
            output,
        } => list(setup, entity, error_type, limit, offset, output).await,
        DlqCommand::Retry {
            entity,
            error_type,
            yes,
            output,
        } => {
            let filter = Filter {
                entity,
                error_type,
                older_than: None,
                no_error_type: false,
            };
            change(setup, Action::Retry, filter, yes, output).await
        }
        DlqCommand::Cleanup {
            older_than,
            entity,
            error_type,
            yes,
            output,
        } => {
            let filter = Filter {
                entity,
                error_type,
                older_than: Some(older_than),
                no_error_type: false,
            };
            change(setup, Action::Delete, filter, yes, output).await
        }
    }
}

async fn list(
    setup: &Setup,
    entity: Option<String>,
    error_type: Option<String>,
    limit: i64,
    offset: i64,
    format: Format,
) -> Result<i32> {
    if !(1..=1000).contains(&limit) || offset < 0 {
        errln!("error: --limit must be 1 to 1000 and --offset at least 0");
        return Ok(EXIT_USAGE);
    }
    let db = setup.existing_store().await?;
    let op = Op::DlqList {
        entity,
        error_type: error_type.clone(),
        limit: Some(limit),
        offset: Some(offset),
    };
    let out = ops::run(&db, &setup.config.streaming, &op, &actor()).await?;
    let out: Json = setup.masker.mask_json(&out);
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    output::dlq(&op, &out);
    let total = out["totalElements"].as_i64().unwrap_or(0);
    let shown = out["content"].as_array().map_or(0, Vec::len) as i64;
    if shown > 0 {
        outln!(
            "showing {}-{} of {total} (oldest first)",
            offset + 1,
            offset + shown
        );
    }
    if offset + shown < total {
        outln!(
            "more: runbook dlq list --offset {}{}",
            offset + shown,
            if limit == 20 {
                String::new()
            } else {
                format!(" --limit {limit}")
            }
        );
    }
    if total == 0 {
        if let Some(hint) = case_hint(&db, error_type.as_deref()).await? {
            outln!("{hint}");
        }
    }
    Ok(0)
}

/// When `error_type` matches no entry but a known type differs from it only in case: a line
/// that says so.
async fn case_hint(db: &crate::store::Db, error_type: Option<&str>) -> Result<Option<String>> {
    let Some(wanted) = error_type else {
        return Ok(None);
    };
    let known = dlq::error_types(db).await?;
    Ok(known
        .iter()
        .find(|k| k.as_str() != wanted && k.eq_ignore_ascii_case(wanted))
        .map(|k| {
            format!(
                "no DLQ entry has error type `{wanted}`, but {} have `{k}`: error types match \
                 exactly, case included (--error-type {k})",
                "some"
            )
        }))
}

/// `dlq retry` or `dlq cleanup`: the preview, the confirmation, then the change on the ids the
/// preview counted.
async fn change(
    setup: &Setup,
    action: Action,
    filter: Filter,
    yes: bool,
    format: Format,
) -> Result<i32> {
    let db = setup.existing_store().await?;
    let entries = dlq::select(&db, &filter).await?;
    let verb = match action {
        Action::Retry => "retry",
        Action::Delete => "delete",
    };
    if entries.is_empty() {
        let hint = case_hint(&db, filter.error_type.as_deref()).await?;
        match format {
            Format::Json => println!(
                "{}",
                json!({ "preview": dlq::preview_json(&entries), "changed": 0, "hint": hint })
            ),
            Format::Human => outln!(
                "no DLQ entries match{}: nothing to {verb}",
                describe(&filter)
            ),
        }
        if let Some(hint) = hint {
            errln!("{hint}");
            return Ok(EXIT_USAGE);
        }
        return Ok(0);
    }
    if format == Format::Human {
        preview(&entries, verb, &filter);
    }
    if !yes {
        let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !terminal {
            if format == Format::Json {
                println!(
                    "{}",
                    json!({ "preview": dlq::preview_json(&entries), "changed": 0 })
                );
            }
            errln!(
                "error: not on a terminal, so nothing was changed: add --yes to {verb} these {} \
                 entries without a question",
                entries.len()
            );
            return Ok(EXIT_USAGE);
        }
        if !confirm(&format!("{verb} these {} entries? [y/N] ", entries.len())) {
            outln!("nothing changed");
            return Ok(0);
        }
    }
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    let changed = dlq::act(&db, action, &ids, &filter, &actor()).await?;
    match format {
        Format::Json => println!(
            "{}",
            json!({ "preview": dlq::preview_json(&entries), "changed": changed })
        ),
        Format::Human => {
            let done = match action {
                Action::Retry => "sent back to the queue",
                Action::Delete => "deleted",
            };
            outln!("{changed} DLQ entries {done}");
            if changed < ids.len() as u64 {
                outln!(
                    "({} had left the DLQ in the meantime and were not touched)",
                    ids.len() as u64 - changed
                );
            }
        }
    }
    Ok(0)
}

fn describe(filter: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &filter.entity {
        parts.push(format!("entity `{e}`"));
    }
    if let Some(t) = &filter.error_type {
        parts.push(format!("error type `{t}`"));
    }
    if let Some(d) = &filter.older_than {
        parts.push(format!("older than {d}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn preview(entries: &[Entry], verb: &str, filter: &Filter) {
    outln!(
        "would {verb} {} DLQ entr{}{}:",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        describe(filter)
    );
    for (error_type, n) in dlq::by_error_type(entries) {
        let name = if error_type.is_empty() {
            "(no error type)"
        } else {
            error_type.as_str()
        };
        outln!("  {n:>8}  {name}");
    }
}

/// Asks on stderr and reads a line from stdin: only `y` or `yes` is a yes.
fn confirm(question: &str) -> bool {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
