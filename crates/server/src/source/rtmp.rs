//! The RTMP pull driver: a tokio loop around the sans-IO RTMP [`ClientSession`] (`connect`,
//! `createStream`, `play`), with media into [`RtmpIngest`] exactly as a publisher's.
//!
//! `rtmp://host[:port]/APP/STREAM`: the first path segment is the application, the rest the
//! stream name (as nginx-rtmp, SRS and ferrocast read them). Every step until playing is
//! under `source.request_timeout_ms`; once playing, no media for `source.read_timeout_ms`
//! ends the try.

use std::sync::atomic::Ordering;
use std::time::Instant;

use ferrocast_rtmp::client::{ClientConfig, ClientEvent, ClientMode, ClientSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info};

use super::rtsp::{connect, host_port, io_reason};
use super::{Attempt, SourceError};
use crate::config::ms;
use crate::ingest::RtmpIngest;

/// Largest read from the connection at once (the session caps each message itself).
const READ_CHUNK: usize = 64 * 1024;

/// The RTMP default port.
pub const DEFAULT_PORT: u16 = 1935;

/// (tcUrl, app, stream name) of `rtmp://host[:port]/APP/STREAM`.
pub fn split_url(url: &str) -> Option<(String, String, String)> {
    let rest = url.strip_prefix("rtmp://")?;
    let (authority, path) = rest.split_once('/')?;
    let host = authority.rsplit('@').next()?;
    let (app, name) = path.split_once('/')?;
    if host.is_empty() || app.is_empty() || name.is_empty() {
        return None;
    }
    Some((format!("rtmp://{host}/{app}"), app.to_owned(), name.to_owned()))
}

/// Runs one try of an RTMP source.
pub async fn run(a: &Attempt<'_>, stop: &mut watch::Receiver<bool>) -> Result<(), SourceError> {
    let (tc_url, app, name) = split_url(a.url)
        .ok_or_else(|| SourceError::new("url", format!("{}: not rtmp://HOST[:PORT]/APP/STREAM", a.redacted())))?;
    let (host, port) =
        host_port(a.url, DEFAULT_PORT).ok_or_else(|| SourceError::new("url", format!("{}: no host", a.redacted())))?;
    let timeout = ms(a.config.request_timeout_ms);
    let read_timeout = ms(a.config.read_timeout_ms);
    let mut socket = connect(&host, port, timeout).await?;
    if let Ok(peer) = socket.peer_addr() {
        a.report.set_peer(peer);
    }
    let mut config = ClientConfig::new(&tc_url, &app, ClientMode::Play(name));
    config.response_timeout = timeout;
    let mut client = ClientSession::new(config, Instant::now());
    a.report.set_transport("rtmp", "rtmp:// URL");
    let mut ingest: Option<RtmpIngest> = None;
    let mut step = "connect";
    let mut played_at: Option<Instant> = None;
    let mut last_media: Option<Instant> = None;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        while let Some(out) = client.poll_transmit() {
            match tokio::time::timeout(timeout, socket.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(SourceError::new(step, format!("writing to the server: {}", io_reason(&e)))),
                Err(_) => return Err(SourceError::new(step, "writing to the server: blocked")),
            }
        }
        let media_deadline = played_at.map(|p| last_media.unwrap_or(p) + read_timeout);
        let deadline = match (client.poll_timeout(), media_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            r = socket.read(&mut buf) => {
                let n = match r {
                    Ok(0) => return Err(SourceError::new(step, "the server closed the connection")),
                    Ok(n) => n,
                    Err(e) => return Err(SourceError::new(step, format!("reading from the server: {}", io_reason(&e)))),
                };
                client
                    .handle_input(Instant::now(), &buf[..n])
                    .map_err(|e| SourceError::new(step, format!("{step}: {e}")))?;
            }
            () = super::sleep_until(deadline) => {
                let now = Instant::now();
                client.handle_timeout(now).map_err(|_| {
                    SourceError::new(step, format!("no answer to {step} within {:.1} s", timeout.as_secs_f64()))
                })?;
                if let Some(d) = media_deadline && now >= d {
                    let why = if last_media.is_some() { "no media for" } else { "no media within" };
                    let after = if last_media.is_some() { "" } else { " after play" };
                    return Err(SourceError::new("media", format!("{why} {:.0} s{after}", read_timeout.as_secs_f64())));
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    // closeStream is not needed: the connection's close ends the play.
                    let _ = socket.shutdown().await;
                    return Ok(());
                }
            }
        }
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Connected => step = "play",
                ClientEvent::Playing => {
                    let mut p = a
                        .hub
                        .publish(a.path)
                        .map_err(|e| SourceError::new("publish", format!("publishing {}: {e}", a.path)))?;
                    p.count_frames(a.report.frames.clone());
                    ingest = Some(RtmpIngest::new(p));
                    played_at = Some(Instant::now());
                    step = "media";
                    debug!(path = a.path, url = a.redacted(), "source: play started");
                }
                ClientEvent::Status { level, code } if level == "error" => {
                    return Err(SourceError {
                        step: step.to_owned(),
                        status: None,
                        message: match client.last_description() {
                            Some(d) => format!("{step} answered {code} ({d})"),
                            None => format!("{step} answered {code}"),
                        },
                    });
                }
                ClientEvent::Status { code, .. } => debug!(path = a.path, code, "source: rtmp status"),
                ClientEvent::UserControl { .. } | ClientEvent::Publishing => {}
                ClientEvent::Media(msg) => {
                    let Some(ing) = ingest.as_mut() else { continue };
                    a.report.bytes.fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
                    if last_media.is_none() {
                        a.report.live();
                        info!(path = a.path, url = a.redacted(), transport = "rtmp", "source: live");
                    }
                    last_media = Some(Instant::now());
                    if let Err(e) = ing.handle(msg) {
                        if e.ends_publish() {
                            return Err(SourceError::new("media", format!("media: {e}")));
                        }
                        debug!(path = a.path, "source: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_app_and_stream() {
        assert_eq!(
            split_url("rtmp://u:p@origin:1936/live/cam/1?k=v"),
            Some(("rtmp://origin:1936/live".into(), "live".into(), "cam/1?k=v".into()))
        );
        assert_eq!(split_url("rtmp://origin/live"), None);
        assert_eq!(split_url("rtsp://origin/live/a"), None);
    }
}
