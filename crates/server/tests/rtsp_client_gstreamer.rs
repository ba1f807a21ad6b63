//! Our RTSP client (crates/rtsp) against a third-party camera: GStreamer's RTSP server
//! (gst-rtsp-server 1.22, `tests/support/gst_camera.py`) behind Digest or Basic
//! authentication, with a password holding `@` given percent-encoded in the URL. The client
//! authenticates, plays over TCP and UDP, keeps the session alive and tears it down; a wrong
//! password fails with the camera's answer.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::require_gst;
use ferrocast_rtsp::client::{ClientEvent, ClientMode, ClientSession, ClientTransport};
use ferrocast_rtsp::message::Method;
use ferrocast_rtsp::rtp::RtpPacket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Guard against a hang (the test fails, never stalls the run); not a performance limit.
const GUARD: Duration = Duration::from_secs(30);

struct Camera {
    child: Child,
    port: u16,
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the GStreamer camera for `user`/`password` with `method` (`digest` or `basic`).
fn camera(user: &str, password: &str, method: &str) -> Camera {
    require_gst("x264enc");
    require_gst("rtph264pay");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/gst_camera.py");
    let mut args = vec!["--port", "0", "--mount", "/cam", "--width", "320", "--height", "240", "--no-audio"];
    args.extend(["--user", user, "--password", password]);
    if method == "digest" {
        args.push("--digest");
    }
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("/usr/bin/python3 (python3-gi with gir1.2-gst-rtsp-server-1.0, installed by scripts/test)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("ready ") {
                let _ = tx.send(p.trim().parse::<u16>().ok());
                return;
            }
        }
        let _ = tx.send(None);
    });
    let port = rx.recv_timeout(GUARD).ok().flatten();
    let mut cam = Camera { child, port: 0 };
    cam.port = port.expect("the GStreamer camera did not start (python3-gi and gir1.2-gst-rtsp-server-1.0?)");
    cam
}

struct Driver {
    socket: TcpStream,
    session: ClientSession,
    buf: Vec<u8>,
}

impl Driver {
    async fn connect(port: u16, url: &str, transport: ClientTransport, ports: Vec<(u16, u16)>) -> Driver {
        let socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let session = ClientSession::new(url, ClientMode::Play, transport, ports, Instant::now());
        Driver { socket, session, buf: vec![0; 65536] }
    }

    async fn flush(&mut self) {
        while let Some(b) = self.session.poll_transmit() {
            self.socket.write_all(&b).await.unwrap();
        }
    }

    /// Reads once from the connection into the session (with the guard).
    async fn read(&mut self) {
        self.flush().await;
        let n = tokio::time::timeout(GUARD, self.socket.read(&mut self.buf))
            .await
            .expect("the camera went silent")
            .unwrap();
        assert!(n > 0, "the camera closed the connection");
        self.session.handle_input(Instant::now(), &self.buf[..n]).unwrap();
    }

    /// Events until `Started` or a failure.
    async fn start(&mut self) -> Vec<ClientEvent> {
        let mut seen = Vec::new();
        loop {
            while let Some(e) = self.session.poll_event() {
                let end = matches!(e, ClientEvent::Started | ClientEvent::Failed { .. });
                seen.push(e);
                if end {
                    return seen;
                }
            }
            self.read().await;
        }
    }

    /// Interleaved RTP packets of track 0 until `n` came.
    async fn rtp(&mut self, n: usize) {
        let mut got = 0;
        while got < n {
            while let Some(e) = self.session.poll_event() {
                if let ClientEvent::Rtp { track: 0, packet } = e {
                    RtpPacket::parse(packet).expect("an RTP packet");
                    got += 1;
                }
            }
            if got < n {
                self.read().await;
            }
        }
    }

    /// A keep-alive, read until it is answered (no answer pending: the next deadline is the
    /// next keep-alive, half of GStreamer's 60 s session timeout away, not the 10 s answer
    /// deadline). A 454 would be an error from handle_input.
    async fn keep_alive_answered(&mut self) {
        let refusal = |s: &ClientSession| format!("{:?}", s.last_response());
        let before = refusal(&self.session);
        let now = Instant::now();
        self.session.keep_alive(now);
        while self.session.poll_timeout().is_some_and(|t| t < now + Duration::from_secs(20)) {
            self.read().await;
        }
        assert_eq!(self.session.poll_timeout().map(|t| t >= now + Duration::from_secs(29)), Some(true));
        // Answered 2xx: a refusal (405, 501) would be the session's last non-2xx answer.
        assert_eq!(refusal(&self.session), before, "the keep-alive was refused");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_camera_with_at_in_the_password_over_tcp_and_udp() {
    let cam = camera("cam", "p@ss", "digest");
    let url = format!("rtsp://cam:p%40ss@127.0.0.1:{}/cam", cam.port);

    let mut d = Driver::connect(cam.port, &url, ClientTransport::Tcp, vec![]).await;
    let seen = d.start().await;
    assert!(matches!(seen.last(), Some(ClientEvent::Started)), "{seen:?} {:?}", d.session.failure_text());
    assert_eq!(d.session.auth_scheme(), Some("digest-md5"));
    assert!(
        seen.iter()
            .any(|e| matches!(e, ClientEvent::Transport { track: 0, transport } if transport.interleaved.is_some()))
    );
    d.rtp(50).await;
    d.keep_alive_answered().await;
    d.rtp(10).await;
    d.session.teardown(Instant::now());
    d.flush().await;

    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtcp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ports = vec![(rtp.local_addr().unwrap().port(), rtcp.local_addr().unwrap().port())];
    let mut d = Driver::connect(cam.port, &url, ClientTransport::Udp, ports).await;
    let seen = d.start().await;
    assert!(matches!(seen.last(), Some(ClientEvent::Started)), "{seen:?}");
    assert!(seen.iter().any(|e| matches!(e, ClientEvent::SetUp { track: 0, server_port: Some(_) })), "{seen:?}");
    let mut buf = vec![0; 65536];
    for _ in 0..20 {
        let n = tokio::time::timeout(GUARD, rtp.recv(&mut buf)).await.expect("no RTP over UDP").unwrap();
        RtpPacket::parse(bytes::Bytes::copy_from_slice(&buf[..n])).expect("an RTP packet");
    }
    d.session.teardown(Instant::now());
    d.flush().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_camera_and_a_wrong_password() {
    let cam = camera("viewer", "s3cret", "basic");
    let mut d = Driver::connect(
        cam.port,
        &format!("rtsp://viewer:s3cret@127.0.0.1:{}/cam", cam.port),
        ClientTransport::Tcp,
        vec![],
    )
    .await;
    let seen = d.start().await;
    assert!(matches!(seen.last(), Some(ClientEvent::Started)), "{seen:?}");
    assert_eq!(d.session.auth_scheme(), Some("basic"));
    d.rtp(20).await;

    let mut d = Driver::connect(
        cam.port,
        &format!("rtsp://viewer:wrong@127.0.0.1:{}/cam", cam.port),
        ClientTransport::Tcp,
        vec![],
    )
    .await;
    let seen = d.start().await;
    assert_eq!(seen.last(), Some(&ClientEvent::Failed { method: Method::Describe, status: 401 }));
    assert_eq!(d.session.failure_text().as_deref(), Some("DESCRIBE answered 401 Unauthorized"));
    assert!(!format!("{:?}", d.session).contains("wrong"));
}
