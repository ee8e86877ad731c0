//! A duration a playbook may give as a template (`every: "{{ params.poll_every }}"`): `every`,
//! `within` and `wait` take either a literal duration, checked when the playbook is read, or a
//! template, rendered when the step runs and parsed then, so a run's params can shorten a
//! playbook's waits without editing its text.

use std::{borrow::Cow, fmt};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::{duration::Dur, template::Templates};

/// A literal duration, or a template that renders to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurSpec {
    Fixed(Dur),
    Template(String),
}

impl DurSpec {
    /// The duration when it is literal.
    pub fn fixed(&self) -> Option<Dur> {
        match self {
            DurSpec::Fixed(d) => Some(*d),
            DurSpec::Template(_) => None,
        }
    }

    /// The template, when it is one.
    pub fn template(&self) -> Option<&str> {
        match self {
            DurSpec::Fixed(_) => None,
            DurSpec::Template(t) => Some(t),
        }
    }

    /// The duration, rendering the template in `ctx`. `key` names the playbook key in the error
    /// (`every`, `within`, `wait`), which says what the template rendered to.
    ///
    /// # Errors
    ///
    /// The template fails to render, or its text is not a duration.
    pub fn resolve(
        &self,
        key: &str,
        templates: &Templates,
        ctx: &minijinja::Value,
    ) -> Result<Dur, String> {
        match self {
            DurSpec::Fixed(d) => Ok(*d),
            DurSpec::Template(t) => {
                let text = templates
                    .render(t, ctx)
                    .map_err(|e| format!("`{key}`: {}", crate::template::message(&e)))?;
                text.trim().parse::<Dur>().map_err(|e| {
                    format!("`{key}`: `{t}` rendered `{text}`, which is not a duration: {e}")
                })
            }
        }
    }
}

impl From<Dur> for DurSpec {
    fn from(d: Dur) -> Self {
        DurSpec::Fixed(d)
    }
}

impl fmt::Display for DurSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurSpec::Fixed(d) => d.fmt(f),
            DurSpec::Template(t) => f.write_str(t),
        }
    }
}

impl Serialize for DurSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether a text is a template rather than literal text.
fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

impl<'de> Deserialize<'de> for DurSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = DurSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as 30s, 5m, 1h30m or 7d, or a template such as \"{{ params.every }}\"",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurSpec, E> {
                Dur::checked_secs(v).map(DurSpec::Fixed).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurSpec, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
                Dur::checked_secs(v).map(DurSpec::Fixed).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurSpec, E> {
                if is_template(v) {
                    return Ok(DurSpec::Template(v.to_owned()));
                }
                v.parse().map(DurSpec::Fixed).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for DurSpec {
    fn schema_name() -> Cow<'static, str> {
        "DurationOrTemplate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration (30s, 5m, 1h30m, 7d; a bare integer is seconds), or a template rendered when the step runs that must render to one, e.g. \"{{ params.poll_every }}\".",
            "type": ["string", "integer"],
            "minimum": 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<DurSpec, String> {
        serde_yaml::from_str(y).map_err(|e| e.to_string())
    }

    #[test]
    fn literal_durations_are_checked_when_read() {
        assert_eq!(parse("15s").unwrap(), DurSpec::Fixed(Dur::from_secs(15)));
        assert_eq!(parse("30").unwrap(), DurSpec::Fixed(Dur::from_secs(30)));
        let e = parse("soon").unwrap_err();
        assert!(e.contains("invalid duration `soon`"), "{e}");
    }

    #[test]
    fn a_template_renders_and_parses_at_run_time() {
        let spec = parse("\"{{ params.every }}\"").unwrap();
        assert_eq!(spec.template(), Some("{{ params.every }}"));
        let t = Templates::new();
        let ctx = minijinja::Value::from_serialize(serde_json::json!({"params": {"every": "2s"}}));
        assert_eq!(spec.resolve("every", &t, &ctx).unwrap(), Dur::from_secs(2));
    }

    #[test]
    fn a_template_that_renders_no_duration_names_the_key_and_the_text() {
        let spec = parse("\"{{ params.every }}\"").unwrap();
        let t = Templates::new();
        let ctx =
            minijinja::Value::from_serialize(serde_json::json!({"params": {"every": "often"}}));
        let e = spec.resolve("every", &t, &ctx).unwrap_err();
        assert!(
            e.starts_with("`every`: `{{ params.every }}` rendered `often`"),
            "{e}"
        );
        assert!(e.contains("not a duration"), "{e}");
    }
}
