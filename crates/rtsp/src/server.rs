//! The server side of an RTSP connection (RFC 2326), sans I/O: requests in, responses out,
//! with the session state table, authentication, transport negotiation, session timeouts and
//! the RTCP report timer. The application decides what needs the world outside (does the
//! stream exist, may this path be published) and moves the media; see [`ServerSession`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::auth::{self, Offered, Schemes};
use crate::message::{self, Message, MessageError, Method, Request, Response};
use crate::range::{self, Range};
use crate::sdp::{self, Sdp};
use crate::state::{State, transition};
use crate::transport::{Lower, Transport};
use crate::url;

/// The methods we implement, for OPTIONS and 405.
pub const PUBLIC: &str =
    "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// The option tags of `Require` (RFC 2326 12.32) we know: ONVIF replay (ONVIF Streaming
/// Specification 6.2). Whether a path supports it is the application's call (it may refuse
/// with 551 itself).
pub const SUPPORTED_OPTIONS: &[&str] = &["onvif-replay"];

/// Most `Require` option tags read from one request.
const MAX_REQUIRED_OPTIONS: usize = 8;

/// Most tracks one session may set up. Our streams have two; a publisher's SDP may list a
/// few more (data, metadata) that are set up and discarded. Bounds per-session state.
pub const MAX_SETUPS: usize = 16;

/// Input held while the application owes a decision (DESCRIBE, ANNOUNCE, SETUP or PLAY):
/// a client may pipeline requests, but not make us buffer without end. One whole request
/// of the largest size [`message::decode`] accepts fits.
pub const MAX_PENDING_INPUT: usize = message::MAX_HEADER_LEN + message::MAX_BODY_LEN;

/// Settings of a server session.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A session with no request, RTCP or media from the client for this long ends.
    pub session_timeout: Duration,
    /// A message must arrive whole within this time of its first byte, and a connection
    /// without a session must send a request this often.
    pub request_timeout: Duration,
    /// A recording that receives no media for this long ends.
    pub media_timeout: Duration,
    /// Interval of the RTCP report timer ([`ServerEvent::RtcpReport`]).
    pub rtcp_interval: Duration,
    /// Our unicast RTP and RTCP ports, for `server_port` in SETUP answers.
    pub server_ports: (u16, u16),
    /// Whether the application checks who may read and publish: then DESCRIBE, ANNOUNCE,
    /// SETUP, PLAY and RECORD first raise [`ServerEvent::Authorize`]. None: open.
    pub auth: Option<ServerAuth>,
    /// Paths that moved: DESCRIBE, ANNOUNCE and SETUP answer 301 with this location.
    pub redirects: BTreeMap<String, String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            session_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            media_timeout: Duration::from_secs(20),
            rtcp_interval: Duration::from_secs(5),
            server_ports: (8000, 8001),
            auth: None,
            redirects: BTreeMap::new(),
        }
    }
}

/// How a session that checks credentials asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAuth {
    /// The schemes offered in a 401. Digest needs the plain password on the server side: an
    /// application whose users have hashed passwords, or that asks a third party, offers
    /// Basic only.
    pub schemes: Schemes,
    /// A Digest nonce is good for this long from when it was issued; an answer with an older
    /// one gets a 401 with `stale=true` and a new nonce (RFC 7616 section 3.3), which clients
    /// answer again without asking their user.
    pub nonce_lifetime: Duration,
}

impl Default for ServerAuth {
    fn default() -> Self {
        ServerAuth { schemes: Schemes { digest: true, basic: true }, nonce_lifetime: DEFAULT_NONCE_LIFETIME }
    }
}

/// How long a Digest nonce is good for by default: long enough for a client's whole setup,
/// short enough that a captured answer is soon worthless.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// Most (action, path) pairs remembered as authorized on one connection (one session serves
/// one stream; a client may read, then publish).
const MAX_AUTHORIZED: usize = 8;

/// What a request that needs authorization would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAction {
    /// DESCRIBE, a player's SETUP, PLAY.
    Read,
    /// The same for a playback URL: a `vod/` path or a `start=` query (recordings, files).
    /// Remembered apart from [`AuthAction::Read`]: reading a path live does not allow playing
    /// its recordings on the same connection.
    Playback,
    /// ANNOUNCE, a recording's SETUP, RECORD.
    Publish,
}

/// The application's answer to [`ServerEvent::Authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Go on with the request; this action on this path needs no check again on this
    /// connection.
    Allow,
    /// 401 with the challenges: no credentials, or wrong ones.
    Challenge,
    /// 403: refused whatever the credentials (an address that failed too often).
    Forbidden,
}

/// Unpredictable values a session needs; the application draws them from a CSPRNG.
#[derive(Clone, Copy)]
pub struct Secrets {
    /// The session id given at the first SETUP or ANNOUNCE.
    pub session_id: u64,
    /// The Digest nonce of this connection.
    pub nonce: u64,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// The session's timers; the earliest deadline is [`ServerSession::poll_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// A message begun must be complete by then.
    Request,
    /// A connection without a session must send a request by then.
    Idle,
    /// The session ends unless the client shows life by then.
    Session,
    /// A recording ends unless media arrives by then.
    Media,
    /// Time for RTCP sender or receiver reports.
    RtcpReport,
}

/// Why a session ended. Every variant is fatal: the driver flushes [`ServerSession::poll_transmit`]
/// (an error status may be queued), tears down and closes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    /// Input that is not RTSP, or over a size cap; answered with [`MessageError::status`].
    #[error(transparent)]
    Message(#[from] MessageError),
    /// More than [`MAX_PENDING_INPUT`] bytes sent while a decision was owed.
    #[error("more than {MAX_PENDING_INPUT} bytes sent while a request was being answered")]
    PendingInputTooLarge,
    /// A message was not complete within the request timeout of its first byte.
    #[error("message not complete within {0:?}")]
    RequestTimeout(Duration),
    /// No request within the request timeout on a connection without a session.
    #[error("no request within {0:?}")]
    IdleTimeout(Duration),
    /// No request, RTCP or media within the session timeout.
    #[error("session timed out after {0:?} without requests, RTCP or media")]
    SessionTimeout(Duration),
    /// A recording received no media within the media timeout.
    #[error("publisher sent no media for {0:?}")]
    MediaTimeout(Duration),
}

/// A decision or notification for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// DESCRIBE: answer with [`ServerSession::accept_describe`] or [`ServerSession::reject`].
    Describe {
        /// The stream path.
        path: String,
        /// The request URI (its query says what a playback URL plays).
        uri: String,
    },
    /// ANNOUNCE with a parsed SDP: answer with [`ServerSession::accept_announce`] or
    /// [`ServerSession::reject`].
    Announce {
        /// The stream path.
        path: String,
        /// The announced session description.
        sdp: Sdp,
    },
    /// SETUP: answer with [`ServerSession::accept_setup`] or [`ServerSession::reject`].
    Setup {
        /// The stream path.
        path: String,
        /// For a recording, the index of the SDP media the control URL names (every `m=`
        /// line counts). For a player, the N of `trackID=N`, or None for the aggregate URL
        /// (the application picks the track of a single-track stream, or refuses with 459).
        track: Option<usize>,
        /// The transport the client asked for (the first acceptable alternative).
        transport: Transport,
        /// True when setting up a track of an announced recording.
        record: bool,
        /// The request URI (its query says what a playback URL plays).
        uri: String,
    },
    /// PLAY (first, or again after PLAY or PAUSE): answer with [`ServerSession::accept_play`]
    /// (or [`ServerSession::accept_play_with`]) or [`ServerSession::reject`] (457 for a Range
    /// outside the presentation).
    Play {
        /// The stream path.
        path: String,
        /// True when the session has played before (a resume after PAUSE, or a seek).
        resume: bool,
        /// The playback headers.
        request: PlayRequest,
    },
    /// RECORD was accepted: media follows.
    Record {
        /// The stream path.
        path: String,
    },
    /// PAUSE of a playing session was accepted: stop sending until the next PLAY.
    Pause,
    /// TEARDOWN was accepted: the session is over (the connection may stay).
    Teardown,
    /// An RTP packet from the client on a set-up track (interleaved or from
    /// [`ServerSession::handle_udp`]).
    Rtp {
        /// The track (as given to [`ServerSession::accept_setup`]).
        track: usize,
        /// The packet.
        data: Bytes,
    },
    /// An RTCP packet from the client on a set-up track.
    Rtcp {
        /// The track.
        track: usize,
        /// The packet.
        data: Bytes,
    },
    /// The RTCP report timer fired: send sender reports (playing) or receiver reports
    /// (recording) on every set-up track.
    RtcpReport,
    /// A request that needs authorization (the session has [`ServerConfig::auth`]): answer
    /// with [`ServerSession::authorize`]. A Digest answer's nonce was checked already (ours
    /// and fresh); its `response` is the application's to verify with
    /// [`auth::DigestAnswer::verify`].
    Authorize {
        /// What the request would do.
        action: AuthAction,
        /// The method.
        method: Method,
        /// The stream path.
        path: String,
        /// The request URI (its query may carry a token, or say it is a playback).
        uri: String,
        /// The credentials of its `Authorization` header, if any.
        offered: Option<Offered>,
    },
    /// A request was refused; for the application's log.
    Refused {
        /// The method.
        method: Method,
        /// The request URI.
        uri: String,
        /// The status sent.
        status: u16,
        /// A 401 for credentials that were sent but wrong.
        bad_credentials: bool,
    },
}

/// The multicast group a SETUP is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastReply {
    /// The group address.
    pub destination: String,
    /// RTP and RTCP ports of the track in the group.
    pub ports: (u16, u16),
    /// TTL.
    pub ttl: u8,
}

/// What the first RTP packet a player will get on one track carries (RFC 2326 12.33): the
/// `seq` and `rtptime` of RTP-Info, from that packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpStart {
    /// The track.
    pub track: usize,
    /// Sequence number of the first packet.
    pub seq: u16,
    /// RTP timestamp of the first packet.
    pub rtptime: u32,
}

/// What a PLAY asks for beyond "play": RFC 2326 Range, Scale and Speed, and the ONVIF
/// replay headers. The session has parsed them (a malformed value was answered with 400).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlayRequest {
    /// `Range`: where to start (and end).
    pub range: Option<Range>,
    /// `Scale`: media time per unit of presentation time; negative plays backwards.
    pub scale: Option<f64>,
    /// `Speed`: delivery faster than real time (positive).
    pub speed: Option<f64>,
    /// `Require: onvif-replay` was sent.
    pub onvif_replay: bool,
    /// `Rate-Control: no` (ONVIF): send as fast as the client reads, not in real time.
    pub rate_control_off: bool,
    /// The request's CSeq (the ONVIF replay extension carries its low byte).
    pub cseq: u32,
}

/// The answer to a PLAY, for [`ServerSession::accept_play_with`].
#[derive(Debug, Clone, Copy)]
pub struct PlayReply<'a> {
    /// The Range played (`npt=12.000-30.000`, `clock=...`).
    pub range: &'a str,
    /// RTP-Info: per track, the first packet the player will get.
    pub starts: &'a [RtpStart],
    /// The Scale used, when the request had one (RFC 2326 12.34: it may differ).
    pub scale: Option<f64>,
    /// The Speed used, when the request had one.
    pub speed: Option<f64>,
    /// Echo `Rate-Control: no` (ONVIF replay).
    pub rate_control_off: bool,
}

/// One set-up track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetUp {
    /// The track index.
    pub track: usize,
    /// The transport as answered.
    pub transport: Transport,
    /// The request URI of the SETUP (the track's URL in RTP-Info).
    pub uri: String,
}

#[derive(Debug)]
enum Mode {
    Play { played: bool },
    Record { sdp: Sdp },
}

#[derive(Debug)]
struct Session {
    id: String,
    path: String,
    mode: Mode,
    setups: Vec<SetUp>,
    /// PLAY or RECORD was accepted: the report timer runs.
    started: bool,
}

#[derive(Debug)]
enum Pending {
    Authorize { next: State, action: AuthAction, path: String, offered: bool },
    Describe,
    Announce { path: String, sdp: Sdp },
    Setup { path: String, transport: Transport, record: bool },
    Play,
}

/// The server side of one RTSP connection, sans I/O.
///
/// Drive it like this, draining the polls after every input (events first: what the
/// application writes for an event, such as the RTCP BYE of a TEARDOWN, goes before the
/// response):
///
/// ```no_run
/// # use std::time::Instant;
/// # use ferrocast_rtsp::server::{Secrets, ServerConfig, ServerEvent, ServerSession};
/// # fn read() -> Vec<u8> { vec![] } fn write(_: &[u8]) {}
/// let secrets = Secrets { session_id: 1, nonce: 2 }; // from a CSPRNG
/// let mut s = ServerSession::new(ServerConfig::default(), secrets, Instant::now());
/// loop {
///     s.handle_input(Instant::now(), &read())?;     // or handle_timeout at poll_timeout()
///     while let Some(ev) = s.poll_event() {
///         match ev {
///             ServerEvent::Describe { .. } => s.accept_describe("v=0\r\n...")?,
///             ServerEvent::Setup { track, .. } => { s.accept_setup(track.unwrap_or(0), None)?; }
///             ServerEvent::Play { .. } => s.accept_play("npt=0-", &[])?,
///             _ => {}
///         }
///     }
///     while let Some(bytes) = s.poll_transmit() { write(&bytes); }
/// }
/// # Ok::<(), ferrocast_rtsp::server::SessionError>(())
/// ```
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    secrets: Secrets,
    nonce: String,
    state: State,
    session: Option<Session>,
    /// The request whose answer the application owes.
    pending: Option<(Request, Pending)>,
    input: BytesMut,
    out: BytesMut,
    events: VecDeque<ServerEvent>,
    /// When the Digest nonce was issued, and how many were before it.
    nonce_issued: Instant,
    nonce_count: u64,
    /// The nonce before the current one: an answer with it is stale, not wrong.
    old_nonce: Option<String>,
    /// Actions the application allowed on this connection.
    authorized: Vec<(AuthAction, String)>,
    last_activity: Instant,
    last_media: Instant,
    /// When the first byte of the message now partly in `input` arrived.
    partial_since: Option<Instant>,
    next_report: Option<Instant>,
    closing: bool,
    /// Sessions made on this connection so far: each gets a different id.
    generation: u64,
}

/// The `n`th Digest nonce of a connection whose secret is `secret`: unpredictable without the
/// secret (SHA-256 of both), different each time.
fn nonce(secret: u64, n: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(secret.to_be_bytes());
    h.update(n.to_be_bytes());
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn status(code: u16, req: &Request) -> Response {
    Response::new(code, req.cseq())
}

/// The option tags of the request's `Require` that we do not know, for `Unsupported`.
fn unsupported_options(req: &Request) -> Option<String> {
    let required = req.headers.get("Require")?;
    let unknown: Vec<&str> = required
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !SUPPORTED_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .take(MAX_REQUIRED_OPTIONS)
        .collect();
    (!unknown.is_empty()).then(|| unknown.join(", ").chars().take(range::MAX_VALUE_LEN).collect())
}

/// The playback headers of a PLAY.
fn play_request(req: &Request) -> Result<PlayRequest, range::RangeError> {
    let h = &req.headers;
    let range = h.get("Range").map(Range::parse).transpose()?;
    let scale = h.get("Scale").map(range::parse_rate).transpose()?;
    let speed = h.get("Speed").map(range::parse_rate).transpose()?;
    if let Some(s) = speed
        && s < 0.0
    {
        return Err(range::RangeError::Rate(s.to_string()));
    }
    let onvif_replay =
        h.get("Require").is_some_and(|r| r.split(',').any(|t| t.trim().eq_ignore_ascii_case("onvif-replay")));
    let rate_control_off = h.get("Rate-Control").is_some_and(|v| v.trim().eq_ignore_ascii_case("no"));
    Ok(PlayRequest { range, scale, speed, onvif_replay, rate_control_off, cseq: req.cseq().unwrap_or(0) })
}

impl ServerSession {
    /// A session for a freshly accepted connection.
    pub fn new(config: ServerConfig, secrets: Secrets, now: Instant) -> ServerSession {
        ServerSession {
            config,
            nonce: nonce(secrets.nonce, 0),
            nonce_issued: now,
            nonce_count: 0,
            old_nonce: None,
            secrets,
            state: State::Init,
            session: None,
            pending: None,
            input: BytesMut::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            authorized: Vec::new(),
            last_activity: now,
            last_media: now,
            partial_since: None,
            next_report: None,
            closing: false,
            generation: 0,
        }
    }

    /// The session state (RFC 2326 A.2).
    pub fn state(&self) -> State {
        self.state
    }

    /// The session id, once a SETUP or ANNOUNCE made one.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }

    /// The stream path of the session.
    pub fn path(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.path.as_str())
    }

    /// True when the session records (ANNOUNCE accepted).
    pub fn is_recording(&self) -> bool {
        matches!(self.session, Some(Session { mode: Mode::Record { .. }, .. }))
    }

    /// The set-up tracks.
    pub fn setups(&self) -> &[SetUp] {
        self.session.as_ref().map_or(&[], |s| &s.setups)
    }

    /// True while the application owes an answer; the driver need not read meanwhile.
    pub fn awaiting_decision(&self) -> bool {
        self.pending.is_some()
    }

    /// True after an error that ends the connection: flush, then close.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Feeds bytes read from the RTSP connection.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), SessionError> {
        if self.closing {
            return Ok(());
        }
        self.input.extend_from_slice(data);
        if self.pending.is_some() && self.input.len() > MAX_PENDING_INPUT {
            self.closing = true;
            return Err(SessionError::PendingInputTooLarge);
        }
        self.process(now)
    }

    /// A datagram from the client's address of `track` (the application routes UDP by the
    /// client ports of [`ServerSession::setups`]).
    pub fn handle_udp(&mut self, now: Instant, track: usize, rtcp: bool, data: Bytes) {
        let Some(s) = &self.session else { return };
        if !s.setups.iter().any(|x| x.track == track) {
            return;
        }
        self.last_activity = now;
        if rtcp {
            self.events.push_back(ServerEvent::Rtcp { track, data });
        } else {
            self.last_media = now;
            self.events.push_back(ServerEvent::Rtp { track, data });
        }
    }

    fn process(&mut self, now: Instant) -> Result<(), SessionError> {
        while self.pending.is_none() && !self.closing {
            let decoded = message::decode(&mut self.input);
            if !matches!(decoded, Ok(None)) {
                self.partial_since = None;
            }
            match decoded {
                Ok(None) => {
                    if !self.input.is_empty() && self.partial_since.is_none() {
                        self.partial_since = Some(now);
                    }
                    return Ok(());
                }
                Ok(Some(Message::Request(req))) => {
                    self.last_activity = now;
                    self.on_request(now, req);
                }
                Ok(Some(Message::Response(_))) => {}
                Ok(Some(Message::Interleaved { channel, data })) => self.on_interleaved(now, channel, data),
                Err(e) => {
                    self.send(Response::new(e.status(), None));
                    self.closing = true;
                    return Err(e.into());
                }
            }
        }
        // A message waiting behind a decision is not "slow": its clock starts when read.
        if !self.input.is_empty() && self.partial_since.is_none() && self.pending.is_none() {
            self.partial_since = Some(now);
        }
        Ok(())
    }

    fn on_interleaved(&mut self, now: Instant, channel: u8, data: Bytes) {
        let Some(s) = &self.session else { return };
        let found = s.setups.iter().find_map(|x| match x.transport.interleaved {
            Some((rtp, _)) if x.transport.lower == Lower::Tcp && rtp == channel => Some((x.track, false)),
            Some((_, rtcp)) if x.transport.lower == Lower::Tcp && rtcp == channel => Some((x.track, true)),
            _ => None,
        });
        // Data on a channel never set up is dropped (RFC 2326 10.12 leaves it undefined).
        let Some((track, rtcp)) = found else { return };
        self.handle_udp(now, track, rtcp, data);
    }

    fn send(&mut self, r: Response) {
        self.out.extend_from_slice(&r.encode());
    }

    /// Sends `resp` for `req`, with the Session header on a success, and the log event on
    /// a refusal.
    fn respond(&mut self, req: &Request, resp: Response, bad_credentials: bool) {
        let resp = match &self.session {
            Some(s) if resp.status == 200 && !matches!(req.method, Method::Options | Method::Describe) => {
                let timeout = self.config.session_timeout.as_secs();
                resp.with("Session", format!("{};timeout={timeout}", s.id))
            }
            _ => resp,
        };
        if resp.status >= 400 {
            self.events.push_back(ServerEvent::Refused {
                method: req.method.clone(),
                uri: req.uri.clone(),
                status: resp.status,
                bad_credentials,
            });
        }
        self.send(resp);
    }

    fn refuse(&mut self, req: &Request, code: u16) {
        let mut r = status(code, req);
        if code == 405 {
            r = r.with("Allow", PUBLIC);
        }
        self.respond(req, r, false);
    }

    fn on_request(&mut self, now: Instant, req: Request) {
        // Which session: a Session header must name ours (RFC 2326 12.37).
        if let Some(id) = req.session()
            && self.session.as_ref().is_none_or(|s| s.id != id)
        {
            return self.refuse(&req, 454);
        }
        let next = match transition(self.state, &req.method) {
            Ok(n) => n,
            Err(code) => return self.refuse(&req, code),
        };
        if let Some((action, path)) = self.needs_auth(&req) {
            return self.ask_authorization(now, req, next, action, path);
        }
        self.proceed(now, req, next);
    }

    /// The request once authorized.
    fn proceed(&mut self, now: Instant, req: Request, next: State) {
        if let Some(unsupported) = unsupported_options(&req) {
            let r = status(551, &req).with("Unsupported", unsupported);
            return self.respond(&req, r, false);
        }
        let needs_session = matches!(req.method, Method::Play | Method::Pause | Method::Record | Method::Teardown);
        if needs_session && req.session().is_none() {
            return self.refuse(&req, 454);
        }
        match req.method {
            Method::Options => {
                let r = status(200, &req).with("Public", PUBLIC);
                self.respond(&req, r, false);
            }
            Method::Describe => self.describe(req),
            Method::Announce => self.announce(req),
            Method::Setup => self.setup(req),
            Method::Play => self.play(req),
            // A recording session is paused by nobody: before RECORD as during it (RFC 2326
            // leaves it undefined; ingest does not pause), so PAUSE is refused there.
            Method::Pause if self.is_recording() => self.refuse(&req, 455),
            Method::Pause => {
                self.state = next;
                self.events.push_back(ServerEvent::Pause);
                self.respond(&req, status(200, &req), false);
            }
            Method::Record => self.record(now, req, next),
            Method::Teardown => {
                self.events.push_back(ServerEvent::Teardown);
                self.session = None;
                self.state = State::Init;
                self.next_report = None;
                self.respond(&req, status(200, &req), false);
            }
            Method::GetParameter => self.respond(&req, status(200, &req), false),
            // An empty SET_PARAMETER is a keep-alive; we have no parameters to set.
            Method::SetParameter if req.body.is_empty() => self.respond(&req, status(200, &req), false),
            Method::SetParameter => self.refuse(&req, 451),
            Method::Redirect | Method::Other(_) => self.refuse(&req, 501),
        }
    }

    /// The action and path of a request the application must authorize first; None when
    /// auth is off, the request needs none, or it was allowed before on this connection.
    fn needs_auth(&self, req: &Request) -> Option<(AuthAction, String)> {
        self.config.auth?;
        let session_path = self.session.as_ref().map(|s| s.path.clone());
        let read = |path: String| {
            let action = if is_playback(&path, &req.uri) { AuthAction::Playback } else { AuthAction::Read };
            (action, path)
        };
        let (action, path) = match req.method {
            Method::Describe => read(url::path(&req.uri).to_owned()),
            Method::Announce => (AuthAction::Publish, url::path(&req.uri).to_owned()),
            Method::Setup if self.is_recording() => (AuthAction::Publish, session_path?),
            Method::Setup => read(session_path.unwrap_or_else(|| url::split_control(&req.uri).0.to_owned())),
            Method::Play => {
                let (action, path) = read(session_path?);
                // A PLAY starts what the session's SETUP opened, which was authorized as
                // that SETUP's action (a playback SETUP needed `Playback`).
                if action == AuthAction::Read
                    && self.authorized.iter().any(|(a, p)| *a == AuthAction::Playback && *p == path)
                {
                    return None;
                }
                (action, path)
            }
            Method::Record => (AuthAction::Publish, session_path?),
            _ => return None,
        };
        (!self.authorized.iter().any(|(a, p)| *a == action && *p == path)).then_some((action, path))
    }

    /// Raises [`ServerEvent::Authorize`], or answers a Digest answer with a stale nonce.
    fn ask_authorization(&mut self, now: Instant, req: Request, next: State, action: AuthAction, path: String) {
        let Some(auth) = self.config.auth else { return self.proceed(now, req, next) };
        let mut offered = req.headers.get("Authorization").and_then(|h| Offered::parse(h, req.method.as_str()));
        if let Some(Offered::Digest(d)) = &offered {
            let current = auth::constant_time_eq(d.nonce.as_bytes(), self.nonce.as_bytes());
            let expired = now.saturating_duration_since(self.nonce_issued) >= auth.nonce_lifetime;
            if current && expired {
                self.nonce_count += 1;
                self.old_nonce = Some(std::mem::replace(&mut self.nonce, nonce(self.secrets.nonce, self.nonce_count)));
                self.nonce_issued = now;
                return self.challenge(&req, true, false);
            }
            if !current {
                if self.old_nonce.as_deref().is_some_and(|o| auth::constant_time_eq(o.as_bytes(), d.nonce.as_bytes())) {
                    return self.challenge(&req, true, false);
                }
                // A nonce we never issued proves nothing: as if none was sent.
                offered = None;
            }
        }
        self.events.push_back(ServerEvent::Authorize {
            action,
            method: req.method.clone(),
            path: path.clone(),
            uri: req.uri.clone(),
            offered: offered.clone(),
        });
        self.pending = Some((req, Pending::Authorize { next, action, path, offered: offered.is_some() }));
    }

    /// A 401 with our challenges.
    fn challenge(&mut self, req: &Request, stale: bool, bad_credentials: bool) {
        let schemes = self.config.auth.map_or(Schemes { digest: true, basic: true }, |a| a.schemes);
        let mut r = status(401, req);
        for c in auth::server_challenges(&self.nonce, stale, schemes) {
            r = r.with("WWW-Authenticate", c);
        }
        self.respond(req, r, bad_credentials);
    }

    /// Answers the pending [`ServerEvent::Authorize`].
    pub fn authorize(&mut self, verdict: AuthVerdict) -> Result<(), SessionError> {
        let Some((req, Pending::Authorize { next, action, path, offered })) =
            self.take_pending(|p| matches!(p, Pending::Authorize { .. }))
        else {
            return self.resume();
        };
        match verdict {
            AuthVerdict::Allow => {
                if self.authorized.len() == MAX_AUTHORIZED {
                    self.authorized.remove(0);
                }
                self.authorized.push((action, path));
                let now = self.last_activity;
                self.proceed(now, req, next);
            }
            AuthVerdict::Challenge => self.challenge(&req, false, offered),
            AuthVerdict::Forbidden => self.refuse(&req, 403),
        }
        self.resume()
    }

    fn redirect(&mut self, path: &str, req: &Request) -> bool {
        let Some(to) = self.config.redirects.get(path) else { return false };
        let r = status(301, req).with("Location", to.as_str());
        self.respond(req, r, false);
        true
    }

    fn describe(&mut self, req: Request) {
        let path = url::path(&req.uri).to_owned();
        if self.redirect(&path, &req) {
            return;
        }
        self.events.push_back(ServerEvent::Describe { path, uri: req.uri.clone() });
        self.pending = Some((req, Pending::Describe));
    }

    fn announce(&mut self, req: Request) {
        let path = url::path(&req.uri).to_owned();
        if self.redirect(&path, &req) {
            return;
        }
        if self.session.is_some() {
            // One session per connection, and this one is set up already.
            return self.refuse(&req, 455);
        }
        if !req.headers.get("Content-Type").is_some_and(|c| c.starts_with("application/sdp")) {
            return self.refuse(&req, 400);
        }
        let sdp = match sdp::parse(&req.body) {
            Ok(s) => s,
            Err(_) => return self.refuse(&req, 400),
        };
        self.events.push_back(ServerEvent::Announce { path: path.clone(), sdp: sdp.clone() });
        self.pending = Some((req, Pending::Announce { path, sdp }));
    }

    fn setup(&mut self, req: Request) {
        let (path, control) = url::split_control(&req.uri);
        let mut path = path.to_owned();
        // A publisher's SETUP names a media of its own SDP, whatever its control looks like
        // (`a=control:audio` or an absolute URL under the stream's): its path is the session's.
        if let Some(Session { path: session_path, mode: Mode::Record { sdp }, .. }) = &self.session
            && url::path(&req.uri).starts_with(session_path.as_str())
            && url::media_for_control(sdp, &req.uri).is_some()
        {
            path = session_path.clone();
        }
        if self.redirect(&path, &req) {
            return;
        }
        let Some(header) = req.headers.get("Transport") else {
            return self.refuse(&req, 461);
        };
        let record = self.is_recording();
        let acceptable = |t: &Transport| match t.lower {
            Lower::Tcp => true,
            // A publisher cannot send to a group we would have to join.
            Lower::Udp if t.multicast => !record,
            Lower::Udp => t.client_port.is_some(),
        };
        let Ok(transport) = Transport::parse_header(header, acceptable) else {
            return self.refuse(&req, 461);
        };
        if let Some(s) = &self.session {
            if s.path != path {
                // One session serves one stream: aggregate control across paths is refused.
                return self.refuse(&req, 459);
            }
            if s.setups.len() >= MAX_SETUPS {
                return self.refuse(&req, 453);
            }
        }
        let track = match self.session.as_ref().map(|s| &s.mode) {
            Some(Mode::Record { sdp }) => match url::media_for_control(sdp, &req.uri) {
                Some(i) => Some(i),
                None => return self.refuse(&req, 404),
            },
            _ => match control {
                Some(c) => match url::described_track(c) {
                    Some(i) => Some(i),
                    None => return self.refuse(&req, 404),
                },
                None => None,
            },
        };
        if let Some(i) = track
            && self.setups().iter().any(|x| x.track == i)
        {
            return self.refuse(&req, 455);
        }
        self.events.push_back(ServerEvent::Setup {
            path: path.clone(),
            track,
            transport: transport.clone(),
            record,
            uri: req.uri.clone(),
        });
        self.pending = Some((req, Pending::Setup { path, transport, record }));
    }

    fn play(&mut self, req: Request) {
        let Some(s) = &self.session else { return self.refuse(&req, 454) };
        let Mode::Play { played } = s.mode else { return self.refuse(&req, 455) };
        if url::split_control(&req.uri).1.is_some() && s.setups.len() > 1 {
            // Tracks of one session play together (RFC 2326 C.1.1).
            return self.refuse(&req, 460);
        }
        let path = s.path.clone();
        let request = match play_request(&req) {
            Ok(r) => r,
            Err(_) => return self.refuse(&req, 400),
        };
        self.events.push_back(ServerEvent::Play { path, resume: played, request });
        self.pending = Some((req, Pending::Play));
    }

    fn record(&mut self, now: Instant, req: Request, next: State) {
        let Some(s) = &mut self.session else { return self.refuse(&req, 454) };
        if !matches!(s.mode, Mode::Record { .. }) || s.setups.is_empty() {
            return self.refuse(&req, 455);
        }
        s.started = true;
        let path = s.path.clone();
        self.state = next;
        self.last_media = now;
        self.next_report.get_or_insert(now + self.config.rtcp_interval);
        self.events.push_back(ServerEvent::Record { path });
        self.respond(&req, status(200, &req), false);
    }

    fn new_session(&mut self, path: String, mode: Mode) -> &mut Session {
        if self.session.is_none() {
            let id = format!("{:016x}", self.secrets.session_id.wrapping_add(self.generation));
            self.generation += 1;
            self.session = Some(Session { id, path, mode, setups: Vec::new(), started: false });
        }
        self.session.as_mut().expect("just made")
    }

    fn take_pending(&mut self, want: fn(&Pending) -> bool) -> Option<(Request, Pending)> {
        match &self.pending {
            Some((_, p)) if want(p) => self.pending.take(),
            _ => None,
        }
    }

    /// Answers the pending DESCRIBE with this SDP; the Content-Base is the request URL
    /// without its query (a playback URL's SDP names its tracks by absolute URLs).
    pub fn accept_describe(&mut self, sdp: &str) -> Result<(), SessionError> {
        if let Some((req, _)) = self.take_pending(|p| matches!(p, Pending::Describe)) {
            let base = format!("{}/", url::without_query(&req.uri));
            let r = status(200, &req).with("Content-Base", base).with_body("application/sdp", sdp.to_owned());
            self.respond(&req, r, false);
        }
        self.resume()
    }

    /// Accepts the pending ANNOUNCE: the session records the announced SDP.
    pub fn accept_announce(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some((req, Pending::Announce { path, sdp })) =
            self.take_pending(|p| matches!(p, Pending::Announce { .. }))
        {
            self.new_session(path, Mode::Record { sdp });
            self.last_media = now;
            self.respond(&req, status(200, &req), false);
        }
        self.resume()
    }

    /// Accepts the pending SETUP for `track` (the event's, or the application's choice for
    /// the aggregate URL); multicast transports need the group. Returns the transport
    /// answered, or None when there was no SETUP pending or the track was set up already
    /// (answered 455).
    pub fn accept_setup(
        &mut self,
        track: usize,
        multicast: Option<MulticastReply>,
    ) -> Result<Option<Transport>, SessionError> {
        let Some((req, Pending::Setup { path, transport, record })) =
            self.take_pending(|p| matches!(p, Pending::Setup { .. }))
        else {
            return self.resume().map(|_| None);
        };
        if self.setups().iter().any(|x| x.track == track) {
            self.refuse(&req, 455);
            return self.resume().map(|_| None);
        }
        let mut reply = transport.clone();
        match transport.lower {
            Lower::Tcp => {
                let t = track.min(127) as u8;
                reply.interleaved = Some(transport.interleaved.unwrap_or((2 * t, 2 * t + 1)));
            }
            Lower::Udp if transport.multicast => {
                let Some(m) = multicast else {
                    // The application could not give a group: our failure, not the client's.
                    self.refuse(&req, 500);
                    return self.resume().map(|_| None);
                };
                reply.destination = Some(m.destination);
                reply.port = Some(m.ports);
                reply.ttl = Some(m.ttl);
                reply.client_port = None;
            }
            Lower::Udp => reply.server_port = Some(self.config.server_ports),
        }
        reply.record = record;
        let s = self.new_session(path, Mode::Play { played: false });
        s.setups.push(SetUp { track, transport: reply.clone(), uri: req.uri.clone() });
        if self.state == State::Init {
            self.state = State::Ready;
        }
        let r = status(200, &req).with("Transport", reply.encode());
        self.respond(&req, r, false);
        self.resume().map(|_| Some(reply))
    }

    /// Accepts the pending PLAY with the Range it starts at (`npt=12.345-`) and, per track,
    /// the header of the first RTP packet the player will be sent (RTP-Info, RFC 2326
    /// 12.33). Send that packet only after draining [`ServerSession::poll_transmit`].
    pub fn accept_play(&mut self, range: &str, starts: &[RtpStart]) -> Result<(), SessionError> {
        let reply = PlayReply { range, starts, scale: None, speed: None, rate_control_off: false };
        self.accept_play_with(&reply)
    }

    /// Accepts the pending PLAY as [`ServerSession::accept_play`] does, stating the Scale and
    /// Speed used and echoing `Rate-Control: no` when asked.
    pub fn accept_play_with(&mut self, reply: &PlayReply<'_>) -> Result<(), SessionError> {
        let PlayReply { range, starts, scale, speed, rate_control_off } = *reply;
        if let Some((req, _)) = self.take_pending(|p| matches!(p, Pending::Play)) {
            let mut info = String::new();
            if let Some(s) = &mut self.session {
                s.mode = Mode::Play { played: true };
                s.started = true;
                for x in &s.setups {
                    if !info.is_empty() {
                        info.push(',');
                    }
                    let _ = write!(info, "url={}", x.uri);
                    if let Some(st) = starts.iter().find(|st| st.track == x.track) {
                        let _ = write!(info, ";seq={};rtptime={}", st.seq, st.rtptime);
                    }
                }
            }
            self.state = State::Playing;
            let now_report = self.last_activity + self.config.rtcp_interval;
            self.next_report.get_or_insert(now_report);
            let mut r = status(200, &req).with("Range", range);
            if !info.is_empty() {
                r = r.with("RTP-Info", info);
            }
            if let Some(x) = scale {
                r = r.with("Scale", range::format_rate(x));
            }
            if let Some(x) = speed {
                r = r.with("Speed", range::format_rate(x));
            }
            if rate_control_off {
                r = r.with("Rate-Control", "no");
            }
            self.respond(&req, r, false);
        }
        self.resume()
    }

    /// Refuses the pending request with `code` (404, 400, 503, 459 ...).
    pub fn reject(&mut self, code: u16) -> Result<(), SessionError> {
        if let Some((req, _)) = self.pending.take() {
            self.refuse(&req, code);
        }
        self.resume()
    }

    /// Handles input buffered behind a decision.
    fn resume(&mut self) -> Result<(), SessionError> {
        let now = self.last_activity;
        self.process(now)
    }

    fn timers(&self) -> [(Timer, Option<Instant>); 5] {
        let has_session = self.session.is_some();
        [
            (Timer::Request, self.partial_since.map(|t| t + self.config.request_timeout)),
            (Timer::Idle, (!has_session).then(|| self.last_activity + self.config.request_timeout)),
            (Timer::Session, has_session.then(|| self.last_activity + self.config.session_timeout)),
            (Timer::Media, self.is_recording().then(|| self.last_media + self.config.media_timeout)),
            (Timer::RtcpReport, self.next_report.filter(|_| has_session)),
        ]
    }

    /// The earliest timer deadline, and which timer it is. None while a decision is owed
    /// (the application's own work has its own time limits).
    pub fn poll_timeout(&self) -> Option<(Timer, Instant)> {
        if self.pending.is_some() || self.closing {
            return None;
        }
        self.timers().into_iter().filter_map(|(t, at)| at.map(|at| (t, at))).min_by_key(|(_, at)| *at)
    }

    /// Fires due timers. An error ends the session.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.pending.is_some() || self.closing {
            return Ok(());
        }
        for (timer, at) in self.timers() {
            let Some(at) = at else { continue };
            if now < at {
                continue;
            }
            let err = match timer {
                Timer::Request => SessionError::RequestTimeout(self.config.request_timeout),
                Timer::Idle => SessionError::IdleTimeout(self.config.request_timeout),
                Timer::Session => SessionError::SessionTimeout(self.config.session_timeout),
                Timer::Media => SessionError::MediaTimeout(self.config.media_timeout),
                Timer::RtcpReport => {
                    // One report per firing, however late; the next one an interval on.
                    self.next_report = Some(now + self.config.rtcp_interval);
                    self.events.push_back(ServerEvent::RtcpReport);
                    continue;
                }
            };
            self.closing = true;
            return Err(err);
        }
        Ok(())
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next bytes to write to the connection.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }
}

/// Whether a read of `path` by `uri` is a playback: a `vod/` path (a file) or a URI whose
/// query has `start=` (recordings from that time). The application authorizes these as
/// playback, not read.
pub fn is_playback(path: &str, uri: &str) -> bool {
    path.starts_with("vod/")
        || url::query(uri).is_some_and(|q| q.split('&').any(|p| p.split_once('=').map_or(p, |(k, _)| k) == "start"))
}

#[cfg(test)]
mod tests;
