//! `ferrocast-floor`: what RTMP fan-out costs the kernel alone. A minimal RTMP server that
//! plays one FLV file, looped in real time, to every reader: the chunks of each frame are built
//! once and written to every socket with one `write` per frame (or per merge window), from one
//! thread, with nothing else to do. Point `ferrocast-bench --no-publish` at it and sample its
//! CPU: a real server cannot do the same writes for less, so this is the floor to compare
//! ferrocast (and nginx-rtmp) with, mode by mode.
//!
//! ```text
//! ferrocast-floor --file 720p.flv --listen 127.0.0.1:19937 [--nodelay] [--merge-ms 50]
//! ferrocast-bench --rtmp rtmp://127.0.0.1:19937/live/floor --no-publish --readers 1000 --server-pid PID
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use ferrocast_media::flv;
use ferrocast_rtmp::message::encode_media;
use ferrocast_rtmp::{MediaKind, ServerConfig, ServerEvent, ServerSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(version, about)]
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
}

/// A frame of the file: its timestamp, whether it is a video keyframe, its tag.
struct Tag {
    ts: u32,
    keyframe: bool,
    kind: MediaKind,
    body: Bytes,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = Bytes::from(std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?);
    let mut headers = BytesMut::new();
    let mut tags = Vec::new();
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
            continue;
        }
        let keyframe = kind == MediaKind::Video && t.body.first().is_some_and(|b| b >> 4 == 1);
        tags.push(Tag { ts: t.timestamp, keyframe, kind, body: t.body });
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
