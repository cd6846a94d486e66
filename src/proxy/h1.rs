//! HTTP/1.1 towards upstreams, the codec half: writing a request head,
//! parsing a response head and deciding how its body is framed (RFC 9112
//! §6.3), decoding chunked bodies. Pure functions over byte buffers; the
//! client (`client.rs`) owns the sockets.
//!
//! Hand-written rather than hyper's client connection because of where the
//! work runs: hyper runs each upstream connection as a task of its own and
//! hands requests and responses to it over channels, which cost about a
//! third of a proxied request's instructions (two task wake-ups and
//! channel operations per request). Here the request's own task writes the
//! head and parses the answer. Parsing is `httparse`, as in hyper.

use std::mem::MaybeUninit;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// A response head larger than this is refused (Envoy's default limit is
/// 60 KiB, nginx's proxy buffers 4-8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// At most this many header lines in a response head or trailer block (hyper's limit).
const MAX_HEADERS: usize = 100;

/// Response heads with at most this many lines are indexed on the stack.
const SMALL_HEAD: usize = 24;

/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// How a response body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// The upstream's answer was not HTTP/1.1 we can forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub &'static str);

/// Writes `METHOD target HTTP/1.1`, a `Host` line when `host` is given,
/// the headers except the framing ones, and the framing for `framing`.
pub fn encode_request_head<'a>(
    dst: &mut BytesMut,
    method: &Method,
    target: &str,
    host: Option<&[u8]>,
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    framing: RequestFraming,
) {
    dst.reserve(512 + target.len());
    dst.put_slice(method.as_str().as_bytes());
    dst.put_u8(b' ');
    // A target without a path (`?q` from `http://h?q`) still starts with one.
    if target.is_empty() || target.starts_with('?') {
        dst.put_u8(b'/');
    }
    dst.put_slice(target.as_bytes());
    dst.put_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        put_line(dst, HOST.as_str().as_bytes(), host);
    }
    for (name, value) in headers {
        // The framing is the gateway's to write: it follows the body it sends.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        put_line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        RequestFraming::Length(n) => {
            put_line(dst, b"content-length", itoa::Buffer::new().format(n).as_bytes());
        }
        RequestFraming::Chunked => put_line(dst, b"transfer-encoding", b"chunked"),
        // Methods that usually carry a body say that this one has none,
        // as hyper and curl do; others send no framing at all.
        RequestFraming::Empty if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            put_line(dst, b"content-length", b"0");
        }
        RequestFraming::Empty => {}
    }
    dst.put_slice(b"\r\n");
}

// Inlined on purpose: with the trailer paths calling them too, LLVM stopped
// inlining these two into the request's head writing and parsing (+170
// instructions a request, callgrind).
#[inline(always)]
fn put_line(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// Writes the chunk-size line of a chunk of `len` bytes.
pub fn encode_chunk_size(dst: &mut BytesMut, len: usize) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = len;
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&hex[i..]);
    dst.put_slice(b"\r\n");
}

/// Writes the last chunk, the trailers (if any) and the final empty line.
/// Trailer fields that may not be sent as trailers are left out.
pub fn encode_chunked_end(dst: &mut BytesMut, trailers: Option<&HeaderMap>) {
    dst.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten().filter(|(name, _)| allowed_in_trailers(name)) {
        put_line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    dst.put_slice(b"\r\n");
}

/// Whether a trailer field is passed on, either way (RFC 9110 §6.5.1): not
/// one that frames the message, routes it, authenticates it or says how to
/// process its content (the list hyper's encoder filters), not a hop-by-hop
/// field, and not one the gateway sets and so vouches for (X-Forwarded-*,
/// Forwarded, the request id, traceparent): a recipient that merged such a
/// trailer into the head would be misled.
fn allowed_in_trailers(name: &HeaderName) -> bool {
    use super::headers::{TRACEPARENT, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
    use http::header::*;
    field(name.as_str().as_bytes()) == Field::Forwarded
        && !matches!(
            *name,
            AUTHORIZATION
                | PROXY_AUTHORIZATION
                | CACHE_CONTROL
                | CONTENT_ENCODING
                | CONTENT_RANGE
                | CONTENT_TYPE
                | HOST
                | MAX_FORWARDS
                | SET_COOKIE
                | FORWARDED
        )
        && ![&X_FORWARDED_FOR, &X_FORWARDED_HOST, &X_FORWARDED_PROTO, &X_REQUEST_ID, &TRACEPARENT].contains(&name)
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub parts: http::response::Parts,
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// What a response header's name means to the codec. Hop-by-hop fields
/// (RFC 9110 §7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`)
/// are read for framing and connection reuse, never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Forwarded,
    ContentLength,
    TransferEncoding,
    Connection,
    HopByHop,
}

/// A match on the raw name's length, then its text ignoring case: most
/// names are told apart by their length alone.
#[inline(always)]
fn field(name: &[u8]) -> Field {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if is("te") => Field::HopByHop,
        7 if is("trailer") || is("upgrade") => Field::HopByHop,
        10 if is("connection") => Field::Connection,
        10 if is("keep-alive") => Field::HopByHop,
        14 if is("content-length") => Field::ContentLength,
        16 if is("proxy-connection") => Field::HopByHop,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        _ => Field::Forwarded,
    }
}

/// The names most answers carry, spelled as servers usually send them,
/// told apart by length and then compared as bytes: `HeaderName::from_bytes`
/// lowercases a name and looks it up among all standard ones (~115
/// instructions a name, four or five names an answer).
fn common_name(raw: &[u8]) -> Option<HeaderName> {
    use http::header::*;
    let either = |a: &[u8], b: &[u8]| raw == a || raw == b;
    Some(match raw.len() {
        4 if either(b"Date", b"date") => DATE,
        4 if either(b"ETag", b"etag") => ETAG,
        4 if either(b"Vary", b"vary") => VARY,
        6 if either(b"Server", b"server") => SERVER,
        12 if either(b"Content-Type", b"content-type") => CONTENT_TYPE,
        13 if either(b"Cache-Control", b"cache-control") => CACHE_CONTROL,
        13 if either(b"Last-Modified", b"last-modified") => LAST_MODIFIED,
        13 if either(b"Accept-Ranges", b"accept-ranges") => ACCEPT_RANGES,
        14 if either(b"Content-Length", b"content-length") => CONTENT_LENGTH,
        16 if either(b"Content-Encoding", b"content-encoding") => CONTENT_ENCODING,
        _ => return None,
    })
}

/// Where a header line sits in the head, and what it is.
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
    field: Field,
}

const NO_SPAN: Span = Span { name: (0, 0), value: (0, 0), field: Field::Forwarded };

/// What the framing-relevant lines of a head say, read in the same pass
/// that indexes the lines.
#[derive(Debug, Default)]
struct FramingFields {
    transfer_encoding: bool,
    /// The last token of the last Transfer-Encoding line is `chunked`.
    chunked: bool,
    /// The agreed Content-Length, or why the values are unusable.
    length: Option<Result<u64, ProtocolError>>,
    close: bool,
    keep_alive: bool,
    /// Connection lines naming other headers to drop (rare), as value spans.
    naming: Vec<(u32, u32)>,
}

impl FramingFields {
    fn read(&mut self, field: Field, value: &[u8], span: (u32, u32)) {
        match field {
            Field::TransferEncoding => {
                self.transfer_encoding = true;
                let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
                self.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
            Field::ContentLength => {
                // Repeated values (or a list) are fine only when they all agree.
                for part in value.split(|&b| b == b',') {
                    let n = parse_length(trim(part)).ok_or(ProtocolError("invalid content-length"));
                    self.length = Some(match (self.length.take(), n) {
                        (Some(Err(e)), _) | (_, Err(e)) => Err(e),
                        (Some(Ok(l)), Ok(n)) if l != n => Err(ProtocolError("conflicting content-length values")),
                        (_, Ok(n)) => Ok(n),
                    });
                }
            }
            Field::Connection => {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                        self.naming.push(span);
                    }
                }
            }
            Field::Forwarded | Field::HopByHop => {}
        }
    }

    /// Whether a Connection line names the header `name`.
    fn names(&self, head: &[u8], name: &[u8]) -> bool {
        self.naming.iter().any(|&(s, e)| {
            head[s as usize..e as usize].split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(name))
        })
    }
}

/// Parses a final response head from the front of `buf`, consuming it (and
/// any interim 1xx heads before it). `Ok(None)`: not complete yet.
///
/// The head's map holds only what is forwarded to the client: hop-by-hop
/// fields, those a Connection line names, and a Content-Length beside
/// Transfer-Encoding are read for framing and left out, in the one pass
/// that indexes the lines (removing them from a built map hashed each
/// name again), with room for one more entry (the request id).
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, ProtocolError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            // A complete head is held to the same limit as a partial one (a
            // single read can bring more than MAX_HEAD at once).
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(ProtocolError("response head too large"))
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= MAX_HEAD { Err(ProtocolError("response head too large")) } else { Ok(None) };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError("too many response headers")),
            Err(_) => return Err(ProtocolError("malformed response head")),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| ProtocolError("invalid status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ProtocolError("unexpected 101 Switching Protocols"));
            }
            // 100 Continue, 103 Early Hints...: not forwarded, the final answer follows.
            buf.advance(len);
            continue;
        }
        let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        // Offsets first: the header slices borrow `buf`, which is split next.
        // On the stack for common heads; a 100-entry array would be zeroed
        // on every response.
        let base = buf.as_ptr() as usize;
        let count = res.headers.len();
        let mut small = [NO_SPAN; SMALL_HEAD];
        let mut large = Vec::new();
        let spans = if count <= SMALL_HEAD {
            &mut small[..count]
        } else {
            large.resize(count, NO_SPAN);
            &mut large[..]
        };
        let mut fields = FramingFields::default();
        for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
            // Offsets within a head of at most a few hundred KiB: u32 holds them.
            let name = (h.name.as_ptr() as usize - base) as u32;
            let value = (h.value.as_ptr() as usize - base) as u32;
            let value = (value, value + h.value.len() as u32);
            let f = field(h.name.as_bytes());
            fields.read(f, h.value, value);
            *span = Span { name: (name, name + h.name.len() as u32), value, field: f };
        }
        let head = buf.split_to(len).freeze();
        let (framing, mut reusable) = framing(&fields, method, status)?;
        // A length beside Transfer-Encoding is not forwarded (RFC 9112
        // §6.3), unless the answer has no body anyway (HEAD, 204, 304).
        let keep_length = !fields.transfer_encoding || framing == ResponseFraming::Empty;
        // Transfer-Encoding in HTTP/1.0 is not to be trusted for another
        // message on the connection (RFC 9112 §6.1).
        if version == Version::HTTP_10 && fields.transfer_encoding {
            reusable = false;
        }
        let keep_alive = reusable && !fields.close && (version == Version::HTTP_11 || fields.keep_alive);

        let kept = spans.iter().filter(|s| matches!(s.field, Field::Forwarded | Field::ContentLength)).count();
        let mut headers = HeaderMap::with_capacity(kept + 1);
        for s in spans.iter() {
            match s.field {
                Field::Forwarded => {}
                Field::ContentLength if keep_length => {}
                _ => continue,
            }
            let name = &head[s.name.0 as usize..s.name.1 as usize];
            if !fields.naming.is_empty() && fields.names(&head, name) {
                continue;
            }
            let name = match common_name(name) {
                Some(n) => n,
                None => HeaderName::from_bytes(name).map_err(|_| ProtocolError("invalid header name"))?,
            };
            // httparse has checked the value's bytes already; HeaderValue
            // checks them again (no CR, LF or other controls but tab).
            let value = HeaderValue::from_maybe_shared(head.slice(s.value.0 as usize..s.value.1 as usize))
                .map_err(|_| ProtocolError("invalid header value"))?;
            headers.append(name, value);
        }
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        return Ok(Some(ResponseHead { parts, framing, keep_alive }));
    }
}

/// The body's framing, and whether it leaves the connection reusable.
fn framing(
    fields: &FramingFields,
    method: &Method,
    status: StatusCode,
) -> Result<(ResponseFraming, bool), ProtocolError> {
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((ResponseFraming::Empty, true));
    }
    if fields.transfer_encoding {
        // Transfer-Encoding overrides Content-Length; a response with both
        // may be an attempt at smuggling, so the connection is not reused
        // (RFC 9112 §6.3).
        return Ok(if fields.chunked {
            (ResponseFraming::Chunked, fields.length.is_none())
        } else {
            (ResponseFraming::UntilClose, false)
        });
    }
    Ok(match fields.length.clone().transpose()? {
        Some(0) => (ResponseFraming::Empty, true),
        Some(n) => (ResponseFraming::Length(n), true),
        None => (ResponseFraming::UntilClose, false),
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |e| e + 1);
    &b[start..end]
}

/// Decimal digits only, as RFC 9110 §8.6 has it (no sign, no spaces inside).
fn parse_length(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0')))
}

/// What the chunked decoder produced.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body has ended (after its trailers, if any).
    End,
    /// More bytes are needed.
    NeedMore,
}

/// A `Transfer-Encoding: chunked` body decoder (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from the front of `buf`, consuming what it returns. Data
    /// frames are slices of `buf`'s memory, not copies.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(ProtocolError("chunk size line too long"))
                        } else {
                            Ok(Decoded::NeedMore)
                        };
                    };
                    if nl > MAX_CHUNK_LINE {
                        return Err(ProtocolError("chunk size line too long"));
                    }
                    let size = parse_chunk_size(&buf[..nl])?;
                    buf.advance(nl + 1);
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError("missing CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
                        return if buf.len() > MAX_HEAD {
                            Err(ProtocolError("trailers too large"))
                        } else {
                            Ok(Decoded::NeedMore)
                        };
                    };
                    if end + 4 > MAX_HEAD {
                        return Err(ProtocolError("trailers too large"));
                    }
                    let block = buf.split_to(end + 4);
                    self.state = ChunkState::Done;
                    return parse_trailers(&block).map(Decoded::Trailers);
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// `1a;name=value\r` (the LF is cut off): hex digits, optional extensions.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let line = line.strip_suffix(b"\r").ok_or(ProtocolError("chunk size line without CRLF"))?;
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ProtocolError("invalid chunk size"));
    }
    let rest = trim(&line[digits..]);
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ProtocolError("invalid chunk size"));
    }
    // Extensions are ignored, but not control bytes in them (a bare CR
    // could make another parser on the path see a different line).
    if rest.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
        return Err(ProtocolError("invalid chunk extension"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &c| n << 4 | u64::from((c as char).to_digit(16).unwrap_or(0)));
    Ok(size)
}

fn parse_trailers(block: &[u8]) -> Result<HeaderMap, ProtocolError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (_, fields) = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        _ => return Err(ProtocolError("malformed trailers")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for h in fields {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ProtocolError("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| ProtocolError("invalid trailer value"))?;
        // Hop-by-hop fields would also make h2 refuse the trailers frame
        // for an HTTP/2 client.
        if allowed_in_trailers(&name) {
            map.append(name, value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(method: &Method, raw: &str) -> Result<Option<ResponseHead>, ProtocolError> {
        parse_response(&mut BytesMut::from(raw), method)
    }

    #[test]
    fn request_head_writes_host_headers_and_framing_and_drops_the_clients_framing() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let mut dst = BytesMut::new();
        encode_request_head(&mut dst, &Method::POST, "/p?q=1", Some(b"up:8080"), h.iter(), RequestFraming::Length(5));
        assert_eq!(&dst[..], b"POST /p?q=1 HTTP/1.1\r\nhost: up:8080\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n");

        let mut dst = BytesMut::new();
        encode_request_head(&mut dst, &Method::PUT, "/", None, HeaderMap::new().iter(), RequestFraming::Chunked);
        assert_eq!(&dst[..], b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");

        let mut dst = BytesMut::new();
        encode_request_head(&mut dst, &Method::POST, "/", None, HeaderMap::new().iter(), RequestFraming::Empty);
        assert_eq!(&dst[..], b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", "an empty POST says so");
        let mut dst = BytesMut::new();
        encode_request_head(&mut dst, &Method::GET, "/", None, HeaderMap::new().iter(), RequestFraming::Empty);
        assert_eq!(&dst[..], b"GET / HTTP/1.1\r\n\r\n");
        let mut dst = BytesMut::new();
        encode_request_head(&mut dst, &Method::GET, "?x=1", None, HeaderMap::new().iter(), RequestFraming::Empty);
        assert_eq!(&dst[..], b"GET /?x=1 HTTP/1.1\r\n\r\n", "a query without a path gets one");
    }

    #[test]
    fn chunk_encoding_is_lowercase_hex_and_ends_with_trailers() {
        let mut dst = BytesMut::new();
        for n in [1, 15, 16, 255, 4096, 0x1234_5678] {
            encode_chunk_size(&mut dst, n);
        }
        assert_eq!(&dst[..], b"1\r\nf\r\n10\r\nff\r\n1000\r\n12345678\r\n");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let mut dst = BytesMut::new();
        encode_chunked_end(&mut dst, Some(&t));
        assert_eq!(&dst[..], b"0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn framing_routing_and_hop_by_hop_fields_are_not_sent_as_trailers() {
        let mut t = HeaderMap::new();
        for name in [
            "content-length",
            "transfer-encoding",
            "host",
            "authorization",
            "content-type",
            "content-encoding",
            "content-range",
            "cache-control",
            "max-forwards",
            "set-cookie",
            "trailer",
            "te",
            "connection",
            "keep-alive",
            "upgrade",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
            "x-request-id",
            "traceparent",
            "proxy-authorization",
            "grpc-status",
            "x-checksum",
        ] {
            t.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        let mut dst = BytesMut::new();
        encode_chunked_end(&mut dst, Some(&t));
        assert_eq!(&dst[..], b"0\r\ngrpc-status: 1\r\nx-checksum: 1\r\n\r\n");
    }

    #[test]
    fn a_response_head_is_parsed_and_consumed() {
        let mut buf =
            BytesMut::from("HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nX-Two: a\r\nx-two: b\r\n\r\nok\n");
        let h = parse_response(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(h.parts.status, 200);
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.headers["server"], "nginx");
        assert_eq!(h.parts.headers.get_all("x-two").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.framing, ResponseFraming::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"ok\n", "the body stays in the buffer");
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_read_but_not_kept() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
                   Proxy-Connection: x\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\nx-secret: 1\r\n\
                   X-Kept: 2\r\nconnection: Upgrade\r\ncontent-length: 0\r\n\r\n";
        let h = head(&Method::GET, raw).unwrap().unwrap();
        let names: Vec<&str> = h.parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept", "content-length"]);
        assert!(h.keep_alive);

        let h = head(&Method::GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx: 1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.parts.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["x"]);
        // No body anyway: the length is the resource's and is forwarded.
        let h = head(&Method::HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["content-length"]);
    }

    #[test]
    fn common_names_are_the_names_from_bytes_makes() {
        let names =
            "Date date ETag etag Vary vary Server server Content-Type content-type Cache-Control cache-control \
                     Last-Modified last-modified Accept-Ranges accept-ranges Content-Length content-length \
                     Content-Encoding content-encoding";
        for raw in names.split_whitespace() {
            assert_eq!(common_name(raw.as_bytes()), Some(HeaderName::from_bytes(raw.as_bytes()).unwrap()), "{raw}");
        }
        for other in ["DATE", "x-date", "Dat", "Content-Length2", ""] {
            assert_eq!(common_name(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn partial_heads_wait_and_oversized_or_malformed_ones_are_refused() {
        assert!(head(&Method::GET, "HTTP/1.1 200 OK\r\nServer: x\r\n").unwrap().is_none());
        assert!(head(&Method::GET, "").unwrap().is_none());
        let big = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&Method::GET, &big).unwrap_err(), ProtocolError("response head too large"));
        let whole = format!("{big}\r\n");
        assert_eq!(head(&Method::GET, &whole).unwrap_err(), ProtocolError("response head too large"), "complete too");
        let fits = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD - 24));
        assert_eq!(fits.len(), MAX_HEAD);
        assert!(head(&Method::GET, &fits).unwrap().is_some(), "a head of exactly MAX_HEAD is taken");
        assert!(head(&Method::GET, "HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(head(&Method::GET, "SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: v\r\n")).collect();
        assert!(head(&Method::GET, &format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    #[test]
    fn interim_responses_are_skipped_and_101_is_refused() {
        let mut buf =
            BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        let h = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(h.parts.status, 204);
        assert!(!h.parts.headers.contains_key("link"));
        assert!(buf.is_empty());
        let mut only_interim = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\n");
        assert!(parse_response(&mut only_interim, &Method::POST).unwrap().is_none());
        assert!(only_interim.is_empty(), "the interim head is consumed");
        assert!(head(&Method::GET, "HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |m: &Method, raw: &str| {
            let h = head(m, raw).unwrap().unwrap();
            (h.framing, h.keep_alive)
        };
        use ResponseFraming::*;
        assert_eq!(f(&Method::HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"), (Empty, true));
        assert_eq!(f(&Method::GET, "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"), (Empty, true));
        assert_eq!(f(&Method::GET, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), (Empty, true));
        assert_eq!(f(&Method::GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), (Chunked, true));
        assert_eq!(f(&Method::GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"), (Chunked, true));
        assert_eq!(f(&Method::GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), (UntilClose, false));
        assert_eq!(f(&Method::GET, "HTTP/1.1 200 OK\r\n\r\n"), (UntilClose, false));
        assert_eq!(
            f(&Method::GET, "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
            (Length(5), true)
        );
        assert_eq!(
            f(&Method::GET, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"),
            (Length(5), false)
        );
        assert_eq!(f(&Method::GET, "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"), (Length(5), false));
        assert_eq!(
            f(&Method::GET, "HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: Keep-Alive\r\n\r\n"),
            (Length(5), true)
        );
        assert_eq!(
            f(&Method::GET, "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"),
            (Chunked, false)
        );

        // Both: chunked wins, the length is dropped, the connection is not reused.
        let h = head(&Method::GET, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Chunked, false));
        assert!(!h.parts.headers.contains_key(CONTENT_LENGTH));

        for bad in ["5, 6", "-1", "+5", "5 5", "", "0x5", "99999999999999999999"] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(head(&Method::GET, &raw).is_err(), "content-length {bad:?} is refused");
        }
    }

    /// Decodes `wire` fed in pieces of `step` bytes; the data and trailers.
    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, usize), ProtocolError> {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => {
                    assert!(!d.is_empty());
                    data.extend_from_slice(&d)
                }
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, buf.len())),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(ProtocolError("ran out"));
                    }
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\n00B \r\nhello world\r\n0\r\nx-sum: 9\r\nx-b: 2\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let (data, trailers, left) = decode_all(wire, step).unwrap();
            assert_eq!(data, b"hello hello world", "step {step}");
            let t = trailers.expect("trailers");
            assert_eq!((&t["x-sum"], &t["x-b"]), (&HeaderValue::from_static("9"), &HeaderValue::from_static("2")));
            assert!(left <= 4, "nothing after the body is consumed");
        }
        let (data, trailers, _) = decode_all(b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && trailers.is_none());
    }

    #[test]
    fn response_trailers_keep_only_the_fields_allowed_in_trailers() {
        let wire = b"0\r\ngrpc-status: 0\r\nConnection: close\r\ncontent-length: 3\r\nx-request-id: s\r\n\r\n";
        let (_, trailers, _) = decode_all(wire, 64).unwrap();
        let t = trailers.expect("trailers");
        assert_eq!(t.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["grpc-status"]);
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"g\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(decode_all(bad, 64).is_err(), "{:?} is refused", String::from_utf8_lossy(bad));
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE + 1]].concat();
        assert!(decode_all(&long, 8192).is_err());
        // Limits hold when the line or block arrives whole in one read, too.
        let whole = [long.as_slice(), b"\r\nx\r\n0\r\n\r\n"].concat();
        assert_eq!(decode_all(&whole, whole.len()).unwrap_err(), ProtocolError("chunk size line too long"));
        let trailers = format!("0\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(decode_all(trailers.as_bytes(), trailers.len()).unwrap_err(), ProtocolError("trailers too large"));
        let (data, _, _) = decode_all(b"3;name=\"v a\"\t;x\r\nabc\r\n0\r\n\r\n", 64).expect("extensions are ignored");
        assert_eq!(data, b"abc");
    }

    proptest! {
        /// Any data, chunked any way and read in any pieces, decodes to itself.
        #[test]
        fn chunked_round_trip(data in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(1usize..200, 0..8), step in 1usize..50) {
            let mut wire = BytesMut::new();
            let mut rest = &data[..];
            for c in cuts {
                if rest.is_empty() { break; }
                let n = c.min(rest.len());
                encode_chunk_size(&mut wire, n);
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            if !rest.is_empty() {
                encode_chunk_size(&mut wire, rest.len());
                wire.extend_from_slice(rest);
                wire.extend_from_slice(b"\r\n");
            }
            encode_chunked_end(&mut wire, None);
            let (out, trailers, left) = decode_all(&wire, step).unwrap();
            prop_assert_eq!(out, data);
            prop_assert!(trailers.is_none());
            prop_assert_eq!(left, 0);
        }
    }
}
