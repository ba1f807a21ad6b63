//! The RTSP pull driver: a tokio loop around the sans-IO [`ClientSession`] (DESCRIBE, SETUP
//! per track, PLAY), with RTP into [`Recording`] exactly as an RTSP publisher's (so the
//! timeline, in-band parameter sets and sender-report alignment are the same).
//!
//! Transports (`source_transport`):
//! - `tcp`: interleaved in the RTSP connection (RFC 2326 10.12);
//! - `udp`: one RTP/RTCP port pair per track bound here (even RTP port, RFC 3550 11);
//!   packets are taken from the camera's address whatever their source port (cameras send
//!   from other ports than they announce in `server_port`);
//! - `auto`: UDP; on 461 Unsupported Transport, or no RTP within `source.udp_timeout_ms`
//!   after PLAY, TEARDOWN and again over TCP, which later tries of that source start with.
//!
//! Every step is under `source.request_timeout_ms`; once playing, no media for
//! `source.read_timeout_ms` ends the try. RTCP receiver reports go to the camera every
//! [`RR_INTERVAL`]; the client keeps the session alive itself (GET_PARAMETER or OPTIONS
//! with the Session, at half the session timeout).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrocast_rtsp::client::{ClientError, ClientEvent, ClientMode, ClientSession, ClientTransport};
use ferrocast_rtsp::message::Method;
use ferrocast_rtsp::rtcp::{self, RtcpPacket};
use ferrocast_rtsp::sdp::{self, Sdp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info};

use super::{Attempt, SourceError};
use crate::config::ms;
use crate::paths::SourceTransport;
use crate::rtsp::record::Recording;

/// RTCP receiver reports to the camera, this often (RFC 3550 6.2 suggests 5 s at least).
pub const RR_INTERVAL: Duration = Duration::from_secs(5);

/// Largest read from the RTSP connection at once (the client caps each message itself).
const READ_CHUNK: usize = 64 * 1024;

/// Largest UDP datagram taken (an RTP packet over UDP fits in one IP datagram).
const MAX_DATAGRAM: usize = 65_536;

/// Port pairs bound for UDP: one per track ferrocast carries (a video and an audio).
const UDP_PAIRS: usize = 2;

/// How RTP travels in one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Tcp,
    Udp,
    Multicast,
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Lane::Tcp => "tcp",
            Lane::Udp => "udp",
            Lane::Multicast => "multicast",
        }
    }
}

/// How one session ended other than by a plain failure.
enum Ended {
    /// Failed.
    Failed(SourceError),
    /// `auto` should try TCP: why.
    Fallback(String),
}

impl From<SourceError> for Ended {
    fn from(e: SourceError) -> Ended {
        Ended::Failed(e)
    }
}

/// Runs one try of an RTSP source (see the module doc).
pub async fn run(a: &Attempt<'_>, stop: &mut watch::Receiver<bool>) -> Result<(), SourceError> {
    match a.transport {
        SourceTransport::Tcp => session(a, stop, Lane::Tcp, "source_transport = tcp").await.map_err(failed),
        SourceTransport::Udp => session(a, stop, Lane::Udp, "source_transport = udp").await.map_err(failed),
        SourceTransport::Multicast => {
            session(a, stop, Lane::Multicast, "source_transport = multicast").await.map_err(failed)
        }
        SourceTransport::Auto if a.prefer_tcp.load(Ordering::Relaxed) => {
            session(a, stop, Lane::Tcp, "auto: UDP failed before for this source").await.map_err(failed)
        }
        SourceTransport::Auto => match session(a, stop, Lane::Udp, "auto: UDP first").await {
            Err(Ended::Fallback(why)) => {
                info!(path = a.path, url = a.redacted(), "source: {why}; trying TCP");
                a.prefer_tcp.store(true, Ordering::Relaxed);
                session(a, stop, Lane::Tcp, &format!("auto: {why}")).await.map_err(failed)
            }
            other => other.map_err(failed),
        },
    }
}

fn failed(e: Ended) -> SourceError {
    match e {
        Ended::Failed(e) => e,
        Ended::Fallback(why) => SourceError::new("media", why),
    }
}

/// `host` and `port` of an `rtsp://[user:pass@]host[:port]/...` URL (554 by default).
pub fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let hostport = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Connects to `host:port` within the request timeout.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, SourceError> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(SourceError::new("connect", format!("connect to {host}:{port}: {}", io_reason(&e)))),
        Err(_) => Err(SourceError::new(
            "connect",
            format!("connect to {host}:{port}: no answer within {:.1} s", timeout.as_secs_f64()),
        )),
    }
}

/// An I/O error as a short phrase (`connection refused`), without the OS error number.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => {
            let s = e.to_string();
            s.split(" (os error").next().unwrap_or(&s).to_lowercase()
        }
    }
}

/// An RTP/RTCP socket pair with an even RTP port (RFC 3550 11).
fn bind_pair(ip: IpAddr) -> Result<(UdpSocket, UdpSocket), SourceError> {
    let any: IpAddr =
        if ip.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
    for _ in 0..32 {
        let rtp = bind_udp(SocketAddr::new(any, 0), UDP_RECV_BUFFER)
            .map_err(|e| SourceError::new("SETUP", format!("binding a UDP port: {e}")))?;
        let port = rtp.local_addr().map_err(|e| SourceError::new("SETUP", format!("UDP port: {e}")))?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = bind_udp(SocketAddr::new(any, port + 1), 64 * 1024) {
            return Ok((rtp, rtcp));
        }
    }
    Err(SourceError::new("SETUP", "no free even/odd UDP port pair"))
}

/// Receive buffer asked for each RTP socket: a camera (or a server starting us at its GOP)
/// sends a keyframe as a burst of packets, which the default buffer (about 200 KB on Linux)
/// may not hold while the driver is busy. The kernel caps it at `net.core.rmem_max`.
pub const UDP_RECV_BUFFER: usize = 4 << 20;

/// A nonblocking UDP socket bound to `addr` with a receive buffer of (up to) `recv_buffer`.
fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: a smaller buffer still works.
    let _ = s.set_recv_buffer_size(recv_buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The session description as text, for the probe (the media lines ferrocast reads).
fn render_sdp(s: &Sdp) -> String {
    let mut out = String::from("v=0\r\n");
    if let Some(c) = &s.control {
        out += &format!("a=control:{c}\r\n");
    }
    for m in &s.media {
        out += &format!("m={} 0 RTP/AVP {}\r\n", m.kind, m.payload_type);
        if !m.encoding.is_empty() {
            let ch = if m.channels > 1 { format!("/{}", m.channels) } else { String::new() };
            out += &format!("a=rtpmap:{} {}/{}{ch}\r\n", m.payload_type, m.encoding, m.clock_rate);
        }
        if !m.fmtp.is_empty() {
            let params: Vec<String> = m.fmtp.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out += &format!("a=fmtp:{} {}\r\n", m.payload_type, params.join(";"));
        }
        if let Some(c) = &m.control {
            out += &format!("a=control:{c}\r\n");
        }
    }
    out
}

/// One datagram: (pair index, arrived on the RTCP socket, length, sender).
type Datagram = (usize, bool, usize, SocketAddr);

/// Receives from whichever socket of `pairs` has a datagram.
async fn recv_any(pairs: &[(UdpSocket, UdpSocket)], buf: &mut [u8]) -> std::io::Result<Datagram> {
    if pairs.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for (i, (rtp, rtcp)) in pairs.iter().enumerate() {
            for (is_rtcp, sock) in [(false, rtp), (true, rtcp)] {
                let mut rb = tokio::io::ReadBuf::new(buf);
                match sock.poll_recv_from(cx, &mut rb) {
                    Poll::Ready(Ok(from)) => return Poll::Ready(Ok((i, is_rtcp, rb.filled().len(), from))),
                    // ICMP port unreachable and the like: not fatal for a receiver.
                    Poll::Ready(Err(e)) => debug!("source udp: {e}"),
                    Poll::Pending => {}
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// The state of one RTSP session.
struct Session<'a, 'b> {
    a: &'b Attempt<'a>,
    client: ClientSession,
    socket: TcpStream,
    /// RTP over UDP (unicast or multicast), not interleaved.
    udp: bool,
    lane: Lane,
    pairs: Vec<(UdpSocket, UdpSocket)>,
    /// Where receiver reports go, per client track (UDP: the camera's RTCP port; multicast:
    /// the group's).
    rtcp_to: Vec<Option<SocketAddr>>,
    camera: IpAddr,
    sdp: Option<Sdp>,
    /// Client track index -> SDP media index (the client sets up supported media only).
    media_of: Vec<usize>,
    server_ports: Vec<Option<(u16, u16)>>,
    recording: Option<Recording>,
    played_at: Option<Instant>,
    last_media: Option<Instant>,
    next_rr: Instant,
    /// Cumulative loss per SDP media index.
    lost: Vec<u64>,
    reason: String,
    /// Bytes read since the client last reported something or sent a request (so since the
    /// last answer): junk when the answer never comes.
    unanswered_bytes: usize,
}

async fn session(a: &Attempt<'_>, stop: &mut watch::Receiver<bool>, lane: Lane, reason: &str) -> Result<(), Ended> {
    let udp = lane != Lane::Tcp;
    let (host, port) =
        host_port(a.url, 554).ok_or_else(|| SourceError::new("url", format!("{}: no host", a.redacted())))?;
    let timeout = ms(a.config.request_timeout_ms);
    let socket = connect(&host, port, timeout).await?;
    let camera_addr = socket.peer_addr().map_err(|e| SourceError::new("connect", format!("{host}:{port}: {e}")))?;
    a.report.set_peer(camera_addr);
    let camera = camera_addr.ip();
    let mut pairs = Vec::new();
    if lane == Lane::Udp {
        for _ in 0..UDP_PAIRS {
            pairs.push(bind_pair(camera)?);
        }
    }
    let ports: Vec<(u16, u16)> =
        pairs.iter().filter_map(|(r, c)| Some((r.local_addr().ok()?.port(), c.local_addr().ok()?.port()))).collect();
    let transport = match lane {
        Lane::Tcp => ClientTransport::Tcp,
        Lane::Udp => ClientTransport::Udp,
        Lane::Multicast => ClientTransport::Multicast,
    };
    let now = Instant::now();
    let mut client = ClientSession::new(a.url, ClientMode::Play, transport, ports, now);
    client.set_response_timeout(ms(a.config.request_timeout_ms));
    a.report.set_transport(lane.name(), reason);
    let mut s = Session {
        a,
        client,
        socket,
        udp,
        lane,
        pairs,
        rtcp_to: Vec::new(),
        camera,
        sdp: None,
        media_of: Vec::new(),
        server_ports: Vec::new(),
        recording: None,
        played_at: None,
        last_media: None,
        next_rr: now + RR_INTERVAL,
        lost: Vec::new(),
        reason: reason.to_owned(),
        unanswered_bytes: 0,
    };
    let r = s.drive(stop).await;
    if let Err(Ended::Fallback(_)) = &r {
        // The camera holds a session for us: end it before trying TCP.
        s.teardown().await;
    }
    r
}

impl Session<'_, '_> {
    fn timeout(&self) -> Duration {
        ms(self.a.config.request_timeout_ms)
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        while let Some(out) = self.client.poll_transmit() {
            // A new request: what came before answered the last one.
            self.unanswered_bytes = 0;
            self.write(&out).await?;
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), SourceError> {
        match tokio::time::timeout(self.timeout(), self.socket.write_all(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SourceError::new(self.step(), format!("writing to the camera: {}", io_reason(&e)))),
            Err(_) => Err(SourceError::new(self.step(), "writing to the camera: blocked")),
        }
    }

    /// A failure at the current step, named in the message before playing ("DESCRIBE: the
    /// camera closed the connection").
    fn at_step(&self, what: &str) -> SourceError {
        let step = self.step();
        if step == "media" { SourceError::new(step, what) } else { SourceError::new(step, format!("{step}: {what}")) }
    }

    /// The step the session is at, for errors.
    fn step(&self) -> &'static str {
        if self.played_at.is_some() {
            "media"
        } else if self.sdp.is_some() {
            "SETUP"
        } else {
            "DESCRIBE"
        }
    }

    /// Sends TEARDOWN and waits (briefly) for its answer.
    async fn teardown(&mut self) {
        if self.played_at.is_none() && self.server_ports.is_empty() {
            return;
        }
        self.client.teardown(Instant::now());
        if self.flush().await.is_err() {
            return;
        }
        let mut buf = vec![0u8; READ_CHUNK];
        let deadline = tokio::time::Instant::now() + self.timeout().min(Duration::from_secs(2));
        while self.client.poll_timeout().is_some() {
            match tokio::time::timeout_at(deadline, self.socket.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    if self.client.handle_input(Instant::now(), &buf[..n]).is_err() {
                        return;
                    }
                    while self.client.poll_event().is_some() {}
                }
                _ => return,
            }
        }
        debug!(path = self.a.path, "source: TEARDOWN answered");
    }

    async fn drive(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Ended> {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut dgram = vec![0u8; MAX_DATAGRAM];
        loop {
            self.flush().await?;
            let deadline = self.next_deadline();
            tokio::select! {
                r = self.socket.read(&mut buf) => {
                    let n = match r {
                        Ok(0) => return Err(self.at_step("the camera closed the connection").into()),
                        Ok(n) => n,
                        Err(e) => return Err(self.at_step(&format!("reading from the camera: {}", io_reason(&e))).into()),
                    };
                    self.unanswered_bytes += n;
                    self.client.handle_input(Instant::now(), &buf[..n]).map_err(|e| self.client_error(e))?;
                }
                r = recv_any(&self.pairs, &mut dgram) => {
                    if let Ok((pair, is_rtcp, n, from)) = r {
                        // Unicast: from the camera's address, whatever the port it sends from.
                        // Multicast: whatever reaches the group's ports (the sender's address
                        // is the camera's interface, which may not be the RTSP peer's; on a
                        // namespace's loopback it is 0.0.0.0).
                        if self.lane == Lane::Multicast || from.ip().to_canonical() == self.camera.to_canonical() {
                            let data = Bytes::copy_from_slice(&dgram[..n]);
                            if is_rtcp {
                                self.on_rtcp(pair, &data);
                            } else {
                                self.on_rtp(pair, data);
                            }
                        }
                    }
                }
                () = super::sleep_until(deadline) => self.on_timers()?,
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        self.teardown().await;
                        return Ok(());
                    }
                }
            }
            self.drain_events()?;
        }
    }

    fn client_error(&self, e: ClientError) -> Ended {
        match e {
            // Bytes came, none of them an answer: junk, not silence.
            ClientError::Timeout(m) if self.unanswered_bytes > 0 => Ended::Failed(SourceError::new(
                &m,
                format!(
                    "{m} answered with {} bytes that are not an RTSP answer within {:.1} s",
                    self.unanswered_bytes,
                    self.timeout().as_secs_f64()
                ),
            )),
            ClientError::Timeout(m) => Ended::Failed(SourceError::new(
                &m,
                format!("no answer to {m} within {:.1} s", self.timeout().as_secs_f64()),
            )),
            other => Ended::Failed(SourceError::new(self.step(), format!("{}: {other}", self.step()))),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d = self.client.poll_timeout();
        let mut at = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        if let Some(played) = self.played_at {
            at(self.next_rr);
            match self.last_media {
                Some(last) => at(last + ms(self.a.config.read_timeout_ms)),
                None => {
                    at(played + ms(self.a.config.read_timeout_ms));
                    if self.udp && self.a.transport == SourceTransport::Auto {
                        at(played + ms(self.a.config.udp_timeout_ms));
                    }
                }
            }
        }
        d
    }

    fn on_timers(&mut self) -> Result<(), Ended> {
        let now = Instant::now();
        self.client.handle_timeout(now).map_err(|e| self.client_error(e))?;
        let Some(played) = self.played_at else { return Ok(()) };
        let read_timeout = ms(self.a.config.read_timeout_ms);
        match self.last_media {
            Some(last) if now >= last + read_timeout => {
                return Err(SourceError::new("media", format!("no media for {} s", secs(read_timeout))).into());
            }
            None if self.udp
                && self.a.transport == SourceTransport::Auto
                && now >= played + ms(self.a.config.udp_timeout_ms) =>
            {
                return Err(Ended::Fallback(format!(
                    "no RTP over UDP within {} s after PLAY",
                    secs(ms(self.a.config.udp_timeout_ms))
                )));
            }
            None if now >= played + read_timeout => {
                return Err(
                    SourceError::new("media", format!("no media within {} s after PLAY", secs(read_timeout))).into()
                );
            }
            _ => {}
        }
        if now >= self.next_rr {
            self.next_rr = now + RR_INTERVAL;
            self.send_receiver_reports();
        }
        Ok(())
    }

    fn send_receiver_reports(&mut self) {
        let Some(rec) = self.recording.as_mut() else { return };
        let reports = rec.receiver_reports(crate::clock::unix_micros());
        for (media, packet) in reports {
            // Our own report, read back for the loss count the status shows.
            if let Ok(parsed) = rtcp::parse(&packet)
                && let Some(RtcpPacket::ReceiverReport { reports, .. }) = parsed.first()
                && let Some(block) = reports.first()
                && let Some(l) = self.lost.get_mut(media)
            {
                *l = block.cumulative_lost.max(0) as u64;
            }
            let Some(track) = self.media_of.iter().position(|&m| m == media) else { continue };
            if self.udp {
                // To the camera's RTCP port, or to the group's over multicast (RFC 3550 6.1:
                // receivers report to the session's RTCP address).
                if let (Some((_, rtcp)), Some(Some(to))) = (self.pairs.get(track), self.rtcp_to.get(track)) {
                    let _ = rtcp.try_send_to(&packet, *to);
                }
            } else {
                // Interleaved on the track's RTCP channel (RFC 2326 10.12).
                self.client.send_rtcp(track, &packet);
            }
        }
        self.a.report.packets_lost.store(self.lost.iter().sum(), Ordering::Relaxed);
    }

    fn on_rtp(&mut self, track: usize, packet: Bytes) {
        let Some(&media) = self.media_of.get(track) else { return };
        let Some(rec) = self.recording.as_mut() else { return };
        self.a.report.bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
        if self.last_media.is_none() {
            self.a.report.live();
            info!(
                path = self.a.path,
                url = self.a.redacted(),
                transport = self.lane.name(),
                reason = self.reason,
                "source: live"
            );
        }
        self.last_media = Some(Instant::now());
        rec.on_rtp(media, packet, self.udp);
    }

    fn on_rtcp(&mut self, track: usize, data: &[u8]) {
        let Some(&media) = self.media_of.get(track) else { return };
        let Some(rec) = self.recording.as_mut() else { return };
        let Ok(packets) = rtcp::parse(data) else {
            debug!(path = self.a.path, "source: malformed RTCP");
            return;
        };
        for p in packets {
            if let RtcpPacket::SenderReport { ntp, rtp_time, .. } = p {
                rec.on_sender_report(media, ntp, rtp_time);
            }
        }
    }

    fn drain_events(&mut self) -> Result<(), Ended> {
        while let Some(ev) = self.client.poll_event() {
            self.unanswered_bytes = 0;
            match ev {
                ClientEvent::Described(sdp) => {
                    self.media_of = sdp
                        .media
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| sdp::track_info(m).is_some())
                        .map(|(i, _)| i)
                        .collect();
                    if self.media_of.is_empty() {
                        return Err(SourceError::new(
                            "DESCRIBE",
                            "the SDP has no track ferrocast can carry (H.264, H.265, AAC, Opus, G.711)",
                        )
                        .into());
                    }
                    self.lost = vec![0; sdp.media.len()];
                    // As the camera sent it; what was understood if the client kept nothing.
                    let text = match self.client.description() {
                        Some(body) => String::from_utf8_lossy(body).into_owned(),
                        None => render_sdp(&sdp),
                    };
                    self.a.report.set_sdp(text);
                    self.sdp = Some(sdp);
                }
                ClientEvent::SetUp { track, server_port } => {
                    if self.server_ports.len() <= track {
                        self.server_ports.resize(track + 1, None);
                    }
                    if self.rtcp_to.len() <= track {
                        self.rtcp_to.resize(track + 1, None);
                    }
                    self.server_ports[track] = server_port;
                    if self.lane == Lane::Udp {
                        self.rtcp_to[track] = server_port.map(|(_, rtcp)| SocketAddr::new(self.camera, rtcp));
                    }
                }
                ClientEvent::Started => {
                    self.a.report.set_auth(self.client.auth_scheme().map(str::to_owned));
                    self.start()?;
                }
                ClientEvent::Transport { track, transport } if self.lane == Lane::Multicast => {
                    self.join_group(track, &transport)?;
                }
                ClientEvent::Transport { .. } => {}
                ClientEvent::Redirect { url } => {
                    return Err(SourceError::new(
                        "DESCRIBE",
                        format!("DESCRIBE redirected to another server: {}", crate::relay::redact(&url)),
                    )
                    .into());
                }
                ClientEvent::Rtp { track, packet } => self.on_rtp(track, packet),
                ClientEvent::Rtcp { track, packet } => self.on_rtcp(track, &packet),
                ClientEvent::Failed { method, status } => {
                    let step = method.as_str().to_owned();
                    match method {
                        // A keep-alive the camera does not know still kept the session alive.
                        Method::GetParameter | Method::Options => {
                            debug!(path = self.a.path, status, "source: keep-alive answered {status}");
                        }
                        Method::Setup if status == 461 && self.udp && self.a.transport == SourceTransport::Auto => {
                            return Err(Ended::Fallback("SETUP answered 461 Unsupported Transport to UDP".into()));
                        }
                        _ => {
                            let detail = self.client.last_response().and_then(answer_detail);
                            return Err(SourceError::answered(&step, status, detail.as_deref()).into());
                        }
                    }
                }
                ClientEvent::Played(_) => {}
            }
        }
        Ok(())
    }

    /// The SETUP answer of a multicast track: binds its group's ports and joins the group.
    fn join_group(&mut self, track: usize, t: &ferrocast_rtsp::transport::Transport) -> Result<(), Ended> {
        let bad = |why: String| Ended::Failed(SourceError::new("SETUP", why));
        if !t.multicast {
            return Err(bad("SETUP answered a unicast transport to a multicast request".into()));
        }
        let group: std::net::Ipv4Addr = t
            .destination
            .as_deref()
            .and_then(|d| d.parse().ok())
            .filter(|g: &std::net::Ipv4Addr| g.is_multicast())
            .ok_or_else(|| bad(format!("SETUP answered no IPv4 multicast destination ({:?})", t.destination)))?;
        let (rtp_port, rtcp_port) =
            t.port.or(t.server_port).ok_or_else(|| bad("SETUP answered a multicast transport without port".into()))?;
        if track != self.pairs.len() {
            return Err(bad(format!("multicast track {track} set up out of order")));
        }
        let join = |port: u16, buffer: usize| -> std::io::Result<UdpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
            // Other receivers on this host may listen to the same group.
            s.set_reuse_address(true)?;
            let _ = s.set_recv_buffer_size(buffer);
            s.set_nonblocking(true)?;
            s.bind(&SocketAddr::new(group.into(), port).into())?;
            s.join_multicast_v4(&group, &std::net::Ipv4Addr::UNSPECIFIED)?;
            UdpSocket::from_std(s.into())
        };
        let rtp = join(rtp_port, UDP_RECV_BUFFER).map_err(|e| bad(format!("joining {group}:{rtp_port}: {e}")))?;
        let rtcp = join(rtcp_port, 64 * 1024).map_err(|e| bad(format!("joining {group}:{rtcp_port}: {e}")))?;
        self.pairs.push((rtp, rtcp));
        if self.rtcp_to.len() <= track {
            self.rtcp_to.resize(track + 1, None);
        }
        self.rtcp_to[track] = Some(SocketAddr::new(group.into(), rtcp_port));
        debug!(path = self.a.path, track, %group, rtp_port, "source: joined the multicast group");
        Ok(())
    }

    /// PLAY accepted: the path is published, RTP goes to a [`Recording`] of the SDP.
    fn start(&mut self) -> Result<(), Ended> {
        let Some(sdp) = &self.sdp else {
            return Err(SourceError::new("PLAY", "PLAY answered before DESCRIBE").into());
        };
        let mut publisher = self
            .a
            .hub
            .publish(self.a.path)
            .map_err(|e| SourceError::new("publish", format!("publishing {}: {e}", self.a.path)))?;
        publisher.count_frames(self.a.report.frames.clone());
        // A camera's stream (or a UDP one that lost its first packets) may begin mid-GOP.
        publisher.start_at_keyframe();
        let mut rec = Recording::new(publisher, sdp).map_err(|why| SourceError::new("DESCRIBE", why))?;
        rec.start();
        self.recording = Some(rec);
        let now = Instant::now();
        self.played_at = Some(now);
        self.next_rr = now + RR_INTERVAL;
        debug!(path = self.a.path, url = self.a.redacted(), udp = self.udp, "source: PLAY answered");
        Ok(())
    }
}

/// What a refusal said beyond its status: the challenge of a 401 (scheme and realm, never a
/// nonce), else nothing.
fn answer_detail(r: &ferrocast_rtsp::message::Response) -> Option<String> {
    if r.status != 401 {
        return None;
    }
    let challenge = r.headers.get("WWW-Authenticate")?;
    let scheme = challenge.split_whitespace().next()?;
    let realm = challenge
        .split_once("realm=")
        .map(|(_, v)| v.trim_start_matches('"').split('"').next().unwrap_or("").chars().take(64).collect::<String>());
    Some(match realm {
        Some(r) => format!("{scheme} realm \"{r}\""),
        None => scheme.chars().take(16).collect(),
    })
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0}") } else { format!("{s:.1}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_urls() {
        assert_eq!(host_port("rtsp://cam/x", 554), Some(("cam".into(), 554)));
        assert_eq!(host_port("rtsp://u:p@ss@cam:8554/x?y", 554), Some(("cam".into(), 8554)));
        assert_eq!(host_port("rtsp://[::1]:9/x", 554), Some(("::1".into(), 9)));
        assert_eq!(host_port("rtmp://origin", 1935), Some(("origin".into(), 1935)));
        assert_eq!(host_port("rtsp://cam:notaport/x", 554), None);
        assert_eq!(host_port("rtsp:///x", 554), None);
    }

    #[test]
    fn a_401_names_the_challenge_never_the_nonce() {
        let mut headers = ferrocast_rtsp::message::Headers::default();
        headers.add("WWW-Authenticate", "Digest realm=\"IP Camera\", nonce=\"abc123\", algorithm=MD5");
        let r = ferrocast_rtsp::message::Response {
            status: 401,
            reason: "Unauthorized".into(),
            headers,
            body: Bytes::new(),
        };
        assert_eq!(answer_detail(&r).as_deref(), Some("Digest realm \"IP Camera\""));
        let e = SourceError::answered("DESCRIBE", 401, answer_detail(&r).as_deref());
        assert_eq!(e.message, "DESCRIBE answered 401 Unauthorized (Digest realm \"IP Camera\")");
    }

    #[test]
    fn durations_read_plainly() {
        assert_eq!(secs(Duration::from_secs(3)), "3");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5");
    }
}
