//! One RTSP connection: requests in, responses out, media both ways (interleaved on this
//! connection or over the shared UDP sockets). A thin driver: parsing, SDP, transports and
//! the state table come from `ferrocast_rtsp`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks};
use ferrocast_rtsp::codec;
use ferrocast_rtsp::message::{self, Message, Method, Request, Response};
use ferrocast_rtsp::rtcp::{self, RtcpPacket};
use ferrocast_rtsp::sdp;
use ferrocast_rtsp::state::{State, transition};
use ferrocast_rtsp::transport::{Lower, Transport};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::record::Recording;
use super::{MulticastGroup, Shared, StreamRtp, UdpIn, slot, unix_micros};
use crate::config::ms;
use crate::fanout::Encoder;
use crate::hub::write_timeout;
use crate::path;
use crate::reader::{Reader, ReaderItem};
use crate::sockio::{read_some, write_with_timeout};

const PUBLIC: &str = "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER";
/// Bytes read from a socket at a time by a connection that records: publishers of a few
/// Mbit/s over TCP are served well by it.
const READ_BUFFER: usize = 16 * 1024;
/// Read buffer of other connections: players send requests and reports only, and this is
/// per-viewer memory.
const PLAYER_READ_BUFFER: usize = 2048;
/// UDP datagrams queued for one connection before new ones are dropped.
const UDP_QUEUE: usize = 1024;
/// How long DESCRIBE waits for a just-published stream to have codec parameters.
const TRACKS_WAIT: Duration = Duration::from_secs(3);

/// Where one track's packets go.
#[derive(Clone)]
enum Tx {
    Tcp { rtp: u8, rtcp: u8 },
    Udp { rtp: SocketAddr, rtcp: SocketAddr },
    Multicast(Arc<MulticastGroup>),
}

struct Setup {
    /// Play: 0 video, 1 audio. Record: index of the announced media.
    index: usize,
    tx: Tx,
}

/// What a player was sent on one track, for its sender reports.
#[derive(Default, Clone, Copy)]
struct Sent {
    report: bool,
    packets: u32,
    octets: u32,
}

struct Playing {
    reader: Option<Reader>,
    stream: Arc<StreamRtp>,
    /// Shared with the stream's fan-out task, which sends for this player while it keeps up.
    rtp: Arc<Mutex<RtpOut>>,
    paused: bool,
    last_rr: [Option<rtcp::ReportBlock>; 2],
}

/// The RTP side of a player: its frames as packets on its transports. Used by the player's
/// own task and, in direct mode, by the stream's fan-out task (see [`crate::fanout`]).
struct RtpOut {
    shared: Arc<Shared>,
    stream: Arc<StreamRtp>,
    tracks: Tracks,
    /// Where each track's packets go (video, audio): None when not set up or multicast.
    txs: [Option<Tx>; 2],
    sent: [Sent; 2],
    /// Scratch for interleaved headers.
    headers: BytesMut,
    /// The packets of the frame being sent over UDP (reused).
    udp: Vec<Bytes>,
}

fn lock(m: &Mutex<RtpOut>) -> MutexGuard<'_, RtpOut> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RtpOut {
    /// Sends a frame: over UDP at once, over TCP as buffers appended to `out`.
    fn frame(&mut self, f: &Frame, out: &mut Vec<Bytes>) {
        let track: Option<&TrackInfo> = match f.kind {
            TrackKind::Video => self.tracks.video.as_ref(),
            TrackKind::Audio => self.tracks.audio.as_ref(),
        };
        let idx = slot(f.kind);
        let (Some(track), Some(tx)) = (track, &self.txs[idx]) else { return };
        let packets = self.stream.packets(track, f);
        let t = &mut self.sent[idx];
        if !t.report {
            // A sender report before the first packet gives players the NTP/RTP mapping
            // that aligns audio and video from the start.
            t.report = true;
            if let Some((_, sr)) = self.stream.sender_report(f.kind, unix_micros(), 0, 0) {
                send_rtcp(&self.shared, &mut self.headers, out, tx, sr);
            }
        }
        for pkt in codec::packets(&packets) {
            t.packets = t.packets.wrapping_add(1);
            t.octets = t.octets.wrapping_add(pkt.len().saturating_sub(12) as u32);
            match tx {
                // A frame's packets to one address leave together (see udp_out).
                Tx::Udp { .. } => self.udp.push(pkt),
                _ => send_rtp(&mut self.headers, out, tx, pkt),
            }
        }
        if let Tx::Udp { rtp, .. } = tx {
            super::udp_out::send_packets(&self.shared.rtp, *rtp, &self.udp);
            self.udp.clear();
        }
    }
}

/// A player's [`RtpOut`] as the fan-out task uses it.
struct SharedRtpOut(Arc<Mutex<RtpOut>>);

impl Encoder for SharedRtpOut {
    fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>) {
        lock(&self.0).frame(frame, out);
    }
}

struct Session {
    id: String,
    state: State,
    path: Option<String>,
    setups: Vec<Setup>,
    playing: Option<Playing>,
    announced: Option<Recording>,
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    socket: Arc<TcpStream>,
    input: BytesMut,
    out: Out,
    session: Option<Session>,
    udp_tx: mpsc::Sender<UdpIn>,
    udp_rx: mpsc::Receiver<UdpIn>,
    routes: Vec<SocketAddr>,
    last_activity: Instant,
    /// When the bytes of the message now partly in `input` began to arrive.
    partial_since: Option<Instant>,
    last_report: Instant,
    closing: bool,
    nonce: String,
    /// Roles this connection has proven credentials for: [read, publish].
    authorized: [bool; 2],
}

pub async fn run(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
    let _ = socket.set_nodelay(true);
    let (udp_tx, udp_rx) = mpsc::channel(UDP_QUEUE);
    let now = Instant::now();
    let mut c = Conn {
        shared,
        peer,
        socket: Arc::new(socket),
        input: BytesMut::new(),
        out: Out::default(),
        session: None,
        udp_tx,
        udp_rx,
        routes: Vec::new(),
        last_activity: now,
        partial_since: None,
        last_report: now,
        closing: false,
        nonce: format!("{:016x}", super::random_u64()),
        authorized: [false; 2],
    };
    let r = c.run().await;
    c.teardown();
    r
}

fn status(code: u16, req: &Request) -> Response {
    Response::new(code, req.cseq())
}

/// The path part of an RTSP URL (`rtsp://host:port/APP/STREAM?query` gives `APP/STREAM`).
fn url_path(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i + 1..]);
    path.split(['?', '#']).next().unwrap_or("").trim_end_matches('/')
}

/// Splits a SETUP URL into the stream path and the track part (`trackID=1`, `streamid=0`).
fn split_control(uri: &str) -> (&str, Option<&str>) {
    let p = url_path(uri);
    match p.rsplit_once('/') {
        Some((base, last)) if last.contains('=') || last.starts_with("track") || last.starts_with("stream") => {
            (base, Some(last))
        }
        _ => (p, None),
    }
}

impl Conn {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; PLAYER_READ_BUFFER];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if self.slot().is_some_and(|s| s.fell_back()) {
                self.take_over()?;
            }
            self.flush().await?;
            if self.closing {
                return Ok(());
            }
            if buf.len() < READ_BUFFER && self.session.as_ref().is_some_and(|s| s.announced.is_some()) {
                buf.resize(READ_BUFFER, 0);
            }
            self.try_go_direct();
            let direct = self.slot().filter(|s| s.is_direct()).cloned();
            let reader = match self.session.as_mut().and_then(|s| s.playing.as_mut()) {
                Some(p) if !p.paused && direct.is_none() => p.reader.as_mut(),
                _ => None,
            };
            tokio::select! {
                r = read_some(&self.socket, &mut buf) => {
                    let n = r.context("read")?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.input.extend_from_slice(&buf[..n]);
                    self.handle_input().await;
                }
                Some(u) = self.udp_rx.recv() => self.on_udp(u),
                // Direct mode ended: the loop's top takes over.
                _ = async { direct.expect("guarded").changed().await }, if direct.is_some() => {}
                item = async { reader.expect("guarded").next().await }, if reader.is_some() => {
                    self.play_item(item);
                    for _ in 1..64 {
                        let Some(r) = self.session.as_mut().and_then(|s| s.playing.as_mut()).and_then(|p| p.reader.as_mut()) else { break };
                        let Some(item) = r.try_next() else { break };
                        self.play_item(item);
                        if self.closing { break; }
                    }
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.out.bufs.is_empty() {
            return Ok(());
        }
        // Responses and reports go out in order with the media.
        self.take_over()?;
        let timeout = write_timeout(&self.shared.hub);
        write_with_timeout(&self.socket, &mut self.out.bufs, timeout).await
    }

    /// The fan-out slot of the playing session.
    fn slot(&self) -> Option<&Arc<crate::fanout::Slot>> {
        self.session.as_ref()?.playing.as_ref()?.reader.as_ref()?.slot()
    }

    /// Hands the sending of frames to the stream's fan-out task when the player is in step
    /// and nothing waits to be written.
    fn try_go_direct(&mut self) {
        let Some(p) = self.session.as_mut().and_then(|s| s.playing.as_mut()) else { return };
        let Some(reader) = p.reader.as_ref() else { return };
        let Some(slot) = reader.slot() else { return };
        if p.paused || !reader.is_live() || !self.out.bufs.is_empty() || slot.is_direct() {
            return;
        }
        slot.go_direct(Box::new(SharedRtpOut(p.rtp.clone())));
    }

    /// Takes the sending back from the fan-out task; what it left unwritten goes first.
    fn take_over(&mut self) -> anyhow::Result<()> {
        let Some(slot) = self.slot().cloned() else { return Ok(()) };
        slot.take_over(&mut self.out.bufs).context("write")
    }

    fn send(&mut self, r: Response) {
        self.out.push(r.encode());
    }

    async fn handle_input(&mut self) {
        loop {
            let decoded = message::decode(&mut self.input);
            if !matches!(decoded, Ok(None)) {
                self.partial_since = None;
            }
            if !self.input.is_empty() && self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
            match decoded {
                Ok(None) => return,
                Ok(Some(Message::Request(req))) => {
                    self.last_activity = Instant::now();
                    let resp = self.handle_request(&req).await;
                    if resp.status >= 400 {
                        info!(peer = %self.peer, method = req.method.as_str(), uri = req.uri, status = resp.status, "rtsp request refused");
                    }
                    self.send(resp);
                }
                Ok(Some(Message::Response(_))) => {}
                Ok(Some(Message::Interleaved { channel, data })) => self.on_interleaved(channel, data),
                Err(e) => {
                    warn!(peer = %self.peer, "rtsp: {e}; closing");
                    self.send(Response::new(e.status(), None));
                    self.closing = true;
                    return;
                }
            }
            if self.closing {
                return;
            }
        }
    }

    fn session_for(&self, req: &Request) -> Result<(), u16> {
        match (req.session(), &self.session) {
            (Some(id), Some(s)) if s.id == id => Ok(()),
            (Some(_), _) => Err(454),
            (None, _) => Ok(()),
        }
    }

    fn session_header(&self) -> Option<String> {
        let s = self.session.as_ref()?;
        Some(format!("{};timeout={}", s.id, self.shared.config.session_timeout_ms / 1000))
    }

    async fn handle_request(&mut self, req: &Request) -> Response {
        if let Err(code) = self.session_for(req) {
            return status(code, req);
        }
        let state = self.session.as_ref().map_or(State::Init, |s| s.state);
        let next = match transition(state, &req.method) {
            Ok(n) => n,
            Err(code) => {
                let mut r = status(code, req);
                if code == 405 {
                    r = r.with("Allow", PUBLIC);
                }
                return r;
            }
        };
        if let Some(r) = self.authenticate(req) {
            return r;
        }
        let needs_session = matches!(req.method, Method::Play | Method::Pause | Method::Record | Method::Teardown);
        if needs_session && req.session().is_none() {
            return status(454, req);
        }
        let resp = match req.method {
            Method::Options => status(200, req).with("Public", PUBLIC),
            Method::Describe => self.describe(req).await,
            Method::Announce => self.announce(req),
            Method::Setup => self.setup(req).await,
            Method::Play => self.play(req),
            Method::Pause => {
                if let Some(p) = self.session.as_mut().and_then(|s| s.playing.as_mut()) {
                    p.paused = true;
                }
                status(200, req)
            }
            Method::Record => self.record(req),
            Method::Teardown => {
                self.teardown();
                return status(200, req);
            }
            Method::GetParameter => status(200, req),
            Method::SetParameter if req.body.is_empty() => status(200, req),
            Method::SetParameter => status(451, req),
            Method::Redirect | Method::Other(_) => status(501, req),
        };
        if resp.status == 200
            && let Some(s) = self.session.as_mut()
        {
            s.state = next;
        }
        match self.session_header() {
            Some(h) if resp.status == 200 && !matches!(req.method, Method::Options | Method::Describe) => {
                resp.with("Session", h)
            }
            _ => resp,
        }
    }

    /// A 401 when the request's role (read or publish) needs credentials this connection has
    /// not proven yet.
    fn authenticate(&mut self, req: &Request) -> Option<Response> {
        let publishing = self.session.as_ref().is_some_and(|s| s.announced.is_some());
        let role = match req.method {
            Method::Describe | Method::Play => 0,
            Method::Announce | Method::Record => 1,
            Method::Setup => usize::from(publishing),
            _ => return None,
        };
        let configured =
            if role == 0 { &self.shared.config.read_credentials } else { &self.shared.config.publish_credentials };
        let creds = ferrocast_rtsp::auth::Credentials::parse(configured)?;
        if self.authorized[role] {
            return None;
        }
        if ferrocast_rtsp::auth::verify(&creds, req.headers.get("Authorization"), req.method.as_str(), &self.nonce) {
            self.authorized[role] = true;
            return None;
        }
        if req.headers.get("Authorization").is_some() {
            warn!(peer = %self.peer, method = req.method.as_str(), "rtsp: wrong credentials");
        }
        let [digest, basic] = ferrocast_rtsp::auth::challenges(&self.nonce);
        Some(status(401, req).with("WWW-Authenticate", digest).with("WWW-Authenticate", basic))
    }

    fn redirect(&self, path: &str, req: &Request) -> Option<Response> {
        let to = self.shared.config.redirects.get(path)?;
        Some(status(301, req).with("Location", to.as_str()))
    }

    async fn describe(&mut self, req: &Request) -> Response {
        let path = url_path(&req.uri);
        if let Some(r) = self.redirect(path, req) {
            return r;
        }
        if path::validate(path).is_err() {
            return status(404, req);
        }
        if self.shared.hub.at_reader_limit(path) {
            return status(503, req);
        }
        let Some(sub) = self.shared.hub.subscribe_wait(path).await else {
            return status(404, req);
        };
        let tracks = wait_tracks(&sub).await;
        let local = self.socket.local_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "0.0.0.0".into());
        let (text, ids) = sdp::describe(&tracks, &local, "0.0.0.0");
        if ids.is_empty() {
            return status(404, req);
        }
        let base = format!("{}/", req.uri.trim_end_matches('/'));
        status(200, req).with("Content-Base", base).with_body("application/sdp", text)
    }

    fn new_session(&mut self) -> &mut Session {
        self.session.get_or_insert_with(|| Session {
            id: format!("{:016x}", super::random_u64()),
            state: State::Init,
            path: None,
            setups: Vec::new(),
            playing: None,
            announced: None,
        })
    }

    fn announce(&mut self, req: &Request) -> Response {
        let path = url_path(&req.uri).to_owned();
        if let Some(r) = self.redirect(&path, req) {
            return r;
        }
        if path::validate(&path).is_err() {
            return status(400, req);
        }
        if !req.headers.get("Content-Type").is_some_and(|c| c.starts_with("application/sdp")) {
            return status(400, req);
        }
        let sdp = match sdp::parse(&req.body) {
            Ok(s) => s,
            Err(e) => {
                warn!(peer = %self.peer, path, "rtsp announce: {e}");
                return status(400, req);
            }
        };
        let publisher = match self.shared.hub.publish(&path) {
            Ok(p) => p,
            Err(e) => {
                warn!(peer = %self.peer, path, "rtsp announce refused: {e}");
                return status(503, req);
            }
        };
        let recording = match Recording::new(publisher, &sdp) {
            Ok(r) => r,
            Err(why) => {
                warn!(peer = %self.peer, path, "rtsp announce: {why}");
                return status(400, req);
            }
        };
        info!(peer = %self.peer, path, tracks = recording.track_count(), "rtsp announce");
        let s = self.new_session();
        s.path = Some(path);
        s.announced = Some(recording);
        status(200, req)
    }

    async fn setup(&mut self, req: &Request) -> Response {
        let (path, control) = split_control(&req.uri);
        let path = path.to_owned();
        if let Some(r) = self.redirect(&path, req) {
            return r;
        }
        let Some(header) = req.headers.get("Transport") else {
            return status(461, req);
        };
        let recording = self.session.as_ref().is_some_and(|s| s.announced.is_some());
        let transport = match Transport::parse_header(header, |t| match t.lower {
            Lower::Tcp => true,
            Lower::Udp if t.multicast => !recording,
            Lower::Udp => t.client_port.is_some(),
        }) {
            Ok(t) => t,
            Err(e) => {
                debug!(peer = %self.peer, "{e}");
                return status(461, req);
            }
        };
        if let Some(s) = &self.session
            && let Some(p) = &s.path
            && *p != path
        {
            // One session serves one stream: aggregate control across paths is refused.
            return status(459, req);
        }
        // Which track.
        let index = if let Some(rec) = self.session.as_ref().and_then(|s| s.announced.as_ref()) {
            match rec.track_for_control(&req.uri, control) {
                Some(i) => i,
                None => return status(404, req),
            }
        } else {
            if path::validate(&path).is_err() {
                return status(404, req);
            }
            let Some(sub) = self.shared.hub.subscribe(&path) else {
                return status(404, req);
            };
            let tracks = wait_tracks(&sub).await;
            let available = [tracks.video.is_some(), tracks.audio.is_some()];
            match control {
                Some(c) => match c.rsplit_once('=').and_then(|(_, n)| n.parse::<usize>().ok()) {
                    Some(i) if i < 2 && available[i] => i,
                    _ => return status(404, req),
                },
                // SETUP of the aggregate URL is only meaningful for a single-track stream.
                None if available.iter().filter(|a| **a).count() == 1 => usize::from(!available[0]),
                None => return status(459, req),
            }
        };
        if self.session.as_ref().is_some_and(|s| s.setups.iter().any(|x| x.index == index)) {
            return status(455, req);
        }
        let peer_ip = self.peer.ip();
        let mut reply = transport.clone();
        let tx = match transport.lower {
            Lower::Tcp => {
                let (a, b) = transport.interleaved.unwrap_or((2 * index as u8, 2 * index as u8 + 1));
                reply.interleaved = Some((a, b));
                Tx::Tcp { rtp: a, rtcp: b }
            }
            Lower::Udp if transport.multicast => {
                let group = match self.shared.multicast_group(&path) {
                    Ok(g) => g,
                    Err(e) => {
                        // A socket we could not make: our failure, not the client's.
                        warn!("rtsp multicast: {e:#}");
                        return status(500, req);
                    }
                };
                reply.destination = Some(group.group().to_string());
                reply.port = Some((group.rtp_port(index), group.rtp_port(index) + 1));
                reply.ttl = Some(self.shared.config.multicast_ttl as u8);
                reply.client_port = None;
                Tx::Multicast(group)
            }
            Lower::Udp => {
                let (a, b) = transport.client_port.expect("checked");
                let rtp = SocketAddr::new(peer_ip, a);
                let rtcp = SocketAddr::new(peer_ip, b);
                for addr in [rtp, rtcp] {
                    self.shared.route(addr, self.udp_tx.clone(), index);
                    self.routes.push(addr);
                }
                reply.server_port = Some(self.shared.server_ports);
                Tx::Udp { rtp, rtcp }
            }
        };
        reply.record = recording;
        let s = self.new_session();
        s.path = Some(path.clone());
        s.setups.push(Setup { index, tx });
        debug!(peer = %self.peer, path, index, transport = reply.encode(), "rtsp setup");
        status(200, req).with("Transport", reply.encode())
    }

    fn play(&mut self, req: &Request) -> Response {
        let shared = self.shared.clone();
        let Some(s) = self.session.as_mut() else {
            return status(454, req);
        };
        if s.announced.is_some() {
            return status(455, req);
        }
        if let Some(p) = s.playing.as_mut() {
            // Resume after PAUSE: from the next keyframe.
            if p.paused {
                p.paused = false;
                if let Some(r) = p.reader.as_mut() {
                    r.resync();
                }
            }
            return status(200, req).with("Range", "npt=0.000-");
        }
        let Some(path) = s.path.clone() else {
            return status(455, req);
        };
        if let (_, Some(_)) = split_control(&req.uri)
            && s.setups.len() > 1
        {
            return status(460, req);
        }
        let Some(sub) = shared.hub.subscribe(&path) else {
            return status(404, req);
        };
        let unicast = s.setups.iter().any(|x| !matches!(x.tx, Tx::Multicast(_)));
        let tracks = (*sub.tracks).clone();
        let reader = unicast.then(|| Reader::attached(shared.hub.clone(), sub, Some(self.socket.clone())));
        let stream = shared.stream_rtp(&path);
        let mut txs = [None, None];
        for x in s.setups.iter().filter(|x| !matches!(x.tx, Tx::Multicast(_))) {
            if let Some(t) = txs.get_mut(x.index) {
                *t = Some(x.tx.clone());
            }
        }
        let rtp = RtpOut {
            shared: shared.clone(),
            stream: stream.clone(),
            tracks,
            txs,
            sent: Default::default(),
            headers: BytesMut::new(),
            udp: Vec::new(),
        };
        for x in &s.setups {
            if let Tx::Multicast(g) = &x.tx {
                g.start(&shared);
            }
        }
        info!(peer = %self.peer, path, session = s.id, tracks = s.setups.len(), "rtsp play");
        s.playing =
            Some(Playing { reader, stream, rtp: Arc::new(Mutex::new(rtp)), paused: false, last_rr: [None, None] });
        status(200, req).with("Range", "npt=0.000-")
    }

    fn record(&mut self, req: &Request) -> Response {
        let Some(s) = self.session.as_mut() else {
            return status(454, req);
        };
        let Some(rec) = s.announced.as_mut() else {
            return status(455, req);
        };
        if s.setups.is_empty() {
            return status(455, req);
        }
        rec.start();
        info!(peer = %self.peer, path = s.path.as_deref().unwrap_or(""), "rtsp record");
        status(200, req)
    }

    /// Ends the session: BYE to players, unpublish a recording, free UDP routes.
    fn teardown(&mut self) {
        // The rest of a frame the fan-out task left half-written goes out before anything
        // else on this connection (the BYE, the TEARDOWN response), or the interleaved
        // stream would be cut mid-packet.
        let _ = self.take_over();
        if let Some(s) = self.session.take()
            && let Some(p) = &s.playing
        {
            for x in &s.setups {
                let kind = if x.index == 0 { TrackKind::Video } else { TrackKind::Audio };
                if let (Some(ssrc), Tx::Tcp { .. } | Tx::Udp { .. }) = (p.stream.ssrc(kind), &x.tx) {
                    send_rtcp(&self.shared, &mut self.out.headers, &mut self.out.bufs, &x.tx, rtcp::bye(ssrc));
                }
                if let Some(rr) = &p.last_rr[x.index.min(1)] {
                    info!(peer = %self.peer, session = s.id, track = x.index, fraction_lost = rr.fraction_lost, cumulative_lost = rr.cumulative_lost, jitter = rr.jitter, "rtsp reader statistics");
                }
            }
        }
        self.shared.unroute(&self.routes);
        self.routes.clear();
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let idle = ms(self.shared.limits.publisher_idle_timeout_ms);
        if let Some(rec) = self.session.as_ref().and_then(|s| s.announced.as_ref())
            && rec.idle_for() > idle
        {
            info!(peer = %self.peer, "rtsp publisher sent no media for {idle:?}: unpublished");
            self.teardown();
            self.closing = true;
            return;
        }
        // Slow clients: a message must arrive whole within the request timeout of its first
        // byte, and a connection without a session must send a request that often.
        let request_timeout = ms(self.shared.config.request_timeout_ms);
        if let Some(since) = self.partial_since
            && now.duration_since(since) > request_timeout
        {
            info!(peer = %self.peer, "rtsp message not complete within {request_timeout:?}: closing");
            self.teardown();
            self.closing = true;
            return;
        }
        if self.session.is_none() && now.duration_since(self.last_activity) > request_timeout {
            info!(peer = %self.peer, "rtsp connection sent no request for {request_timeout:?}: closing");
            self.closing = true;
            return;
        }
        let timeout = ms(self.shared.config.session_timeout_ms);
        if self.session.is_some() && now.duration_since(self.last_activity) > timeout {
            info!(peer = %self.peer, "rtsp session timed out after {timeout:?} without requests or RTCP");
            self.teardown();
            self.closing = true;
            return;
        }
        if now.duration_since(self.last_report) < ms(self.shared.config.rtcp_interval_ms) {
            return;
        }
        self.last_report = now;
        let micros = unix_micros();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if let Some(p) = &s.playing {
            for x in &s.setups {
                let kind = if x.index == 0 { TrackKind::Video } else { TrackKind::Audio };
                let t = lock(&p.rtp).sent[x.index.min(1)];
                if matches!(x.tx, Tx::Multicast(_)) {
                    continue;
                }
                if let Some((_, sr)) = p.stream.sender_report(kind, micros, t.packets, t.octets) {
                    send_rtcp(&self.shared, &mut self.out.headers, &mut self.out.bufs, &x.tx, sr);
                }
            }
        }
        if let Some(rec) = s.announced.as_mut() {
            for (index, rr) in rec.receiver_reports(micros) {
                if let Some(x) = s.setups.iter().find(|x| x.index == index) {
                    send_rtcp(&self.shared, &mut self.out.headers, &mut self.out.bufs, &x.tx, rr);
                }
            }
        }
    }

    fn on_interleaved(&mut self, channel: u8, data: Bytes) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(x) =
            s.setups.iter().find(|x| matches!(x.tx, Tx::Tcp { rtp, rtcp } if rtp == channel || rtcp == channel))
        else {
            debug!(peer = %self.peer, channel, "rtsp: interleaved data on a channel that was never set up");
            return;
        };
        let Tx::Tcp { rtp, .. } = x.tx else { return };
        let index = x.index;
        self.last_activity = Instant::now();
        if channel == rtp {
            if let Some(rec) = s.announced.as_mut() {
                rec.on_rtp(index, data, false);
            }
        } else {
            on_rtcp(self.peer, s, index, &data);
        }
    }

    fn on_udp(&mut self, u: UdpIn) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        self.last_activity = Instant::now();
        if u.rtcp {
            on_rtcp(self.peer, s, u.index, &u.data);
        } else if let Some(rec) = s.announced.as_mut() {
            rec.on_rtp(u.index, u.data, true);
        }
    }

    fn play_item(&mut self, item: ReaderItem) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(p) = s.playing.as_mut() else { return };
        match item {
            ReaderItem::Tracks(t) => lock(&p.rtp).tracks = (*t).clone(),
            ReaderItem::Frame(f) => lock(&p.rtp).frame(&f, &mut self.out.bufs),
            ReaderItem::Unpublished | ReaderItem::Republished => {}
            ReaderItem::Ended | ReaderItem::TooSlow => {
                info!(peer = %self.peer, session = s.id, "rtsp play: stream ended; closing");
                self.teardown();
                self.closing = true;
            }
        }
    }
}

/// The tracks of a stream, waiting briefly for a stream that just started to send its codec
/// parameters.
async fn wait_tracks(sub: &crate::hub::Subscription) -> Arc<Tracks> {
    let deadline = Instant::now() + TRACKS_WAIT;
    let mut tracks = sub.current_tracks();
    while tracks.video.is_none() && tracks.audio.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tracks = sub.current_tracks();
    }
    tracks
}

fn on_rtcp(peer: SocketAddr, s: &mut Session, index: usize, data: &[u8]) {
    let packets = match rtcp::parse(data) {
        Ok(p) => p,
        Err(e) => {
            debug!(%peer, "rtsp: {e}");
            return;
        }
    };
    for p in packets {
        match p {
            RtcpPacket::ReceiverReport { reports, .. } | RtcpPacket::SenderReport { reports, .. }
                if s.playing.is_some() =>
            {
                if let (Some(pl), Some(r)) = (s.playing.as_mut(), reports.first()) {
                    debug!(%peer, track = index, fraction_lost = r.fraction_lost, cumulative_lost = r.cumulative_lost, jitter = r.jitter, "rtsp receiver report");
                    pl.last_rr[index.min(1)] = Some(*r);
                }
            }
            RtcpPacket::SenderReport { ntp, rtp_time, .. } => {
                if let Some(rec) = s.announced.as_mut() {
                    rec.on_sender_report(index, ntp, rtp_time);
                }
            }
            _ => {}
        }
    }
}

/// What a connection will write next: encoded responses, interleaved frame headers and
/// shared RTP packets, written with one vectored write.
#[derive(Default)]
struct Out {
    bufs: Vec<Bytes>,
    /// Scratch for the 4-byte interleaved headers: they are split off one buffer, so a
    /// packet costs no allocation of its own.
    headers: BytesMut,
}

impl Out {
    fn push(&mut self, b: Bytes) {
        self.bufs.push(b);
    }
}

fn interleaved(headers: &mut BytesMut, out: &mut Vec<Bytes>, channel: u8, pkt: Bytes) {
    if headers.capacity() < 4 {
        // Room for the headers of a frame or two (per-viewer memory).
        headers.reserve(1024);
    }
    headers.put_u8(b'$');
    headers.put_u8(channel);
    headers.put_u16(pkt.len() as u16);
    out.push(headers.split().freeze());
    out.push(pkt);
}

/// An RTP packet on a TCP transport (UDP packets go by frame, see [`RtpOut::frame`]).
fn send_rtp(headers: &mut BytesMut, out: &mut Vec<Bytes>, tx: &Tx, pkt: Bytes) {
    if let Tx::Tcp { rtp, .. } = tx {
        interleaved(headers, out, *rtp, pkt);
    }
}

fn send_rtcp(shared: &Shared, headers: &mut BytesMut, out: &mut Vec<Bytes>, tx: &Tx, pkt: Bytes) {
    match tx {
        Tx::Tcp { rtcp, .. } => interleaved(headers, out, *rtcp, pkt),
        Tx::Udp { rtcp, .. } => {
            let _ = shared.rtcp.try_send_to(&pkt, *rtcp);
        }
        Tx::Multicast(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(url_path("rtsp://h:8554/live/cam1"), "live/cam1");
        assert_eq!(url_path("rtsp://h/live/cam1/?x=1"), "live/cam1");
        assert_eq!(split_control("rtsp://h/live/cam1/trackID=1"), ("live/cam1", Some("trackID=1")));
        assert_eq!(split_control("rtsp://h/live/cam1/streamid=0"), ("live/cam1", Some("streamid=0")));
        assert_eq!(split_control("rtsp://h/live/cam1"), ("live/cam1", None));
    }
}
