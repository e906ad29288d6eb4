//! Accounts and tokens: argon2id password hashes, HS256 JWT access tokens, and the
//! extractor that turns a bearer token (chorus's own, or an OIDC provider's: see
//! [`crate::oidc`]) into the calling user.

use crate::error::ApiError;
use crate::state::AppState;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chorus_core::UserId;
use chorus_core::model::User;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    name: String,
    iat: u64,
    exp: u64,
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Tokens {
    /// Tokens signed with `secret`, valid for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// A token for `user`.
    pub fn issue(&self, user: &User) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: user.id.to_string(),
            name: user.username.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The user a token was issued to, if it is genuine and unexpired.
    pub fn verify(&self, token: &str) -> Result<User, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        let id: UserId = data
            .claims
            .sub
            .parse()
            .map_err(|_| ApiError::unauthorized("invalid token: bad subject"))?;
        Ok(User {
            id,
            username: data.claims.name,
        })
    }
}

/// Password hashing in progress at once. Each argon2id hash holds 19 MiB for its
/// duration: unbounded, a burst of sign-ups or logins (a load test registering
/// thousands of users, or an attack) would hold gigabytes at once, and the allocator
/// keeps much of it afterwards. Bounded to the cores, the rest wait their turn.
fn hashing_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// Hashes a password with argon2id (off the async workers: it is deliberately slow).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))
}

/// Checks a password against a stored hash, or against a fixed dummy hash when the
/// account does not exist, so that response time does not reveal which usernames exist.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    let Ok(_slot) = hashing_slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let real = hash.is_some();
        let dummy;
        let hash = match &hash {
            Some(h) => h.as_str(),
            None => {
                dummy = dummy_hash();
                dummy.as_str()
            }
        };
        let ok = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && real
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(b"no account has this password", &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// The authenticated caller, from `Authorization: Bearer <token>`.
#[derive(Clone, Debug)]
pub struct AuthUser(pub User);

impl FromRequestParts<Arc<AppState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer` token"))?;
        authenticate(state, token).await.map(AuthUser)
    }
}

/// The authenticated caller, who must be an administrator: one of the user ids in
/// `jobs.admins`. Anyone else, whatever their name, is `forbidden`.
#[derive(Clone, Debug)]
pub struct AdminUser(pub User);

impl FromRequestParts<Arc<AppState>> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        if !state.jobs.is_admin(user.id.0) {
            return Err(ApiError::forbidden(
                "only administrators (jobs.admins) may do this",
            ));
        }
        Ok(AdminUser(user))
    }
}

/// The user a bearer token stands for: a token of an outside provider (RS256 or ES256)
/// when OIDC is configured, otherwise one of chorus's own (HS256). Anything else, and
/// every token that fails its checks, is `unauthorized`.
pub async fn authenticate(state: &AppState, token: &str) -> Result<User, ApiError> {
    match &state.oidc {
        Some(oidc) if crate::oidc::is_oidc_token(token) => {
            oidc.authenticate(&state.directory, token).await
        }
        _ => state.tokens.verify(token),
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: UserId::new(),
            username: "ada".into(),
        }
    }

    #[test]
    fn tokens_round_trip_and_reject_forgeries() {
        let tokens = Tokens::new(b"secret-one", Duration::from_secs(60));
        let u = user();
        assert_eq!(tokens.verify(&tokens.issue(&u)).unwrap(), u);
        let other = Tokens::new(b"secret-two", Duration::from_secs(60));
        assert!(other.verify(&tokens.issue(&u)).is_err());
        assert!(tokens.verify("not.a.token").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = Tokens::new(b"k", Duration::from_secs(0));
        let claims = Claims {
            sub: UserId::new().to_string(),
            name: "x".into(),
            iat: 1,
            exp: 2,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(
            tokens.verify(&token).unwrap_err().code,
            chorus_core::ErrorCode::Unauthorized
        );
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong".into(), Some(hash)).await);
        assert!(!verify_password("no account has this password".into(), None).await);
    }
}
