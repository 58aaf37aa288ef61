//! The demo application behind Envoy: it trusts the identity headers the multitokens filter sets
//! and calls the companion's admin API to log users in and out.
//!
//! Environment: `DEMO_APP_LISTEN` (default 127.0.0.1:18081), `MULTITOKENS_URL` (the companion,
//! default http://127.0.0.1:18080), `MULTITOKENS_ADMIN_KEY`.
//!
//! Routes: `POST /login {"user","device","scopes"?}` -> 201 `{"token"}` (a real app checks a
//! password first; with a `DPoP` proof header, the token is bound to the proof's key); `GET /api/whoami`; `GET /api/headers` (every identity header value received);
//! `GET /api/admin/stats` (needs scope `admin` at the edge);
//! `POST /logout`; `POST /logout-all`; `GET /public/headers` (echoes identity headers, excluded
//! from auth); `GET /healthz`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use multitokens_core::contract::{DEVICE_HEADER, IDENTITY_HEADERS, TOKEN_ID_HEADER, USER_HEADER};
use serde_json::{json, Value};
use std::sync::Arc;

struct Demo {
    companion: String,
    admin_key: String,
    agent: ureq::Agent,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Calls the companion's admin API off the async runtime.
async fn admin_call(demo: Arc<Demo>, method: &'static str, path: String, body: Option<Value>) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        let uri = format!("{}{}", demo.companion, path);
        let auth = format!("Bearer {}", demo.admin_key);
        let request = ureq::http::Request::builder().method(method).uri(uri).header("authorization", auth);
        let response = match body {
            Some(b) => demo.agent.run(
                request.header("content-type", "application/json").body(b.to_string()).map_err(|e| e.to_string())?,
            ),
            None => demo.agent.run(request.body(()).map_err(|e| e.to_string())?),
        }
        .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().map_err(|e| e.to_string())?;
        Ok::<_, String>((status, text))
    })
    .await;
    match result {
        Ok(Ok((status, text))) => {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), Json(value)).into_response()
        }
        _ => (StatusCode::BAD_GATEWAY, Json(json!({"detail": "companion unreachable"}))).into_response(),
    }
}

async fn login(State(demo): State<Arc<Demo>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let user = body.get("user").and_then(Value::as_str).unwrap_or_default().to_string();
    let device = body.get("device").and_then(Value::as_str).unwrap_or_default().to_string();
    let scopes = body.get("scopes").cloned().unwrap_or_else(|| json!([]));
    let mut issue = json!({"user": user, "device": device, "scopes": scopes});
    // a client that sent a DPoP proof with its login gets a token bound to its key: the companion
    // checks the proof against this request as the client made it (through Envoy)
    if let Some(proof) = header(&headers, "dpop") {
        let scheme = header(&headers, "x-forwarded-proto").unwrap_or_else(|| "http".into());
        let host = header(&headers, "host").unwrap_or_default();
        issue["dpop"] = json!({"proof": proof, "method": "POST", "uri": format!("{scheme}://{host}/login")});
    }
    let response = admin_call(demo, "POST", "/v1/tokens".into(), Some(issue)).await;
    if response.status() != StatusCode::CREATED {
        return response;
    }
    // pass on only the token: the rest is the companion's business
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let issued: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (StatusCode::CREATED, Json(json!({"token": issued["token"], "first": issued["first"]}))).into_response()
}

/// Every value the app received under the identity headers and `authorization`, and under any
/// name a CGI/WSGI server would read as one of them (`x_multitokens_user`), keyed by the name
/// received (to show that clients cannot add their own and that the credential is stripped).
fn all_values(headers: &HeaderMap) -> Value {
    let names: Vec<&str> = IDENTITY_HEADERS.into_iter().chain(["authorization"]).collect();
    let mut out = serde_json::Map::new();
    for name in &names {
        out.insert(name.to_string(), Value::Array(Vec::new()));
    }
    for (name, value) in headers {
        if names.contains(&name.as_str().replace('_', "-").as_str()) {
            let values = out.entry(name.as_str()).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(values) = values {
                values.push(json!(String::from_utf8_lossy(value.as_bytes())));
            }
        }
    }
    Value::Object(out)
}

async fn whoami(headers: HeaderMap) -> Response {
    match header(&headers, USER_HEADER) {
        Some(user) => Json(json!({"user": user, "device": header(&headers, DEVICE_HEADER)})).into_response(),
        None => (StatusCode::UNAUTHORIZED, Json(json!({"detail": "no identity: is the multitokens filter in front?"})))
            .into_response(),
    }
}

async fn logout(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    let (Some(user), Some(id)) = (header(&headers, USER_HEADER), header(&headers, TOKEN_ID_HEADER)) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"detail": "no identity"}))).into_response();
    };
    // the companion answers once the edges applied the revocation: {"revoked":1,"edges":{...}}
    admin_call(demo, "DELETE", format!("/v1/users/{}/tokens/{}", encode(&user), encode(&id)), None).await
}

async fn logout_all(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    let Some(user) = header(&headers, USER_HEADER) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"detail": "no identity"}))).into_response();
    };
    admin_call(demo, "DELETE", format!("/v1/users/{}/tokens", encode(&user)), None).await
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let listen = std::env::var("DEMO_APP_LISTEN").unwrap_or_else(|_| "127.0.0.1:18081".into());
    let demo = Arc::new(Demo {
        companion: std::env::var("MULTITOKENS_URL").unwrap_or_else(|_| "http://127.0.0.1:18080".into()),
        admin_key: std::env::var("MULTITOKENS_ADMIN_KEY").unwrap_or_default(),
        agent: ureq::Agent::config_builder().http_status_as_error(false).build().into(),
    });
    let app = Router::new()
        .route("/login", post(login))
        .route("/api/whoami", get(whoami))
        .route("/api/admin/stats", get(|| async { Json(json!({"admin": true})) }))
        .route("/api/headers", get(|headers: HeaderMap| async move { Json(all_values(&headers)) }))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/public/headers", get(|headers: HeaderMap| async move { Json(all_values(&headers)) }))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(demo);
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("multitokens-demo-app: cannot listen on {listen}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match axum::serve(listener, app).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multitokens-demo-app: {e}");
            std::process::ExitCode::from(3)
        }
    }
}
