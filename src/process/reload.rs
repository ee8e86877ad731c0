//! Hot reload: `runbook serve` watches its playbooks folder and serves an edit without a restart.
//!
//! Every second the task compares the folder's playbook files (names, modification times and
//! sizes) with what it saw last; on any difference it loads the folder again
//! ([`crate::playbook::reload`]): changed files take effect, a file with problems keeps serving
//! its last good version (logged, and shown by `GET /api/playbooks` with `path:line:col` errors),
//! a new file with problems stays out, a deleted file's playbook goes. A run keeps the version it
//! was enqueued with whatever happens here ([`Engine::pin`]).
//!
//! Polling rather than file-system events (the `notify` crate): a stat of a dozen files a second
//! costs nothing, needs no dependency, and sees every way a file changes the same way on every
//! platform: editors that write a new file and rename it over the old one, a Kubernetes ConfigMap
//! swapping its symlinked folder, network file systems that send no events. A half-written file
//! is read as broken (its last good version stays) and read again at the next change.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

use crate::{
    diagnostics::Diagnostic,
    engine::Engine,
    playbook::{playbook_files, Catalog},
};

/// How often the folder is looked at.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What the folder looked like: each playbook file's modification time and size; `None` when the
/// folder could not be read.
pub type Fingerprint = Option<BTreeMap<PathBuf, (Option<SystemTime>, u64)>>;

/// The fingerprint of the playbook files under `dir`.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let files = playbook_files(dir).ok()?;
    Some(
        files
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok();
                let mtime = meta.as_ref().and_then(|m| m.modified().ok());
                let size = meta.map_or(0, |m| m.len());
                (f, (mtime, size))
            })
            .collect(),
    )
}

/// How one playbook changed between two catalogs.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Changed,
    Removed,
}

/// The playbooks whose version differs between `old` and `new`, by name.
pub fn changes(old: &Catalog, new: &Catalog) -> Vec<(String, Change)> {
    let hash = |c: &Catalog, name: &str| c.versions.get(name).map(|v| v.hash.clone());
    let mut out = Vec::new();
    for name in new.playbooks.keys() {
        match (
            old.playbooks.contains_key(name),
            hash(old, name) == hash(new, name),
        ) {
            (false, _) => out.push((name.clone(), Change::Added)),
            (true, false) => out.push((name.clone(), Change::Changed)),
            (true, true) => {}
        }
    }
    for name in old
        .playbooks
        .keys()
        .filter(|n| !new.playbooks.contains_key(*n))
    {
        out.push((name.clone(), Change::Removed));
    }
    out
}

/// Watches `dir` until `shutdown`, installing each reload in `engine`. `seen` is the folder's
/// fingerprint taken before the catalog the engine holds was loaded.
pub async fn run(
    engine: Arc<Engine>,
    dir: PathBuf,
    mut seen: Fingerprint,
    shutdown: CancellationToken,
) {
    tracing::info!(dir = %dir.display(), "Watching the playbooks folder.");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => break,
        }
        let (engine2, dir2, before) = (engine.clone(), dir.clone(), seen.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let now = fingerprint(&dir2);
            if now != before {
                reload(&engine2, &dir2);
            }
            now
        })
        .await;
        match checked {
            Ok(now) => seen = now,
            Err(e) => tracing::error!(error = %e, "Reloading the playbooks failed."),
        }
    }
    tracing::info!("Stopped watching the playbooks folder.");
}

/// Loads `dir` again and installs the result in `engine`, logging what changed and every problem.
pub fn reload(engine: &Engine, dir: &Path) {
    let previous = engine.catalog();
    let (catalog, problems) = Engine::reload_playbooks(dir, &engine.services().config, &previous);
    for (name, change) in changes(&previous, &catalog) {
        let version = catalog.versions.get(&name).map(|v| short(&v.hash));
        match change {
            Change::Removed => tracing::info!(playbook = %name, "Playbook removed."),
            _ => tracing::info!(
                playbook = %name,
                version = version.unwrap_or_default(),
                change = ?change,
                "Playbook loaded."
            ),
        }
    }
    log_problems(&catalog, &problems);
    engine
        .metrics()
        .init_runs(catalog.playbooks.keys().map(String::as_str));
    engine.set_catalog(catalog);
    engine.set_problems(problems);
}

/// Logs each problem, saying whether the file's last good version is still served.
pub fn log_problems(catalog: &Catalog, problems: &[Diagnostic]) {
    for d in problems {
        let kept = catalog.playbooks.values().find(|p| p.path == d.path);
        match kept {
            Some(p) => tracing::error!(
                diagnostic = %d,
                playbook = %p.name,
                "Playbook has errors; its last good version is still served."
            ),
            None => tracing::error!(diagnostic = %d, "Playbook not loaded."),
        }
    }
}

/// The first 12 hex digits of a content hash, as logs show it.
pub fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::{load, CompileEnv};

    fn catalog(dir: &Path, files: &[(&str, &str)]) -> Catalog {
        for f in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        for (name, wait) in files {
            let text = format!("name: {name}\nsteps:\n  - id: s\n    wait: {wait}\n");
            std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
        }
        load(dir, &CompileEnv::default()).0
    }

    #[test]
    fn changes_name_added_changed_and_removed_playbooks() {
        let dir = tempfile::tempdir().unwrap();
        let old = catalog(dir.path(), &[("a", "1ms"), ("b", "1ms"), ("c", "1ms")]);
        let new = catalog(dir.path(), &[("a", "1ms"), ("b", "2ms"), ("d", "1ms")]);
        assert_eq!(
            changes(&old, &new),
            [
                ("b".to_owned(), Change::Changed),
                ("d".to_owned(), Change::Added),
                ("c".to_owned(), Change::Removed)
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn the_fingerprint_sees_an_edit_of_the_same_size_and_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "name: a\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a playbook").unwrap();
        let first = fingerprint(dir.path());
        assert_eq!(first.as_ref().map(BTreeMap::len), Some(1));
        assert_eq!(fingerprint(dir.path()), first);
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.yaml"))
            .unwrap();
        // The same size, a later modification time.
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_ne!(fingerprint(dir.path()), first);
        let second = fingerprint(dir.path());
        std::fs::write(dir.path().join("b.yml"), "name: b\n").unwrap();
        assert_ne!(fingerprint(dir.path()), second);
        assert_eq!(fingerprint(&dir.path().join("gone")), None);
    }
}
