//! Kafka clients built from the config: brokers, plain properties, and secret properties
//! (SASL/SCRAM passwords, TLS keys) read from the environment or files and masked.

use rdkafka::ClientConfig;

use crate::{config::KafkaConfig, secrets::Masker};

/// A client configuration for `brokers` with every configured property applied.
pub fn client_config(k: &KafkaConfig, masker: &Masker) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    for (key, secret) in &k.secret_properties {
        let value = secret
            .resolve(masker)
            .map_err(|e| format!("kafka property {key}: {e}"))?;
        c.set(key, value);
    }
    Ok(c)
}
