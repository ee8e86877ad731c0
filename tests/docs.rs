//! docs/playbooks.md keeps up with the format: every key of the JSON Schema that `runbook schema`
//! prints, every enum value in it, every runtime op with its arguments and every kafka op must
//! appear in the document written in backticks (`` `name` ``). The names come from the binary
//! itself (the schema, and `runbook validate`'s own lists of known ops and arguments), so a key
//! added to the code without a word in the document fails here.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use crate::util::Workdir;

fn playbook_doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/playbooks.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The names of `names` that the document does not write as `` `name` ``.
fn missing<'a>(doc: &str, names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .cloned()
        .collect()
}

/// Walks a JSON Schema: property names into `props`, string enum and const values into `values`.
fn walk(schema: &Json, props: &mut BTreeSet<String>, values: &mut BTreeSet<String>) {
    match schema {
        Json::Array(items) => {
            for item in items {
                walk(item, props, values);
            }
        }
        Json::Object(map) => {
            for (key, value) in map {
                match key.as_str() {
                    "properties" | "patternProperties" => {
                        for (name, sub) in value.as_object().into_iter().flatten() {
                            if key == "properties" {
                                props.insert(name.clone());
                            }
                            walk(sub, props, values);
                        }
                    }
                    "$defs" | "definitions" => {
                        for sub in value.as_object().into_iter().flatten().map(|(_, s)| s) {
                            walk(sub, props, values);
                        }
                    }
                    "anyOf"
                    | "oneOf"
                    | "allOf"
                    | "prefixItems"
                    | "items"
                    | "additionalProperties"
                    | "not"
                    | "if"
                    | "then"
                    | "else"
                    | "contains" => walk(value, props, values),
                    "enum" => values.extend(
                        value
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str().map(str::to_owned)),
                    ),
                    "const" => values.extend(value.as_str().map(str::to_owned)),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[test]
fn playbook_doc_names_every_schema_key_and_value() {
    let w = Workdir::new();
    let out = w.run(&["schema"]);
    assert_eq!(out.code, 0, "{out:?}");
    let schema = out.json();
    let (mut props, mut values) = (BTreeSet::new(), BTreeSet::new());
    walk(&schema, &mut props, &mut values);
    // The walk itself must find the format, or an empty list would pass.
    for key in [
        "steps",
        "on_failure",
        "for_each",
        "sql",
        "attempts",
        "matchers",
        "argv",
    ] {
        assert!(props.contains(key), "schema walk missed `{key}`: {props:?}");
    }
    assert!(
        values.contains("duration"),
        "schema walk missed enum values: {values:?}"
    );

    let doc = playbook_doc();
    let keys = missing(&doc, &props);
    let enum_values = missing(&doc, &values);
    assert!(
        keys.is_empty() && enum_values.is_empty(),
        "docs/playbooks.md does not mention (in backticks) these playbook keys of `runbook schema`: {}; \
         nor these values: {}",
        keys.join(", "),
        enum_values.join(", ")
    );
}

/// The comma-separated list inside `(<marker>...)` at the end of a diagnostic line.
fn listed(line: &str, marker: &str) -> Vec<String> {
    let start = line
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in: {line}"))
        + marker.len();
    let end = line.rfind(')').expect("closing parenthesis");
    line[start..end]
        .split(", ")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .map(str::to_owned)
        .collect()
}

#[test]
fn playbook_doc_names_every_runtime_and_kafka_op() {
    let w = Workdir::new();
    // Unknown ops: validate answers with the ops it knows.
    w.playbook(
        "ops",
        "name: ops\nsteps:\n  - id: r\n    runtime: { op: zz_no_such_op }\n  - id: k\n    kafka: { op: zz_no_such_op }\n",
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    let line = |what: &str| -> String {
        out.stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` diagnostic: {out:?}"))
            .to_owned()
    };
    let runtime_ops = listed(&line("unknown runtime op"), "(known: ");
    let kafka_ops = listed(&line("unknown kafka op"), "(known: ");
    assert!(runtime_ops.len() >= 5, "{runtime_ops:?}");
    assert!(kafka_ops.len() >= 3, "{kafka_ops:?}");

    // An argument no op takes: validate answers with the arguments each op takes.
    let mut yaml = String::from("name: args\nsteps:\n");
    for (i, op) in runtime_ops.iter().enumerate() {
        yaml.push_str(&format!(
            "  - id: s{i}\n    runtime: {{ op: {op}, zz_no_such_arg: 1 }}\n"
        ));
    }
    std::fs::remove_file(w.path().join("runbooks/ops.yaml")).unwrap();
    w.playbook("args", &yaml);
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    let mut args = BTreeSet::new();
    for op in &runtime_ops {
        let l = out
            .stdout
            .lines()
            .find(|l| l.contains(&format!("`{op}` takes no argument")))
            .unwrap_or_else(|| panic!("no argument list for `{op}`: {out:?}"));
        args.extend(listed(l, "(it takes: "));
    }
    assert!(args.contains("older_than"), "{args:?}");

    let doc = playbook_doc();
    let ops = missing(&doc, &runtime_ops);
    let arguments = missing(&doc, &args);
    let kafka = missing(&doc, &kafka_ops);
    assert!(
        ops.is_empty() && arguments.is_empty() && kafka.is_empty(),
        "docs/playbooks.md does not mention (in backticks) these runtime ops: {}; runtime op arguments: {}; kafka ops: {}",
        ops.join(", "),
        arguments.join(", "),
        kafka.join(", ")
    );
}

// docs/configuration.md and `runbook schema config` describe the same keys: every key the schema
// has is written in the document, and every key the document's key tables and YAML examples use
// (and the repository's own runbook.yaml, and README's `# runbook.yaml` examples) is in the schema.

fn repo_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn config_schema() -> Json {
    let w = Workdir::new();
    // The schema does not depend on the config, nor need one that loads.
    w.config("no_such_key: 1\n");
    let out = w.run(&["schema", "config"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
}

/// The schemas `schema` may stand for: `$ref`s followed, `anyOf`/`oneOf`/`allOf` opened.
fn alternatives<'a>(root: &'a Json, schema: &'a Json, out: &mut Vec<&'a Json>) {
    if let Some(target) = schema.get("$ref").and_then(Json::as_str) {
        let name = target.trim_start_matches("#/$defs/");
        if let Some(def) = root.get("$defs").and_then(|d| d.get(name)) {
            alternatives(root, def, out);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for sub in schema
            .get(key)
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            alternatives(root, sub, out);
        }
    }
    out.push(schema);
}

/// The schemas of the value under `key` in an object described by `schemas`: a property, or a
/// map's value. Empty when no alternative takes the key.
fn child<'a>(root: &'a Json, schemas: &[&'a Json], key: &str) -> Vec<&'a Json> {
    let mut found = Vec::new();
    for s in schemas {
        let mut alts = Vec::new();
        alternatives(root, s, &mut alts);
        for a in alts {
            if let Some(p) = a.get("properties").and_then(|p| p.get(key)) {
                found.push(p);
            } else if let Some(map) = a.get("additionalProperties").filter(|m| m.is_object()) {
                found.push(map);
            }
        }
    }
    found
}

/// The schemas of a list's items.
fn items<'a>(root: &'a Json, schemas: &[&'a Json]) -> Vec<&'a Json> {
    let mut found = Vec::new();
    for s in schemas {
        let mut alts = Vec::new();
        alternatives(root, s, &mut alts);
        found.extend(alts.into_iter().filter_map(|a| a.get("items")));
    }
    found
}

/// Walks a YAML example along the schema: the path of every key the schema does not take into
/// `unknown`, every key it takes into `known`.
fn check_example(
    root: &Json,
    schemas: &[&Json],
    value: &serde_yaml::Value,
    path: &str,
    unknown: &mut Vec<String>,
    known: &mut BTreeSet<String>,
) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let sub = child(root, schemas, &key);
                if sub.is_empty() {
                    unknown.push(at);
                } else {
                    known.insert(key);
                    check_example(root, &sub, v, &at, unknown, known);
                }
            }
        }
        serde_yaml::Value::Sequence(list) => {
            let sub = items(root, schemas);
            for v in list {
                check_example(root, &sub, v, &format!("{path}[]"), unknown, known);
            }
        }
        _ => {}
    }
}

/// The YAML blocks of a Markdown text.
fn yaml_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            Some(text) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(text));
                current = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The keys in the first column of the document's key tables, each as a dotted path from the
/// config's root: a table under a heading that names a key (`` ### `streaming` ``) is relative to it.
fn table_keys(doc: &str) -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            let title = line.trim_start_matches('#').trim();
            section = match title.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
                Some(key) => key.to_owned(),
                None => String::new(),
            };
        } else if let Some(row) = line.strip_prefix("| `") {
            let key = row.split('`').next().unwrap_or_default();
            keys.push(if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    keys
}

#[test]
fn config_doc_and_config_schema_name_the_same_keys() {
    let schema = config_schema();
    let root = &schema;
    let (mut props, mut values) = (BTreeSet::new(), BTreeSet::new());
    walk(root, &mut props, &mut values);
    // The walk itself must find the config, or an empty list would pass.
    for key in [
        "store",
        "listen",
        "receiver",
        "token_file",
        "workerConcurrency",
        "retention",
        "notifications",
        "routing_key_env",
        "secret_properties",
        "exclusive",
        "error_rate",
        "secret",
    ] {
        assert!(props.contains(key), "schema walk missed `{key}`: {props:?}");
    }
    assert!(values.contains("slack"), "{values:?}");

    let doc = repo_file("docs/configuration.md");
    let mut unknown = Vec::new();
    let mut documented = BTreeSet::new();

    // Key tables: each dotted key leads somewhere in the schema.
    let keys = table_keys(&doc);
    assert!(
        keys.iter().any(|k| k == "streaming.retention.runs"),
        "{keys:?}"
    );
    for key in &keys {
        let mut at = vec![root];
        for part in key.split('.') {
            at = child(root, &at, part);
            documented.insert(part.to_owned());
        }
        if at.is_empty() {
            unknown.push(format!("{key} (key table)"));
        }
    }

    // Examples: the document's, README's `# runbook.yaml` ones and the repository's runbook.yaml.
    let mut examples: Vec<(String, String)> = yaml_blocks(&doc)
        .into_iter()
        .map(|b| ("docs/configuration.md".to_owned(), b))
        .collect();
    examples.extend(
        yaml_blocks(&repo_file("README.md"))
            .into_iter()
            .filter(|b| b.starts_with("# runbook.yaml"))
            .map(|b| ("README.md".to_owned(), b)),
    );
    examples.push(("runbook.yaml".to_owned(), repo_file("runbook.yaml")));
    assert!(examples.len() >= 8, "{examples:?}");
    for (file, text) in &examples {
        let value: serde_yaml::Value = serde_yaml::from_str(text)
            .unwrap_or_else(|e| panic!("{file}: an example does not parse: {e}\n{text}"));
        let mut bad = Vec::new();
        check_example(root, &[root], &value, "", &mut bad, &mut documented);
        unknown.extend(bad.into_iter().map(|k| format!("{k} ({file})")));
    }
    assert!(
        unknown.is_empty(),
        "these documented config keys are not in `runbook schema config`: {}",
        unknown.join(", ")
    );

    let undocumented: Vec<&String> = props
        .iter()
        .filter(|p| !documented.contains(*p) && !doc.contains(&format!("`{p}`")))
        .collect();
    let values = missing(&doc, &values);
    assert!(
        undocumented.is_empty() && values.is_empty(),
        "docs/configuration.md does not name (in a key table, an example or backticks) these keys \
         of `runbook schema config`: {undocumented:?}; nor these values: {values:?}"
    );
}
