//! Templating with minijinja, in three flavours that differ only in what `{{ expr }}` emits.
//!
//! - Text (notify messages, headers, argv elements): the value as text.
//! - SQL: every `{{ expr }}` becomes a bind placeholder (`$1` on PostgreSQL, `?1` on SQLite) and
//!   its value is collected for binding. The only things spliced into SQL text are fragments the
//!   engine builds itself (`ago(duration)`, `age(column)`, `ident(name)`), which validate their input.
//! - URL: values after the start of the URL are percent-encoded.
//!
//! Undefined values are errors everywhere. `when`, `until`, `assert` and `for_each` are
//! expressions, evaluated to values rather than rendered to text.

use std::cell::RefCell;

use minijinja::{
    value::{Object, Value},
    Environment, Error, ErrorKind, UndefinedBehavior,
};
use serde_json::Value as Json;

use crate::duration::Dur;

/// The SQL flavour of a database, for placeholders and engine-built fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// SQLite's "now" in the store's timestamp format (UTC, RFC 3339 with milliseconds), which
/// compares as text with the store's timestamp columns. The one place the format is spelled.
pub const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// SQLite's "now" moved by a modifier: a literal such as `'+1.500 seconds'` or a bound parameter
/// such as `?3` holding one.
pub fn sqlite_now_plus(modifier: &str) -> String {
    let open = SQLITE_NOW
        .strip_suffix(')')
        .expect("SQLITE_NOW ends with `)`");
    format!("{open}, {modifier})")
}

impl Dialect {
    /// SQL for "now", comparable with the store's timestamp columns.
    pub fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "NOW()",
            Dialect::Sqlite => SQLITE_NOW,
        }
    }

    /// SQL for "now minus `d`", comparable with the store's timestamp columns.
    pub fn ago(self, d: Dur) -> String {
        let ms = d.0.as_millis();
        match self {
            Dialect::Postgres => format!("(NOW() - INTERVAL '{ms} milliseconds')"),
            Dialect::Sqlite => {
                sqlite_now_plus(&format!("'-{}.{:03} seconds'", ms / 1000, ms % 1000))
            }
        }
    }

    /// SQL for "now minus `column`" as a number of seconds on SQLite and an interval on PostgreSQL.
    pub fn age(self, column: &str) -> String {
        match self {
            Dialect::Postgres => format!("(NOW() - {column})"),
            Dialect::Sqlite => format!("((julianday('now') - julianday({column})) * 86400.0)"),
        }
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite => format!("?{n}"),
        }
    }
}

/// A piece of SQL text built by the engine; the only kind of value spliced into a query.
#[derive(Debug)]
struct SqlFragment(String);

impl Object for SqlFragment {}

/// A rendered SQL statement and the values bound to its placeholders, in order.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BoundSql {
    pub sql: String,
    pub params: Vec<Json>,
}

enum Capture {
    Sql { dialect: Dialect, params: Vec<Json> },
    Url { emitted: usize, base_first: bool },
}

thread_local! {
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

fn with_capture<R>(capture: Capture, f: impl FnOnce() -> R) -> (R, Capture) {
    CAPTURE.with(|c| *c.borrow_mut() = Some(capture));
    let out = f();
    let capture = CAPTURE
        .with(|c| c.borrow_mut().take())
        .expect("capture set above");
    (out, capture)
}

fn write(out: &mut minijinja::Output, s: &str) -> Result<(), Error> {
    out.write_str(s)
        .map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
}

/// Identifiers that may be spliced: `name` or `schema.name`, letters, digits and underscores.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn dialect_now() -> Result<Dialect, Error> {
    CAPTURE.with(|c| match &*c.borrow() {
        Some(Capture::Sql { dialect, .. }) => Ok(*dialect),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "SQL functions are only available in SQL text",
        )),
    })
}

fn parse_dur(v: &Value) -> Result<Dur, Error> {
    if let Some(n) = v.as_i64() {
        return u64::try_from(n)
            .map(Dur::from_secs)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "a duration cannot be negative"));
    }
    let text = v.as_str().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            "expected a duration such as 1h",
        )
    })?;
    text.parse::<Dur>()
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// `sum`, with Jinja2's `attribute=` and `start=` (minijinja's own takes neither): integers stay
/// integers, `steps.depth.rows | sum(attribute='count')` adds a column.
fn sum_filter(values: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let attribute: Option<String> = kwargs.get("attribute")?;
    let start: Option<Value> = kwargs.get("start")?;
    kwargs.assert_all_used()?;
    let (mut int, mut float, mut is_float) = (0i64, 0f64, false);
    let mut add = |v: &Value| -> Result<(), Error> {
        if let Some(i) = v.as_i64() {
            int = int
                .checked_add(i)
                .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "sum overflows"))?;
        } else if let Ok(f) = f64::try_from(v.clone()) {
            float += f;
            is_float = true;
        } else if !v.is_none() && !v.is_undefined() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot sum {}", v.kind()),
            ));
        }
        Ok(())
    };
    if let Some(s) = &start {
        add(s)?;
    }
    for item in values.try_iter()? {
        match &attribute {
            Some(a) => {
                let mut v = item.clone();
                for part in a.split('.') {
                    v = v.get_attr(part)?;
                }
                add(&v)?
            }
            None => add(&item)?,
        }
    }
    Ok(if is_float {
        Value::from(float + int as f64)
    } else {
        Value::from(int)
    })
}

/// A value bound with a PostgreSQL type (`{{ x | uuid }}`, `{{ x | timestamptz }}`): its
/// placeholder is cast to the type (`$1::uuid`), so it compares with a column of that type. On
/// SQLite, and outside SQL, it is the checked value in its usual text form.
#[derive(Debug)]
struct Typed {
    value: Json,
    pg_type: &'static str,
}

impl Object for Typed {}

/// `| timestamptz`: RFC 3339 text (or Unix seconds) as UTC with milliseconds, the store's form.
fn timestamptz_value(v: &Value) -> Result<Json, Error> {
    let at = match v.as_i64() {
        Some(secs) => chrono::DateTime::from_timestamp(secs, 0),
        None => v
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
    };
    at.map(|t| Json::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("`{v}` is not a timestamp: give RFC 3339 text such as 2024-05-01T12:00:00Z, or Unix seconds"),
            )
        })
}

/// `| uuid`: 8-4-4-4-12 hexadecimal digits, lower-cased.
fn uuid_value(v: &Value) -> Result<Json, Error> {
    let text = v.as_str().map(str::trim).unwrap_or_default();
    let groups: Vec<&str> = text.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    if shape
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(Json::from(text.to_ascii_lowercase()))
    } else {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("`{v}` is not a UUID (8-4-4-4-12 hexadecimal digits)"),
        ))
    }
}

/// Adds the typed-bind filters: in SQL they bind with their type, elsewhere they check and
/// normalise the value.
fn add_typed_filters(env: &mut Environment<'static>, in_sql: bool) {
    fn typed(in_sql: bool, value: Json, pg_type: &'static str) -> Value {
        if in_sql {
            Value::from_object(Typed { value, pg_type })
        } else {
            Value::from_serialize(&value)
        }
    }
    env.add_filter("timestamptz", move |v: Value| {
        Ok(typed(in_sql, timestamptz_value(&v)?, "timestamptz"))
    });
    env.add_filter("uuid", move |v: Value| {
        Ok(typed(in_sql, uuid_value(&v)?, "uuid"))
    });
}

/// The shared template environments, built once.
pub struct Templates {
    text: Environment<'static>,
    sql: Environment<'static>,
    url: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

fn base_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_filter("seconds", |v: Value| parse_dur(&v).map(|d| d.as_secs_f64()));
    env.add_filter("sum", sum_filter);
    add_typed_filters(&mut env, false);
    env
}

impl Templates {
    pub fn new() -> Self {
        let mut text = base_env();
        text.add_function("ago", |d: Value| {
            let d = parse_dur(&d)?;
            let at = chrono::Utc::now() - chrono::Duration::from_std(d.0).unwrap_or_default();
            Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        });

        let mut sql = base_env();
        sql.add_function("ago", |d: Value| {
            Ok(Value::from_object(SqlFragment(
                dialect_now()?.ago(parse_dur(&d)?),
            )))
        });
        sql.add_function("age", |column: String| {
            if !is_identifier(&column) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("`{column}` is not a column name"),
                ));
            }
            Ok(Value::from_object(SqlFragment(dialect_now()?.age(&column))))
        });
        sql.add_function("ident", |name: String| {
            if !is_identifier(&name) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("`{name}` is not an identifier"),
                ));
            }
            dialect_now()?;
            Ok(Value::from_object(SqlFragment(name)))
        });
        add_typed_filters(&mut sql, true);
        sql.set_formatter(|out, _state, value| {
            if let Some(frag) = value.downcast_object_ref::<SqlFragment>() {
                return write(out, &frag.0);
            }
            let typed = value.downcast_object_ref::<Typed>();
            let placeholder = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
                Some(Capture::Sql { dialect, params }) => {
                    params.push(typed.map_or_else(|| to_json(value), |t| t.value.clone()));
                    let p = dialect.placeholder(params.len());
                    Ok(match (typed, *dialect) {
                        (Some(t), Dialect::Postgres) => format!("{p}::{}", t.pg_type),
                        _ => p,
                    })
                }
                _ => Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "SQL rendered outside a capture",
                )),
            })?;
            write(out, &placeholder)
        });

        let mut url = base_env();
        url.set_formatter(|out, state, value| {
            let raw = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
                Some(Capture::Url {
                    emitted,
                    base_first,
                }) => {
                    *emitted += 1;
                    *emitted == 1 && *base_first
                }
                _ => false,
            });
            if raw {
                return minijinja::escape_formatter(out, state, value);
            }
            let text = if value.is_undefined() || value.is_none() {
                String::new()
            } else {
                value.to_string()
            };
            write(out, &percent_encode(&text))
        });

        Templates { text, sql, url }
    }

    /// Checks template syntax without rendering.
    pub fn check_template(&self, src: &str) -> Result<(), Error> {
        self.sql.template_from_str(src).map(|_| ())
    }

    /// Checks expression syntax without evaluating.
    pub fn check_expr(&self, src: &str) -> Result<(), Error> {
        self.text.compile_expression(src).map(|_| ())
    }

    /// Variables a template reads, as dotted paths (`steps.a.rows`).
    pub fn template_vars(&self, src: &str) -> Vec<String> {
        self.sql
            .template_from_str(src)
            .map(|t| t.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default()
    }

    pub fn expr_vars(&self, src: &str) -> Vec<String> {
        self.text
            .compile_expression(src)
            .map(|e| e.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default()
    }

    pub fn render(&self, src: &str, ctx: &Value) -> Result<String, Error> {
        self.text.render_str(src, ctx)
    }

    pub fn render_url(&self, src: &str, ctx: &Value) -> Result<String, Error> {
        let base_first = src.trim_start().starts_with("{{");
        let (out, _) = with_capture(
            Capture::Url {
                emitted: 0,
                base_first,
            },
            || self.url.render_str(src, ctx),
        );
        out
    }

    pub fn render_sql(&self, src: &str, ctx: &Value, dialect: Dialect) -> Result<BoundSql, Error> {
        let (out, capture) = with_capture(
            Capture::Sql {
                dialect,
                params: Vec::new(),
            },
            || self.sql.render_str(src, ctx),
        );
        let sql = out?;
        let Capture::Sql { params, .. } = capture else {
            unreachable!("set as Sql above")
        };
        Ok(BoundSql {
            sql: sql.trim().to_owned(),
            params,
        })
    }

    pub fn eval(&self, expr: &str, ctx: &Value) -> Result<Value, Error> {
        self.text.compile_expression(expr)?.eval(ctx)
    }

    pub fn eval_bool(&self, expr: &str, ctx: &Value) -> Result<bool, Error> {
        Ok(self.eval(expr, ctx)?.is_true())
    }

    /// Renders every string in a YAML tree. A string that is exactly one `{{ expr }}` keeps the
    /// expression's type (a number stays a number); other strings render to text.
    pub fn render_tree(&self, tree: &serde_yaml::Value, ctx: &Value) -> Result<Json, Error> {
        use serde_yaml::Value as Y;
        Ok(match tree {
            Y::Null => Json::Null,
            Y::Bool(b) => Json::Bool(*b),
            Y::Number(n) => serde_json::to_value(n).unwrap_or(Json::Null),
            Y::String(s) => self.render_scalar(s, ctx)?,
            Y::Sequence(items) => Json::Array(
                items
                    .iter()
                    .map(|i| self.render_tree(i, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Y::Mapping(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    out.insert(key, self.render_tree(v, ctx)?);
                }
                Json::Object(out)
            }
            Y::Tagged(t) => self.render_tree(&t.value, ctx)?,
        })
    }

    pub fn render_scalar(&self, s: &str, ctx: &Value) -> Result<Json, Error> {
        match sole_expression(s) {
            Some(expr) => Ok(to_json(&self.eval(expr, ctx)?)),
            None if s.contains("{{") || s.contains("{%") => Ok(Json::String(self.render(s, ctx)?)),
            None => Ok(Json::String(s.to_owned())),
        }
    }

    /// Strings in a YAML tree, with their dotted sub-paths, for validation.
    pub fn tree_strings<'a>(
        tree: &'a serde_yaml::Value,
        path: String,
        out: &mut Vec<(String, &'a str)>,
    ) {
        use serde_yaml::Value as Y;
        match tree {
            Y::String(s) => out.push((path, s)),
            Y::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    Self::tree_strings(item, format!("{path}[{i}]"), out);
                }
            }
            Y::Mapping(map) => {
                for (k, v) in map {
                    let key = k.as_str().unwrap_or("?");
                    Self::tree_strings(v, format!("{path}.{key}"), out);
                }
            }
            Y::Tagged(t) => Self::tree_strings(&t.value, path, out),
            _ => {}
        }
    }
}

/// `"{{ expr }}"` alone (surrounding blanks allowed) yields `expr`.
pub fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// A template value as JSON; undefined becomes null.
pub fn to_json(v: &Value) -> Json {
    if v.is_undefined() {
        return Json::Null;
    }
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// Builds the template context from JSON.
pub fn context(ctx: &Json) -> Value {
    Value::from_serialize(ctx)
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minijinja error in one line: kind and detail, without the debug dump.
pub fn message(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("template: {}: {d}", e.kind()),
        None => format!("template: {}", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cx(v: Json) -> Value {
        context(&v)
    }

    #[test]
    fn sql_values_become_placeholders() {
        let t = Templates::new();
        let ctx = cx(json!({"params": {"x": "1'; DROP TABLE command_queue; --", "n": 20}}));
        let q = t
            .render_sql(
                "SELECT {{ params.x }} AS x LIMIT {{ params.n }}",
                &ctx,
                Dialect::Postgres,
            )
            .unwrap();
        assert_eq!(q.sql, "SELECT $1 AS x LIMIT $2");
        assert_eq!(
            q.params,
            vec![json!("1'; DROP TABLE command_queue; --"), json!(20)]
        );
        let q = t
            .render_sql("SELECT {{ params.x }}", &ctx, Dialect::Sqlite)
            .unwrap();
        assert_eq!(q.sql, "SELECT ?1");
    }

    #[test]
    fn safe_filter_does_not_splice() {
        let t = Templates::new();
        let ctx = cx(json!({"x": "1; DROP TABLE t"}));
        let q = t
            .render_sql("SELECT {{ x | safe }}", &ctx, Dialect::Postgres)
            .unwrap();
        assert_eq!(q.sql, "SELECT $1");
    }

    #[test]
    fn typed_filters_bind_with_their_type() {
        let t = Templates::new();
        let ctx = cx(
            json!({ "id": "0E9B0C36-5D6B-4A8E-9F3A-1B2C3D4E5F60", "at": "2024-05-01T14:00:00+02:00" }),
        );
        let q = t
            .render_sql(
                "SELECT * FROM t WHERE id = {{ id | uuid }} AND at > {{ at | timestamptz }} LIMIT {{ '5' | int }}",
                &ctx,
                Dialect::Postgres,
            )
            .unwrap();
        assert_eq!(
            q.sql,
            "SELECT * FROM t WHERE id = $1::uuid AND at > $2::timestamptz LIMIT $3"
        );
        assert_eq!(
            q.params,
            vec![
                json!("0e9b0c36-5d6b-4a8e-9f3a-1b2c3d4e5f60"),
                json!("2024-05-01T12:00:00.000Z"),
                json!(5)
            ]
        );
        let q = t
            .render_sql("SELECT {{ at | timestamptz }}", &ctx, Dialect::Sqlite)
            .unwrap();
        assert_eq!(q.sql, "SELECT ?1");
        assert_eq!(q.params, vec![json!("2024-05-01T12:00:00.000Z")]);
        let bad = t
            .render_sql("SELECT {{ 'x' | uuid }}", &ctx, Dialect::Postgres)
            .unwrap_err();
        assert!(message(&bad).contains("is not a UUID"), "{}", message(&bad));
        assert_eq!(
            t.render("{{ at | timestamptz }}", &ctx).unwrap(),
            "2024-05-01T12:00:00.000Z"
        );
    }

    #[test]
    fn sqlite_now_takes_a_modifier() {
        assert_eq!(
            sqlite_now_plus("?3"),
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3)"
        );
        assert_eq!(Dialect::Sqlite.now(), SQLITE_NOW);
        assert_eq!(Dialect::Postgres.now(), "NOW()");
    }

    #[test]
    fn ago_is_spliced_per_dialect_and_validated() {
        let t = Templates::new();
        let ctx = cx(json!({"d": "1h"}));
        let pg = t
            .render_sql("WHERE created_at < {{ ago(d) }}", &ctx, Dialect::Postgres)
            .unwrap();
        assert_eq!(
            pg.sql,
            "WHERE created_at < (NOW() - INTERVAL '3600000 milliseconds')"
        );
        assert!(pg.params.is_empty());
        let lite = t
            .render_sql("{{ ago('90s') }}", &ctx, Dialect::Sqlite)
            .unwrap();
        assert_eq!(
            lite.sql,
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-90.000 seconds')"
        );
        let bad = cx(json!({"d": "1h'); DROP TABLE x; --"}));
        assert!(t
            .render_sql("{{ ago(d) }}", &bad, Dialect::Postgres)
            .is_err());
        assert!(t
            .render_sql("{{ age('x; drop') }}", &bad, Dialect::Postgres)
            .is_err());
    }

    #[test]
    fn undefined_is_an_error() {
        let t = Templates::new();
        assert!(t.render("{{ nope }}", &cx(json!({}))).is_err());
        assert!(t
            .eval("steps.a.rows | length > 0", &cx(json!({"steps": {}})))
            .is_err());
    }

    #[test]
    fn sole_expression_keeps_its_type() {
        let t = Templates::new();
        let ctx = cx(json!({"runtime": {"workerConcurrency": 3}, "params": {"max": 12}}));
        let v = t
            .render_scalar(
                "{{ [runtime.workerConcurrency * 2, params.max] | min }}",
                &ctx,
            )
            .unwrap();
        assert_eq!(v, json!(6));
        assert_eq!(
            t.render_scalar("n={{ params.max }}", &ctx).unwrap(),
            json!("n=12")
        );
    }

    #[test]
    fn url_values_are_encoded_but_a_leading_base_is_not() {
        let t = Templates::new();
        let ctx = cx(json!({"base": "http://h:1", "q": "a b&c=d/e"}));
        assert_eq!(
            t.render_url("{{ base }}/x?q={{ q }}", &ctx).unwrap(),
            "http://h:1/x?q=a%20b%26c%3Dd%2Fe"
        );
        assert_eq!(
            t.render_url("http://h/{{ q }}", &ctx).unwrap(),
            "http://h/a%20b%26c%3Dd%2Fe"
        );
    }

    #[test]
    fn sum_takes_an_attribute() {
        let t = Templates::new();
        let ctx = cx(json!({"rows": [{"count": 600}, {"count": 500}], "fs": [0.5, 1]}));
        assert!(t
            .eval_bool("rows | sum(attribute='count') > 1000", &ctx)
            .unwrap());
        assert_eq!(
            to_json(&t.eval("rows | sum(attribute='count')", &ctx).unwrap()),
            json!(1100)
        );
        assert_eq!(to_json(&t.eval("fs | sum", &ctx).unwrap()), json!(1.5));
        assert_eq!(
            to_json(&t.eval("[] | sum(start=3)", &ctx).unwrap()),
            json!(3)
        );
    }

    #[test]
    fn reports_variables_read() {
        let t = Templates::new();
        let mut vars = t.expr_vars("steps.depth.rows | sum(attribute='count') > params.limit");
        vars.sort();
        assert_eq!(vars, vec!["params.limit", "steps.depth.rows"]);
    }
}
