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

#[derive(Default)]
pub struct Tokens {
    tokens: Vec<(String, Principal)>,
}

impl Tokens {
    /// Resolves the configured tokens; ones that cannot be read are skipped with a warning.
    pub fn from_config(config: &Config, masker: &Masker) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        for t in &config.auth.tokens {
            let role = Role::parse(&t.role).ok_or_else(|| {
                format!(
                    "auth.tokens `{}`: unknown role `{}` (viewer, operator, PlatformAdmin)",
                    t.name, t.role
                )
            })?;
            match t.secret().resolve(masker) {
                Ok(secret) => tokens.push((
                    secret,
                    Principal {
                        name: t.name.clone(),
                        role,
                    },
                )),
                Err(e) => tracing::warn!(token = %t.name, error = %e, "API token not available."),
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
