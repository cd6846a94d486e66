//! The `waygate` command: `run` (default), `check`, `demo`. Thin on purpose:
//! parse arguments, load the config, start the library's `Gateway`, wait for
//! a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waygate::telemetry::{self, LogFormat};
use waygate::{reload, Config, Gateway};

#[derive(Parser)]
#[command(name = "waygate", version, about = "An API gateway and reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file [default: $WAYGATE_CONFIG or config/gateway.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log line format [default: pretty on a terminal, json otherwise]
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the config file (the default command)
    Run,
    /// Validate the config file and print a summary, or every error found
    Check,
    /// Serve the demo: the gateway plus in-process demo services
    Demo,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("WAYGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/gateway.toml"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Check => check(&config_path(&cli)),
        Command::Run => {
            let _log = telemetry::init(cli.log_format);
            let path = config_path(&cli);
            match Config::load(&path) {
                Ok(config) => serve(config, Some(path)),
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("waygate: {} error(s) in {}; not starting", errors.0.len(), path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo => {
            let _log = telemetry::init(cli.log_format);
            // The demo services share this runtime with the gateway's control
            // tasks; the proxy workers have their own threads.
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(waygate::demo::run())
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            print!("{}: OK\n{}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            println!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// The control runtime (admin listener, registry, health checks, reload,
/// OTLP) on the main thread; the proxy workers run their own (see
/// `waygate::worker`).
fn control_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn serve(config: Config, path: Option<PathBuf>) -> ExitCode {
    control_runtime().block_on(async move {
        // Handlers first: a signal that arrives while starting must drain,
        // not kill (SIGHUP's default action would end the process too).
        let stop = match StopSignals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("waygate: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let reloader = path.map(|p| reload::spawn(p, gateway.proxy().clone()));
        stop.wait().await;
        if let Some(r) = reloader {
            r.abort();
        }
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    _hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            // Reload listens for SIGHUP itself; this keeps the default action
            // (terminate) away until it does.
            _hup: signal(SignalKind::hangup())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
