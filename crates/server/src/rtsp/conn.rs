//! One RTSP connection: a thin driver around [`ServerSession`] (requests, state, auth,
//! transports and timers live there). It owns the socket, the hub subscription, the shared
//! RTP packets and the UDP routes, and answers the session's decisions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use ferrocast_media::{TrackKind, Tracks};
use ferrocast_rtsp::auth::Offered;
use ferrocast_rtsp::rtcp::{self, RtcpPacket};
use ferrocast_rtsp::server::{
    AuthAction, AuthVerdict, MulticastReply, Secrets, ServerAuth, ServerConfig, ServerEvent, ServerSession,
    SessionError,
};
use ferrocast_rtsp::transport::{Lower, Transport};
use ferrocast_rtsp::{sdp, url};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::player::{MAX_FIRST_FRAMES, Out, RtpOut, Starting, Tx, send_rtcp};
use super::record::Recording;
use super::vod::{Opened, VodPlaying};
use super::{Shared, StreamRtp, UdpIn, unix_micros};
use crate::config::ms;
use crate::hub::write_timeout;
use crate::path;
use crate::reader::{Reader, ReaderItem};
use crate::session::{Protocol, Role as SessionRole, RtcpFigures, SessionHandle};
use crate::sockio::{read_some, write_with_timeout};

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

struct Playing {
    reader: Option<Reader>,
    stream: Arc<StreamRtp>,
    /// The player's RTP side; None while the stream's fan-out task has it and sends for this
    /// player (direct mode: it keeps up). [`Conn::take_over`] brings it back.
    rtp: Option<Box<RtpOut>>,
    paused: bool,
    last_rr: [Option<rtcp::ReportBlock>; 2],
    /// A PLAY waiting for the first packet of every track (see [`super::player::FIRST_PACKETS_WAIT`]).
    starting: Option<Starting>,
}

/// What the connection does with media.
enum Media {
    None,
    Play(Playing),
    Record(Recording),
    /// Playback of recordings or a file.
    Vod(Box<VodPlaying>),
}

struct Conn {
    /// The connection's entry in the session registry (ends with the connection).
    sess: SessionHandle,
    shared: Arc<Shared>,
    peer: SocketAddr,
    socket: Arc<TcpStream>,
    session: ServerSession,
    out: Out,
    media: Media,
    /// Where each set-up track's packets go, by track index.
    txs: Vec<(usize, Tx)>,
    udp_tx: mpsc::Sender<UdpIn>,
    udp_rx: mpsc::Receiver<UdpIn>,
    routes: Vec<SocketAddr>,
    closing: bool,
    /// The playback target DESCRIBE or SETUP opened.
    opened: Option<Opened>,
}

pub async fn run(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
    let _ = socket.set_nodelay(true);
    let (udp_tx, udp_rx) = mpsc::channel(UDP_QUEUE);
    let config = ServerConfig {
        session_timeout: ms(shared.config.session_timeout_ms),
        request_timeout: ms(shared.config.request_timeout_ms),
        media_timeout: ms(shared.limits.publisher_idle_timeout_ms),
        rtcp_interval: ms(shared.config.rtcp_interval_ms),
        server_ports: shared.server_ports,
        auth: shared.hub.auth.rtsp_schemes().map(|schemes| ServerAuth { schemes, ..ServerAuth::default() }),
        redirects: shared.config.redirects.clone(),
    };
    let secrets = Secrets { session_id: super::random_u64(), nonce: super::random_u64() };
    let mut c = Conn {
        sess: shared.hub.sessions.open(Protocol::Rtsp, peer),
        session: ServerSession::new(config, secrets, Instant::now()),
        shared,
        peer,
        socket: Arc::new(socket),
        out: Out::default(),
        media: Media::None,
        txs: Vec::new(),
        udp_tx,
        udp_rx,
        routes: Vec::new(),
        closing: false,
        opened: None,
    };
    let r = c.run().await;
    if let Err(e) = &r {
        c.sess.set_reason(format!("{e:#}"));
    }
    c.teardown();
    r
}

impl Conn {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; PLAYER_READ_BUFFER];
        loop {
            if self.slot().is_some_and(|s| s.fell_back()) {
                self.take_over()?;
            }
            self.drain().await;
            self.pump_vod();
            self.flush().await?;
            if self.closing || self.session.is_closing() {
                debug!(peer = %self.peer, closing = self.closing, "rtsp: closing the connection");
                return Ok(());
            }
            if buf.len() < READ_BUFFER && matches!(self.media, Media::Record(_)) {
                buf.resize(READ_BUFFER, 0);
            }
            self.try_go_direct();
            let direct = self.slot().filter(|s| s.is_direct()).cloned();
            let start_deadline = self.playing().and_then(|p| p.starting.as_ref()).map(|s| s.deadline);
            let timeout = self.session.poll_timeout().map(|(_, at)| at);
            let reading = !self.session.awaiting_decision();
            let (reader, vod) = match &mut self.media {
                Media::Play(p) if !p.paused && direct.is_none() => (p.reader.as_mut(), None),
                Media::Vod(v) if v.waits() => (None, Some(v)),
                _ => (None, None),
            };
            tokio::select! {
                r = read_some(&self.socket, &mut buf), if reading => {
                    let n = r.context("read")?;
                    if n == 0 {
                        debug!(peer = %self.peer, session = %self.sess.id(), "rtsp: the peer closed the connection");
                        self.sess.set_reason("closed by peer");
                        return Ok(());
                    }
                    self.sess.info().add_in(n);
                    if let Err(e) = self.session.handle_input(Instant::now(), &buf[..n]) {
                        self.ended(&e);
                    }
                }
                Some(u) = self.udp_rx.recv() => {
                    self.sess.info().add_in(u.data.len());
                    self.session.handle_udp(Instant::now(), u.index, u.rtcp, u.data)
                }
                // DELETE /api/v1/sessions/ID: nothing more is sent; a recording unpublishes.
                _ = self.sess.kicked() => {
                    info!(peer = %self.peer, session = %self.sess.id(), "rtsp session kicked: closing");
                    self.kill();
                    return Ok(());
                }
                // Direct mode ended: the loop's top takes over.
                _ = async { direct.expect("guarded").changed().await }, if direct.is_some() => {}
                item = async { reader.expect("guarded").next().await }, if reader.is_some() => {
                    // Direct mode may have ended since the loop's top looked: the items are
                    // then the fan-out's, and the RTP side (and any unwritten rest) comes
                    // back first.
                    self.take_over()?;
                    self.play_item(item);
                    for _ in 1..64 {
                        let Media::Play(p) = &mut self.media else { break };
                        let Some(item) = p.reader.as_mut().and_then(|r| r.try_next()) else { break };
                        self.play_item(item);
                        if self.closing { break; }
                    }
                }
                wake = async { vod.expect("guarded").wake().await }, if vod.is_some() => {
                    if let Media::Vod(v) = &mut self.media {
                        v.handle(wake);
                    }
                }
                _ = sleep_until(start_deadline), if start_deadline.is_some() => self.finish_start(),
                _ = sleep_until(timeout), if timeout.is_some() => {
                    if let Err(e) = self.session.handle_timeout(Instant::now()) {
                        self.ended(&e);
                    }
                }
            }
        }
    }

    /// The session ended itself (bad input, a timeout): what it queued goes out, then close.
    fn ended(&mut self, e: &SessionError) {
        info!(peer = %self.peer, session = %self.sess.id(), "rtsp: {e}; closing");
        self.sess.set_reason(e.to_string());
        self.teardown();
        self.closing = true;
    }

    /// Sends what a playback viewer has due and answers its PLAY.
    fn pump_vod(&mut self) {
        let Media::Vod(v) = &mut self.media else { return };
        let r = v.pump(&self.shared, &mut self.session, &mut self.out, &self.txs);
        self.sess.info().add_out(std::mem::take(&mut v.udp_sent) as usize);
        if let Err(e) = r {
            self.ended(&e);
        }
    }

    /// The playback target of `path` and `uri`'s query, opened once per connection; None for
    /// a live path.
    async fn open_vod(&mut self, path: &str, uri: &str) -> Option<Result<(), u16>> {
        if self.opened.as_ref().is_some_and(|o| o.is_for(path, uri)) {
            return Some(Ok(()));
        }
        match super::vod::open(&self.shared, path, uri).await? {
            Ok(o) => {
                self.opened = Some(o);
                Some(Ok(()))
            }
            Err(code) => Some(Err(code)),
        }
    }

    fn playing(&self) -> Option<&Playing> {
        match &self.media {
            Media::Play(p) => Some(p),
            _ => None,
        }
    }

    /// Handles the session's events, then queues its output (events first: a BYE goes out
    /// before the TEARDOWN answer).
    async fn drain(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            if let Err(e) = self.on_event(ev).await {
                self.ended(&e);
            }
        }
        self.transmit();
    }

    fn transmit(&mut self) {
        while let Some(b) = self.session.poll_transmit() {
            self.out.push(b);
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.out.bufs.is_empty() {
            return Ok(());
        }
        // Responses and reports go out in order with the media.
        self.take_over()?;
        let timeout = write_timeout(&self.shared.hub);
        let total: usize = self.out.bufs.iter().map(bytes::Bytes::len).sum();
        write_with_timeout(&self.socket, &mut self.out.bufs, timeout).await?;
        self.sess.info().add_out(total);
        Ok(())
    }

    /// Ends the connection at once (a kick): the fan-out stops writing for it, nothing queued
    /// goes out, the media (a recording's publish, a player's subscription) and UDP routes go.
    fn kill(&mut self) {
        let _ = self.take_over();
        self.out.bufs.clear();
        self.media = Media::None;
        self.txs.clear();
        self.shared.unroute(&self.routes);
        self.routes.clear();
        let _ = socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Both);
    }

    /// The fan-out slot of the playing session.
    fn slot(&self) -> Option<&Arc<crate::fanout::Slot>> {
        self.playing()?.reader.as_ref()?.slot()
    }

    /// Hands the sending of frames to the stream's fan-out task when the player is in step
    /// and nothing waits to be written.
    fn try_go_direct(&mut self) {
        let Media::Play(p) = &mut self.media else { return };
        let Some(reader) = p.reader.as_ref() else { return };
        let Some(slot) = reader.slot() else { return };
        if p.paused || p.starting.is_some() || !reader.is_live() || !self.out.bufs.is_empty() || slot.is_direct() {
            return;
        }
        let Some(rtp) = p.rtp.take() else { return };
        if let Err(back) = slot.go_direct(rtp) {
            p.rtp = RtpOut::back(back);
        }
    }

    /// [`Conn::take_over`] where no error can be returned: a write error the fan-out met
    /// closes the connection. False then.
    fn take_over_or_close(&mut self) -> bool {
        let Err(e) = self.take_over() else { return true };
        info!(peer = %self.peer, session = %self.sess.id(), "rtsp: {e:#}; closing");
        self.sess.set_reason(format!("{e:#}"));
        self.closing = true;
        false
    }

    /// Takes the sending back from the fan-out task, with the player's RTP side; what it left
    /// unwritten goes first.
    fn take_over(&mut self) -> anyhow::Result<()> {
        let Some(slot) = self.slot().cloned() else { return Ok(()) };
        let back = slot.take_back(&mut self.out.bufs).context("write")?;
        if let (Media::Play(p), Some(back)) = (&mut self.media, back) {
            p.rtp = RtpOut::back(back);
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: ServerEvent) -> Result<(), SessionError> {
        match ev {
            ServerEvent::Describe { path, uri } => self.describe(&path, &uri).await,
            ServerEvent::Announce { path, sdp } => self.announce(&path, &sdp),
            ServerEvent::Setup { path, track, transport, record, uri } => {
                self.setup(&path, track, &transport, record, &uri).await
            }
            ServerEvent::Play { path, resume, mut request } => {
                // Without rate control a UDP viewer would be sent the media as fast as the CPU
                // goes, with nothing to hold it back: over UDP it is paced.
                if self.txs.iter().any(|(_, tx)| matches!(tx, Tx::Udp { .. })) {
                    request.rate_control_off = false;
                }
                if let Media::Vod(v) = &mut self.media {
                    return match v.player.play(Instant::now(), &request) {
                        Ok(()) => Ok(()),
                        Err(code) => self.session.reject(code),
                    };
                }
                if self.opened.as_ref().is_some_and(|o| o.key_path() == path) {
                    return self.play_vod(&path, &request);
                }
                if request.onvif_replay {
                    // Replay is of recordings: a live path has nothing to replay.
                    return self.session.reject(551);
                }
                self.play(&path, resume)
            }
            ServerEvent::Record { path } => {
                if let Media::Record(rec) = &mut self.media {
                    rec.start();
                }
                info!(peer = %self.peer, session = %self.sess.id(), path, "rtsp record");
                Ok(())
            }
            ServerEvent::Pause => {
                // The answer's flush takes the sending back from the fan-out task.
                match &mut self.media {
                    Media::Play(p) => p.paused = true,
                    Media::Vod(v) => v.player.pause(),
                    _ => {}
                }
                Ok(())
            }
            ServerEvent::Teardown => {
                self.teardown();
                Ok(())
            }
            ServerEvent::Rtp { track, data } => {
                let udp = self.txs.iter().any(|(i, tx)| *i == track && matches!(tx, Tx::Udp { .. }));
                if let Media::Record(rec) = &mut self.media {
                    rec.on_rtp(track, data, udp);
                }
                Ok(())
            }
            ServerEvent::Rtcp { track, data } => {
                on_rtcp(self.peer, &mut self.media, track, &data);
                self.rtcp_figures();
                Ok(())
            }
            ServerEvent::RtcpReport => {
                self.reports();
                Ok(())
            }
            ServerEvent::Authorize { action, path, uri, offered, .. } => {
                self.authorize(action, path, &uri, offered).await
            }
            ServerEvent::Refused { method, uri, status, bad_credentials } => {
                // The query may carry a token or a password: never logged.
                let uri = crate::relay::redact(&uri);
                if bad_credentials {
                    warn!(peer = %self.peer, method = method.as_str(), uri, "rtsp: wrong credentials");
                }
                info!(peer = %self.peer, session = %self.sess.id(), method = method.as_str(), uri, status, "rtsp request refused");
                Ok(())
            }
        }
    }

    /// Answers the session's [`ServerEvent::Authorize`] with `[auth]`'s decision. A playback
    /// URL (a recording's `start=`, a `vod/` file) needs `playback`, not `read`.
    async fn authorize(
        &mut self,
        action: AuthAction,
        path: String,
        uri: &str,
        offered: Option<Offered>,
    ) -> Result<(), SessionError> {
        use crate::auth::{Action, AuthRequest, Presented, Verdict, Via};
        let query = uri.split_once('?').map(|(_, q)| q);
        // The session tells a playback URL apart (and remembers it apart from a live read).
        let action = match action {
            AuthAction::Publish => Action::Publish,
            AuthAction::Playback => Action::Playback,
            AuthAction::Read => Action::Read,
        };
        let presented = match offered {
            Some(Offered::Basic(c)) => Presented::Password { user: c.user, pass: c.password },
            Some(Offered::Digest(d)) => Presented::Digest(Box::new(d), uri.to_owned()),
            None => crate::auth::http::from_query(query),
        };
        let req = AuthRequest {
            action,
            path: path.clone(),
            via: Via::Rtsp,
            ip: self.peer.ip(),
            presented,
            query: query.unwrap_or_default().to_owned(),
            id: Some(self.sess.id().to_string()),
        };
        let verdict = self.shared.hub.auth.check(&req).await;
        match &verdict {
            Verdict::Allow(user) => {
                if let Some(user) = user {
                    let _ = self.sess.info().user.set(user.clone());
                }
                self.session.authorize(AuthVerdict::Allow)
            }
            Verdict::Unauthorized => {
                debug!(peer = %self.peer, path, action = action.as_str(), "rtsp: not authorized");
                self.session.authorize(AuthVerdict::Challenge)
            }
            Verdict::Blocked => {
                warn!(peer = %self.peer, path, "rtsp: refused, the address failed too often");
                self.session.authorize(AuthVerdict::Forbidden)
            }
        }
    }

    async fn describe(&mut self, path: &str, uri: &str) -> Result<(), SessionError> {
        match self.open_vod(path, uri).await {
            Some(Ok(())) => {
                let local = self.socket.local_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "0.0.0.0".into());
                let Some(o) = &self.opened else { return self.session.reject(500) };
                let (text, tracks) = o.sdp(uri, &local);
                if tracks == 0 {
                    return self.session.reject(404);
                }
                return self.session.accept_describe(&text);
            }
            Some(Err(code)) => return self.session.reject(code),
            None => {}
        }
        if path::validate(path).is_err() {
            return self.session.reject(404);
        }
        if self.shared.hub.at_reader_limit(path) {
            return self.session.reject(503);
        }
        // A pull by another edge names the servers it came through (see `crate::edge`).
        let via = crate::edge::via_from_query(ferrocast_rtsp::url::query(uri));
        if let Err(e) = self.shared.hub.check_via(&via) {
            warn!(peer = %self.peer, path, "rtsp describe refused: {e}");
            return self.session.reject(508);
        }
        let Some(sub) = self.shared.hub.subscribe_wait_via(path, &via).await else {
            return self.session.reject(404);
        };
        let tracks = wait_tracks(&sub).await;
        let local = self.socket.local_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "0.0.0.0".into());
        // A URL with a query (a token, an edge's chain of servers) gets absolute track URLs
        // that keep it, as playback URLs do: clients that append the control to the URL would
        // put it after the query.
        let base = url::without_query(uri);
        let absolute = url::query(uri).map(|q| (base, q));
        let (text, ids) = sdp::describe_with(&tracks, &local, "0.0.0.0", &sdp::Presentation { ranges: &[], absolute });
        if ids.is_empty() {
            return self.session.reject(404);
        }
        self.session.accept_describe(&text)
    }

    fn announce(&mut self, path: &str, sdp: &sdp::Sdp) -> Result<(), SessionError> {
        if let Err(e) = path::validate_publish(path) {
            warn!(peer = %self.peer, path, "rtsp announce refused: {e}");
            return self.session.reject(e.rtsp_status());
        }
        let publisher = match self.shared.hub.publish(path) {
            Ok(p) => p,
            Err(e) => {
                warn!(peer = %self.peer, path, "rtsp announce refused: {e}");
                return self.session.reject(503);
            }
        };
        let recording = match Recording::new(publisher, sdp) {
            Ok(r) => r,
            Err(why) => {
                warn!(peer = %self.peer, path, "rtsp announce: {why}");
                return self.session.reject(400);
            }
        };
        info!(peer = %self.peer, session = %self.sess.id(), path, tracks = recording.track_count(), "rtsp announce");
        self.sess.begin(SessionRole::Publisher, path);
        self.media = Media::Record(recording);
        self.session.accept_announce(Instant::now())
    }

    async fn setup(
        &mut self,
        path: &str,
        track: Option<usize>,
        transport: &Transport,
        record: bool,
        uri: &str,
    ) -> Result<(), SessionError> {
        let vod = if record { None } else { self.open_vod(path, uri).await };
        let index = if record {
            // The session resolved the control URL to the SDP media; the recording keeps
            // or discards that media's packets.
            track.unwrap_or(0)
        } else if let Some(opened) = vod {
            if let Err(code) = opened {
                return self.session.reject(code);
            }
            if transport.multicast {
                // Each viewer has its own position: nothing to share in a group.
                return self.session.reject(461);
            }
            let Some(o) = &self.opened else { return self.session.reject(500) };
            let t = &o.info().tracks;
            let available = [t.video.is_some(), t.audio.is_some()];
            match track {
                Some(i) if i < 2 && available[i] => i,
                Some(_) => return self.session.reject(404),
                None if available.iter().filter(|a| **a).count() == 1 => usize::from(!available[0]),
                None => return self.session.reject(459),
            }
        } else {
            if path::validate(path).is_err() {
                return self.session.reject(404);
            }
            let Some(sub) = self.shared.hub.subscribe(path) else {
                return self.session.reject(404);
            };
            let tracks = wait_tracks(&sub).await;
            let available = [tracks.video.is_some(), tracks.audio.is_some()];
            match track {
                Some(i) if i < 2 && available[i] => i,
                Some(_) => return self.session.reject(404),
                // SETUP of the aggregate URL is only meaningful for a single-track stream.
                None if available.iter().filter(|a| **a).count() == 1 => usize::from(!available[0]),
                None => return self.session.reject(459),
            }
        };
        let mut group = None;
        let multicast = if transport.lower == Lower::Udp && transport.multicast {
            match self.shared.multicast_group(path) {
                Ok(g) => {
                    let port = g.rtp_port(index);
                    let reply = MulticastReply {
                        destination: g.group().to_string(),
                        ports: (port, port + 1),
                        ttl: self.shared.config.multicast_ttl as u8,
                    };
                    group = Some(g);
                    Some(reply)
                }
                Err(e) => {
                    // A socket we could not make: the session answers 500.
                    warn!("rtsp multicast: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let Some(reply) = self.session.accept_setup(index, multicast)? else {
            return Ok(());
        };
        let tx = match (reply.lower, group) {
            (Lower::Tcp, _) => {
                let (rtp, rtcp) = reply.interleaved.unwrap_or((0, 1));
                Tx::Tcp { rtp, rtcp }
            }
            (Lower::Udp, Some(g)) => Tx::Multicast(g),
            (Lower::Udp, None) => {
                let (a, b) = transport.client_port.unwrap_or((0, 0));
                let ip = self.peer.ip();
                let (rtp, rtcp) = (SocketAddr::new(ip, a), SocketAddr::new(ip, b));
                for addr in [rtp, rtcp] {
                    self.shared.route(addr, self.udp_tx.clone(), index);
                    self.routes.push(addr);
                }
                Tx::Udp { rtp, rtcp }
            }
        };
        debug!(peer = %self.peer, path, index, transport = reply.encode(), "rtsp setup");
        self.txs.push((index, tx));
        Ok(())
    }

    fn play(&mut self, path: &str, resume: bool) -> Result<(), SessionError> {
        if let Media::Play(p) = &mut self.media {
            // Resume after PAUSE: from the next keyframe, answered once its packets are known.
            if p.paused {
                p.paused = false;
                if let Some(r) = p.reader.as_mut() {
                    r.resync();
                    p.starting = Some(Starting::new(&self.txs));
                    return Ok(());
                }
            }
            return self.session.accept_play("npt=now-", &[]);
        }
        debug_assert!(!resume, "a resumed session has a player");
        let shared = self.shared.clone();
        // The stream builds RTP packets in order from here on (the GOP first), before the
        // subscription: no frame the reader is given can be left unbuilt.
        let stream = shared.stream_rtp(path);
        let Some(sub) = shared.hub.subscribe(path) else {
            return self.session.reject(404);
        };
        let unicast = self.txs.iter().any(|(_, tx)| !matches!(tx, Tx::Multicast(_)));
        let tracks = (*sub.tracks).clone();
        let mut reader = unicast.then(|| Reader::attached(shared.hub.clone(), sub, Some(self.socket.clone())));
        if let Some(r) = &mut reader {
            r.set_session(self.sess.info().clone());
        }
        let mut txs = [None, None];
        for (index, tx) in self.txs.iter().filter(|(_, tx)| !matches!(tx, Tx::Multicast(_))) {
            if let Some(t) = txs.get_mut(*index) {
                *t = Some(tx.clone());
            }
        }
        let rtp = RtpOut {
            shared: shared.clone(),
            stream: stream.clone(),
            tracks,
            txs,
            sent: Default::default(),
            headers: BytesMut::new(),
            session: Some(self.sess.info().clone()),
            udp_sent: Default::default(),
        };
        for (_, tx) in &self.txs {
            if let Tx::Multicast(g) = tx {
                g.start(&shared);
            }
        }
        info!(peer = %self.peer, path, session = %self.sess.id(), tracks = self.txs.len(), "rtsp play");
        self.sess.begin(SessionRole::Reader, path);
        let starting = reader.is_some().then(|| Starting::new(&self.txs));
        let multicast_only = starting.is_none();
        self.media = Media::Play(Playing {
            reader,
            stream,
            rtp: Some(Box::new(rtp)),
            paused: false,
            last_rr: [None, None],
            starting,
        });
        if multicast_only {
            // A multicast reader joins the group's packets where they are.
            return self.session.accept_play("npt=now-", &[]);
        }
        Ok(())
    }

    /// The first PLAY of a playback session: a viewer of its own over the opened target.
    fn play_vod(&mut self, path: &str, request: &ferrocast_rtsp::server::PlayRequest) -> Result<(), SessionError> {
        let Some(o) = &self.opened else { return self.session.reject(454) };
        let mut set_up = [false, false];
        for (i, _) in &self.txs {
            if let Some(s) = set_up.get_mut(*i) {
                *s = true;
            }
        }
        let mut v = VodPlaying::new(o, set_up, self.shared.config.mtu);
        if let Err(code) = v.player.play(Instant::now(), request) {
            return self.session.reject(code);
        }
        info!(peer = %self.peer, path, session = %self.sess.id(), scale = request.scale, speed = request.speed, "rtsp playback");
        self.sess.begin(SessionRole::Playback, path);
        self.media = Media::Vod(Box::new(v));
        Ok(())
    }

    /// Answers the PLAY waiting for first packets, then sends the frames held meanwhile.
    fn finish_start(&mut self) {
        let Media::Play(p) = &mut self.media else { return };
        let Some(st) = p.starting.take() else { return };
        let range = match st.first_ms {
            Some(ms) => format!("npt={}.{:03}-", ms / 1000, ms % 1000),
            None => "npt=now-".to_owned(),
        };
        if let Err(e) = self.session.accept_play(&range, &st.starts) {
            self.ended(&e);
        }
        // The answer goes before the first packet.
        self.transmit();
        for item in st.items {
            self.play_item(item);
        }
    }

    /// Ends the session: BYE to players, unpublish a recording, free UDP routes.
    fn teardown(&mut self) {
        // The rest of a frame the fan-out task left half-written goes out before anything
        // else on this connection (the BYE, the TEARDOWN response), or the interleaved
        // stream would be cut mid-packet.
        let _ = self.take_over();
        if let Media::Vod(v) = &self.media {
            v.bye(&self.shared, &mut self.out.headers, &mut self.out.bufs, &self.txs);
        }
        if let Media::Play(p) = &mut self.media {
            if let Some(rtp) = &mut p.rtp {
                rtp.count_sent();
            }
            for (index, tx) in &self.txs {
                let kind = if *index == 0 { TrackKind::Video } else { TrackKind::Audio };
                if let (Some(ssrc), Tx::Tcp { .. } | Tx::Udp { .. }) = (p.stream.ssrc(kind), tx) {
                    send_rtcp(&self.shared, &mut self.out.headers, &mut self.out.bufs, tx, rtcp::bye(ssrc));
                }
                if let Some(rr) = &p.last_rr[(*index).min(1)] {
                    info!(peer = %self.peer, session = %self.sess.id(), track = index, fraction_lost = rr.fraction_lost, cumulative_lost = rr.cumulative_lost, jitter = rr.jitter, "rtsp reader statistics");
                }
            }
        }
        self.media = Media::None;
        self.txs.clear();
        self.shared.unroute(&self.routes);
        self.routes.clear();
    }

    /// The RTCP report timer: sender reports to a player, receiver reports to a publisher.
    fn reports(&mut self) {
        // A player's reports count what it was sent: its RTP side, back from the fan-out.
        if !self.take_over_or_close() {
            return;
        }
        let micros = unix_micros();
        match &mut self.media {
            Media::Play(p) => {
                for (index, tx) in &self.txs {
                    if matches!(tx, Tx::Multicast(_)) {
                        continue;
                    }
                    let kind = if *index == 0 { TrackKind::Video } else { TrackKind::Audio };
                    let Some(t) = p.rtp.as_ref().map(|r| r.sent[(*index).min(1)]) else { continue };
                    if let Some((_, sr)) = p.stream.sender_report(kind, micros, t.packets, t.octets) {
                        send_rtcp(&self.shared, &mut self.out.headers, &mut self.out.bufs, tx, sr);
                    }
                }
            }
            Media::Vod(v) => v.reports(&self.shared, &mut self.out, &self.txs),
            Media::Record(rec) => {
                for (index, rr) in rec.receiver_reports(micros) {
                    if let Some((_, tx)) = self.txs.iter().find(|(i, _)| *i == index) {
                        send_rtcp(&self.shared, &mut self.out.headers, &mut self.out.bufs, tx, rr);
                    }
                }
            }
            Media::None => {}
        }
    }

    fn play_item(&mut self, item: ReaderItem) {
        let Media::Play(p) = &mut self.media else { return };
        if let Some(st) = &mut p.starting {
            if let (ReaderItem::Tracks(t), Some(rtp)) = (&item, &mut p.rtp) {
                rtp.tracks = (**t).clone();
            }
            if let (ReaderItem::Frame(f), Some(rtp)) = (&item, &p.rtp) {
                st.first_packet(rtp, &p.stream, f);
            }
            let ended = matches!(item, ReaderItem::Ended | ReaderItem::TooSlow);
            st.items.push(item);
            if ended || !st.wanted.contains(&true) || st.items.len() >= MAX_FIRST_FRAMES {
                self.finish_start();
            }
            return;
        }
        // The player's task handles items only while it has the RTP side (not in direct mode).
        match (item, &mut p.rtp) {
            (ReaderItem::Tracks(t), Some(rtp)) => rtp.tracks = (*t).clone(),
            (ReaderItem::Frame(f), Some(rtp)) => rtp.frame(&f, &mut self.out.bufs),
            (ReaderItem::Tracks(_) | ReaderItem::Frame(_), None) => {
                // Not reached: items come after a take-over, which brings the RTP side back.
                warn!(peer = %self.peer, session = %self.sess.id(), "rtsp play: an item without the RTP side; skipped");
            }
            (ReaderItem::Unpublished | ReaderItem::Republished, _) => {}
            (ReaderItem::Ended | ReaderItem::TooSlow, _) => {
                info!(peer = %self.peer, session = %self.sess.id(), "rtsp play: stream ended; closing");
                self.teardown();
                self.closing = true;
            }
        }
    }
}

impl Conn {
    /// The session's RTCP figures from the player's latest receiver reports (RFC 3550 6.4.1):
    /// losses summed over its tracks, the larger fraction lost and jitter (in seconds, by each
    /// track's clock).
    fn rtcp_figures(&mut self) {
        // The tracks' clocks are the RTP side's, back from the fan-out.
        if !self.take_over_or_close() {
            return;
        }
        let Some(p) = self.playing() else { return };
        let Some(tracks) = p.rtp.as_ref().map(|r| r.tracks.clone()) else { return };
        let mut fig: Option<RtcpFigures> = None;
        for (i, rr) in p.last_rr.iter().enumerate() {
            let Some(rr) = rr else { continue };
            let track = if i == 0 { tracks.video.as_ref() } else { tracks.audio.as_ref() };
            // Jitter is in RTP timestamp units (RFC 3550 6.4.1): the RTP clock, not the hub's.
            let clock = track.and_then(ferrocast_rtsp::codec::rtp_clock_rate).unwrap_or(90_000).max(1);
            let f = fig.get_or_insert_with(RtcpFigures::default);
            f.packets_lost += i64::from(rr.cumulative_lost);
            f.fraction_lost = f.fraction_lost.max(f64::from(rr.fraction_lost) / 256.0);
            f.jitter = f.jitter.max(f64::from(rr.jitter) / f64::from(clock));
        }
        if fig.is_some() {
            *self.sess.info().rtcp.lock().unwrap_or_else(|e| e.into_inner()) = fig;
        }
    }
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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

fn on_rtcp(peer: SocketAddr, media: &mut Media, index: usize, data: &[u8]) {
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
                if matches!(media, Media::Play(_)) =>
            {
                if let (Media::Play(pl), Some(r)) = (&mut *media, reports.first()) {
                    debug!(%peer, track = index, fraction_lost = r.fraction_lost, cumulative_lost = r.cumulative_lost, jitter = r.jitter, "rtsp receiver report");
                    pl.last_rr[index.min(1)] = Some(*r);
                }
            }
            RtcpPacket::SenderReport { ntp, rtp_time, .. } => {
                if let Media::Record(rec) = media {
                    rec.on_sender_report(index, ntp, rtp_time);
                }
            }
            _ => {}
        }
    }
}
