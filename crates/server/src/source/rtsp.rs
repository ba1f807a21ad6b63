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
//! [`RR_INTERVAL`]; a keep-alive every [`KEEP_ALIVE_INTERVAL`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
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

/// A keep-alive request this often while playing: under the 60 s session timeout that
/// RFC 2326 12.37 makes the default, with room for a slow answer.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Largest read from the RTSP connection at once (the client caps each message itself).
const READ_CHUNK: usize = 64 * 1024;

/// Largest UDP datagram taken (an RTP packet over UDP fits in one IP datagram).
const MAX_DATAGRAM: usize = 65_536;

/// Port pairs bound for UDP: one per track ferrocast carries (a video and an audio).
const UDP_PAIRS: usize = 2;

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
        SourceTransport::Tcp => session(a, stop, false, "source_transport = tcp").await.map_err(failed),
        SourceTransport::Udp => session(a, stop, true, "source_transport = udp").await.map_err(failed),
        SourceTransport::Multicast => Err(SourceError::new(
            "SETUP",
            "source_transport = multicast: this build's RTSP client cannot request multicast yet",
        )),
        SourceTransport::Auto if a.prefer_tcp.load(Ordering::Relaxed) => {
            session(a, stop, false, "auto: UDP failed before for this source").await.map_err(failed)
        }
        SourceTransport::Auto => match session(a, stop, true, "auto: UDP first").await {
            Err(Ended::Fallback(why)) => {
                info!(path = a.path, url = a.redacted(), "source: {why}; trying TCP");
                a.prefer_tcp.store(true, Ordering::Relaxed);
                session(a, stop, false, &format!("auto: {why}")).await.map_err(failed)
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
async fn bind_pair(ip: IpAddr) -> Result<(UdpSocket, UdpSocket), SourceError> {
    let any: IpAddr =
        if ip.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
    for _ in 0..32 {
        let rtp = UdpSocket::bind(SocketAddr::new(any, 0))
            .await
            .map_err(|e| SourceError::new("SETUP", format!("binding a UDP port: {e}")))?;
        let port = rtp.local_addr().map_err(|e| SourceError::new("SETUP", format!("UDP port: {e}")))?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(any, port + 1)).await {
            return Ok((rtp, rtcp));
        }
    }
    Err(SourceError::new("SETUP", "no free even/odd UDP port pair"))
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
    udp: bool,
    pairs: Vec<(UdpSocket, UdpSocket)>,
    camera: IpAddr,
    sdp: Option<Sdp>,
    /// Client track index -> SDP media index (the client sets up supported media only).
    media_of: Vec<usize>,
    server_ports: Vec<Option<(u16, u16)>>,
    recording: Option<Recording>,
    played_at: Option<Instant>,
    last_media: Option<Instant>,
    next_rr: Instant,
    next_keep_alive: Instant,
    /// Cumulative loss per SDP media index.
    lost: Vec<u64>,
    reason: String,
    /// Interleaved RTCP to write after the client's own output.
    interleaved: BytesMut,
}

async fn session(a: &Attempt<'_>, stop: &mut watch::Receiver<bool>, udp: bool, reason: &str) -> Result<(), Ended> {
    let (host, port) =
        host_port(a.url, 554).ok_or_else(|| SourceError::new("url", format!("{}: no host", a.redacted())))?;
    let timeout = ms(a.config.request_timeout_ms);
    let socket = connect(&host, port, timeout).await?;
    let camera = socket.peer_addr().map_err(|e| SourceError::new("connect", format!("{host}:{port}: {e}")))?.ip();
    let mut pairs = Vec::new();
    if udp {
        for _ in 0..UDP_PAIRS {
            pairs.push(bind_pair(camera).await?);
        }
    }
    let ports: Vec<(u16, u16)> =
        pairs.iter().filter_map(|(r, c)| Some((r.local_addr().ok()?.port(), c.local_addr().ok()?.port()))).collect();
    let transport = if udp { ClientTransport::Udp } else { ClientTransport::Tcp };
    let now = Instant::now();
    let client = ClientSession::new(a.url, ClientMode::Play, transport, ports, now);
    a.report.set_transport(if udp { "udp" } else { "tcp" }, reason);
    let mut s = Session {
        a,
        client,
        socket,
        udp,
        pairs,
        camera,
        sdp: None,
        media_of: Vec::new(),
        server_ports: Vec::new(),
        recording: None,
        played_at: None,
        last_media: None,
        next_rr: now + RR_INTERVAL,
        next_keep_alive: now + KEEP_ALIVE_INTERVAL,
        lost: Vec::new(),
        reason: reason.to_owned(),
        interleaved: BytesMut::new(),
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
            self.write(&out).await?;
        }
        if !self.interleaved.is_empty() {
            let out = self.interleaved.split().freeze();
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
                        Ok(0) => return Err(SourceError::new(self.step(), "the camera closed the connection").into()),
                        Ok(n) => n,
                        Err(e) => return Err(SourceError::new(self.step(), format!("reading from the camera: {}", io_reason(&e))).into()),
                    };
                    self.client.handle_input(Instant::now(), &buf[..n]).map_err(|e| self.client_error(e))?;
                }
                r = recv_any(&self.pairs, &mut dgram) => {
                    if let Ok((pair, is_rtcp, n, from)) = r {
                        // From the camera's address, whatever the port it sends from.
                        if from.ip().to_canonical() == self.camera.to_canonical() {
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
            at(self.next_keep_alive);
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
        if now >= self.next_keep_alive {
            self.next_keep_alive = now + KEEP_ALIVE_INTERVAL;
            if self.client.poll_timeout().is_none() {
                self.client.keep_alive(now);
            }
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
                if let (Some((_, rtcp)), Some(Some((_, port)))) = (self.pairs.get(track), self.server_ports.get(track))
                {
                    let _ = rtcp.try_send_to(&packet, SocketAddr::new(self.camera, *port));
                }
            } else {
                // Interleaved on the track's RTCP channel (RFC 2326 10.12).
                let mut frame = BytesMut::with_capacity(4 + packet.len());
                frame.put_u8(b'$');
                frame.put_u8(2 * track as u8 + 1);
                frame.put_u16(packet.len() as u16);
                frame.put_slice(&packet);
                self.interleaved.put_slice(&frame);
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
                transport = if self.udp { "udp" } else { "tcp" },
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
                    self.a.report.set_sdp(render_sdp(&sdp));
                    self.sdp = Some(sdp);
                }
                ClientEvent::SetUp { track, server_port } => {
                    if self.server_ports.len() <= track {
                        self.server_ports.resize(track + 1, None);
                    }
                    self.server_ports[track] = server_port;
                }
                ClientEvent::Started => self.start()?,
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
                        _ => return Err(SourceError::answered(&step, status, None).into()),
                    }
                }
                ClientEvent::Played(_) => {}
            }
        }
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
        let mut rec = Recording::new(publisher, sdp).map_err(|why| SourceError::new("DESCRIBE", why))?;
        rec.start();
        self.recording = Some(rec);
        let now = Instant::now();
        self.played_at = Some(now);
        self.next_rr = now + RR_INTERVAL;
        self.next_keep_alive = now + KEEP_ALIVE_INTERVAL;
        debug!(path = self.a.path, url = self.a.redacted(), udp = self.udp, "source: PLAY answered");
        Ok(())
    }
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
    fn durations_read_plainly() {
        assert_eq!(secs(Duration::from_secs(3)), "3");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5");
    }
}
