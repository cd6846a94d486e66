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
            b.wake.notify_one();
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

/// Log lines batched in memory and written by one thread every
/// [`FLUSH_EVERY`]: a logged request costs one short, uncontended lock and a
/// copy, not a `write(2)` or a thread wake-up per line (an access log at
/// tens of thousands of lines a second would otherwise cost more CPU than the
/// proxying itself).
struct Batch {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    closing: AtomicBool,
    dropped: AtomicU64,
}

/// The `io::Write` handed to the formatter for one line.
struct LineSink(Arc<Batch>);

impl Write for LineSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() + data.len() > MAX_BUFFER {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(data.len());
        }
        buf.extend_from_slice(data);
        if buf.len() >= FLUSH_AT {
            self.0.wake.notify_one();
        }
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

fn spawn_writer() -> (MakeSink, LogGuard) {
    let batch = Arc::new(Batch {
        buf: Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
        wake: Condvar::new(),
        closing: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
    });
    let b = batch.clone();
    let thread = std::thread::Builder::new()
        .name("waygate-log".into())
        .spawn(move || {
            let mut out = Vec::with_capacity(FLUSH_AT * 2);
            loop {
                {
                    let guard = b.buf.lock().unwrap_or_else(|e| e.into_inner());
                    let (mut guard, _) = b
                        .wake
                        .wait_timeout_while(guard, FLUSH_EVERY, |buf| {
                            buf.len() < FLUSH_AT && !b.closing.load(Ordering::Acquire)
                        })
                        .unwrap_or_else(|e| e.into_inner());
                    std::mem::swap(&mut *guard, &mut out);
                }
                let dropped = b.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    out.extend_from_slice(
                        format!("waygate: {dropped} log line(s) dropped: stderr is not keeping up\n").as_bytes(),
                    );
                }
                if !out.is_empty() {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&out);
                    let _ = err.flush();
                    out.clear();
                }
                if b.closing.load(Ordering::Acquire) && b.buf.lock().map(|g| g.is_empty()).unwrap_or(true) {
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
    let (writer, guard) = spawn_writer();
    match format {
        LogFormat::Pretty => {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).try_init();
        }
        LogFormat::Json => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            use tracing_subscriber::Layer;
            let access = AccessJson(writer.0.clone());
            let others = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(writer)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() != ACCESS_TARGET));
            let _ = tracing_subscriber::registry().with(filter).with(others).with(access).try_init();
        }
    }
    guard
}

const ACCESS_TARGET: &str = "waygate::access";

/// Formats access-log events (one per request) as JSON lines by hand: the
/// same shape as the other JSON lines, at a fraction of the generic
/// formatter's cost, since this runs for every request.
struct AccessJson(Arc<Batch>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessJson {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            return;
        }
        thread_local! {
            static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            use std::fmt::Write as _;
            let _ = write!(
                line,
                "{{\"timestamp\":\"{}\",\"level\":\"{}\"",
                humantime::format_rfc3339_micros(std::time::SystemTime::now()),
                event.metadata().level()
            );
            event.record(&mut JsonFields(&mut line));
            line.push_str(",\"target\":\"waygate::access\"}\n");
            let _ = LineSink(self.0.clone()).write_all(line.as_bytes());
        });
    }
}

/// Appends `,"name":value` for each field of an event.
struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    fn key(&mut self, field: &tracing::field::Field) {
        self.0.push_str(",\"");
        self.0.push_str(field.name());
        self.0.push_str("\":");
    }

    fn string(&mut self, s: &str) {
        self.0.push('"');
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    use std::fmt::Write as _;
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field);
        self.string(value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        use std::fmt::Write as _;
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        use std::fmt::Write as _;
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        use std::fmt::Write as _;
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.0, "{value}");
        } else {
            self.0.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.string(&format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_are_valid_json() {
        let batch = Arc::new(Batch {
            buf: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
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
        let text = String::from_utf8(batch.buf.lock().unwrap().clone()).unwrap();
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
}
