//! The server side of an RTMP connection: accepts `connect`, `createStream`, `publish` and
//! `play`, hands each decision to the application, and carries media both ways.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use thiserror::Error;

use crate::amf0::{self, Amf0Error, Value};
use crate::chunk::{ChunkError, DEFAULT_MAX_MESSAGE_LEN, RawMessage};
use crate::conn::{Conn, DEFAULT_WINDOW_ACK_SIZE, Incoming};
use crate::handshake::{HandshakeError, HandshakeKind, ServerHandshake};
use crate::message::{self, CSID_COMMAND, MediaKind, MediaMessage, status_object, type_id, user_control};

/// Most message streams (`createStream`) one connection may hold. Encoders use one.
pub const MAX_STREAMS_PER_CONNECTION: usize = 8;
/// Longest stream name or app we accept, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Settings of a server session.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Our outgoing chunk size, announced after `connect`.
    pub chunk_size: u32,
    /// Cap on the length of a media message from the peer once its publish is accepted.
    /// Everything else, and everything before, is capped at
    /// [`crate::chunk::MAX_COMMAND_MESSAGE_LEN`].
    pub max_message_len: u32,
    /// Window Acknowledgement Size we ask the peer to use.
    pub window_ack_size: u32,
    /// Time allowed from accept until a `publish` or `play` is accepted: the handshake,
    /// `connect` and the stream commands. A client trickling bytes cannot hold a connection
    /// open for longer without ever streaming.
    pub handshake_timeout: Duration,
    /// A peer that sends nothing for this long is disconnected.
    pub idle_timeout: Duration,
    /// After this much silence from the peer we send a PingRequest.
    pub ping_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            chunk_size: 4096,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            window_ack_size: DEFAULT_WINDOW_ACK_SIZE,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(10),
        }
    }
}

/// The session's timers; the earliest deadline is [`ServerSession::poll_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The handshake and a publish or play must be done by then.
    Handshake,
    /// The peer must have sent something by then.
    Idle,
    /// Send a PingRequest.
    KeepAlive,
}

/// Why a session ended. Every variant is fatal: the driver logs it and closes the socket.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Bad handshake bytes.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Bad chunk stream.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A command or data message that is not valid AMF0.
    #[error("message type {type_id}: {source}")]
    Amf0 {
        /// The message type.
        type_id: u8,
        /// The decoding error.
        source: Amf0Error,
    },
    /// A message type RTMP does not define.
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    /// A command other than `connect` before the connection was accepted.
    #[error("command {0:?} before connect")]
    CommandBeforeConnect(String),
    /// Audio/video/data before connect, or on a stream that is not publishing.
    #[error("media message on stream {stream_id} that is not publishing")]
    MediaWithoutPublish {
        /// The message stream.
        stream_id: u32,
    },
    /// A command whose fields are missing or of the wrong type.
    #[error("malformed {command} command: {why}")]
    MalformedCommand {
        /// The command name.
        command: String,
        /// What is wrong.
        why: &'static str,
    },
    /// More `createStream` than [`MAX_STREAMS_PER_CONNECTION`].
    #[error("more than {MAX_STREAMS_PER_CONNECTION} streams on one connection")]
    TooManyStreams,
    /// The server answered our `connect` or `createStream` with `_error` (client side).
    #[error("{command} refused: {code} {description}")]
    Refused {
        /// The command that was refused.
        command: &'static str,
        /// The status code, e.g. `NetConnection.Connect.Rejected`.
        code: String,
        /// The server's description.
        description: String,
    },
    /// The peer did not get to publish or play in time.
    #[error("no publish or play within {0:?} of connecting")]
    HandshakeTimeout(Duration),
    /// The peer sent nothing for the idle timeout.
    #[error("peer silent for {0:?}")]
    IdleTimeout(Duration),
}

/// A decision or notification for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `connect`: answer with [`ServerSession::accept_connect`] or
    /// [`ServerSession::reject_connect`].
    Connect {
        /// The application name (query string removed).
        app: String,
        /// The tcUrl the client sent.
        tc_url: Option<String>,
        /// The query string of app, if any (`live?token=x` gives `token=x`).
        query: Option<String>,
    },
    /// `publish`: answer with [`ServerSession::accept_publish`] or
    /// [`ServerSession::reject`].
    Publish {
        /// Message stream id.
        stream_id: u32,
        /// Stream name (query string removed).
        name: String,
        /// Query string of the name, if any.
        query: Option<String>,
        /// Publishing type (`live`, `record`, `append`).
        kind: String,
    },
    /// `play`: answer with [`ServerSession::accept_play`] or [`ServerSession::reject`].
    Play {
        /// Message stream id.
        stream_id: u32,
        /// Stream name (query string removed).
        name: String,
        /// Query string of the name, if any.
        query: Option<String>,
    },
    /// The publisher on `stream_id` stopped (`FCUnpublish`, `closeStream` or `deleteStream`).
    Unpublish {
        /// Message stream id.
        stream_id: u32,
    },
    /// The player on `stream_id` stopped (`closeStream` or `deleteStream`).
    PlayStop {
        /// Message stream id.
        stream_id: u32,
    },
    /// `pause` (true) or resume (false) of a playing stream.
    Pause {
        /// Message stream id.
        stream_id: u32,
        /// True to pause.
        paused: bool,
    },
    /// `receiveAudio` / `receiveVideo`.
    Receive {
        /// Message stream id.
        stream_id: u32,
        /// Audio or video.
        kind: MediaKind,
        /// Whether the player wants it.
        enabled: bool,
    },
    /// Audio, video or metadata from a publishing stream. Data messages are unwrapped from
    /// `@setDataFrame`, so the payload starts with `"onMetaData"`.
    Media(MediaMessage),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Idle,
    PublishPending,
    Publishing,
    PlayPending,
    Playing,
}

#[derive(Debug)]
enum State {
    Handshake(ServerHandshake),
    WaitConnect,
    ConnectPending { tid: f64 },
    Connected,
}

/// The server side of one RTMP connection, sans I/O.
///
/// Drive it like this, draining the polls after every input:
///
/// ```no_run
/// # use std::time::Instant;
/// # use ferrocast_rtmp::{ServerConfig, ServerEvent, ServerSession};
/// # fn read() -> Vec<u8> { vec![] } fn write(_: &[u8]) {}
/// let mut s = ServerSession::new(ServerConfig::default(), Instant::now());
/// loop {
///     s.handle_input(Instant::now(), &read())?;          // or handle_timeout at poll_timeout()
///     while let Some(ev) = s.poll_event() {
///         if let ServerEvent::Connect { .. } = ev { s.accept_connect()?; }
///     }
///     while let Some(bytes) = s.poll_transmit() { write(&bytes); }
/// }
/// # Ok::<(), ferrocast_rtmp::SessionError>(())
/// ```
///
/// Until the application accepts a publish, the peer is held to the caps of a peer nobody
/// knows (see [`crate::chunk::ChunkDecoder`]): 64 KiB messages, 8 chunk streams, and 256 KiB
/// buffered, input waiting for a decision included. Feed input as it is read, a few KiB at a
/// time: a larger piece is buffered whole before the cap is checked.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    state: State,
    conn: Conn,
    streams: HashMap<u32, Role>,
    next_stream_id: u32,
    events: std::collections::VecDeque<ServerEvent>,
    started: Instant,
    last_input: Instant,
    last_ping: Instant,
    closing: bool,
    handshake_kind: Option<HandshakeKind>,
    /// A publish or play has been accepted: the handshake deadline no longer applies.
    streaming: bool,
}

fn split_query(s: &str) -> (String, Option<String>) {
    match s.split_once('?') {
        Some((a, q)) => (a.to_owned(), Some(q.to_owned())),
        None => (s.to_owned(), None),
    }
}

fn string_arg(cmd: &str, args: &[Value], i: usize) -> Result<String, SessionError> {
    let s = args
        .get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| SessionError::MalformedCommand { command: cmd.to_owned(), why: "missing string argument" })?;
    if s.len() > MAX_NAME_LEN {
        return Err(SessionError::MalformedCommand { command: cmd.to_owned(), why: "name too long" });
    }
    Ok(s.to_owned())
}

impl ServerSession {
    /// A session for a freshly accepted connection.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let conn = Conn::new(config.max_message_len);
        ServerSession {
            config,
            state: State::Handshake(ServerHandshake::new()),
            conn,
            streams: HashMap::new(),
            next_stream_id: 1,
            events: Default::default(),
            started: now,
            last_input: now,
            last_ping: now,
            closing: false,
            handshake_kind: None,
            streaming: false,
        }
    }

    /// Which handshake the client used, once known.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        match &self.state {
            State::Handshake(h) => h.kind(),
            _ => self.handshake_kind,
        }
    }

    /// True after a rejection that ends the connection: flush `poll_transmit`, then close.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Our outgoing chunk size (after `accept_connect`, the configured one).
    pub fn chunk_size(&self) -> u32 {
        self.conn.out_chunk_size
    }

    /// Feeds bytes read from the socket.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), SessionError> {
        self.last_input = now;
        if let State::Handshake(h) = &mut self.state {
            self.conn.input.extend_from_slice(data);
            if let Some(reply) = h.process(&mut self.conn.input)? {
                self.conn.push(reply);
            }
            if !h.is_done() {
                // C2 may already be buffered behind C0C1.
                h.process(&mut self.conn.input)?;
                if !h.is_done() {
                    self.conn.check_buffered()?;
                    return Ok(());
                }
            }
            self.handshake_kind = h.kind();
            self.state = State::WaitConnect;
            // Take the handshake's buffer instead of splitting it, so its ~3 KiB allocation is
            // not kept for the connection's life.
            let rest = std::mem::take(&mut self.conn.input);
            self.conn.receive(&rest);
        } else {
            self.conn.receive(data);
        }
        self.process()?;
        // Input waits while a decision is owed: until a publish is accepted, what a peer can
        // make us hold is capped.
        self.conn.check_buffered()?;
        Ok(())
    }

    /// True while the application owes a decision (connect, publish or play). Input stays
    /// buffered meanwhile, so a client that pipelines commands (`connect` then
    /// `createStream`, or `publish` then its metadata) has them handled in order after the
    /// decision.
    fn awaiting_decision(&self) -> bool {
        matches!(self.state, State::ConnectPending { .. })
            || self.streams.values().any(|r| matches!(r, Role::PublishPending | Role::PlayPending))
    }

    /// Handles buffered messages until none is complete or a decision is owed.
    fn process(&mut self) -> Result<(), SessionError> {
        while !self.awaiting_decision() && !self.closing {
            let Some(incoming) = self.conn.next()? else {
                break;
            };
            match incoming {
                Incoming::UserControl(_) => {}
                Incoming::Message(msg) => self.on_message(msg)?,
            }
        }
        Ok(())
    }

    /// Fires due timers. An error means the peer timed out.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if !self.streaming && now >= self.started + self.config.handshake_timeout {
            return Err(SessionError::HandshakeTimeout(self.config.handshake_timeout));
        }
        if matches!(self.state, State::Handshake(_)) {
            return Ok(());
        }
        if now >= self.last_input + self.config.idle_timeout {
            return Err(SessionError::IdleTimeout(self.config.idle_timeout));
        }
        if now >= self.next_ping() {
            self.last_ping = now;
            let ts = now.duration_since(self.started).as_millis() as u32;
            let cs = self.conn.out_chunk_size;
            message::user_control(self.conn.out(), user_control::PING_REQUEST, ts, cs);
        }
        Ok(())
    }

    fn next_ping(&self) -> Instant {
        self.last_input.max(self.last_ping) + self.config.ping_interval
    }

    fn timers(&self) -> [(Timer, Option<Instant>); 3] {
        let in_handshake = matches!(self.state, State::Handshake(_));
        [
            (Timer::Handshake, (!self.streaming).then(|| self.started + self.config.handshake_timeout)),
            (Timer::Idle, (!in_handshake).then(|| self.last_input + self.config.idle_timeout)),
            (Timer::KeepAlive, (!in_handshake).then(|| self.next_ping())),
        ]
    }

    /// The earliest timer deadline, and which timer it is.
    pub fn poll_timeout(&self) -> Option<(Timer, Instant)> {
        self.timers().into_iter().filter_map(|(t, at)| at.map(|at| (t, at))).min_by_key(|(_, at)| *at)
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next bytes to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.conn.poll_transmit()
    }

    /// True while bytes wait for [`ServerSession::poll_transmit`].
    pub fn has_output(&self) -> bool {
        self.conn.has_output()
    }

    fn send_command(&mut self, stream_id: u32, values: &[Value]) {
        let cs = self.conn.out_chunk_size;
        message::amf0_message(self.conn.out(), CSID_COMMAND, type_id::COMMAND_AMF0, stream_id, values, cs);
    }

    /// Sends an `onStatus` on a stream.
    pub fn send_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.send_command(
            stream_id,
            &[Value::from("onStatus"), Value::Number(0.0), Value::Null, status_object(level, code, description)],
        );
    }

    /// Sends a User Control event (StreamBegin, StreamEOF, ...) for a stream.
    pub fn send_user_control(&mut self, event: u16, stream_id: u32) {
        let cs = self.conn.out_chunk_size;
        message::user_control(self.conn.out(), event, stream_id, cs);
    }

    /// Accepts a `connect`: window size, peer bandwidth, our chunk size, then `_result`.
    /// Buffered input behind the `connect` is then handled: new events may follow, and an
    /// error in that input is returned.
    pub fn accept_connect(&mut self) -> Result<(), SessionError> {
        let State::ConnectPending { tid } = self.state else {
            return Ok(());
        };
        self.state = State::Connected;
        let cs = self.conn.out_chunk_size;
        message::control_u32(self.conn.out(), type_id::WINDOW_ACK_SIZE, self.config.window_ack_size, cs);
        message::set_peer_bandwidth(self.conn.out(), self.config.window_ack_size, cs);
        self.conn.set_out_chunk_size(self.config.chunk_size);
        self.send_command(
            0,
            &[
                Value::from("_result"),
                Value::Number(tid),
                Value::object([("fmsVer", Value::from("FMS/3,0,1,123")), ("capabilities", Value::Number(31.0))]),
                Value::object([
                    ("level", Value::from("status")),
                    ("code", Value::from("NetConnection.Connect.Success")),
                    ("description", Value::from("Connection succeeded.")),
                    ("objectEncoding", Value::Number(0.0)),
                ]),
            ],
        );
        self.process()
    }

    /// Rejects a `connect` with `NetConnection.Connect.Rejected`; the connection then closes.
    pub fn reject_connect(&mut self, description: &str) {
        let State::ConnectPending { tid } = self.state else {
            return;
        };
        self.send_command(
            0,
            &[
                Value::from("_error"),
                Value::Number(tid),
                Value::Null,
                status_object("error", "NetConnection.Connect.Rejected", description),
            ],
        );
        self.closing = true;
    }

    /// Accepts a pending `publish`: `NetStream.Publish.Start`. Buffered input is then
    /// handled, as with [`ServerSession::accept_connect`].
    pub fn accept_publish(&mut self, stream_id: u32) -> Result<(), SessionError> {
        if let Some(r @ Role::PublishPending) = self.streams.get_mut(&stream_id) {
            *r = Role::Publishing;
            self.streaming = true;
            // The application accepted this peer as a publisher: media messages up to the
            // configured cap from now on.
            self.conn.allow_media();
            self.send_user_control(user_control::STREAM_BEGIN, stream_id);
            self.send_status(stream_id, "status", "NetStream.Publish.Start", "Start publishing");
        }
        self.process()
    }

    /// Accepts a pending `play`: StreamBegin, `NetStream.Play.Reset`, `NetStream.Play.Start`
    /// and `|RtmpSampleAccess`. Media may follow with [`ServerSession::send_media`].
    /// Buffered input is then handled, as with [`ServerSession::accept_connect`].
    pub fn accept_play(&mut self, stream_id: u32) -> Result<(), SessionError> {
        if let Some(r @ Role::PlayPending) = self.streams.get_mut(&stream_id) {
            *r = Role::Playing;
            self.streaming = true;
            self.send_user_control(user_control::STREAM_BEGIN, stream_id);
            self.send_status(stream_id, "status", "NetStream.Play.Reset", "Playing and resetting");
            self.send_status(stream_id, "status", "NetStream.Play.Start", "Started playing");
            let cs = self.conn.out_chunk_size;
            message::amf0_message(
                self.conn.out(),
                message::CSID_DATA,
                type_id::DATA_AMF0,
                stream_id,
                &[Value::from("|RtmpSampleAccess"), Value::Boolean(true), Value::Boolean(true)],
                cs,
            );
        }
        self.process()
    }

    /// Rejects a pending `publish` or `play` with an error status such as
    /// `NetStream.Publish.BadName` or `NetStream.Play.StreamNotFound`. The stream returns to
    /// idle; the connection stays open for the client to act. Buffered input is then
    /// handled, as with [`ServerSession::accept_connect`].
    pub fn reject(&mut self, stream_id: u32, code: &str, description: &str) -> Result<(), SessionError> {
        if let Some(r) = self.streams.get_mut(&stream_id) {
            *r = Role::Idle;
            self.send_status(stream_id, "error", code, description);
        }
        self.process()
    }

    /// Ends a playing stream from the server side (the publisher is gone for good).
    pub fn end_play(&mut self, stream_id: u32, code: &str, description: &str) {
        if let Some(r @ Role::Playing) = self.streams.get_mut(&stream_id) {
            *r = Role::Idle;
            self.send_status(stream_id, "status", code, description);
        }
    }

    /// Queues pre-encoded media chunks (see [`message::encode_media`]) for a playing stream.
    pub fn send_media(&mut self, chunks: Bytes) {
        self.conn.push(chunks);
    }

    /// Encodes and queues one media message for this connection only.
    pub fn send_media_message(&mut self, kind: MediaKind, timestamp: u32, stream_id: u32, payload: &[u8]) {
        self.conn.send(kind.csid(), timestamp, kind.type_id(), stream_id, payload);
    }

    fn on_message(&mut self, msg: RawMessage) -> Result<(), SessionError> {
        match msg.type_id {
            type_id::COMMAND_AMF0 => self.on_command(&msg.payload, msg.stream_id, msg.type_id),
            type_id::COMMAND_AMF3 => {
                // AMF3 command: a format byte (0 = AMF0 follows) and AMF0 values (7.1.1).
                let body = msg.payload.get(1..).unwrap_or_default();
                self.on_command(body, msg.stream_id, msg.type_id)
            }
            type_id::AUDIO | type_id::VIDEO => {
                let kind = if msg.type_id == type_id::AUDIO { MediaKind::Audio } else { MediaKind::Video };
                if self.publishing(msg.stream_id)? {
                    self.events.push_back(ServerEvent::Media(MediaMessage {
                        kind,
                        timestamp: msg.timestamp,
                        stream_id: msg.stream_id,
                        payload: msg.payload,
                    }));
                }
                Ok(())
            }
            type_id::DATA_AMF0 | type_id::DATA_AMF3 => {
                let mut payload = msg.payload;
                if msg.type_id == type_id::DATA_AMF3 {
                    payload.advance(payload.len().min(1));
                }
                self.on_data(msg.stream_id, msg.timestamp, payload)
            }
            type_id::AGGREGATE => self.on_aggregate(msg),
            type_id::SHARED_OBJECT_AMF0 | type_id::SHARED_OBJECT_AMF3 => Ok(()),
            t => Err(SessionError::UnknownMessageType(t)),
        }
    }

    /// Whether media on `stream_id` is wanted. Media on a stream whose publish is pending is
    /// dropped; media anywhere else is a protocol error.
    fn publishing(&self, stream_id: u32) -> Result<bool, SessionError> {
        match self.streams.get(&stream_id) {
            Some(Role::Publishing) => Ok(true),
            Some(Role::PublishPending) => Ok(false),
            _ => Err(SessionError::MediaWithoutPublish { stream_id }),
        }
    }

    fn on_data(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) -> Result<(), SessionError> {
        if !self.publishing(stream_id)? {
            return Ok(());
        }
        let amf_err = |source| SessionError::Amf0 { type_id: type_id::DATA_AMF0, source };
        let (first, used) = amf0::decode_one(&payload).map_err(amf_err)?;
        let payload = match first.as_str() {
            Some("@setDataFrame") => payload.slice(used..),
            Some("onMetaData") => payload,
            _ => return Ok(()),
        };
        // Validate the rest so readers never get malformed AMF from us.
        amf0::decode_all(&payload).map_err(amf_err)?;
        self.events.push_back(ServerEvent::Media(MediaMessage {
            kind: MediaKind::Data,
            timestamp,
            stream_id,
            payload,
        }));
        Ok(())
    }

    /// Aggregate message (7.1.6): FLV-style sub-messages whose timestamps are rebased on the
    /// aggregate's own.
    fn on_aggregate(&mut self, msg: RawMessage) -> Result<(), SessionError> {
        let mut p = msg.payload;
        let mut base: Option<u32> = None;
        while p.len() >= 11 {
            let t = p[0];
            let size = (usize::from(p[1]) << 16) | (usize::from(p[2]) << 8) | usize::from(p[3]);
            let ts = u32::from_be_bytes([p[7], p[4], p[5], p[6]]);
            if p.len() < 11 + size {
                break;
            }
            let body = p.slice(11..11 + size);
            p.advance((11 + size + 4).min(p.len()));
            let first = *base.get_or_insert(ts);
            let timestamp = msg.timestamp.wrapping_add(ts.wrapping_sub(first));
            let kind = match t {
                type_id::AUDIO => MediaKind::Audio,
                type_id::VIDEO => MediaKind::Video,
                type_id::DATA_AMF0 => {
                    self.on_data(msg.stream_id, timestamp, body)?;
                    continue;
                }
                _ => continue,
            };
            if self.publishing(msg.stream_id)? {
                self.events.push_back(ServerEvent::Media(MediaMessage {
                    kind,
                    timestamp,
                    stream_id: msg.stream_id,
                    payload: body,
                }));
            }
        }
        Ok(())
    }

    fn on_command(&mut self, body: &[u8], stream_id: u32, type_id: u8) -> Result<(), SessionError> {
        let values = amf0::decode_all(body).map_err(|source| SessionError::Amf0 { type_id, source })?;
        let name = values.first().and_then(Value::as_str).unwrap_or_default().to_owned();
        let tid = values.get(1).and_then(Value::as_f64).unwrap_or(0.0);
        let args = values.get(3..).unwrap_or_default();
        if !matches!(self.state, State::Connected) {
            if name == "connect" && matches!(self.state, State::WaitConnect) {
                let obj = values.get(2).ok_or_else(|| SessionError::MalformedCommand {
                    command: name.clone(),
                    why: "missing command object",
                })?;
                let app_full = obj.get("app").and_then(Value::as_str).unwrap_or_default();
                if app_full.len() > MAX_NAME_LEN {
                    return Err(SessionError::MalformedCommand { command: name, why: "app too long" });
                }
                let (app, query) = split_query(app_full);
                let tc_url = obj.get("tcUrl").and_then(Value::as_str).map(str::to_owned);
                self.state = State::ConnectPending { tid };
                self.events.push_back(ServerEvent::Connect { app, tc_url, query });
                return Ok(());
            }
            return Err(SessionError::CommandBeforeConnect(name));
        }
        match name.as_str() {
            "createStream" => {
                if self.streams.len() >= MAX_STREAMS_PER_CONNECTION {
                    return Err(SessionError::TooManyStreams);
                }
                let id = self.next_stream_id;
                self.next_stream_id += 1;
                self.streams.insert(id, Role::Idle);
                self.send_command(
                    0,
                    &[Value::from("_result"), Value::Number(tid), Value::Null, Value::Number(f64::from(id))],
                );
            }
            "releaseStream" | "getStreamLength" => {
                let result = if name == "getStreamLength" { Value::Number(0.0) } else { Value::Undefined };
                self.send_command(0, &[Value::from("_result"), Value::Number(tid), Value::Null, result]);
            }
            "FCPublish" => {
                let stream = args.first().and_then(Value::as_str).unwrap_or_default().to_owned();
                self.send_command(
                    0,
                    &[
                        Value::from("onFCPublish"),
                        Value::Number(0.0),
                        Value::Null,
                        status_object("status", "NetStream.Publish.Start", &stream),
                    ],
                );
            }
            "publish" | "play" => {
                let full = string_arg(&name, args, 0)?;
                let (stream, query) = split_query(&full);
                let Some(role) = self.streams.get_mut(&stream_id) else {
                    return Err(SessionError::MalformedCommand { command: name, why: "stream was not created" });
                };
                if *role != Role::Idle {
                    return Err(SessionError::MalformedCommand { command: name, why: "stream is busy" });
                }
                if name == "publish" {
                    *role = Role::PublishPending;
                    let kind = args.get(1).and_then(Value::as_str).unwrap_or("live").to_owned();
                    self.events.push_back(ServerEvent::Publish { stream_id, name: stream, query, kind });
                } else {
                    *role = Role::PlayPending;
                    self.events.push_back(ServerEvent::Play { stream_id, name: stream, query });
                }
            }
            "FCUnpublish" => {
                let ids: Vec<u32> =
                    self.streams.iter().filter(|(_, r)| **r == Role::Publishing).map(|(id, _)| *id).collect();
                for id in ids {
                    self.stop_stream(id);
                }
                self.send_command(
                    0,
                    &[
                        Value::from("onFCUnpublish"),
                        Value::Number(0.0),
                        Value::Null,
                        status_object("status", "NetStream.Unpublish.Success", ""),
                    ],
                );
            }
            "closeStream" => self.stop_stream(stream_id),
            "deleteStream" => {
                let id = args.first().and_then(Value::as_f64).unwrap_or(f64::from(stream_id)) as u32;
                self.stop_stream(id);
                self.streams.remove(&id);
            }
            "pause" | "pauseRaw" => {
                let paused = matches!(args.first(), Some(Value::Boolean(true)));
                if self.streams.get(&stream_id) == Some(&Role::Playing) {
                    self.events.push_back(ServerEvent::Pause { stream_id, paused });
                    let code = if paused { "NetStream.Pause.Notify" } else { "NetStream.Unpause.Notify" };
                    self.send_status(stream_id, "status", code, if paused { "Paused" } else { "Unpaused" });
                }
            }
            "receiveAudio" | "receiveVideo" => {
                let enabled = !matches!(args.first(), Some(Value::Boolean(false)));
                let kind = if name == "receiveAudio" { MediaKind::Audio } else { MediaKind::Video };
                self.events.push_back(ServerEvent::Receive { stream_id, kind, enabled });
            }
            // Answers and probes some clients send; nothing to do.
            _ => {}
        }
        Ok(())
    }

    fn stop_stream(&mut self, stream_id: u32) {
        match self.streams.get_mut(&stream_id) {
            Some(r @ (Role::Publishing | Role::PublishPending)) => {
                *r = Role::Idle;
                self.events.push_back(ServerEvent::Unpublish { stream_id });
            }
            Some(r @ (Role::Playing | Role::PlayPending)) => {
                *r = Role::Idle;
                self.events.push_back(ServerEvent::PlayStop { stream_id });
            }
            _ => {}
        }
    }
}
