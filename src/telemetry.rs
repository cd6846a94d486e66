//! Logging setup: `tracing` with `RUST_LOG` filtering, pretty or JSON lines.

use std::io::IsTerminal;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Keeps the log writer thread alive; dropping it flushes what is queued.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber. Without `RUST_LOG` the level is `info`
/// (which includes the per-request access log, target `waygate::access`).
/// Without a format: pretty on a terminal, JSON otherwise.
///
/// Lines are formatted on the worker that logs them but written to stderr by
/// a dedicated thread, so a request never waits on a `write(2)` or on the
/// stderr lock. If that thread falls more than 128k lines behind, lines are
/// dropped rather than slowing requests (the writer reports how many).
pub fn init(format: Option<LogFormat>) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() { LogFormat::Pretty } else { LogFormat::Json });
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    guard
}
