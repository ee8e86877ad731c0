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
    /// The line where each map and list ends (where the next token after it starts).
    end_line: HashMap<String, usize>,
}

/// A direct child of a map or list, by whole lines: its path, the line and column where it
/// starts, and the first line after it (block style only; see [`Locations::children`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub end_line: usize,
}

impl Locations {
    /// Indexes `text`; a file the parser rejects yields an empty index (serde_yaml reports that error).
    pub fn index(text: &str) -> Self {
        let mut walker = Walker::default();
        let _ = Parser::new_from_str(text).load(&mut walker, false);
        Locations {
            by_path: walker.by_path,
            end_line: walker.end_line,
        }
    }

    /// The direct children of the map or list at `container` (`""` is the top), in order, each
    /// spanning whole lines up to the next child or the container's end. `None` when two
    /// children share a line (flow style), where lines cannot separate them.
    pub fn children(&self, container: &str) -> Option<Vec<Unit>> {
        let end = *self.end_line.get(container)?;
        let mut kids: Vec<Unit> = self
            .by_path
            .iter()
            .filter(|(p, _)| is_child(container, p))
            .map(|(p, &(line, col))| Unit {
                path: p.clone(),
                line,
                col,
                end_line: end,
            })
            .collect();
        kids.sort_by_key(|u| (u.line, u.col));
        for i in 1..kids.len() {
            if kids[i].line == kids[i - 1].line {
                return None;
            }
            kids[i - 1].end_line = kids[i].line;
        }
        if kids.last().is_some_and(|k| k.end_line < k.line) {
            return None;
        }
        Some(kids)
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

/// Whether `path` is a direct child of `container`: `container.key` or `container[i]`.
fn is_child(container: &str, path: &str) -> bool {
    let rest = if container.is_empty() {
        path
    } else {
        match path.strip_prefix(container) {
            Some(r) => match r.strip_prefix('.') {
                Some(key) => key,
                None if r.starts_with('[') => r,
                None => return false,
            },
            None => return false,
        }
    };
    if let Some(index) = rest.strip_prefix('[') {
        return index
            .strip_suffix(']')
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
    }
    !rest.is_empty() && !rest.contains(['.', '['])
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
    end_line: HashMap<String, usize>,
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
                if let Some(Frame::Map { path, .. } | Frame::Seq { path, .. }) = self.stack.pop() {
                    // A block collection ends where the next token starts: at the start of a
                    // later line, or at the end of the text (the marker's line is then past it).
                    let line = if mark.col() == 0 {
                        mark.line()
                    } else {
                        mark.line() + 1
                    };
                    self.end_line.entry(path).or_insert(line);
                }
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

    #[test]
    fn children_span_whole_lines() {
        let text = "name: x\nparams:\n  a: { type: integr }\n  b:\n    type: string\nsteps:\n  - id: a\n    sql: SELECT 1\n\n  - id: b\n    when: \"true\"\non_failure: []\n";
        let loc = Locations::index(text);
        let steps = loc.children("steps").unwrap();
        let spans: Vec<(&str, usize, usize)> = steps
            .iter()
            .map(|u| (u.path.as_str(), u.line, u.end_line))
            .collect();
        assert_eq!(spans, [("steps[0]", 7, 10), ("steps[1]", 10, 12)]);
        let params = loc.children("params").unwrap();
        assert_eq!(
            params
                .iter()
                .map(|u| (u.line, u.end_line))
                .collect::<Vec<_>>(),
            [(3, 4), (4, 6)]
        );
        let top: Vec<String> = loc
            .children("")
            .unwrap()
            .into_iter()
            .map(|u| u.path)
            .collect();
        assert_eq!(top, ["name", "params", "steps", "on_failure"]);
        assert!(loc.children("steps[0]").is_some());
        let flow = Locations::index("steps: [{id: a, wait: 1s}, {id: b, wait: 1s}]\n");
        assert_eq!(flow.children("steps"), None);
    }
}
