//! `ferrocast-floor`: what fan-out costs the kernel alone. A minimal RTMP server (and, with
//! `--rtsp-listen`, a minimal RTSP server) that plays one FLV file, looped in real time, to
//! every reader from one thread with nothing else to do: each frame is encoded once (RTMP
//! chunks; RTP packets by ferrocast's own packetizers) and the same bytes go to every reader.
//! Point `ferrocast-bench --no-publish` at it and sample its CPU: a real server cannot do the
//! same sends for less, so this is the floor to compare ferrocast (and nginx-rtmp) with, mode
//! by mode.
//!
//! - RTMP (`--listen`): one `write` per frame (or per `--merge-ms` window) per reader.
//! - RTSP over TCP (`--rtsp-listen`, a reader asking for interleaved): one `write` per frame per
//!   reader, the frame's RTP packets with their `$` headers in one buffer.
//! - RTSP over UDP (a reader asking for `client_port`): from one server RTP socket for every
//!   reader and track (as ferrocast's shared `server_port`), `--udp-send per-packet` (one
//!   `sendto` per RTP packet per reader) or `--udp-send gso` (one `sendmsg` with
//!   `UDP_SEGMENT` per run of equal-sized packets per reader, as ferrocast's udp_out; per
//!   packet if the kernel refuses).
//!
//! RTSP details: DESCRIBE gives the SDP ferrocast gives these tracks (any path); RTP payloads
//! are at most `--mtu` bytes (ferrocast's `rtsp.mtu` default), one AAC frame per packet;
//! readers start at the next video keyframe (no GOP cache: the floor's cost is the steady
//! state); PLAY answers `Range: npt=now-` and RTP-Info without seq/rtptime; a sender report
//! per track goes to every reader every 5 s; sequence numbers and SSRCs are the stream's.
//! `--merge-ms` applies to RTMP only.
//!
//! ```text
//! ferrocast-floor --file 720p.flv --listen 127.0.0.1:19937 [--nodelay] [--merge-ms 50] \
//!     [--rtsp-listen 127.0.0.1:19554 [--udp-send per-packet|gso] [--mtu 1400]]
//! ferrocast-bench --rtmp rtmp://127.0.0.1:19937/live/floor --no-publish --readers 1000 --server-pid PID
//! ferrocast-bench --rtmp rtmp://127.0.0.1:19937/live/floor --rtsp rtsp://127.0.0.1:19554 \
//!     --no-publish --protocol rtsp-udp --readers 1000 --server-pid PID
//! ```
//!
//! Port 0 binds any free port; stdout says which (`ferrocast-floor: rtmp listening on ADDR`,
//! `ferrocast-floor: rtsp listening on ADDR (RTP/RTCP ports A-B)`).

#[path = "ferrocast_floor/rtsp.rs"]
mod rtsp;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use ferrocast_media::flv::{self, AudioTag, VideoTag};
use ferrocast_media::{TrackInfo, TrackKind, Tracks};
use ferrocast_rtmp::message::encode_media;
use ferrocast_rtmp::{MediaKind, ServerConfig, ServerEvent, ServerSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Usage shown after `--help`.
const EXAMPLES: &str = "\
Examples:
  ferrocast-floor --file 720p.flv --listen 127.0.0.1:19937 --rtsp-listen 127.0.0.1:19554 --udp-send gso
  ferrocast-bench --rtmp rtmp://127.0.0.1:19937/live/floor --rtsp rtsp://127.0.0.1:19554 \\
      --no-publish --protocol rtsp-udp --readers 1000 --server-pid PID

RTMP: one write per frame (or --merge-ms window) per reader. RTSP over TCP: one write per frame per
reader (its RTP packets with their $ headers). RTSP over UDP: from one server RTP socket, one sendto
per packet (--udp-send per-packet) or one sendmsg with UDP_SEGMENT per run of equal-sized packets
(--udp-send gso). Readers start at the next keyframe; RTCP sender reports every 5 s.";

#[derive(Debug, Parser)]
#[command(
    version,
    about = "What fan-out costs the kernel alone: one FLV file, looped in real time, encoded once and sent \
             to every RTMP (and, with --rtsp-listen, RTSP TCP/UDP) reader from one thread",
    after_help = EXAMPLES
)]
struct Args {
    /// FLV file to play, looped with increasing timestamps.
    #[arg(long)]
    file: PathBuf,
    /// RTMP listen address (any app and stream name plays the file).
    #[arg(long, default_value = "127.0.0.1:19937")]
    listen: SocketAddr,
    /// Set TCP_NODELAY on reader sockets (Nagle's algorithm off).
    #[arg(long)]
    nodelay: bool,
    /// Merge the frames of this many milliseconds into one write (0: one write per frame).
    #[arg(long, default_value_t = 0)]
    merge_ms: u64,
    /// RTMP chunk size.
    #[arg(long, default_value_t = 4096)]
    chunk_size: u32,
    /// Also serve RTSP on this address (any path plays the file; TCP interleaved or UDP
    /// unicast, as each reader's SETUP asks). Off by default.
    #[arg(long)]
    rtsp_listen: Option<SocketAddr>,
    /// How RTP goes to UDP readers.
    #[arg(long, value_enum, default_value = "per-packet")]
    udp_send: UdpSend,
    /// Largest RTP payload (ferrocast's `rtsp.mtu` default).
    #[arg(long, default_value_t = ferrocast_rtsp::codec::DEFAULT_MTU)]
    mtu: usize,
}

/// How RTP goes to UDP readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum UdpSend {
    /// One `sendto` per RTP packet per reader.
    PerPacket,
    /// One `sendmsg` with `UDP_SEGMENT` per run of equal-sized packets per reader (Linux
    /// 4.18+; per packet if the kernel refuses).
    Gso,
}

/// A frame of the file: its timestamp, whether it is a video keyframe, its tag, and its
/// media data and composition offset (ms) for RTP (None for what RTSP does not carry).
struct Tag {
    ts: u32,
    keyframe: bool,
    kind: MediaKind,
    body: Bytes,
    media: Option<(Bytes, i32)>,
}

/// The media of an FLV tag for RTP: its data and composition offset, ms.
fn media_of(kind: MediaKind, body: &Bytes) -> Option<(Bytes, i32)> {
    match kind {
        MediaKind::Video => match flv::parse_video(body).ok()? {
            VideoTag::Frame { cts, data, .. } => Some((data, cts)),
            _ => None,
        },
        MediaKind::Audio => match flv::parse_audio(body).ok()? {
            AudioTag::AacFrame(data) => Some((data, 0)),
            _ => None,
        },
        _ => None,
    }
}

/// Notes the track a sequence header declares (H.264/H.265 and AAC), in ms as RTMP ingest
/// does. A header RTSP cannot describe is left out (RTMP plays it all the same).
fn note_track(tracks: &mut Tracks, kind: MediaKind, body: &Bytes) {
    match kind {
        MediaKind::Video => {
            if let Ok(VideoTag::Config { codec, config }) = flv::parse_video(body) {
                tracks.video.get_or_insert(TrackInfo::Video { codec, config, clock_rate: 1000 });
            }
        }
        MediaKind::Audio => {
            if let Ok(AudioTag::AacConfig(config)) = flv::parse_audio(body)
                && tracks.audio.is_none()
            {
                tracks.audio = ferrocast_media::aac::track(config, 1000).ok();
            }
        }
        _ => {}
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = Bytes::from(std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?);
    let mut headers = BytesMut::new();
    let mut tags = Vec::new();
    let mut tracks = Tracks::default();
    for t in flv::read_file(&data)? {
        let kind = match t.tag_type {
            flv::TAG_AUDIO => MediaKind::Audio,
            flv::TAG_VIDEO => MediaKind::Video,
            _ => MediaKind::Data,
        };
        // Sequence headers and metadata go to each reader once, when it joins.
        let is_header = kind == MediaKind::Data || t.body.get(1) == Some(&0);
        if is_header {
            headers.extend_from_slice(&encode_media(kind, 0, 1, &t.body, args.chunk_size));
            note_track(&mut tracks, kind, &t.body);
            continue;
        }
        let keyframe = kind == MediaKind::Video && t.body.first().is_some_and(|b| b >> 4 == 1);
        let media = media_of(kind, &t.body);
        tags.push(Tag { ts: t.timestamp, keyframe, kind, body: t.body, media });
    }
    anyhow::ensure!(!tags.is_empty(), "no media in {}", args.file.display());
    let span = tags.iter().map(|t| t.ts).max().unwrap_or(0) + 33;
    let headers = headers.freeze();

    let joining: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    let listener = std::net::TcpListener::bind(args.listen)?;
    println!("ferrocast-floor: rtmp listening on {}", listener.local_addr()?);
    let (j, nodelay) = (joining.clone(), args.nodelay);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(accept(listener, j, headers, nodelay));
    });

    let mut rtsp = match args.rtsp_listen {
        Some(addr) => Some(rtsp::start(addr, &tracks, args.mtu, args.nodelay, args.udp_send == UdpSend::Gso)?),
        None => None,
    };

    // The writer: one thread, one write per frame (or merge window) per socket.
    let mut readers: Vec<std::net::TcpStream> = Vec::new();
    let mut pending = BytesMut::new();
    let mut pending_since: Option<Instant> = None;
    let merge = Duration::from_millis(args.merge_ms);
    let start = Instant::now();
    for round in 0u32.. {
        for t in &tags {
            let ts = t.ts + round * span;
            let due = start + Duration::from_millis(u64::from(ts));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if t.keyframe {
                // New readers start on a keyframe; flush first so they start clean.
                if !pending.is_empty() {
                    write_all(&mut readers, &pending.split());
                    pending_since = None;
                }
                readers.append(&mut joining.lock().expect("lock"));
            }
            pending.extend_from_slice(&encode_media(t.kind, ts, 1, &t.body, args.chunk_size));
            let since = *pending_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= merge {
                write_all(&mut readers, &pending.split());
                pending_since = None;
            }
            if let (Some(r), Some((data, cts))) = (rtsp.as_mut(), &t.media) {
                let kind = if t.kind == MediaKind::Video { TrackKind::Video } else { TrackKind::Audio };
                let dts = i64::from(ts);
                r.poll_control();
                r.frame(kind, dts, dts + i64::from(*cts), t.keyframe, data);
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to every reader; a reader whose write fails is dropped.
fn write_all(readers: &mut Vec<std::net::TcpStream>, bytes: &[u8]) {
    readers.retain_mut(|s| s.write_all(bytes).is_ok());
}

/// Accepts readers: RTMP handshake, connect, createStream and play through our own session,
/// then the socket goes to the writer (blocking mode) with the headers already sent.
async fn accept(
    listener: std::net::TcpListener,
    joining: Arc<Mutex<Vec<std::net::TcpStream>>>,
    headers: Bytes,
    nodelay: bool,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    while let Ok((socket, _)) = listener.accept().await {
        let (joining, headers) = (joining.clone(), headers.clone());
        tokio::spawn(async move {
            if let Ok(Some(s)) =
                tokio::time::timeout(Duration::from_secs(10), handshake(socket, headers, nodelay)).await
            {
                joining.lock().expect("lock").push(s);
            }
        });
    }
}

async fn handshake(mut socket: tokio::net::TcpStream, headers: Bytes, nodelay: bool) -> Option<std::net::TcpStream> {
    let mut session = ServerSession::new(ServerConfig::default(), Instant::now());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(out) = session.poll_transmit() {
            socket.write_all(&out).await.ok()?;
        }
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        session.handle_input(Instant::now(), &buf[..n]).ok()?;
        while let Some(e) = session.poll_event() {
            match e {
                ServerEvent::Connect { .. } => session.accept_connect().ok()?,
                ServerEvent::Play { stream_id, .. } => {
                    session.accept_play(stream_id).ok()?;
                    while let Some(out) = session.poll_transmit() {
                        socket.write_all(&out).await.ok()?;
                    }
                    socket.write_all(&headers).await.ok()?;
                    let s = socket.into_std().ok()?;
                    s.set_nonblocking(false).ok()?;
                    s.set_nodelay(nodelay).ok()?;
                    return Some(s);
                }
                ServerEvent::Publish { stream_id, .. } => {
                    session.reject(stream_id, "NetStream.Publish.BadName", "this server only plays").ok()?
                }
                _ => {}
            }
        }
    }
}
