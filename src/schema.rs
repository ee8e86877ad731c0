//! The JSON Schema of the playbook format, derived from the raw types so it cannot drift.

use serde_json::Value as Json;

use crate::playbook::raw::RawPlaybook;

pub fn playbook_schema() -> Json {
    let schema = schemars::schema_for!(RawPlaybook);
    let mut v = serde_json::to_value(schema).unwrap_or_default();
    v["$id"] = Json::String("https://runbook.dev/schema/playbook.json".into());
    v["title"] = Json::String("runbook playbook".into());
    v
}
