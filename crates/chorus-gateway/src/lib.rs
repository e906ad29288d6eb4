//! The gateway role: HTTP API, WebSocket sessions, authentication, the web UI.
//!
//! The gateway is where clients meet the spine. A `send` becomes an event on the first
//! stage's topic ([`send`]); the gateway registers the sessions it holds in the
//! registry; its delivery consumer ([`deliver`]) reads this node's delivery topic and
//! writes to the sockets ([`ws`]). It never calls a stage: everything goes through
//! the log, the store or the registry.
//!
//! Layout: [`auth`] tokens and passwords, [`attachments`] files, [`oidc`] tokens of an outside identity
//! provider, [`accounts`] signing up and in, [`throttle`] the limits on both,
//! [`error`] the error mapping, [`http`] the
//! REST routes, [`jobs`] the jobs and observer routes, [`ws`] sessions, [`sessions`]
//! local fan-out, [`queue`] each session's outbound queue,
//! [`state`] what they share, [`assets`] the embedded web app.

pub mod accounts;
pub mod assets;
pub mod attachments;
pub mod auth;
pub mod automation;
pub mod deliver;
pub mod error;
pub mod http;
pub mod jobs;
pub mod oidc;
pub mod queue;
pub mod send;
pub mod sessions;
pub mod state;
pub mod throttle;
pub mod ws;

use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use state::AppState;
use std::sync::Arc;

/// The gateway's whole HTTP surface.
pub fn router(state: Arc<AppState>) -> Router {
    let api = http::routes()
        .merge(accounts::routes())
        .merge(automation::routes())
        .merge(jobs::routes())
        .merge(attachments::routes())
        .route("/ws", get(ws::upgrade))
        .fallback(http::not_found);
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(assets::index))
        .route("/assets/{*path}", get(assets::asset))
        .merge(ops_routes())
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn(close_if_body_unread))
        .layer(DefaultBodyLimit::max(state.limits.max_http_body_bytes))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of a request: its method and path, never its query, which may carry a
/// token (`/api/v1/ws?token=…`: browsers cannot set headers on a WebSocket upgrade).
fn request_span(request: &Request) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
    )
}

/// Only `/healthz`, `/readyz` and `/metrics`: what a node without the gateway role
/// serves, for probes and scraping.
pub fn ops_router(state: Arc<AppState>) -> Router {
    ops_routes().fallback(http::not_found).with_state(state)
}

fn ops_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// A request refused before its body was read (a bad token on a POST) leaves the body
/// on the connection, so the server cannot reuse it and closes it; a client that sent
/// its next request on it in the meantime saw the connection drop. Saying
/// `Connection: close` on such answers tells the client first.
async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    let http1 = request.version() <= axum::http::Version::HTTP_11;
    let mut response = next.run(request).await;
    let refused = response.status().is_client_error() || response.status().is_server_error();
    if has_body && http1 && refused {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database, the event log and the registry all answer.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (db, log, registry) = tokio::join!(
        state.directory.store().health(),
        state.log.health(),
        state.registry.health(),
    );
    let check = |r: Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let ready = db.is_ok() && log.is_ok() && registry.is_ok() && !state.shutdown.is_cancelled();
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": {
            "database": check(db.map_err(|e| e.to_string())),
            "log": check(log.map_err(|e| e.to_string())),
            "registry": check(registry.map_err(|e| e.to_string())),
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    metrics::gauge!("chorus_ws_sessions_local").set(state.sessions.count() as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn request_logs_name_the_path_but_never_the_query_and_its_token() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let request = Request::builder()
                .uri("/api/v1/ws?token=eyJsecret.payload.signature")
                .body(axum::body::Body::empty())
                .unwrap();
            let _entered = request_span(&request).entered();
            tracing::debug!("finished processing request");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("path=/api/v1/ws"), "{text}");
        assert!(!text.contains("eyJsecret"), "{text}");
        assert!(!text.contains("token"), "{text}");
    }
}
