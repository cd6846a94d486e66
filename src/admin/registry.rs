//! The registry API (SPEC §4): `POST /registry`, `DELETE /registry/{service}/{id}`,
//! `GET /registry`, `GET /registry/{service}`.
//!
//! Writes are checked in this order, and any failure changes nothing:
//! token (401) → declared size (413, before reading) → body read with a
//! 64 KiB cap (413) → JSON (400) → fields (400, naming the field).

use std::sync::Arc;
use std::time::SystemTime;

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::{json_response, method_not_allowed, AdminState};
use crate::config::{valid_host_port, valid_name};
use crate::proxy::ResponseBody;
use crate::registry::lease::{Lease, Registration};
use crate::registry::{Endpoint, EndpointState};

/// Largest accepted registration body.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest accepted `weight`.
pub const MAX_WEIGHT: u64 = 10_000;

pub async fn handle(state: &Arc<AdminState>, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(2).collect(); // after "/registry"
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        ([], &Method::GET | &Method::HEAD) => json_response(StatusCode::OK, &list_all(state)),
        ([], &Method::POST) => register(state, req).await,
        ([], _) => method_not_allowed(&method, &path, "GET, HEAD, POST"),
        ([service], &Method::GET | &Method::HEAD) => match list_service(state, service) {
            Some(v) => json_response(StatusCode::OK, &v),
            None => error(StatusCode::NOT_FOUND, "not_found", &format!("unknown service {service}"), None),
        },
        ([_], _) => method_not_allowed(&method, &path, "GET, HEAD"),
        ([service, id], &Method::DELETE) => deregister(state, req.headers(), service, id),
        ([_, _], _) => method_not_allowed(&method, &path, "DELETE"),
        _ => error(StatusCode::NOT_FOUND, "not_found", &format!("no admin endpoint at {path}"), None),
    }
}

fn error(status: StatusCode, kind: &str, message: &str, field: Option<&str>) -> Response<ResponseBody> {
    let mut body = json!({ "error": kind, "message": message });
    if let Some(f) = field {
        body["field"] = Value::from(f);
    }
    json_response(status, &body)
}

fn bad_field(field: &str, message: &str) -> Response<ResponseBody> {
    error(StatusCode::BAD_REQUEST, "bad_request", message, Some(field))
}

/// `None` when the write may go ahead, else the 401 answer.
fn check_token(state: &AdminState, headers: &HeaderMap) -> Option<Response<ResponseBody>> {
    let snap = state.proxy.snapshot();
    let expected = snap.config.registry.token.as_deref()?;
    let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "unauthorized", "wrong registry token", None)),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "registry writes need `Authorization: Bearer <token>`",
            None,
        )),
    }
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of the token matched (only its length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn register(state: &Arc<AdminState>, req: Request<Incoming>) -> Response<ResponseBody> {
    if let Some(denied) = check_token(state, req.headers()) {
        return denied;
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("registration bodies are limited to {MAX_BODY} bytes"),
            None,
        )
    };
    let declared = crate::proxy::headers::content_length(req.headers());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("cannot read body: {e}"), None),
    };
    let reg = match parse_registration(&bytes) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let (service, id) = (reg.service.clone(), reg.id.clone());
    match state.proxy.registry().heartbeat(reg) {
        Ok(_) => {
            let ttl = state.proxy.snapshot().config.registry.heartbeat_ttl;
            json_response(StatusCode::OK, &json!({ "service": service, "id": id, "ttl_ms": ttl.as_millis() as u64 }))
        }
        Err(e) => bad_field("address", &format!("address is not usable: {e}")),
    }
}

/// Validates a registration body; the error answer names the field.
#[allow(clippy::result_large_err)]
pub fn parse_registration(bytes: &[u8]) -> Result<Registration, Response<ResponseBody>> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &format!("malformed JSON: {e}"), None))?;
    let Value::Object(obj) = v else {
        return Err(error(StatusCode::BAD_REQUEST, "bad_request", "the body must be a JSON object", None));
    };
    let name = |field: &str| -> Result<String, Response<ResponseBody>> {
        match obj.get(field) {
            None | Some(Value::Null) => Err(bad_field(field, &format!("missing field `{field}`"))),
            Some(Value::String(s)) if valid_name(s) => Ok(s.clone()),
            Some(Value::String(s)) => {
                Err(bad_field(field, &format!("`{field}` \"{s}\" must be 1-128 characters of [A-Za-z0-9._-]")))
            }
            Some(_) => Err(bad_field(field, &format!("`{field}` must be a string"))),
        }
    };
    let service = name("service")?;
    let id = name("id")?;
    let address = match obj.get("address") {
        None | Some(Value::Null) => return Err(bad_field("address", "missing field `address`")),
        Some(Value::String(s)) if valid_host_port(s) => s.clone(),
        Some(Value::String(s)) => return Err(bad_field("address", &format!("`address` \"{s}\" is not host:port"))),
        Some(_) => return Err(bad_field("address", "`address` must be a \"host:port\" string")),
    };
    let weight = match obj.get("weight") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
            _ => return Err(bad_field("weight", &format!("`weight` must be an integer from 1 to {MAX_WEIGHT}"))),
        },
        Some(_) => return Err(bad_field("weight", "`weight` must be a number")),
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad_field("metadata", "`metadata` must be a JSON object")),
    };
    Ok(Registration { service, id, address, weight, metadata })
}

fn deregister(state: &Arc<AdminState>, headers: &HeaderMap, service: &str, id: &str) -> Response<ResponseBody> {
    if let Some(denied) = check_token(state, headers) {
        return denied;
    }
    if state.proxy.registry().deregister(service, id) {
        let mut r = Response::new(ResponseBody::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    } else {
        error(StatusCode::NOT_FOUND, "not_found", &format!("no registered instance {service}/{id}"), None)
    }
}

fn ms_since(t: tokio::time::Instant) -> u64 {
    tokio::time::Instant::now().saturating_duration_since(t).as_millis() as u64
}

/// One instance as SPEC §4 lists it.
pub fn instance_json(ep: &Endpoint, lease: Option<&Lease>) -> Value {
    let expired = ep.stats.transition().state == EndpointState::Expired;
    json!({
        "id": ep.id.as_ref(),
        "address": ep.address.as_ref(),
        "source": ep.source.as_str(),
        "healthy": !expired && ep.stats.checked_healthy.load(std::sync::atomic::Ordering::Acquire),
        "ejected": ep.stats.ejected.load(std::sync::atomic::Ordering::Acquire),
        "active_requests": ep.stats.active(),
        "weight": ep.weight,
        "metadata": lease.map(|l| Value::Object(l.metadata.clone())).unwrap_or_else(|| json!({})),
        "last_heartbeat_ms_ago": lease.map(|l| ms_since(l.last_heartbeat)),
    })
}

/// Instances of one service: static endpoints first, then registered ones.
fn service_instances(state: &AdminState, name: &str) -> Option<Vec<Value>> {
    let snap = state.proxy.snapshot();
    state.proxy.registry().with_table(|t| {
        let leases = t.service(name);
        let svc = snap.services.get(name);
        if svc.is_none() && leases.is_none() {
            return None;
        }
        let mut out = Vec::new();
        if let Some(svc) = svc {
            for ep in svc.endpoints().endpoints.iter().filter(|e| e.source == crate::registry::Source::Static) {
                out.push(instance_json(ep, None));
            }
        }
        for lease in leases.into_iter().flat_map(|m| m.values()) {
            out.push(instance_json(&lease.endpoint, Some(lease)));
        }
        Some(out)
    })
}

fn list_service(state: &AdminState, name: &str) -> Option<Value> {
    service_instances(state, name).map(Value::Array)
}

fn list_all(state: &AdminState) -> Value {
    let snap = state.proxy.snapshot();
    let mut names: Vec<String> = snap.services.keys().cloned().collect();
    state.proxy.registry().with_table(|t| names.extend(t.services().map(|(n, _)| n.clone())));
    names.sort();
    names.dedup();
    let services: Map<String, Value> =
        names.into_iter().filter_map(|n| service_instances(state, &n).map(|v| (n, Value::Array(v)))).collect();
    json!({ "services": services, "generated_at": super::rfc3339(SystemTime::now()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(resp: Response<ResponseBody>) -> Option<String> {
        assert_eq!(resp.status(), 400);
        // The body is a full buffer; read it synchronously through the runtime-free path.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v.get("field").and_then(|f| f.as_str()).map(str::to_string)
    }

    #[test]
    fn valid_registration() {
        let r = parse_registration(
            br#"{"service":"users","id":"u-1","address":"127.0.0.1:3001","weight":2,"metadata":{"zone":"a"}}"#,
        )
        .unwrap();
        assert_eq!(r.weight, 2);
        assert_eq!(r.metadata["zone"], "a");
        let r = parse_registration(br#"{"service":"users","id":"u-1","address":"users.internal:80"}"#).unwrap();
        assert_eq!(r.weight, 1);
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, field) in [
            (&br#"{"id":"u","address":"127.0.0.1:1"}"#[..], Some("service")),
            (br#"{"service":"users","address":"127.0.0.1:1"}"#, Some("id")),
            (br#"{"service":"users","id":"u"}"#, Some("address")),
            (br#"{"service":"us ers","id":"u","address":"127.0.0.1:1"}"#, Some("service")),
            (br#"{"service":"users","id":"u/1","address":"127.0.0.1:1"}"#, Some("id")),
            (br#"{"service":"users","id":"u","address":"127.0.0.1"}"#, Some("address")),
            (br#"{"service":"users","id":"u","address":"127.0.0.1:1","weight":0}"#, Some("weight")),
            (br#"{"service":"users","id":"u","address":"127.0.0.1:1","metadata":[]}"#, Some("metadata")),
            (br#"{"service":"users""#, None),
            (br#"[1,2]"#, None),
        ] {
            let resp = parse_registration(body).unwrap_err();
            assert_eq!(field_of(resp).as_deref(), field, "{}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"service":"{}","id":"u","address":"127.0.0.1:1"}}"#, "a".repeat(129));
        assert_eq!(field_of(parse_registration(long.as_bytes()).unwrap_err()).as_deref(), Some("service"));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
    }
}
