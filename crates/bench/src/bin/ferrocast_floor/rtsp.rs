//! The RTSP side of `ferrocast-floor`: what RTSP fan-out costs the kernel alone, over TCP
//! (interleaved) and UDP (per packet or segmented).
//!
//! Control: one thread runs a small tokio runtime with a task per connection, driving the
//! project's sans-IO server session (OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, GET_PARAMETER,
//! SET_PARAMETER, TEARDOWN, any path; ANNOUNCE is refused). DESCRIBE answers the SDP
//! ferrocast would give the file's tracks ([`sdp::describe`]). A PLAY hands the connection to
//! the writer thread ([`Msg::Join`]); from then on the writer writes everything that goes on
//! that connection (answers to later requests come as [`Msg::Reply`]), so nothing is
//! interleaved inside a frame; a PAUSE or TEARDOWN takes the connection back once the writer
//! has let go of it ([`Msg::Leave`]). The session's timers are not driven after PLAY: a reader that
//! only reads (as ferrocast-bench's does) is never timed out.
//!
//! Media: the writer thread packetizes each frame once with ferrocast's own packetizers
//! ([`Packetizer`], `--mtu`, one AAC frame per packet) and sends the same packets to every
//! reader: TCP, one `write` of the frame's interleaved packets per reader (built once per
//! channel); UDP, from one server RTP socket for every reader and track (as ferrocast's
//! shared `server_port`), one `sendto` per packet, or with GSO one `sendmsg` per run of
//! equal-sized packets (the last may be shorter). Readers start at the next video keyframe.
//! Every [`REPORT_INTERVAL`] each reader gets a sender report per track (from the one RTCP
//! socket over UDP). Sequence numbers and SSRCs are the stream's, the same for every reader.

use std::io::{IoSlice, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use ferrocast_media::{Frame, TrackKind, Tracks};
use ferrocast_rtsp::codec::{self, Packetizer};
use ferrocast_rtsp::rtcp;
use ferrocast_rtsp::rtp::gso_run_len;
use ferrocast_rtsp::sdp;
use ferrocast_rtsp::server::{Secrets, ServerConfig, ServerEvent, ServerSession};
use ferrocast_rtsp::transport::Lower;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
use tokio::io::unix::AsyncFd;

/// Interval of the sender reports (ferrocast's `ServerConfig::rtcp_interval`).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Largest read of RTSP requests; the session caps message sizes itself.
const READ_BUF: usize = 16 * 1024;

/// From a connection's control task to the writer thread.
pub enum Msg {
    /// PLAY was answered: the reader starts at the next video keyframe.
    Join(Box<Reader>),
    /// Bytes to write on a joined reader's connection, between frames.
    Reply(u64, Bytes),
    /// PAUSE, TEARDOWN or the connection's end: no more media. The writer answers on the
    /// channel once it has let go of the connection: the control task writes on it again
    /// only then.
    Leave(u64, Option<tokio::sync::oneshot::Sender<()>>),
}

/// Where one track of a reader goes.
#[derive(Clone)]
enum Dest {
    /// Interleaved channels.
    Tcp { rtp: u8, rtcp: u8 },
    /// The client's ports (RTP as a socket address for `sendmsg` too).
    Udp { rtp: SocketAddr, rtp_addr: SockaddrStorage, rtcp: SocketAddr },
}

/// A playing reader, as the writer thread holds it.
pub struct Reader {
    id: u64,
    /// The RTSP connection (blocking writes; the control task reads a clone of it).
    socket: TcpStream,
    /// Video, audio.
    tracks: [Option<Dest>; 2],
}

/// What the control tasks share.
struct Ctx {
    sdp: String,
    /// Which of video (0) and audio (1) the SDP describes.
    described: [bool; 2],
    server_ports: (u16, u16),
    nodelay: bool,
    tx: mpsc::Sender<Msg>,
    next_id: AtomicU64,
}

/// The writer thread's side: packetizers, sockets and readers.
pub struct Rtsp {
    /// Video, audio.
    packetizers: [Option<Packetizer>; 2],
    rtp: UdpSocket,
    rtcp: UdpSocket,
    gso: bool,
    readers: Vec<Reader>,
    /// Joined, waiting for a keyframe.
    waiting: Vec<Reader>,
    rx: mpsc::Receiver<Msg>,
    next_report: Instant,
    /// Per-frame scratch: the packets, and the interleaved buffer of each channel used.
    packets: Vec<Bytes>,
    interleaved: Vec<(u8, Bytes)>,
}

/// A number for SSRCs and session ids (a floor: unpredictable enough, not a CSPRNG).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), Instant::now()))
}

fn slot(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

/// Binds an even RTP port and the RTCP port after it (RFC 3550 11) on `ip`.
fn bind_udp_pair(ip: std::net::IpAddr) -> anyhow::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..64 {
        let rtp = UdpSocket::bind((ip, 0))?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((ip, port + 1)) {
            return Ok((rtp, rtcp));
        }
    }
    anyhow::bail!("no free pair of UDP ports on {ip}")
}

/// Starts the RTSP listener and its control thread; the writer thread drives the result.
pub fn start(listen: SocketAddr, tracks: &Tracks, mtu: usize, nodelay: bool, gso: bool) -> anyhow::Result<Rtsp> {
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("binding RTSP to {listen}"))?;
    let local = listener.local_addr()?;
    let (rtp, rtcp) = bind_udp_pair(local.ip())?;
    // Sends that do not fit are dropped, as ferrocast's `try_send_to` does.
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    let server_ports = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
    let (sdp, ids) = sdp::describe(tracks, &local.ip().to_string(), "0.0.0.0");
    anyhow::ensure!(!ids.is_empty(), "the file has no track RTSP can carry");
    let mut described = [false; 2];
    let mut packetizers = [None, None];
    for (id, track) in &ids {
        let r = random_u64();
        let p = Packetizer::new(track, sdp::payload_type(track), r as u32, (r >> 32) as u16, (r >> 48) as u32, mtu)
            .context("no packetizer for a track")?;
        let i = slot(track.kind());
        anyhow::ensure!(usize::from(*id) == i, "trackID {id} is not the {:?} slot", track.kind());
        described[i] = true;
        packetizers[i] = Some(p);
    }
    let (tx, rx) = mpsc::channel();
    let ctx = Arc::new(Ctx { sdp, described, server_ports, nodelay, tx, next_id: AtomicU64::new(0) });
    println!("ferrocast-floor: rtsp listening on {local} (RTP/RTCP ports {}-{})", server_ports.0, server_ports.1);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(accept(listener, ctx));
    });
    Ok(Rtsp {
        packetizers,
        rtp,
        rtcp,
        gso,
        readers: Vec::new(),
        waiting: Vec::new(),
        rx,
        next_report: Instant::now() + REPORT_INTERVAL,
        packets: Vec::new(),
        interleaved: Vec::new(),
    })
}

async fn accept(listener: std::net::TcpListener, ctx: Arc<Ctx>) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    loop {
        let Ok((socket, peer)) = listener.accept().await else { continue };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = control(socket, peer, ctx).await {
                let reset = e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
                });
                if !reset {
                    eprintln!("ferrocast-floor: rtsp connection from {peer}: {e:#}");
                }
            }
        });
    }
}

/// Receives what the client sent; 0 at its end. The socket is in blocking mode for the
/// writer thread's writes: reads here never block (`MSG_DONTWAIT`).
async fn recv(fd: &AsyncFd<TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        let r = guard.try_io(|s| {
            nix::sys::socket::recv(s.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(std::io::Error::from)
        });
        if let Ok(r) = r {
            return r;
        }
    }
}

/// Writes an answer before PLAY (nothing else writes on the connection then). The send
/// buffer of a connection that only sent requests has room; a client that let it fill is
/// dropped rather than blocking the other connections.
fn send_now(socket: &TcpStream, mut data: &[u8]) -> anyhow::Result<()> {
    while !data.is_empty() {
        let n = nix::sys::socket::send(socket.as_raw_fd(), data, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
            .map_err(std::io::Error::from)?;
        data = &data[n..];
    }
    Ok(())
}

/// One RTSP connection, until it ends.
async fn control(socket: tokio::net::TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    socket.set_nodelay(ctx.nodelay)?;
    // Readiness for a blocking socket (tokio's TcpStream refuses one), read with
    // MSG_DONTWAIT. `new` is deprecated for types whose fd it does not own; the AsyncFd owns
    // this TcpStream (its own fd, a dup of the writer's) and nothing else closes it.
    #[allow(deprecated)]
    let read = AsyncFd::new(socket.try_clone()?)?;
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let config = ServerConfig { server_ports: ctx.server_ports, rtcp_interval: REPORT_INTERVAL, ..Default::default() };
    let secrets = Secrets { session_id: random_u64(), nonce: random_u64() };
    let mut session = ServerSession::new(config, secrets, Instant::now());
    let mut tracks: [Option<Dest>; 2] = [None, None];
    let mut joined = false;
    let mut buf = vec![0u8; READ_BUF];
    let result = async {
        loop {
            let mut join = false;
            let mut leave = false;
            while let Some(ev) = session.poll_event() {
                match ev {
                    ServerEvent::Describe { .. } => session.accept_describe(&ctx.sdp)?,
                    // A floor only plays.
                    ServerEvent::Announce { .. } => session.reject(405)?,
                    ServerEvent::Setup { track, transport, .. } => {
                        let only = match ctx.described {
                            [true, false] => Some(0),
                            [false, true] => Some(1),
                            _ => None,
                        };
                        // The aggregate URL of a two-track stream (459) or a track not described.
                        let Some(track) = track.or(only).filter(|t| ctx.described.get(*t) == Some(&true)) else {
                            session.reject(if track.is_none() { 459 } else { 404 })?;
                            continue;
                        };
                        if transport.multicast {
                            session.reject(461)?;
                            continue;
                        }
                        let Some(reply) = session.accept_setup(track, None)? else { continue };
                        tracks[track] = Some(match reply.lower {
                            Lower::Tcp => {
                                let (rtp, rtcp) = reply.interleaved.unwrap_or((0, 1));
                                Dest::Tcp { rtp, rtcp }
                            }
                            Lower::Udp => {
                                let (a, b) = reply.client_port.unwrap_or((0, 0));
                                let rtp = SocketAddr::new(peer.ip(), a);
                                Dest::Udp { rtp, rtp_addr: SockaddrStorage::from(rtp), rtcp: SocketAddr::new(peer.ip(), b) }
                            }
                        });
                    }
                    ServerEvent::Play { .. } => {
                        session.accept_play("npt=now-", &[])?;
                        join = !joined;
                    }
                    ServerEvent::Pause => leave = joined,
                    ServerEvent::Teardown => {
                        leave = joined;
                        tracks = [None, None];
                    }
                    _ => {}
                }
            }
            while let Some(b) = session.poll_transmit() {
                if joined {
                    let _ = ctx.tx.send(Msg::Reply(id, b));
                } else {
                    send_now(&socket, &b)?;
                }
            }
            // The PLAY answer went first; media follows from the writer.
            if join {
                let reader = Reader { id, socket: socket.try_clone()?, tracks: tracks.clone() };
                let _ = ctx.tx.send(Msg::Join(Box::new(reader)));
                joined = true;
            }
            // The answer to the PAUSE or TEARDOWN went (through the writer) first.
            if leave {
                let (done, left) = tokio::sync::oneshot::channel();
                let _ = ctx.tx.send(Msg::Leave(id, Some(done)));
                let _ = left.await;
                joined = false;
            }
            if session.is_closing() {
                return Ok(());
            }
            let deadline = (!joined).then(|| session.poll_timeout().map(|(_, at)| at)).flatten();
            tokio::select! {
                r = recv(&read, &mut buf) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    session.handle_input(Instant::now(), &buf[..n])?;
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded").into()).await }, if deadline.is_some() => {
                    session.handle_timeout(Instant::now())?;
                }
            }
        }
    }
    .await;
    if joined {
        let _ = ctx.tx.send(Msg::Leave(id, None));
    }
    result
}

impl Rtsp {
    /// Handles what the control tasks sent: joins, answers to write, leaves.
    pub fn poll_control(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::Join(r) => self.waiting.push(*r),
                Msg::Reply(id, b) => {
                    for list in [&mut self.readers, &mut self.waiting] {
                        list.retain_mut(|r| r.id != id || r.socket.write_all(&b).is_ok());
                    }
                }
                Msg::Leave(id, done) => {
                    self.readers.retain(|r| r.id != id);
                    self.waiting.retain(|r| r.id != id);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            }
        }
    }

    /// Sends a frame (`dts`, `pts` in ms) to every reader: packetized once, the same packets
    /// for all.
    pub fn frame(&mut self, kind: TrackKind, dts: i64, pts: i64, keyframe: bool, data: &Bytes) {
        let i = slot(kind);
        if kind == TrackKind::Video && keyframe {
            self.readers.append(&mut self.waiting);
        }
        let Some(p) = self.packetizers[i].as_mut() else { return };
        let built = p.packetize(&Frame::new(kind, dts, pts, keyframe, data.clone()));
        if Instant::now() >= self.next_report {
            self.next_report = Instant::now() + REPORT_INTERVAL;
            self.reports(pts);
        }
        if self.readers.is_empty() {
            return;
        }
        self.packets.clear();
        self.packets.extend(codec::packets(&built));
        self.interleaved.clear();
        let iov: Vec<IoSlice<'_>> = self.packets.iter().map(|p| IoSlice::new(p)).collect();
        let runs = if self.gso { runs(&self.packets) } else { Vec::new() };
        let (packets, interleaved, rtp, gso) = (&self.packets, &mut self.interleaved, &self.rtp, &mut self.gso);
        self.readers.retain_mut(|r| match &r.tracks[i] {
            None => true,
            Some(Dest::Tcp { rtp: channel, .. }) => {
                let b = interleaved_for(interleaved, packets, *channel);
                r.socket.write_all(&b).is_ok()
            }
            Some(Dest::Udp { rtp: to, rtp_addr, .. }) => {
                if *gso {
                    send_runs(rtp, *to, rtp_addr, packets, &iov, &runs, gso);
                } else {
                    for p in packets {
                        // A full buffer drops the datagram, as the network would.
                        let _ = rtp.send_to(p, to);
                    }
                }
                true
            }
        });
    }

    /// A sender report per track to every reader, at media time `pts` ms.
    fn reports(&mut self, pts: i64) {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let ntp = rtcp::ntp_from_unix_micros(unix as u64);
        for (i, p) in self.packetizers.iter().enumerate() {
            let Some(p) = p else { continue };
            let sr = rtcp::sender_report(p.ssrc(), ntp, p.rtp_time(pts), p.packets, p.octets, "ferrocast-floor");
            let (rtcp_socket, interleaved, sr) = (&self.rtcp, &mut self.interleaved, [sr]);
            interleaved.clear();
            self.readers.retain_mut(|r| match &r.tracks[i] {
                None => true,
                Some(Dest::Tcp { rtcp, .. }) => {
                    let b = interleaved_for(interleaved, &sr, *rtcp);
                    r.socket.write_all(&b).is_ok()
                }
                Some(Dest::Udp { rtcp, .. }) => {
                    let _ = rtcp_socket.send_to(&sr[0], rtcp);
                    true
                }
            });
        }
    }
}

/// The frame's packets with their interleaved headers on `channel`, in one buffer: built on
/// the first reader of that channel, shared by the others.
fn interleaved_for(cache: &mut Vec<(u8, Bytes)>, packets: &[Bytes], channel: u8) -> Bytes {
    if let Some((_, b)) = cache.iter().find(|(c, _)| *c == channel) {
        return b.clone();
    }
    let mut b = BytesMut::with_capacity(packets.iter().map(|p| p.len() + 4).sum());
    for p in packets {
        b.put_u8(b'$');
        b.put_u8(channel);
        b.put_u16(p.len() as u16);
        b.put_slice(p);
    }
    let b = b.freeze();
    cache.push((channel, b.clone()));
    b
}

/// The runs one segmented send each can carry, as (first packet, count): packets of the
/// first one's size, the last of a run possibly shorter (ferrocast's own rule,
/// [`gso_run_len`]).
fn runs(packets: &[Bytes]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut first = 0;
    while first < packets.len() {
        let n = gso_run_len(&packets[first..]);
        out.push((first, n));
        first += n;
    }
    out
}

/// One `sendmsg` with `UDP_SEGMENT` per run (a run of one packet: `sendto`). A kernel that
/// refuses segmented sends turns `gso` off: per packet from then on.
fn send_runs(
    socket: &UdpSocket,
    to: SocketAddr,
    addr: &SockaddrStorage,
    packets: &[Bytes],
    iov: &[IoSlice<'_>],
    runs: &[(usize, usize)],
    gso: &mut bool,
) {
    for &(first, n) in runs {
        if n == 1 || !*gso {
            for p in &packets[first..first + n] {
                let _ = socket.send_to(p, to);
            }
            continue;
        }
        let segment = packets[first].len() as u16;
        let r = sendmsg(
            socket.as_raw_fd(),
            &iov[first..first + n],
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
            Some(addr),
        );
        if let Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) = r {
            eprintln!("ferrocast-floor: UDP segmentation offload refused by the kernel: sending packet by packet");
            *gso = false;
            for p in &packets[first..first + n] {
                let _ = socket.send_to(p, to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_rtsp::rtp::GSO_MAX_SEGMENTS as MAX_SEGMENTS;

    fn sizes(s: &[usize]) -> Vec<Bytes> {
        s.iter().map(|&n| Bytes::from(vec![0u8; n])).collect()
    }

    #[test]
    fn runs_are_equal_sizes_with_a_shorter_last() {
        assert_eq!(runs(&sizes(&[1400, 1400, 1400, 700, 1400])), [(0, 4), (4, 1)]);
        assert_eq!(runs(&sizes(&[20, 8, 1400, 1400])), [(0, 2), (2, 2)]);
        assert_eq!(runs(&sizes(&[8, 20])), [(0, 1), (1, 1)]);
        assert_eq!(runs(&sizes(&[1400; 100])), [(0, 46), (46, 46), (92, 8)], "one IP datagram's payload at most");
        assert_eq!(runs(&sizes(&[100; 100])), [(0, MAX_SEGMENTS), (MAX_SEGMENTS, 100 - MAX_SEGMENTS)]);
        assert_eq!(runs(&[]), []);
    }

    #[test]
    fn interleaved_buffers_are_built_once_per_channel() {
        let packets = sizes(&[3, 2]);
        let mut cache = Vec::new();
        let a = interleaved_for(&mut cache, &packets, 0);
        assert_eq!(&a[..], &[b'$', 0, 0, 3, 0, 0, 0, b'$', 0, 0, 2, 0, 0]);
        let b = interleaved_for(&mut cache, &packets, 0);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second reader of a channel shares the first's buffer");
        let c = interleaved_for(&mut cache, &packets, 2);
        assert_eq!(c[1], 2);
        assert_eq!(cache.len(), 2);
    }
}
