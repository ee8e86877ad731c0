//! The pure compile phase: raw YAML mirror in, typed [`Playbook`] or every problem out.
//!
//! Reads nothing but the text it is given and touches no network; `runbook validate` is this
//! function over a folder. Checks: shape (serde), names, step ids, exactly one kind per step,
//! parameter types and defaults, cron, matchers, template syntax, and that every template reads
//! only variables that exist at that point (declared params, earlier steps).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use regex::Regex;

use super::{
    locate::Locations,
    params::coerce_yaml,
    raw::{RawGuard, RawParam, RawPlaybook, RawTriggers},
    scope::{check_var, Scope},
    AlertMatcher, ForEach, Guard, LabelMatcher, ParamSpec, Playbook, PlaybookCall, Retry, Schedule,
    Step, Triggers, Until, DEFAULT_PLAYBOOK_TIMEOUT, DEFAULT_STEP_TIMEOUT,
};
use crate::{
    diagnostics::Diagnostic,
    duration::Dur,
    steps::{DurSpec, Flavour, RawRetry, RawStep, StepKind},
    template::Templates,
};

/// What compile may check names against: the config's datasources and notify channels. Empty
/// sets mean "the config names none". (The shell allowlist is checked when a shell step runs.)
pub type CompileEnv = crate::steps::Names;

struct Compiler<'a> {
    path: &'a Path,
    loc: Locations,
    diags: Vec<Diagnostic>,
    /// Findings that do not stop the playbook from loading.
    warnings: Vec<Diagnostic>,
    templates: Templates,
    env: &'a CompileEnv,
}

impl Compiler<'_> {
    fn err(&mut self, at: &str, message: impl Into<String>) {
        let pos = self.loc.at(at);
        self.diags.push(Diagnostic::new(self.path, pos, message));
    }
    fn warn(&mut self, at: &str, message: impl Into<String>) {
        let pos = self.loc.at(at);
        self.warnings.push(Diagnostic::new(self.path, pos, message));
    }
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
    // Checked here rather than only when a file is read: a version pinned in the store is
    // compiled from its text too.
    if let Some(pos) = super::locate::too_deep(text, super::MAX_DEPTH) {
        return Err(vec![Diagnostic::new(
            path,
            pos,
            format!(
                "maps and lists nest deeper than the limit of {} levels here",
                super::MAX_DEPTH
            ),
        )]);
    }
    let raw: RawPlaybook = match serde_yaml::from_str(text) {
        Ok(r) => r,
        Err(e) => return Err(every_error(path, text, e, env)),
    };
    let mut c = Compiler {
        path,
        loc: Locations::index(text),
        diags: Vec::new(),
        warnings: Vec::new(),
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

/// Every error of a file serde refused: each shape error (see [`super::recover`]), then what
/// compiling the rest finds.
fn every_error(
    path: &Path,
    text: &str,
    first: serde_yaml::Error,
    env: &CompileEnv,
) -> Vec<Diagnostic> {
    let found = super::recover::recover(text, first, serde_message);
    let mut diags: Vec<Diagnostic> = found
        .errors
        .into_iter()
        .map(|(at, msg)| Diagnostic::new(path, at, msg))
        .collect();
    if let Some(raw) = found.raw {
        let mut c = Compiler {
            path,
            loc: Locations::index(&found.text),
            diags: Vec::new(),
            warnings: Vec::new(),
            templates: Templates::new(),
            env,
        };
        compile(&mut c, raw);
        diags.extend(
            c.diags
                .into_iter()
                .filter(|d| !found.placeholders.contains(&d.line)),
        );
    }
    diags.sort_by_key(|d| (d.line, d.col));
    diags
}

fn compile(c: &mut Compiler, raw: RawPlaybook) -> (Playbook, Vec<PlaybookCall>) {
    check_name(c, &raw.name);
    let params = compile_params(c, &raw.name, &raw.params);
    let triggers = compile_triggers(c, &raw.triggers);
    let guard = compile_guard(c, raw.guard.as_ref());
    if raw.steps.is_empty() {
        c.err("steps", "a playbook needs at least one step");
    }
    let all_steps = check_step_ids(c, &raw.steps, &raw.on_failure);
    let param_names: BTreeSet<String> = raw.params.keys().cloned().collect();

    let mut calls = Vec::new();
    let mut earlier = BTreeSet::new();
    let mut section = |c: &mut Compiler, name: &str, raw_steps: Vec<RawStep>, on_failure: bool| {
        let mut steps = Vec::new();
        for (i, s) in raw_steps.into_iter().enumerate() {
            let id = s.id.clone();
            let place = Place {
                at: format!("{name}[{i}]"),
                params: &param_names,
                earlier: &earlier,
                all_steps: &all_steps,
                in_on_failure: on_failure,
            };
            if let Some(step) = compile_step(c, &place, s, &mut calls) {
                steps.push(step);
            }
            earlier.insert(id);
        }
        steps
    };
    let steps = section(c, "steps", raw.steps, false);
    let on_failure = section(c, "on_failure", raw.on_failure, true);
    if let Some(report) = &raw.report {
        // The report sees every step (one that did not run reads as skipped) and `failed_step`.
        let scope = Scope {
            params: &param_names,
            earlier: &all_steps,
            all_steps: &all_steps,
            this_step: None,
            self_visible: false,
            item: false,
            failed_step: true,
        };
        check(c, "report", report, Flavour::Text, &scope);
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
        changes_things: own_steps_change(&steps, &on_failure, true),
        warnings: std::mem::take(&mut c.warnings),
        steps,
        on_failure,
        report: raw.report,
    };
    (playbook, calls)
}

fn check_name(c: &mut Compiler, name: &str) {
    let name_re = Regex::new(r"^[a-z0-9][a-z0-9_-]*$").expect("static regex");
    if !name_re.is_match(name) {
        c.err(
            "name",
            format!("playbook name `{name}` must be lowercase letters, digits, `-` or `_`"),
        );
    }
    if let Some(stem) = c.path.file_stem().and_then(|s| s.to_str()) {
        if stem != name {
            c.err(
                "name",
                format!("playbook name `{name}` must match its file name `{stem}`"),
            );
        }
    }
}

fn compile_params(
    c: &mut Compiler,
    playbook: &str,
    raw: &BTreeMap<String, RawParam>,
) -> Vec<ParamSpec> {
    let mut params = Vec::new();
    for (name, p) in raw {
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
    configured_params(c, playbook, &mut params);
    params
}

/// The config's `playbooks.NAME.params` replace the defaults: each must name a declared param
/// and have its type. Problems are reported at the playbook's `params`, naming the config key.
fn configured_params(c: &mut Compiler, playbook: &str, params: &mut [ParamSpec]) {
    let Some(values) = c.env.playbook_params.get(playbook) else {
        return;
    };
    for (name, value) in values {
        let key = format!("the config's `playbooks.{playbook}.params.{name}`");
        match params.iter_mut().find(|p| &p.name == name) {
            None => {
                let known: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                c.err(
                    "params",
                    format!("{key}: playbook `{playbook}` has no param `{name}` (it has: {known})"),
                );
            }
            Some(spec) => match coerce_yaml(spec.ty, value) {
                Ok(v) => spec.default = Some(v),
                Err(e) => c.err(&format!("params.{name}"), format!("{key}: {e}")),
            },
        }
    }
}

fn compile_triggers(c: &mut Compiler, raw: &RawTriggers) -> Triggers {
    let mut triggers = Triggers {
        resolved: raw.resolved.unwrap_or_default(),
        ..Default::default()
    };
    for (i, m) in raw.alerts.iter().enumerate() {
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
                Err(e) => c.err(&format!("{at}.matchers[{j}]"), crate::text::error_chain(&e)),
            }
        }
        if m.labels.is_empty() && m.matchers.is_empty() {
            c.err(&at, "an alert entry needs at least one label or matcher");
        }
        triggers.alerts.push(AlertMatcher { matchers });
    }
    let tz = match raw.timezone.as_deref() {
        None => Some(chrono_tz::Tz::UTC),
        Some(name) if name.eq_ignore_ascii_case("utc") => Some(chrono_tz::Tz::UTC),
        Some(name) => match name.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                c.err(
                    "on.timezone",
                    format!("unknown timezone `{name}`: use an IANA name such as `Europe/Berlin`, or `UTC`"),
                );
                None
            }
        },
    };
    match &raw.schedule {
        Some(expr) => match Schedule::parse(expr, tz.unwrap_or_default(), raw.missed.unwrap_or_default()) {
            Ok(schedule) => triggers.schedule = Some(schedule),
            Err(e) => c.err(
                "on.schedule",
                format!("bad cron expression `{expr}`: {e} (six or seven fields, seconds first: `0 0 3 * * SUN`)"),
            ),
        },
        None => {
            for (key, given) in [("timezone", raw.timezone.is_some()), ("missed", raw.missed.is_some())] {
                if given {
                    c.err(&format!("on.{key}"), format!("`{key}` applies to `schedule`, which this playbook does not have"));
                }
            }
        }
    }
    triggers
}

/// Whether any step of `steps` or `on_failure` changes something; a `playbook:` call counts as
/// a change when `calls_change` (until the catalog resolves it, [`super::Catalog::resolve_changes`]).
pub(super) fn own_steps_change(steps: &[Step], on_failure: &[Step], calls_change: bool) -> bool {
    steps
        .iter()
        .chain(on_failure)
        .any(|s| !s.kind.is_read() || (calls_change && s.kind.calls().is_some()))
}

fn compile_guard(c: &mut Compiler, raw: Option<&RawGuard>) -> Guard {
    let Some(g) = raw else {
        return Guard::default();
    };
    if g.concurrency == Some(0) {
        c.err("guard.concurrency", "concurrency must be at least 1");
    }
    Guard {
        concurrency: g.concurrency.unwrap_or(1).max(1),
        cooldown: g.cooldown,
        max_runs_per_hour: g.max_runs_per_hour,
    }
}

/// Step ids across `steps` and `on_failure`: well-formed and unique. Returns them all.
fn check_step_ids(c: &mut Compiler, steps: &[RawStep], on_failure: &[RawStep]) -> BTreeSet<String> {
    let id_re = Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("static regex");
    let mut all_steps = BTreeSet::new();
    for (section, steps) in [("steps", steps), ("on_failure", on_failure)] {
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
    all_steps
}

/// Where a step stands: its YAML path and what it may read.
struct Place<'p> {
    at: String,
    params: &'p BTreeSet<String>,
    earlier: &'p BTreeSet<String>,
    all_steps: &'p BTreeSet<String>,
    in_on_failure: bool,
}

fn compile_step(
    c: &mut Compiler,
    place: &Place,
    s: RawStep,
    calls: &mut Vec<PlaybookCall>,
) -> Option<Step> {
    let at = place.at.as_str();
    let this_id = s.id.clone();
    let base = Scope {
        params: place.params,
        earlier: place.earlier,
        all_steps: place.all_steps,
        this_step: Some(&this_id),
        self_visible: false,
        item: s.for_each.is_some(),
        failed_step: place.in_on_failure,
    };
    // `when` and `for_each` are evaluated before the step's items exist.
    let outer = Scope {
        item: false,
        ..base
    };
    if let Some(w) = &s.when {
        check(c, &format!("{at}.when"), w, Flavour::Expr, &outer);
    }
    let for_each = compile_for_each(c, at, s.for_each.as_ref(), &outer);
    let until = compile_until(c, at, &s, &base);
    let retry = compile_retry(c, at, s.retry.as_ref());

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
    for (sub, problem) in kind.check_names(c.env) {
        c.err(&format!("{at}.{sub}"), problem);
    }
    if let Some(w) = super::lint::retry_of_a_change(&id, retry.attempts, kind.retries_safely()) {
        c.warn(&format!("{at}.retry"), w);
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

fn compile_for_each(
    c: &mut Compiler,
    at: &str,
    raw: Option<&serde_yaml::Value>,
    scope: &Scope,
) -> Option<ForEach> {
    match raw? {
        serde_yaml::Value::String(expr) => {
            check(c, &format!("{at}.for_each"), expr, Flavour::Expr, scope);
            Some(ForEach::Expr(expr.clone()))
        }
        list @ serde_yaml::Value::Sequence(_) => {
            let mut strings = Vec::new();
            Templates::tree_strings(list, format!("{at}.for_each"), &mut strings);
            for (p, src) in strings {
                check(c, &p, src, Flavour::Value, scope);
            }
            Some(ForEach::List(list.clone()))
        }
        _ => {
            c.err(
                &format!("{at}.for_each"),
                "for_each takes an expression or a list",
            );
            None
        }
    }
}

fn compile_until(c: &mut Compiler, at: &str, s: &RawStep, base: &Scope) -> Option<Until> {
    match (&s.until, &s.every, &s.within) {
        (Some(expr), every, within) => {
            let scope = Scope {
                self_visible: true,
                ..*base
            };
            check(c, &format!("{at}.until"), expr, Flavour::Expr, &scope);
            // A templated duration is rendered before the first poll: it sees what the step does.
            for (key, spec) in [("every", every), ("within", within)] {
                if let Some(t) = spec.as_ref().and_then(|d| d.template()) {
                    check(c, &format!("{at}.{key}"), t, Flavour::Text, base);
                }
            }
            Some(Until {
                expr: expr.clone(),
                every: every.clone().unwrap_or(DurSpec::Fixed(Dur::from_secs(10))),
                within: within
                    .clone()
                    .unwrap_or(DurSpec::Fixed(Dur::from_secs(300))),
            })
        }
        (None, Some(_), _) | (None, _, Some(_)) => {
            c.err(&format!("{at}.every"), "`every` and `within` need `until`");
            None
        }
        (None, None, None) => None,
    }
}

fn compile_retry(c: &mut Compiler, at: &str, raw: Option<&RawRetry>) -> Retry {
    let Some(r) = raw else {
        return Retry {
            attempts: 1,
            backoff: Dur::from_secs(1),
        };
    };
    if r.attempts == 0 {
        c.err(
            &format!("{at}.retry.attempts"),
            "retry attempts must be at least 1",
        );
    }
    Retry {
        attempts: r.attempts.max(1),
        backoff: r.backoff.unwrap_or(Dur::from_secs(1)),
    }
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
    for problem in super::lint::step_status_ok(src) {
        c.err(at, problem);
    }
    let mut vars = vars;
    vars.sort();
    for var in vars {
        if let Some(problem) = check_var(&var, scope) {
            c.err(at, problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
        time::{Duration, Instant},
    };

    use super::*;

    /// The system allocator, counting the bytes each thread asks for.
    struct Counting;

    thread_local! {
        static ALLOCATED: Cell<u64> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size() as u64));
            // SAFETY: the caller's contract is passed on unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract is passed on unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size as u64));
            // SAFETY: the caller's contract is passed on unchanged.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    #[test]
    fn loading_evaluates_no_constant_expression() {
        let mut yaml = String::from("name: big\nsteps:\n");
        for i in 0..10 {
            yaml.push_str(&format!(
                "  - id: s{i}\n    assert: {{ that: \"'y' * 100000000 != ''\", message: \"{{{{ 'x' * 100000000 }}}}\" }}\n"
            ));
        }
        let before = ALLOCATED.with(Cell::get);
        let started = Instant::now();
        let compiled = compile_source(Path::new("big.yaml"), &yaml, &CompileEnv::default());
        let took = started.elapsed();
        let allocated = ALLOCATED.with(Cell::get) - before;
        assert!(compiled.is_ok(), "{:?}", compiled.err());
        assert!(
            allocated < 50_000_000,
            "loading allocated {allocated} bytes"
        );
        assert!(took < Duration::from_secs(5), "loading took {took:?}");
    }
}
