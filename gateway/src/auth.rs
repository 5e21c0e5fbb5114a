//! Tokens: EdDSA-signed JWTs (RFC 8037). Agent tokens name one space; user tokens name
//! the spaces and services a person may reach.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{SigningKey, VerifyingKey};
use crate::registry::SpaceKey;

/// Audience of agent tokens.
pub const AGENT_AUDIENCE: &str = "agent";
/// Audience of user tokens.
pub const USER_AUDIENCE: &str = "user";
/// Audience of admin tokens (the admin API).
pub const ADMIN_AUDIENCE: &str = "admin";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Claims of an agent token: which space the link registers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentClaims {
    /// Always [`AGENT_AUDIENCE`].
    pub aud: String,
    /// The space's id in the control plane.
    pub sub: String,
    /// The space owner's user name.
    pub usr: String,
    /// The space's name.
    pub spc: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// A service a user token may grant.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// The SSH websocket route.
    Ssh,
    /// The VNC desktop.
    Vnc,
    /// HTTP ports.
    Http,
    /// Other TCP ports through the TCP websocket route.
    Tcp,
}

impl Grant {
    /// Every grant, for tokens minted without a restriction.
    pub const ALL: [Grant; 4] = [Grant::Ssh, Grant::Vnc, Grant::Http, Grant::Tcp];

    /// The name used in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ssh => "ssh",
            Self::Vnc => "vnc",
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }
}

/// Claims of a user token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserClaims {
    /// Always [`USER_AUDIENCE`].
    pub aud: String,
    /// The user's name.
    pub sub: String,
    /// Spaces reachable: `USER--SPACE`, `USER--*`, or `*`.
    pub spaces: Vec<String>,
    /// Services reachable in those spaces.
    pub svc: Vec<Grant>,
    /// Issued at.
    pub iat: u64,
    /// Expiry; user tokens always expire.
    pub exp: u64,
}

/// Claims of an admin token: who operates the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminClaims {
    /// Always [`ADMIN_AUDIENCE`].
    pub aud: String,
    /// The operator's name, for logs.
    pub sub: String,
    /// Issued at.
    pub iat: u64,
    /// Expiry; admin tokens always expire.
    pub exp: u64,
}

impl UserClaims {
    /// Whether this token reaches `service` in `space`.
    pub fn allows(&self, space: &SpaceKey, service: Grant) -> bool {
        self.svc.contains(&service) && self.spaces.iter().any(|p| space_matches(p, space))
    }
}

fn space_matches(pattern: &str, space: &SpaceKey) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some((user, name)) = pattern.split_once("--") else {
        return false;
    };
    user == space.user && (name == "*" || name == space.space)
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Before its not-before time.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Meant for another audience (an agent token used as a user token, or the reverse).
    #[error("the token is not meant for this use (its audience is not {expected:?})")]
    WrongAudience {
        /// The audience required here.
        expected: &'static str,
    },
    /// Bad signature, other algorithm, or malformed.
    #[error("the token is invalid ({0})")]
    Invalid(String),
}

/// Verifies tokens against the deployment's public key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// A verifier for tokens signed by the private half of `key`.
    pub fn new(key: &VerifyingKey) -> Self {
        Self {
            key: DecodingKey::from_ed_der(key.raw()),
        }
    }

    /// Checks an agent token and returns its claims.
    pub fn agent(&self, token: &str) -> Result<AgentClaims, TokenError> {
        self.check(token, AGENT_AUDIENCE, &["aud", "sub"])
    }

    /// Checks a user token and returns its claims.
    pub fn user(&self, token: &str) -> Result<UserClaims, TokenError> {
        // `exp` is required too, by `UserClaims` itself: checking it here would report an
        // agent token (which may lack `exp`) as malformed instead of as the wrong audience.
        self.check(token, USER_AUDIENCE, &["aud", "sub"])
    }

    /// Checks an admin token and returns its claims.
    pub fn admin(&self, token: &str) -> Result<AdminClaims, TokenError> {
        self.check(token, ADMIN_AUDIENCE, &["aud", "sub"])
    }

    fn check<C: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &'static str,
        required: &[&str],
    ) -> Result<C, TokenError> {
        // Only EdDSA: the algorithm named in the token's header is never trusted, so
        // `alg: none` and HMAC-with-the-public-key confusions are refused here.
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(required);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        // Signature, audience and times are checked on the raw claims first, so that a
        // token for the wrong audience is reported as such rather than as missing fields.
        let raw =
            jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &v).map_err(|e| match e
                .kind()
            {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience { expected: audience },
                _ => TokenError::Invalid(e.to_string()),
            })?;
        serde_json::from_value(raw.claims).map_err(|e| TokenError::Invalid(format!("claims: {e}")))
    }
}

/// Mints tokens; used by `gateway token` and tests, never by a running gateway.
#[derive(Debug)]
pub struct Minter {
    key: SigningKey,
}

impl Minter {
    /// A minter signing with `key`.
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// An agent token for one space; `ttl` of `None` never expires.
    pub fn agent(&self, space_id: &str, user: &str, space: &str, ttl: Option<Duration>) -> String {
        let iat = now();
        let claims = AgentClaims {
            aud: AGENT_AUDIENCE.into(),
            sub: space_id.into(),
            usr: user.into(),
            spc: space.into(),
            iat,
            exp: ttl.map(|t| iat + t.as_secs()),
        };
        self.sign(&claims)
    }

    /// A user token.
    pub fn user(&self, user: &str, spaces: Vec<String>, svc: Vec<Grant>, ttl: Duration) -> String {
        let iat = now();
        let claims = UserClaims {
            aud: USER_AUDIENCE.into(),
            sub: user.into(),
            spaces,
            svc,
            iat,
            exp: iat + ttl.as_secs(),
        };
        self.sign(&claims)
    }

    /// An admin token for the admin API.
    pub fn admin(&self, operator: &str, ttl: Duration) -> String {
        let iat = now();
        let claims = AdminClaims {
            aud: ADMIN_AUDIENCE.into(),
            sub: operator.into(),
            iat,
            exp: iat + ttl.as_secs(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims; tests use it for tokens a minter would never make.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let key = EncodingKey::from_ed_der(self.key.pkcs8_der());
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key)
            .expect("signing serializable claims with a valid Ed25519 key cannot fail")
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Minter, Verifier) {
        let key = SigningKey::generate().unwrap();
        let verifier = Verifier::new(&key.verifying_key());
        (Minter::new(key), verifier)
    }

    fn space(user: &str, name: &str) -> SpaceKey {
        SpaceKey {
            user: user.into(),
            space: name.into(),
        }
    }

    #[test]
    fn agent_token_round_trips_and_is_not_a_user_token() {
        let (m, v) = pair();
        let t = m.agent("id1", "alice", "dev", None);
        let c = v.agent(&t).unwrap();
        assert_eq!(
            (c.usr.as_str(), c.spc.as_str(), c.exp),
            ("alice", "dev", None)
        );
        assert_eq!(
            v.user(&t).unwrap_err(),
            TokenError::WrongAudience { expected: "user" }
        );
    }

    #[test]
    fn user_token_is_not_an_agent_token() {
        let (m, v) = pair();
        let t = m.user(
            "alice",
            vec!["alice--dev".into()],
            vec![Grant::Ssh],
            Duration::from_secs(60),
        );
        assert!(v.user(&t).is_ok());
        assert_eq!(
            v.agent(&t).unwrap_err(),
            TokenError::WrongAudience { expected: "agent" }
        );
    }

    #[test]
    fn admin_tokens_are_only_admin_tokens() {
        let (m, v) = pair();
        let t = m.admin("ops", Duration::from_secs(60));
        assert_eq!(v.admin(&t).unwrap().sub, "ops");
        assert!(v.user(&t).is_err());
        let user = m.user(
            "alice",
            vec!["*".into()],
            Grant::ALL.to_vec(),
            Duration::from_secs(60),
        );
        assert_eq!(
            v.admin(&user).unwrap_err(),
            TokenError::WrongAudience { expected: "admin" }
        );
    }

    #[test]
    fn another_keys_signature_is_invalid() {
        let (m, _) = pair();
        let (_, v) = pair();
        assert!(matches!(
            v.agent(&m.agent("id", "a", "b", None)),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (m, v) = pair();
        let claims = UserClaims {
            aud: USER_AUDIENCE.into(),
            sub: "a".into(),
            spaces: vec!["*".into()],
            svc: vec![Grant::Ssh],
            iat: 1,
            exp: now() - 3600,
        };
        assert_eq!(v.user(&m.sign(&claims)).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn alg_none_is_refused() {
        let (m, v) = pair();
        let t = m.agent("id", "a", "b", None);
        let payload = t.split('.').nth(1).unwrap();
        // {"alg":"none","typ":"JWT"}
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(matches!(v.agent(&forged), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn space_patterns() {
        let c = UserClaims {
            aud: USER_AUDIENCE.into(),
            sub: "alice".into(),
            spaces: vec!["alice--*".into(), "bob--shared".into()],
            svc: vec![Grant::Ssh],
            iat: 0,
            exp: 0,
        };
        assert!(c.allows(&space("alice", "x"), Grant::Ssh));
        assert!(c.allows(&space("bob", "shared"), Grant::Ssh));
        assert!(!c.allows(&space("bob", "other"), Grant::Ssh));
        assert!(!c.allows(&space("alice", "x"), Grant::Vnc));
    }
}
