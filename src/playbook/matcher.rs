//! Alertmanager-style label matchers: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.

use std::collections::BTreeMap;

use regex::Regex;

/// Why a matcher's text does not parse; each names the matcher as written.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("matcher `{text}` has no operator (use =, !=, =~ or !~)")]
    NoOperator { text: String },
    #[error("matcher `{text}` has no label name")]
    NoLabelName { text: String },
    #[error("matcher `{text}`: unknown operator (use =, !=, =~ or !~)")]
    UnknownOperator { text: String },
    #[error("matcher `{text}`: bad regex")]
    BadRegex {
        text: String,
        #[source]
        source: regex::Error,
    },
}

#[derive(Debug, Clone)]
pub enum LabelMatcher {
    Eq(String, String),
    Ne(String, String),
    Re(String, Regex),
    NotRe(String, Regex),
}

impl LabelMatcher {
    /// Parses one matcher; regexes are anchored as in Alertmanager.
    ///
    /// # Errors
    ///
    /// The text lacks a label name or an operator, or its regex does not compile.
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let text = text.trim();
        let name_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| MatcherError::NoOperator { text: text.into() })?;
        let (name, rest) = text.split_at(name_end);
        if name.is_empty() {
            return Err(MatcherError::NoLabelName { text: text.into() });
        }
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(|| MatcherError::UnknownOperator { text: text.into() })?;
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(v) => v.replace("\\\"", "\"").replace("\\\\", "\\"),
            None => value.to_owned(),
        };
        let regex = || {
            Regex::new(&format!("^(?:{value})$")).map_err(|source| MatcherError::BadRegex {
                text: text.into(),
                source,
            })
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

    fn holds(matcher: &str, l: &BTreeMap<String, String>) -> bool {
        LabelMatcher::parse(matcher).unwrap().matches(l)
    }

    #[test]
    fn each_operator_as_alertmanager_has_it() {
        let l = labels(&[("severity", "critical"), ("job", "api-server")]);
        // =
        assert!(holds(r#"severity="critical""#, &l));
        assert!(!holds(r#"severity="crit""#, &l));
        assert!(
            holds(r#"missing="""#, &l),
            "a missing label is the empty string"
        );
        // !=
        assert!(holds(r#"severity!="warning""#, &l));
        assert!(!holds(r#"severity!="critical""#, &l));
        assert!(!holds(r#"missing!="""#, &l));
        // =~
        assert!(holds(r#"job=~"api-.*""#, &l));
        assert!(holds(r#"severity=~"critical|page""#, &l));
        assert!(!holds(r#"severity=~"warning|info""#, &l));
        assert!(holds(r#"missing=~".*""#, &l));
        // !~
        assert!(holds(r#"job!~"db-.*""#, &l));
        assert!(!holds(r#"job!~"api-.*""#, &l));
        assert!(!holds(r#"missing!~".*""#, &l));
    }

    #[test]
    fn regexes_are_anchored_at_both_ends() {
        let l = labels(&[("alertname", "StreamingQueueDepthHigh")]);
        assert!(
            !holds(r#"alertname=~"Queue""#, &l),
            "a substring is not a match"
        );
        assert!(
            !holds(r#"alertname=~"Streaming""#, &l),
            "a prefix is not a match"
        );
        assert!(
            !holds(r#"alertname=~"DepthHigh""#, &l),
            "a suffix is not a match"
        );
        assert!(holds(r#"alertname=~".*Queue.*""#, &l));
        // An alternation is anchored as a whole, not only its first branch.
        assert!(!holds(r#"alertname=~"Foo|Streaming""#, &l));
        assert!(holds(r#"alertname!~"Queue""#, &l), "!~ is anchored too");
        // Equality is exact, not a pattern.
        assert!(!holds(r#"alertname="Streaming.*""#, &l));
    }

    #[test]
    fn rejects_bad_matchers_naming_each() {
        let e = LabelMatcher::parse(" alertname ").unwrap_err();
        assert!(matches!(&e, MatcherError::NoOperator { text } if text == "alertname"));
        assert_eq!(
            e.to_string(),
            "matcher `alertname` has no operator (use =, !=, =~ or !~)"
        );
        let e = LabelMatcher::parse(r#"=~"x""#).unwrap_err();
        assert_eq!(e.to_string(), r#"matcher `=~"x"` has no label name"#);
        let e = LabelMatcher::parse(r#"env<"prod""#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"matcher `env<"prod"`: unknown operator (use =, !=, =~ or !~)"#
        );
    }

    #[test]
    fn a_bad_regex_names_the_matcher_and_keeps_the_regex_error_as_its_cause() {
        let e = LabelMatcher::parse(r#"a=~"(""#).unwrap_err();
        assert_eq!(e.to_string(), r#"matcher `a=~"("`: bad regex"#);
        let cause = std::error::Error::source(&e).expect("the regex error is the source");
        assert!(cause.to_string().contains("unclosed group"), "{cause}");
        let whole = crate::text::error_chain(&e);
        assert!(
            whole.starts_with(r#"matcher `a=~"("`: bad regex: regex parse error"#),
            "{whole}"
        );
    }
}
