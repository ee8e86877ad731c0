//! Every shape error of a playbook file, not only the first. serde stops at the first error in a
//! document; here the part that holds it (a step, a parameter, a top-level key) is replaced by a
//! placeholder that keeps its name (or removed, for a top-level key), the document is read again,
//! and so on until it reads. Lines are kept, so every error keeps its own `line:col`, and the
//! text that finally reads is compiled too, for the errors serde never gets to.

use std::collections::BTreeSet;

use serde_yaml::Value as Yaml;

use super::{
    locate::{Locations, Unit},
    raw::RawPlaybook,
};

/// The most errors one file reports; the file is read once more for each.
const MAX_ERRORS: usize = 100;

/// Past this size a file is read again for at most [`MAX_ERRORS_LARGE`] errors, so the work
/// stays bounded (a playbook is a page or two).
const LARGE: usize = 64 * 1024;
const MAX_ERRORS_LARGE: usize = 10;

/// What recovery found.
pub(super) struct Recovered {
    /// Every shape error, in the order found: position and message.
    pub errors: Vec<((usize, usize), String)>,
    /// The text with each broken part replaced, when it finally reads (to compile).
    pub text: String,
    pub raw: Option<RawPlaybook>,
    /// The lines of the placeholders: problems found there are not the file's.
    pub placeholders: BTreeSet<usize>,
}

enum Part {
    Step(String),
    Param(String),
    Top(String),
}

/// Reads `text` again and again past each error; `first` is the error of the first reading.
pub(super) fn recover(
    text: &str,
    first: serde_yaml::Error,
    message: impl Fn(&serde_yaml::Error) -> String,
) -> Recovered {
    let mut out = Recovered {
        errors: Vec::new(),
        text: text.to_owned(),
        raw: None,
        placeholders: BTreeSet::new(),
    };
    // Text nested deeper than a playbook ever is gets only its first error (the readers below
    // recurse with the depth), and so does text whose aliases expand past the reader's limits
    // (each reading would expand them again).
    if super::locate::too_deep(text, super::MAX_DEPTH).is_some() || over_a_limit(&first) {
        let at = first
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        out.errors.push((at, message(&first)));
        return out;
    }
    let mut ids: Option<Vec<(String, String)>> = None;
    // Patches keep every line where it was, so the original's positions hold throughout.
    let loc = Locations::index(text);
    let mut removed: Vec<String> = Vec::new();
    let mut err = first;
    let max = if text.len() > LARGE {
        MAX_ERRORS_LARGE
    } else {
        MAX_ERRORS
    };
    for _ in 0..max {
        let at = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let msg = message(&err);
        if over_a_limit(&err) {
            out.errors.push((at, msg));
            break;
        }
        // A key removed here is missing now: that is not the file's problem.
        if removed
            .iter()
            .any(|k| msg.contains(&format!("missing field `{k}`")))
        {
            break;
        }
        out.errors.push((at, msg));
        if out.placeholders.contains(&at.0) {
            break;
        }
        let Some((unit, part)) = part_at(&loc, at.0) else {
            break;
        };
        if matches!(part, Part::Step(_)) && ids.is_none() {
            ids = Some(step_ids(text));
        }
        let Some(patched) = patch(&out.text, &unit, &part, ids.as_deref().unwrap_or(&[])) else {
            break;
        };
        out.text = patched;
        match part {
            Part::Top(key) => removed.push(key),
            Part::Step(_) | Part::Param(_) => {
                out.placeholders.insert(unit.line);
            }
        }
        match serde_yaml::from_str::<RawPlaybook>(&out.text) {
            Ok(raw) => {
                out.raw = Some(raw);
                break;
            }
            Err(e) => err = e,
        }
    }
    out
}

/// Whether the reader gave up at one of its limits (recursion, alias expansion).
fn over_a_limit(e: &serde_yaml::Error) -> bool {
    e.to_string().contains("limit exceeded")
}

/// The ids of the steps, by path (`steps[2]`), from a reading that does not check the shape.
fn step_ids(text: &str) -> Vec<(String, String)> {
    let Ok(doc) = serde_yaml::from_str::<Yaml>(text) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for section in ["steps", "on_failure"] {
        if let Some(Yaml::Sequence(items)) = doc.get(section) {
            for (i, item) in items.iter().enumerate() {
                if let Some(id) = item.get("id").and_then(Yaml::as_str) {
                    ids.push((format!("{section}[{i}]"), id.to_owned()));
                }
            }
        }
    }
    ids
}

/// The step, parameter or top-level key whose lines hold `line`.
fn part_at(loc: &Locations, line: usize) -> Option<(Unit, Part)> {
    let inside = |u: &Unit| u.line <= line && line < u.end_line;
    for section in ["steps", "on_failure"] {
        if let Some(u) = loc.children(section).into_iter().flatten().find(inside) {
            return Some((u.clone(), Part::Step(u.path)));
        }
    }
    if let Some(u) = loc.children("params").into_iter().flatten().find(inside) {
        let name = u.path.strip_prefix("params.")?.to_owned();
        return Some((u, Part::Param(name)));
    }
    let u = loc.children("")?.into_iter().find(inside)?;
    let key = u.path.clone();
    Some((u, Part::Top(key)))
}

/// `text` with the lines of `unit` replaced: a step by `- {id: ID, wait: 0s}` (its own id, so
/// later steps that read it still compile), a parameter by `NAME: {type: string}`, a top-level
/// key by nothing. `None` when the unit's first line does not have the expected shape.
fn patch(text: &str, unit: &Unit, part: &Part, ids: &[(String, String)]) -> Option<String> {
    let mut lines: Vec<String> = text.split('\n').map(ToOwned::to_owned).collect();
    let first = lines.get(unit.line.checked_sub(1)?)?.clone();
    let replacement = match part {
        Part::Step(path) => {
            // The item's dash is on its first line, before the first key.
            let before: String = first.chars().take(unit.col.saturating_sub(1)).collect();
            let dash = before.rfind('-')?;
            if !before[dash + 1..].trim().is_empty() {
                return None;
            }
            let id = ids.iter().find(|(p, _)| p == path).map_or_else(
                || format!("broken_step_{}", unit.line),
                |(_, id)| id.clone(),
            );
            format!(
                "{}- {{id: {}, wait: 0s}}",
                " ".repeat(before[..dash].chars().count()),
                serde_json::Value::String(id)
            )
        }
        Part::Param(name) => format!(
            "{}{}: {{type: string}}",
            " ".repeat(unit.col.saturating_sub(1)),
            serde_json::Value::String(name.clone())
        ),
        Part::Top(_) => String::new(),
    };
    for n in unit.line..unit.end_line {
        if let Some(l) = lines.get_mut(n - 1) {
            l.clear();
        }
    }
    lines[unit.line - 1] = replacement;
    Some(lines.join("\n"))
}
