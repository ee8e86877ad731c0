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
//!
//! Limits: rendering runs off the async worker threads ([`off_runtime`]), with fuel sized from
//! the time its step has left ([`fuel_per_second`]) and a cap on what it produces
//! ([`MAX_OUTPUT`]). Loading only parses: literals are blanked before a template is compiled for
//! checking, so no constant expression is evaluated ([`Templates::check_template`]).
//!
//! Secrets (`env` entries marked `secret: true`) are [`SecretValue`] objects: they render as a
//! marker that is replaced by the value only in the final output, so a secret can be placed
//! whole and nothing else; a filter or operation that changes the marker is an error naming it.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    fmt,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use minijinja::{
    value::{Object, ObjectRepr, Value},
    Environment, Error, ErrorKind, UndefinedBehavior,
};
use serde_json::Value as Json;

use crate::duration::Dur;

/// Template instructions allowed per second of the time a step has left: half of what this
/// build runs on this machine (measured once, on a loop of simple instructions), leaving room
/// for the expensive ones (filters over lists) and for a loaded machine.
pub fn fuel_per_second() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let mut env = Environment::new();
        env.set_fuel(Some(u64::MAX / 4));
        let started = Instant::now();
        let consumed = env
            .template_from_str("{% for i in range(20000) %}{% if i > 1 %}{% endif %}{% endfor %}")
            .and_then(|t| t.render_captured(()))
            .ok()
            .and_then(|c| c.state().fuel_levels())
            .map_or(0, |(consumed, _)| consumed);
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        ((consumed as f64 / secs / 2.0) as u64).clamp(500_000, 50_000_000)
    })
}

/// The least fuel a template gets, however little time is left: enough for ordinary templates.
const MIN_FUEL: u64 = 100_000;

/// The most bytes one template may produce (its text, or the size of an expression's value).
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// The time a template is given when no step deadline is set (handlers, tests).
const DEFAULT_BUDGET: Duration = Duration::from_secs(10);

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Renders run at most this many at once, each on a thread of its own.
fn render_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores.clamp(1, 16))
    })
}

/// Runs `f`, which renders or evaluates templates, off the async worker threads and with
/// `deadline` as the time the templates inside it have: at most one render per core at once
/// (the others wait without holding a thread), each on a thread the runtime hands its other
/// tasks away from, so the API, health checks and shutdown keep answering however heavy a
/// template is. Fuel sized from `deadline` ends a render that would outlast its step.
pub async fn off_runtime<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    // The semaphore is never closed; without a permit the render still runs.
    let _permit = render_slots().acquire().await.ok();
    let run = || with_deadline(deadline, f);
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        // A single-threaded runtime (unit tests) cannot hand its tasks away.
        _ => run(),
    }
}

/// Runs `f` with `deadline` as the time its templates have.
pub fn with_deadline<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|d| d.replace(Some(deadline))));
    f()
}

/// The fuel a template gets now, and the time it stands for.
fn fuel_now() -> (u64, Duration) {
    let left = DEADLINE.with(Cell::get).map_or(DEFAULT_BUDGET, |d| {
        d.saturating_duration_since(Instant::now())
    });
    let fuel = (left.as_secs_f64() * fuel_per_second() as f64) as u64;
    (fuel.max(MIN_FUEL), left)
}

/// An error once the time templates have is over (checked where the engine's own code runs
/// inside a render: output, `join`, the engine's filters), for work that fuel does not count.
fn check_time() -> Result<(), Error> {
    match DEADLINE.with(Cell::get) {
        Some(d) if Instant::now() > d => Err(Error::new(
            ErrorKind::OutOfFuel,
            "the template ran past the time its step had",
        )),
        _ => Ok(()),
    }
}

/// `join`, with the time and size limits checked as it goes.
fn join_filter(value: Value, joiner: Option<String>) -> Result<String, Error> {
    check_time()?;
    let joiner = joiner.unwrap_or_default();
    let mut out = String::new();
    let items: Box<dyn Iterator<Item = Value>> = match value.as_str() {
        Some(s) => Box::new(
            s.chars()
                .map(|c| Value::from(c.to_string()))
                .collect::<Vec<_>>()
                .into_iter(),
        ),
        None => Box::new(value.try_iter()?),
    };
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(&joiner);
        }
        if !item.is_none() && !item.is_undefined() {
            out.push_str(&item.to_string());
        }
        if out.len() > MAX_OUTPUT {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "join produced more than {} KiB, the limit of what a template may produce",
                    MAX_OUTPUT / 1024
                ),
            ));
        }
    }
    Ok(out)
}

/// The start of a template, to name it in errors.
fn excerpt(src: &str) -> String {
    let one_line = src.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::text::truncate(&one_line, 80)
}

/// An error of a render with `fuel` for `left`: running out of fuel or over [`MAX_OUTPUT`]
/// becomes an error naming the template and the limit.
fn limit_error(e: Error, src: &str, fuel: u64, left: Duration, over: bool) -> Error {
    if over {
        return too_large(src);
    }
    if e.kind() == ErrorKind::OutOfFuel {
        return Error::new(
            ErrorKind::OutOfFuel,
            format!(
                "`{}` did not finish within the {} its step had left (the limit: {fuel} instructions, and that time)",
                excerpt(src),
                Dur(Duration::from_millis(left.as_millis() as u64))
            ),
        );
    }
    e
}

fn too_large(src: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "`{}` produced more than {} KiB, the limit of what a template may produce",
            excerpt(src),
            MAX_OUTPUT / 1024
        ),
    )
}

/// A writer that refuses to grow past a limit.
struct Capped {
    buf: Vec<u8>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT {
            self.over = true;
            return Err(std::io::Error::other("template output over its limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An approximate size of a value in bytes, counted until `limit` is passed.
fn value_size(v: &Value, limit: usize) -> usize {
    if let Some(s) = v.as_str() {
        return s.len();
    }
    if v.downcast_object_ref::<SecretValue>().is_some() {
        return 0;
    }
    match v.kind() {
        minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Iterable => {
            let mut total = 0;
            if let Ok(items) = v.try_iter() {
                for item in items {
                    total += 1 + value_size(&item, limit);
                    if total > limit {
                        break;
                    }
                }
            }
            total
        }
        minijinja::value::ValueKind::Map => {
            let mut total = 0;
            if let Ok(keys) = v.try_iter() {
                for k in keys {
                    let item = v.get_item(&k).unwrap_or_default();
                    total += 1 + value_size(&k, limit) + value_size(&item, limit);
                    if total > limit {
                        break;
                    }
                }
            }
            total
        }
        _ => 8,
    }
}

const SECRET_OPEN: char = '\u{E000}';
const SECRET_CLOSE: char = '\u{E001}';
/// In mixed case, so that changing a marker's case (`upper`, `lower`, `title`) shows.
const SECRET_TAG: &str = "sEcReT:";

/// A secret in a template context: it renders as a marker that only the final output turns into
/// the value, so it can be placed whole but not changed.
pub struct SecretValue {
    name: String,
    value: String,
}

impl SecretValue {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        SecretValue {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({})", self.name)
    }
}

impl Object for SecretValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result
    where
        Self: Sized + 'static,
    {
        write!(f, "{SECRET_OPEN}{SECRET_TAG}{}{SECRET_CLOSE}", self.name)
    }
}

/// The secrets of a context: `env` entries that are [`SecretValue`]s, by name.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn of(ctx: &Value) -> Secrets {
        match ctx.get_attr("env") {
            Ok(env) => Self::of_env(&env),
            Err(_) => Secrets(Vec::new()),
        }
    }

    fn of_env(env: &Value) -> Secrets {
        let mut found = Vec::new();
        if let Ok(keys) = env.try_iter() {
            for k in keys {
                if let Ok(v) = env.get_item(&k) {
                    if let Some(s) = v.downcast_object_ref::<SecretValue>() {
                        found.push((s.name.clone(), s.value.clone()));
                    }
                }
            }
        }
        Secrets(found)
    }

    /// `text` with every whole marker replaced by its secret's value; a marker that a filter or
    /// an operation changed is an error naming the secret.
    fn reveal(&self, text: &str) -> Result<String, Error> {
        // The markers percent-encoded (`urlencode`) or JSON-escaped, in lower case.
        const MANGLED: &[&str] = &["%ee%80%80", "%ee%80%81", "\\ue000", "\\ue001"];
        let may_be_encoded = text.contains(['%', '\\']);
        if may_be_encoded && {
            let lower = text.to_ascii_lowercase();
            MANGLED.iter().any(|m| lower.contains(m))
        } {
            return Err(self.transformed(text));
        }
        if !text.contains([SECRET_OPEN, SECRET_CLOSE]) {
            return Ok(text.to_owned());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        loop {
            let Some(open) = rest.find([SECRET_OPEN, SECRET_CLOSE]) else {
                out.push_str(rest);
                return Ok(out);
            };
            if rest[open..].starts_with(SECRET_CLOSE) {
                break;
            }
            let after = &rest[open + SECRET_OPEN.len_utf8()..];
            let Some(close) = after.find([SECRET_OPEN, SECRET_CLOSE]) else {
                break;
            };
            if !after[close..].starts_with(SECRET_CLOSE) {
                break;
            }
            let Some(name) = after[..close].strip_prefix(SECRET_TAG) else {
                break;
            };
            let Some((_, value)) = self.0.iter().find(|(n, _)| n == name) else {
                break;
            };
            out.push_str(&rest[..open]);
            out.push_str(value);
            rest = &after[close + SECRET_CLOSE.len_utf8()..];
        }
        Err(self.transformed(text))
    }

    fn transformed(&self, text: &str) -> Error {
        let lower = text.to_lowercase();
        let named = self.0.iter().find(|(n, _)| {
            let n = n.to_lowercase();
            let reversed: String = n.chars().rev().collect();
            lower.contains(&n) || lower.contains(&reversed)
        });
        let who = match named {
            Some((n, _)) => format!("secret `env.{n}`"),
            None => "a secret".to_owned(),
        };
        Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "{who} was changed by a filter or an operation; a secret can only be placed whole, as `{{{{ env.NAME }}}}` (or joined with `~`)"
            ),
        )
    }

    fn reveal_json(&self, v: Json) -> Result<Json, Error> {
        if self.0.is_empty() {
            return Ok(v);
        }
        Ok(match v {
            Json::String(s) => Json::String(self.reveal(&s)?),
            Json::Array(items) => Json::Array(
                items
                    .into_iter()
                    .map(|i| self.reveal_json(i))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(map) => Json::Object(
                map.into_iter()
                    .map(|(k, v)| Ok((self.reveal(&k)?, self.reveal_json(v)?)))
                    .collect::<Result<_, Error>>()?,
            ),
            other => other,
        })
    }
}

/// `tojson`, which refuses secrets (their JSON form would be a changed secret).
fn tojson_filter(
    state: &minijinja::State,
    value: Value,
    indent: Option<Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, Error> {
    let out = minijinja::filters::tojson(&value, indent, kwargs)?;
    let text = out.to_string();
    if text.contains([SECRET_OPEN, SECRET_CLOSE]) {
        let secrets = state.lookup("env").map(|env| Secrets::of_env(&env));
        return Err(secrets.unwrap_or(Secrets(Vec::new())).transformed(&text));
    }
    Ok(out)
}

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
    Sql {
        dialect: Dialect,
        params: Vec<Json>,
    },
    Url {
        values: Vec<String>,
        base_first: bool,
    },
}

/// Marks where the value with an index goes in a URL's skeleton.
const SLOT_OPEN: char = '\u{E002}';
const SLOT_CLOSE: char = '\u{E003}';

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
    check_time()?;
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
    // `in_window('Sun 02:00-06:00 Europe/Prague', now)`: see `crate::window`.
    env.add_function("in_window", |spec: String, at: String| {
        let bad = |m: String| Error::new(ErrorKind::InvalidOperation, m);
        let window: crate::window::Window = spec.parse().map_err(bad)?;
        Ok(window.contains(crate::window::parse_time(&at).map_err(bad)?))
    });
    env.add_filter("tojson", tojson_filter);
    env.add_filter("join", join_filter);
    env.set_formatter(|out, state, value| {
        check_time()?;
        minijinja::escape_formatter(out, state, value)
    });
    env
}

/// `env` with fuel for the time left now: the environment, the fuel and the time.
fn fueled(env: &Environment<'static>) -> (Environment<'static>, u64, Duration) {
    let (fuel, left) = fuel_now();
    let mut env = env.clone();
    env.set_fuel(Some(fuel));
    (env, fuel, left)
}

/// Renders `src` in `env` with fuel and the output cap.
fn render_capped(env: &Environment<'static>, src: &str, ctx: &Value) -> Result<String, Error> {
    let (env, fuel, left) = fueled(env);
    let tmpl = env.template_from_str(src)?;
    let mut out = Capped {
        buf: Vec::new(),
        over: false,
    };
    let rendered = tmpl.render_captured_to(ctx, &mut out).map(drop);
    match rendered {
        Ok(()) => String::from_utf8(out.buf)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "template output is not UTF-8")),
        Err(e) => Err(limit_error(e, src, fuel, left, out.over)),
    }
}

/// A template with its literals blanked (strings emptied, numbers zeroed, padded to the same
/// width): the same syntax and variables, and nothing for the compiler's constant folding to
/// evaluate. `in_expr` for an expression rather than a template.
fn blank_literals(src: &str, in_expr: bool) -> Result<String, Error> {
    use minijinja::machinery::{tokenize, Token, WhitespaceConfig};
    let mut out = String::with_capacity(src.len());
    let mut copied = 0;
    let ws = WhitespaceConfig {
        keep_trailing_newline: true,
        ..Default::default()
    };
    for token in tokenize(src, in_expr, Default::default(), ws) {
        let (token, span) = token?;
        let blank = match token {
            Token::Str(_) | Token::String(_) => "''",
            Token::Int(_) | Token::Int128(_) => "0",
            Token::Float(_) => "0.0",
            _ => continue,
        };
        let (start, end) = (span.start_offset as usize, span.end_offset as usize);
        let Some(literal) = src.get(start..end) else {
            continue;
        };
        out.push_str(&src[copied..start]);
        out.push_str(blank);
        // Keep every line break and the width, so positions in errors stay true.
        let mut width = blank.len();
        for c in literal.chars() {
            if c == '\n' {
                out.push('\n');
                width = 0;
            } else if width > 0 {
                width -= 1;
            } else {
                out.push(' ');
            }
        }
        copied = end;
    }
    out.push_str(&src[copied..]);
    Ok(out)
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
            check_time()?;
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
            check_time()?;
            let text = if value.is_undefined() || value.is_none() {
                String::new()
            } else {
                value.to_string()
            };
            let slot = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
                Some(Capture::Url { values, base_first }) => {
                    if values.is_empty() && *base_first {
                        // The leading base is written as it is; later values are encoded.
                        *base_first = false;
                        return None;
                    }
                    values.push(text);
                    Some(values.len() - 1)
                }
                _ => None,
            });
            match slot {
                Some(i) => write(out, &format!("{SLOT_OPEN}{i}{SLOT_CLOSE}")),
                None => minijinja::escape_formatter(out, state, value),
            }
        });

        Templates { text, sql, url }
    }

    /// Checks template syntax without rendering or evaluating anything.
    pub fn check_template(&self, src: &str) -> Result<(), Error> {
        let blank = blank_literals(src, false)?;
        self.sql.template_from_str(&blank).map(|_| ())
    }

    /// Checks expression syntax without evaluating.
    pub fn check_expr(&self, src: &str) -> Result<(), Error> {
        let blank = blank_literals(src, true)?;
        self.text.compile_expression(&blank).map(|_| ())
    }

    /// Variables a template reads, as dotted paths (`steps.a.rows`).
    pub fn template_vars(&self, src: &str) -> Vec<String> {
        let Ok(blank) = blank_literals(src, false) else {
            return Vec::new();
        };
        self.sql
            .template_from_str(&blank)
            .map(|t| t.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default()
    }

    pub fn expr_vars(&self, src: &str) -> Vec<String> {
        let Ok(blank) = blank_literals(src, true) else {
            return Vec::new();
        };
        self.text
            .compile_expression(&blank)
            .map(|e| e.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default()
    }

    pub fn render(&self, src: &str, ctx: &Value) -> Result<String, Error> {
        let out = render_capped(&self.text, src, ctx)?;
        Secrets::of(ctx).reveal(&out)
    }

    /// Renders a URL: values after a leading base are percent-encoded, and in the path dots too,
    /// so that no value adds or climbs a path segment.
    pub fn render_url(&self, src: &str, ctx: &Value) -> Result<String, Error> {
        let base_first = src.trim_start().starts_with("{{");
        let (out, capture) = with_capture(
            Capture::Url {
                values: Vec::new(),
                base_first,
            },
            || render_capped(&self.url, src, ctx),
        );
        let skeleton = out?;
        let Capture::Url { values, .. } = capture else {
            unreachable!("set as Url above")
        };
        let secrets = Secrets::of(ctx);
        let skeleton = secrets.reveal(&skeleton)?;
        let query_at = skeleton.find(['?', '#']).unwrap_or(skeleton.len());
        let mut url = String::with_capacity(skeleton.len());
        let mut rest = skeleton.as_str();
        let mut at = 0;
        while let Some(open) = rest.find(SLOT_OPEN) {
            let after = &rest[open + SLOT_OPEN.len_utf8()..];
            let close = after.find(SLOT_CLOSE).unwrap_or(after.len());
            let value = after[..close]
                .parse::<usize>()
                .ok()
                .and_then(|i| values.get(i))
                .map(String::as_str)
                .unwrap_or_default();
            let value = secrets.reveal(value)?;
            url.push_str(&rest[..open]);
            if at + open < query_at {
                url.push_str(&percent_encode(&value).replace('.', "%2E"));
            } else {
                url.push_str(&percent_encode(&value));
            }
            let used = open + SLOT_OPEN.len_utf8() + close + SLOT_CLOSE.len_utf8();
            at += used.min(rest.len());
            rest = rest.get(used..).unwrap_or_default();
        }
        url.push_str(rest);
        check_dot_segments(&url)?;
        Ok(url)
    }

    pub fn render_sql(&self, src: &str, ctx: &Value, dialect: Dialect) -> Result<BoundSql, Error> {
        let (out, capture) = with_capture(
            Capture::Sql {
                dialect,
                params: Vec::new(),
            },
            || render_capped(&self.sql, src, ctx),
        );
        let sql = out?;
        let Capture::Sql { params, .. } = capture else {
            unreachable!("set as Sql above")
        };
        let secrets = Secrets::of(ctx);
        Ok(BoundSql {
            sql: secrets.reveal(sql.trim())?,
            params: params
                .into_iter()
                .map(|p| secrets.reveal_json(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Evaluates an expression with fuel; a value over [`MAX_OUTPUT`] is an error. Secrets in
    /// the value are still markers (see [`Templates::eval_json`]).
    pub fn eval(&self, expr: &str, ctx: &Value) -> Result<Value, Error> {
        let (env, fuel, left) = fueled(&self.text);
        let value = env
            .compile_expression(expr)?
            .eval(ctx)
            .map_err(|e| limit_error(e, expr, fuel, left, false))?;
        if value_size(&value, MAX_OUTPUT) > MAX_OUTPUT {
            return Err(too_large(expr));
        }
        Ok(value)
    }

    /// Evaluates an expression to JSON, with secrets placed.
    pub fn eval_json(&self, expr: &str, ctx: &Value) -> Result<Json, Error> {
        let v = to_json(&self.eval(expr, ctx)?);
        Secrets::of(ctx).reveal_json(v)
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
            Some(expr) => self.eval_json(expr, ctx),
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

/// A URL whose path has a `.` or `..` segment (which HTTP clients resolve, `%2E` included) is
/// refused: a value must not move the request to another path.
fn check_dot_segments(url: &str) -> Result<(), Error> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    let path_end = url.find(['?', '#']).unwrap_or(url.len()).max(path_start);
    for segment in url[path_start..path_end].split('/') {
        let lower = segment.to_ascii_lowercase();
        let plain = lower.replace("%2e", ".");
        if lower.contains("%2e") && (plain == "." || plain == "..") {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "a value makes the URL path segment `{segment}`, which would move the request to another path"
                ),
            ));
        }
    }
    Ok(())
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

/// Builds the template context from JSON, with `secrets` (name and value) added under `env` as
/// [`SecretValue`]s.
pub fn context_with_secrets(ctx: &Json, secrets: &BTreeMap<String, String>) -> Value {
    if secrets.is_empty() {
        return context(ctx);
    }
    let mut top: BTreeMap<String, Value> = match ctx {
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let mut env: BTreeMap<String, Value> = match ctx.get("env") {
        Some(Json::Object(map)) => map
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect(),
        _ => BTreeMap::new(),
    };
    for (name, value) in secrets {
        env.insert(
            name.clone(),
            Value::from_object(SecretValue::new(name.clone(), value.clone())),
        );
    }
    top.insert("env".into(), Value::from(env));
    Value::from(top)
}

pub use crate::secrets::percent_encode;

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

#[cfg(test)]
mod limit_tests {
    use super::*;
    use serde_json::json;

    fn secret_ctx() -> Value {
        let secrets = BTreeMap::from([("TOKEN".to_owned(), "abc+/=defgh".to_owned())]);
        context_with_secrets(&json!({"env": {"REGION": "eu-1"}, "params": {}}), &secrets)
    }

    #[test]
    fn nested_loops_stop_within_the_time_left() {
        let t = Templates::new();
        let src =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let started = Instant::now();
        let e = with_deadline(started + Duration::from_millis(300), || {
            t.render(src, &context(&json!({})))
        })
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        let m = message(&e);
        assert!(
            m.contains("did not finish within") && m.contains("range(100000)"),
            "{m}"
        );
        // Expensive single instructions in a loop stop at the deadline too.
        let src = "{% for i in range(100000) %}{% set x = range(1000) | join %}{% endfor %}";
        let started = Instant::now();
        let e = with_deadline(started + Duration::from_millis(300), || {
            t.render(src, &context(&json!({})))
        })
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert!(
            message(&e).contains("did not finish within"),
            "{}",
            message(&e)
        );
    }

    #[test]
    fn output_and_values_are_capped() {
        let t = Templates::new();
        let ctx = context(&json!({}));
        for src in [
            "{{ 'x' * 100000000 }}",
            "{{ range(100000) | join('----------') }}",
            "{{ 'x' * 10**9 }}",
        ] {
            assert!(t.render(src, &ctx).is_err(), "{src}");
        }
        let m = message(&t.render("{{ 'x' * 2000000 }}", &ctx).unwrap_err());
        assert!(m.contains("1024 KiB") && m.contains("'x' * 2000000"), "{m}");
        let m = message(&t.eval("'x' * 2000000", &ctx).unwrap_err());
        assert!(m.contains("1024 KiB"), "{m}");
        assert!(t
            .render_scalar("{{ ['ab' * 600000, 'cd' * 600000] }}", &ctx)
            .is_err());
        assert_eq!(t.render("{{ 'x' * 3 }}", &ctx).unwrap(), "xxx");
    }

    #[test]
    fn checking_evaluates_no_constant() {
        let t = Templates::new();
        let src =
            "{{ params.a ~ 'x' * 100000000 }}{% if 'y' * 100000000 %}{{ 1e300 * 10 }}{% endif %}";
        let started = Instant::now();
        t.check_template(src).unwrap();
        assert_eq!(t.template_vars(src), vec!["params.a"]);
        t.check_expr("'x' * 100000000 ~ steps.a.rows").unwrap();
        assert_eq!(
            t.expr_vars("'x' * 100000000 ~ steps.a.rows"),
            vec!["steps.a.rows"]
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Syntax errors keep their lines.
        let e = t
            .check_template("a\n{{ 'x' *\n 100 }}\n{{ x y }}")
            .unwrap_err();
        assert_eq!(e.line(), Some(4), "{e:?}");
    }

    #[test]
    fn url_path_values_cannot_climb() {
        let t = Templates::new();
        let ctx = context(&json!({"x": "..", "d": "a.b", "one": ".", "v": "1.5"}));
        let m = message(
            &t.render_url("http://h/users/{{ x }}/profile", &ctx)
                .unwrap_err(),
        );
        assert!(m.contains("path segment"), "{m}");
        assert!(t
            .render_url("http://h/users/{{ one }}/profile", &ctx)
            .is_err());
        assert_eq!(
            t.render_url("http://h/users/{{ d }}/x?v={{ v }}", &ctx)
                .unwrap(),
            "http://h/users/a%2Eb/x?v=1.5"
        );
        assert_eq!(
            t.render_url("http://h/users/{{ x }}x/profile", &ctx)
                .unwrap(),
            "http://h/users/%2E%2Ex/profile"
        );
        assert_eq!(
            t.render_url("http://h/a/../b", &ctx).unwrap(),
            "http://h/a/../b"
        );
    }

    #[test]
    fn secrets_are_placed_whole_and_never_changed() {
        let t = Templates::new();
        let ctx = secret_ctx();
        assert_eq!(
            t.render("Bearer {{ env.TOKEN }}", &ctx).unwrap(),
            "Bearer abc+/=defgh"
        );
        assert_eq!(
            t.render("{{ 'Bearer ' ~ env.TOKEN }}", &ctx).unwrap(),
            "Bearer abc+/=defgh"
        );
        assert_eq!(
            t.render_scalar("{{ env.TOKEN }}", &ctx).unwrap(),
            json!("abc+/=defgh")
        );
        assert_eq!(t.render("{{ env.REGION | upper }}", &ctx).unwrap(), "EU-1");
        assert_eq!(
            t.render_url("http://h/x?t={{ env.TOKEN }}", &ctx).unwrap(),
            "http://h/x?t=abc%2B%2F%3Ddefgh"
        );
        let q = t
            .render_sql("SELECT {{ env.TOKEN }}", &ctx, Dialect::Sqlite)
            .unwrap();
        assert_eq!(q.params, vec![json!("abc+/=defgh")]);
        for src in [
            "{{ env.TOKEN | upper }}",
            "{{ env.TOKEN | lower }}",
            "{{ (env.TOKEN ~ '') | reverse }}",
            "{{ (env.TOKEN ~ '')[1:] }}",
            "{{ (env.TOKEN ~ '')[:-1] }}",
            "{{ env.TOKEN | tojson }}",
            "{{ {'t': env.TOKEN} | tojson }}",
            "{{ env.TOKEN | urlencode }}",
            "{{ (env.TOKEN ~ '') | title }}",
        ] {
            let e = t.render(src, &ctx).expect_err(src);
            let m = message(&e);
            assert!(
                m.contains("env.TOKEN") && !m.contains("defgh"),
                "{src}: {m}"
            );
        }
        for src in [
            "{{ env.TOKEN[0] }}",
            "{{ env.TOKEN | length }}",
            "{{ env.TOKEN[1:] }}",
        ] {
            if let Ok(out) = t.render(src, &ctx) {
                assert!(!out.contains("abc") && !out.contains('a'), "{src}: {out}");
            }
        }
    }
}
