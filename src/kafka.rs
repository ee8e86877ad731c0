//! Kafka clients built from the config: brokers, plain properties, and secret properties
//! (SASL/SCRAM passwords, TLS keys) read from the environment or files and masked.

use rdkafka::ClientConfig;

use crate::{
    config::{KafkaConfig, SecretError},
    secrets::Masker,
};

/// A secret property (`kafka.secret_properties`) that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("kafka property {key}")]
pub struct SecretPropertyError {
    pub key: String,
    #[source]
    pub source: SecretError,
}

/// A client configuration for `brokers` with every configured property applied.
///
/// # Errors
///
/// A secret property's variable is not set or its file cannot be read.
pub fn client_config(
    k: &KafkaConfig,
    masker: &Masker,
) -> Result<ClientConfig, SecretPropertyError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    for (key, secret) in &k.secret_properties {
        let value = secret
            .resolve(masker)
            .map_err(|source| SecretPropertyError {
                key: key.clone(),
                source,
            })?;
        c.set(key, value);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_and_tls_settings_pass_through_and_the_password_is_masked() {
        std::env::set_var("RUNBOOK_TEST_KAFKA_PASSWORD", "scram-pass-9921");
        let k: KafkaConfig = serde_yaml::from_str(
            "brokers: kafka:9093\nproperties: { security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512, sasl.username: runbook, ssl.ca.location: /etc/ca.pem }\nsecret_properties: { sasl.password: { env: RUNBOOK_TEST_KAFKA_PASSWORD } }\n",
        )
        .unwrap();
        let masker = Masker::default();
        let c = client_config(&k, &masker).unwrap();
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(c.get("sasl.password"), Some("scram-pass-9921"));
        assert_eq!(
            masker.mask_str("auth failed for scram-pass-9921"),
            "auth failed for ****"
        );
    }

    #[test]
    fn an_unset_secret_property_names_the_property_and_the_variable() {
        let k: KafkaConfig = serde_yaml::from_str(
            "brokers: kafka:9093\nsecret_properties: { sasl.password: { env: RUNBOOK_TEST_KAFKA_NEVER_SET } }\n",
        )
        .unwrap();
        let e = client_config(&k, &Masker::default()).unwrap_err();
        assert_eq!(e.key, "sasl.password");
        assert_eq!(
            crate::text::error_chain(&e),
            "kafka property sasl.password: environment variable RUNBOOK_TEST_KAFKA_NEVER_SET is not set"
        );
    }
}
