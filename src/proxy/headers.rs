//! Header rewriting between client and upstream (SPEC §3): hop-by-hop
//! removal, `X-Forwarded-*`, `x-request-id`, W3C `traceparent`.
//!
//! Everything works in place on the request's own `HeaderMap`; new values are
//! formatted into stack buffers, so a request costs at most a few small
//! `HeaderValue` allocations (request id, forwarded-for, traceparent).

use std::cell::Cell;
use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers the gateway adds to an upstream request, kept beside the
/// client's map and written after it (by the upstream client) rather than
/// inserted: hyper sizes a request's map to the headers it parsed, so the
/// first insert grows it (a reallocation and a rehash of every entry), and
/// with four or five inserts that was ~5 % of a proxied request's
/// instructions. A header the client sent is replaced in its map instead
/// (no growth: the slot exists).
#[derive(Debug, Default)]
pub struct Added {
    entries: Vec<(HeaderName, HeaderValue)>,
    /// Which of the gateway's headers ([`gateway_bit`]) the client sent,
    /// from one pass over its names: a lookup in the map hashes the name.
    in_map: u8,
    /// Which of them are in `entries`.
    added: u8,
}

const REQUEST_ID_BIT: u8 = 1;
const TRACEPARENT_BIT: u8 = 16;
const HOST_BIT: u8 = 32;

/// A bit for each header the gateway sets, by a match on the name's text.
fn gateway_bit(name: &HeaderName) -> u8 {
    match name.as_str() {
        "x-request-id" => REQUEST_ID_BIT,
        "x-forwarded-for" => 2,
        "x-forwarded-proto" => 4,
        "x-forwarded-host" => 8,
        "traceparent" => TRACEPARENT_BIT,
        "host" => HOST_BIT,
        _ => 0,
    }
}

impl Added {
    /// Nothing added yet to a request whose headers are `headers`.
    pub fn new(headers: &HeaderMap) -> Self {
        Added {
            // Request id, X-Forwarded-For/-Proto/-Host, traceparent; Host for HTTP/2.
            entries: Vec::with_capacity(6),
            in_map: headers.keys().fold(0, |m, n| m | gateway_bit(n)),
            added: 0,
        }
    }

    /// Sets `name` on the upstream request: in `headers` if the client
    /// sent it (every line of it is replaced), else beside them.
    pub fn set(&mut self, headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
        let bit = gateway_bit(name);
        let in_map = if bit == 0 { headers.contains_key(name) } else { self.in_map & bit != 0 };
        // `new` saw the map: a header the client sent is never missed (one
        // the gateway removed since is simply inserted again).
        debug_assert!(in_map || !headers.contains_key(name), "{name} was sent but not seen by Added::new");
        if in_map {
            headers.insert(name.clone(), value);
        } else if bit != 0 && self.added & bit == 0 {
            self.added |= bit;
            self.entries.push((name.clone(), value));
        } else if let Some(slot) = self.entries.iter_mut().find(|(n, _)| n == name) {
            slot.1 = value;
        } else {
            self.entries.push((name.clone(), value));
        }
    }

    /// The value `name` has on the upstream request.
    pub fn get<'a>(&'a self, headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
        headers.get(name).or_else(|| self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v))
    }

    /// Whether the client's map may hold `name`, one of the gateway's
    /// headers (false: it was not sent, and a lookup that hashes its name
    /// can be skipped). Only as true as the map `new` saw: an
    /// `Added::default()` beside a map with headers in it would miss them
    /// (checked in debug builds).
    fn maybe_in_map(&self, headers: &HeaderMap, bit: u8, name: &HeaderName) -> bool {
        debug_assert_eq!(bit, gateway_bit(name));
        let maybe = self.in_map & bit != 0;
        debug_assert!(maybe || !headers.contains_key(name), "{name} was sent but not seen by Added::new");
        maybe
    }

    /// The Host the gateway added (HTTP/2's `:authority`), if it did: one
    /// bit test for requests that carry their own.
    pub fn host(&self) -> Option<&HeaderValue> {
        if self.added & HOST_BIT == 0 {
            return None;
        }
        self.entries.iter().find(|(n, _)| *n == header::HOST).map(|(_, v)| v)
    }

    /// Whether `name` was added beside the map (the tests' view; the
    /// request path asks [`Added::host`]).
    #[cfg(test)]
    fn contains(&self, name: &HeaderName) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.entries.iter().map(|(n, v)| (n, v))
    }

    /// Moves the added headers into `headers` (for a request sent by
    /// hyper's client, which takes one map).
    pub fn merge_into(self, headers: &mut HeaderMap) {
        for (n, v) in self.entries {
            headers.insert(n, v);
        }
    }
}

/// Hop-by-hop headers of RFC 9110 §7.6.1 (plus the legacy `Keep-Alive` and
/// `Proxy-Connection`), and `Upgrade` last (kept for upgrades).
fn hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// The position of `name` in [`hop_by_hop`]: a match on the name's text
/// (its length first), not seven `HeaderName` comparisons per header.
fn hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including every header named in `Connection`.
/// With `keep_upgrade`, `Upgrade` survives and `Connection: upgrade` is set
/// again (the tunnel needs both on the next hop).
///
/// One pass over the names (comparisons, no hashing) finds which are there,
/// and only those are removed: most requests carry none, or only
/// `Connection: keep-alive`; seven blind removals cost seven hash lookups.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let names = hop_by_hop();
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_index(name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        // Headers named by Connection (beyond the ones removed anyway).
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !["keep-alive", "close", "upgrade"].iter().any(|k| t.eq_ignore_ascii_case(k)))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let last = if keep_upgrade { names.len() - 1 } else { names.len() };
    for (i, name) in names[..last].iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket and others).
pub fn wants_upgrade(headers: &HeaderMap, version: http::Version) -> bool {
    version == http::Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of every `Connection` header line.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// The declared `Content-Length`, if there is a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The request's id: the client's `x-request-id` when it is printable ASCII
/// (at most 200 bytes), else a new random one, which is set on the upstream request.
pub fn ensure_request_id(headers: &mut HeaderMap, added: &mut Added) -> HeaderValue {
    // Marked sensitive: a request id is unique per request, so HPACK
    // (HTTP/2 answers) must not add it to the connection's header table,
    // where every response would evict a useful entry to store a value
    // that never comes back (~1.5 % of an h2c request's CPU, measured).
    let sent =
        if added.maybe_in_map(headers, REQUEST_ID_BIT, &X_REQUEST_ID) { headers.get(&X_REQUEST_ID) } else { None };
    if let Some(v) = sent {
        if !v.is_empty() && v.len() <= 200 && v.to_str().is_ok() {
            let mut v = v.clone();
            v.set_sensitive(true);
            return v;
        }
    }
    let mut buf = [0u8; 32];
    hex_into(&mut buf[..16], fast_random());
    hex_into(&mut buf[16..], fast_random());
    // Shared from the start: copied into a plain `Bytes`, the id would be
    // copied once more into a shared buffer at its first clone (it is
    // cloned into the upstream request's headers and the response's).
    let mut v = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf)).expect("hex is a valid header value");
    v.set_sensitive(true);
    added.set(headers, &X_REQUEST_ID, v.clone());
    v
}

/// Appends the client address to `X-Forwarded-For`, sets `X-Forwarded-Proto`
/// and `X-Forwarded-Host` (the host the client asked for).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    added: &mut Added,
    client: IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let mut buf = [0u8; 1024];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    // Every incoming X-Forwarded-For line is part of the chain.
    let mut ok = Ok(());
    for prev in headers.get_all(&X_FORWARDED_FOR) {
        ok = ok.and_then(|_| cur.write_all(prev.as_bytes())).and_then(|_| cur.write_all(b", "));
    }
    let ok = ok.and_then(|_| match client {
        // The common case without core::fmt (a tenth of this function's cost).
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let mut f = itoa::Buffer::new();
            cur.write_all(f.format(a).as_bytes())?;
            for o in [b, c, d] {
                cur.write_all(b".")?;
                cur.write_all(f.format(o).as_bytes())?;
            }
            Ok(())
        }
        IpAddr::V6(_) => write!(cur, "{client}"),
    });
    if ok.is_ok() {
        let n = cur.position() as usize;
        if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
            added.set(headers, &X_FORWARDED_FOR, v);
        }
    }
    added.set(headers, &X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    if let Some(h) = host {
        added.set(headers, &X_FORWARDED_HOST, h.clone());
    }
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 upstream
/// expects one line, joined with "; " (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else { return };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// W3C trace context: a valid `traceparent` continues with a new span id for
/// the upstream hop; a missing or invalid one starts a new trace. Returns the
/// 32-hex trace id (for logs). `tracestate` passes through untouched.
pub fn propagate_traceparent(headers: &mut HeaderMap, added: &mut Added) -> [u8; 32] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let mut trace_id = [0u8; 32];
    let sent =
        if added.maybe_in_map(headers, TRACEPARENT_BIT, &TRACEPARENT) { headers.get(&TRACEPARENT) } else { None };
    match sent.and_then(|v| parse_traceparent(v.as_bytes())) {
        Some((tid, flags)) => {
            trace_id.copy_from_slice(tid);
            out[53..55].copy_from_slice(flags);
        }
        None => {
            let (a, b) = (fast_random(), fast_random());
            hex_into(&mut trace_id[..16], a);
            hex_into(&mut trace_id[16..], b | 1); // never all zero
        }
    }
    out[3..35].copy_from_slice(&trace_id);
    hex_into(&mut out[36..52], fast_random() | 1);
    added.set(headers, &TRACEPARENT, HeaderValue::from_bytes(&out).expect("ascii"));
    trace_id
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` → (trace id, flags).
/// Future versions may append fields; version `ff` and all-zero ids are invalid.
fn parse_traceparent(v: &[u8]) -> Option<(&[u8], &[u8])> {
    if v.len() < 55 || (v.len() > 55 && v[0..2] == *b"00") {
        return None;
    }
    let lower_hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let (ver, tid, pid, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || ver == b"ff" {
        return None;
    }
    if !(lower_hex(ver) && lower_hex(tid) && lower_hex(pid) && lower_hex(flags)) {
        return None;
    }
    if tid.iter().all(|b| *b == b'0') || pid.iter().all(|b| *b == b'0') {
        return None;
    }
    Some((tid, flags))
}

/// `x` as 16 lowercase hex digits into `dst` (16 bytes).
fn hex_into(dst: &mut [u8], x: u64) {
    dst[..8].copy_from_slice(&hex8((x >> 32) as u32));
    dst[8..16].copy_from_slice(&hex8(x as u32));
}

/// Eight hex digits a word at a time (a table lookup per digit cost ~5
/// instructions each, 80 digits a request): each nibble is spread into a
/// byte of its own, then turned into its ASCII digit in all bytes at once.
fn hex8(x: u32) -> [u8; 8] {
    let mut v = u64::from(x);
    v = ((v & 0xffff_0000) << 16) | (v & 0xffff);
    v = ((v & 0x0000_ff00_0000_ff00) << 8) | (v & 0x0000_00ff_0000_00ff);
    v = ((v & 0x00f0_00f0_00f0_00f0) << 4) | (v & 0x000f_000f_000f_000f);
    // Byte k holds nibble k (the least significant first). A byte of 10
    // or more gets 1 in its bit 4 when 6 is added: 39 more makes it a-f.
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (v + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A fast thread-local pseudo-random number (wyrand) for ids. Ids need to be
/// unique, not unpredictable; the seed comes from the OS per thread.
pub fn fast_random() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hex_digits_are_what_format_writes_as_lowercase_hex() {
        let mut values = vec![0, 1, 9, 10, 15, 16, 0xff, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210, u64::MAX];
        values.extend((0..1000).map(|_| fast_random()));
        for x in values {
            let mut out = [0u8; 16];
            hex_into(&mut out, x);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{x:016x}"));
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn hop_index_is_the_position_in_hop_by_hop() {
        for (i, name) in hop_by_hop().iter().enumerate() {
            assert_eq!(hop_index(name), Some(i), "{name}");
        }
        for other in ["host", "x-forwarded-for", "connectio", "tes", "trailers"] {
            assert_eq!(hop_index(&HeaderName::from_static(other)), None, "{other}");
        }
    }

    #[test]
    fn upgrade_is_kept_for_tunnels() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h, http::Version::HTTP_11));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut h = map(&[("x-request-id", "abc-1")]);
        let mut a = Added::new(&h);
        assert_eq!(ensure_request_id(&mut h, &mut a), "abc-1");
        assert!(!a.contains(&X_REQUEST_ID), "the client's id stays where it is");
        let mut h = HeaderMap::new();
        let mut a = Added::new(&h);
        let id = ensure_request_id(&mut h, &mut a);
        assert_eq!(id.len(), 32);
        assert!(h.is_empty(), "added beside the client's map, not into it");
        assert_eq!(a.get(&h, &X_REQUEST_ID), Some(&id));
        assert_ne!(ensure_request_id(&mut HeaderMap::new(), &mut Added::default()), id);
        // An unusable id from the client is replaced in its map.
        let mut h = map(&[("x-request-id", "")]);
        let mut a = Added::new(&h);
        let id = ensure_request_id(&mut h, &mut a);
        assert_eq!((h["x-request-id"].clone(), a.contains(&X_REQUEST_ID)), (id, false));
    }

    #[test]
    fn added_headers_go_beside_the_map_unless_the_client_sent_them() {
        let names =
            [&X_REQUEST_ID, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &TRACEPARENT, &header::HOST];
        let bits: Vec<u8> = names.iter().map(|n| gateway_bit(n)).collect();
        assert_eq!(bits, [1, 2, 4, 8, 16, 32], "one bit per header the gateway sets");
        let mut h = map(&[("x-forwarded-proto", "ftp"), ("accept", "*/*")]);
        let mut a = Added::new(&h);
        a.set(&mut h, &X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        a.set(&mut h, &TRACEPARENT, HeaderValue::from_static("t1"));
        a.set(&mut h, &TRACEPARENT, HeaderValue::from_static("t2"));
        let other = HeaderName::from_static("x-other");
        a.set(&mut h, &other, HeaderValue::from_static("o"));
        assert_eq!((h.len(), &h["x-forwarded-proto"]), (2, &HeaderValue::from_static("http")), "replaced in place");
        let beside: Vec<_> = a.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(beside, [("traceparent", "t2"), ("x-other", "o")], "set twice, written once");
        assert_eq!(a.get(&h, &TRACEPARENT).unwrap(), "t2");
        a.merge_into(&mut h);
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn request_ids_are_kept_out_of_hpack_tables() {
        let mut h = map(&[("x-request-id", "abc-1")]);
        let mut a = Added::new(&h);
        assert!(ensure_request_id(&mut h, &mut a).is_sensitive());
        assert!(ensure_request_id(&mut HeaderMap::new(), &mut Added::default()).is_sensitive());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        let host = HeaderValue::from_static("api.example.com");
        let mut a = Added::new(&h);
        set_forwarded(&mut h, &mut a, "127.0.0.1".parse().unwrap(), false, Some(&host));
        assert!(!a.contains(&X_FORWARDED_FOR), "the client's line is replaced in place");
        a.merge_into(&mut h);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        let mut h = HeaderMap::new();
        let mut a = Added::new(&h);
        set_forwarded(&mut h, &mut a, "::1".parse().unwrap(), true, None);
        assert!(h.is_empty());
        a.merge_into(&mut h);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_for_keeps_every_line() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2")]);
        let mut a = Added::new(&h);
        set_forwarded(&mut h, &mut a, "127.0.0.1".parse().unwrap(), false, None);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
    }

    #[test]
    fn h2_cookie_fields_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
    }

    #[test]
    fn traceparent_continues_with_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = map(&[("traceparent", incoming)]);
        let mut a = Added::new(&h);
        let tid = propagate_traceparent(&mut h, &mut a);
        assert_eq!(&tid, b"4bf92f3577b34da6a3ce929d0e0e4736");
        let out = h["traceparent"].to_str().unwrap();
        assert_eq!(&out[..36], &incoming[..36]);
        assert_ne!(&out[36..52], &incoming[36..52]);
        assert_eq!(&out[52..], "-01");
    }

    #[test]
    fn traceparent_started_when_missing_or_invalid() {
        for bad in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
            let mut h = HeaderMap::new();
            if let Some(b) = bad {
                h.insert(TRACEPARENT.clone(), HeaderValue::from_static(b));
            }
            let mut a = Added::new(&h);
            let tid = propagate_traceparent(&mut h, &mut a);
            let out = a.get(&h, &TRACEPARENT).unwrap().to_str().unwrap().to_string();
            assert!(parse_traceparent(out.as_bytes()).is_some(), "{out}");
            assert_eq!(&out.as_bytes()[3..35], &tid);
        }
    }
}
