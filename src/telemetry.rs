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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    guard
}
