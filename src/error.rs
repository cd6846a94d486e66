//! Errors the gateway itself answers with, and their one mapping to a status
//! and the JSON body of SPEC §3: `{"error": KIND, "message": TEXT, "request_id": ID}`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

/// Why the gateway answered instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches {method} {path}")]
    NoRoute { method: http::Method, path: String },
    #[error("service {service} has no healthy endpoint")]
    NoHealthyUpstream { service: String },
    #[error("the circuit breaker of service {service} is open")]
    CircuitOpen { service: String, retry_after: Duration },
    #[error("service {service} has {limit} requests in flight (max_concurrent_requests)")]
    Overloaded { service: String, limit: usize },
    #[error("upstream {endpoint} of service {service} did not answer within {timeout:?}")]
    UpstreamTimeout { service: String, endpoint: String, timeout: Duration },
    #[error("bad request: {message}")]
    BadRequest { message: String },
    #[error("upstream {endpoint} of service {service} failed: {source}")]
    UpstreamConnect {
        service: String,
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute { .. } => StatusCode::NOT_FOUND,
            GatewayError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::UpstreamConnect { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::NoHealthyUpstream { .. }
            | GatewayError::CircuitOpen { .. }
            | GatewayError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error` field of the body (SPEC §3).
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::BadRequest { .. } => "bad_request",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::UpstreamConnect { .. } => "upstream_connect_error",
        }
    }

    /// The JSON answer for this error; `request_id` is echoed in the body
    /// (the caller sets the `x-request-id` header with the other response headers).
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let message = match self {
            // The source chain says whether it was refused, reset or timed out.
            GatewayError::UpstreamConnect { source, .. } => {
                format!("{self}{}", source_chain(source.as_ref()))
            }
            _ => self.to_string(),
        };
        let body = serde_json::json!({ "error": self.kind(), "message": message, "request_id": request_id });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let GatewayError::CircuitOpen { retry_after, .. } = self {
            // Whole seconds, rounded up so a client never retries too early.
            let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// `": cause: deeper cause"` for the sources below the first.
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_spec_json() {
        let e = GatewayError::NoRoute { method: http::Method::GET, path: "/x".into() };
        let r = e.to_response("abc");
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["request_id"], "abc");
        assert!(v["message"].as_str().unwrap().contains("/x"));
    }

    #[test]
    fn circuit_open_has_retry_after_rounded_up() {
        let e = GatewayError::CircuitOpen { service: "s".into(), retry_after: Duration::from_millis(1200) };
        let r = e.to_response("id");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
    }
}
