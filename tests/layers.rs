//! The crate's layers: `src/lib.rs` declares the top-level modules from the bottom up, and a
//! module may use only modules declared before it. This reads every source file and checks each
//! `crate::` path against that order, so an upward arrow (and with it any import cycle) fails
//! the suite with the file and the module it reached for.

use std::{
    fs,
    path::{Path, PathBuf},
};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules in the order `src/lib.rs` declares them.
fn declared_order() -> Vec<String> {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/steps/sql.rs` → `steps`).
fn owner(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    Some(first.trim_end_matches(".rs").to_owned())
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a piece of code names through `crate::`, including those inside
/// `use crate::{a::b, c::{d, e}}` groups.
fn crate_targets(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `runbook_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || item.trim().is_empty() {
                    item.push(c);
                }
            }
            out.push(ident(item.trim()));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|t| !t.is_empty() && t != "self");
    out
}

#[test]
fn crate_targets_reads_groups() {
    let code = "use crate::{config::Config, store::{runs, Db},\n    template::Dialect};\nlet x = crate::stream::ops::run();";
    assert_eq!(
        crate_targets(code),
        vec!["config", "store", "template", "stream"]
    );
}

#[test]
fn every_module_uses_only_modules_declared_below_it() {
    let order = declared_order();
    assert!(
        order.len() > 10,
        "src/lib.rs declares too few modules: {order:?}"
    );
    let rank = |m: &str| order.iter().position(|o| o == m);
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in files {
        let Some(own) = owner(&file) else { continue };
        if own == "main" || own == "lib" {
            continue;
        }
        let Some(own_rank) = rank(&own) else {
            problems.push(format!(
                "{}: module `{own}` is not declared in src/lib.rs",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&file).expect("source file");
        // Comments may mention any module (docs link upward to explain); code may not.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for target in crate_targets(&code) {
            checked += 1;
            if target == own {
                continue;
            }
            match rank(&target) {
                None => problems.push(format!(
                    "{}: uses `crate::{target}`, which src/lib.rs does not declare",
                    file.display()
                )),
                Some(r) if r > own_rank => problems.push(format!(
                    "{}: `{own}` uses `crate::{target}`, which is declared above it in src/lib.rs",
                    file.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        checked > 100,
        "found only {checked} crate:: paths; is the parser broken?"
    );
    assert!(
        problems.is_empty(),
        "upward imports:\n{}",
        problems.join("\n")
    );
}
