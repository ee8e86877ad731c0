//! Parameters: a declared default or a `--param`/API value checked against its type and
//! converted to JSON, and a run's parameters resolved from defaults and overrides.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{ParamSpec, ParamType};
use crate::duration::Dur;

/// Why a value does not fit its parameter's type.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("expected {expected}, got `{got}`")]
    Text { expected: &'static str, got: String },
    #[error("expected {expected}, got {got}")]
    Yaml { expected: &'static str, got: String },
    #[error(transparent)]
    Duration(#[from] crate::duration::DurationError),
    #[error("`{0}` has no unit: write a duration with one, like `{0}s`, `{0}m`, `{0}h` or `{0}d`")]
    NoUnit(String),
    #[error(
        "contains a NUL character (\\u0000), which PostgreSQL text cannot hold and no program \
         argument can carry: remove it"
    )]
    Nul,
}

/// One problem with a run's parameters.
#[derive(Debug, thiserror::Error)]
pub enum ParamProblem {
    #[error("unknown parameter `{name}` (this playbook takes: {known})")]
    Unknown { name: String, known: String },
    #[error("parameter `{name}`: {source}")]
    Invalid {
        name: String,
        #[source]
        source: ParamError,
    },
    #[error("parameter `{name}` is required ({expected})")]
    Required {
        name: String,
        expected: &'static str,
    },
}

/// Every problem with a run's parameters, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ParamProblems(pub Vec<ParamProblem>);

/// Checks a YAML value against a parameter type and converts it to JSON.
pub fn coerce_yaml(ty: ParamType, v: &serde_yaml::Value) -> Result<Json, ParamError> {
    use serde_yaml::Value as Y;
    match (ty, v) {
        (ParamType::String, Y::String(s)) => coerce_text(ParamType::String, s),
        (ParamType::String, Y::Number(n)) => Ok(Json::String(n.to_string())),
        (ParamType::Integer, Y::Number(n)) if n.is_i64() || n.is_u64() => {
            Ok(serde_json::to_value(n).unwrap_or_default())
        }
        (ParamType::Number, Y::Number(n)) => Ok(serde_json::to_value(n).unwrap_or_default()),
        (ParamType::Boolean, Y::Bool(b)) => Ok(Json::Bool(*b)),
        (ty, Y::String(s)) => coerce_text(ty, s),
        (ParamType::Duration, Y::Number(n)) => Err(ParamError::NoUnit(n.to_string())),
        (ty, other) => Err(ParamError::Yaml {
            expected: type_name(ty),
            got: serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }),
    }
}

/// Parses a parameter given as text (`--param k=v`, alert labels) into its type.
pub fn coerce_text(ty: ParamType, s: &str) -> Result<Json, ParamError> {
    if s.contains('\0') {
        return Err(ParamError::Nul);
    }
    let wrong = || ParamError::Text {
        expected: type_name(ty),
        got: s.to_owned(),
    };
    match ty {
        ParamType::String => Ok(Json::String(s.to_owned())),
        ParamType::Integer => s.trim().parse::<i64>().map(Json::from).map_err(|_| wrong()),
        ParamType::Number => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .ok_or_else(wrong),
        ParamType::Boolean => match s.trim() {
            "true" => Ok(Json::Bool(true)),
            "false" => Ok(Json::Bool(false)),
            _ => Err(wrong()),
        },
        ParamType::Duration => {
            let t = s.trim();
            if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return Err(ParamError::NoUnit(t.to_owned()));
            }
            s.parse::<Dur>()?;
            Ok(Json::String(s.trim().to_owned()))
        }
    }
}

fn type_name(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String => "a string",
        ParamType::Integer => "an integer",
        ParamType::Number => "a number",
        ParamType::Boolean => "true or false",
        ParamType::Duration => "a duration",
    }
}

/// Resolves a run's parameters: defaults, then overrides as text; unknown or missing ones are errors.
pub fn resolve_params(
    specs: &[ParamSpec],
    overrides: &BTreeMap<String, String>,
) -> Result<serde_json::Map<String, Json>, ParamProblems> {
    let mut out = serde_json::Map::new();
    let mut problems = Vec::new();
    for k in overrides.keys() {
        if !specs.iter().any(|s| &s.name == k) {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            problems.push(ParamProblem::Unknown {
                name: k.clone(),
                known: if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    for spec in specs {
        match (overrides.get(&spec.name), &spec.default) {
            (Some(text), _) => match coerce_text(spec.ty, text) {
                Ok(v) => {
                    out.insert(spec.name.clone(), v);
                }
                Err(source) => problems.push(ParamProblem::Invalid {
                    name: spec.name.clone(),
                    source,
                }),
            },
            (None, Some(v)) => {
                out.insert(spec.name.clone(), v.clone());
            }
            (None, None) => problems.push(ParamProblem::Required {
                name: spec.name.clone(),
                expected: type_name(spec.ty),
            }),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ParamProblems(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, ty: ParamType, default: Option<Json>) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            ty,
            default,
            description: None,
        }
    }

    #[test]
    fn text_is_coerced_to_the_declared_type() {
        assert_eq!(
            coerce_text(ParamType::Integer, " 42 ").unwrap(),
            Json::from(42)
        );
        assert_eq!(
            coerce_text(ParamType::Boolean, "true").unwrap(),
            Json::Bool(true)
        );
        for not_bool in ["yes", "1", "no", "0", "TRUE", "on"] {
            let err = coerce_text(ParamType::Boolean, not_bool).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("expected true or false, got `{not_bool}`")
            );
        }
        let err = coerce_text(ParamType::Duration, "30")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`30` has no unit") && err.contains("`30s`"),
            "{err}"
        );
        assert_eq!(
            coerce_text(ParamType::Duration, "30m").unwrap(),
            Json::from("30m")
        );
        let err = coerce_text(ParamType::Integer, "4x")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "expected an integer, got `4x`");
        assert!(coerce_text(ParamType::Duration, "soon").is_err());
        let yaml: serde_yaml::Value = serde_yaml::from_str("300").unwrap();
        let err = coerce_yaml(ParamType::Duration, &yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`300` has no unit"), "{err}");
        assert_eq!(
            coerce_yaml(ParamType::String, &yaml).unwrap(),
            Json::from("300")
        );
    }

    #[test]
    fn overrides_replace_defaults_and_every_problem_is_reported() {
        let specs = [
            spec("stuck_after", ParamType::Duration, Some(Json::from("1h"))),
            spec("max", ParamType::Integer, None),
        ];
        let overrides = BTreeMap::from([("max".to_owned(), "12".to_owned())]);
        let p = resolve_params(&specs, &overrides).unwrap();
        assert_eq!(p["stuck_after"], "1h");
        assert_eq!(p["max"], 12);

        let bad = BTreeMap::from([
            ("nope".to_owned(), "1".to_owned()),
            ("stuck_after".to_owned(), "later".to_owned()),
        ]);
        let errors: Vec<String> = resolve_params(&specs, &bad)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("unknown parameter `nope`"), "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("`max` is required")),
            "{errors:?}"
        );
    }
}
