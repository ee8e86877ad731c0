//! Alertmanager-style label matchers: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.

use std::collections::BTreeMap;

use regex::Regex;

#[derive(Debug, Clone)]
pub enum LabelMatcher {
    Eq(String, String),
    Ne(String, String),
    Re(String, Regex),
    NotRe(String, Regex),
}

impl LabelMatcher {
    /// Parses one matcher; regexes are anchored as in Alertmanager.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let name_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| format!("matcher `{text}` has no operator (use =, !=, =~ or !~)"))?;
        let (name, rest) = text.split_at(name_end);
        if name.is_empty() {
            return Err(format!("matcher `{text}` has no label name"));
        }
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(|| format!("matcher `{text}`: unknown operator (use =, !=, =~ or !~)"))?;
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(v) => v.replace("\\\"", "\"").replace("\\\\", "\\"),
            None => value.to_owned(),
        };
        let regex = || {
            Regex::new(&format!("^(?:{value})$"))
                .map_err(|e| format!("matcher `{text}`: bad regex: {e}"))
        };
        Ok(match op {
            "=" => LabelMatcher::Eq(name.into(), value),
            "!=" => LabelMatcher::Ne(name.into(), value),
            "=~" => LabelMatcher::Re(name.into(), regex()?),
            _ => LabelMatcher::NotRe(name.into(), regex()?),
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |n: &str| labels.get(n).map(String::as_str).unwrap_or("");
        match self {
            LabelMatcher::Eq(n, v) => get(n) == v,
            LabelMatcher::Ne(n, v) => get(n) != v,
            LabelMatcher::Re(n, r) => r.is_match(get(n)),
            LabelMatcher::NotRe(n, r) => !r.is_match(get(n)),
        }
    }
}

/// One `on.alerts` entry: every matcher must hold.
#[derive(Debug, Clone, Default)]
pub struct AlertMatcher {
    pub matchers: Vec<LabelMatcher>,
}

impl AlertMatcher {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators() {
        let l = labels(&[("alertname", "StreamingQueueDepthHigh"), ("env", "prod")]);
        assert!(LabelMatcher::parse(r#"alertname=~"Streaming.*""#)
            .unwrap()
            .matches(&l));
        assert!(!LabelMatcher::parse(r#"alertname=~"Queue.*""#)
            .unwrap()
            .matches(&l));
        assert!(LabelMatcher::parse(r#"env!="dev""#).unwrap().matches(&l));
        assert!(LabelMatcher::parse("env=prod").unwrap().matches(&l));
        assert!(LabelMatcher::parse(r#"missing!~".+""#).unwrap().matches(&l));
    }

    #[test]
    fn rejects_bad_matchers() {
        assert!(LabelMatcher::parse("alertname")
            .unwrap_err()
            .contains("no operator"));
        assert!(LabelMatcher::parse(r#"a=~"(""#)
            .unwrap_err()
            .contains("bad regex"));
        assert!(LabelMatcher::parse(r#"=~"x""#).is_err());
    }
}
