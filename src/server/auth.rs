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
    /// The role as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::PlatformAdmin => "PlatformAdmin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "PlatformAdmin" | "platform_admin" | "admin" => Some(Role::PlatformAdmin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a call.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// Why the configured tokens were refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// A token whose role is not one of the three.
    #[error("auth.tokens `{name}`: unknown role `{role}` (viewer, operator, PlatformAdmin)")]
    UnknownRole { name: String, role: String },
    /// Two entries with one secret: a caller presenting it would get whichever came first.
    #[error(
        "auth.tokens `{first}` ({first_role}) and `{second}` ({second_role}) have the same token; \
         give each entry a token of its own"
    )]
    Duplicate {
        first: String,
        first_role: String,
        second: String,
        second_role: String,
    },
}

/// A secret as it is kept and compared: its SHA-256 digest, so a comparison takes the same time
/// whatever the lengths of the two tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    pub(super) fn of(secret: &str) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(secret.as_bytes()).into())
    }

    /// Constant time: no early exit on the first byte that differs.
    pub(super) fn matches(&self, other: &Digest) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

/// The bearer token of `headers`, if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

#[derive(Default)]
pub struct Tokens {
    tokens: Vec<(Digest, Principal)>,
}

impl Tokens {
    /// Resolves the configured tokens; ones that cannot be read are skipped with a warning.
    ///
    /// # Errors
    ///
    /// A token names a role that does not exist, or two entries have the same token (the error
    /// names both entries, never the token).
    pub fn from_config(config: &Config, masker: &Masker) -> Result<Tokens, TokensError> {
        let mut tokens: Vec<(Digest, Principal)> = Vec::new();
        for t in &config.auth.tokens {
            let role = Role::parse(&t.role).ok_or_else(|| TokensError::UnknownRole {
                name: t.name.clone(),
                role: t.role.clone(),
            })?;
            match t.secret().resolve(masker) {
                Ok(secret) => {
                    let digest = Digest::of(secret.trim());
                    if let Some((_, first)) = tokens.iter().find(|(d, _)| d.matches(&digest)) {
                        let role_of = |name: &str| {
                            config
                                .auth
                                .tokens
                                .iter()
                                .find(|c| c.name == name)
                                .map_or_else(String::new, |c| c.role.clone())
                        };
                        return Err(TokensError::Duplicate {
                            first: first.name.clone(),
                            first_role: role_of(&first.name),
                            second: t.name.clone(),
                            second_role: t.role.clone(),
                        });
                    }
                    tokens.push((
                        digest,
                        Principal {
                            name: t.name.clone(),
                            role,
                        },
                    ));
                }
                Err(e) => {
                    let error = crate::text::error_chain(&e);
                    tracing::warn!(token = %t.name, %error, "API token not available.");
                }
            }
        }
        Ok(Tokens { tokens })
    }

    /// The tokens that can be used: their names and roles (never the tokens).
    pub fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.tokens.iter().map(|(_, p)| p)
    }

    /// Who holds the token whose SHA-256 digest is `digest`, if it is still configured (the
    /// console keeps sessions by the digest of the token they were opened with, never the token,
    /// and drops a session whose token left the config). Constant time, like [`Tokens::authorize`].
    pub fn holder_of(&self, digest: &[u8; 32]) -> Option<Principal> {
        let wanted = Digest(*digest);
        let mut found = None;
        for (d, principal) in &self.tokens {
            if d.matches(&wanted) && found.is_none() {
                found = Some(principal);
            }
        }
        found.cloned()
    }

    /// The caller, if its token is known and its role reaches `need`.
    pub fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<Principal, AppError> {
        if self.tokens.is_empty() {
            return Err(AppError::Unauthorized(
                "no API tokens are configured (auth.tokens); the API refuses every call".into(),
            ));
        }
        let presented = bearer(headers)
            .map(Digest::of)
            .ok_or_else(|| AppError::Unauthorized("a bearer token is required".into()))?;
        // Every configured token is compared, so the time taken says nothing about which matched.
        let mut found = None;
        for (digest, principal) in &self.tokens {
            if digest.matches(&presented) && found.is_none() {
                found = Some(principal);
            }
        }
        let principal = found
            .cloned()
            .ok_or_else(|| AppError::Unauthorized("unknown token".into()))?;
        if principal.role < need {
            return Err(AppError::Forbidden(format!(
                "token `{}` has role {}; this call needs {}",
                principal.name, principal.role, need
            )));
        }
        Ok(principal)
    }
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

    /// Two entries with one token once both loaded, and a caller presenting it got the role
    /// of whichever came first.
    #[test]
    fn two_entries_with_one_token_are_refused_naming_both() {
        let config = Config::parse(
            std::path::Path::new("runbook.yaml"),
            "auth:\n  tokens:\n    - { name: grafana, role: viewer, token: shared-secret-1 }\n    \
             - { name: oncall, role: PlatformAdmin, token: \" shared-secret-1\" }\n",
        )
        .unwrap();
        let e = Tokens::from_config(&config, &Masker::default())
            .err()
            .expect("a token shared by two entries is refused");
        let message = e.to_string();
        assert_eq!(
            message,
            "auth.tokens `grafana` (viewer) and `oncall` (PlatformAdmin) have the same token; \
             give each entry a token of its own"
        );
        assert!(!message.contains("shared-secret-1"), "{message}");
    }

    #[test]
    fn a_token_matches_only_itself_whatever_its_length() {
        let config = Config::parse(
            std::path::Path::new("runbook.yaml"),
            "auth:\n  tokens:\n    - { name: ops, role: operator, token: operator-token }\n",
        )
        .unwrap();
        let tokens = Tokens::from_config(&config, &Masker::default()).unwrap();
        let call = |token: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            tokens.authorize(&h, Role::Viewer).map(|p| p.name)
        };
        assert_eq!(call("operator-token").unwrap(), "ops");
        for wrong in [
            "operator-toke",
            "operator-tokenx",
            "",
            "x",
            "OPERATOR-TOKEN",
        ] {
            assert!(call(wrong).is_err(), "`{wrong}` is not the token");
        }
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
