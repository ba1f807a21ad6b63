//! An HLS reader as players behave: one keep-alive connection, the media playlist polled
//! every half target duration, each new segment fetched once, starting with the newest.
//! Segments are not parsed; a reader keeps up while it has fetched the newest segment the
//! playlist listed at its last poll.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{ReaderState, Shared};

/// Largest response we accept (a segment of a high-bitrate stream fits).
const MAX_BODY: usize = 64 << 20;

/// One HTTP/1.1 connection, requests one after the other.
struct Http {
    socket: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    /// GETs `path`; the status and body.
    async fn get(&mut self, path: &str, state: &ReaderState) -> anyhow::Result<(u16, Vec<u8>)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.socket.write_all(req.as_bytes()).await?;
        let mut chunk = [0u8; 65536];
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            anyhow::ensure!(self.buf.len() < 64 * 1024, "response head too long");
            let n = self.socket.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "server closed the connection");
            state.bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no Content-Length")?;
        anyhow::ensure!(len <= MAX_BODY, "body of {len} bytes");
        self.buf.drain(..head_end + 4);
        while self.buf.len() < len {
            let n = self.socket.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "server closed the connection");
            state.bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf.drain(..len).collect();
        Ok((status, body))
    }
}

/// Plays `url` (`http://host:port/app/stream/index.m3u8`) until an error.
pub async fn play(url: &str, state: &Arc<ReaderState>, shared: &Shared, started: Instant) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("HLS URLs start with http://")?;
    let (host, path) = rest.split_at(rest.find('/').context("no path")?);
    let dir = &path[..path.rfind('/').context("no directory")? + 1];
    let socket = TcpStream::connect(host).await?;
    let _ = socket.set_nodelay(true);
    let mut http = Http { socket, host: host.to_owned(), buf: Vec::new() };
    state.connected.store(true, Ordering::Relaxed);
    // A multivariant playlist names the media playlist; a media playlist is used as it is.
    let (status, body) = http.get(path, state).await?;
    anyhow::ensure!(status == 200, "playlist: HTTP {status}");
    let text = String::from_utf8_lossy(&body).into_owned();
    let media = if text.contains("#EXT-X-STREAM-INF") {
        let uri = text.lines().find(|l| !l.is_empty() && !l.starts_with('#')).context("no variant")?;
        format!("{dir}{}", uri.trim())
    } else {
        path.to_owned()
    };
    let path = media.as_str();
    let mut init_fetched = false;
    let mut last_fetched: Option<u64> = None;
    let mut first = true;
    loop {
        let (status, body) = http.get(path, state).await?;
        anyhow::ensure!(status == 200, "playlist: HTTP {status}");
        let text = String::from_utf8_lossy(&body);
        if !init_fetched && let Some(init) = text_after(&text, "#EXT-X-MAP:URI=\"") {
            http.get(&format!("{dir}{init}"), state).await?;
        }
        init_fetched = true;
        let (sequence, segments, target) = parse_playlist(&text).context("playlist without segments")?;
        let newest = sequence + segments.len() as u64 - 1;
        // Start at the newest segment, then take each new one in order.
        let from = last_fetched.map_or(newest, |l| l + 1).max(sequence);
        for seq in from..=newest {
            let uri = &segments[(seq - sequence) as usize];
            let (status, _) = http.get(&format!("{dir}{uri}"), state).await?;
            anyhow::ensure!(status == 200, "segment {uri}: HTTP {status}");
            if first {
                first = false;
                // Every HLS segment starts on a keyframe; time to the first one.
                shared.first_frames.lock().unwrap().push((started.elapsed().as_secs_f64() * 1000.0, true));
            }
            last_fetched = Some(seq);
        }
        // Current with the playlist: as far along as the publisher, within the poll interval.
        state.newest_ms.store(shared.sent.newest_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(target / 2.0)).await;
    }
}

/// The number of segments in the media playlist behind `url` (a multivariant playlist), if
/// the stream has one: the ingest scenario checks that every publisher is muxed to HLS.
pub async fn segments(url: &str) -> Option<usize> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let dir = &path[..path.rfind('/')? + 1];
    let socket = TcpStream::connect(host).await.ok()?;
    let mut http = Http { socket, host: host.to_owned(), buf: Vec::new() };
    let state = ReaderState::default();
    let (status, body) = http.get(path, &state).await.ok()?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let uri = text.lines().find(|l| !l.is_empty() && !l.starts_with('#'))?;
    if status != 200 {
        return None;
    }
    let (status, body) = http.get(&format!("{dir}{}", uri.trim()), &state).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    (status == 200).then(|| parse_playlist(&text).map_or(0, |(_, s, _)| s.len()))
}

/// The quoted value after `key` (up to the closing quote).
fn text_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    Some(&text[start..start + text[start..].find('"')?])
}

/// (media sequence, segment URIs, target duration) of a media playlist.
fn parse_playlist(text: &str) -> Option<(u64, Vec<&str>, f64)> {
    let mut sequence = 0;
    let mut target = 2.0;
    let mut segments = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            sequence = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            target = v.trim().parse().ok()?;
        } else if !line.is_empty() && !line.starts_with('#') {
            segments.push(line.trim());
        }
    }
    (!segments.is_empty()).then_some((sequence, segments, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlist() {
        let text =
            "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.0,\na-7.ts\n#EXTINF:2.0,\na-8.ts\n";
        assert_eq!(parse_playlist(text), Some((7, vec!["a-7.ts", "a-8.ts"], 4.0)));
        assert_eq!(parse_playlist("#EXTM3U\n"), None);
    }
}
