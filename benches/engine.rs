//! The engine's cost per step as a playbook grows: `runbook run` (release build) of playbooks of
//! 10, 100, 1,000 and 10,000 trivial `assert` steps on the embedded store, three runs each,
//! interleaved. The time is the run's own `duration_ms` (from its first step to its end, records
//! included; process start and store open are not in it) divided by the number of steps; the table
//! prints the median ms per step with min–max, and each size's median against the 10-step median
//! (a flat engine prints 1.0× all the way down). The wall-clock time of the whole command is
//! printed beside it.
//!
//! Run it with `cargo bench --bench engine` (or `scripts/bench engine`); sizes can be narrowed with
//! `RUNBOOK_ENGINE_SIZES=10,100`. `RUNBOOK_BENCH_BASE=PATH` also runs another build of runbook
//! (the one to compare with) in the same rounds, each of its runs next to this build's, and
//! prints its table too.

#[allow(dead_code)] // the store helpers this benchmark does not need
mod common;

use std::{path::Path, process::Command, time::Instant};

use common::fresh;

fn playbook(dir: &Path, steps: usize) -> String {
    let name = format!("steps-{steps}");
    let mut text = format!("name: {name}\ntimeout: 24h\nsteps:\n");
    for i in 0..steps {
        text.push_str(&format!("  - id: s{i}\n    assert: \"true\"\n"));
    }
    std::fs::write(dir.join("runbooks").join(format!("{name}.yaml")), text).unwrap();
    name
}

/// The run's own milliseconds and the whole command's seconds, for one `runbook run NAME` on a
/// fresh SQLite store.
async fn once(bin: &str, dir: &Path, name: &str) -> (f64, f64) {
    let store = fresh("sqlite").await;
    let started = Instant::now();
    let out = Command::new(bin)
        .args(["--store", &store.url, "run", name, "-o", "json"])
        .current_dir(dir)
        .env("RUNBOOK_LOG", "error")
        .output()
        .expect("run runbook");
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run_ms = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|e| e["run"]["duration_ms"].as_f64())
        .unwrap_or_else(|| panic!("{name}: no run event in the output"));
    (run_ms, secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("RUNBOOK_ENGINE_SIZES")
        .unwrap_or_else(|_| "10,100,1000,10000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("RUNBOOK_ENGINE_SIZES: whole numbers")
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(dir.path().join("runbook.yaml"), "{}\n").unwrap();
    let names: Vec<String> = sizes.iter().map(|&n| playbook(dir.path(), n)).collect();

    let mut builds = vec![("this build", env!("CARGO_BIN_EXE_runbook").to_owned())];
    if let Ok(base) = std::env::var("RUNBOOK_BENCH_BASE") {
        builds.push(("RUNBOOK_BENCH_BASE", base));
    }
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the start: {}", load().trim());

    // Three rounds, each running every size once (with every build), so a slow moment hits all
    // sizes alike.
    let mut per_step: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); sizes.len()]; builds.len()];
    let mut wall: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); sizes.len()]; builds.len()];
    for _ in 0..3 {
        for (i, name) in names.iter().enumerate() {
            for (b, (_, bin)) in builds.iter().enumerate() {
                let (run_ms, secs) = once(bin, dir.path(), name).await;
                per_step[b][i].push(run_ms / sizes[i] as f64);
                wall[b][i].push(secs);
            }
        }
    }
    for (b, (build, bin)) in builds.iter().enumerate() {
        println!();
        println!("engine ({build}: {bin}): `runbook run` of N trivial assert steps on SQLite, 3 runs each, interleaved");
        println!();
        println!("| steps | ms per step (median) | min–max | vs the first size | command wall time (median) |");
        println!("|---:|---:|---:|---:|---:|");
        let mut reference = None;
        for (i, &n) in sizes.iter().enumerate() {
            let med = median(per_step[b][i].clone());
            let (lo, hi) = per_step[b][i]
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
            let r = *reference.get_or_insert(med);
            println!(
                "| {n} | {med:.3} | {lo:.3}–{hi:.3} | {:.2}× | {:.2} s |",
                med / r,
                median(wall[b][i].clone())
            );
        }
    }
    println!();
    println!("load average at the end: {}", load().trim());
}
