//! Logging setup: `tracing` with `RUST_LOG` filtering, pretty or JSON lines.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Keeps the log writer thread alive; dropping it writes what is buffered.
pub struct LogGuard(Option<Arc<Batch>>, Option<std::thread::JoinHandle<()>>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.closing.store(true, Ordering::Release);
            b.kick();
        }
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Past this, the writer thread is woken early.
const FLUSH_AT: usize = 64 * 1024;
/// Past this (stderr not keeping up), new lines are dropped and counted.
const MAX_BUFFER: usize = 8 * 1024 * 1024;

/// Log lines batched in memory, per thread, and written by one thread every
/// [`FLUSH_EVERY`]: a logged request costs an uncontended lock and a copy
/// into its own thread's buffer, not a `write(2)`, a thread wake-up or a
/// lock shared with the other workers per line (an access log at tens of
/// thousands of lines a second would otherwise cost more CPU than the
/// proxying itself). Lines of one thread keep their order; lines of
/// different threads interleave at batch granularity (each has its
/// timestamp).
struct Batch {
    /// Every thread's buffer, registered on its first line.
    locals: Mutex<Vec<Arc<Local>>>,
    /// Set (under its lock) to wake the writer early.
    kick: Mutex<bool>,
    wake: Condvar,
    closing: AtomicBool,
    dropped: AtomicU64,
}

struct Local {
    buf: Mutex<Vec<u8>>,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            locals: Mutex::new(Vec::new()),
            kick: Mutex::new(false),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    /// Runs `f` on this thread's buffer for this batch (registered on first
    /// use) to append one line. A line that would take the buffer past
    /// [`MAX_BUFFER`] (stderr not keeping up) is dropped and counted.
    fn with_buffer(self: &Arc<Batch>, f: impl FnOnce(&mut Vec<u8>)) {
        thread_local! {
            static LOCAL: std::cell::RefCell<Option<(usize, Arc<Local>)>> = const { std::cell::RefCell::new(None) };
        }
        let key = Arc::as_ptr(self) as usize;
        let crossed = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if !matches!(&*l, Some((k, _)) if *k == key) {
                let local = Arc::new(Local { buf: Mutex::new(Vec::with_capacity(FLUSH_AT)) });
                lock(&self.locals).push(local.clone());
                *l = Some((key, local));
            }
            let local = &l.as_ref().expect("registered above").1;
            let mut buf = lock(&local.buf);
            let before = buf.len();
            f(&mut buf);
            if buf.len() > MAX_BUFFER {
                buf.truncate(before);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            before < FLUSH_AT && buf.len() >= FLUSH_AT
        });
        if crossed {
            self.kick();
        }
    }

    fn kick(&self) {
        *lock(&self.kick) = true;
        self.wake.notify_one();
    }

    /// Moves every thread's lines into `out`; forgets threads that are gone
    /// and have nothing left.
    fn collect(&self, out: &mut Vec<u8>) {
        let mut locals = lock(&self.locals);
        locals.retain(|local| {
            let mut buf = lock(&local.buf);
            out.extend_from_slice(&buf);
            buf.clear();
            Arc::strong_count(local) > 1
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `io::Write` handed to the formatter for one line.
struct LineSink(Arc<Batch>);

impl Write for LineSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.with_buffer(|buf| buf.extend_from_slice(data));
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeSink {
    type Writer = LineSink;
    fn make_writer(&'a self) -> LineSink {
        LineSink(self.0.clone())
    }
}

struct MakeSink(Arc<Batch>);

fn spawn_writer(mut stream: Box<dyn Write + Send>) -> (MakeSink, LogGuard) {
    let batch = Batch::new();
    let b = batch.clone();
    let thread = std::thread::Builder::new()
        .name("waygate-log".into())
        .spawn(move || {
            let mut out = Vec::with_capacity(FLUSH_AT * 2);
            loop {
                {
                    let kick = lock(&b.kick);
                    let (mut kick, _) = b
                        .wake
                        .wait_timeout_while(kick, FLUSH_EVERY, |k| !*k && !b.closing.load(Ordering::Acquire))
                        .unwrap_or_else(|e| e.into_inner());
                    *kick = false;
                }
                let closing = b.closing.load(Ordering::Acquire);
                b.collect(&mut out);
                let dropped = b.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    out.extend_from_slice(
                        format!("waygate: {dropped} log line(s) dropped: stderr is not keeping up\n").as_bytes(),
                    );
                }
                if !out.is_empty() {
                    let _ = stream.write_all(&out);
                    let _ = stream.flush();
                    out.clear();
                }
                if closing {
                    return;
                }
            }
        })
        .expect("log writer thread");
    (MakeSink(batch.clone()), LogGuard(Some(batch), Some(thread)))
}

/// Installs the global subscriber. Without `RUST_LOG` the level is `info`
/// (which includes the per-request access log, target `waygate::access`).
/// Without a format: pretty on a terminal, JSON otherwise. Lines are written
/// by a dedicated thread in batches (at most [`FLUSH_EVERY`] late).
pub fn init(format: Option<LogFormat>) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() { LogFormat::Pretty } else { LogFormat::Json });
    let (dispatch, guard) = subscriber(format, filter, Box::new(std::io::stderr()));
    let _ = tracing::dispatcher::set_global_default(dispatch);
    guard
}

/// The subscriber [`init`] installs, writing to `out` (benches use a sink).
pub fn subscriber(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    out: Box<dyn Write + Send>,
) -> (tracing::Dispatch, LogGuard) {
    use tracing_subscriber::layer::SubscriberExt;
    let (writer, guard) = spawn_writer(out);
    let dispatch = match format {
        LogFormat::Pretty => {
            tracing::Dispatch::new(tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).finish())
        }
        LogFormat::Json => {
            let access = AccessJson(writer.0.clone());
            let others = SkipAccess(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            );
            tracing::Dispatch::new(tracing_subscriber::registry().with(filter).with(others).with(access))
        }
    };
    (dispatch, guard)
}

/// The generic JSON layer minus access events (the access layer writes
/// those). A wrapper rather than a per-layer filter on purpose: with a
/// per-layer filter the access callsite's interest becomes "sometimes", and
/// every request then pays `EnvFilter` matching twice and the registry's
/// filter bookkeeping; here every callsite's interest stays cached.
struct SkipAccess<L>(L);

impl<S: tracing::Subscriber, L: tracing_subscriber::Layer<S>> tracing_subscriber::Layer<S> for SkipAccess<L> {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber)
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber)
    }
    fn register_callsite(&self, m: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        self.0.register_callsite(m)
    }
    fn enabled(&self, m: &tracing::Metadata<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) -> bool {
        self.0.enabled(m, ctx)
    }
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, ctx)
    }
    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_record(span, values, ctx)
    }
    fn on_follows_from(
        &self,
        span: &tracing::span::Id,
        follows: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_follows_from(span, follows, ctx)
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            self.0.on_event(event, ctx)
        }
    }
    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_enter(id, ctx)
    }
    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_exit(id, ctx)
    }
    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_close(id, ctx)
    }
    fn on_id_change(
        &self,
        old: &tracing::span::Id,
        new: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_id_change(old, new, ctx)
    }
    fn max_level_hint(&self) -> Option<tracing_subscriber::filter::LevelFilter> {
        self.0.max_level_hint()
    }
}

/// One access-log record: the event emitted once per request.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub service: &'a str,
    pub endpoint: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub body_error: bool,
    pub request_id: &'a str,
    pub trace_id: &'a str,
}

impl Access<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "waygate::access",
            // A plain string field rather than a format string: the
            // formatters treat a field named `message` as the message, and
            // a `&str` skips `core::fmt` on every request.
            message = "request",
            method = self.method,
            path = self.path,
            route = self.route,
            service = self.service,
            endpoint = self.endpoint,
            status = self.status,
            duration_ms = self.duration_ms,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            body_error = self.body_error,
            request_id = self.request_id,
            trace_id = self.trace_id,
        );
    }
}

const ACCESS_TARGET: &str = "waygate::access";

/// Formats access-log events (one per request) as JSON lines by hand: the
/// same shape as the other JSON lines, at a fraction of the generic
/// formatter's cost, since this runs for every request. The line is
/// formatted straight into this thread's batch buffer: no intermediate
/// string, no `core::fmt` for numbers and timestamps.
struct AccessJson(Arc<Batch>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessJson {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            return;
        }
        self.0.with_buffer(|buf| {
            buf.extend_from_slice(b"{\"timestamp\":\"");
            push_timestamp(buf, std::time::SystemTime::now());
            buf.extend_from_slice(b"\",\"level\":\"");
            buf.extend_from_slice(event.metadata().level().as_str().as_bytes());
            buf.push(b'"');
            event.record(&mut JsonFields(buf));
            buf.extend_from_slice(b",\"target\":\"waygate::access\"}\n");
        });
    }
}

/// RFC 3339 UTC with microseconds, like the generic formatter's. The part
/// up to the second is formatted once a second per thread.
fn push_timestamp(buf: &mut Vec<u8>, now: std::time::SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, [u8; 19])> = const { std::cell::RefCell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(whole).to_string(); // "YYYY-MM-DDTHH:MM:SSZ"
            c.1.copy_from_slice(&text.as_bytes()[..19]);
            c.0 = secs;
        }
        buf.extend_from_slice(&c.1);
    });
    buf.push(b'.');
    push_padded(buf, u64::from(since.subsec_micros()), 6);
    buf.push(b'Z');
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_padded(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut f = itoa::Buffer::new();
    let digits = f.format(n).as_bytes();
    buf.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits.len())));
    buf.extend_from_slice(digits);
}

/// Appends `,"name":value` for each field of an event.
struct JsonFields<'a>(&'a mut Vec<u8>);

impl JsonFields<'_> {
    fn key(&mut self, field: &tracing::field::Field) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(field.name().as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn string(&mut self, s: &str) {
        self.0.push(b'"');
        push_escaped(self.0, s.as_bytes());
        self.0.push(b'"');
    }
}

/// Whether any of the 8 bytes of `x` needs a JSON escape: a control
/// character, `"` or `\` (SWAR: eight bytes per test).
fn needs_escape8(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
    below_space || has_zero(x ^ (ONES * u64::from(b'"'))) || has_zero(x ^ (ONES * u64::from(b'\\')))
}

/// Appends `s` as the inside of a JSON string: runs that need no escape
/// (nearly always the whole string) are copied at once.
fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let mut run = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(chunk) = s.get(i..i + 8) {
            if !needs_escape8(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))) {
                i += 8;
                continue;
            }
        }
        let b = s[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&s[run..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(esc);
        }
        i += 1;
        run = i;
    }
    out.extend_from_slice(&s[run..]);
}

/// A `fmt::Write` that escapes what it is given, so `%`/`?` fields are
/// formatted straight into the line.
struct Escaping<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        push_escaped(self.0, s.as_bytes());
        Ok(())
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field);
        self.string(value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.key(field);
        self.0.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.key(field);
        self.0.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// With microsecond precision (durations in ms are the only floats in
    /// an access line), formatted as integers: shortest-float formatting
    /// was a tenth of the line's cost.
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.key(field);
        if !value.is_finite() {
            self.0.extend_from_slice(b"null");
            return;
        }
        if value < 0.0 {
            self.0.push(b'-');
        }
        let thousandths = (value.abs() * 1000.0).round() as u64;
        self.0.extend_from_slice(itoa::Buffer::new().format(thousandths / 1000).as_bytes());
        self.0.push(b'.');
        push_padded(self.0, thousandths % 1000, 3);
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field);
        self.0.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        self.key(field);
        self.0.push(b'"');
        let _ = write!(Escaping(self.0), "{value:?}");
        self.0.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_are_valid_json() {
        let batch = Batch::new();
        use tracing_subscriber::layer::SubscriberExt;
        let sub = tracing_subscriber::registry().with(AccessJson(batch.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                target: "waygate::access",
                method = %http::Method::GET,
                path = "/a\"b\\c\n",
                status = 200u16,
                duration_ms = 1.5,
                body_error = false,
                "request"
            );
            tracing::info!(target: "waygate::other", "not an access line");
        });
        let mut out = Vec::new();
        batch.collect(&mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["message"], "request");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a\"b\\c\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["body_error"], false);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "waygate::access");
    }

    proptest::proptest! {
        #[test]
        fn escaped_strings_read_back_as_themselves(s in "(?s).{0,40}") {
            let mut out = vec![b'"'];
            push_escaped(&mut out, s.as_bytes());
            out.push(b'"');
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn escapes_are_found_at_every_offset() {
        for at in 0..20 {
            for c in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
                let mut s: String = "abcdefghijklmnopqrst".into();
                s.insert(at, c);
                let mut out = vec![b'"'];
                push_escaped(&mut out, s.as_bytes());
                out.push(b'"');
                assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
            }
        }
    }

    #[test]
    fn timestamps_and_durations_are_formatted_like_the_generic_layer() {
        let t = std::time::UNIX_EPOCH + Duration::from_micros(1_764_012_345_000_042);
        let mut buf = Vec::new();
        push_timestamp(&mut buf, t);
        assert_eq!(String::from_utf8(buf).unwrap(), humantime::format_rfc3339_micros(t).to_string());
        let batch = Batch::new();
        use tracing_subscriber::layer::SubscriberExt;
        let sub = tracing_subscriber::registry().with(AccessJson(batch.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "waygate::access", a = 0.0004, b = 12.3456, c = 1000.0, d = f64::NAN, "request");
        });
        let mut out = Vec::new();
        batch.collect(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r#""a":0.000,"b":12.346,"c":1000.000,"d":null"#), "{line}");
    }
}
