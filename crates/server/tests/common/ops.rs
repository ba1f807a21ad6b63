//! Test support for the operations tests (hooks, reload, the config API, logs): a loopback
//! hook server, a hook server that never answers, the server's config file and log lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Server;

/// A loopback HTTP server that answers 200 to every POST and hands over each body as JSON,
/// in the order they arrived.
pub struct HookServer {
    pub url: String,
    pub events: mpsc::UnboundedReceiver<Value>,
}

impl HookServer {
    pub async fn start() -> HookServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                // One request per connection (the server's client sends one), taken in order:
                // the next connection is accepted only after this one is answered.
                if let Some(body) = read_request(&mut s).await {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    let _ = s.shutdown().await;
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        HookServer { url, events }
    }

    /// The next event (a guard against a hang, not a timing assertion).
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .expect("a hook event in time")
            .expect("hook server running")
    }

    /// Events until one matches `f` (which is returned last).
    pub async fn until(&mut self, f: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            let done = f(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + len].to_vec());
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A hook server that accepts connections, reads nothing and never answers. Returns its URL;
/// it runs until the test's runtime ends.
pub async fn hanging_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hang", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    url
}

/// The config file the server was started with (`--config`, from its command line).
pub fn config_path(server: &Server) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.proc.0.id())).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let at = args.iter().position(|a| a == "--config").expect("started with --config");
    PathBuf::from(&args[at + 1])
}

/// Sends SIGHUP to the server.
pub fn sighup(server: &Server) {
    let ok = std::process::Command::new("kill").args(["-HUP", &server.proc.0.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// The server's log lines (started with `Stdio::piped()` for stderr), read on a thread.
pub fn log_lines(server: &mut Server) -> std::sync::mpsc::Receiver<String> {
    let stderr = server.proc.0.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining so the server never blocks.
                continue;
            }
        }
    });
    rx
}

/// Log lines until one contains `needle` (returned last); a guard stops a hang.
pub fn wait_log(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no log line with {needle:?}: {seen:#?}"));
        let done = line.contains(needle);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// One HTTP request with a JSON body (`PATCH`, `GET`...): status and body.
pub async fn http_json(method: &str, url: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = crate::common::http_request(method, url, body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Reads an HTTP-FLV stream in the background, counting its bytes; the count stops growing
/// when the connection ends (`ended` is then set).
pub struct FlvReader {
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlvReader {
    pub async fn start(url: &str) -> FlvReader {
        use std::sync::atomic::Ordering;
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut s = TcpStream::connect(host).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, e) = (bytes.clone(), ended.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        b.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            e.store(true, Ordering::Relaxed);
        });
        FlvReader { bytes, ended }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until more than `n` bytes arrived (a guard stops a hang).
    pub async fn wait_past(&self, n: u64) {
        for _ in 0..600 {
            if self.bytes() > n {
                return;
            }
            assert!(!self.ended.load(std::sync::atomic::Ordering::Relaxed), "the FLV reader was disconnected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the FLV reader got no more than {n} bytes");
    }
}
