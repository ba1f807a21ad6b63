//! The ferrocast server: configuration, the stream hub, and the listeners that compose the
//! protocol crates into one media server.

pub mod api;
pub mod api_config;
pub mod auth;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod console;
pub mod edge;
pub mod event;
pub mod fanout;
pub mod hls;
pub mod hls_http;
pub mod hooks;
pub mod http;
pub mod http_client;
pub mod http_flv;
pub mod http_sessions;
pub mod hub;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod paths;
pub mod push;
pub mod rate;
pub mod reader;
pub mod record;
pub mod relay;
pub mod reload;
pub mod rtmp_server;
pub mod rtsp;
pub mod session;
pub mod sockio;
pub mod source;
pub mod timeline;
pub mod utc;
pub mod vod;

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;

/// The addresses the listeners are bound to (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// RTMP.
    pub rtmp: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
    /// RTSP.
    pub rtsp: SocketAddr,
}

/// Binds every listener and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    run_with_file(config, None, shutdown, on_bound).await
}

/// [`run`] for a configuration read from `file`: SIGHUP re-reads it and `PATCH
/// /api/v1/config/paths/...` writes to it ([`reload`]).
pub async fn run_with_file(
    config: Config,
    file: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    // Before anything is announced: SIGHUP's default action ends the process.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP handler")?;
    let hub = hub::Hub::with_limits(config.hub.clone(), &config.limits);
    hub.auth.replace(config.auth.clone())?;
    // Hooks follow sessions from before the first connection is accepted.
    let hooks = hooks::Hooks::new(config.hooks.clone())?;
    hooks.follow(&hub.sessions, None);
    let limiter = limits::Limiter::new(config.limits.clone());
    let rtmp = TcpListener::bind(config.rtmp.listen)
        .await
        .with_context(|| format!("binding RTMP to {}", config.rtmp.listen))?;
    let http = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP to {}", config.http.listen))?;
    let rtsp_listener = rtsp::Listeners::bind(&config.rtsp).await?;
    let bound = Bound { rtmp: rtmp.local_addr()?, http: http.local_addr()?, rtsp: rtsp_listener.tcp.local_addr()? };
    info!(rtmp = %bound.rtmp, http = %bound.http, rtsp = %bound.rtsp, "ferrocast serving");
    on_bound(bound);
    let rtmp_task = tokio::spawn(rtmp_server::serve(
        rtmp,
        config.rtmp.clone(),
        hub.clone(),
        limiter.clone(),
        config.limits.clone(),
    ));
    // One per-path table for every service, swapped whole by a reload.
    let paths = paths::SharedPaths::new(config.paths.clone());
    let hls = hls::start(hub.clone(), config.hls.clone(), paths.clone());
    // Pulled sources: always-on ones start now, on-demand ones when readers come.
    let sources = source::Sources::start(hub.clone(), &config);
    let recordings = record::start(hub.clone(), config.record.clone(), paths.clone());
    let pushes = push::start(hub.clone(), config.source.clone(), paths.clone(), config.rtsp.mtu);
    hooks.follow_segments(recordings.completed());
    let reloader = reload::Reloader::new(config.clone(), file, paths, hub.clone(), hooks);
    #[cfg(unix)]
    let sighup = reloader.reload_on(hup);
    let api = api::Api::new(hub.clone(), Some(sources.clone()), Some(pushes.clone()), config.source.clone());
    reloader.set_sources(sources.clone());
    {
        let (rec, push, hub) = (recordings.clone(), pushes.clone(), hub.clone());
        reloader.on_paths_changed(move || {
            rec.follow_live(&hub);
            push.follow_live();
        });
    }
    api.set_reloader(reloader);
    let playback = vod::Playback::new(recordings.clone(), config.vod.clone());
    let console = console::Console::new(config.console.clone());
    console.warn_if_missing();
    // With `api.listen`, the API is served there only (as MediaMTX does).
    let api_task = match config.api.listen {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("binding the API (api.listen) to {addr}"))?;
            info!(api = %listener.local_addr()?, "API serving on its own address");
            Some(tokio::spawn(http::serve(
                listener,
                config.http.clone(),
                hub.clone(),
                hls.clone(),
                playback.clone(),
                limiter.clone(),
                api.clone(),
                http::Scope::ApiOnly,
                console.clone(),
            )))
        }
        None => None,
    };
    let scope = if api_task.is_some() { http::Scope::NoApi } else { http::Scope::All };
    let http_task = tokio::spawn(http::serve(
        http,
        config.http.clone(),
        hub.clone(),
        hls,
        playback.clone(),
        limiter.clone(),
        api,
        scope,
        console,
    ));
    let rtsp_config = config.rtsp.clone();
    let rtsp_hub = hub.clone();
    let rtsp_task =
        tokio::spawn(rtsp::serve(rtsp_listener, rtsp_config, rtsp_hub, playback, limiter, config.limits.clone()));
    shutdown.await;
    info!("shutting down");
    rtmp_task.abort();
    http_task.abort();
    if let Some(t) = api_task {
        t.abort();
    }
    rtsp_task.abort();
    #[cfg(unix)]
    sighup.abort();
    drop(sources);
    // Recordings end their files at the last frame taken, not at the last part synced.
    recordings.close_all(std::time::Duration::from_secs(5)).await;
    Ok(())
}
