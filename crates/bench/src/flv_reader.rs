//! An HTTP-FLV reader: a GET, then FLV tags parsed as they arrive.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Clock, ReaderState, Shared, flv_clock, on_video, read_buffer, throttle};

/// Plays `url` until the connection ends.
pub async fn play(
    url: &str,
    state: &Arc<ReaderState>,
    shared: &Shared,
    probe: bool,
    limit: Option<u64>,
    started: Instant,
) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("HTTP-FLV URLs start with http://")?;
    let (host, path) = rest.split_at(rest.find('/').context("no path")?);
    let mut s = TcpStream::connect(host).await?;
    let _ = s.set_nodelay(true);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    state.connected.store(true, Ordering::Relaxed);
    let mut buf = vec![0u8; read_buffer(state, limit)];
    let mut pending: Vec<u8> = Vec::new();
    let mut in_body = false;
    let mut chunked = false;
    let mut flv: Vec<u8> = Vec::new();
    let mut header_skipped = false;
    let mut first = true;
    let mut base = None;
    let mut total = 0u64;
    loop {
        throttle(state, limit, total, started).await;
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "server closed the connection");
        total += n as u64;
        state.bytes.fetch_add(n as u64, Ordering::Relaxed);
        pending.extend_from_slice(&buf[..n]);
        if !in_body {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            anyhow::ensure!(head.starts_with("http/1.1 200"), "HTTP-FLV: {}", head.lines().next().unwrap_or(""));
            chunked = head.contains("transfer-encoding: chunked");
            pending.drain(..end + 4);
            in_body = true;
        }
        // De-chunk what is complete.
        if chunked {
            while let Some(line_end) = pending.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(String::from_utf8_lossy(&pending[..line_end]).trim(), 16).unwrap_or(0);
                if pending.len() < line_end + 2 + size + 2 {
                    break;
                }
                flv.extend_from_slice(&pending[line_end + 2..line_end + 2 + size]);
                pending.drain(..line_end + 2 + size + 2);
                anyhow::ensure!(size > 0, "stream ended");
            }
        } else {
            flv.append(&mut pending);
        }
        if !header_skipped {
            if flv.len() < 13 {
                continue;
            }
            flv.drain(..13);
            header_skipped = true;
        }
        // Tags: 11-byte header, body, 4-byte previous size.
        let mut pos = 0;
        while flv.len() - pos >= 11 {
            let h = &flv[pos..pos + 11];
            let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
            if flv.len() - pos < 11 + size + 4 {
                break;
            }
            let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
            if h[0] == 9 && size >= 2 {
                let b0 = flv[pos + 11];
                let keyframe = (b0 >> 4) & 0x7 == 1;
                let is_frame = if b0 & 0x80 != 0 { matches!(b0 & 0x0f, 1 | 3) } else { flv[pos + 12] == 1 };
                if is_frame {
                    let (ts, clock) = if shared.by_pts {
                        let body = bytes::Bytes::copy_from_slice(&flv[pos + 11..pos + 11 + size]);
                        match ferrocast_media::flv::parse_video(&body) {
                            Ok(ferrocast_media::flv::VideoTag::Frame { cts, .. }) => {
                                flv_clock(shared, &mut base, ts, cts)
                            }
                            _ => (ts, Clock::Decode),
                        }
                    } else {
                        (ts, Clock::Decode)
                    };
                    on_video(state, shared, probe, started, ts, keyframe, &mut first, clock);
                }
            }
            pos += 11 + size + 4;
        }
        flv.drain(..pos);
    }
}
