//! OIDC access tokens: a provider served by the test (discovery and keys on
//! 127.0.0.1:0, RSA and P-256 keys generated here), tokens it signs, a node configured
//! with its issuer and audience.

use crate::helpers::{TestApp, WsClient};
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const AUDIENCE: &str = "chorus";

/// A signing key of the test provider.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    /// The public half, as the provider publishes it.
    jwk: Value,
    /// The public key as PEM (what a key-confusion attack would use as an HMAC secret).
    public_pem: String,
}

fn rsa_key(kid: &str) -> TestKey {
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let public = private.to_public_key();
    let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
        public_pem: public.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap(),
    }
}

fn ec_key(kid: &str) -> TestKey {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    TestKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }),
        public_pem: secret
            .public_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap(),
    }
}

/// What the provider serves, and how often its key set was fetched.
#[derive(Default)]
struct Published {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
}

/// The test's identity provider.
struct Provider {
    issuer: String,
    published: Arc<Published>,
}

impl Provider {
    async fn start(keys: &[&TestKey]) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        // A realm-like path, as Keycloak's issuers have.
        let issuer = format!("http://{addr}/realms/test");
        let published = Arc::new(Published {
            issuer: issuer.clone(),
            keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            jwks_fetches: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(
                "/realms/test/.well-known/openid-configuration",
                get(|State(p): State<Arc<Published>>| async move {
                    Json(json!({
                        "issuer": p.issuer,
                        "jwks_uri": format!("{}/protocol/openid-connect/certs", p.issuer),
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }))
                }),
            )
            .route(
                "/realms/test/protocol/openid-connect/certs",
                get(|State(p): State<Arc<Published>>| async move {
                    p.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                    let mut keys = p.keys.lock().unwrap().clone();
                    // Keycloak also publishes an encryption key: never used to verify.
                    keys.push(json!({
                        "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc-key",
                        "n": "sXch", "e": "AQAB",
                    }));
                    Json(json!({ "keys": keys }))
                }),
            )
            .with_state(published.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Provider { issuer, published }
    }

    fn publish(&self, key: &TestKey) {
        self.published.keys.lock().unwrap().push(key.jwk.clone());
    }

    fn jwks_fetches(&self) -> usize {
        self.published.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a valid token for `sub`, to be changed by a test.
    fn claims(&self, sub: &str, preferred_username: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": sub,
            "preferred_username": preferred_username,
            "iat": now, "exp": now + 300, "azp": "chorus-web",
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// A token with whatever header it is given, signed with HMAC-SHA256 under `secret`.
fn hs256(header: Value, claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{signature}")
}

async fn app_for(provider: &Provider) -> TestApp {
    let issuer = provider.issuer.clone();
    TestApp::spawn_with(move |c| {
        c.auth.oidc_issuer = Some(issuer);
        c.auth.oidc_audience = Some(AUDIENCE.into());
    })
    .await
}

async fn me(app: &TestApp, token: &str) -> (u16, Value) {
    app.get(token, "/api/v1/me").await
}

/// The token is refused with 401 `unauthorized` over REST and on the WebSocket upgrade.
async fn assert_refused(app: &TestApp, token: &str, why: &str) {
    let (status, body) = me(app, token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{why}: {body}"
    );
    let url = format!("ws://{}/api/v1/ws?token={token}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 401, "{why}: upgrade")
        }
        other => panic!("{why}: upgrade must fail with 401: {other:?}"),
    }
}

#[tokio::test]
async fn oidc_tokens_sign_in_a_user_created_on_first_sight() {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let provider = Provider::start(&[&rsa, &ec]).await;
    let app = app_for(&provider).await;

    // RS256: a user is created on first sight, named after `preferred_username`.
    let token = sign(&rsa, &provider.claims("sub-ada", "ada"));
    let (status, first) = me(&app, &token).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["username"], "ada");
    // Seen again with another token: the same user.
    let mut claims = provider.claims("sub-ada", "ada");
    claims["iat"] = json!(now() - 10);
    let (status, again) = me(&app, &sign(&rsa, &claims)).await;
    assert_eq!((status, &again), (200, &first));

    // ES256, and the WebSocket: a session as that user, messages both ways.
    let bob_token = sign(&ec, &provider.claims("sub-bob", "bob"));
    let (status, bob) = me(&app, &bob_token).await;
    assert_eq!(
        (status, bob["username"].as_str()),
        (200, Some("bob")),
        "{bob}"
    );
    let (status, conversation) = app
        .post(
            Some(&token),
            "/api/v1/conversations",
            json!({ "kind": "direct", "members": [bob["id"]] }),
        )
        .await;
    assert_eq!(status, 201, "{conversation}");
    let mut ws = WsClient::connect(app.addr, &bob_token).await;
    let (status, sent) = app
        .post(
            Some(&token),
            &format!(
                "/api/v1/conversations/{}/messages",
                conversation["id"].as_str().unwrap()
            ),
            json!({ "client_msg_id": "c1", "body": "hello from an OIDC user" }),
        )
        .await;
    assert!(status == 200 || status == 201 || status == 202, "{sent}");
    let frame = ws.expect("message").await;
    assert_eq!(frame["message"]["body"], "hello from an OIDC user");
    assert_eq!(frame["message"]["sender_id"], first["id"]);

    // A name a built-in account already has is not taken over: the identity gets a
    // user of its own, `<name>-<8 hex digits>`, and the account keeps working.
    let carol = app.register("carol").await;
    let token = sign(&rsa, &provider.claims("sub-carol", &carol.username));
    let (status, oidc_carol) = me(&app, &token).await;
    assert_eq!(status, 200, "{oidc_carol}");
    assert_ne!(oidc_carol["id"].as_str(), Some(carol.id.as_str()));
    let name = oidc_carol["username"].as_str().unwrap();
    let suffix = name
        .strip_prefix(&format!("{}-", carol.username))
        .unwrap_or_else(|| panic!("{name}"));
    assert!(
        suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    let (status, me_carol) = me(&app, &carol.token).await;
    assert_eq!(
        (status, me_carol["id"].as_str()),
        (200, Some(carol.id.as_str()))
    );
    // No password signs in as an OIDC user.
    let (status, _) = app
        .post(
            None,
            "/api/v1/auth/login",
            json!({ "username": "ada", "password": "" }),
        )
        .await;
    assert_eq!(status, 401);
    // A subject without a usable `preferred_username` still gets a valid name.
    let mut claims = provider.claims("f:4b2c:weird subject", "x");
    claims.as_object_mut().unwrap().remove("preferred_username");
    let (status, odd) = me(&app, &sign(&ec, &claims)).await;
    assert_eq!(status, 200, "{odd}");
    assert!(
        odd["username"]
            .as_str()
            .unwrap()
            .starts_with("f_4b2c_weird_subject-"),
        "{odd}"
    );
}

#[tokio::test]
async fn bad_oidc_tokens_are_unauthorized() {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let provider = Provider::start(&[&rsa, &ec]).await;
    let app = app_for(&provider).await;
    let good = provider.claims("sub-1", "ada");
    assert_eq!(
        me(&app, &sign(&rsa, &good)).await.0,
        200,
        "the control case"
    );

    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).to_string()),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    assert_refused(&app, &unsigned, "alg none").await;
    // HS256 with the provider's public key as the secret (the key-confusion attack),
    // and HS256 with any secret.
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"});
    assert_refused(
        &app,
        &hs256(header.clone(), &good, rsa.public_pem.as_bytes()),
        "HS256 with the RSA public key",
    )
    .await;
    let header_ec = json!({"alg": "HS256", "typ": "JWT", "kid": "ec-1"});
    assert_refused(
        &app,
        &hs256(header_ec, &good, ec.public_pem.as_bytes()),
        "HS256 with the EC public key",
    )
    .await;
    assert_refused(
        &app,
        &hs256(header, &good, b"a secret of at least thirty-two bytes"),
        "HS256",
    )
    .await;

    let mut claims = good.clone();
    claims["iss"] = json!("http://127.0.0.1:1/realms/other");
    assert_refused(&app, &sign(&rsa, &claims), "wrong issuer").await;
    let mut claims = good.clone();
    claims["aud"] = json!("someone-else");
    assert_refused(&app, &sign(&rsa, &claims), "wrong audience").await;
    let mut claims = good.clone();
    claims["aud"] = json!(["account", "someone-else"]);
    assert_refused(&app, &sign(&rsa, &claims), "wrong audiences").await;
    let mut claims = good.clone();
    claims.as_object_mut().unwrap().remove("aud");
    assert_refused(&app, &sign(&rsa, &claims), "no audience").await;
    let mut claims = good.clone();
    claims["exp"] = json!(now() - 600);
    assert_refused(&app, &sign(&rsa, &claims), "expired").await;
    let mut claims = good.clone();
    claims.as_object_mut().unwrap().remove("exp");
    assert_refused(&app, &sign(&rsa, &claims), "no exp").await;
    let mut claims = good.clone();
    claims.as_object_mut().unwrap().remove("sub");
    assert_refused(&app, &sign(&rsa, &claims), "no sub").await;

    // Signed by keys the provider does not publish.
    let stranger = rsa_key("rsa-1");
    assert_refused(
        &app,
        &sign(&stranger, &good),
        "bad signature under a known kid",
    )
    .await;
    let stranger = ec_key("ec-1");
    assert_refused(
        &app,
        &sign(&stranger, &good),
        "bad EC signature under a known kid",
    )
    .await;
    let unknown = rsa_key("nobody-knows-me");
    assert_refused(&app, &sign(&unknown, &good), "unknown kid after a refresh").await;
    // An ES256 token naming the RSA key.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let mixed = jsonwebtoken::encode(&header, &good, &ec.encoding).unwrap();
    assert_refused(&app, &mixed, "ES256 under an RSA kid").await;
    // The encryption key is not a signing key.
    let enc = rsa_key("enc-key");
    assert_refused(
        &app,
        &sign(&enc, &good),
        "signed under the encryption key's kid",
    )
    .await;
    // A tampered payload.
    let token = sign(&rsa, &good);
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut claims = good.clone();
    claims["sub"] = json!("sub-2");
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    parts[1] = &payload;
    assert_refused(&app, &parts.join("."), "tampered payload").await;
}

#[tokio::test]
async fn rotated_keys_are_fetched_and_made_up_kids_do_not_hammer_the_provider() {
    let old = rsa_key("key-2024");
    let provider = Provider::start(&[&old]).await;
    let app = app_for(&provider).await;
    let (status, ada) = me(&app, &sign(&old, &provider.claims("sub-ada", "ada"))).await;
    assert_eq!(status, 200, "{ada}");
    assert_eq!(provider.jwks_fetches(), 1, "keys fetched once, then cached");
    assert_eq!(
        me(&app, &sign(&old, &provider.claims("sub-ada", "ada")))
            .await
            .0,
        200
    );
    assert_eq!(provider.jwks_fetches(), 1, "served from the cache");

    // The provider rotates: a token under the new kid makes the gateway refetch.
    let new = ec_key("key-2025");
    provider.publish(&new);
    let (status, again) = me(&app, &sign(&new, &provider.claims("sub-ada", "ada"))).await;
    assert_eq!((status, &again), (200, &ada));
    assert_eq!(provider.jwks_fetches(), 2);
    // A session opens with it too.
    WsClient::connect(app.addr, &sign(&new, &provider.claims("sub-ada", "ada")))
        .await
        .close()
        .await;

    // Made-up kids right after: refused without asking the provider again.
    for i in 0..20 {
        let garbage = rsa_key_with_kid(&old, &format!("garbage-{i}"));
        assert_refused(
            &app,
            &sign(&garbage, &provider.claims("sub-ada", "ada")),
            "made-up kid",
        )
        .await;
    }
    assert_eq!(provider.jwks_fetches(), 2, "unknown kids are rate-limited");
    // Known keys keep working meanwhile.
    assert_eq!(
        me(&app, &sign(&old, &provider.claims("sub-ada", "ada")))
            .await
            .0,
        200
    );
}

/// `key` under another `kid` (its signatures are genuine, its name unknown).
fn rsa_key_with_kid(key: &TestKey, kid: &str) -> TestKey {
    TestKey {
        kid: kid.into(),
        alg: key.alg,
        encoding: key.encoding.clone(),
        jwk: Value::Null,
        public_pem: String::new(),
    }
}
