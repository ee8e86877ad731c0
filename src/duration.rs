//! Human durations (`30s`, `5m`, `1h30m`, `7d`) as they appear in playbooks, the config and the CLI.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time written the way people write it: `500ms`, `30s`, `5m`, `1h30m`, `7d`.
/// A bare integer means seconds. Never longer than [`Dur::MAX`], so adding one to a clock or a
/// timestamp cannot overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    /// The longest duration accepted anywhere: 365 days. A longer one is refused when it is read,
    /// with the value and this maximum in the error.
    pub const MAX: Dur = Dur(Duration::from_secs(365 * 24 * 3600));

    /// `secs` seconds, or the error a text of that many seconds gets when it is over [`Dur::MAX`].
    pub fn checked_secs(secs: u64) -> Result<Self, DurationError> {
        Dur::bounded(Duration::from_secs(secs), &secs.to_string())
    }

    fn bounded(d: Duration, text: &str) -> Result<Self, DurationError> {
        if d > Dur::MAX.0 {
            return Err(DurationError {
                text: text.to_owned(),
                reason: "longer than the maximum of 365d".to_owned(),
            });
        }
        Ok(Dur(d))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Dur(Duration::from_secs(secs))
    }

    pub fn as_std(self) -> Duration {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
}

/// `Instant::now() + d`, or [`Dur::MAX`] from now for a longer `d`: a deadline never panics.
pub fn deadline_in(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d.min(Dur::MAX.0)).unwrap_or(now)
}

/// Why a text is not a duration.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration `{text}`: {reason} (write it like 30s, 5m, 1h30m or 7d)")]
pub struct DurationError {
    text: String,
    reason: String,
}

impl FromStr for Dur {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Ok(secs) = trimmed.parse::<u64>() {
            return Dur::bounded(Duration::from_secs(secs), text);
        }
        let d = humantime::parse_duration(trimmed).map_err(|e| DurationError {
            text: text.to_owned(),
            reason: e.to_string(),
        })?;
        Dur::bounded(d, text)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 5m, 1h30m or 7d")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Dur::checked_secs(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
                Dur::checked_secs(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: 500ms, 30s, 5m, 1h30m, 7d; a bare integer is seconds. At most 365d.",
            "anyOf": [
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$" },
                { "type": "integer", "minimum": 0, "maximum": 31_536_000 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_write() {
        assert_eq!("30s".parse::<Dur>().unwrap(), Dur::from_secs(30));
        assert_eq!("5m".parse::<Dur>().unwrap(), Dur::from_secs(300));
        assert_eq!("1h30m".parse::<Dur>().unwrap(), Dur::from_secs(5400));
        assert_eq!("7d".parse::<Dur>().unwrap(), Dur::from_secs(7 * 86400));
        assert_eq!("90".parse::<Dur>().unwrap(), Dur::from_secs(90));
        assert_eq!(
            "250ms".parse::<Dur>().unwrap(),
            Dur(Duration::from_millis(250))
        );
    }

    #[test]
    fn rejects_nonsense_with_the_text() {
        let err = "five minutes".parse::<Dur>().unwrap_err().to_string();
        assert!(err.contains("`five minutes`"), "{err}");
        assert!("-5m".parse::<Dur>().is_err());
    }

    #[test]
    fn refuses_durations_over_a_year_naming_the_value_and_the_maximum() {
        assert_eq!("365d".parse::<Dur>().unwrap(), Dur::MAX);
        for text in [
            "18446744073709551615s",
            "18446744073709551615",
            "366d",
            "9999999999h",
        ] {
            let err = text.parse::<Dur>().unwrap_err().to_string();
            assert!(err.contains(&format!("`{text}`")), "{err}");
            assert!(err.contains("365d"), "{err}");
        }
        let err = serde_yaml::from_str::<Dur>("18446744073709551615")
            .unwrap_err()
            .to_string();
        assert!(err.contains("365d"), "{err}");
        assert!(serde_yaml::from_str::<Dur>("31536000").is_ok());
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(Dur::from_secs(5400).to_string(), "1h 30m");
        assert_eq!(Dur::default().to_string(), "0s");
    }
}
