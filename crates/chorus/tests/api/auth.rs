//! Attacks on accounts and administration (issue 23), each performed and shown
//! contained: administrators are user ids, not names anyone can register.

use crate::helpers::*;
use serde_json::json;

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
