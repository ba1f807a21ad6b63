//! Issue 14 section 7: RTP packets are built in the stream's order, so sequence numbers never
//! go back for any reader. A stalled reader (its socket full: it falls behind) and a reader
//! that pauses and resumes at the next keyframe: before, the resumed reader numbered that
//! keyframe first, and the stalled one numbered the frames before it afterwards, so its
//! sequence numbers went back.

mod common;

use std::time::Duration;

use bytes::{Buf, BytesMut};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A raw RTSP connection playing the video track over TCP.
struct Rtsp {
    socket: TcpStream,
    buf: BytesMut,
    cseq: u32,
    url: String,
    session: String,
}

enum Message {
    Response(String),
    Rtp(u8, bytes::Bytes),
}

impl Rtsp {
    async fn play(server: &Server, path: &str, small_buffer: bool) -> Rtsp {
        let socket = TcpSocket::new_v4().unwrap();
        if small_buffer {
            // A reader whose socket takes little: it falls behind as soon as it stops reading.
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let socket = socket.connect(server.rtsp).await.unwrap();
        let url = server.rtsp_url(path);
        let mut c = Rtsp { socket, buf: BytesMut::new(), cseq: 0, url, session: String::new() };
        c.request("DESCRIBE", &c.url.clone(), "Accept: application/sdp\r\n").await;
        let track = format!("{}/trackID=0", c.url);
        let head = c.request("SETUP", &track, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n").await;
        let session = head.lines().find_map(|l| l.strip_prefix("Session: ")).unwrap();
        c.session = session.split(';').next().unwrap().to_owned();
        c.command("PLAY").await;
        c
    }

    async fn command(&mut self, method: &str) -> String {
        let extra = format!("Session: {}\r\n", self.session);
        self.request(method, &self.url.clone(), &extra).await
    }

    /// Sends a request; the response's head (RTP packets before it are dropped).
    async fn request(&mut self, method: &str, url: &str, extra: &str) -> String {
        self.cseq += 1;
        let req = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n{extra}\r\n", self.cseq);
        self.socket.write_all(req.as_bytes()).await.unwrap();
        loop {
            if let Message::Response(head) = self.next().await {
                assert!(head.starts_with("RTSP/1.0 200"), "{req}\n->\n{head}");
                return head;
            }
        }
    }

    async fn next(&mut self) -> Message {
        loop {
            if self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                if self.buf.len() >= 4 + len {
                    let channel = self.buf[1];
                    self.buf.advance(4);
                    return Message::Rtp(channel, self.buf.split_to(len).freeze());
                }
            } else if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let body = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if self.buf.len() >= end + 4 + body {
                    self.buf.advance(end + 4 + body);
                    return Message::Response(head);
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(Duration::from_secs(20), self.socket.read(&mut chunk))
                .await
                .expect("the server sent nothing for 20 s")
                .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sequence numbers of the next `n` video RTP packets.
    async fn sequence_numbers(&mut self, n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if let Message::Rtp(0, p) = self.next().await {
                out.push(u16::from_be_bytes([p[2], p[3]]));
            }
        }
        out
    }
}

fn assert_in_order(name: &str, seqs: &[u16]) {
    for (i, w) in seqs.windows(2).enumerate() {
        let step = w[1].wrapping_sub(w[0]);
        let around = &seqs[i.saturating_sub(3)..(i + 5).min(seqs.len())];
        assert!((1..0x8000).contains(&step), "{name}: sequence number {} after {}: ...{around:?}...", w[1], w[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_and_a_resumed_one_see_sequence_numbers_in_order() {
    let server = Server::with_config("[hub]\nreader_queue_frames = 4096\nreader_write_timeout_ms = 60000\n");
    let _publisher = publish(heavy_flv(), &server.rtmp_url("live/seq"));
    wait_published(&server, "live/seq").await;
    let mut stalled = Rtsp::play(&server, "live/seq", true).await;
    let mut resumed = Rtsp::play(&server, "live/seq", false).await;
    resumed.sequence_numbers(50).await;
    resumed.command("PAUSE").await;
    // Neither reader takes the frames that arrive now: one is paused, the other's socket is
    // full. Then the paused one resumes, at the next keyframe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    resumed.command("PLAY").await;
    let fast = resumed.sequence_numbers(300).await;
    assert_in_order("resumed reader", &fast);
    let slow = stalled.sequence_numbers(3000).await;
    assert_in_order("stalled reader", &slow);
}
