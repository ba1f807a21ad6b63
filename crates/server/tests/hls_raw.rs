//! HLS players on the raw socket (`hls_http`): one keep-alive connection asks for playlists
//! and segments in turn and pipelined, the segments come from memory files with `sendfile`
//! (ranges, HEAD, revalidation), a slow reader gets every byte, and a request that is not an
//! HLS GET hands the connection to hyper, which answers it and what follows.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client connection, read response by response.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    host: String,
}

impl Conn {
    async fn open(server: &Server) -> Conn {
        let s = TcpStream::connect(server.http).await.unwrap();
        Conn { s, buf: Vec::new(), host: server.http.to_string() }
    }

    /// A request head for `path` with `extra` header lines.
    fn request(&self, method: &str, path: &str, extra: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra}\r\n", self.host)
    }

    async fn send(&mut self, text: &str) {
        self.s.write_all(text.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut chunk))
            .await
            .expect("the server answers in time")
            // A reset (the server closing with our bytes unread) ends the connection too.
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next response; its body by Content-Length (none for HEAD and 304).
    async fn response(&mut self, head_only: bool) -> HttpResponse {
        let split = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.fill().await > 0, "closed before a response: {}", String::from_utf8_lossy(&self.buf));
        };
        let headers = String::from_utf8_lossy(&self.buf[..split]).into_owned();
        self.buf.drain(..split + 4);
        let status: u16 = headers.split(' ').nth(1).unwrap().parse().unwrap();
        let mut r = HttpResponse { status, headers, body: Vec::new() };
        let len: usize = if head_only || status == 304 {
            0
        } else {
            r.header("content-length").expect("content-length").parse().unwrap()
        };
        while self.buf.len() < len {
            assert!(self.fill().await > 0, "closed in a body");
        }
        r.body = self.buf.drain(..len).collect();
        r
    }

    /// Whether the server closed the connection (nothing more comes).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }
}

/// The URIs of a media playlist.
fn uris(text: &str) -> Vec<String> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(str::to_owned).collect()
}

/// Memory files the server holds (`/proc/PID/fd` links named `/memfd:ferrocast-hls`).
fn memory_files(server: &Server) -> usize {
    let dir = format!("/proc/{}/fd", server.proc.0.id());
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("memfd:ferrocast-hls"))
        .count()
}

/// Bytes the server read from files (`rchar` of `/proc/PID/io`): `sendfile` counts what it
/// sends there, socket reads (`recv`) do not.
fn file_bytes_read(server: &Server) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", server.proc.0.id())).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

/// A segment's bytes as hyper serves them: a connection whose first request is not HLS.
async fn via_hyper(server: &Server, path: &str) -> HttpResponse {
    let mut c = Conn::open(server).await;
    let req = c.request("OPTIONS", path, "") + &c.request("GET", path, "");
    c.send(&req).await;
    assert_eq!(c.response(true).await.status, 204);
    c.response(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_player_connection_gets_playlists_and_segments_from_memory_files() {
    let server = Server::start();
    let _publisher = publish(heavy_flv(), &server.rtmp_url("live/raw"));
    wait_published(&server, "live/raw").await;

    let mut c = Conn::open(&server).await;
    // The first request waits for the first segment (playlist_wait).
    c.send(&c.request("GET", "/live/raw/media.m3u8", "")).await;
    let playlist = c.response(false).await;
    assert_eq!(playlist.status, 200, "{}", playlist.text());
    assert!(playlist.header("date").is_some(), "{}", playlist.headers);
    assert_eq!(playlist.header("access-control-allow-origin").as_deref(), Some("*"));
    let list = uris(&playlist.text());
    let name = list.last().expect("a segment").clone();
    let path = format!("/live/raw/{name}");

    // The whole segment, on the same connection: from a memory file, the bytes hyper sends.
    let read_before = file_bytes_read(&server);
    c.send(&c.request("GET", &path, "")).await;
    let seg = c.response(false).await;
    let sent_from_files = file_bytes_read(&server) - read_before;
    assert_eq!(seg.status, 200);
    assert_eq!(seg.header("content-type").as_deref(), Some("video/mp2t"));
    assert!(seg.body.len() > 100_188, "an 8 Mbit/s segment: {} bytes", seg.body.len());
    assert_eq!(seg.body.len() % 188, 0);
    assert!(memory_files(&server) >= 1, "no memory file for the segment");
    assert!(
        sent_from_files >= seg.body.len() as u64,
        "the segment's {} bytes were not sent with sendfile ({sent_from_files} bytes read from files)",
        seg.body.len()
    );
    let hyper = via_hyper(&server, &path).await;
    assert_eq!(hyper.status, 200);
    assert!(hyper.body == seg.body, "the raw path and hyper's differ for {name}");
    let etag = seg.header("etag").unwrap();
    assert_eq!(hyper.header("etag").as_deref(), Some(etag.as_str()));

    // Pipelined in one write: a range, HEAD, a revalidation, the playlist, a missing segment.
    let total = seg.body.len();
    let pipelined = c.request("GET", &path, "Range: bytes=188-100187\r\n")
        + &c.request("HEAD", &path, "")
        + &c.request("GET", &path, &format!("If-None-Match: {etag}\r\n"))
        + &c.request("GET", "/live/raw/index.m3u8", "")
        + &c.request("GET", "/live/raw/0-999999.ts", "")
        + &c.request("GET", &path, &format!("Range: bytes={total}-\r\n"));
    c.send(&pipelined).await;
    let part = c.response(false).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some(format!("bytes 188-100187/{total}")));
    assert!(part.body == seg.body[188..100_188], "the range's bytes differ");
    let head = c.response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(total.to_string()));
    let not_modified = c.response(true).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag").as_deref(), Some(etag.as_str()));
    let index = c.response(false).await;
    assert_eq!(index.status, 200);
    assert!(index.text().starts_with("#EXTM3U"), "{}", index.text());
    let missing = c.response(false).await;
    assert_eq!(missing.status, 404);
    let unsatisfiable = c.response(false).await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), Some(format!("bytes */{total}")));

    // Heads with lines ending in LF alone, pipelined: each answered once, in order.
    c.send("GET /live/raw/media.m3u8 HTTP/1.1\nHost: x\n\nHEAD /live/raw/index.m3u8 HTTP/1.1\nHost: x\n\n").await;
    assert_eq!(c.response(false).await.status, 200);
    assert_eq!(c.response(true).await.status, 200);

    // A request that is not HLS goes to hyper mid-connection; HLS requests after it still work.
    c.send(&(c.request("GET", "/metrics", "") + &c.request("GET", &path, "Connection: close\r\n"))).await;
    let metrics = c.response(false).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("ferrocast_"), "{}", metrics.text());
    let again = c.response(false).await;
    assert_eq!(again.status, 200);
    assert!(again.body == seg.body);
    assert!(c.closed().await, "Connection: close was not honoured by hyper");

    // Connection: close on the raw path itself, and HTTP/1.0 keep-alive.
    let mut c = Conn::open(&server).await;
    c.send("GET /live/raw/media.m3u8 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let r = c.response(false).await;
    assert!(r.headers.starts_with("HTTP/1.0 200"), "{}", r.headers);
    assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    c.send(&c.request("GET", &path, "Connection: close\r\n")).await;
    let last = c.response(false).await;
    assert_eq!(last.status, 200);
    assert!(last.body == seg.body);
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    assert!(c.closed().await, "Connection: close was not honoured on the raw path");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_readers_close_and_bad_heads_on_the_raw_path() {
    let server = Server::with_config("[http]\nrequest_timeout_ms = 3000\n");
    let _publisher = publish(heavy_flv(), &server.rtmp_url("live/slow"));
    wait_published(&server, "live/slow").await;
    let list = http_get(&format!("http://{}/live/slow/media.m3u8", server.http), "").await;
    assert_eq!(list.status, 200, "{}", list.text());
    let path = format!("/live/slow/{}", uris(&list.text()).last().unwrap());
    let whole = via_hyper(&server, &path).await;

    // A reader that takes the segment a little at a time, with a small receive buffer, gets
    // all of it (sendfile waits and resumes where the socket's buffer filled).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut c = Conn { s: socket.connect(server.http).await.unwrap(), buf: Vec::new(), host: server.http.to_string() };
    let read_before = file_bytes_read(&server);
    c.send(&c.request("GET", &path, "")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let want = whole.body.len();
    let head_len = loop {
        let n = tokio::time::timeout(Duration::from_secs(20), c.s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    while got.len() < head_len + want {
        let n = tokio::time::timeout(Duration::from_secs(20), c.s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {} of {want} bytes", got.len() - head_len);
        got.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(got[head_len..] == whole.body[..], "a slow reader got other bytes");
    assert!(file_bytes_read(&server) - read_before >= want as u64, "the slow reader was not sent the file");

    // Connection: close with more requests pipelined after it, read slowly: the whole
    // segment arrives before the close (the unread requests must not reset the connection
    // while the segment's end is still queued).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut c = Conn { s: socket.connect(server.http).await.unwrap(), buf: Vec::new(), host: server.http.to_string() };
    let req = c.request("GET", &path, "Connection: close\r\n") + &c.request("GET", &path, "").repeat(20);
    c.send(&req).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = c.response(false).await;
    assert_eq!(last.status, 200);
    assert!(last.body == whole.body, "the segment before a close was cut short");
    assert!(c.closed().await);

    // HTTP/1.0 without keep-alive: one answer, then the server closes.
    let mut c = Conn::open(&server).await;
    c.send("GET /live/slow/media.m3u8 HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.response(false).await.status, 200);
    assert!(c.closed().await, "HTTP/1.0 without keep-alive stays open");

    // A second head over the size cap: hyper's 431, then the connection closes.
    let mut c = Conn::open(&server).await;
    c.send(&c.request("GET", "/live/slow/media.m3u8", "")).await;
    assert_eq!(c.response(false).await.status, 200);
    let big = c.request("GET", "/live/slow/media.m3u8", &format!("X-Big: {}\r\n", "a".repeat(20_000)));
    c.send(&big).await;
    assert_eq!(c.response(false).await.status, 431);
    assert!(c.closed().await);

    // A second head sent in pieces is waited for; one that never ends is closed after the
    // request timeout, the server unharmed.
    let mut c = Conn::open(&server).await;
    c.send(&c.request("GET", "/live/slow/media.m3u8", "")).await;
    assert_eq!(c.response(false).await.status, 200);
    c.send("GET /live/slow/media.m3u8 HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send("st: x\r\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send("\r\n").await;
    assert_eq!(c.response(false).await.status, 200);
    let sent = std::time::Instant::now();
    c.send("GET /live/slow/media.m3u8 HTTP/1.1\r\nHost: x\r\n").await;
    assert!(c.closed().await, "a half head kept the connection open");
    // Waited for, not dropped at once (request_timeout_ms = 3000).
    assert!(sent.elapsed() >= Duration::from_secs(2), "a half head was closed after {:?}", sent.elapsed());

    // A head with no line end at all is read up to the cap, not on and on: hyper's 431.
    let mut c = Conn::open(&server).await;
    c.send(&c.request("GET", "/live/slow/media.m3u8", "")).await;
    assert_eq!(c.response(false).await.status, 200);
    c.send(&format!("GET /live/slow/media.m3u8?{}", "a".repeat(20_000))).await;
    assert_eq!(c.response(false).await.status, 431);
    // Garbage as a second request: hyper's 400.
    let mut c = Conn::open(&server).await;
    c.send(&(c.request("GET", "/live/slow/media.m3u8", "") + "\x16\x03\x01 junk\r\n\r\n")).await;
    assert_eq!(c.response(false).await.status, 200);
    assert_eq!(c.response(false).await.status, 400);
    let after = http_get(&format!("http://{}/live/slow/media.m3u8", server.http), "").await;
    assert_eq!(after.status, 200);
}
