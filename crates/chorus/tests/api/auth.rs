//! Attacks on accounts and administration (issue 23), each performed and shown
//! contained: administrators are user ids, not names anyone can register; failed
//! sign-ins are throttled per address and per name; sign-ups per address; sign-up can
//! be closed or take single-use invites.

use crate::helpers::*;
use serde_json::{Value, json};

#[tokio::test]
async fn registering_an_administrators_name_or_id_grants_nothing() {
    let (app, root) = TestApp::spawn_with_admin("root", |_| {}).await;
    let change = json!({ "max_workers": 3 });

    // The name itself is taken; its look-alikes and the id as a name give nothing.
    let (status, body) = app
        .post(
            None,
            "/api/v1/auth/register",
            json!({ "username": "root", "password": PASSWORD }),
        )
        .await;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("conflict")));
    let (status, _) = app
        .post(
            None,
            "/api/v1/auth/register",
            json!({ "username": root.id, "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, 400, "an id is no username");
    for name in ["Root", "root.", "admin"] {
        let (status, body) = app
            .post(
                None,
                "/api/v1/auth/register",
                json!({ "username": name, "password": PASSWORD }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let token = body["token"].as_str().unwrap();
        let (status, body) = app
            .put(token, "/api/v1/observer/config", change.clone())
            .await;
        assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    }

    let (status, body) = app
        .put(&root.token, "/api/v1/observer/config", change)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["max_workers"], 3);
}

/// `POST /auth/login` as `username` with `password`: status and body.
async fn login(api: &Api, username: &str, password: &str) -> (u16, Value) {
    api.post(
        None,
        "/api/v1/auth/login",
        json!({ "username": username, "password": password }),
    )
    .await
}

#[track_caller]
fn throttled(answer: &(u16, Value)) -> u64 {
    let (status, body) = answer;
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("too many failed sign-ins; retry in "),
        "{message}"
    );
    body["error"]["retry_after_ms"]
        .as_u64()
        .expect("a retry hint")
}

#[tokio::test]
async fn a_flood_of_failed_sign_ins_is_throttled_per_address_and_per_name() {
    let app = TestApp::spawn_with(|c| {
        c.auth.login_failures_per_address = 8;
        c.auth.login_failures_per_account = 3;
    })
    .await;
    // The harness connects from 127.0.0.1: that is the attacker. Real users sign up
    // from elsewhere.
    let home = Api::from_address(app.addr, "127.0.0.2");
    let ada = home.register("ada").await;
    let bob = home.register("bob").await;

    // Guessing ada's password: three failures, then the name is throttled. An
    // unknown name is throttled the same way, with the same answer.
    for name in [ada.username.as_str(), "nobody-has-this-name"] {
        for _ in 0..3 {
            let (status, body) = login(&app, name, "wrong password").await;
            assert_eq!(status, 401, "{body}");
        }
        let wait = throttled(&login(&app, name, "wrong password").await);
        assert!(
            wait > 200_000,
            "one failure forgiven every 5 minutes: {wait}"
        );
    }
    // Two more failures on other names use up the address's eight.
    for guess in ["guess-1", "guess-2"] {
        assert_eq!(login(&app, guess, "wrong password").await.0, 401);
    }
    throttled(&login(&app, "guess-3", "wrong password").await);
    // From the throttled address even a right password waits (the choice in
    // crates/chorus-gateway/src/throttle.rs): a right answer would tell the guesser.
    throttled(&login(&app, &bob.username, PASSWORD).await);

    // From another address, bob signs in at once. ada's name stays throttled from
    // everywhere for a while: the price of not letting anyone guess on.
    let (status, body) = login(&home, &bob.username, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    throttled(&login(&home, &ada.username, PASSWORD).await);
    // Her sessions are untouched.
    let (status, _) = home.get(&ada.token, "/api/v1/me").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sign_ups_from_one_address_are_limited() {
    let app = TestApp::spawn_with(|c| c.auth.registrations_per_hour = 3).await;
    for i in 0..3 {
        app.register(&format!("user{i}")).await;
    }
    let (status, body) = app
        .post(
            None,
            "/api/v1/auth/register",
            json!({ "username": "one-too-many", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    // One more every 20 minutes, less the time the three sign-ups took.
    let wait = body["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1_100_000..=1_200_000).contains(&wait), "{wait}");
    // Another address is not held up.
    Api::from_address(app.addr, "127.0.0.3")
        .register("elsewhere")
        .await;
}

#[tokio::test]
async fn closed_registration_refuses_sign_ups_but_not_sign_ins() {
    let (app, root) = TestApp::spawn_with_admin("root", |c| {
        c.auth.registration = chorus_config::Registration::Closed;
    })
    .await;
    let (status, body) = app.get("", "/api/v1/auth/options").await;
    assert_eq!((status, body), (200, json!({ "registration": "closed" })));
    let (status, body) = app
        .post(
            None,
            "/api/v1/auth/register",
            json!({ "username": "newcomer", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "registration_closed");
    app.login(&root.username, PASSWORD).await;
}

/// `POST /auth/register` with an invite code.
async fn register_with(api: &Api, username: &str, invite: Option<&str>) -> (u16, Value) {
    api.post(
        None,
        "/api/v1/auth/register",
        json!({ "username": username, "password": PASSWORD, "invite": invite }),
    )
    .await
}

#[tokio::test]
async fn invite_registration_takes_one_single_use_code_per_account() {
    let (app, root) = TestApp::spawn_with_admin("root", |c| {
        c.auth.registration = chorus_config::Registration::Invite;
    })
    .await;
    let (_, options) = app.get("", "/api/v1/auth/options").await;
    assert_eq!(options["registration"], "invite");

    for code in [None, Some(""), Some("0123456789abcdef0123456789abcdef")] {
        let (status, body) = register_with(&app, "newcomer", code).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "invalid_invite", "{code:?}");
    }
    // Only an administrator makes invites.
    let (status, body) = app
        .post(Some(&root.token), "/api/v1/invites", json!({}))
        .await;
    assert_eq!(status, 201, "{body}");
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 32);
    let expires: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    let week = chrono::Duration::days(7);
    assert!((expires - chrono::Utc::now() - week).num_seconds().abs() < 60);

    let (status, body) = register_with(&app, "newcomer", Some(&code)).await;
    assert_eq!(status, 201, "{body}");
    let newcomer = body["token"].as_str().unwrap().to_owned();
    // Used up: it makes no second account.
    let (status, body) = register_with(&app, "second", Some(&code)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "invalid_invite");
    let (status, body) = app
        .post(Some(&newcomer), "/api/v1/invites", json!({}))
        .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
}

#[tokio::test]
async fn two_sign_ups_racing_with_one_invite_make_one_account() {
    let (app, root) = TestApp::spawn_with_admin("root", |c| {
        c.auth.registration = chorus_config::Registration::Invite;
    })
    .await;
    let (_, body) = app
        .post(Some(&root.token), "/api/v1/invites", json!({}))
        .await;
    let code = body["code"].as_str().unwrap();
    let (a, b) = tokio::join!(
        register_with(&app, "racer-a", Some(code)),
        register_with(&app, "racer-b", Some(code)),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 403], "{a:?} {b:?}");
    let (_, found) = app.get(&root.token, "/api/v1/users?query=racer").await;
    assert_eq!(found["users"].as_array().unwrap().len(), 1, "{found}");
}
