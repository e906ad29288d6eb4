//! OIDC access tokens from an outside identity provider (Keycloak and others), accepted
//! besides chorus's own HS256 tokens when an issuer and an audience are configured.
//!
//! - **Keys**: the provider's discovery document
//!   (`{issuer}/.well-known/openid-configuration`) names its `jwks_uri`; the RSA and
//!   P-256 signing keys there are cached by `kid`. A token with a `kid` not in the cache
//!   refreshes it, at most once per [`UNKNOWN_KID_REFRESH`], so that tokens with made-up
//!   `kid`s cannot make chorus hammer the provider; the cache is also refetched once it
//!   is [`MAX_KEY_AGE`] old, so that keys the provider withdrew stop working.
//! - **Tokens**: RS256 or ES256 only, the algorithm pinned by the key (an RSA key never
//!   verifies an ES256 token, and no key ever verifies HS256 or `none`); `iss` must be
//!   the issuer, `aud` contain the audience, `exp` lie in the future (30 s leeway), and
//!   `sub` be present.
//! - **Users**: each (issuer, `sub`) is linked in the store to a chorus user, created on
//!   first sight (see [`Oidc::user`] for the naming rule), so the same person is the
//!   same user on every gateway and after every restart.

use crate::error::ApiError;
use chorus_core::ErrorCode;
use chorus_core::model::User;
use chorus_store::{Directory, StoreError};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The least time between two key refreshes caused by unknown `kid`s.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(30);
/// Keys older than this are refetched before use.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// After the provider failed to answer, the least time before asking it again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// How long one request to the provider may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Linked users remembered per gateway (the cache is emptied when full).
const USER_CACHE: usize = 100_000;
/// Clock skew tolerated on `exp` and `nbf`, seconds.
const LEEWAY_SECS: u64 = 30;

/// Where OIDC tokens come from and whom they must be for.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// The provider: equal to the tokens' `iss`, the base of the discovery URL.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
}

/// A signing key of the provider, with the one algorithm it verifies.
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    fetched: Option<Instant>,
}

#[derive(Default)]
struct Refresh {
    /// The last refresh that an unknown `kid` caused.
    unknown_kid: Option<Instant>,
    /// The last failed fetch.
    failed: Option<Instant>,
}

/// Verifies OIDC access tokens and maps them to chorus users.
pub struct Oidc {
    settings: OidcSettings,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching, so that concurrent requests wait for one fetch.
    refresh: tokio::sync::Mutex<Refresh>,
    users: Mutex<HashMap<String, User>>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    preferred_username: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// Whether a token is for this module: signed with a provider's key (RS256 or ES256)
/// rather than with chorus's own secret (HS256).
pub fn is_oidc_token(token: &str) -> bool {
    jsonwebtoken::decode_header(token)
        .is_ok_and(|h| matches!(h.alg, Algorithm::RS256 | Algorithm::ES256))
}

impl Oidc {
    /// A verifier for `settings`; nothing is fetched until the first token.
    pub fn new(settings: OidcSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("the HTTP client's TLS configuration is static");
        Self {
            settings: OidcSettings {
                issuer: settings.issuer.trim_end_matches('/').to_owned(),
                ..settings
            },
            http,
            keys: RwLock::default(),
            refresh: tokio::sync::Mutex::default(),
            users: Mutex::default(),
        }
    }

    /// The chorus user a valid token stands for, created on first sight.
    pub async fn authenticate(&self, directory: &Directory, token: &str) -> Result<User, ApiError> {
        let claims = self.verify(token).await?;
        self.user(directory, &claims).await
    }

    async fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(ApiError::unauthorized(
                "invalid token: OIDC tokens must be signed with RS256 or ES256",
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| ApiError::unauthorized("invalid token: no `kid` in its header"))?;
        let key = self.key(&kid).await?;
        if key.alg != header.alg {
            return Err(ApiError::unauthorized(format!(
                "invalid token: key {kid} signs {:?}, not {:?}",
                key.alg, header.alg
            )));
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        Ok(data.claims)
    }

    /// The key named `kid`, refreshing the cache when it is stale or lacks it.
    async fn key(&self, kid: &str) -> Result<Arc<Key>, ApiError> {
        let cached = self.keys.read().expect("key cache lock").clone();
        let fresh = cached.fetched.is_some_and(|t| t.elapsed() < MAX_KEY_AGE);
        if fresh && let Some(key) = cached.keys.get(kid) {
            return Ok(key.clone());
        }
        let mut refresh = self.refresh.lock().await;
        // Another request may have refreshed while this one waited.
        let current = self.keys.read().expect("key cache lock").clone();
        let fresh = current.fetched.is_some_and(|t| t.elapsed() < MAX_KEY_AGE);
        if fresh && let Some(key) = current.keys.get(kid) {
            return Ok(key.clone());
        }
        let refetched_meanwhile = !Arc::ptr_eq(&cached, &current);
        let may_fetch = if !fresh {
            // Never fetched, or stale: fetch unless the provider just failed.
            refresh
                .failed
                .is_none_or(|t| t.elapsed() >= RETRY_AFTER_FAILURE)
        } else {
            // Fresh keys without this kid: a rotated key, or a made-up kid.
            !refetched_meanwhile
                && refresh
                    .unknown_kid
                    .is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFRESH)
        };
        if !may_fetch {
            return Err(if fresh {
                ApiError::unauthorized(format!("invalid token: unknown key {kid}"))
            } else {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the identity provider's keys are unavailable; retry later",
                )
            });
        }
        if fresh {
            refresh.unknown_kid = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                metrics::counter!("chorus_oidc_key_fetches_total", "outcome" => "ok").increment(1);
                refresh.failed = None;
                let set = Arc::new(KeySet {
                    keys,
                    fetched: Some(Instant::now()),
                });
                *self.keys.write().expect("key cache lock") = set.clone();
                set.keys.get(kid).cloned().ok_or_else(|| {
                    ApiError::unauthorized(format!("invalid token: unknown key {kid}"))
                })
            }
            Err(e) => {
                metrics::counter!("chorus_oidc_key_fetches_total", "outcome" => "error")
                    .increment(1);
                refresh.failed = Some(Instant::now());
                tracing::warn!(issuer = %self.settings.issuer, error = %e, "OIDC keys not fetched");
                Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "the identity provider's keys are unavailable; retry later",
                ))
            }
        }
    }

    /// Discovery, then the key set: the signing keys chorus can use, by `kid`.
    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let issuer = &self.settings.issuer;
        let url = format!("{issuer}/.well-known/openid-configuration");
        let discovery: Discovery = self.get_json(&url).await?;
        if discovery.issuer.trim_end_matches('/') != issuer {
            return Err(format!(
                "{url} names issuer {:?}, not {issuer:?}",
                discovery.issuer
            ));
        }
        let set: JwkSet = self.get_json(&discovery.jwks_uri).await?;
        let mut keys = HashMap::new();
        for value in set.keys {
            // Keys of other types or uses (encryption keys, symmetric keys) are not for
            // verifying access tokens: skipped, never an error.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if let Some((kid, key)) = signing_key(&jwk) {
                keys.insert(kid, Arc::new(key));
            }
        }
        tracing::info!(%issuer, keys = keys.len(), "OIDC keys fetched");
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()));
        }
        response.json().await.map_err(|e| format!("{url}: {e}"))
    }

    /// The user linked to the token's subject, created and linked on first sight.
    ///
    /// The new user's name is, in this order, the first that is free:
    /// 1. `preferred_username`, when it is a valid chorus username (3 to 32 of
    ///    `A-Z a-z 0-9 _ . -`);
    /// 2. `<base>-<8 hex digits>`, where `base` is `preferred_username` (or, without
    ///    one, `sub`) with other characters replaced by `_`, cut to 23 characters, and
    ///    the digits are derived from the issuer and subject (so the same identity
    ///    always asks for the same name);
    /// 3. `<base>-<8 random hex digits>`.
    ///
    /// An identity is never linked to an existing account with the same name: that
    /// would hand the account to whoever the provider calls by that name.
    async fn user(&self, directory: &Directory, claims: &Claims) -> Result<User, ApiError> {
        if let Some(user) = self.users.lock().expect("user cache lock").get(&claims.sub) {
            return Ok(user.clone());
        }
        let store = directory.store();
        let issuer = &self.settings.issuer;
        let user = match store.external_user(issuer, &claims.sub).await? {
            Some(user) => user,
            None => {
                let mut names = candidate_names(issuer, claims);
                names.extend((0..3).map(|_| random_name(claims)));
                let mut names = names.into_iter();
                loop {
                    let Some(name) = names.next() else {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            "no free username for this identity",
                        ));
                    };
                    match store.create_external_user(issuer, &claims.sub, &name).await {
                        Ok(user) => {
                            tracing::info!(%issuer, sub = %claims.sub, user = %user.id, username = %user.username, "OIDC identity linked to a new user");
                            break user;
                        }
                        Err(StoreError::Conflict("username")) => continue,
                        // Another gateway linked it first.
                        Err(StoreError::Conflict(_)) => {
                            break store.external_user(issuer, &claims.sub).await?.ok_or_else(
                                || ApiError::internal(&"identity linked but not found"),
                            )?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        let mut users = self.users.lock().expect("user cache lock");
        if users.len() >= USER_CACHE {
            users.clear();
        }
        users.insert(claims.sub.clone(), user.clone());
        Ok(user)
    }
}

/// The names [`Oidc::user`] tries first, in order (rules 1 and 2).
fn candidate_names(issuer: &str, claims: &Claims) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(preferred) = &claims.preferred_username
        && crate::accounts::valid_username(preferred)
    {
        names.push(preferred.clone());
    }
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{issuer}\n{}", claims.sub).as_bytes(),
    );
    names.push(format!(
        "{}-{}",
        name_base(claims),
        &id.simple().to_string()[..8]
    ));
    names
}

/// Rule 3: when even the derived name is taken.
fn random_name(claims: &Claims) -> String {
    format!("{}-{:08x}", name_base(claims), rand::random::<u32>())
}

fn name_base(claims: &Claims) -> String {
    let source = claims.preferred_username.as_deref().unwrap_or(&claims.sub);
    let base: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(23)
        .collect();
    if base.is_empty() { "user".into() } else { base }
}

/// The key a JWK describes, if chorus verifies tokens with it: RSA (RS256) or P-256
/// (ES256), not marked for encryption, with a `kid`, and with an `alg` (when given)
/// that matches.
fn signing_key(jwk: &Jwk) -> Option<(String, Key)> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let expected = match alg {
            Algorithm::RS256 => jsonwebtoken::jwk::KeyAlgorithm::RS256,
            _ => jsonwebtoken::jwk::KeyAlgorithm::ES256,
        };
        if declared != expected {
            return None;
        }
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, Key { alg, key }))
}
