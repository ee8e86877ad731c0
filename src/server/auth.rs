//! Bearer tokens and roles: `viewer` reads, `operator` runs playbooks, `PlatformAdmin` retries or
//! deletes DLQ entries and changes runtime settings. With no tokens configured every protected
//! call is refused rather than left open.

use axum::http::HeaderMap;

use super::error::AppError;
use crate::{config::Config, secrets::Masker};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    PlatformAdmin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "PlatformAdmin" | "platform_admin" | "admin" => Some(Role::PlatformAdmin),
            _ => None,
        }
    }
}

/// Who made a call.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// A configured token whose role is not one of the three.
#[derive(Debug, thiserror::Error)]
#[error("auth.tokens `{name}`: unknown role `{role}` (viewer, operator, PlatformAdmin)")]
pub struct UnknownRole {
    pub name: String,
    pub role: String,
}

#[derive(Default)]
pub struct Tokens {
    tokens: Vec<(String, Principal)>,
}

impl Tokens {
    /// Resolves the configured tokens; ones that cannot be read are skipped with a warning.
    ///
    /// # Errors
    ///
    /// A token names a role that does not exist.
    pub fn from_config(config: &Config, masker: &Masker) -> Result<Tokens, UnknownRole> {
        let mut tokens = Vec::new();
        for t in &config.auth.tokens {
            let role = Role::parse(&t.role).ok_or_else(|| UnknownRole {
                name: t.name.clone(),
                role: t.role.clone(),
            })?;
            match t.secret().resolve(masker) {
                Ok(secret) => tokens.push((
                    secret,
                    Principal {
                        name: t.name.clone(),
                        role,
                    },
                )),
                Err(e) => {
                    let error = crate::text::error_chain(&e);
                    tracing::warn!(token = %t.name, %error, "API token not available.");
                }
            }
        }
        Ok(Tokens { tokens })
    }

    /// The caller, if its token is known and its role reaches `need`.
    pub fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<Principal, AppError> {
        if self.tokens.is_empty() {
            return Err(AppError::Unauthorized(
                "no API tokens are configured (auth.tokens); the API refuses every call".into(),
            ));
        }
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| AppError::Unauthorized("a bearer token is required".into()))?;
        let principal = self
            .tokens
            .iter()
            .find(|(secret, _)| constant_time_eq(secret.as_bytes(), presented.trim().as_bytes()))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| AppError::Unauthorized("unknown token".into()))?;
        if principal.role < need {
            return Err(AppError::Forbidden(format!(
                "token `{}` has role {:?}; this call needs {:?}",
                principal.name, principal.role, need
            )));
        }
        Ok(principal)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_role_names_the_token_and_the_role() {
        let config = Config::parse(
            std::path::Path::new("runbook.yaml"),
            "auth:\n  tokens:\n    - { name: ci, role: root, token_env: RUNBOOK_TEST_CI_TOKEN }\n",
        )
        .unwrap();
        let e = Tokens::from_config(&config, &Masker::default())
            .err()
            .expect("an unknown role is refused");
        assert_eq!(
            e.to_string(),
            "auth.tokens `ci`: unknown role `root` (viewer, operator, PlatformAdmin)"
        );
    }

    #[test]
    fn a_token_that_cannot_be_read_is_skipped() {
        let config = Config::parse(
            std::path::Path::new("runbook.yaml"),
            "auth:\n  tokens:\n    - { name: ci, role: viewer, token_env: RUNBOOK_TEST_TOKEN_NEVER_SET }\n",
        )
        .unwrap();
        let tokens = Tokens::from_config(&config, &Masker::default()).unwrap();
        assert!(tokens.tokens.is_empty());
    }
}
