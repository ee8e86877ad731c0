//! The names a playbook may refer to that the config defines: datasources and notify channels.
//! Compile checks steps against them; empty sets mean "the config names none".

use std::collections::BTreeSet;

#[derive(Debug, Default, Clone)]
pub struct Names {
    pub datasources: BTreeSet<String>,
    pub channels: BTreeSet<String>,
    /// The programs `shell.allow` lets a `shell` step run.
    pub shell_allow: BTreeSet<String>,
}

/// A set for a message: `a, b` or `none`.
pub(super) fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}
