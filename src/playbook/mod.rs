//! Playbooks: the raw YAML mirror, the pure compile phase, and the compiled form the engine runs.

mod compile;
mod lint;
mod locate;
mod matcher;
mod params;
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

use crate::{diagnostics::Diagnostic, duration::Dur, steps::StepKind};

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
    pub every: Dur,
    pub within: Dur,
}

/// Default step deadline when a step names none.
pub const DEFAULT_STEP_TIMEOUT: Dur = Dur::from_secs(300);
/// Default playbook deadline.
pub const DEFAULT_PLAYBOOK_TIMEOUT: Dur = Dur::from_secs(900);

/// Every playbook of a folder, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    pub playbooks: BTreeMap<String, Playbook>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Playbook> {
        self.playbooks.get(name)
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
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::new(
                    &file,
                    (0, 0),
                    format!("cannot read file: {e}"),
                ));
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
                catalog.playbooks.insert(pb.name.clone(), pb);
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
    (catalog, diags)
}

/// A `playbook:` step's target, checked once every file is loaded.
#[derive(Debug)]
pub struct PlaybookCall {
    pub path: PathBuf,
    pub at: (usize, usize),
    pub target: String,
}
