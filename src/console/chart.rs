//! The queue page's history chart, drawn on the server as inline SVG (no script, no library):
//! one line per priority of the pending depth over the last hours, from the samples `runbook
//! serve` records ([`super::sampler`]). Accessible: the SVG has a title and a description, and
//! the values are also a table.

use chrono::{TimeZone, Utc};
use serde::Serialize;

use crate::store::queue_samples::Sample;

/// The drawing area, in SVG units.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
/// Room for the axis labels.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 18.0;
/// The most rows of the values table (every k-th sample when there are more).
const TABLE_ROWS: usize = 36;
/// Line colours, one a priority in turn (presentation attributes: the CSP allows them).
const COLOURS: &[&str] = &[
    "#2f6fde", "#d9822b", "#2e9e5b", "#c23b3b", "#8a4fd0", "#6b7280",
];

/// What the template draws.
#[derive(Debug, Serialize, PartialEq)]
pub struct Chart {
    pub title: String,
    /// The values in a sentence (the SVG's description).
    pub summary: String,
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub plot_bottom: f64,
    pub lines: Vec<Line>,
    /// The y axis' top value (the deepest sample, at least 1).
    pub max: i64,
    pub from: String,
    pub to: String,
    pub priorities: Vec<String>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Line {
    pub priority: String,
    pub colour: &'static str,
    /// `x,y x,y ...` for a `<polyline points>`.
    pub points: String,
    pub latest: i64,
    pub peak: i64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Row {
    pub at: String,
    pub depths: Vec<i64>,
    pub total: i64,
    pub oldest: String,
}

/// The chart of `samples` (oldest first) over `[from, to]` (Unix seconds); `None` without any.
pub fn draw(samples: &[Sample], from: i64, to: i64, hours: u32) -> Option<Chart> {
    if samples.is_empty() {
        return None;
    }
    let mut priorities: Vec<String> = samples
        .iter()
        .flat_map(|s| s.depths.keys().cloned())
        .collect();
    priorities.sort_by(|a, b| match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => y.cmp(&x),
        _ => a.cmp(b),
    });
    priorities.dedup();
    let max = samples
        .iter()
        .flat_map(|s| s.depths.values().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let span = (to - from).max(1) as f64;
    let plot_bottom = HEIGHT - BOTTOM;
    let x = |at: i64| LEFT + (at - from).clamp(0, to - from) as f64 / span * (WIDTH - LEFT);
    let y = |n: i64| plot_bottom - n as f64 / max as f64 * (plot_bottom - 4.0);
    let depth = |s: &Sample, p: &str| s.depths.get(p).copied().unwrap_or(0);
    let lines = priorities
        .iter()
        .enumerate()
        .map(|(i, p)| Line {
            priority: p.clone(),
            colour: COLOURS[i % COLOURS.len()],
            points: samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.at), y(depth(s, p))))
                .collect::<Vec<_>>()
                .join(" "),
            latest: samples.last().map_or(0, |s| depth(s, p)),
            peak: samples.iter().map(|s| depth(s, p)).max().unwrap_or(0),
        })
        .collect::<Vec<_>>();
    let stamp = |at: i64| {
        Utc.timestamp_opt(at, 0)
            .single()
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default()
    };
    let age = |s: &Sample| {
        s.oldest_age_secs.map_or("none".to_owned(), |a| {
            humantime::format_duration(std::time::Duration::from_secs(a.max(0) as u64)).to_string()
        })
    };
    let step = samples.len().div_ceil(TABLE_ROWS).max(1);
    let mut picked: Vec<&Sample> = samples.iter().step_by(step).collect();
    if let Some(last) = samples.last() {
        if picked.last().is_none_or(|p| p.at != last.at) {
            picked.push(last);
        }
    }
    let rows = picked
        .iter()
        .map(|s| Row {
            at: stamp(s.at),
            depths: priorities.iter().map(|p| depth(s, p)).collect(),
            total: s.total,
            oldest: age(s),
        })
        .collect();
    let latest = samples.last().expect("not empty");
    let per: Vec<String> = lines
        .iter()
        .map(|l| format!("priority {} now {} (peak {})", l.priority, l.latest, l.peak))
        .collect();
    let summary = format!(
        "{} samples from {} to {}; {}; oldest pending now {}.",
        samples.len(),
        stamp(samples[0].at),
        stamp(latest.at),
        if per.is_empty() {
            "nothing pending".to_owned()
        } else {
            per.join(", ")
        },
        age(latest),
    );
    Some(Chart {
        title: format!("Pending commands per priority, last {hours} hours"),
        summary,
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        plot_bottom,
        lines,
        max,
        from: stamp(from),
        to: stamp(to),
        priorities,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64, depths: &[(&str, i64)], oldest: Option<i64>) -> Sample {
        Sample {
            at,
            depths: depths.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect(),
            total: depths.iter().map(|(_, n)| n).sum(),
            oldest_age_secs: oldest,
        }
    }

    #[test]
    fn lines_span_the_window_and_scale_to_the_deepest() {
        let from = 1_700_000_000;
        let to = from + 3600;
        let samples = [
            sample(from, &[("5", 10)], Some(30)),
            sample(from + 1800, &[("5", 40), ("9", 20)], Some(90)),
            sample(to, &[("5", 0)], None),
        ];
        let c = draw(&samples, from, to, 1).unwrap();
        assert_eq!(c.priorities, ["9", "5"], "highest priority first");
        assert_eq!(c.max, 40);
        let five = &c.lines[1];
        // x from LEFT to WIDTH; y from the bottom (0) to 4 units below the top (the deepest).
        assert_eq!(five.points, "44.0,107.5 322.0,4.0 600.0,142.0");
        assert_eq!((five.latest, five.peak), (0, 40));
        // A priority missing from a sample counts as 0 there.
        assert_eq!(c.lines[0].points.split(' ').next().unwrap(), "44.0,142.0");
        assert_eq!(c.rows.len(), 3);
        assert_eq!(c.rows[1].depths, [20, 40]);
        assert_eq!(c.rows[1].oldest, "1m 30s");
        assert_eq!(c.rows[2].oldest, "none");
        assert!(
            c.summary.contains("priority 5 now 0 (peak 40)"),
            "{}",
            c.summary
        );
        assert!(
            c.summary.contains("oldest pending now none"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn the_table_is_thinned_but_keeps_the_latest() {
        let from = 0;
        let samples: Vec<Sample> = (0..100)
            .map(|i| sample(i * 60, &[("1", i)], None))
            .collect();
        let c = draw(&samples, from, 99 * 60, 2).unwrap();
        assert!(c.rows.len() <= TABLE_ROWS + 1, "{}", c.rows.len());
        assert_eq!(c.rows.last().unwrap().depths, [99]);
        assert_eq!(draw(&[], 0, 60, 1), None);
    }
}
