//! What the publisher sends besides FLV over RTMP: MP4 files (read into the same FLV tags)
//! and RTSP publishing (ANNOUNCE/RECORD, RTP interleaved over TCP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use ferrocast_media::flv::{self, AudioTag, FileTag, VideoTag};
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks, mp4};
use ferrocast_rtsp::client::{ClientEvent, ClientMode, ClientSession, ClientTransport};
use ferrocast_rtsp::codec::{self, Packetizer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Shared, note_sent, start_sending};

/// An MP4 file's H.264/H.265 and AAC tracks as FLV tags with millisecond timestamps:
/// sequence headers first, then the frames of all tracks in decode order.
pub fn tags_from_mp4(data: &Bytes) -> anyhow::Result<Vec<FileTag>> {
    let tracks = mp4::read_file(data)?;
    let mut tags = Vec::new();
    for t in &tracks {
        let tag_type = match t.info.kind() {
            TrackKind::Video => flv::TAG_VIDEO,
            TrackKind::Audio => flv::TAG_AUDIO,
        };
        if let Some(body) = flv::config_body(&t.info) {
            tags.push((0, 0, FileTag { tag_type, timestamp: 0, body }));
        }
        for f in &t.frames {
            let ms = t.info.to_ms(f.dts).max(0);
            tags.push((ms, 1, FileTag { tag_type, timestamp: ms as u32, body: flv::frame_body(&t.info, f) }));
        }
    }
    anyhow::ensure!(!tags.is_empty(), "no H.264, H.265 or AAC track");
    // Stable: each track keeps its own order.
    tags.sort_by_key(|(ms, order, _)| (*ms, *order));
    Ok(tags.into_iter().map(|(_, _, t)| t).collect())
}

/// The tracks the sequence headers of `tags` describe (RTMP clock: ms).
pub(crate) fn tracks_of(tags: &[FileTag]) -> anyhow::Result<Tracks> {
    let mut tracks = Tracks::default();
    for t in tags {
        match t.tag_type {
            flv::TAG_VIDEO => {
                if let Ok(VideoTag::Config { codec, config }) = flv::parse_video(&t.body) {
                    tracks.video.get_or_insert(TrackInfo::Video { codec, config, clock_rate: 1000 });
                }
            }
            flv::TAG_AUDIO => {
                if let Ok(AudioTag::AacConfig(config)) = flv::parse_audio(&t.body)
                    && tracks.audio.is_none()
                {
                    tracks.audio = Some(ferrocast_media::aac::track(config, 1000)?);
                }
            }
            _ => {}
        }
    }
    anyhow::ensure!(tracks.video.is_some() || tracks.audio.is_some(), "no sequence headers in the file");
    Ok(tracks)
}

/// The frame a tag carries, at `ts` ms (sequence headers and other tags: None).
pub(crate) fn frame_of(t: &FileTag, ts: u32) -> Option<Arc<Frame>> {
    let ts = i64::from(ts);
    match t.tag_type {
        flv::TAG_VIDEO => match flv::parse_video(&t.body).ok()? {
            VideoTag::Frame { keyframe, cts, data, .. } => {
                Some(Frame::new(TrackKind::Video, ts, ts + i64::from(cts), keyframe, data))
            }
            _ => None,
        },
        flv::TAG_AUDIO => match flv::parse_audio(&t.body).ok()? {
            AudioTag::AacFrame(data) => Some(Frame::new(TrackKind::Audio, ts, ts, true, data)),
            _ => None,
        },
        _ => None,
    }
}

/// Publishes `tags` to `url` over RTSP in real time, looped with increasing timestamps.
pub async fn publish_rtsp(url: &str, tags: &[FileTag], shared: Arc<Shared>, record: bool) -> anyhow::Result<()> {
    let tracks = tracks_of(tags)?;
    let host = url.strip_prefix("rtsp://").and_then(|r| r.split('/').next()).context("rtsp://HOST:PORT/PATH")?;
    let (sdp, media) = ferrocast_rtsp::sdp::describe(&tracks, "127.0.0.1", "0.0.0.0");
    let mut socket = TcpStream::connect(host).await.with_context(|| format!("connecting to {host}"))?;
    socket.set_nodelay(true)?;
    let mut session = ClientSession::new(url, ClientMode::Record(sdp), ClientTransport::Tcp, vec![], Instant::now());
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(b) = session.poll_transmit() {
            socket.write_all(&b).await?;
        }
        match session.poll_event() {
            Some(ClientEvent::Started) => break,
            Some(ClientEvent::Failed { method, status }) => anyhow::bail!("RTSP {method:?} refused: {status}"),
            Some(_) => continue,
            None => {}
        }
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .context("RTSP server silent")??;
        anyhow::ensure!(n > 0, "server closed during RTSP setup");
        session.handle_input(Instant::now(), &buf[..n])?;
    }
    // One packetizer per announced track, in the SDP's order (the client's track index).
    let mut packetizers = Vec::new();
    // `describe` lists (trackID, track); the payload type is the one its SDP announces.
    for (i, (_, track)) in media.iter().enumerate() {
        let pt = ferrocast_rtsp::sdp::payload_type(track);
        let p = Packetizer::new(track, pt, 0x5eed_0000 + i as u32, 0, 0, 1400).context("no packetizer for a track")?;
        packetizers.push((track.kind(), p));
    }
    let (mut wr, span, start) = start_sending(socket, tags);
    for l in 0u32.. {
        for t in tags {
            let ts = t.timestamp + l * span;
            let Some(frame) = frame_of(t, ts) else { continue };
            let Some((index, (_, p))) = packetizers.iter_mut().enumerate().find(|(_, (k, _))| *k == frame.kind) else {
                continue;
            };
            tokio::time::sleep_until(start + Duration::from_millis(u64::from(ts))).await;
            let packets = p.packetize(&frame);
            for pkt in codec::packets(&packets) {
                session.send_rtp(index, &pkt);
            }
            while let Some(b) = session.poll_transmit() {
                wr.write_all(&b).await?;
            }
            note_sent(&shared, start, t, ts, record);
        }
    }
    Ok(())
}
