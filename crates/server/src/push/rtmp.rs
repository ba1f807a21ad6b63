//! A push to an RTMP target: [`ClientSession`] in publish mode, fed the FLV tags RTMP players
//! get ([`TagFeed`]: `@setDataFrame onMetaData`, sequence headers first and again after a
//! track change, H.265 as Enhanced RTMP as the RTMP output sends it).

use std::time::Instant;

use ferrocast_media::{TrackKind, flv};
use ferrocast_rtmp::{ClientConfig, ClientEvent, ClientMode, ClientSession, MediaKind, SessionError};
use tokio::io::AsyncReadExt;
use tracing::info;

use super::{BATCH, Ctx, PushError, Target, connect, write_all};
use crate::reader::{Reader, ReaderItem, Tag, TagFeed};
use crate::relay::redact;

/// Bytes read from the target at a time (it sends little: acknowledgements, status).
const READ_BUFFER: usize = 4096;

/// `rtmp://host[:port]/app/name[?query]` as (tcUrl, app, stream name): the app is the first
/// path segment (as ffmpeg and nginx-rtmp take it), the name the rest with its query kept
/// (`key?token=x`).
fn split_url(ctx: &Ctx, target: &Target) -> Result<(String, String, String), PushError> {
    let bad = |why| PushError::Url { url: redact(&ctx.url), why };
    let (path, query) = match target.rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.rest.as_str(), None),
    };
    let path = path.trim_start_matches('/');
    let (app, name) = path.split_once('/').ok_or_else(|| bad("no stream name after the app"))?;
    if app.is_empty() || name.trim_matches('/').is_empty() {
        return Err(bad("no app or stream name"));
    }
    let name = match query {
        Some(q) => format!("{name}?{q}"),
        None => name.to_owned(),
    };
    Ok((format!("rtmp://{}/{app}", target.authority), app.to_owned(), name))
}

/// The negotiation step a session is at, for errors.
fn step_of(session: &ClientSession, got_input: bool, connected: bool) -> &'static str {
    if connected {
        if session.stream_id() != 0 { "publish" } else { "createStream" }
    } else if got_input {
        "connect"
    } else {
        "handshake"
    }
}

fn session_error(e: SessionError, step: &str) -> PushError {
    match e {
        SessionError::Refused { command, code, description } => {
            PushError::Refused { step: command.to_owned(), answer: format!("{code} {description}").trim().to_owned() }
        }
        SessionError::IdleTimeout(timeout) => PushError::Timeout { step: step.to_owned(), timeout },
        e => PushError::Protocol { step: step.to_owned(), why: e.to_string() },
    }
}

/// One try: connect, publish, send until the path ends (Ok) or the target fails.
pub(super) async fn run(ctx: &Ctx, mut reader: Reader, went_live: &mut bool) -> Result<(), PushError> {
    let target = Target::parse(&ctx.url, "rtmp", 1935)?;
    let (tc_url, app, name) = split_url(ctx, &target)?;
    let socket = connect(ctx, &target.addr).await?;
    let (mut rd, mut wr) = socket.into_split();
    let mut config = ClientConfig::new(&tc_url, &app, ClientMode::Publish(name));
    config.response_timeout = ctx.request_timeout();
    let mut session = ClientSession::new(config, Instant::now());
    let mut out = Vec::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let (mut got_input, mut connected) = (false, false);
    // Negotiation: every answer within the request timeout (the session's own timer).
    loop {
        let step = step_of(&session, got_input, connected);
        while let Some(b) = session.poll_transmit() {
            out.push(b);
        }
        write_all(&mut wr, &mut out, ctx.request_timeout(), step).await?;
        let mut publishing = false;
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Connected => connected = true,
                ClientEvent::Publishing => publishing = true,
                ClientEvent::Status { level, code } if level == "error" => {
                    return Err(PushError::Refused { step: "publish".into(), answer: code });
                }
                _ => {}
            }
        }
        if publishing {
            break;
        }
        let deadline = session.poll_timeout().unwrap_or_else(|| Instant::now() + ctx.request_timeout());
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = r.map_err(|source| PushError::Io { step: step.to_owned(), source })?;
                if n == 0 {
                    return Err(PushError::Closed { step: step.to_owned() });
                }
                got_input = true;
                session.handle_input(Instant::now(), &buf[..n]).map_err(|e| session_error(e, step))?;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                session.handle_timeout(Instant::now()).map_err(|e| session_error(e, step))?;
            }
        }
    }
    info!(path = ctx.path, url = redact(&ctx.url), "push: publishing over RTMP");
    *went_live = true;
    ctx.relay.live();
    let mut feed = TagFeed::default();
    let mut tags: Vec<Tag> = Vec::with_capacity(4);
    const STEP: &str = "publishing";
    loop {
        let mut ended = false;
        tokio::select! {
            item = reader.next() => {
                let mut item = Some(item);
                let mut n = 0;
                while let Some(it) = item.take() {
                    match it {
                        ReaderItem::Tracks(t) => feed.tracks(&t),
                        ReaderItem::Frame(f) => {
                            feed.frame(f, &mut tags);
                            for tag in tags.drain(..) {
                                send_tag(&mut session, tag);
                            }
                        }
                        ReaderItem::Unpublished => {}
                        ReaderItem::Republished => feed.reset(),
                        ReaderItem::Ended => {
                            session.unpublish();
                            ended = true;
                            break;
                        }
                        ReaderItem::TooSlow => return Err(PushError::TooSlow),
                    }
                    n += 1;
                    if n < BATCH {
                        item = reader.try_next();
                    }
                }
            }
            r = rd.read(&mut buf) => {
                let n = r.map_err(|source| PushError::Io { step: STEP.into(), source })?;
                if n == 0 {
                    return Err(PushError::Closed { step: STEP.into() });
                }
                session.handle_input(Instant::now(), &buf[..n]).map_err(|e| session_error(e, STEP))?;
                while let Some(ev) = session.poll_event() {
                    if let ClientEvent::Status { level, code } = ev && level == "error" {
                        return Err(PushError::Refused { step: STEP.into(), answer: code });
                    }
                }
            }
        }
        let mut bytes = 0;
        while let Some(b) = session.poll_transmit() {
            bytes += b.len() as u64;
            out.push(b);
        }
        let written = write_all(&mut wr, &mut out, ctx.write_timeout(), STEP).await;
        if ended {
            // The target is told; a failure to tell it changes nothing.
            return Ok(());
        }
        written?;
        ctx.relay.sent(bytes);
    }
}

/// Queues one FLV tag on the session.
fn send_tag(session: &mut ClientSession, tag: Tag) {
    match tag {
        Tag::Own { tag_type, timestamp, body } => {
            let kind = match tag_type {
                flv::TAG_AUDIO => MediaKind::Audio,
                flv::TAG_VIDEO => MediaKind::Video,
                // The client sends data as `@setDataFrame` + the body (`onMetaData`, object).
                _ => MediaKind::Data,
            };
            session.send_media(kind, timestamp as u32, &body);
        }
        Tag::Frame { frame, track } => {
            let kind = match frame.kind {
                TrackKind::Video => MediaKind::Video,
                TrackKind::Audio => MediaKind::Audio,
            };
            // As the RTMP output: the stream's timestamps in ms, wrapping as RTMP's do.
            session.send_media(kind, track.to_ms(frame.dts) as u32, &flv::frame_body(&track, &frame));
        }
    }
}
