//! Rows of JSON objects as a small text table that fits a width: columns shrink, widest first,
//! long values are cut with `…`, and columns that still do not fit are left off and counted.

use serde_json::Value as Json;

/// The narrowest a column is cut to before columns are left off (a narrower one keeps its width).
const MIN_COLUMN: usize = 8;
/// Spaces between columns.
const GAP: usize = 2;
/// The widest a column gets, however long its values.
const MAX_COLUMN: usize = 60;

/// A value as one cell: text as it is, numbers and booleans as written, `null` empty, lists and
/// objects as compact JSON; control characters (newlines too) escaped so a row stays one line.
pub fn cell(v: &Json) -> String {
    let text = match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    one_line(&text)
}

/// `text` on one line: every control character escaped (`\n`, `\u{1b}`).
pub fn one_line(text: &str) -> String {
    if !text.contains(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `text` cut to `width` characters, the last of them `…` when anything was cut.
pub fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// `text` wrapped at spaces into lines of at most `width` characters (a longer word is cut); a
/// line's leading spaces indent the lines it wraps into as well.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(MIN_COLUMN);
    let mut lines = Vec::new();
    for para in text.lines() {
        let lead = para.len() - para.trim_start_matches(' ').len();
        let lead = " ".repeat(lead.min(width / 2));
        let width = width - lead.len();
        let mut line = String::new();
        for word in para.split_whitespace() {
            let word = one_line(word);
            let len = line.chars().count();
            if len > 0 && len + 1 + word.chars().count() > width {
                lines.push(format!("{lead}{}", std::mem::take(&mut line)));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
            if line.chars().count() > width {
                lines.push(format!("{lead}{}", cut(&line, width)));
                line.clear();
            }
        }
        lines.push(format!("{lead}{line}"));
    }
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// The columns of `rows`: the keys of the first row in its order, then keys only later rows have.
fn columns(rows: &[Json]) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for row in rows {
        if let Some(obj) = row.as_object() {
            for k in obj.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    cols
}

/// `rows` (JSON objects; anything else is one `value` column) as lines no wider than `width`:
/// a header, then one line a row. Numeric columns are right-aligned.
pub fn table(rows: &[Json], width: usize) -> Vec<String> {
    if rows.is_empty() {
        return Vec::new();
    }
    let objects: Vec<Json> = rows
        .iter()
        .map(|r| match r {
            Json::Object(_) => r.clone(),
            other => serde_json::json!({ "value": other }),
        })
        .collect();
    let cols = columns(&objects);
    if cols.is_empty() {
        return Vec::new();
    }
    let cells: Vec<Vec<String>> = objects
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[c.as_str()])).collect())
        .collect();
    let numeric: Vec<bool> = (0..cols.len())
        .map(|i| {
            objects.iter().all(|r| {
                let v = &r[cols[i].as_str()];
                v.is_number() || v.is_null()
            })
        })
        .collect();
    let mut widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let widest = cells.iter().map(|r| r[i].chars().count()).max();
            c.chars().count().max(widest.unwrap_or(0)).min(MAX_COLUMN)
        })
        .collect();
    let shown = fit(&mut widths, width);
    let mut lines = Vec::with_capacity(cells.len() + 2);
    let header: Vec<String> = cols.iter().map(|c| one_line(c)).collect();
    lines.push(line(&header, &widths[..shown], &numeric));
    for row in &cells {
        lines.push(line(row, &widths[..shown], &numeric));
    }
    if shown < cols.len() {
        let left: Vec<&str> = cols[shown..].iter().map(String::as_str).collect();
        lines.push(cut(
            &format!(
                "({} more column{}: {}; `-o json` shows them)",
                left.len(),
                if left.len() == 1 { "" } else { "s" },
                left.join(", ")
            ),
            width.max(MIN_COLUMN),
        ));
    }
    lines
}

/// Shrinks the widest columns until the table fits `width`; returns how many columns fit
/// (columns already at the narrowest that still do not fit are left off from the right).
fn fit(widths: &mut [usize], width: usize) -> usize {
    let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
    while total(widths) > width {
        let Some((i, &w)) = widths.iter().enumerate().max_by_key(|(_, w)| **w) else {
            break;
        };
        if w <= MIN_COLUMN {
            break;
        }
        widths[i] = w - 1;
    }
    // Columns left off keep their width.
    let mut shown = widths.len();
    while shown > 1 && total(&widths[..shown]) > width {
        shown -= 1;
    }
    shown
}

fn line(cells: &[String], widths: &[usize], numeric: &[bool]) -> String {
    let parts: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let text = cut(&cells[i], w);
            let pad = w.saturating_sub(text.chars().count());
            if numeric[i] {
                format!("{}{text}", " ".repeat(pad))
            } else {
                format!("{text}{}", " ".repeat(pad))
            }
        })
        .collect();
    parts.join(&" ".repeat(GAP)).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_table_aligns_numbers_right_and_text_left() {
        let rows = vec![
            json!({"error_type": "UnknownCommandTypeException", "n": 2001}),
            json!({"error_type": "TimeoutException", "n": 7}),
        ];
        assert_eq!(
            table(&rows, 100),
            vec![
                "error_type                      n",
                "UnknownCommandTypeException  2001",
                "TimeoutException                7",
            ]
        );
    }

    #[test]
    fn long_values_are_cut_to_the_width_with_a_marker() {
        let rows = vec![json!({"id": 1, "message": "x".repeat(500)})];
        let lines = table(&rows, 40);
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
        assert!(lines[1].ends_with('…'), "{lines:?}");
    }

    #[test]
    fn columns_that_cannot_fit_are_left_off_and_named() {
        let row: serde_json::Map<String, Json> = (0..30)
            .map(|i| (format!("column{i:02}"), json!("value")))
            .collect();
        let lines = table(&[Json::Object(row)], 50);
        assert!(lines.iter().all(|l| l.chars().count() <= 50), "{lines:?}");
        assert!(lines.last().unwrap().contains("more columns"), "{lines:?}");
    }

    #[test]
    fn control_characters_and_newlines_stay_escaped_inside_a_cell() {
        let rows = vec![json!({"v": "a\nb\u{1b}]0;x\u{7}"})];
        let lines = table(&rows, 100);
        assert_eq!(lines[1], r"a\nb\u{1b}]0;x\u{7}");
        assert!(!lines.concat().contains('\u{1b}'));
    }

    #[test]
    fn text_wraps_at_spaces_and_keeps_every_word() {
        let text = "dlq-rate: 2001 UnknownCommandTypeException commands were not retried";
        let lines = wrap(text, 30);
        assert!(lines.iter().all(|l| l.chars().count() <= 30), "{lines:?}");
        assert_eq!(lines.join(" "), text);
        let indented = wrap("    2001 UnknownCommandTypeException and more words", 20);
        assert!(
            indented.iter().all(|l| l.starts_with("    ")),
            "{indented:?}"
        );
    }

    #[test]
    fn cutting_is_by_characters_not_bytes() {
        assert_eq!(cut("ééééé", 3), "éé…");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abc", 0), "");
    }
}
