//! A push to an RTMP target: [`ClientSession`] in publish mode, fed the FLV tags RTMP players
//! get ([`TagFeed`]: `@setDataFrame onMetaData`, sequence headers first and again after a
//! track change, H.265 as Enhanced RTMP as the RTMP output sends it).

use std::sync::Arc;
use std::time::Instant;

use ferrocast_media::{AudioCodec, TrackInfo, TrackKind, Tracks, VideoCodec, flv};
use ferrocast_rtmp::amf0::{self, Value};
use ferrocast_rtmp::{ClientConfig, ClientEvent, ClientMode, ClientSession, MediaKind, SessionError};
use tokio::io::AsyncReadExt;
use tracing::info;

use super::{BATCH, Ctx, PushError, Target, connect, write_all};
use crate::reader::{Reader, ReaderItem, Tag, TagFeed};
use crate::relay::redact_key;

/// Bytes read from the target at a time (it sends little: acknowledgements, status).
const READ_BUFFER: usize = 4096;

/// `rtmp://host[:port]/app/name[?query]` as (tcUrl, app, stream name): the app is the first
/// path segment (as ffmpeg and nginx-rtmp take it), the name the rest with its query kept
/// (`key?token=x`).
fn split_url(url: &str, target: &Target) -> Result<(String, String, String), PushError> {
    let bad = |why| PushError::Url { url: redact_key(url), why };
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
    let (tc_url, app, name) = split_url(&ctx.url, &target)?;
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
    info!(path = ctx.path, url = redact_key(&ctx.url), "push: publishing over RTMP");
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
                        ReaderItem::Tracks(t) => feed.tracks(&with_metadata(t)),
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
        ctx.sent(bytes);
    }
}

/// The tracks with an `onMetaData` of their own when the publisher sent none (an RTSP
/// publisher, a camera): RTMP ingests (nginx-rtmp, streaming platforms) read the codecs and
/// picture size from it.
fn with_metadata(tracks: Arc<Tracks>) -> Arc<Tracks> {
    if tracks.metadata.is_some() || (tracks.video.is_none() && tracks.audio.is_none()) {
        return tracks;
    }
    let mut props: Vec<(&str, Value)> = Vec::new();
    if let Some(v @ TrackInfo::Video { codec, .. }) = &tracks.video {
        if let Some((w, h)) = ferrocast_media::fmp4::dimensions(v) {
            props.push(("width", Value::Number(f64::from(w))));
            props.push(("height", Value::Number(f64::from(h))));
        }
        let id = match codec {
            VideoCodec::H264 => 7.0,
            // Enhanced RTMP: the FourCC as a number.
            VideoCodec::H265 => f64::from(u32::from_be_bytes(*b"hvc1")),
        };
        props.push(("videocodecid", Value::Number(id)));
    }
    if let Some(TrackInfo::Audio { codec, sample_rate, channels, .. }) = &tracks.audio
        && flv::carries(tracks.audio.as_ref().expect("matched"))
    {
        let id = match codec {
            AudioCodec::Aac => 10.0,
            AudioCodec::Mp3 => 2.0,
            AudioCodec::Pcma => 7.0,
            AudioCodec::Pcmu => 8.0,
            AudioCodec::Opus => 13.0,
        };
        props.push(("audiocodecid", Value::Number(id)));
        props.push(("audiosamplerate", Value::Number(f64::from(*sample_rate))));
        props.push(("stereo", Value::Boolean(*channels > 1)));
    }
    let body = amf0::encode_all(&[Value::from("onMetaData"), Value::object(props)]);
    Arc::new(Tracks { metadata: Some(body.into()), ..(*tracks).clone() })
}

/// Queues one FLV tag on the session.
fn send_tag(session: &mut ClientSession, tag: Tag) {
    match tag {
        Tag::Own { tag_type, timestamp, body } => {
            // The client sends data as `@setDataFrame` + the body (`onMetaData`, object).
            session.send_media(MediaKind::from_tag_type(tag_type), timestamp as u32, &body);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> Result<(String, String, String), PushError> {
        let target = Target::parse(url, "rtmp", 1935)?;
        split_url(url, &target)
    }

    #[test]
    fn urls_split_into_tc_url_app_and_name_with_its_query() {
        let (tc, app, name) = split("rtmp://u:pw@host:1936/live/key?token=x/y").unwrap();
        assert_eq!((tc.as_str(), app.as_str(), name.as_str()), ("rtmp://host:1936/live", "live", "key?token=x/y"));
        let (tc, app, name) = split("rtmp://host/app/a/b").unwrap();
        assert_eq!((tc.as_str(), app.as_str(), name.as_str()), ("rtmp://host/app", "app", "a/b"));
        for bad in ["rtmp://host/app", "rtmp://host/app/", "rtmp://host//x", "rtmp://u:pw@host"] {
            let e = split(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad URL") && !e.contains("pw"), "{bad}: {e}");
        }
    }

    #[test]
    fn metadata_is_made_only_when_the_publisher_sent_none() {
        let aac = TrackInfo::Audio {
            codec: AudioCodec::Aac,
            config: bytes::Bytes::from_static(&[0x12, 0x10]),
            sample_rate: 44_100,
            channels: 2,
            clock_rate: 44_100,
        };
        let t = Arc::new(Tracks { audio: Some(aac.clone()), ..Tracks::default() });
        let m = with_metadata(t).metadata.clone().expect("made");
        let values = amf0::decode_all(&m).unwrap();
        assert_eq!(values[0].as_str(), Some("onMetaData"));
        assert_eq!(values[1].get("audiocodecid").and_then(Value::as_f64), Some(10.0));
        assert_eq!(values[1].get("audiosamplerate").and_then(Value::as_f64), Some(44_100.0));
        let own = bytes::Bytes::from_static(b"theirs");
        let t = Arc::new(Tracks { audio: Some(aac), metadata: Some(own.clone()), ..Tracks::default() });
        assert_eq!(with_metadata(t).metadata, Some(own));
        assert!(with_metadata(Arc::new(Tracks::default())).metadata.is_none());
    }
}
