//! The pure compile phase: raw YAML mirror in, typed [`Playbook`] or every problem out.
//!
//! Reads nothing but the text it is given and touches no network; `runbook validate` is this
//! function over a folder. Checks: shape (serde), names, step ids, exactly one kind per step,
//! parameter types and defaults, cron, matchers, template syntax, and that every template reads
//! only variables that exist at that point (declared params, earlier steps).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    str::FromStr,
};

use regex::Regex;
use serde_json::Value as Json;

use super::{
    locate::Locations, raw::RawPlaybook, AlertMatcher, ForEach, Guard, LabelMatcher, ParamSpec,
    ParamType, Playbook, PlaybookCall, Retry, Schedule, Step, Triggers, Until,
    DEFAULT_PLAYBOOK_TIMEOUT, DEFAULT_STEP_TIMEOUT,
};
use crate::{
    diagnostics::Diagnostic,
    duration::Dur,
    steps::{Flavour, RawStep, StepKind},
    template::Templates,
};

/// What compile may check names against: the config's datasources and notify channels. Empty
/// sets mean "the config names none". (The shell allowlist is checked when a shell step runs.)
#[derive(Debug, Default, Clone)]
pub struct CompileEnv {
    pub datasources: BTreeSet<String>,
    pub channels: BTreeSet<String>,
}

/// Template roots a playbook may read.
const ROOTS: &[&str] = &[
    "alert", "alerts", "params", "steps", "runtime", "run", "now", "env", "loop",
];

struct Compiler<'a> {
    path: &'a Path,
    loc: Locations,
    diags: Vec<Diagnostic>,
    templates: Templates,
    env: &'a CompileEnv,
}

impl Compiler<'_> {
    fn err(&mut self, at: &str, message: impl Into<String>) {
        let pos = self.loc.at(at);
        self.diags.push(Diagnostic::new(self.path, pos, message));
    }
}

/// Variables visible to one template.
struct Scope<'s> {
    params: &'s BTreeSet<String>,
    /// Steps that have run (or may have run) before this one.
    earlier: &'s BTreeSet<String>,
    all_steps: &'s BTreeSet<String>,
    this_step: Option<&'s str>,
    /// `until` may read the step's own result.
    self_visible: bool,
    item: bool,
    failed_step: bool,
}

fn serde_message(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    let re = Regex::new(r" at line \d+ column \d+$").expect("static regex");
    re.replace(&text, "").into_owned()
}

/// Compiles one playbook file's text. On success also returns the `playbook:` calls it makes,
/// which [`super::load`] checks once every file is known.
pub fn compile_source(
    path: &Path,
    text: &str,
    env: &CompileEnv,
) -> Result<(Playbook, Vec<PlaybookCall>), Vec<Diagnostic>> {
    let raw: RawPlaybook = match serde_yaml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let pos = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            return Err(vec![Diagnostic::new(path, pos, serde_message(&e))]);
        }
    };
    let mut c = Compiler {
        path,
        loc: Locations::index(text),
        diags: Vec::new(),
        templates: Templates::new(),
        env,
    };
    let (playbook, calls) = compile(&mut c, raw);
    if c.diags.is_empty() {
        Ok((playbook, calls))
    } else {
        Err(c.diags)
    }
}

fn compile(c: &mut Compiler, raw: RawPlaybook) -> (Playbook, Vec<PlaybookCall>) {
    let name_re = Regex::new(r"^[a-z0-9][a-z0-9_-]*$").expect("static regex");
    if !name_re.is_match(&raw.name) {
        c.err(
            "name",
            format!(
                "playbook name `{}` must be lowercase letters, digits, `-` or `_`",
                raw.name
            ),
        );
    }
    if let Some(stem) = c.path.file_stem().and_then(|s| s.to_str()) {
        if stem != raw.name {
            c.err(
                "name",
                format!(
                    "playbook name `{}` must match its file name `{stem}`",
                    raw.name
                ),
            );
        }
    }

    // Parameters.
    let mut params = Vec::new();
    for (name, p) in &raw.params {
        let at = format!("params.{name}");
        if !crate::template::is_identifier(name) || name.contains('.') {
            c.err(
                &at,
                format!("parameter name `{name}` must be letters, digits and `_`"),
            );
        }
        let default = match &p.default {
            None => None,
            Some(v) => match coerce_yaml(p.ty, v) {
                Ok(j) => Some(j),
                Err(e) => {
                    c.err(
                        &format!("{at}.default"),
                        format!("default of `{name}`: {e}"),
                    );
                    None
                }
            },
        };
        params.push(ParamSpec {
            name: name.clone(),
            ty: p.ty,
            default,
            description: p.description.clone(),
        });
    }
    let param_names: BTreeSet<String> = raw.params.keys().cloned().collect();

    // Triggers.
    let mut triggers = Triggers {
        resolved: raw.triggers.resolved.unwrap_or_default(),
        ..Default::default()
    };
    for (i, m) in raw.triggers.alerts.iter().enumerate() {
        let at = format!("on.alerts[{i}]");
        let mut matchers: Vec<LabelMatcher> = Vec::new();
        for (label, value) in &m.labels {
            if !crate::template::is_identifier(label) || label.contains('.') {
                c.err(
                    &format!("{at}.{label}"),
                    format!("`{label}` is not a label name"),
                );
            }
            matchers.push(LabelMatcher::Eq(label.clone(), value.clone()));
        }
        for (j, text) in m.matchers.iter().enumerate() {
            match LabelMatcher::parse(text) {
                Ok(mm) => matchers.push(mm),
                Err(e) => c.err(&format!("{at}.matchers[{j}]"), e),
            }
        }
        if m.labels.is_empty() && m.matchers.is_empty() {
            c.err(&at, "an alert entry needs at least one label or matcher");
        }
        triggers.alerts.push(AlertMatcher { matchers });
    }
    if let Some(expr) = &raw.triggers.schedule {
        match cron::Schedule::from_str(expr) {
            Ok(cron) => triggers.schedule = Some(Schedule { expr: expr.clone(), cron }),
            Err(e) => c.err(
                "on.schedule",
                format!("bad cron expression `{expr}`: {e} (six or seven fields, seconds first: `0 0 3 * * SUN`)"),
            ),
        }
    }
    if let Some(tz) = &raw.triggers.timezone {
        if !tz.eq_ignore_ascii_case("utc") {
            c.err(
                "on.timezone",
                format!("timezone `{tz}` is not supported; schedules run in UTC"),
            );
        }
    }

    let guard = match &raw.guard {
        None => Guard::default(),
        Some(g) => {
            if g.concurrency == Some(0) {
                c.err("guard.concurrency", "concurrency must be at least 1");
            }
            Guard {
                concurrency: g.concurrency.unwrap_or(1).max(1),
                cooldown: g.cooldown,
                max_runs_per_hour: g.max_runs_per_hour,
            }
        }
    };

    if raw.steps.is_empty() {
        c.err("steps", "a playbook needs at least one step");
    }

    // Step ids across steps and on_failure.
    let id_re = Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("static regex");
    let mut all_steps = BTreeSet::new();
    for (section, steps) in [("steps", &raw.steps), ("on_failure", &raw.on_failure)] {
        for (i, s) in steps.iter().enumerate() {
            let at = format!("{section}[{i}].id");
            if !id_re.is_match(&s.id) {
                c.err(
                    &at,
                    format!(
                        "step id `{}` must be letters, digits and `_` (it is read as steps.{})",
                        s.id, s.id
                    ),
                );
            }
            if !all_steps.insert(s.id.clone()) {
                c.err(&at, format!("duplicate step id `{}`", s.id));
            }
        }
    }

    let mut calls = Vec::new();
    let mut steps = Vec::new();
    let mut earlier = BTreeSet::new();
    for (i, s) in raw.steps.into_iter().enumerate() {
        let id = s.id.clone();
        if let Some(step) = compile_step(
            c,
            &format!("steps[{i}]"),
            s,
            &param_names,
            &earlier,
            &all_steps,
            false,
            &mut calls,
        ) {
            steps.push(step);
        }
        earlier.insert(id);
    }
    let mut on_failure = Vec::new();
    for (i, s) in raw.on_failure.into_iter().enumerate() {
        let id = s.id.clone();
        if let Some(step) = compile_step(
            c,
            &format!("on_failure[{i}]"),
            s,
            &param_names,
            &earlier,
            &all_steps,
            true,
            &mut calls,
        ) {
            on_failure.push(step);
        }
        earlier.insert(id);
    }

    let playbook = Playbook {
        name: raw.name,
        description: raw.description,
        path: c.path.to_owned(),
        triggers,
        params,
        guard,
        timeout: raw.timeout.unwrap_or(DEFAULT_PLAYBOOK_TIMEOUT),
        on_interrupt: raw.on_interrupt.unwrap_or(super::OnInterrupt::Interrupted),
        steps,
        on_failure,
    };
    (playbook, calls)
}

#[allow(clippy::too_many_arguments)]
fn compile_step(
    c: &mut Compiler,
    at: &str,
    s: RawStep,
    params: &BTreeSet<String>,
    earlier: &BTreeSet<String>,
    all_steps: &BTreeSet<String>,
    in_on_failure: bool,
    calls: &mut Vec<PlaybookCall>,
) -> Option<Step> {
    let this_id = s.id.clone();
    let base = Scope {
        params,
        earlier,
        all_steps,
        this_step: Some(&this_id),
        self_visible: false,
        item: s.for_each.is_some(),
        failed_step: in_on_failure,
    };
    if let Some(w) = &s.when {
        check(
            c,
            &format!("{at}.when"),
            w,
            Flavour::Expr,
            &Scope {
                item: false,
                ..base
            },
        );
    }
    let for_each = match &s.for_each {
        None => None,
        Some(serde_yaml::Value::String(expr)) => {
            check(
                c,
                &format!("{at}.for_each"),
                expr,
                Flavour::Expr,
                &Scope {
                    item: false,
                    ..base
                },
            );
            Some(ForEach::Expr(expr.clone()))
        }
        Some(list @ serde_yaml::Value::Sequence(_)) => {
            let mut strings = Vec::new();
            Templates::tree_strings(list, format!("{at}.for_each"), &mut strings);
            for (p, src) in strings {
                check(
                    c,
                    &p,
                    src,
                    Flavour::Value,
                    &Scope {
                        item: false,
                        ..base
                    },
                );
            }
            Some(ForEach::List(list.clone()))
        }
        Some(_) => {
            c.err(
                &format!("{at}.for_each"),
                "for_each takes an expression or a list",
            );
            None
        }
    };
    let until = match (&s.until, s.every, s.within) {
        (Some(expr), every, within) => {
            check(
                c,
                &format!("{at}.until"),
                expr,
                Flavour::Expr,
                &Scope {
                    self_visible: true,
                    ..base
                },
            );
            Some(Until {
                expr: expr.clone(),
                every: every.unwrap_or(Dur::from_secs(10)),
                within: within.unwrap_or(Dur::from_secs(300)),
            })
        }
        (None, Some(_), _) | (None, _, Some(_)) => {
            c.err(&format!("{at}.every"), "`every` and `within` need `until`");
            None
        }
        (None, None, None) => None,
    };
    if let Some(r) = &s.retry {
        if r.attempts == 0 {
            c.err(
                &format!("{at}.retry.attempts"),
                "retry attempts must be at least 1",
            );
        }
    }
    let retry = s
        .retry
        .as_ref()
        .map(|r| Retry {
            attempts: r.attempts.max(1),
            backoff: r.backoff.unwrap_or(Dur::from_secs(1)),
        })
        .unwrap_or(Retry {
            attempts: 1,
            backoff: Dur::from_secs(1),
        });

    let id = s.id.clone();
    let name = s.name.clone();
    let when = s.when.clone();
    let timeout = s.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT);
    let continue_on_error = s.continue_on_error;
    let kind = match StepKind::from_raw(s) {
        Ok(k) => k,
        Err((sub, msg)) => {
            c.err(&format!("{at}{sub}"), msg);
            return None;
        }
    };
    for (sub, src, flavour) in kind.templates() {
        check(c, &format!("{at}.{sub}"), src, flavour, &base);
    }
    for (sub, problem) in kind.check_names(&c.env.datasources, &c.env.channels) {
        c.err(&format!("{at}.{sub}"), problem);
    }
    if let StepKind::Playbook(call) = &kind {
        calls.push(PlaybookCall {
            path: c.path.to_owned(),
            at: c.loc.at(&format!("{at}.playbook")),
            target: call.name.clone(),
        });
    }
    Some(Step {
        id,
        name,
        when,
        timeout,
        retry,
        continue_on_error,
        for_each,
        until,
        kind,
    })
}

/// Checks one template's syntax and the variables it reads.
fn check(c: &mut Compiler, at: &str, src: &str, flavour: Flavour, scope: &Scope) {
    let (syntax, vars) = match flavour {
        Flavour::Expr => (c.templates.check_expr(src), c.templates.expr_vars(src)),
        Flavour::Value => match crate::template::sole_expression(src) {
            Some(e) => (c.templates.check_expr(e), c.templates.expr_vars(e)),
            None => (
                c.templates.check_template(src),
                c.templates.template_vars(src),
            ),
        },
        Flavour::Text | Flavour::Sql | Flavour::Url => (
            c.templates.check_template(src),
            c.templates.template_vars(src),
        ),
    };
    if let Err(e) = syntax {
        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        c.err(at, format!("template syntax error: {}{detail}", e.kind()));
        return;
    }
    let mut vars = vars;
    vars.sort();
    for var in vars {
        if let Some(problem) = check_var(&var, scope) {
            c.err(at, problem);
        }
    }
}

fn check_var(var: &str, scope: &Scope) -> Option<String> {
    let mut parts = var.split('.');
    let root = parts.next().unwrap_or_default();
    let second = parts.next();
    match root {
        "item" if scope.item => None,
        "item" => Some("`item` is only defined in a step with `for_each`".into()),
        "failed_step" if scope.failed_step => None,
        "failed_step" => Some("`failed_step` is only defined in `on_failure` steps".into()),
        "params" => match second {
            Some(p) if !scope.params.contains(p) => Some(format!(
                "unknown parameter `{p}` (declared: {})",
                if scope.params.is_empty() {
                    "none".to_owned()
                } else {
                    join(scope.params)
                }
            )),
            _ => None,
        },
        "steps" => match second {
            Some(s) if scope.this_step == Some(s) && scope.self_visible => None,
            Some(s) if scope.this_step == Some(s) => Some(format!(
                "step `{s}` reads its own result; only `until` may do that"
            )),
            Some(s) if !scope.all_steps.contains(s) => Some(format!("unknown step `{s}`")),
            Some(s) if !scope.earlier.contains(s) => {
                Some(format!("step `{s}` runs later; it has no result yet"))
            }
            _ => None,
        },
        r if ROOTS.contains(&r) => None,
        // minijinja reports functions and filters it does not know as variables too.
        "ago" | "age" | "ident" | "range" | "dict" | "namespace" | "debug" => None,
        other => Some(format!(
            "unknown variable `{other}` (available: {})",
            ROOTS.join(", ")
        )),
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Checks a YAML value against a parameter type and converts it to JSON.
pub fn coerce_yaml(ty: ParamType, v: &serde_yaml::Value) -> Result<Json, String> {
    use serde_yaml::Value as Y;
    match (ty, v) {
        (ParamType::String, Y::String(s)) => Ok(Json::String(s.clone())),
        (ParamType::String, Y::Number(n)) => Ok(Json::String(n.to_string())),
        (ParamType::Integer, Y::Number(n)) if n.is_i64() || n.is_u64() => {
            Ok(serde_json::to_value(n).unwrap_or_default())
        }
        (ParamType::Number, Y::Number(n)) => Ok(serde_json::to_value(n).unwrap_or_default()),
        (ParamType::Boolean, Y::Bool(b)) => Ok(Json::Bool(*b)),
        (ty, Y::String(s)) => coerce_text(ty, s),
        (ParamType::Duration, Y::Number(n)) if n.is_u64() => Ok(Json::String(format!("{}s", n))),
        (ty, other) => Err(format!(
            "expected {}, got {}",
            type_name(ty),
            serde_yaml::to_string(other).unwrap_or_default().trim()
        )),
    }
}

/// Parses a parameter given as text (`--param k=v`, alert labels) into its type.
pub fn coerce_text(ty: ParamType, s: &str) -> Result<Json, String> {
    match ty {
        ParamType::String => Ok(Json::String(s.to_owned())),
        ParamType::Integer => s
            .trim()
            .parse::<i64>()
            .map(Json::from)
            .map_err(|_| format!("expected an integer, got `{s}`")),
        ParamType::Number => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .ok_or_else(|| format!("expected a number, got `{s}`")),
        ParamType::Boolean => match s.trim() {
            "true" | "yes" | "1" => Ok(Json::Bool(true)),
            "false" | "no" | "0" => Ok(Json::Bool(false)),
            _ => Err(format!("expected true or false, got `{s}`")),
        },
        ParamType::Duration => s
            .parse::<Dur>()
            .map(|_| Json::String(s.trim().to_owned()))
            .map_err(|e| e.to_string()),
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
) -> Result<serde_json::Map<String, Json>, Vec<String>> {
    let mut out = serde_json::Map::new();
    let mut errors = Vec::new();
    for (k, _) in overrides {
        if !specs.iter().any(|s| &s.name == k) {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            errors.push(format!(
                "unknown parameter `{k}` (this playbook takes: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    for spec in specs {
        match overrides.get(&spec.name) {
            Some(text) => match coerce_text(spec.ty, text) {
                Ok(v) => {
                    out.insert(spec.name.clone(), v);
                }
                Err(e) => errors.push(format!("parameter `{}`: {e}", spec.name)),
            },
            None => match &spec.default {
                Some(v) => {
                    out.insert(spec.name.clone(), v.clone());
                }
                None => errors.push(format!(
                    "parameter `{}` is required ({})",
                    spec.name,
                    type_name(spec.ty)
                )),
            },
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
