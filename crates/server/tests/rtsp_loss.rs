//! Packet loss on RTSP over UDP. The kernel here has no netem, so the test puts a lossy relay
//! of its own between ffmpeg (publishing over UDP) and the server: an RTSP proxy that rewrites
//! the ports in each SETUP so that RTP and RTCP flow through relay sockets, which drop bursts
//! of video packets. The server must drop what a loss broke and resume at the next keyframe:
//! an RTMP reader then decodes without a single error while the loss goes on.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// One relayed RTP/RTCP port pair: ffmpeg's ports, ours, the server's.
struct Pair {
    client: (u16, u16),
    relay: (Arc<UdpSocket>, Arc<UdpSocket>),
    /// The track's place in SETUP order; track 0 (video, as ffmpeg sets it up first) is lossy.
    index: usize,
}

#[derive(Default)]
struct Relay {
    pending: Mutex<Vec<Pair>>,
    setups: AtomicUsize,
    dropped: AtomicUsize,
    forwarded: AtomicUsize,
}

/// `client_port=A-B` (or `server_port=`) in `text`: the numbers and the byte range they span.
fn ports(text: &str, key: &str) -> Option<((u16, u16), std::ops::Range<usize>)> {
    let start = text.find(key)? + key.len();
    let end = start + text[start..].find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(text.len() - start);
    let (a, b) = text[start..end].split_once('-')?;
    Some(((a.parse().ok()?, b.parse().ok()?), start..end))
}

impl Relay {
    /// ffmpeg -> server: SETUP's client ports become a relay pair.
    async fn rewrite_request(self: &Arc<Self>, text: String) -> String {
        let Some(((a, b), range)) = ports(&text, "client_port=") else { return text };
        let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let port = rtp.local_addr().unwrap().port();
        let rtcp = Arc::new(UdpSocket::bind(("127.0.0.1", port + 1)).await.expect("odd port next to the relay's"));
        let index = self.setups.fetch_add(1, Ordering::SeqCst);
        self.pending.lock().unwrap().push(Pair { client: (a, b), relay: (rtp, rtcp), index });
        format!("{}{}-{}{}", &text[..range.start], port, port + 1, &text[range.end..])
    }

    /// server -> ffmpeg: the server's ports become the relay's, the client ports ffmpeg's own;
    /// the relay starts forwarding.
    fn rewrite_response(self: &Arc<Self>, text: String) -> String {
        let Some(((s_rtp, s_rtcp), range)) = ports(&text, "server_port=") else { return text };
        let Some(pair) = self.pending.lock().unwrap().pop() else { return text };
        let relay_port = pair.relay.0.local_addr().unwrap().port();
        let mut out = format!("{}{}-{}{}", &text[..range.start], relay_port, relay_port + 1, &text[range.end..]);
        if let Some((_, r)) = ports(&out, "client_port=") {
            out = format!("{}{}-{}{}", &out[..r.start], pair.client.0, pair.client.1, &out[r.end..]);
        }
        let server_rtp = SocketAddr::from(([127, 0, 0, 1], s_rtp));
        let server_rtcp = SocketAddr::from(([127, 0, 0, 1], s_rtcp));
        let client_rtcp = SocketAddr::from(([127, 0, 0, 1], pair.client.1));
        let me = self.clone();
        let lossy = pair.index == 0;
        let rtp = pair.relay.0.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut n_packets = 0usize;
            while let Ok((n, _)) = rtp.recv_from(&mut buf).await {
                n_packets += 1;
                // Bursts of 3 lost packets, every 150th packet of the video track.
                if lossy && n_packets > 60 && n_packets % 150 < 3 {
                    me.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                me.forwarded.fetch_add(1, Ordering::Relaxed);
                let _ = rtp.send_to(&buf[..n], server_rtp).await;
            }
        });
        let rtcp = pair.relay.1.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = rtcp.recv_from(&mut buf).await {
                let to = if from == server_rtcp { client_rtcp } else { server_rtcp };
                let _ = rtcp.send_to(&buf[..n], to).await;
            }
        });
        out
    }
}

/// The RTSP proxy: one connection at a time, text rewritten in both directions.
async fn run_proxy(listener: TcpListener, server: SocketAddr, relay: Arc<Relay>) {
    while let Ok((client, _)) = listener.accept().await {
        let upstream = TcpStream::connect(server).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = upstream.into_split();
        let up = relay.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = cr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let text = up.rewrite_request(String::from_utf8_lossy(&buf[..n]).into_owned()).await;
                if sw.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let down = relay.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let text = down.rewrite_response(String::from_utf8_lossy(&buf[..n]).into_owned());
                if cw.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_loss_from_a_publisher_recovers_at_the_next_keyframe() {
    require("ffmpeg");
    let server = Server::start();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("rtsp://{}/live/lossy", proxy.local_addr().unwrap());
    let relay = Arc::new(Relay::default());
    tokio::spawn(run_proxy(proxy, server.rtsp, relay.clone()));
    let _publisher = publish_rtsp(test_flv(), &proxy_url, "udp");
    wait_published(&server, "live/lossy").await;

    // A decoding reader over RTMP for 8 s: every picture it gets must decode cleanly.
    let url = server.rtmp_url("live/lossy");
    let decoded = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-rw_timeout", "15000000", "-i", &url, "-t", "8", "-map", "0:v"])
            .args(["-f", "framemd5", "-"])
            .output()
            .expect("ffmpeg")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&decoded.stderr);
    let frames = String::from_utf8_lossy(&decoded.stdout).lines().filter(|l| !l.starts_with('#')).count();
    let dropped = relay.dropped.load(Ordering::Relaxed);
    let forwarded = relay.forwarded.load(Ordering::Relaxed);
    eprintln!("relay: {dropped} video packets dropped, {forwarded} forwarded; reader decoded {frames} frames");
    assert!(dropped >= 6, "the relay dropped only {dropped} packets: the loss never happened");
    assert!(stderr.trim().is_empty(), "decode errors after loss: {stderr}");
    // 8 s at 30 fps with a few GOPs cut short by the loss: most frames still arrive.
    assert!(frames >= 100, "only {frames} frames decoded: video did not recover after loss");
}
