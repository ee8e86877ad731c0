//! The names a playbook may refer to that the config defines: datasources, notify channels,
//! actions; and the param values the config sets per playbook.
//! Compile checks steps against them; empty sets mean "the config names none".

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
pub struct Names {
    pub datasources: BTreeSet<String>,
    pub channels: BTreeSet<String>,
    /// The programs `shell.allow` lets a `shell` step run.
    pub shell_allow: BTreeSet<String>,
    /// The config's `actions` names.
    pub actions: BTreeSet<String>,
    /// The config's `playbooks.NAME.params`: values that replace the playbook's defaults.
    pub playbook_params: BTreeMap<String, BTreeMap<String, serde_yaml::Value>>,
}

/// A set for a message: `a, b` or `none`.
pub(super) fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}
