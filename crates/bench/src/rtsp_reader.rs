//! An RTSP reader: DESCRIBE, SETUP, PLAY with our own client session, RTP over TCP
//! (interleaved) or UDP. Only RTP headers are read: the video packets' timestamps and marker
//! bits give frame boundaries, and the first packet says whether the stream starts on a
//! keyframe.
//!
//! RTP timestamps are the server's, with a random offset. They are mapped to the publisher's
//! millisecond timeline through the first frame: a server with a GOP cache starts a reader at
//! the newest keyframe, whose publisher timestamp the bench knows.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ferrocast_rtsp::client::{ClientEvent, ClientMode, ClientSession, ClientTransport};
use ferrocast_rtsp::rtp::RtpPacket;
use ferrocast_rtsp::sdp::{self, Sdp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::{Clock as TimeKind, ReaderState, Shared, on_video, rate_limit, read_buffer, throttle};

/// Maps video RTP timestamps (90 kHz, wrapping) to publisher milliseconds.
struct Clock {
    /// (first RTP timestamp, its publisher ms)
    base: Option<(u32, i64)>,
}

impl Clock {
    fn ms(&mut self, rtp: u32, shared: &Shared) -> i64 {
        let (t0, ms0) = *self.base.get_or_insert_with(|| (rtp, shared.sent.last_keyframe_ms.load(Ordering::Relaxed)));
        ms0 + i64::from(rtp.wrapping_sub(t0) as i32) / 90
    }
}

/// The video track of a described session: its index among the tracks the client sets up
/// (the interleaved channel pair it arrives on), whether it is H.265, and its clock rate.
pub(crate) fn video_track(sdp: &Sdp) -> Option<(usize, bool, u32)> {
    sdp.media
        .iter()
        .filter(|m| sdp::track_info(m).is_some())
        .enumerate()
        .find(|(_, m)| m.kind == "video")
        .map(|(i, m)| (i, m.encoding == "H265", m.clock_rate))
}

/// Connects to the host of an `rtsp://HOST:PORT/...` URL, Nagle off (as players do: each
/// request leaves at once).
pub(crate) async fn connect(url: &str) -> anyhow::Result<TcpStream> {
    let rest = url.strip_prefix("rtsp://").context("RTSP URLs start with rtsp://")?;
    let host = rest.split(['/', '?']).next().context("no host")?;
    let socket = TcpStream::connect(host).await.with_context(|| format!("connecting to {host}"))?;
    let _ = socket.set_nodelay(true);
    Ok(socket)
}

/// True if an H.264 (or H.265) RTP payload starts a keyframe: IDR/IRAP, or parameter sets
/// first.
pub(crate) fn starts_keyframe(payload: &[u8], h265: bool) -> bool {
    let Some(&b0) = payload.first() else { return false };
    if h265 {
        // Type in bits 1-6 of the first byte; IRAP 16-21, VPS/SPS/PPS 32-34; AP 48, FU 49.
        let irap_or_sets = |t: u8| matches!(t, 16..=21 | 32..=34);
        return match (b0 >> 1) & 0x3f {
            48 => payload.get(4).is_some_and(|b| irap_or_sets((b >> 1) & 0x3f)),
            49 => payload.get(2).is_some_and(|b| irap_or_sets(b & 0x3f)),
            t => irap_or_sets(t),
        };
    }
    let key = |t: u8| matches!(t, 5 | 7 | 8);
    match b0 & 0x1f {
        24 => payload.get(3).is_some_and(|b| key(b & 0x1f)), // STAP-A: first NAL
        28 => payload.get(1).is_some_and(|b| key(b & 0x1f)), // FU-A
        t => key(t),
    }
}

/// Per-reader frame tracking from RTP packets of the video track.
struct Frames<'a> {
    state: &'a ReaderState,
    shared: &'a Shared,
    probe: bool,
    started: Instant,
    clock: Clock,
    first: bool,
    frame_key: Option<bool>,
    h265: bool,
}

impl Frames<'_> {
    fn packet(&mut self, data: Bytes) {
        let Ok(p) = RtpPacket::parse(data) else { return };
        let h265 = self.h265;
        let key = *self.frame_key.get_or_insert_with(|| starts_keyframe(&p.payload, h265));
        if p.marker {
            self.frame_key = None;
            let ms = self.clock.ms(p.timestamp, self.shared);
            let ts = ms.max(0) as u32;
            on_video(
                self.state,
                self.shared,
                self.probe,
                self.started,
                ts,
                key,
                &mut self.first,
                TimeKind::Presentation,
            );
        }
    }
}

/// Plays `url` until the connection ends.
pub async fn play(
    url: &str,
    udp: bool,
    state: &Arc<ReaderState>,
    shared: &Shared,
    probe: bool,
    limit: Option<u64>,
    started: Instant,
) -> anyhow::Result<()> {
    let mut socket = connect(url).await?;
    let mut sockets = Vec::new();
    let mut ports = Vec::new();
    if udp {
        for _ in 0..2 {
            let (rtp, rtcp) = udp_pair(socket.local_addr()?.ip()).await?;
            if shared.udp_gro {
                nix::sys::socket::setsockopt(&rtp, nix::sys::socket::sockopt::UdpGroSegment, &true)
                    .context("UDP_GRO")?;
            }
            ports.push((rtp.local_addr()?.port(), rtcp.local_addr()?.port()));
            sockets.push((rtp, rtcp));
        }
    }
    let transport = if udp { ClientTransport::Udp } else { ClientTransport::Tcp };
    let mut session = ClientSession::new(url, ClientMode::Play, transport, ports, Instant::now());
    state.connected.store(true, Ordering::Relaxed);
    let mut frames = Frames {
        state,
        shared,
        probe,
        started,
        clock: Clock { base: None },
        first: true,
        frame_key: None,
        h265: false,
    };
    let mut buf = vec![0u8; read_buffer(state, limit)];
    let mut total = 0u64;
    let mut video_index = None;
    // Until PLAY is answered, and for TCP throughout: the RTSP connection.
    loop {
        while let Some(b) = session.poll_transmit() {
            socket.write_all(&b).await?;
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Described(sdp) => {
                    let video = video_track(&sdp);
                    video_index = video.map(|v| v.0);
                    frames.h265 = video.is_some_and(|v| v.1);
                }
                ClientEvent::Rtp { track, packet } if Some(track) == video_index => frames.packet(packet),
                ClientEvent::Failed { method, status } => anyhow::bail!("{method:?} refused: {status}"),
                ClientEvent::Started if udp => {
                    let track = video_index.context("no video track")?;
                    return play_udp(socket, sockets, track, frames, limit).await;
                }
                _ => {}
            }
        }
        throttle(state, limit, total, started).await;
        let n = socket.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "server closed the connection");
        total += n as u64;
        state.bytes.fetch_add(n as u64, Ordering::Relaxed);
        session.handle_input(Instant::now(), &buf[..n])?;
    }
}

/// Two UDP sockets on consecutive ports (RTP even, RTCP odd), as RTSP expects, on `ip`: the
/// address the server sees the control connection come from, which is where it sends RTP.
async fn udp_pair(ip: IpAddr) -> anyhow::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..100 {
        let rtp = UdpSocket::bind((ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 == 1 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((ip, port + 1)).await {
            return Ok((rtp, rtcp));
        }
    }
    anyhow::bail!("no free UDP port pair")
}

async fn play_udp(
    mut control: TcpStream,
    sockets: Vec<(UdpSocket, UdpSocket)>,
    video: usize,
    mut frames: Frames<'_>,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let (video_rtp, _) = sockets.get(video).context("no socket for the video track")?;
    let other = sockets.iter().enumerate().find(|(i, _)| *i != video).map(|(_, s)| &s.0);
    let mut buf = vec![0u8; 65536];
    let mut sink = vec![0u8; 65536];
    let mut rtsp = [0u8; 4096];
    let mut total = 0u64;
    let started = frames.started;
    loop {
        // Datagrams are read as they come: a reader that slept would lose them.
        rate_limit(limit, total, started).await;
        tokio::select! {
            r = recv_segments(video_rtp, &mut buf) => {
                let (n, segment) = r?;
                total += n as u64;
                frames.state.bytes.fetch_add(n as u64, Ordering::Relaxed);
                for packet in buf[..n].chunks(segment.unwrap_or(n).max(1)) {
                    frames.packet(Bytes::copy_from_slice(packet));
                }
            }
            r = async { other.expect("guarded").recv(&mut sink).await }, if other.is_some() => {
                let n = r?;
                total += n as u64;
                frames.state.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            r = control.read(&mut rtsp) => {
                anyhow::ensure!(r? > 0, "server closed the RTSP connection");
            }
        }
    }
}

/// Receives a datagram, or (with `UDP_GRO` on) a run of datagrams the kernel kept together:
/// its length, and the datagrams' size when it is a run (the last may be shorter).
async fn recv_segments(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, Option<usize>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd;
    socket
        .async_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            let mut cmsg = nix::cmsg_space!(i32);
            let msg = recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)?;
            let segment = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
                ControlMessageOwned::UdpGroSegments(n) => usize::try_from(n).ok(),
                _ => None,
            });
            Ok((msg.bytes, segment))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_segmented_send_arrives_whole_with_udp_gro() {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg, setsockopt, sockopt};
        use std::os::fd::AsRawFd;
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        setsockopt(&rx, sockopt::UdpGroSegment, &true).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let packets = [vec![1u8; 1200], vec![2u8; 1200], vec![3u8; 500]];
        let iov: Vec<_> = packets.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let dest = SockaddrStorage::from(rx.local_addr().unwrap());
        let segment = 1200u16;
        sendmsg(tx.as_raw_fd(), &iov, &[ControlMessage::UdpGsoSegments(&segment)], MsgFlags::empty(), Some(&dest))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, size) = tokio::time::timeout(std::time::Duration::from_secs(5), recv_segments(&rx, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, size), (2900, Some(1200)), "one receive for the run, with its datagram size");
        let got: Vec<Vec<u8>> = buf[..n].chunks(1200).map(<[u8]>::to_vec).collect();
        assert_eq!(got, packets, "split back into the datagrams sent");
    }

    #[test]
    fn keyframe_starts() {
        assert!(starts_keyframe(&[0x67, 0x42], false), "H.264 SPS");
        assert!(starts_keyframe(&[0x7c, 0x85], false), "H.264 FU-A start of an IDR");
        assert!(!starts_keyframe(&[0x7c, 0x81], false), "H.264 FU-A of a non-IDR slice");
        assert!(starts_keyframe(&[0x78, 0x00, 0x10, 0x67], false), "H.264 STAP-A with an SPS");
        assert!(!starts_keyframe(&[0x41, 0x9a], false), "H.264 non-IDR slice");
        assert!(starts_keyframe(&[0x40, 0x01], true), "H.265 VPS");
        assert!(starts_keyframe(&[0x62, 0x01, 0x93], true), "H.265 FU of an IDR_W_RADL");
        assert!(!starts_keyframe(&[0x02, 0x01], true), "H.265 TRAIL_R");
    }
}
