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
    /// Tells batches apart in the per-thread cache (an address could be
    /// reused by a later batch).
    id: u64,
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
        static IDS: AtomicU64 = AtomicU64::new(0);
        Arc::new(Batch {
            id: IDS.fetch_add(1, Ordering::Relaxed),
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
            static LOCAL: std::cell::RefCell<Option<(u64, Arc<Local>)>> = const { std::cell::RefCell::new(None) };
        }
        let key = self.id;
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

/// The generic JSON layer minus the access events [`Access::emit`] rendered
/// (the access layer writes those). A wrapper rather than a per-layer filter on purpose: with a
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
        // Access lines rendered by `Access::emit` are the access layer's.
        if event.metadata().target() != ACCESS_TARGET || !rendered() {
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

thread_local! {
    /// The JSON line of the access event being dispatched on this thread,
    /// rendered by [`Access::emit`] for the [`AccessJson`] layer; empty
    /// outside a dispatch.
    static RENDERED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether this thread is dispatching an access event whose JSON line
/// [`Access::emit`] rendered.
fn rendered() -> bool {
    RENDERED.with_borrow(|r| !r.is_empty())
}

impl Access<'_> {
    /// Emits the access event. When the current subscriber has the JSON
    /// access layer, the record is first rendered as that layer's line,
    /// from its typed fields: the layer then copies the line instead of
    /// rebuilding it through `tracing`'s field visitor (a dynamic call and
    /// a key lookup per field: ~0.38 -> ~0.15 µs per request, measured).
    /// Every subscriber still sees one event with every field, and the
    /// filter still decides whether it is written.
    pub fn emit(&self) {
        let render = tracing::dispatcher::get_default(|d| d.downcast_ref::<AccessJson>().is_some());
        /// Empties the rendered line after the dispatch, also on unwind:
        /// a line left behind would stand in for a later access event.
        struct Clear;
        impl Drop for Clear {
            fn drop(&mut self) {
                RENDERED.with_borrow_mut(Vec::clear);
            }
        }
        let _clear = render.then(|| {
            RENDERED.with_borrow_mut(|line| {
                line.clear();
                self.render_json(line, std::time::SystemTime::now());
            });
            Clear
        });
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

    /// The record as one JSON line, in the shape of the generic JSON
    /// layer's lines (same keys, in the event's field order), with numbers
    /// and the timestamp formatted without `core::fmt`. Two differences:
    /// `duration_ms` is rounded to the microsecond, and there is no
    /// `spans` list (requests are not served inside `tracing` spans).
    fn render_json(&self, buf: &mut Vec<u8>, now: std::time::SystemTime) {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(buf, now);
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        push_str_field(buf, b",\"method\":", self.method);
        push_str_field(buf, b",\"path\":", self.path);
        push_str_field(buf, b",\"route\":", self.route);
        push_str_field(buf, b",\"service\":", self.service);
        push_str_field(buf, b",\"endpoint\":", self.endpoint);
        buf.extend_from_slice(b",\"status\":");
        buf.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        buf.extend_from_slice(b",\"duration_ms\":");
        push_millis(buf, self.duration_ms);
        buf.extend_from_slice(b",\"bytes_in\":");
        buf.extend_from_slice(itoa::Buffer::new().format(self.bytes_in).as_bytes());
        buf.extend_from_slice(b",\"bytes_out\":");
        buf.extend_from_slice(itoa::Buffer::new().format(self.bytes_out).as_bytes());
        buf.extend_from_slice(if self.body_error { b",\"body_error\":true" } else { b",\"body_error\":false" });
        push_str_field(buf, b",\"request_id\":", self.request_id);
        push_str_field(buf, b",\"trace_id\":", self.trace_id);
        buf.extend_from_slice(b",\"target\":\"waygate::access\"}\n");
    }
}

const ACCESS_TARGET: &str = "waygate::access";

/// Writes the access lines [`Access::emit`] rendered into this thread's
/// batch buffer: the same shape as the other JSON lines, at a fraction of
/// the generic formatter's cost, since this runs for every request. An
/// access event emitted any other way is left to the generic layer.
struct AccessJson(Arc<Batch>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessJson {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            return;
        }
        RENDERED.with_borrow(|line| {
            if !line.is_empty() {
                self.0.with_buffer(|buf| buf.extend_from_slice(line));
            }
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

/// Milliseconds with microsecond precision, formatted as integers:
/// shortest-float formatting was a tenth of the line's cost.
fn push_millis(buf: &mut Vec<u8>, ms: f64) {
    if !ms.is_finite() {
        buf.extend_from_slice(b"null");
        return;
    }
    if ms < 0.0 {
        buf.push(b'-');
    }
    let thousandths = (ms.abs() * 1000.0).round() as u64;
    buf.extend_from_slice(itoa::Buffer::new().format(thousandths / 1000).as_bytes());
    buf.push(b'.');
    push_padded(buf, thousandths % 1000, 3);
}

/// Appends `key` (`,"name":`) and `value` as a JSON string.
fn push_str_field(buf: &mut Vec<u8>, key: &[u8], value: &str) {
    buf.extend_from_slice(key);
    buf.push(b'"');
    push_escaped(buf, value.as_bytes());
    buf.push(b'"');
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> Access<'_> {
        Access {
            method: "GET",
            path,
            route: "/api",
            service: "users",
            endpoint: "127.0.0.1:3001",
            status: 200,
            duration_ms: 1.5,
            bytes_in: 7,
            bytes_out: 1832,
            body_error: false,
            request_id: "c2298a57164d14e89905a63e455948df",
            trace_id: "4dafcfca602716dd8ff9d42f8442a1ed",
        }
    }

    /// A writer the tests can read back after the log guard is dropped.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` under the gateway's JSON subscriber with `filter` and
    /// returns the lines written.
    fn gateway_json_lines(filter: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Shared::default();
        let (dispatch, guard) =
            subscriber(LogFormat::Json, tracing_subscriber::EnvFilter::new(filter), Box::new(out.clone()));
        raw_lines_of(dispatch, guard, out, f).1
    }

    /// The text written and its lines parsed.
    fn raw_lines_of(
        dispatch: tracing::Dispatch,
        guard: LogGuard,
        out: Shared,
        f: impl FnOnce(),
    ) -> (String, Vec<serde_json::Value>) {
        tracing::dispatcher::with_default(&dispatch, f);
        drop(guard);
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
        let lines = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        (text, lines)
    }

    /// The object keys of a one-line JSON text, in the order written
    /// (serde_json's maps are sorted).
    fn keys_in_order(text: &str) -> Vec<&str> {
        text.split("\":")
            .filter_map(|before| before.rsplit_once(['{', ',']).map(|(_, k)| k.trim_start_matches('"')))
            .collect()
    }

    #[test]
    fn the_json_subscriber_writes_each_access_event_once_with_every_field() {
        let lines = gateway_json_lines("info", || {
            record("/a\"b\\c\n").emit();
            // An access event not emitted through `Access` goes to the generic layer.
            tracing::info!(target: "waygate::access", status = 404u16, "by hand");
            tracing::info!(target: "waygate::other", "not an access line");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let v = &lines[0];
        assert_eq!(v["message"], "request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "waygate::access");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a\"b\\c\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["bytes_in"], 7);
        assert_eq!(v["bytes_out"], 1832);
        assert_eq!(v["body_error"], false);
        assert_eq!(v["trace_id"], "4dafcfca602716dd8ff9d42f8442a1ed");
        assert_eq!((lines[1]["message"].as_str(), lines[1]["status"].as_u64()), (Some("by hand"), Some(404)));
        assert_eq!(lines[2]["target"], "waygate::other");
    }

    /// The rendered line is the generic JSON layer's line for the same
    /// event: same keys in the same order, same values (the timestamp
    /// aside), so a log reader cannot tell the two paths apart.
    #[test]
    fn rendered_lines_match_the_generic_json_layer() {
        use tracing_subscriber::layer::SubscriberExt;
        let out = Shared::default();
        let (dispatch, guard) =
            subscriber(LogFormat::Json, tracing_subscriber::EnvFilter::new("info"), Box::new(out.clone()));
        let ours = raw_lines_of(dispatch, guard, out, || record("/x").emit());
        let out = Shared::default();
        let (writer, guard) = spawn_writer(Box::new(out.clone()));
        let generic = tracing::Dispatch::new(tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(false).with_writer(writer),
        ));
        let theirs = raw_lines_of(generic, guard, out, || record("/x").emit());
        assert_eq!(keys_in_order(&ours.0), keys_in_order(&theirs.0));
        let (mut ours, mut theirs) = (ours.1[0].as_object().unwrap().clone(), theirs.1[0].as_object().unwrap().clone());
        ours.remove("timestamp").unwrap();
        theirs.remove("timestamp").unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn an_access_event_turned_away_by_the_filter_is_not_written() {
        let lines = gateway_json_lines("warn", || {
            record("/x").emit();
            tracing::warn!(target: "waygate::other", "kept");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message"], "kept");
        assert!(!rendered());
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
        let mut buf = Vec::new();
        for ms in [0.0004, 12.3456, 1000.0, -2.5, f64::NAN] {
            push_millis(&mut buf, ms);
            buf.push(b' ');
        }
        assert_eq!(String::from_utf8(buf).unwrap(), "0.000 12.346 1000.000 -2.500 null ");
    }
}
