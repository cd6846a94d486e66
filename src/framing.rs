//! A request-framing watcher for HTTP/1 client connections, so a request
//! carrying both `Content-Length` and `Transfer-Encoding` is refused with 400
//! (RFC 9112 §6.1 allows it; nginx and Envoy do it). hyper itself removes the
//! `Content-Length` of such a request before the gateway sees the head, so
//! the check has to look at the bytes.
//!
//! The watcher follows the framing of the byte stream as it is read: a head up
//! to its blank line, then a body by `Content-Length` or by chunks, then the
//! next head. It never buffers a body and stops watching (passes everything
//! through) on anything it does not need to understand: an `Upgrade`/CONNECT
//! request (the connection may become a tunnel), a head larger than the
//! limit (hyper answers 431), or a framing error (hyper answers 400).
//! When a head has both headers, the head's final line feed is replaced in
//! the read buffer before hyper parses it, so hyper rejects the request as
//! malformed (400) and closes the connection: the request never reaches an
//! upstream.

/// What the watcher is in the middle of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a request head (collected in `Framing::head`).
    Head,
    /// `n` body bytes left.
    Fixed(u64),
    /// In a chunk-size line (hex digits, then optional extensions).
    ChunkSize { size: u64, digits: bool, ext: bool },
    /// Expecting the LF after a chunk-size line's CR.
    ChunkSizeLf { size: u64 },
    /// `n` chunk bytes left, then CRLF.
    ChunkData(u64),
    /// The CR (then LF) after chunk data; `cr` when the CR was seen.
    ChunkDataEnd { cr: bool },
    /// Trailer section after the last chunk; `line_len` of the current line.
    Trailers { line_len: usize, cr: bool },
    /// Not watching any more.
    Passthrough,
}

/// Watches one connection's request stream.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    max_head: usize,
}

/// Verdict for a chunk of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The head ending at this index (in the chunk just fed) has both
    /// `Content-Length` and `Transfer-Encoding`: refuse it.
    Smuggling {
        head_end: usize,
    },
}

impl Framing {
    pub fn new(max_head: usize) -> Self {
        Framing { state: State::Head, head: Vec::with_capacity(256), max_head }
    }

    pub fn passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// Follows `data`, the next bytes read from the client.
    pub fn feed(&mut self, data: &[u8]) -> Verdict {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Passthrough => return Verdict::Ok,
                State::Head => {
                    let rest = &data[i..];
                    let Some(end) = head_end(&self.head, rest) else {
                        // The head goes on in a later read: keep what there is.
                        self.head.extend_from_slice(rest);
                        if self.head.len() > self.max_head {
                            self.state = State::Passthrough;
                        }
                        return Verdict::Ok;
                    };
                    i += end;
                    if self.head.len() + end > self.max_head {
                        self.state = State::Passthrough;
                        return Verdict::Ok;
                    }
                    // The usual case, a head within one read, is looked at
                    // where it lies; only a head split across reads is copied.
                    let verdict = if self.head.is_empty() {
                        analyze(&rest[..end])
                    } else {
                        self.head.extend_from_slice(&rest[..end]);
                        let v = analyze(&self.head);
                        self.head.clear();
                        v
                    };
                    match verdict {
                        Head::Smuggling => {
                            self.state = State::Passthrough;
                            return Verdict::Smuggling { head_end: i };
                        }
                        Head::Tunnel | Head::Unknown => self.state = State::Passthrough,
                        Head::Chunked => self.state = State::ChunkSize { size: 0, digits: false, ext: false },
                        Head::Length(0) | Head::NoBody | Head::StrayCrlf => self.state = State::Head,
                        Head::Length(n) => self.state = State::Fixed(n),
                    }
                }
                State::Fixed(n) => {
                    let take = (n as usize).min(data.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 { State::Head } else { State::Fixed(left) };
                }
                State::ChunkSize { size, digits, ext } => {
                    let b = data[i];
                    i += 1;
                    self.state = match b {
                        b'\r' if digits => State::ChunkSizeLf { size },
                        _ if ext => State::ChunkSize { size, digits, ext },
                        b';' | b' ' | b'\t' if digits => State::ChunkSize { size, digits, ext: true },
                        _ => match (b as char).to_digit(16) {
                            Some(d) if size < (1 << 56) => {
                                State::ChunkSize { size: size * 16 + u64::from(d), digits: true, ext }
                            }
                            _ => State::Passthrough,
                        },
                    };
                }
                State::ChunkSizeLf { size } => {
                    let b = data[i];
                    i += 1;
                    self.state = match (b, size) {
                        (b'\n', 0) => State::Trailers { line_len: 0, cr: false },
                        (b'\n', n) => State::ChunkData(n),
                        _ => State::Passthrough,
                    };
                }
                State::ChunkData(n) => {
                    let take = (n as usize).min(data.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 { State::ChunkDataEnd { cr: false } } else { State::ChunkData(left) };
                }
                State::ChunkDataEnd { cr } => {
                    let b = data[i];
                    i += 1;
                    self.state = match (cr, b) {
                        (false, b'\r') => State::ChunkDataEnd { cr: true },
                        (true, b'\n') => State::ChunkSize { size: 0, digits: false, ext: false },
                        _ => State::Passthrough,
                    };
                }
                State::Trailers { line_len, cr } => {
                    let b = data[i];
                    i += 1;
                    self.state = match (cr, b) {
                        (false, b'\r') => State::Trailers { line_len, cr: true },
                        (true, b'\n') if line_len == 0 => State::Head,
                        (true, b'\n') => State::Trailers { line_len: 0, cr: false },
                        (true, _) => State::Passthrough,
                        (false, _) if line_len > self.max_head => State::Passthrough,
                        (false, _) => State::Trailers { line_len: line_len + 1, cr: false },
                    };
                }
            }
        }
        Verdict::Ok
    }
}

#[derive(Debug, PartialEq)]
enum Head {
    NoBody,
    Length(u64),
    Chunked,
    Smuggling,
    /// Upgrade or CONNECT: the connection may stop being HTTP.
    Tunnel,
    /// Something hyper will refuse or that the watcher need not follow.
    Unknown,
    /// A bare CRLF before a request.
    StrayCrlf,
}

static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// Where the head that `seen` began ends in `rest`: the index just past its
/// blank line ("\r\n\r\n"), or past a stray CRLF sent between requests.
fn head_end(seen: &[u8], rest: &[u8]) -> Option<usize> {
    if seen.is_empty() {
        // The usual case, a head that starts in this read: one SIMD search
        // for the blank line rather than a search per line.
        if rest.starts_with(b"\r\n") {
            return Some(2);
        }
        return BLANK_LINE.find(rest).map(|p| p + 4);
    }
    let at = |k: usize| if k < seen.len() { seen[k] } else { rest[k - seen.len()] };
    let mut from = 0;
    while let Some(off) = memchr::memchr(b'\n', &rest[from..]) {
        let p = from + off;
        let e = seen.len() + p; // the LF's index in the whole head
        let blank_line = e >= 3 && at(e - 1) == b'\r' && at(e - 2) == b'\n' && at(e - 3) == b'\r';
        if blank_line || (e == 1 && at(0) == b'\r') {
            return Some(p + 1);
        }
        from = p + 1;
    }
    None
}

fn analyze(head: &[u8]) -> Head {
    if head == b"\r\n" {
        // A stray CRLF between requests (allowed by RFC 9112 §2.2).
        return Head::StrayCrlf;
    }
    if head.starts_with(b"CONNECT ") {
        return Head::Tunnel;
    }
    classify(header_lines(head))
}

/// The lines after the request line, without their line ends, found with
/// memchr rather than byte by byte: this runs for every HTTP/1 request head.
fn header_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = memchr::memchr(b'\n', head).map_or(head.len(), |n| n + 1);
    std::iter::from_fn(move || {
        if at >= head.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &head[at..]).map_or(head.len(), |n| at + n);
        let line = &head[at..end];
        at = end + 1;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// What a request's header lines say about its body.
fn classify<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Head {
    let (mut length, mut te, mut chunked, mut upgrade) = (None, false, false, false);
    for line in lines {
        let Some(colon) = memchr::memchr(b':', line) else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) => length = Some(n),
                None => return Head::Unknown,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            chunked = value.len() >= 7 && value[value.len() - 7..].eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    match (length, te) {
        (Some(_), true) => Head::Smuggling,
        _ if upgrade => Head::Tunnel,
        (None, true) if chunked => Head::Chunked,
        (None, true) => Head::Unknown,
        (Some(n), false) => Head::Length(n),
        (None, false) => Head::NoBody,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(f: &mut Framing, data: &[u8], step: usize) -> Vec<Verdict> {
        data.chunks(step).map(|c| f.feed(c)).filter(|v| *v != Verdict::Ok).collect()
    }

    const SMUGGLE: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n";

    /// The plain line-by-line split `header_lines` must agree with.
    fn lines_reference(head: &[u8]) -> Vec<&[u8]> {
        head.split(|b| *b == b'\n').skip(1).map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect()
    }

    /// Where a head ends, by the definition: just past the first blank
    /// line, or past a CRLF that opens the data.
    fn head_end_reference(data: &[u8]) -> Option<usize> {
        if data.starts_with(b"\r\n") {
            return Some(2);
        }
        (4..=data.len()).find(|&i| &data[i - 4..i] == b"\r\n\r\n")
    }

    proptest::proptest! {
        #[test]
        fn head_end_agrees_with_its_definition_in_one_read_or_two(
            data in proptest::collection::vec(proptest::sample::select(b"a\r\n".to_vec()), 0..40),
            cut in 0usize..40,
        ) {
            let expected = head_end_reference(&data);
            proptest::prop_assert_eq!(head_end(&[], &data), expected);
            // Split across two reads: the first part is what was seen
            // (only kept when it held no end), the index is in the second.
            let cut = cut.min(data.len());
            if head_end_reference(&data[..cut]).is_none() && cut > 0 {
                proptest::prop_assert_eq!(head_end(&data[..cut], &data[cut..]), expected.map(|e| e - cut));
            }
        }

        #[test]
        fn header_lines_agree_with_a_plain_split_on_any_bytes(
            head in proptest::collection::vec(proptest::sample::select(b"ab:\r\n ".to_vec()), 0..64),
        ) {
            let found: Vec<&[u8]> = header_lines(&head).filter(|l| !l.is_empty()).collect();
            let expected: Vec<&[u8]> = lines_reference(&head).into_iter().filter(|l| !l.is_empty()).collect();
            proptest::prop_assert_eq!(found, expected);
        }

        #[test]
        fn header_lines_agree_with_a_plain_split(
            method in "(GET|POST|CONNECT) ",
            headers in proptest::collection::vec(
                ("(?i)(content-length|transfer-encoding|upgrade|host|x-a)", "[ :]{0,2}", "( ?[0-9]{1,3}| chunked|chunked, gzip| websocket|:x)", "\r?\n"),
                0..6,
            ),
            end in "(\r?\n)?",
        ) {
            let mut head = format!("{method}/ HTTP/1.1\r\n").into_bytes();
            for (name, sep, value, eol) in &headers {
                head.extend_from_slice(format!("{name}{sep}{value}{eol}").as_bytes());
            }
            head.extend_from_slice(end.as_bytes());
            // Empty lines carry no header (the split also yields one after
            // the last line end, which the memchr walk stops at).
            let found: Vec<&[u8]> = header_lines(&head).filter(|l| !l.is_empty()).collect();
            let expected: Vec<&[u8]> = lines_reference(&head).into_iter().filter(|l| !l.is_empty()).collect();
            proptest::prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn both_headers_are_caught_at_the_end_of_the_head() {
        let head_len = SMUGGLE.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut f = Framing::new(65536);
        assert_eq!(f.feed(SMUGGLE), Verdict::Smuggling { head_end: head_len });
        for step in [1, 3, 7] {
            let mut f = Framing::new(65536);
            assert_eq!(feed_all(&mut f, SMUGGLE, step).len(), 1, "step {step}");
        }
    }

    #[test]
    fn ordinary_pipelines_pass() {
        let stream = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nworld\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: a\r\nX-Note: content-length: 5 transfer-encoding: chunked\r\n\r\n";
        for step in [1, 2, 5, 64, stream.len()] {
            let mut f = Framing::new(65536);
            assert!(feed_all(&mut f, stream, step).is_empty(), "step {step}");
            assert!(!f.passthrough(), "still following after step {step}");
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_skipped() {
        let body = b"X\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        stream.extend_from_slice(body);
        let mut f = Framing::new(65536);
        assert_eq!(f.feed(&stream), Verdict::Ok);
    }

    #[test]
    fn upgrades_and_oversized_heads_stop_the_watch() {
        let mut f = Framing::new(65536);
        f.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert!(f.passthrough());
        assert_eq!(f.feed(SMUGGLE), Verdict::Ok, "tunnel bytes are never judged");
        let mut f = Framing::new(64);
        f.feed(&[b'a'; 100]);
        assert!(f.passthrough());
    }

    #[test]
    fn heads_split_anywhere_and_stray_crlfs_are_followed() {
        // A stray CRLF (itself split), then a smuggling head split at every
        // position: it is caught once, at the same place in the stream.
        let mut stream = b"\r\n".to_vec();
        stream.extend_from_slice(SMUGGLE);
        let head_end = 2 + SMUGGLE.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for cut in 1..head_end {
            let mut f = Framing::new(65536);
            let first = f.feed(&stream[..cut]);
            let second = f.feed(&stream[cut..]);
            assert_eq!(first, Verdict::Ok, "cut {cut}");
            assert_eq!(second, Verdict::Smuggling { head_end: head_end - cut }, "cut {cut}");
        }
    }
}
