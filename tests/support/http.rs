//! A plain HTTP client for tests: every status is an answer, bodies are JSON when they can be.

/// An HTTP client that reports every status instead of failing on 4xx/5xx.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// An HTTP answer: status, JSON body (`Null` when empty, a string when not JSON) and challenge.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: serde_json::Value,
    pub challenge: Option<String>,
    /// The `DPoP-Nonce` header (a server nonce to make a DPoP proof with).
    pub dpop_nonce: Option<String>,
}

/// Sends a request with optional extra headers and a JSON body.
pub fn http_call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> HttpReply {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = match body {
        Some(b) => agent.run(req.header("content-type", "application/json").body(b.to_string()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    }
    .unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let dpop_nonce = response.headers().get("dpop-nonce").map(|v| v.to_str().unwrap().to_string());
    let text = response.into_body().read_to_string().unwrap_or_default();
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    HttpReply { status, body, challenge, dpop_nonce }
}
