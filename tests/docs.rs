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
