//! Rows to JSON by column type: numbers stay numbers, timestamps become RFC 3339 text, intervals
//! become text like `00:05:00` (and `1 day 02:00:00`), JSON stays JSON, and types sqlx does not
//! know (xid, inet, ...) are read from their wire format or shown as text.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use serde_json::{Map, Value as Json};
use sqlx::{
    postgres::{types::PgInterval, PgRow, PgValueFormat},
    sqlite::SqliteRow,
    Column, Row, TypeInfo, ValueRef,
};

pub fn pg_row(row: &PgRow) -> Json {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        out.insert(col.name().to_owned(), pg_value(row, i));
    }
    Json::Object(out)
}

fn pg_value(row: &PgRow, i: usize) -> Json {
    let Ok(raw) = row.try_get_raw(i) else {
        return Json::Null;
    };
    if raw.is_null() {
        return Json::Null;
    }
    let ty = raw.type_info().name().to_owned();
    macro_rules! get {
        ($t:ty) => {
            row.try_get::<$t, _>(i).ok()
        };
    }
    let v: Option<Json> = match ty.as_str() {
        "BOOL" => get!(bool).map(Json::from),
        "INT2" => get!(i16).map(Json::from),
        "INT4" => get!(i32).map(Json::from),
        "INT8" => get!(i64).map(Json::from),
        "FLOAT4" => get!(f32).map(|f| num(f as f64)),
        "FLOAT8" => get!(f64).map(num),
        "NUMERIC" => get!(rust_decimal::Decimal).map(|d| {
            let text = d.normalize().to_string();
            match (text.parse::<i64>(), text.parse::<f64>()) {
                (Ok(i), _) => Json::from(i),
                (_, Ok(f)) if f.to_string() == text => num(f),
                _ => Json::String(text),
            }
        }),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" => {
            get!(String).map(Json::String)
        }
        "TIMESTAMPTZ" => get!(DateTime<Utc>)
            .map(|t| Json::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))),
        "TIMESTAMP" => get!(NaiveDateTime)
            .map(|t| Json::String(t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true))),
        "DATE" => get!(NaiveDate).map(|d| Json::String(d.to_string())),
        "TIME" => get!(NaiveTime).map(|t| Json::String(t.to_string())),
        "INTERVAL" => get!(PgInterval).map(|iv| Json::String(interval_text(&iv))),
        "JSON" | "JSONB" => get!(Json),
        "OID" | "REGCLASS" | "REGPROC" | "XID" | "CID" => raw
            .as_bytes()
            .ok()
            .filter(|b| b.len() == 4)
            .map(|b| Json::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        "INET" | "CIDR" => raw.as_bytes().ok().and_then(inet_text).map(Json::String),
        "TEXT[]" | "NAME[]" | "VARCHAR[]" => get!(Vec<String>).map(Json::from),
        "INT4[]" => get!(Vec<i32>).map(Json::from),
        "INT8[]" => get!(Vec<i64>).map(Json::from),
        _ => None,
    };
    v.unwrap_or_else(|| match raw.format() {
        PgValueFormat::Text => raw
            .as_str()
            .map(|s| Json::String(s.to_owned()))
            .unwrap_or(Json::Null),
        PgValueFormat::Binary => match raw.as_bytes().map(std::str::from_utf8) {
            Ok(Ok(s)) if !s.contains('\0') => Json::String(s.to_owned()),
            _ => Json::String(format!("<{ty}>")),
        },
    })
}

fn num(f: f64) -> Json {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .unwrap_or(Json::Null)
}

/// PostgreSQL's own interval style: `1 mon 2 days 03:04:05.5`.
pub fn interval_text(iv: &PgInterval) -> String {
    let mut parts = Vec::new();
    if iv.months != 0 {
        parts.push(format!("{} mon", iv.months));
    }
    if iv.days != 0 {
        parts.push(format!(
            "{} day{}",
            iv.days,
            if iv.days.abs() == 1 { "" } else { "s" }
        ));
    }
    let us = iv.microseconds;
    let sign = if us < 0 { "-" } else { "" };
    let us = us.unsigned_abs();
    let (h, m, s, frac) = (
        us / 3_600_000_000,
        us / 60_000_000 % 60,
        us / 1_000_000 % 60,
        us % 1_000_000,
    );
    let mut clock = format!("{sign}{h:02}:{m:02}:{s:02}");
    if frac != 0 {
        clock.push_str(format!(".{frac:06}").trim_end_matches('0'));
    }
    if us != 0 || parts.is_empty() {
        parts.push(clock);
    }
    parts.join(" ")
}

/// Binary inet/cidr: family, bits, is_cidr, length, address.
fn inet_text(b: &[u8]) -> Option<String> {
    let (family, bits, len) = (*b.first()?, *b.get(1)?, *b.get(3)? as usize);
    let addr = b.get(4..4 + len)?;
    let ip: std::net::IpAddr = match (family, len) {
        (2, 4) => std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into(),
        (3, 16) => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?).into(),
        _ => return None,
    };
    let full = if ip.is_ipv4() { 32 } else { 128 };
    Some(if bits == full {
        ip.to_string()
    } else {
        format!("{ip}/{bits}")
    })
}

pub fn sqlite_row(row: &SqliteRow) -> Json {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let v = match row.try_get_raw(i) {
            Ok(raw) if raw.is_null() => Json::Null,
            Ok(raw) => match raw.type_info().name() {
                "INTEGER" => row
                    .try_get::<i64, _>(i)
                    .map(Json::from)
                    .unwrap_or(Json::Null),
                "REAL" => row.try_get::<f64, _>(i).map(num).unwrap_or(Json::Null),
                "BLOB" => row
                    .try_get::<Vec<u8>, _>(i)
                    .map(|b| Json::String(String::from_utf8_lossy(&b).into_owned()))
                    .unwrap_or(Json::Null),
                _ => {
                    let text = row.try_get::<String, _>(i).unwrap_or_default();
                    // JSON columns (payload, params) are stored as text; give them back as JSON.
                    if (text.starts_with('{') && text.ends_with('}'))
                        || (text.starts_with('[') && text.ends_with(']'))
                    {
                        serde_json::from_str(&text).unwrap_or(Json::String(text))
                    } else {
                        Json::String(text)
                    }
                }
            },
            Err(_) => Json::Null,
        };
        out.insert(col.name().to_owned(), v);
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_like_postgres() {
        let iv = |months, days, microseconds| PgInterval {
            months,
            days,
            microseconds,
        };
        assert_eq!(interval_text(&iv(0, 0, 300_000_000)), "00:05:00");
        assert_eq!(interval_text(&iv(0, 1, 7_200_000_000)), "1 day 02:00:00");
        assert_eq!(interval_text(&iv(0, 0, 1_500_000)), "00:00:01.5");
        assert_eq!(interval_text(&iv(0, 0, 0)), "00:00:00");
    }

    #[test]
    fn inet_binary() {
        assert_eq!(
            inet_text(&[2, 32, 0, 4, 127, 0, 0, 1]).unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            inet_text(&[2, 24, 1, 4, 10, 0, 0, 0]).unwrap(),
            "10.0.0.0/24"
        );
    }
}
