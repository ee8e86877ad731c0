//! `runbook test [PATH]`: runs the playbooks' test cases and prints each as `cargo test` does,
//! with a diff of expected and actual for a failure; `--output json` for CI.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use super::{
    output::{errln, outln},
    Format, Setup, EXIT_FAILED, EXIT_USAGE,
};
use crate::testing::{self, CaseReport, Outcome, TestEnv};

/// Where the test files and the playbooks they test are: a playbooks folder with a `tests/`
/// folder, a folder of test files (beside which the playbooks are), or one test file.
fn locate(setup: &Setup, path: Option<&Path>) -> (PathBuf, PathBuf) {
    let path = path.unwrap_or(&setup.runbooks);
    let tests = path.join("tests");
    if path.is_dir() && tests.is_dir() {
        return (tests, path.to_owned());
    }
    let folder = if path.is_dir() {
        Some(path)
    } else {
        path.parent()
    };
    let runbooks = folder
        .filter(|f| f.file_name().is_some_and(|n| n == "tests"))
        .and_then(Path::parent)
        .map_or_else(|| setup.runbooks.clone(), Path::to_owned);
    (path.to_owned(), runbooks)
}

pub(super) async fn test(setup: &Setup, path: Option<&Path>, format: Format) -> Result<i32> {
    if path.is_none() && !setup.runbooks.join("tests").is_dir() {
        errln!(
            "no test cases: {} has no tests/ folder (see docs/testing.md)",
            setup.runbooks.display()
        );
        return Ok(EXIT_USAGE);
    }
    let (tests, runbooks) = locate(setup, path);
    let files = match testing::load_files(&tests) {
        Ok(f) => f,
        Err(diags) => {
            for d in diags {
                errln!("{d}");
            }
            return Ok(EXIT_USAGE);
        }
    };
    let (_, diags) = crate::engine::Engine::load_playbooks(&runbooks, &setup.config);
    if !diags.is_empty() {
        return Ok(super::print_diags(&diags));
    }
    let total: usize = files.iter().map(|(_, f)| f.cases.len()).sum();
    if total == 0 {
        errln!("no test cases found in {}", tests.display());
        return Ok(EXIT_USAGE);
    }
    let env = TestEnv {
        runbooks,
        config: setup.config.clone(),
    };
    if format == Format::Human {
        outln!(
            "\nrunning {total} test{}",
            if total == 1 { "" } else { "s" }
        );
    }
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for (file, tf) in &files {
        for case in &tf.cases {
            let r = testing::run_case(&env, file, tf, case).await;
            if format == Format::Human {
                let status = match r.outcome {
                    Outcome::Ok => "ok".to_owned(),
                    Outcome::Failed => "FAILED".to_owned(),
                    Outcome::Xfail => format!("xfail ({})", r.xfail.as_deref().unwrap_or("")),
                };
                outln!("test {} ... {status}", r.name);
            }
            reports.push(r);
        }
    }
    let failed: Vec<&CaseReport> = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    let passed = reports.iter().filter(|r| r.outcome == Outcome::Ok).count();
    let xfail = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Xfail)
        .count();
    match format {
        Format::Json => {
            let doc = json!({
                "result": if failed.is_empty() { "ok" } else { "failed" },
                "passed": passed, "failed": failed.len(), "xfail": xfail,
                "cases": reports,
            });
            outln!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Human => {
            if !failed.is_empty() {
                outln!("\nfailures:");
                for r in &failed {
                    outln!("\n---- {} ({}) ----", r.name, r.file.display());
                    if let Some(m) = &r.message {
                        outln!("{m}");
                    }
                    if let Some(d) = &r.diff {
                        outln!("{}", d.trim_end());
                    }
                }
                outln!("\nfailures:");
                for r in &failed {
                    outln!("    {}", r.name);
                }
            }
            outln!(
                "\ntest result: {}. {passed} passed; {} failed; {xfail} xfail; finished in {:.2}s\n",
                if failed.is_empty() { "ok" } else { "FAILED" },
                failed.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(if failed.is_empty() { 0 } else { EXIT_FAILED })
}
