//! Properties of the code that takes input from outside: the playbook loader, the SQL binder, the
//! alert matchers and the webhook parser. Each runs a fixed number of cases from a fixed seed
//! (no files of failed cases are written), so the suite sees the same inputs every time, and
//! each case must end, with a value or an error, well within a bound.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use proptest::{
    prelude::*,
    test_runner::{Config, RngSeed},
};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

use crate::{
    playbook::{compile_source, CompileEnv, LabelMatcher},
    server::receiver::{self, Notification},
    template::{context, Dialect, Templates},
};

/// A case of any property takes at most this long (a generous bound: they take milliseconds).
const CASE_BOUND: Duration = Duration::from_secs(2);

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0072_756e_626f_6f6b),
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

fn bounded<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < CASE_BOUND, "{what} took {took:?}");
    out
}

// ---------------------------------------------------------------------------------------------
// The playbook loader.

/// Text that looks like YAML more often than random text would: indentation, keys, flow
/// collections, anchors, aliases, tags, quotes and multi-byte characters.
fn yamlish_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just("- ".to_owned()),
        Just(": ".to_owned()),
        Just("name".to_owned()),
        Just("steps".to_owned()),
        Just("id".to_owned()),
        Just("sql".to_owned()),
        Just("when".to_owned()),
        Just("on".to_owned()),
        Just("alerts".to_owned()),
        Just("matchers".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(", ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("!!str ".to_owned()),
        Just("!tag ".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("|\n".to_owned()),
        Just("# c\n".to_owned()),
        Just("---\n".to_owned()),
        Just("{{ ".to_owned()),
        Just(" }}".to_owned()),
        Just("\t".to_owned()),
        Just("é".to_owned()),
        Just("\u{feff}".to_owned()),
        "[a-z0-9_]{1,8}",
        any::<String>(),
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

/// The file's last position a diagnostic may name: one past its last line.
fn line_count(text: &str) -> usize {
    text.lines().count() + 1
}

fn check_loaded(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new("runbooks/p.yaml");
    let env = CompileEnv::default();
    let result = bounded("compiling a playbook", || compile_source(path, text, &env));
    if let Err(diags) = result {
        prop_assert!(!diags.is_empty(), "an error names at least one problem");
        for d in diags {
            prop_assert_eq!(&d.path, path);
            prop_assert!(
                d.line >= 1 && d.line <= line_count(text) && d.col >= 1,
                "{} points outside the file of {} lines",
                d,
                line_count(text)
            );
            prop_assert!(d.to_string().starts_with("runbooks/p.yaml:"), "{}", d);
            prop_assert!(!d.message.trim().is_empty(), "{}", d);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_text_loads_or_fails_at_a_place_in_the_file(text in yamlish_text()) {
        check_loaded(&text)?;
    }
}

/// A leaf a playbook field might hold, right or wrong.
fn leaf() -> impl Strategy<Value = Yaml> {
    prop_oneof![
        Just(Yaml::Null),
        any::<bool>().prop_map(Yaml::Bool),
        any::<i64>().prop_map(|n| Yaml::Number(n.into())),
        any::<f64>().prop_map(|n| Yaml::Number(n.into())),
        prop_oneof![
            Just("1ms"),
            Just("5m"),
            Just("-1s"),
            Just("99999999999999999999h"),
            Just("SELECT 1"),
            Just("SELECT {{ params.x }}"),
            Just("{{ steps.a.rows | length > 0 }}"),
            Just("{{"),
            Just("{% for %}"),
            Just("alertname=~\"(\""),
            Just("env!=\"prod\""),
            Just("0 0 7 * * *"),
            Just("not a cron"),
            Just("echo"),
            Just("a"),
            Just("b"),
            Just("resume"),
            Just("string"),
            Just("integer"),
        ]
        .prop_map(|s| Yaml::String(s.to_owned())),
        any::<String>().prop_map(Yaml::String),
    ]
}

fn field(keys: &'static [&'static str], value: BoxedStrategy<Yaml>) -> BoxedStrategy<Yaml> {
    prop::collection::vec((prop::sample::select(keys), value), 0..6)
        .prop_map(|kv| {
            Yaml::Mapping(
                kv.into_iter()
                    .map(|(k, v)| (Yaml::String(k.to_owned()), v))
                    .collect(),
            )
        })
        .boxed()
}

/// Any YAML tree, small.
fn tree() -> BoxedStrategy<Yaml> {
    leaf()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Yaml::Sequence),
                prop::collection::vec(("[a-z_]{1,6}", inner), 0..4).prop_map(|kv| {
                    Yaml::Mapping(kv.into_iter().map(|(k, v)| (Yaml::String(k), v)).collect())
                }),
            ]
        })
        .boxed()
}

const STEP_KEYS: &[&str] = &[
    "id",
    "name",
    "sql",
    "datasource",
    "wait",
    "when",
    "for_each",
    "retry",
    "until",
    "shell",
    "http",
    "notify",
    "assert",
    "playbook",
    "approve",
    "runtime",
    "continue_on_error",
    "timeout",
    "tcp_check",
    "promql",
    "kafka",
    "params",
    "attempts",
    "delay",
    "every",
    "max",
];

/// A playbook built from the language's own keys with values of any shape.
fn structured_playbook() -> impl Strategy<Value = Yaml> {
    let value = prop_oneof![3 => leaf().boxed(), 1 => tree()].boxed();
    let step = field(STEP_KEYS, value.clone());
    let alerts = prop::collection::vec(
        prop_oneof![
            field(&["alertname", "severity", "matchers"], leaf().boxed()),
            prop::collection::vec(leaf(), 0..3)
                .prop_map(|m| {
                    let mut map = serde_yaml::Mapping::new();
                    map.insert("matchers".into(), Yaml::Sequence(m));
                    Yaml::Mapping(map)
                })
                .boxed(),
        ],
        0..3,
    )
    .prop_map(Yaml::Sequence);
    let on = (alerts, value.clone(), value.clone()).prop_map(|(a, s, r)| {
        let mut map = serde_yaml::Mapping::new();
        map.insert("alerts".into(), a);
        map.insert("schedule".into(), s);
        map.insert("resolved".into(), r);
        Yaml::Mapping(map)
    });
    (
        leaf(),
        prop::collection::vec(step.clone(), 0..4),
        prop::collection::vec(step, 0..2),
        prop::option::of(on),
        prop::option::of(field(
            &["concurrency", "cooldown", "max_per_hour"],
            value.clone(),
        )),
        prop::option::of(field(
            &["type", "default", "description", "enum"],
            value.clone(),
        )),
        prop::option::of(value),
    )
        .prop_map(|(name, steps, on_failure, on, guard, param, timeout)| {
            let mut map = serde_yaml::Mapping::new();
            map.insert("name".into(), name);
            map.insert("steps".into(), Yaml::Sequence(steps));
            if !on_failure.is_empty() {
                map.insert("on_failure".into(), Yaml::Sequence(on_failure));
            }
            if let Some(on) = on {
                map.insert("on".into(), on);
            }
            if let Some(g) = guard {
                map.insert("guard".into(), g);
            }
            if let Some(p) = param {
                let mut params = serde_yaml::Mapping::new();
                params.insert("x".into(), p);
                map.insert("params".into(), Yaml::Mapping(params));
            }
            if let Some(t) = timeout {
                map.insert("timeout".into(), t);
            }
            Yaml::Mapping(map)
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_structured_playbook_compiles_or_fails_at_a_place_in_the_file(pb in structured_playbook()) {
        let text = serde_yaml::to_string(&pb).expect("a YAML value serializes");
        check_loaded(&text)?;
    }
}

/// Inputs built to cost a parser unbounded work end with an error, quickly.
#[test]
fn expansion_and_nesting_bombs_end_with_an_error() {
    // Nine levels of nine aliases each: 9^9 nodes if expanded.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        laughs.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            [prev.as_str(); 9].join(", ")
        ));
    }
    laughs.push_str("name: laughs\nsteps: []\n");
    let deep_flow = format!(
        "name: deep\nsteps: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // Indentation makes this text grow with the square of its depth: 1,000 levels are 1 MB.
    let deep_block: String = (0..1_000)
        .map(|i| format!("{}- \n", " ".repeat(i * 2)))
        .collect();
    let long_line = format!("name: {}\nsteps: []\n", "x".repeat(512 << 10));
    for (what, text) in [
        ("aliases", laughs),
        ("nested flow sequences", deep_flow),
        ("nested block sequences", deep_block),
    ] {
        let diags = bounded(what, || {
            compile_source(Path::new("p.yaml"), &text, &CompileEnv::default())
        })
        .expect_err(what);
        assert!(diags.iter().all(|d| d.line >= 1), "{what}: {diags:?}");
        if what == "nested flow sequences" {
            assert_eq!((diags[0].line, diags[0].col), (2, 8 + 64), "{diags:?}");
            assert!(
                diags[0]
                    .message
                    .contains("deeper than the limit of 64 levels"),
                "{diags:?}"
            );
        }
    }
    // Long is not deep: a 512 KiB scalar is read in linear time (and fails for its name).
    let _ = bounded("a long scalar", || {
        compile_source(Path::new("p.yaml"), &long_line, &CompileEnv::default())
    });
}

// ---------------------------------------------------------------------------------------------
// The SQL binder.

/// The SQL statements a playbook may write around a value.
const SQL_SHAPES: &[&str] = &[
    "SELECT {{ v }}",
    "SELECT * FROM t WHERE a = {{ v }} AND b = '{{ v }}'",
    "SELECT {{ v | safe }} -- {{ v }}",
    "SELECT {{ v | string }}, {{ v ~ 'x' }}, {{ v | tojson }}",
    "UPDATE t SET a = {{ v }} WHERE id IN ({{ v }}, {{ v }}) /* {{ v }} */",
    "SELECT {{ v | upper }} FROM {{ ident('t') }} WHERE {{ age('at') }} > {{ ago('1h') }}",
    "SELECT {% for x in [1, 2] %}{{ v }}{% if not loop.last %}, {% endif %}{% endfor %}",
];

/// A value as alert labels and parameters carry them: any text, above all SQL-looking text.
fn sql_value() -> impl Strategy<Value = Json> {
    let text = prop_oneof![
        any::<String>(),
        Just("1'; DROP TABLE command_queue; --".to_owned()),
        Just("$1".to_owned()),
        Just("?1".to_owned()),
        Just("{{ v }}".to_owned()),
        Just("{% raw %}".to_owned()),
        Just("\\'".to_owned()),
        "[a-z' ;\\-$?()*/]{0,40}",
    ];
    prop_oneof![
        4 => text.prop_map(Json::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<bool>().prop_map(|b| json!(b)),
        1 => prop::collection::vec(any::<String>(), 0..3).prop_map(|v| json!(v)),
    ]
}

/// The marker the reference rendering binds, which the SQL text never holds.
const REFERENCE: &str = "reference value";

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn a_value_is_always_a_bound_parameter_and_never_sql_text(
        shape in prop::sample::select(SQL_SHAPES),
        value in sql_value(),
        postgres in any::<bool>(),
    ) {
        let t = Templates::new();
        let dialect = if postgres { Dialect::Postgres } else { Dialect::Sqlite };
        let reference = t
            .render_sql(shape, &context(&json!({ "v": REFERENCE })), dialect)
            .expect("the shapes render");
        let bound = bounded("rendering SQL", || {
            t.render_sql(shape, &context(&json!({ "v": value })), dialect)
        })
        .expect("the shapes render any value");
        prop_assert_eq!(
            &bound.sql,
            &reference.sql,
            "the SQL text does not depend on the value"
        );
        prop_assert!(!reference.sql.contains(REFERENCE), "{}", reference.sql);
        prop_assert_eq!(bound.params.len(), reference.params.len());
        // Every placeholder holds the value itself, or a value computed from it alone.
        let text = match &value {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.len() >= 3 && !reference.sql.contains(&text) {
            prop_assert!(!bound.sql.contains(&text), "{} is in {}", text, bound.sql);
        }
        if shape == "SELECT {{ v }}" {
            prop_assert_eq!(&bound.params, &vec![value.clone()]);
        }
    }

    #[test]
    fn an_identifier_from_a_value_is_checked_or_refused(
        value in prop_oneof!["[a-z_][a-z0-9_.]{0,12}", any::<String>()],
    ) {
        let t = Templates::new();
        let ctx = context(&json!({ "v": value }));
        for shape in ["SELECT * FROM {{ ident(v) }}", "SELECT {{ age(v) }}"] {
            match bounded("rendering SQL", || t.render_sql(shape, &ctx, Dialect::Postgres)) {
                Ok(bound) => {
                    prop_assert!(crate::template::is_identifier(&value), "{:?} spliced into {}", value, bound.sql);
                    prop_assert!(bound.params.is_empty());
                }
                Err(_) => prop_assert!(!crate::template::is_identifier(&value)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The alert matchers.

/// Alertmanager's matcher semantics, written out plainly: a missing label is the empty string,
/// and a regex must match the whole value (`\A` and `\z` around the pattern as a group).
fn reference_matches(name: &str, op: &str, value: &str, labels: &BTreeMap<String, String>) -> bool {
    let actual = labels.get(name).map(String::as_str).unwrap_or("");
    let whole = || {
        regex::Regex::new(&format!(r"\A(?:{value})\z"))
            .expect("the generated patterns compile")
            .is_match(actual)
    };
    match op {
        "=" => actual == value,
        "!=" => actual != value,
        "=~" => whole(),
        "!~" => !whole(),
        _ => unreachable!("the generated operators"),
    }
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-c]{1,4}",
        Just("prod".to_owned()),
        Just("api-server".to_owned()),
        any::<String>(),
    ]
}

/// Patterns built from pieces that compile: literals, classes, alternation, repetition.
fn pattern() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-c]{1,3}",
        Just(".*".to_owned()),
        Just(".+".to_owned()),
        Just("[ab]".to_owned()),
        Just("a?".to_owned()),
        Just("prod".to_owned()),
        Just("api-.*".to_owned()),
        Just("é".to_owned()),
    ];
    prop::collection::vec(
        prop::collection::vec(piece, 1..3).prop_map(|p| p.concat()),
        1..3,
    )
    .prop_map(|alts| alts.join("|"))
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn matchers_agree_with_a_plain_reference(
        name in prop_oneof![Just("env".to_owned()), Just("job".to_owned()), "[a-z_][a-z0-9_]{0,6}"],
        op in prop::sample::select(&["=", "!=", "=~", "!~"][..]),
        literal in "[a-z0-9 .*|+?-]{0,8}",
        pat in pattern(),
        quoted in any::<bool>(),
        labels in prop::collection::btree_map(
            prop_oneof![Just("env".to_owned()), Just("job".to_owned()), "[a-z]{1,3}"],
            label_value(),
            0..4,
        ),
    ) {
        let value = if op.contains('~') { pat } else { literal.trim().to_owned() };
        let text = if quoted {
            format!("{name}{op}\"{value}\"")
        } else {
            format!("{name}{op}{value}")
        };
        let m = LabelMatcher::parse(&text).expect("a well-formed matcher parses");
        prop_assert_eq!(
            m.matches(&labels),
            reference_matches(&name, op, &value, &labels),
            "{} on {:?}",
            text,
            labels
        );
    }

    #[test]
    fn any_matcher_text_parses_or_is_refused(
        text in prop_oneof![
            any::<String>(),
            "[a-z_]{0,4}(=|!=|=~|!~|<|==)?\"?[a-z()\\[\\]*+?{}|\\\\.^$\"]{0,12}",
            // Nested counted repetitions: the regex crate refuses what passes its size limit.
            "a=~\"(a{1,100}){1,100}(b{0,99}){1,99}\"",
        ],
        labels in prop::collection::btree_map("[a-z]{1,3}", label_value(), 0..4),
    ) {
        if let Ok(m) = bounded("parsing a matcher", || LabelMatcher::parse(&text)) {
            bounded("matching", || m.matches(&labels));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook parser.

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        prop_oneof![
            Just("4"),
            Just("firing"),
            Just("resolved"),
            Just("2024-01-01T00:00:00Z"),
            Just("0001-01-01T00:00:00Z"),
        ]
        .prop_map(|s| json!(s)),
        any::<String>().prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        let keys = prop_oneof![
            prop::sample::select(
                &[
                    "version",
                    "status",
                    "alerts",
                    "labels",
                    "annotations",
                    "startsAt",
                    "endsAt",
                    "fingerprint",
                    "groupKey",
                    "receiver",
                    "commonLabels",
                    "externalURL",
                    "truncatedAlerts",
                    "generatorURL",
                ][..]
            )
            .prop_map(str::to_owned),
            "[a-z]{1,5}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", any::<String>(), 0..4)
}

fn timestamp() -> impl Strategy<Value = chrono::DateTime<chrono::Utc>> {
    // Year 1 to 9999, to the nanosecond.
    (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(s, ns)| chrono::DateTime::from_timestamp(s, ns).expect("within chrono's range"))
}

fn notification() -> impl Strategy<Value = Json> {
    let status = prop::sample::select(&["firing", "resolved"][..]);
    let alert = (
        status,
        labels(),
        labels(),
        timestamp(),
        prop::option::of(timestamp()),
        any::<String>(),
        any::<String>(),
    )
        .prop_map(|(status, labels, annotations, starts, ends, url, fp)| {
            json!({
                "status": status, "labels": labels, "annotations": annotations,
                "startsAt": starts, "endsAt": ends, "generatorURL": url, "fingerprint": fp,
            })
        });
    (
        prop::sample::select(&["firing", "resolved"][..]),
        prop::collection::vec(alert, 0..4),
        labels(),
        any::<String>(),
        any::<u64>(),
    )
        .prop_map(|(status, alerts, common, key, truncated)| {
            json!({
                "version": "4", "groupKey": key, "truncatedAlerts": truncated, "status": status,
                "receiver": "runbook", "groupLabels": common, "commonLabels": common,
                "commonAnnotations": {}, "externalURL": "http://am:9093", "alerts": alerts,
            })
        })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn any_bytes_parse_or_are_refused_with_a_message(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(message) = bounded("parsing bytes", || receiver::parse(&body)) {
            prop_assert!(message.starts_with("webhook body"), "{}", message);
        }
    }

    #[test]
    fn any_json_parses_or_is_refused_naming_the_field(value in any_json()) {
        let body = serde_json::to_vec(&value).expect("JSON serializes");
        if let Err(message) = bounded("parsing JSON", || receiver::parse(&body)) {
            prop_assert!(message.starts_with("webhook body"), "{}", message);
        }
    }

    #[test]
    fn a_valid_payload_round_trips(payload in notification()) {
        let body = serde_json::to_vec(&payload).expect("JSON serializes");
        let parsed: Notification = receiver::parse(&body).expect("a valid payload parses");
        let again = serde_json::to_value(&parsed).expect("a notification serializes");
        let reparsed = receiver::parse(&serde_json::to_vec(&again).expect("serializes"))
            .expect("what the parser gave back parses");
        prop_assert_eq!(serde_json::to_value(&reparsed).expect("serializes"), again.clone());
        prop_assert_eq!(&again, &payload);
    }
}

/// A body nested past any sensible depth is parsed or refused in linear time: nested where a
/// field is expected it is refused at once, and an unknown field is skipped without recursion.
#[test]
fn a_deeply_nested_body_ends_quickly() {
    let deep = format!("{}1{}", "[".repeat(200_000), "]".repeat(200_000));
    let in_labels = format!(
        "{{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{{\"labels\":{{\"a\":{deep}}}}}]}}"
    );
    let message = bounded("parsing a nested label", || {
        receiver::parse(in_labels.as_bytes())
    })
    .expect_err("a label is a string");
    assert!(
        message.starts_with("webhook body at `alerts[0].labels.a`"),
        "{message}"
    );
    let unknown =
        format!("{{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[],\"extra\":{deep}}}");
    let _ = bounded("parsing a nested unknown field", || {
        receiver::parse(unknown.as_bytes())
    });
}
