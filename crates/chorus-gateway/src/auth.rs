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
use chorus_core::model::User;
use chorus_core::{ErrorCode, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

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

/// How long a client turned away by a full hashing queue is told to wait, ms.
const BUSY_RETRY_MS: u64 = 1000;

/// Password hashing, argon2id: deliberately slow (tens of milliseconds of a core) and
/// large (19 MiB while it runs).
///
/// At most one hash per core runs at once: unbounded, a burst of sign-ups or sign-ins
/// held gigabytes at once, and the allocator kept much of it afterwards. The queue in
/// front of the cores is bounded too: unbounded, 64 parallel bogus sign-ins made a real
/// user's sign-in 20 times slower, as it waited behind all of them. Past the bound a
/// hash is refused at once (`unavailable` with a retry hint), so that a flood costs a
/// real user a quick answer to retry, never a long wait.
pub struct Hashing {
    /// One permit per core: hashes running.
    cores: Arc<Semaphore>,
    /// Hashes running or waiting for a core.
    places: Arc<Semaphore>,
}

impl Hashing {
    /// `cores` hashes at once, and up to `queue` more waiting for one.
    pub fn new(cores: usize, queue: usize) -> Self {
        let cores = cores.max(1);
        Self {
            cores: Arc::new(Semaphore::new(cores)),
            places: Arc::new(Semaphore::new(cores + queue)),
        }
    }

    /// One hash per core of this machine at once, and up to `queue` more waiting.
    pub fn per_core(queue: usize) -> Self {
        Self::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue,
        )
    }

    /// Hashes a password with a new salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| ApiError::internal(&e))
    }

    /// Checks a password against a stored hash, or against a fixed dummy hash when the
    /// account does not exist, so that response time does not reveal which usernames
    /// exist.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        self.run(move || {
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
    }

    /// Runs `work` on a blocking thread once a core is free, or refuses it at once when
    /// the queue is full. Its place and core are held until it ends, also when the
    /// caller stops waiting (a client that hung up): the hash runs to its end anyway,
    /// and the bound must count it.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let place = self.places.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("chorus_auth_refused_total", "limit" => "hash_queue").increment(1);
            ApiError::new(
                ErrorCode::Unavailable,
                format!("the server is busy checking passwords; retry in {BUSY_RETRY_MS} ms"),
            )
            .retry_after(BUSY_RETRY_MS)
        })?;
        let core = self
            .cores
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::internal(&e))?;
        tokio::task::spawn_blocking(move || {
            let _held = (place, core);
            work()
        })
        .await
        .map_err(|e| ApiError::internal(&e))
    }
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
        let hashing = Hashing::new(1, 0);
        let hash = hashing.hash("correct horse".into()).await.unwrap();
        let verify = |password: &str, hash: Option<String>| hashing.verify(password.into(), hash);
        assert!(verify("correct horse", Some(hash.clone())).await.unwrap());
        assert!(!verify("wrong", Some(hash)).await.unwrap());
        assert!(!verify("no account has this password", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_hashing_queue_refuses_at_once_and_frees_up_as_hashes_end() {
        use futures::FutureExt;
        let hashing = Hashing::new(1, 2);
        // A hash holding the one core, as a long one would.
        let running = (
            hashing.places.clone().try_acquire_owned().unwrap(),
            hashing.cores.clone().try_acquire_owned().unwrap(),
        );
        // Two more wait for it: the queue is full.
        let mut first = std::pin::pin!(hashing.hash("first".into()));
        let mut second = std::pin::pin!(hashing.verify("second".into(), None));
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());
        // The next is answered without waiting at all.
        let refused = hashing
            .hash("one too many".into())
            .now_or_never()
            .expect("answered at once")
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable);
        assert_eq!(refused.retry_after_ms, Some(BUSY_RETRY_MS));
        // The core is free again: the waiting ones run, and the queue takes more.
        drop(running);
        assert!(first.await.unwrap().starts_with("$argon2id$"));
        assert!(!second.await.unwrap());
        assert!(hashing.verify("again".into(), None).await.is_ok());
    }
}
