//! Playbooks: the raw YAML mirror, the pure compile phase, and the compiled form the engine runs.

mod compile;
mod lint;
mod locate;
mod matcher;
mod params;
mod recover;
mod schedule;
mod scope;
pub mod raw;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::Value as Json;

pub use compile::{compile_source, CompileEnv};
pub use matcher::{AlertMatcher, LabelMatcher};
pub use params::{resolve_params, ParamProblems};
pub use raw::{Missed, OnInterrupt, ParamType, ResolvedPolicy};
pub use schedule::Schedule;

use crate::{
    diagnostics::Diagnostic,
    duration::Dur,
    steps::{DurSpec, StepKind},
    store::versions::{self, Version},
};

/// A validated playbook, ready to run.
#[derive(Debug)]
pub struct Playbook {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    pub triggers: Triggers,
    pub params: Vec<ParamSpec>,
    pub guard: Guard,
    pub timeout: Dur,
    pub on_interrupt: OnInterrupt,
    pub steps: Vec<Step>,
    pub on_failure: Vec<Step>,
    /// The `report:` template, rendered at the end of every run.
    pub report: Option<String>,
    /// Whether a run may change something: some step (of `steps` or `on_failure`) is not a read
    /// (see `Kind::is_read`), or calls a playbook that changes things. Computed at load; the
    /// global pause holds runs of playbooks that change things.
    pub changes_things: bool,
    /// Findings of `runbook validate` that do not stop the playbook from running.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Default)]
pub struct Triggers {
    pub alerts: Vec<AlertMatcher>,
    pub resolved: ResolvedPolicy,
    pub schedule: Option<Schedule>,
}

#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    pub default: Option<Json>,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Guard {
    pub concurrency: u32,
    pub cooldown: Option<Dur>,
    pub max_runs_per_hour: Option<u32>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            concurrency: 1,
            cooldown: None,
            max_runs_per_hour: None,
        }
    }
}

/// One compiled step.
#[derive(Debug)]
pub struct Step {
    pub id: String,
    pub name: Option<String>,
    pub when: Option<String>,
    pub timeout: Dur,
    pub retry: Retry,
    pub continue_on_error: bool,
    pub for_each: Option<ForEach>,
    pub until: Option<Until>,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Dur,
}

#[derive(Debug)]
pub enum ForEach {
    Expr(String),
    List(serde_yaml::Value),
}

#[derive(Debug, Clone)]
pub struct Until {
    pub expr: String,
    /// Literal, or a template the engine renders when the step starts polling.
    pub every: DurSpec,
    pub within: DurSpec,
}

/// Default step deadline when a step names none.
pub const DEFAULT_STEP_TIMEOUT: Dur = Dur::from_secs(300);
/// Default playbook deadline.
pub const DEFAULT_PLAYBOOK_TIMEOUT: Dur = Dur::from_secs(900);

/// Every playbook of a folder, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    pub playbooks: BTreeMap<String, Playbook>,
    /// The text and content hash each playbook was compiled from, by name: what a run enqueued
    /// now is pinned to (a catalog built by hand may have none).
    pub versions: BTreeMap<String, Version>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Playbook> {
        self.playbooks.get(name)
    }

    /// Sets every playbook's `changes_things` with its `playbook:` calls followed across the
    /// catalog: a call of a playbook that changes things (or of one not in the catalog) is a
    /// change; a cycle adds nothing.
    pub fn resolve_changes(&mut self) {
        let names: Vec<String> = self.playbooks.keys().cloned().collect();
        let mut known = BTreeMap::new();
        for name in &names {
            let changes = self.changes(name, &mut known, &mut Vec::new());
            known.insert(name.clone(), changes);
        }
        for (name, changes) in known {
            if let Some(p) = self.playbooks.get_mut(&name) {
                p.changes_things = changes;
            }
        }
    }

    fn changes(
        &self,
        name: &str,
        known: &mut BTreeMap<String, bool>,
        path: &mut Vec<String>,
    ) -> bool {
        if let Some(&c) = known.get(name) {
            return c;
        }
        let Some(pb) = self.playbooks.get(name) else {
            return true;
        };
        if path.iter().any(|p| p == name) {
            return false;
        }
        if compile::own_steps_change(&pb.steps, &pb.on_failure, false) {
            return true;
        }
        path.push(name.to_owned());
        let calls: Vec<&str> = pb
            .steps
            .iter()
            .chain(&pb.on_failure)
            .filter_map(|s| s.kind.calls())
            .collect();
        let changes = calls.into_iter().any(|c| self.changes(c, known, path));
        path.pop();
        changes
    }

    /// Adds a compiled playbook with the text it was compiled from.
    pub fn insert(&mut self, pb: Playbook, text: &str) {
        let version = Version {
            hash: versions::hash(text),
            name: pb.name.clone(),
            text: text.to_owned(),
        };
        self.versions.insert(pb.name.clone(), version);
        self.playbooks.insert(pb.name.clone(), pb);
    }

    /// Removes the playbook compiled from file `path`, if any.
    fn remove_path(&mut self, path: &Path) {
        let names: Vec<String> = self
            .playbooks
            .values()
            .filter(|p| p.path == path)
            .map(|p| p.name.clone())
            .collect();
        for name in names {
            self.playbooks.remove(&name);
            self.versions.remove(&name);
        }
    }

    /// Playbooks whose alert matchers match `labels`.
    pub fn matching<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Playbook> + 'a {
        self.playbooks
            .values()
            .filter(move |p| p.triggers.alerts.iter().any(|m| m.matches(labels)))
    }
}

/// The playbook files of `path`: the file itself, or every `*.yaml`/`*.yml` in the folder, sorted.
pub fn playbook_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The largest playbook file read: a playbook is a page or two of YAML, and parsing takes
/// memory many times the file's size.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The deepest nesting of maps and lists in a playbook; the real ones stay under ten.
pub const MAX_DEPTH: usize = 64;

/// A playbook file's text, refused before it is read whole when it is larger than
/// [`MAX_FILE_BYTES`]. (Compiling refuses text that nests deeper than [`MAX_DEPTH`].)
pub fn read_source(file: &Path) -> Result<String, Diagnostic> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| Diagnostic::new(file, (0, 0), format!("cannot read file: {e}"));
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Diagnostic::new(
            file,
            (0, 0),
            format!(
                "the file is larger than the limit of {} MiB for a playbook; split it into \
                 playbooks that call each other (`playbook:` steps)",
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        ))
    })?;
    Ok(text)
}

/// Loads and compiles every playbook under `path`, returning all that compiled and every
/// problem found (in any file), so one broken file never hides another's errors.
pub fn load(path: &Path, env: &CompileEnv) -> (Catalog, Vec<Diagnostic>) {
    let mut catalog = Catalog::default();
    let mut diags = Vec::new();
    let files = match playbook_files(path) {
        Ok(f) => f,
        Err(e) => {
            diags.push(Diagnostic::new(
                path,
                (0, 0),
                format!("cannot read playbooks: {e}"),
            ));
            return (catalog, diags);
        }
    };
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut calls = Vec::new();
    for file in files {
        let text = match read_source(&file) {
            Ok(t) => t,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        match compile_source(&file, &text, env) {
            Ok((pb, pb_calls)) => {
                if let Some(first) = seen.get(&pb.name) {
                    diags.push(Diagnostic::new(
                        &file,
                        (1, 1),
                        format!(
                            "duplicate playbook name `{}` (also in {})",
                            pb.name,
                            first.display()
                        ),
                    ));
                    continue;
                }
                seen.insert(pb.name.clone(), file.clone());
                calls.extend(pb_calls);
                catalog.insert(pb, &text);
            }
            Err(mut d) => {
                // A file with errors still claims its name, so a call to it is not reported as unknown.
                if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
                    seen.entry(stem.to_owned()).or_insert(file.clone());
                }
                diags.append(&mut d);
            }
        }
    }
    for name in env.playbook_params.keys() {
        if !seen.contains_key(name) {
            diags.push(Diagnostic::new(
                path,
                (0, 0),
                format!("the config's `playbooks.{name}` names no playbook in this folder"),
            ));
        }
    }
    for call in calls {
        if !seen.contains_key(&call.target) {
            diags.push(Diagnostic::new(
                call.path,
                call.at,
                format!("unknown playbook `{}`", call.target),
            ));
        }
    }
    diags.sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
    catalog.resolve_changes();
    (catalog, diags)
}

/// A `playbook:` step's target, checked once every file is loaded.
#[derive(Debug)]
pub struct PlaybookCall {
    pub path: PathBuf,
    pub at: (usize, usize),
    pub target: String,
}

#[cfg(test)]
mod changes_tests {
    use super::*;

    /// The shipped playbooks, with the repository's config: the debug-* ones only read, so the
    /// global pause lets them run; every other one changes something or tells someone.
    #[test]
    fn shipped_playbooks_are_classified() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = crate::config::Config::load(&root.join("runbook.yaml")).unwrap();
        let env = CompileEnv {
            datasources: config.datasources.keys().cloned().collect(),
            channels: config.notify.keys().cloned().collect(),
            shell_allow: config.shell.allow.iter().cloned().collect(),
            ..CompileEnv::default()
        };
        let (catalog, diags) = load(&root.join("runbooks"), &env);
        assert!(diags.is_empty(), "{diags:?}");
        let reads: Vec<&str> = catalog
            .playbooks
            .values()
            .filter(|p| !p.changes_things)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            reads,
            [
                "debug-db-performance",
                "debug-kafka-status",
                "debug-worker-status"
            ]
        );
        assert!(catalog.playbooks.len() > reads.len() + 5);
    }

    fn compiled(name: &str, yaml: &str) -> Playbook {
        let path = PathBuf::from(format!("runbooks/{name}.yaml"));
        let env = CompileEnv {
            channels: ["ops".to_owned()].into(),
            ..Default::default()
        };
        compile_source(&path, yaml, &env).unwrap().0
    }

    #[test]
    fn calls_are_followed_across_the_catalog() {
        let mut catalog = Catalog::default();
        for (name, yaml) in [
            ("reader", "name: reader\nsteps:\n  - id: a\n    sql: SELECT 1\n"),
            ("writer", "name: writer\nsteps:\n  - id: a\n    runtime: { op: dlq_retry }\n"),
            ("calls-reader", "name: calls-reader\nsteps:\n  - id: a\n    playbook: reader\n"),
            ("calls-writer", "name: calls-writer\nsteps:\n  - id: a\n    playbook: calls-reader\n  - id: b\n    playbook: writer\n"),
            ("loop-a", "name: loop-a\nsteps:\n  - id: a\n    playbook: loop-b\n"),
            ("loop-b", "name: loop-b\nsteps:\n  - id: a\n    playbook: loop-a\n"),
            ("calls-missing", "name: calls-missing\nsteps:\n  - id: a\n    playbook: nowhere\n"),
            ("get", "name: get\nsteps:\n  - id: a\n    http: { url: 'http://x/', method: HEAD }\n"),
            ("post", "name: post\nsteps:\n  - id: a\n    http: { url: 'http://x/', method: POST }\n"),
            ("pages", "name: pages\nsteps:\n  - id: a\n    wait: 1s\non_failure:\n  - id: b\n    notify: { to: ops, text: x }\n"),
        ] {
            catalog.playbooks.insert(name.into(), compiled(name, yaml));
        }
        // Before resolution a call counts as a change.
        assert!(catalog.get("calls-reader").unwrap().changes_things);
        catalog.resolve_changes();
        let changes = |n: &str| catalog.get(n).unwrap().changes_things;
        assert!(!changes("reader") && !changes("calls-reader") && !changes("get"));
        assert!(!changes("loop-a") && !changes("loop-b"));
        assert!(changes("writer") && changes("calls-writer") && changes("calls-missing"));
        assert!(changes("post") && changes("pages"));
    }
}

/// Loads `path` again after an edit, keeping the last good version of every playbook whose file
/// now has problems: a file with any diagnostic serves what `previous` compiled from it (compiled
/// again from its stored text), a new file with problems stays out, a deleted file's playbook goes.
/// When the folder itself cannot be read, `previous` is kept whole. Returns the catalog to serve
/// and every problem of the new load (the API shows them next to the versions still served).
pub fn reload(path: &Path, previous: &Catalog, env: &CompileEnv) -> (Catalog, Vec<Diagnostic>) {
    let (mut catalog, diags) = load(path, env);
    if diags.iter().any(|d| d.path == path && !path.is_file()) {
        return (recompiled(previous, |_| true, env), diags);
    }
    let broken: Vec<&Path> = diags.iter().map(|d| d.path.as_path()).collect();
    for file in &broken {
        catalog.remove_path(file);
    }
    let kept = recompiled(
        previous,
        |p| broken.contains(&p.path.as_path()) && !catalog.playbooks.contains_key(&p.name),
        env,
    );
    for (name, pb) in kept.playbooks {
        if let Some(v) = kept.versions.get(&name) {
            catalog.insert(pb, &v.text);
        }
    }
    catalog.resolve_changes();
    (catalog, diags)
}

/// The playbooks of `catalog` that `keep` selects, compiled again from their versions' text.
fn recompiled(catalog: &Catalog, keep: impl Fn(&Playbook) -> bool, env: &CompileEnv) -> Catalog {
    let mut out = Catalog::default();
    for pb in catalog.playbooks.values().filter(|p| keep(p)) {
        let Some(v) = catalog.versions.get(&pb.name) else {
            continue;
        };
        // It compiled before with this text and this config, so it compiles again.
        if let Ok((again, _)) = compile_source(&pb.path, &v.text, env) {
            out.insert(again, &v.text);
        }
    }
    out.resolve_changes();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: a\nsteps:\n  - id: s\n    wait: 1ms\n";

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    }

    #[test]
    fn a_reload_keeps_the_last_good_version_of_a_broken_file_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let env = CompileEnv::default();
        write(dir.path(), "a", GOOD);
        write(
            dir.path(),
            "b",
            "name: b\nsteps:\n  - id: s\n    wait: 1ms\n",
        );
        let (first, diags) = load(dir.path(), &env);
        assert!(diags.is_empty(), "{diags:?}");
        let good_hash = first.versions["a"].hash.clone();

        // `a` breaks, `b` changes, `c` is new and broken.
        write(dir.path(), "a", "name: a\nsteps:\n  - id: s\n    wait: [\n");
        write(
            dir.path(),
            "b",
            "name: b\nsteps:\n  - id: t\n    wait: 2ms\n",
        );
        write(dir.path(), "c", "name: c\nstep: []\n");
        let (next, diags) = reload(dir.path(), &first, &env);
        assert_eq!(
            next.versions["a"].hash, good_hash,
            "a keeps its last good version"
        );
        assert_eq!(next.get("a").unwrap().steps[0].id, "s");
        assert_eq!(next.get("b").unwrap().steps[0].id, "t", "b takes its edit");
        assert!(next.get("c").is_none(), "c never loaded");
        let files: Vec<String> = diags
            .iter()
            .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(files.contains(&"a.yaml".to_owned()) && files.contains(&"c.yaml".to_owned()));
        assert!(diags.iter().all(|d| d.line > 0), "{diags:?}");

        // Fixed, `a` takes the new text; a deleted file's playbook goes.
        write(
            dir.path(),
            "a",
            "name: a\nsteps:\n  - id: u\n    wait: 1ms\n",
        );
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        let (last, _) = reload(dir.path(), &next, &env);
        assert_eq!(last.get("a").unwrap().steps[0].id, "u");
        assert_ne!(last.versions["a"].hash, good_hash);
        assert!(last.get("b").is_none());
    }

    #[test]
    fn a_folder_that_cannot_be_read_keeps_every_playbook() {
        let dir = tempfile::tempdir().unwrap();
        let env = CompileEnv::default();
        write(dir.path(), "a", GOOD);
        let (first, _) = load(dir.path(), &env);
        let gone = dir.path().join("gone");
        let (next, diags) = reload(&gone, &first, &env);
        assert_eq!(next.playbooks.len(), 1);
        assert!(
            diags[0].message.starts_with("cannot read playbooks"),
            "{diags:?}"
        );
    }
}
