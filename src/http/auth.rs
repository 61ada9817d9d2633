//! Who may read the feed: JWT verification (`--jwt-secret`, `--jwt-public-key`) and
//! the Origin check against cross-site WebSocket hijacking (`--allowed-origins`).
//!
//! Tokens, secrets and keys are never logged, and a client never learns why the
//! library refused a token beyond "expired" or "not valid".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{Config, checked_secret};

/// Verifies the tokens of the WebSocket and of the read API.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

/// Why a request carries no acceptable token; each has its sentence and its label
/// of `maicivy_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
    Expired,
}

impl AuthError {
    pub fn sentence(self) -> &'static str {
        match self {
            Self::Missing => {
                "This feed requires a token: pass it as ?token=… or in an Authorization: Bearer header."
            }
            Self::Invalid => "The token is not valid for this server.",
            Self::Expired => "The token has expired; fetch a new one and reconnect.",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Invalid => "token_invalid",
            Self::Expired => "token_expired",
        }
    }
}

/// When a verified token stops being valid (its `exp` plus the leeway), in Unix
/// seconds: a WebSocket session closes then with code 4001.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry(pub u64);

impl Expiry {
    /// How long from now until the expiry (zero if already past).
    pub fn remaining(self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(self.0).saturating_sub(now)
    }
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
}

impl Authenticator {
    /// `None` when neither flag is set: the feed is open.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let (key, mut validation) = if let Some(secret) = &config.jwt_secret {
            (
                DecodingKey::from_secret(checked_secret(secret)?.as_bytes()),
                Validation::new(Algorithm::HS256),
            )
        } else if let Some(path) = &config.jwt_public_key {
            let pem = std::fs::read(path).map_err(|e| {
                format!("could not read the JWT public key {}: {e}", path.display())
            })?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| {
                    format!(
                        "{} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
                        path.display()
                    )
                })?;
            // Only the algorithms of the key's own family: a token can never make an
            // RSA public key serve as an HMAC secret.
            let validation = Validation::new_for_family(key.family());
            (key, validation)
        } else {
            return Ok(None);
        };
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = config.jwt_audience.is_some();
        let mut required = vec!["exp"];
        if let Some(aud) = &config.jwt_audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Self {
            key,
            validation,
            leeway: Duration::from_secs(config.jwt_leeway.as_secs()),
        }))
    }

    /// Checks a token; on success, when it stops being valid.
    pub fn verify(&self, token: &str) -> Result<Expiry, AuthError> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(Expiry(
                data.claims.exp.saturating_add(self.leeway.as_secs()),
            )),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                _ => Err(AuthError::Invalid),
            },
        }
    }

    /// Finds the request's token and checks it.
    pub fn authenticate(&self, uri: &Uri, headers: &HeaderMap) -> Result<Expiry, AuthError> {
        let token = token_of(uri, headers).ok_or(AuthError::Missing)?;
        self.verify(&token)
    }
}

/// The token of a request: the `Authorization: Bearer` header (non-browser
/// clients), else the `token` query parameter (browsers cannot set headers on a
/// WebSocket).
fn token_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    if let Some(token) = bearer {
        return Some(token.to_owned());
    }
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.token)
        .filter(|t| !t.is_empty())
}

/// The origins whose pages may open the WebSocket and send events.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    /// Lowercase, without a trailing slash. Empty: any origin.
    origins: Vec<String>,
}

impl AllowedOrigins {
    pub fn new(list: &[String]) -> Result<Self, String> {
        let mut origins = Vec::with_capacity(list.len());
        // `--allowed-origins ""` or a trailing comma leaves empty pieces: no origin.
        for raw in list.iter().filter(|raw| !raw.is_empty()) {
            if raw == "*" {
                return Ok(Self::default());
            }
            let origin = raw.trim_end_matches('/').to_ascii_lowercase();
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || HeaderValue::from_str(&origin).is_err()
            {
                return Err(format!(
                    "{raw:?} is not an origin such as https://example.com (scheme, host and port only)"
                ));
            }
            origins.push(origin);
        }
        Ok(Self { origins })
    }

    pub fn is_any(&self) -> bool {
        self.origins.is_empty()
    }

    /// The list, as CORS header values (empty: any origin).
    pub fn header_values(&self) -> Vec<HeaderValue> {
        self.origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect()
    }

    /// Whether a request with these headers may go on. No `Origin` header means no
    /// browser page sent it (curl, a server, a load balancer): the check protects
    /// browsers' users, other clients can claim any origin anyway. A page served by
    /// this server itself (the dashboard) is always allowed.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.is_any() {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let origin = origin
            .to_str()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .zip(origin.split_once("://").map(|(_, authority)| authority))
            .is_some_and(|(host, authority)| host.eq_ignore_ascii_case(authority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "unit-test-secret-of-at-least-32-bytes!!";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn auth(extra: &[&str]) -> Authenticator {
        let mut args = vec!["x", "--jwt-secret", SECRET, "--jwt-leeway", "0s"];
        args.extend_from_slice(extra);
        Authenticator::from_config(&Config::parse_from(args))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn tokens_are_checked() {
        let a = auth(&[]);
        let exp = now() + 60;
        assert_eq!(
            a.verify(&token(serde_json::json!({"exp": exp}), SECRET)),
            Ok(Expiry(exp))
        );
        assert_eq!(
            a.verify(&token(serde_json::json!({"exp": now() - 5}), SECRET)),
            Err(AuthError::Expired)
        );
        let other = "another-secret-of-at-least-32-bytes-long";
        assert_eq!(
            a.verify(&token(serde_json::json!({"exp": exp}), other)),
            Err(AuthError::Invalid)
        );
        // No exp: a token that never expires is refused.
        assert_eq!(
            a.verify(&token(serde_json::json!({"sub": "x"}), SECRET)),
            Err(AuthError::Invalid)
        );
        assert_eq!(a.verify("not.a.token"), Err(AuthError::Invalid));
        // `alg: none` is never accepted.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(a.verify(none), Err(AuthError::Invalid));
    }

    #[test]
    fn audience_and_issuer_are_enforced_when_set() {
        let a = auth(&["--jwt-audience", "dash", "--jwt-issuer", "me"]);
        let exp = now() + 60;
        let good = token(
            serde_json::json!({"exp": exp, "aud": "dash", "iss": "me"}),
            SECRET,
        );
        assert!(a.verify(&good).is_ok());
        let wrong = token(
            serde_json::json!({"exp": exp, "aud": "x", "iss": "me"}),
            SECRET,
        );
        assert_eq!(a.verify(&wrong), Err(AuthError::Invalid));
        let missing = token(serde_json::json!({"exp": exp}), SECRET);
        assert_eq!(a.verify(&missing), Err(AuthError::Invalid));
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_query() {
        let uri: Uri = "/ws/analytics?x=1&token=abc%2Bd".parse().unwrap();
        assert_eq!(token_of(&uri, &HeaderMap::new()).as_deref(), Some("abc+d"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer  xyz ".parse().unwrap());
        assert_eq!(token_of(&uri, &h).as_deref(), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(token_of(&uri, &h).as_deref(), Some("abc+d"));
        let bare: Uri = "/ws/analytics".parse().unwrap();
        assert_eq!(token_of(&bare, &HeaderMap::new()), None);
    }

    #[test]
    fn origins_are_checked() {
        let any = AllowedOrigins::new(&[]).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(any.allows(&h));
        let list = AllowedOrigins::new(&["https://Site.example/".into()]).unwrap();
        assert!(!list.allows(&h));
        h.insert(header::ORIGIN, "https://site.example".parse().unwrap());
        assert!(list.allows(&h));
        // Same origin as the server itself (the dashboard).
        h.insert(header::ORIGIN, "http://hub.example:8080".parse().unwrap());
        h.insert(header::HOST, "hub.example:8080".parse().unwrap());
        assert!(list.allows(&h));
        assert!(list.allows(&HeaderMap::new()));
        assert!(AllowedOrigins::new(&["site.example".into()]).is_err());
        assert!(AllowedOrigins::new(&["*".into()]).unwrap().is_any());
        // What `--allowed-origins ""` and `a,` leave: no origin, not a refusal.
        assert!(AllowedOrigins::new(&["".into()]).unwrap().is_any());
        let one = AllowedOrigins::new(&["https://site.example".into(), "".into()]).unwrap();
        assert_eq!(one.header_values().len(), 1);
    }
}
