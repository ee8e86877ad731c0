//! Progress on a terminal: a spinner with the elapsed time while a step polls (`until`), waits
//! (`wait`) or waits for an approval, with the value the polls see
//! (`verify: n 5,051 → 235, poll 7 of 20, 35 s`), and a bar for `queue load`. Drawn on stdout
//! only when stdout is a terminal; a pipe, a file or `-o json` get nothing of it.

use std::{
    io::IsTerminal,
    sync::Mutex,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the spinner turns and its clock moves.
const TICK: Duration = Duration::from_millis(120);

/// Whether progress is drawn at all: stdout is a terminal.
pub fn on_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// `35 s`, `4 min 05 s`.
fn seconds(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let s = state.elapsed().as_secs();
    let _ = if s < 60 {
        write!(w, "{s} s")
    } else {
        write!(w, "{} min {:02} s", s / 60, s % 60)
    };
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}{spinner} {msg}, {secs}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("secs", seconds)
}

/// The one spinner of a run being watched on a terminal.
#[derive(Default)]
pub struct Spinner {
    active: Mutex<Option<Active>>,
}

struct Active {
    step: String,
    bar: ProgressBar,
    /// The value the first poll saw, shown before the latest one.
    first: Option<String>,
}

impl Spinner {
    /// Takes the spinner off the screen, before a line is printed.
    pub fn clear(&self) {
        if let Some(a) = self.lock().take() {
            a.bar.finish_and_clear();
        }
    }

    /// A spinner for `step`, which started `since` ago: `{indent}step: text, 12 s`.
    pub fn wait(&self, indent: &str, step: &str, text: &str, since: Duration) {
        self.clear();
        let bar = new_bar(indent, since);
        bar.set_message(format!("{step}: {text}"));
        *self.lock() = Some(Active {
            step: step.to_owned(),
            bar,
            first: None,
        });
    }

    /// The spinner of a polling step after its `n`th check of at most `of`, which saw `value`
    /// (`n 235`: a label and a value, or any short text).
    pub fn poll(
        &self,
        indent: &str,
        step: &str,
        value: String,
        (n, of): (u32, u32),
        since: Duration,
    ) {
        let mut active = self.lock();
        if active.as_ref().is_some_and(|a| a.step != step) {
            if let Some(a) = active.take() {
                a.bar.finish_and_clear();
            }
        }
        let a = active.get_or_insert_with(|| Active {
            step: step.to_owned(),
            bar: new_bar(indent, since),
            first: None,
        });
        let first = a.first.get_or_insert_with(|| value.clone()).clone();
        let seen = if first == value || value.is_empty() {
            value
        } else {
            // `n 5,051 → 235`: the label once, when both polls saw one value under it.
            let now = match (first.rsplit_once(' '), value.rsplit_once(' ')) {
                (Some((a, _)), Some((b, v))) if a == b && !a.contains(',') => v.to_owned(),
                _ => value,
            };
            format!("{first} → {now}")
        };
        let seen = if seen.is_empty() {
            String::new()
        } else {
            format!("{seen}, ")
        };
        a.bar.set_message(format!("{step}: {seen}poll {n} of {of}"));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.clear();
    }
}

fn new_bar(indent: &str, since: Duration) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout())
        .with_style(spinner_style())
        .with_prefix(indent.to_owned())
        .with_elapsed(since);
    bar.enable_steady_tick(TICK);
    bar
}

/// `queue load`'s bar: commands enqueued of `total`, with the rate; hidden off a terminal.
pub fn load_bar(total: u64) -> ProgressBar {
    if !on_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{bar:30} {human_pos}/{human_len} commands, {per_sec}, {secs}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("secs", seconds);
    let bar =
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout()).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// When `step` started, for the spinner's clock.
#[derive(Default)]
pub struct Clock(Mutex<std::collections::HashMap<String, Instant>>);

impl Clock {
    pub fn start(&self, step: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(step.to_owned(), Instant::now());
        }
    }

    pub fn since(&self, step: &str) -> Duration {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(step).map(Instant::elapsed))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinner_off_a_terminal_draws_nothing_and_clears_cleanly() {
        let s = Spinner::default();
        s.poll("  ", "verify", "n 3".into(), (1, 20), Duration::ZERO);
        s.poll("  ", "verify", "n 1".into(), (2, 20), Duration::ZERO);
        let msg = s.lock().as_ref().map(|a| a.bar.message()).unwrap();
        assert_eq!(msg, "verify: n 3 → 1, poll 2 of 20");
        s.clear();
        assert!(s.lock().is_none());
    }
}
