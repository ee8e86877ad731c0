//! The JSON Schemas of the playbook format and of `runbook.yaml`, derived from the types the
//! loaders read, so they cannot drift.

use serde_json::Value as Json;

use crate::{config::Config, playbook::raw::RawPlaybook};

pub fn playbook_schema() -> Json {
    let schema = schemars::schema_for!(RawPlaybook);
    let mut v = serde_json::to_value(schema).unwrap_or_default();
    v["$id"] = Json::String("https://runbook.dev/schema/playbook.json".into());
    v["title"] = Json::String("runbook playbook".into());
    v
}

/// The schema of the config file, `runbook.yaml`.
pub fn config_schema() -> Json {
    let schema = schemars::schema_for!(Config);
    let mut v = serde_json::to_value(schema).unwrap_or_default();
    v["$id"] = Json::String("https://runbook.dev/schema/config.json".into());
    v["title"] = Json::String("runbook config (runbook.yaml)".into());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object of the schema with named properties, with where it is.
    fn objects<'a>(at: &str, schema: &'a Json, out: &mut Vec<(String, &'a Json)>) {
        let Json::Object(map) = schema else { return };
        if map.contains_key("properties") {
            out.push((at.to_owned(), schema));
        }
        for (keyword, value) in map {
            let at = format!("{at}/{keyword}");
            match (keyword.as_str(), value) {
                // Maps of names to schemas: a name is no keyword.
                ("properties" | "$defs", Json::Object(named)) => {
                    for (name, sub) in named {
                        objects(&format!("{at}/{name}"), sub, out);
                    }
                }
                (_, Json::Array(list)) => {
                    for (i, sub) in list.iter().enumerate() {
                        objects(&format!("{at}/{i}"), sub, out);
                    }
                }
                (_, sub) => objects(&at, sub, out),
            }
        }
    }

    #[test]
    fn the_config_schema_refuses_unknown_keys_everywhere_as_the_loader_does() {
        let schema = config_schema();
        let mut found = Vec::new();
        objects("#", &schema, &mut found);
        assert!(found.len() > 15, "{found:?}");
        let open: Vec<&String> = found
            .iter()
            .filter(|(_, o)| o["additionalProperties"] != Json::Bool(false))
            .map(|(at, _)| at)
            .collect();
        assert!(open.is_empty(), "objects that take unknown keys: {open:?}");
        // The loader agrees: an unknown key deep inside is refused.
        let e = Config::parse(
            std::path::Path::new("runbook.yaml"),
            "streaming:\n  handlers:\n    t: { http: { url: x, tiemout: 1s } }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field `tiemout`"), "{e:?}");
    }

    #[test]
    fn the_config_schema_takes_kafka_properties_as_the_loader_does() {
        let schema = config_schema();
        let props = &schema["$defs"]["KafkaConfig"]["properties"]["properties"];
        let value = &schema["$defs"]["KafkaScalar"];
        assert_eq!(props["additionalProperties"]["$ref"], "#/$defs/KafkaScalar");
        assert_eq!(
            value["type"],
            serde_json::json!(["string", "number", "boolean"])
        );
        let c = Config::parse(
            std::path::Path::new("runbook.yaml"),
            "kafka: { brokers: b, properties: { a: x, b: 1, c: true } }\n",
        )
        .unwrap();
        assert_eq!(c.kafka.map(|k| k.properties.len()), Some(3));
    }
}
