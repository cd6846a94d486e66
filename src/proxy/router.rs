//! The route table: longest segment-aware `path_prefix` wins, a route for the
//! request's exact `host` beats routes without one, and at one prefix a route
//! that lists the request's method beats a route without `methods`.
//!
//! Prefixes are stored as a trie of path segments, so matching costs one hash
//! lookup per segment of the request path (not one comparison per route) and
//! allocates nothing. The table is immutable; a config reload builds a new one
//! and swaps it in whole.

use std::collections::HashMap;

use http::Method;
use rustc_hash::FxBuildHasher;

type Map<V> = HashMap<Box<str>, V, FxBuildHasher>;

/// A built route table mapping (host, path, method) to a `T`.
#[derive(Debug)]
pub struct Router<T> {
    by_host: Map<Node<T>>,
    any_host: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    children: Map<Node<T>>,
    /// Routes ending at this prefix: those with `methods` first.
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    methods: Option<Box<[Method]>>,
    value: T,
}

/// A match: the route's value and where its prefix ends in the path.
#[derive(Debug)]
pub struct Match<'a, T> {
    pub value: &'a T,
    /// Byte offset in the request path just after the matched prefix;
    /// `path[prefix_end..]` is what `strip_prefix` leaves.
    pub prefix_end: usize,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { children: Map::default(), entries: Vec::new() }
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router { by_host: Map::default(), any_host: Node::default(), len: 0 }
    }
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a route. `prefix` starts with `/`; `host` is lower case without a
    /// port. Identical routes are refused by config validation; here a later
    /// one with the same key simply sits behind the earlier one.
    pub fn insert(&mut self, host: Option<&str>, prefix: &str, methods: Option<&[Method]>, value: T) {
        let mut node = match host {
            Some(h) => self.by_host.entry(h.to_ascii_lowercase().into_boxed_str()).or_default(),
            None => &mut self.any_host,
        };
        for seg in prefix.split('/').filter(|s| !s.is_empty()) {
            node = node.children.entry(seg.into()).or_default();
        }
        let entry = Entry { methods: methods.map(|m| m.to_vec().into_boxed_slice()), value };
        // Keep routes with a method filter ahead of the catch-all at this prefix.
        let pos = if entry.methods.is_some() {
            node.entries.iter().position(|e| e.methods.is_none()).unwrap_or(node.entries.len())
        } else {
            node.entries.len()
        };
        node.entries.insert(pos, entry);
        self.len += 1;
    }

    /// Finds the route for a request. `host` may carry a port and any case.
    pub fn find<'a>(&'a self, host: Option<&str>, path: &str, method: &Method) -> Option<Match<'a, T>> {
        if !self.by_host.is_empty() {
            if let Some(node) = host.and_then(|h| with_lowercase_host(h, |h| self.by_host.get(h))) {
                if let Some(m) = node.find(path, method) {
                    return Some(m);
                }
            }
        }
        self.any_host.find(path, method)
    }
}

impl<T> Node<T> {
    fn pick(&self, method: &Method) -> Option<&T> {
        self.entries.iter().find(|e| e.methods.as_ref().is_none_or(|ms| ms.contains(method))).map(|e| &e.value)
    }

    fn find<'a>(&'a self, path: &str, method: &Method) -> Option<Match<'a, T>> {
        let mut best = self.pick(method).map(|value| Match { value, prefix_end: 0 });
        let mut node = self;
        let bytes = path.as_bytes();
        let mut pos = 0;
        // Walk "/seg/seg/..." one segment at a time; deeper matches win.
        while pos < bytes.len() && bytes[pos] == b'/' {
            let start = pos + 1;
            let end = bytes[start..].iter().position(|b| *b == b'/').map_or(bytes.len(), |i| start + i);
            let Some(child) = node.children.get(&path[start..end]) else {
                break;
            };
            node = child;
            pos = end;
            if let Some(value) = node.pick(method) {
                best = Some(Match { value, prefix_end: pos });
            }
        }
        best
    }
}

/// Strips the port and a trailing dot, lower-cases without allocating (hosts
/// longer than 255 bytes match nothing), and hands the result to `f`.
fn with_lowercase_host<R>(host: &str, f: impl FnOnce(&str) -> Option<R>) -> Option<R> {
    let h = strip_port(host);
    let h = h.strip_suffix('.').unwrap_or(h);
    if !h.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(h);
    }
    let mut buf = [0u8; 255];
    let dst = buf.get_mut(..h.len())?;
    for (d, s) in dst.iter_mut().zip(h.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    f(std::str::from_utf8(dst).ok()?)
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Router<&'static str> {
        let mut r = Router::new();
        r.insert(None, "/", None, "root");
        r.insert(None, "/api", None, "api");
        r.insert(None, "/api/users", None, "users");
        r.insert(None, "/hosted", None, "nohost");
        r.insert(Some("api.example.com"), "/hosted", None, "host");
        r.insert(None, "/getonly", Some(&[Method::GET]), "getonly");
        r.insert(None, "/mixed", None, "mixed-any");
        r.insert(None, "/mixed", Some(&[Method::POST]), "mixed-post");
        r
    }

    fn find(r: &Router<&'static str>, host: Option<&str>, path: &str, m: Method) -> Option<(&'static str, usize)> {
        r.find(host, path, &m).map(|m| (*m.value, m.prefix_end))
    }

    #[test]
    fn longest_segment_prefix_wins() {
        let r = table();
        assert_eq!(find(&r, None, "/api/users/42", Method::GET), Some(("users", 10)));
        assert_eq!(find(&r, None, "/api/users", Method::GET), Some(("users", 10)));
        assert_eq!(find(&r, None, "/api/usersX/1", Method::GET), Some(("api", 4)));
        assert_eq!(find(&r, None, "/api/", Method::GET), Some(("api", 4)));
        assert_eq!(find(&r, None, "/apix", Method::GET), Some(("root", 0)));
        assert_eq!(find(&r, None, "/", Method::GET), Some(("root", 0)));
    }

    #[test]
    fn no_root_route_means_no_match() {
        let mut r = Router::new();
        r.insert(None, "/api", None, "api");
        assert!(r.find(None, "/apix/1", &Method::GET).is_none());
        assert!(r.find(None, "/", &Method::GET).is_none());
        assert!(r.find(None, "*", &Method::OPTIONS).is_none());
    }

    #[test]
    fn exact_host_beats_no_host_and_ignores_case_and_port() {
        let r = table();
        assert_eq!(find(&r, Some("api.example.com"), "/hosted/x", Method::GET).unwrap().0, "host");
        assert_eq!(find(&r, Some("API.Example.COM:8443"), "/hosted/x", Method::GET).unwrap().0, "host");
        assert_eq!(find(&r, Some("other.example.com"), "/hosted/x", Method::GET).unwrap().0, "nohost");
        // a host with routes still falls back to host-less routes for other paths
        assert_eq!(find(&r, Some("api.example.com"), "/api/users", Method::GET).unwrap().0, "users");
    }

    #[test]
    fn methods_filter() {
        let r = table();
        assert_eq!(find(&r, None, "/getonly/x", Method::GET).unwrap().0, "getonly");
        assert_eq!(find(&r, None, "/getonly/x", Method::POST).unwrap().0, "root");
        assert_eq!(find(&r, None, "/mixed", Method::POST).unwrap().0, "mixed-post");
        assert_eq!(find(&r, None, "/mixed", Method::GET).unwrap().0, "mixed-any");
    }

    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
