//! Where each value of a YAML file stands, so that checks made after deserializing can still
//! point at `file:line:col`.
//!
//! serde_yaml reports locations only for its own errors; the compiled playbook no longer knows
//! where anything came from. This walks the file once with yaml-rust2's event parser and records
//! the position of every key and sequence item under a dotted path such as `steps[2].when`.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// Positions (1-based line and column) by path.
#[derive(Debug, Default)]
pub struct Locations {
    by_path: HashMap<String, (usize, usize)>,
}

impl Locations {
    /// Indexes `text`; a file the parser rejects yields an empty index (serde_yaml reports that error).
    pub fn index(text: &str) -> Self {
        let mut walker = Walker::default();
        let _ = Parser::new_from_str(text).load(&mut walker, false);
        Locations {
            by_path: walker.by_path,
        }
    }

    /// The position of `path`, or of its nearest recorded ancestor, or the top of the file.
    pub fn at(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.by_path.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
    }
}

/// Where `text` first nests collections deeper than `max` (1-based line and column); `None`
/// when it does not, or when the parser rejects the text first (the deserializer reports that
/// error). YAML parsers take time quadratic in the depth of flow collections (`[[[...]]]`), so
/// those are counted first by a linear scan of the text, before any parser reads it; the
/// events of a parser then count the depth of every kind of collection, and stop at the limit.
pub fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    if let Some(at) = flow_too_deep(text, max) {
        return Some(at);
    }
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        match parser.next_token() {
            Ok((Event::MappingStart(..) | Event::SequenceStart(..), mark)) => {
                depth += 1;
                if depth > max {
                    return Some((mark.line(), mark.col() + 1));
                }
            }
            Ok((Event::MappingEnd | Event::SequenceEnd, _)) => depth = depth.saturating_sub(1),
            Ok((Event::StreamEnd, _)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Where flow collections (`[...]`, `{...}`) first nest deeper than `max`, by a scan of the
/// text that skips comments, quoted scalars and block scalars (`|`, `>`), and counts a bracket
/// only where a node can start (so `a[0]` in a plain scalar is text). It may count more than a
/// parser would in odd cases, never fewer.
fn flow_too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    // The indentation of the line that opened a block scalar, while in one.
    let mut block_scalar: Option<usize> = None;
    let mut quote: Option<char> = None;
    for (line_no, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block_scalar {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        // Whether a node may start here: at the start of the line, or after an indicator.
        let mut node_start = quote.is_none();
        let mut chars = line.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if let Some(q) = quote {
                match c {
                    '\\' if q == '"' => {
                        chars.next();
                    }
                    '\'' if q == '\'' && chars.peek().is_some_and(|&(_, n)| n == '\'') => {
                        chars.next();
                    }
                    c if c == q => quote = None,
                    _ => {}
                }
                continue;
            }
            match c {
                ' ' | '\t' => continue,
                '#' if i == 0 || line[..i].ends_with([' ', '\t']) => break,
                '"' | '\'' if node_start => quote = Some(c),
                '[' | '{' if node_start || depth > 0 => {
                    depth += 1;
                    if depth > max {
                        return Some((line_no + 1, line[..i].chars().count() + 1));
                    }
                    node_start = true;
                    continue;
                }
                ']' | '}' if depth > 0 => depth -= 1,
                '|' | '>' if node_start && depth == 0 => {
                    let rest = line[i + 1..]
                        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+');
                    let rest = rest.trim_start();
                    if rest.is_empty() || rest.starts_with('#') {
                        block_scalar = Some(indent);
                        break;
                    }
                }
                ',' if depth > 0 => {
                    node_start = true;
                    continue;
                }
                '-' | '?' | ':'
                    if chars.peek().is_none_or(|&(_, n)| n == ' ' || n == '\t')
                        || (c == ':' && depth > 0) =>
                {
                    node_start = true;
                    continue;
                }
                _ => {}
            }
            node_start = false;
        }
    }
    None
}

enum Frame {
    /// `anchor`: a path whose position is the map's first key (block maps report their start late).
    Map {
        path: String,
        key: Option<String>,
        anchor: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    by_path: HashMap<String, (usize, usize)>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker {
    /// Called for every node start; returns the node's path, or `None` when the node is a map key.
    fn node_path(&mut self, mark: Marker, scalar: Option<&str>, is_map: bool) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                if !is_map {
                    self.by_path.entry(p.clone()).or_insert(pos);
                }
                Some(p)
            }
            Some(Frame::Map { path, key, anchor }) => match key.take() {
                None => {
                    let k = scalar.unwrap_or("?").to_owned();
                    if let Some(a) = anchor.take() {
                        self.by_path.entry(a).or_insert(pos);
                    }
                    self.by_path.entry(join(path, &k)).or_insert(pos);
                    *key = Some(k);
                    None
                }
                Some(k) => {
                    let p = join(path, &k);
                    // Values are entered only once per key; reset so the next scalar is a key.
                    Some(p)
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.node_path(mark, Some(&value), false);
            }
            Event::Alias(_) => {
                self.node_path(mark, None, false);
            }
            Event::MappingStart(..) => {
                let path = self.node_path(mark, None, true).unwrap_or_default();
                self.stack.push(Frame::Map {
                    anchor: Some(path.clone()),
                    path,
                    key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(mark, None, false).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_deeper_than_the_limit_is_found_where_it_starts() {
        assert_eq!(too_deep("a:\n  b:\n    c: [1, {d: 2}]\n", 5), None);
        assert_eq!(too_deep("a:\n  b:\n    c: [1, {d: 2}]\n", 4), Some((3, 12)));
        let flow = format!("x: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(too_deep(&flow, 64), Some((1, 4 + 64)));
        let block = format!("{}1\n", "- ".repeat(100_000));
        assert_eq!(too_deep(&block, 64), Some((1, 1 + 2 * 64)));
    }

    #[test]
    fn brackets_in_text_are_not_nesting() {
        let text = "a: \"[[[[\"\nb: '{{{ it''s [[['\nc: x[0][1] [[[[\nd: |\n  [[[[[[\n  {{{{\ne: >-\n    [[[[\n# [[[[[\nf: don't [[[ # [[[[\ng: [1, [2, '[[[['], {h: \"]]]]\"}]\n";
        assert_eq!(flow_too_deep(text, 2), None);
        assert_eq!(flow_too_deep(text, 1), Some((11, 8)));
        assert_eq!(too_deep(text, 3), None);
    }

    #[test]
    fn finds_keys_and_items() {
        let text = "name: x\nsteps:\n  - id: a\n    sql: SELECT 1\n  - id: b\n    when: \"true\"\n";
        let loc = Locations::index(text);
        assert_eq!(loc.at("name"), (1, 1));
        assert_eq!(loc.at("steps[1].when"), (6, 5));
        assert_eq!(loc.at("steps[0]"), (3, 5));
        // Unknown deeper paths fall back to the nearest ancestor.
        assert_eq!(loc.at("steps[1].when.deeper"), (6, 5));
    }
}
