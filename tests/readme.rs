//! README's examples, run: every line of a code block marked `sh test` runs (through `sh`, as a
//! reader pastes it) in a folder with the repository's `runbook.yaml` and `runbooks/`, and must
//! exit 0; a `sh test-server` block runs with `runbook serve` going. Substituted: the Prometheus
//! address (the test's), the server's port (a free one), and durations of a minute (a second).

use std::{path::Path, process::Command};

use crate::util::{free_port, Workdir};

/// The blocks of `markdown` whose fence is ```` ```sh test ```` or ```` ```sh test-server ````:
/// (whether the block needs a server, its lines).
fn marked_blocks(markdown: &str) -> Vec<(bool, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(bool, Vec<String>)> = None;
    for line in markdown.lines() {
        match &mut current {
            None => {
                let fence = line.trim_end();
                if fence == "```sh test" {
                    current = Some((false, Vec::new()));
                } else if fence == "```sh test-server" {
                    current = Some((true, Vec::new()));
                }
            }
            Some((_, lines)) => {
                if line.trim_end() == "```" {
                    blocks.extend(current.take());
                } else if !line.trim().is_empty() {
                    lines.push(line.to_owned());
                }
            }
        }
    }
    blocks
}

/// Runs one README line with `sh -c` in the workdir, the binary first on PATH.
fn run_line(w: &Workdir, line: &str) -> (i32, String) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_runbook")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let line = line.replace("--duration 1m", "--duration 1s");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &line])
        .current_dir(w.path())
        .env("PATH", path);
    for var in [
        "RUNBOOK_CONFIG",
        "RUNBOOK_RUNBOOKS",
        "RUNBOOK_STORE",
        "RUNBOOK_ACTOR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in &w.env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sh");
    let text = format!(
        "$ {line}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_readme_examples_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    assert!(
        blocks.iter().filter(|(server, _)| !server).count() >= 1
            && blocks.iter().any(|(server, _)| *server),
        "README has no blocks marked `sh test` and `sh test-server`"
    );

    let prometheus = std::env::var("RUNBOOK_TEST_PROMETHEUS")
        .expect("RUNBOOK_TEST_PROMETHEUS (scripts/test starts a Prometheus and sets it)");
    let port = free_port();
    let w = Workdir::new()
        .env("USER", "readme")
        .env("RUNBOOK_RECEIVER_TOKEN", "readme-receiver-token-81c3")
        .env("RUNBOOK_API_TOKEN", "readme-api-token-5d2e");
    let config = std::fs::read_to_string(root.join("runbook.yaml")).unwrap();
    assert!(config.contains("url: http://127.0.0.1:9090"), "{config}");
    let config = config.replace("url: http://127.0.0.1:9090", &format!("url: {prometheus}"))
        + &format!("\nserver: {{ listen: \"127.0.0.1:{port}\" }}\n");
    w.config(&config);
    // The playbooks and their test cases (runbooks/tests/), as a clone has them.
    for dir in ["runbooks", "runbooks/tests"] {
        std::fs::create_dir_all(w.path().join(dir)).unwrap();
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, w.path().join(dir).join(p.file_name().unwrap())).unwrap();
            }
        }
    }

    let mut ran = 0;
    for (needs_server, lines) in &blocks {
        let server = needs_server.then(|| w.serve_at(&[], &format!("127.0.0.1:{port}")));
        for line in lines {
            let (code, text) = run_line(&w, line);
            assert!(!text.contains("panicked"), "{text}");
            assert_eq!(code, 0, "a README example failed:\n{text}");
            ran += 1;
        }
        drop(server);
    }
    assert!(ran >= 20, "only {ran} examples ran");
}

#[test]
fn marked_blocks_are_found_and_others_are_not() {
    let md = "x\n```sh\nrunbook no\n```\n```sh test\nrunbook a\n\nrunbook b  # c\n```\n```sh test-server\nrunbook s\n```\n";
    assert_eq!(
        marked_blocks(md),
        [
            (
                false,
                vec!["runbook a".to_owned(), "runbook b  # c".to_owned()]
            ),
            (true, vec!["runbook s".to_owned()])
        ]
    );
}
