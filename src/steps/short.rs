//! A step kind that may be written short (one string) or long (a map): `sql: "SELECT 1"` or
//! `sql: { query: ..., datasource: ... }`.

use std::{borrow::Cow, fmt};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{
    de::{self, value::MapAccessDeserializer, MapAccess},
    Deserialize, Deserializer,
};

/// A kind that may be written short (one string) or long (a map): `sql: "SELECT 1"` or
/// `sql: { query: ..., datasource: ... }`. The long form keeps serde_yaml's own error locations.
#[derive(Debug)]
pub struct ShortOr<T>(pub T);

/// How a kind reads its one-string short form.
pub trait FromShort: Sized {
    fn from_short(text: String) -> Self;
}

impl<'de, T: FromShort + Deserialize<'de>> Deserialize<'de> for ShortOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: FromShort + Deserialize<'de>> de::Visitor<'de> for Visitor<T> {
            type Value = ShortOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a map")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ShortOr<T>, E> {
                Ok(ShortOr(T::from_short(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ShortOr<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(ShortOr)
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for ShortOr<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("ShortOr{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let long = g.subschema_for::<T>();
        json_schema!({ "anyOf": [ { "type": "string" }, long ] })
    }
}
