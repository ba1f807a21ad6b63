//! The client side of RTSP: plays a stream (OPTIONS, DESCRIBE, SETUP per track, PLAY) over
//! TCP interleaved, UDP or multicast, or publishes one (ANNOUNCE, SETUP with `mode=record`,
//! RECORD). Sans I/O like the rest of the crate: the application owns the sockets.
//!
//! Hardened for cameras: credentials in the URL (percent-decoded), Basic and Digest (MD5,
//! SHA-256, qop, `stale=true`, a changed realm), OPTIONS answered with anything, Content-Base
//! and Content-Location, DESCRIBE redirects, server-chosen interleaved channels, and the
//! session kept alive with GET_PARAMETER or OPTIONS, whichever the camera takes.
//!
//! The drive loop, after creating the session:
//!
//! ```text
//! loop {
//!     while let Some(bytes) = session.poll_transmit() { write them to the connection }
//!     while let Some(event) = session.poll_event() { act on it }
//!     wait for input from the connection or until session.poll_timeout()
//!     session.handle_input(now, &bytes)?   or   session.handle_timeout(now)?
//! }
//! ```
//!
//! Drain the polls after every input.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::auth::{Authenticator, ClientScheme, Credentials};
use crate::message::{self, Headers, Message, MessageError, Method, Request, Response};
use crate::sdp::{self, Sdp};
use crate::transport::{Lower, Transport};
use crate::url;

/// Longest Session id we keep (RFC 2326 section 12.37 sets no limit; real ones are 8 to 40
/// characters). A longer one is a [`ClientError::SessionIdTooLong`].
pub const MAX_SESSION_ID_LEN: usize = 256;
/// Most tracks set up from one description; the SDP parser already stops at
/// [`sdp::MAX_MEDIA`] media, this bounds the SETUPs a session sends whatever that is.
pub const MAX_TRACKS: usize = 16;
/// Most DESCRIBE redirects (3xx with Location) followed on one connection.
pub const MAX_REDIRECTS: u8 = 3;
/// Most times one request is re-sent after 401s (the first challenge, `stale=true` nonces, a
/// changed realm): a server that keeps answering `stale=true` cannot loop us forever.
pub const MAX_AUTH_RESENDS: u8 = 4;
/// The keep-alive interval when the Session header gives no `timeout` (RFC 2326 section
/// 12.37: the default session timeout is 60 s; we send at half of it).
pub const DEFAULT_SESSION_TIMEOUT_SECS: u64 = 60;
/// Shortest keep-alive interval, whatever a camera's `timeout=` says.
pub const MIN_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// How long the OPTIONS a play session starts with may go unanswered before DESCRIBE goes
/// out anyway (capped by the response timeout). OPTIONS is optional (RFC 2326 section 10.1)
/// and some cameras never answer it: waiting the full response timeout (10 s) for it would
/// spend the whole default source start timeout (also 10 s) before DESCRIBE, so the first
/// on-demand reader of such a camera would always fail. A camera that answers at all does
/// so within milliseconds on a LAN; 2 s leaves room for a slow link.
pub const START_OPTIONS_TIMEOUT: Duration = Duration::from_secs(2);
/// Most requests waiting for an answer; the session's own are at most three at once
/// (a step, a keep-alive, a TEARDOWN), the rest come from the application.
pub const MAX_PENDING: usize = 16;

/// How RTP travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    /// Interleaved in the RTSP connection; track `i` asks for channels `2i`, `2i+1` (the
    /// server may answer others: they are used).
    Tcp,
    /// UDP; track `i` receives on the `i`-th client port pair the application opened.
    Udp,
    /// UDP multicast (`RTP/AVP;multicast`): the server picks the group, port and ttl, given in
    /// [`ClientEvent::Transport`].
    Multicast,
}

/// Play or publish.
#[derive(Debug, Clone)]
pub enum ClientMode {
    /// OPTIONS, DESCRIBE, SETUP each supported track, PLAY.
    Play,
    /// ANNOUNCE this SDP (whose media have `a=control:trackID=N`), SETUP each, RECORD.
    Record(String),
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The session description (DESCRIBE answer, or what we announced).
    Described(Sdp),
    /// The server's Transport answer to the SETUP of `track`, parsed; comes just before
    /// [`ClientEvent::SetUp`] of that track (not when the answer had no Transport we can
    /// read).
    Transport {
        /// Track index.
        track: usize,
        /// What the server answered: interleaved channels, server ports, multicast
        /// destination/port/ttl, ssrc.
        transport: Transport,
    },
    /// A track is set up; for UDP, with the server's RTP/RTCP ports.
    SetUp {
        /// Track index (order of the supported media in the SDP).
        track: usize,
        /// `server_port` for UDP.
        server_port: Option<(u16, u16)>,
    },
    /// PLAY or RECORD accepted: media flows.
    Started,
    /// A PLAY was answered 200 (the first, or a later one from [`ClientSession::play`]),
    /// with the answer's headers (Range, RTP-Info, Scale, Speed).
    Played(Headers),
    /// An interleaved RTP packet.
    Rtp {
        /// Track index.
        track: usize,
        /// The packet.
        packet: Bytes,
    },
    /// An interleaved RTCP packet.
    Rtcp {
        /// Track index.
        track: usize,
        /// The packet.
        packet: Bytes,
    },
    /// A request failed; [`ClientSession::last_response`] holds the answer.
    Failed {
        /// The request's method.
        method: Method,
        /// The status.
        status: u16,
    },
    /// DESCRIBE was redirected (3xx with Location) to another server, or the server sent a
    /// REDIRECT request (RFC 2326 section 10.10): this connection cannot follow, the
    /// application connects to `url` with a new session (credentials are not in `url`: pass
    /// them again with [`ClientSession::set_credentials`]). DESCRIBE redirects to the same
    /// server are followed on this connection, at most [`MAX_REDIRECTS`] times.
    Redirect {
        /// The Location, without userinfo.
        url: String,
    },
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server sent something we cannot decode.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// An SDP we cannot use.
    #[error("SDP: {0}")]
    Sdp(#[from] sdp::SdpError),
    /// The server did not answer in time.
    #[error("no answer to {0} within the response timeout")]
    Timeout(String),
    /// A keep-alive was answered 454 Session Not Found: the server forgot the session.
    #[error("keep-alive {0} answered 454 Session Not Found")]
    SessionNotFound(String),
    /// A Session id longer than [`MAX_SESSION_ID_LEN`] bytes.
    #[error("Session id of {0} bytes over the {MAX_SESSION_ID_LEN}-byte cap")]
    SessionIdTooLong(usize),
}

/// What a request is for, beyond its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The OPTIONS a play session starts with: any answer, or none, leads to DESCRIBE.
    Start,
    /// A keep-alive (GET_PARAMETER or OPTIONS with the Session).
    KeepAlive,
    /// A step of the session or a request of the application.
    Normal,
}

/// A request sent and not answered yet.
#[derive(Debug)]
struct Pending {
    cseq: u32,
    purpose: Purpose,
    method: Method,
    uri: String,
    /// The application's headers (CSeq, Session and Authorization are added when sent).
    headers: Headers,
    body: Bytes,
    sent: Instant,
    /// The realm of the Authorization it carried, if any.
    realm: Option<String>,
    /// Re-sends after 401 so far.
    auth_resends: u8,
    /// Whether a changed realm was tried already.
    realm_change_tried: bool,
}

/// Which request keeps the session alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepAlive {
    GetParameter,
    Options,
}

impl KeepAlive {
    fn method(self) -> Method {
        match self {
            KeepAlive::GetParameter => Method::GetParameter,
            KeepAlive::Options => Method::Options,
        }
    }

    /// The keep-alive `method` is (OPTIONS for anything but GET_PARAMETER).
    fn of(method: &Method) -> KeepAlive {
        if *method == Method::GetParameter { KeepAlive::GetParameter } else { KeepAlive::Options }
    }

    fn other(self) -> KeepAlive {
        match self {
            KeepAlive::GetParameter => KeepAlive::Options,
            KeepAlive::Options => KeepAlive::GetParameter,
        }
    }
}

/// The client side of one RTSP session, sans I/O.
///
/// Credentials never appear in its `Debug` output or in the URLs it reports.
pub struct ClientSession {
    /// The URL (without userinfo) the next DESCRIBE or ANNOUNCE goes to.
    url: String,
    /// Base of relative controls (Content-Base, Content-Location or the URL).
    base: String,
    /// The aggregate control URL: PLAY, PAUSE, TEARDOWN, keep-alive.
    aggregate: String,
    mode: ClientMode,
    transport: ClientTransport,
    client_ports: Vec<(u16, u16)>,
    credentials: Option<Credentials>,
    auth: Option<Authenticator>,
    cseq: u32,
    session: Option<String>,
    session_timeout: Duration,
    controls: Vec<String>,
    /// Interleaved channels the server answered, per track.
    channels: Vec<Option<(u8, u8)>>,
    next_setup: usize,
    pending: VecDeque<Pending>,
    input: BytesMut,
    out: BytesMut,
    events: VecDeque<ClientEvent>,
    response_timeout: Duration,
    started: bool,
    closing: bool,
    /// The Range of the first PLAY.
    play_range: String,
    public: Option<String>,
    keep_alive: KeepAlive,
    /// The keep-alive method that last went unanswered within the response timeout, while
    /// no keep-alive was answered since.
    silent_keep_alive: Option<KeepAlive>,
    next_keep_alive: Option<Instant>,
    last_response: Option<Response>,
    /// The method [`ClientSession::last_response`] answered.
    last_method: Option<Method>,
    redirects: u8,
    /// The body of the DESCRIBE answer, as the server sent it.
    description: Option<Bytes>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("url", &self.url)
            .field("aggregate", &self.aggregate)
            .field("mode", &self.mode)
            .field("transport", &self.transport)
            .field("auth", &self.auth_scheme())
            .field("cseq", &self.cseq)
            .field("session", &self.session)
            .field("tracks", &self.controls.len())
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// 16 random bytes in hex, for a Digest `cnonce` (RFC 7616 section 3.4). Should the OS give
/// no randomness (never seen on our targets), the CSeq in the first bytes keeps it unique per
/// request.
fn cnonce(cseq: u32) -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        b[..4].copy_from_slice(&cseq.to_be_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ClientSession {
    /// A session for `url`. For UDP, `client_ports` holds one RTP/RTCP port pair per track.
    ///
    /// `rtsp://user:pass@host/...` gives the credentials (percent-decoded; a raw `@` in the
    /// password works, the host follows the last `@`); no request carries the userinfo.
    /// A play session starts with OPTIONS, a record session with ANNOUNCE.
    pub fn new(
        url: &str,
        mode: ClientMode,
        transport: ClientTransport,
        client_ports: Vec<(u16, u16)>,
        now: Instant,
    ) -> ClientSession {
        let (url, userinfo) = url::split_userinfo(url.trim());
        let mut c = ClientSession {
            base: url.clone(),
            aggregate: url.clone(),
            url,
            mode,
            transport,
            client_ports,
            credentials: userinfo.map(|(user, password)| Credentials { user, password }),
            auth: None,
            cseq: 0,
            session: None,
            session_timeout: Duration::from_secs(DEFAULT_SESSION_TIMEOUT_SECS),
            controls: Vec::new(),
            channels: Vec::new(),
            next_setup: 0,
            pending: VecDeque::new(),
            input: BytesMut::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            response_timeout: Duration::from_secs(10),
            started: false,
            closing: false,
            play_range: "npt=0.000-".to_owned(),
            public: None,
            keep_alive: KeepAlive::GetParameter,
            silent_keep_alive: None,
            next_keep_alive: None,
            last_response: None,
            last_method: None,
            redirects: 0,
            description: None,
        };
        match c.mode.clone() {
            ClientMode::Play => {
                let url = c.url.clone();
                c.request(now, Purpose::Start, Method::Options, &url, Headers::default(), Bytes::new());
            }
            ClientMode::Record(text) => {
                let mut h = Headers::default();
                h.add("Content-Type", "application/sdp");
                let url = c.url.clone();
                c.request(now, Purpose::Normal, Method::Announce, &url, h, Bytes::from(text));
            }
        }
        c
    }

    /// Sets the credentials (replacing those of the URL). They are used from the next 401
    /// on.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = Some(credentials);
    }

    /// How long a request may wait for its answer (10 s unless set); the first OPTIONS
    /// waits at most [`START_OPTIONS_TIMEOUT`].
    pub fn set_response_timeout(&mut self, d: Duration) {
        self.response_timeout = d;
    }

    /// The URL without userinfo (after redirects followed).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The aggregate control URL (PLAY, PAUSE, TEARDOWN, keep-alive).
    pub fn aggregate_url(&self) -> &str {
        &self.aggregate
    }

    /// The `Public` header of the OPTIONS answer, if there was one.
    pub fn public(&self) -> Option<&str> {
        self.public.as_deref()
    }

    /// The scheme that answered a challenge: `"basic"`, `"digest-md5"` or `"digest-sha256"`;
    /// `None` while no 401 came.
    pub fn auth_scheme(&self) -> Option<&'static str> {
        self.auth.as_ref().map(Authenticator::name)
    }

    /// The last answer that was not 2xx (for messages like "DESCRIBE answered 403
    /// Forbidden"); a refused first OPTIONS, which is tolerated, does not count.
    pub fn last_response(&self) -> Option<&Response> {
        self.last_response.as_ref()
    }

    /// The last refusal in words, for logs and the API: `"DESCRIBE answered 403 Forbidden"`
    /// (the reason phrase as the server wrote it, at most 64 characters; no URL, so no
    /// credentials).
    pub fn failure_text(&self) -> Option<String> {
        let (r, m) = (self.last_response.as_ref()?, self.last_method.as_ref()?);
        let reason: String = r.reason.chars().filter(|c| !c.is_control()).take(64).collect();
        Some(format!("{} answered {} {}", m.as_str(), r.status, reason.trim()).trim_end().to_owned())
    }

    /// The session description as the server sent it in its DESCRIBE answer (its session
    /// name, vendor attributes and all), once described; at most the message body cap.
    pub fn description(&self) -> Option<&Bytes> {
        self.description.as_ref()
    }

    /// The session id the server gave, if any.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    fn request(&mut self, now: Instant, purpose: Purpose, method: Method, uri: &str, headers: Headers, body: Bytes) {
        let p = Pending {
            cseq: 0,
            purpose,
            method,
            uri: uri.to_owned(),
            headers,
            body,
            sent: now,
            realm: None,
            auth_resends: 0,
            realm_change_tried: false,
        };
        self.send(now, p);
    }

    /// Writes `p` with a new CSeq, the Session and a fresh Authorization, and waits for its
    /// answer.
    fn send(&mut self, now: Instant, mut p: Pending) {
        self.cseq = self.cseq.wrapping_add(1);
        p.cseq = self.cseq;
        p.sent = now;
        let mut h = Headers::default();
        h.add("CSeq", self.cseq.to_string());
        h.add("User-Agent", "ferrocast");
        if let Some(s) = &self.session {
            h.add("Session", s.clone());
        }
        p.realm = None;
        if let (Some(a), Some(creds)) = (&mut self.auth, &self.credentials) {
            let cn = if matches!(a.scheme(), ClientScheme::Digest(_)) { cnonce(self.cseq) } else { String::new() };
            h.add("Authorization", a.authorization(creds, p.method.as_str(), &p.uri, &p.body, &cn));
            p.realm = Some(a.realm().to_owned());
        }
        for (k, v) in p.headers.iter() {
            h.add(k, v);
        }
        let req = Request { method: p.method.clone(), uri: p.uri.clone(), headers: h, body: p.body.clone() };
        self.out.put_slice(&req.encode());
        if self.pending.len() == MAX_PENDING {
            // The application sent requests faster than the server answers: the oldest one's
            // answer will be ignored when it comes.
            self.pending.pop_front();
        }
        self.pending.push_back(p);
    }

    fn describe(&mut self, now: Instant) {
        let mut h = Headers::default();
        h.add("Accept", "application/sdp");
        let url = self.url.clone();
        self.request(now, Purpose::Normal, Method::Describe, &url, h, Bytes::new());
    }

    fn setup_next(&mut self, now: Instant) {
        let i = self.next_setup;
        let Some(control) = self.controls.get(i).cloned() else {
            let method = if matches!(self.mode, ClientMode::Play) { Method::Play } else { Method::Record };
            let url = self.aggregate.clone();
            let mut h = Headers::default();
            if method == Method::Play {
                h.add("Range", self.play_range.clone());
            }
            self.request(now, Purpose::Normal, method, &url, h, Bytes::new());
            return;
        };
        let mut t = Transport::new(if self.transport == ClientTransport::Tcp { Lower::Tcp } else { Lower::Udp });
        t.record = matches!(self.mode, ClientMode::Record(_));
        match self.transport {
            // At most MAX_TRACKS (16) tracks: channels stay below 32.
            ClientTransport::Tcp => t.interleaved = Some((2 * i as u8, 2 * i as u8 + 1)),
            ClientTransport::Udp => t.client_port = self.client_ports.get(i).copied(),
            ClientTransport::Multicast => t.multicast = true,
        }
        let mut h = Headers::default();
        h.add("Transport", t.encode());
        let url = resolve(&self.base, &control);
        self.request(now, Purpose::Normal, Method::Setup, &url, h, Bytes::new());
    }

    /// Feeds bytes read from the RTSP connection.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), ClientError> {
        self.input.extend_from_slice(data);
        loop {
            let m = match message::decode(&mut self.input) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Quirk: some cameras answer OPTIONS with something that is not an RTSP
                    // response ("HTTP/1.0 403", a status that is not a number). OPTIONS is
                    // optional (RFC 2326 10.1): skip that message and DESCRIBE.
                    if matches!(e, MessageError::Malformed { .. } | MessageError::Version(_))
                        && self.pending.front().is_some_and(|p| p.purpose == Purpose::Start)
                        && skip_message(&mut self.input)
                    {
                        self.pending.pop_front();
                        self.describe(now);
                        continue;
                    }
                    return Err(e.into());
                }
            };
            match m {
                Message::Response(r) => self.on_response(now, r)?,
                Message::Interleaved { channel, data } => self.on_interleaved(channel, data),
                Message::Request(q) => self.on_server_request(q),
            }
        }
    }

    /// A request from the server (RFC 2326 section 10 lists OPTIONS, ANNOUNCE,
    /// GET_PARAMETER, SET_PARAMETER and REDIRECT server to client): OPTIONS and the
    /// parameter methods, which servers use to check a client is alive, are answered 200;
    /// REDIRECT is answered 200 and reported as [`ClientEvent::Redirect`] when it has a
    /// Location; anything else 501 Not Implemented.
    fn on_server_request(&mut self, q: Request) {
        let status = match q.method {
            Method::Options | Method::GetParameter | Method::SetParameter => 200,
            Method::Redirect => {
                if let Some(l) = q.headers.get("Location").map(str::trim).filter(|l| !l.is_empty()) {
                    self.closing = true;
                    self.next_keep_alive = None;
                    self.events.push_back(ClientEvent::Redirect { url: resolve(&self.url, l) });
                }
                200
            }
            _ => 501,
        };
        let mut r = Response::new(status, q.cseq());
        if let Some(s) = &self.session {
            r = r.with("Session", s.clone());
        }
        self.out.put_slice(&r.encode());
    }

    fn on_interleaved(&mut self, channel: u8, packet: Bytes) {
        let answered = self.channels.iter().position(|c| c.is_some_and(|(a, b)| a == channel || b == channel));
        let (track, rtcp) = match answered {
            Some(t) => (t, self.channels[t].is_some_and(|(a, _)| a != channel)),
            None => {
                // No SETUP answer named this channel: the channels we asked for.
                let t = usize::from(channel / 2);
                if self.channels.get(t).is_some_and(Option::is_some) {
                    return;
                }
                (t, channel % 2 == 1)
            }
        };
        self.events.push_back(if rtcp {
            ClientEvent::Rtcp { track, packet }
        } else {
            ClientEvent::Rtp { track, packet }
        });
    }

    fn on_response(&mut self, now: Instant, r: Response) -> Result<(), ClientError> {
        let cseq = r.headers.get("CSeq").and_then(|c| c.trim().parse::<u32>().ok());
        let index = match cseq {
            Some(c) => self.pending.iter().position(|p| p.cseq == c),
            // Quirk: an answer without CSeq is taken for the oldest request.
            None => (!self.pending.is_empty()).then_some(0),
        };
        // An answer to nothing we wait for (a late answer to a timed-out OPTIONS).
        let Some(mut p) = index.and_then(|i| self.pending.remove(i)) else {
            return Ok(());
        };
        if r.status == 401 && self.on_unauthorized(&mut p, &r) {
            p.auth_resends += 1;
            self.send(now, p);
            return Ok(());
        }
        if !is_success(r.status) {
            // Not the tolerated OPTIONS refusal: an error message naming it would mislead.
            if p.purpose != Purpose::Start {
                self.last_response = Some(r.clone());
                self.last_method = Some(p.method.clone());
            }
        } else if let Some(s) = r.headers.get("Session") {
            self.on_session(s)?;
        }
        match p.purpose {
            Purpose::Start => {
                if is_success(r.status) {
                    self.public = r.headers.get("Public").map(str::to_owned);
                    if self.public.as_deref().is_some_and(|p| !lists(p, "GET_PARAMETER")) {
                        self.keep_alive = KeepAlive::Options;
                    }
                }
                self.describe(now);
                return Ok(());
            }
            Purpose::KeepAlive => {
                if r.status == 454 {
                    return Err(ClientError::SessionNotFound(p.method.as_str().to_owned()));
                }
                // Any answer: the server is there.
                self.silent_keep_alive = None;
                if !is_success(r.status) {
                    // 405, 501 or anything else: the other method from now on.
                    self.keep_alive = self.keep_alive.other();
                }
                return Ok(());
            }
            Purpose::Normal => {}
        }
        if !is_success(r.status) {
            if p.method == Method::Describe && (300..400).contains(&r.status) && self.on_redirect(now, &r) {
                return Ok(());
            }
            self.events.push_back(ClientEvent::Failed { method: p.method, status: r.status });
            return Ok(());
        }
        match p.method {
            Method::Describe | Method::Announce => {
                let description = match &self.mode {
                    ClientMode::Play => sdp::parse(&r.body)?,
                    ClientMode::Record(text) => sdp::parse(text.as_bytes())?,
                };
                if p.method == Method::Describe {
                    self.description = Some(r.body.clone());
                    self.base = match r.headers.get("Content-Base").or_else(|| r.headers.get("Content-Location")) {
                        Some(b) if !b.trim().is_empty() => resolve(&p.uri, b),
                        _ => p.uri.clone(),
                    };
                }
                self.aggregate = match &description.control {
                    Some(c) => resolve(&self.base, c),
                    None => self.base.clone(),
                };
                self.controls = description
                    .media
                    .iter()
                    .filter(|m| sdp::track_info(m).is_some())
                    .map(|m| m.control.clone().unwrap_or_default())
                    .take(MAX_TRACKS)
                    .collect();
                self.channels = vec![None; self.controls.len()];
                self.events.push_back(ClientEvent::Described(description));
                self.setup_next(now);
            }
            Method::Setup => {
                let track = self.next_setup;
                let answer = r.headers.get("Transport").and_then(|t| Transport::parse_header(t, |_| true).ok());
                let server_port = answer.as_ref().and_then(|t| t.server_port);
                if let Some(t) = answer {
                    if self.transport == ClientTransport::Tcp
                        && let (Some(c), Some(slot)) = (t.interleaved, self.channels.get_mut(track))
                    {
                        *slot = Some(c);
                    }
                    self.events.push_back(ClientEvent::Transport { track, transport: t });
                }
                self.events.push_back(ClientEvent::SetUp { track, server_port });
                self.next_setup += 1;
                self.setup_next(now);
            }
            Method::Play | Method::Record => {
                if !self.started {
                    self.started = true;
                    self.next_keep_alive = Some(now + self.keep_alive_interval());
                    self.events.push_back(ClientEvent::Started);
                }
                if p.method == Method::Play {
                    self.events.push_back(ClientEvent::Played(r.headers.clone()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether to re-send the request answered 401 (RFC 7235 section 3.1): with the new
    /// challenge when the request carried no credentials, when only the nonce went stale
    /// (RFC 7616 section 3.3 `stale=true`), or once when the realm changed.
    fn on_unauthorized(&mut self, p: &mut Pending, r: &Response) -> bool {
        if self.credentials.is_none() || p.auth_resends >= MAX_AUTH_RESENDS {
            return false;
        }
        let challenges = r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate")).map(|(_, v)| v);
        let Some(new) = Authenticator::choose(challenges) else {
            return false;
        };
        let stale = matches!(new.scheme(), ClientScheme::Digest(d) if d.stale);
        let retry = match &p.realm {
            None => true,
            Some(_) if stale => true,
            Some(realm) if realm != new.realm() && !p.realm_change_tried => {
                p.realm_change_tried = true;
                true
            }
            Some(_) => false,
        };
        if retry {
            self.auth = Some(new);
        }
        retry
    }

    fn on_redirect(&mut self, now: Instant, r: &Response) -> bool {
        let Some(location) = r.headers.get("Location").map(str::trim).filter(|l| !l.is_empty()) else {
            return false;
        };
        if self.redirects >= MAX_REDIRECTS {
            return false;
        }
        self.redirects += 1;
        let (target, userinfo) = url::split_userinfo(&url::join_control(&self.url, location));
        if let Some((user, password)) = userinfo {
            self.credentials = Some(Credentials { user, password });
        }
        if url::authority(&target) != url::authority(&self.url) {
            self.events.push_back(ClientEvent::Redirect { url: target });
            return true;
        }
        self.url = target.clone();
        self.base = target.clone();
        self.aggregate = target;
        self.describe(now);
        true
    }

    fn on_session(&mut self, header: &str) -> Result<(), ClientError> {
        let mut parts = header.split(';');
        let id = parts.next().unwrap_or("").trim();
        if id.len() > MAX_SESSION_ID_LEN {
            return Err(ClientError::SessionIdTooLong(id.len()));
        }
        if self.session.is_none() && !id.is_empty() {
            self.session = Some(id.to_owned());
            for p in parts {
                if let Some((k, v)) = p.split_once('=')
                    && k.trim().eq_ignore_ascii_case("timeout")
                    && let Ok(t) = v.trim().parse::<u32>()
                {
                    self.session_timeout = Duration::from_secs(u64::from(t));
                }
            }
        }
        Ok(())
    }

    fn keep_alive_interval(&self) -> Duration {
        (self.session_timeout / 2).max(MIN_KEEP_ALIVE)
    }

    /// Sends an RTP packet of `track` interleaved (TCP record), on the channel the server
    /// answered for it (else `2 * track`). A packet over 65535 bytes cannot be framed, and a
    /// track without a channel (over 127) has none: both are dropped.
    pub fn send_rtp(&mut self, track: usize, packet: &[u8]) {
        let asked = u8::try_from(2 * track).ok();
        if let Some(channel) = self.channels.get(track).copied().flatten().map(|(a, _)| a).or(asked) {
            self.interleave(channel, packet);
        }
    }

    /// Sends an RTCP packet of `track` interleaved (receiver reports over TCP), on the
    /// channel the server answered for it (else `2 * track + 1`). A packet over 65535 bytes,
    /// or of a track without a channel, is dropped.
    pub fn send_rtcp(&mut self, track: usize, packet: &[u8]) {
        let asked = u8::try_from(2 * track + 1).ok();
        if let Some(channel) = self.channels.get(track).copied().flatten().map(|(_, b)| b).or(asked) {
            self.interleave(channel, packet);
        }
    }

    fn interleave(&mut self, channel: u8, packet: &[u8]) {
        let Ok(len) = u16::try_from(packet.len()) else {
            return;
        };
        self.out.put_u8(b'$');
        self.out.put_u8(channel);
        self.out.put_u16(len);
        self.out.put_slice(packet);
    }

    /// A PLAY of the aggregate URL with these headers (`Range`, `Scale`, `Speed`, ...): a
    /// seek, a resume after [`ClientSession::pause`], or a new rate.
    pub fn play(&mut self, now: Instant, headers: &[(&str, &str)]) {
        let url = self.aggregate.clone();
        let mut h = Headers::default();
        for (k, v) in headers {
            h.add(k, *v);
        }
        self.request(now, Purpose::Normal, Method::Play, &url, h, Bytes::new());
    }

    /// PAUSE.
    pub fn pause(&mut self, now: Instant) {
        let url = self.aggregate.clone();
        self.request(now, Purpose::Normal, Method::Pause, &url, Headers::default(), Bytes::new());
    }

    /// The Range the first PLAY asks for (`npt=0.000-` unless set before it is sent).
    pub fn set_play_range(&mut self, range: &str) {
        self.play_range = range.to_owned();
    }

    /// A keep-alive now (RFC 2326 section 12.37): GET_PARAMETER with the Session, or OPTIONS
    /// with it when OPTIONS' `Public` did not list GET_PARAMETER or a GET_PARAMETER was
    /// refused or went unanswered. Once started the session sends them itself from
    /// [`ClientSession::handle_timeout`].
    pub fn keep_alive(&mut self, now: Instant) {
        let url = self.aggregate.clone();
        let method = self.keep_alive.method();
        self.request(now, Purpose::KeepAlive, method, &url, Headers::default(), Bytes::new());
        if self.started && !self.closing {
            self.next_keep_alive = Some(now + self.keep_alive_interval());
        }
    }

    /// Ends the session (TEARDOWN); no keep-alive follows.
    pub fn teardown(&mut self, now: Instant) {
        self.closing = true;
        self.next_keep_alive = None;
        let url = self.aggregate.clone();
        self.request(now, Purpose::Normal, Method::Teardown, &url, Headers::default(), Bytes::new());
    }

    /// When the answer to `p` is overdue: the response timeout after it was sent, or
    /// [`START_OPTIONS_TIMEOUT`] (at most the response timeout) for the first OPTIONS.
    fn deadline(&self, p: &Pending) -> Instant {
        let wait = match p.purpose {
            Purpose::Start => START_OPTIONS_TIMEOUT.min(self.response_timeout),
            Purpose::KeepAlive | Purpose::Normal => self.response_timeout,
        };
        p.sent + wait
    }

    /// Sends the keep-alive when due; fails when the server has not answered a request in
    /// time. Tolerated: an unanswered first OPTIONS (after [`START_OPTIONS_TIMEOUT`],
    /// DESCRIBE follows), and an unanswered keep-alive, after which the other keep-alive
    /// method is used, as after a refusal; only when that one goes unanswered as well, with
    /// no keep-alive answered in between, is it a [`ClientError::Timeout`]. (Some cameras
    /// silently ignore GET_PARAMETER while their media flows; the driver's media read
    /// timeout watches liveness too.)
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        while let Some(i) = self.pending.iter().position(|p| now >= self.deadline(p)) {
            let p = self.pending.remove(i).expect("position is in range");
            match p.purpose {
                Purpose::Start => {
                    self.describe(now);
                    continue;
                }
                Purpose::KeepAlive => {
                    let silent = KeepAlive::of(&p.method);
                    if self.silent_keep_alive != Some(silent.other()) {
                        self.silent_keep_alive = Some(silent);
                        self.keep_alive = silent.other();
                        continue;
                    }
                }
                Purpose::Normal => {}
            }
            return Err(ClientError::Timeout(p.method.as_str().to_owned()));
        }
        if self.next_keep_alive.is_some_and(|at| now >= at) && !self.closing {
            self.keep_alive(now);
        }
        Ok(())
    }

    /// When [`ClientSession::handle_timeout`] is due: the earliest of the pending answers'
    /// deadlines and the next keep-alive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let answers = self.pending.iter().map(|p| self.deadline(p)).min();
        match (answers, self.next_keep_alive) {
            (Some(a), Some(k)) => Some(a.min(k)),
            (a, k) => a.or(k),
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the RTSP connection.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// True once PLAY or RECORD was accepted.
    pub fn is_started(&self) -> bool {
        self.started
    }
}

/// A control or base URL the server sent, resolved against `base` (RFC 2326 C.1.1), without
/// any userinfo: a camera that echoes `rtsp://user:pass@...` in Content-Base or `a=control`
/// must not put the password into our request lines or the URLs we report.
fn resolve(base: &str, control: &str) -> String {
    url::split_userinfo(&url::join_control(base, control)).0
}

/// Whether a comma-separated method list (`Public`, `Allow`) holds `method`.
fn lists(list: &str, method: &str) -> bool {
    list.split(',').any(|m| m.trim().eq_ignore_ascii_case(method))
}

/// Drops the message at the front of `buf` that the decoder refused: its header block and
/// the body its Content-Length announces (at most [`message::MAX_BODY_LEN`]). False when the
/// header block is not complete or the body is not all there. The header block ends where
/// the decoder says it does (a blank line, CRLF or bare LF).
fn skip_message(buf: &mut BytesMut) -> bool {
    let Some((_, end)) = message::find_head_end(buf) else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let body = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if body > message::MAX_BODY_LEN || buf.len() < end + body {
        return false;
    }
    let _ = buf.split_to(end + body);
    true
}

#[cfg(test)]
mod tests;
