//! `ferrocast`: the live-streaming media server binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ferrocast::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// One binary that takes live streams in and serves them out in every common protocol.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; every key is optional.
    #[arg(long, env = "FERROCAST_CONFIG")]
    config: Option<PathBuf>,
    /// RTMP listen address (default 0.0.0.0:1935).
    #[arg(long, env = "FERROCAST_RTMP_ADDR")]
    rtmp_addr: Option<SocketAddr>,
    /// RTSP listen address (default 0.0.0.0:8554).
    #[arg(long, env = "FERROCAST_RTSP_ADDR")]
    rtsp_addr: Option<SocketAddr>,
    /// HTTP listen address for HTTP-FLV (default 0.0.0.0:8080).
    #[arg(long, env = "FERROCAST_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, env = "FERROCAST_LOG_LEVEL")]
    log_level: Option<String>,
    /// Print the built-in default configuration as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", toml::to_string_pretty(&Config::default())?);
        return Ok(());
    }
    let mut config = match &args.config {
        // The error names the file, line and key.
        Some(path) => ferrocast::config_file::load(path)?.0,
        None => Config::default(),
    };
    if let Some(a) = args.rtmp_addr {
        config.rtmp.listen = a;
    }
    if let Some(a) = args.rtsp_addr {
        config.rtsp.listen = a;
    }
    if let Some(a) = args.http_addr {
        config.http.listen = a;
    }
    if let Some(l) = args.log_level {
        config.log_level = l;
    }
    let filter = EnvFilter::try_new(&config.log_level).with_context(|| format!("log level {:?}", config.log_level))?;
    match config.log_format {
        // One JSON object per line, the event's fields (session, path, peer, bytes...) as keys.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
        }
    }
    // Every viewer is a socket: the usual soft limit of 1024 open files would cap a server at
    // about a thousand viewers. Raise it to the hard limit, as nginx's worker_rlimit_nofile does.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!("open-file limit {n}"),
        Err(e) => tracing::warn!("could not raise the open-file limit: {e}"),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // Handlers are installed before the listeners are announced: a SIGTERM right after
        // the "listening" lines must shut down, not kill.
        let shutdown = shutdown_signal()?;
        ferrocast::run_with_file(config, args.config.clone(), shutdown, |bound| {
            // One machine-readable line per listener on stdout, for scripts and tests.
            println!("ferrocast: rtmp listening on {}", bound.rtmp);
            println!("ferrocast: http listening on {}", bound.http);
            println!("ferrocast: rtsp listening on {}", bound.rtsp);
        })
        .await
    })?;
    // Readers' and publishers' tasks are dropped with the runtime; their sockets close.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// A future that completes on SIGTERM or SIGINT (Ctrl-C); the handlers exist once this
/// returns.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
