//! `runbook settings [reset]`: the runtime's live settings next to the config's values, who
//! changed each and when (from the store and its audit records), and the way back to the config.

use anyhow::Result;
use serde_json::{json, Value as Json};

use super::{
    actor,
    args::{Format, SettingsCommand},
    output::outln,
    Setup,
};
use crate::stream::{overrides, Settings};

/// How many recent changes are shown.
const HISTORY: i64 = 10;

pub(super) async fn settings(
    setup: &Setup,
    command: Option<SettingsCommand>,
    format: Format,
) -> Result<i32> {
    let base = &setup.config.streaming;
    match command {
        None => {
            let db = setup.existing_store().await?;
            let config = Settings::from_config(base).to_json();
            let live = Settings::load(&db, base).await?.to_json();
            let stored = overrides::stored(&db).await?;
            let history = overrides::history(&db, HISTORY).await?;
            let mut rows = Vec::new();
            for (key, config_value) in config.as_object().into_iter().flatten() {
                let changed = stored.iter().find(|r| r["key"] == key.as_str());
                rows.push(json!({
                    "key": key,
                    "live": live[key],
                    "config": config_value,
                    "changed_at": changed.map(|r| r["updated_at"].clone()),
                    "changed_by": changed.map(|r| r["updated_by"].clone()),
                }));
            }
            let out = json!({ "settings": rows, "history": history });
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Human => print_human(&rows, &history),
            }
            Ok(0)
        }
        Some(SettingsCommand::Reset) => {
            let db = setup.existing_store().await?;
            let before = Settings::load(&db, base).await?;
            let n = overrides::reset(&db, &actor(), before.to_json()).await?;
            let after = Settings::load(&db, base).await?;
            match format {
                Format::Json => println!(
                    "{}",
                    json!({ "reset": n, "before": before, "after": after })
                ),
                Format::Human if n == 0 => {
                    outln!("no runtime changes: the settings are the config's already")
                }
                Format::Human => {
                    outln!(
                        "{n} runtime setting{} reset to the config's values (audited as {}); \
                         every process picks them up within a second",
                        if n == 1 { "" } else { "s" },
                        actor()
                    );
                    let (b, a) = (before.to_json(), after.to_json());
                    for (k, v) in a.as_object().into_iter().flatten() {
                        if b[k] != *v {
                            outln!("  {k}: {} -> {}", show(&b[k]), show(v));
                        }
                    }
                }
            }
            Ok(0)
        }
    }
}

fn show(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print_human(rows: &[Json], history: &[Json]) {
    outln!("{:<18} {:>10} {:>10}  changed", "setting", "live", "config");
    for r in rows {
        let changed = match (r["changed_at"].as_str(), r["changed_by"].as_str()) {
            (Some(at), Some(by)) => format!("{at} by {by}"),
            _ => "- (the config's value)".to_owned(),
        };
        outln!(
            "{:<18} {:>10} {:>10}  {changed}",
            show(&r["key"]),
            show(&r["live"]),
            show(&r["config"])
        );
    }
    if history.is_empty() {
        outln!("no recorded changes");
    } else {
        outln!("recent changes, newest first:");
        for h in history {
            let filter = match &h["filter"] {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            outln!(
                "  {}  {}  {}  {filter}",
                show(&h["at"]),
                show(&h["actor"]),
                show(&h["op"])
            );
        }
    }
    if rows.iter().any(|r| r["live"] != r["config"]) {
        outln!("`runbook settings reset` returns to the config's values");
    }
}
