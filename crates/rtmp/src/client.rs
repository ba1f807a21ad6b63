//! The client side of an RTMP connection: connects, creates a stream, then publishes or plays.
//! ferrocast uses it in tests now and for relays later.
//!
//! Answers are matched to what we asked by transaction id (RTMP spec 1.0 section 7.2.1.1):
//! `connect` is transaction 1, `createStream` 2; a `_result` or `_error` for anything else is
//! not taken for theirs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::amf0::{self, Value};
use crate::chunk::DEFAULT_MAX_MESSAGE_LEN;
use crate::conn::{Conn, DEFAULT_WINDOW_ACK_SIZE, Incoming};
use crate::handshake::ClientHandshake;
use crate::message::{self, CSID_COMMAND, MediaKind, MediaMessage, type_id};
use crate::server::SessionError;

/// What the client does once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMode {
    /// `publish(name, "live")`.
    Publish(String),
    /// `play(name)`.
    Play(String),
}

/// Settings of a client session.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `app` of `connect`.
    pub app: String,
    /// `tcUrl` of `connect`.
    pub tc_url: String,
    /// Publish or play, and the stream name.
    pub mode: ClientMode,
    /// Our outgoing chunk size.
    pub chunk_size: u32,
    /// Cap on incoming media messages once playing (see [`crate::chunk::ChunkDecoder`]).
    pub max_message_len: u32,
    /// The server must answer within this time at each step until publishing/playing starts.
    pub response_timeout: Duration,
}

impl ClientConfig {
    /// Settings for `rtmp://host/app/name`.
    pub fn new(tc_url: &str, app: &str, mode: ClientMode) -> Self {
        ClientConfig {
            app: app.to_owned(),
            tc_url: tc_url.to_owned(),
            mode,
            chunk_size: 4096,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            response_timeout: Duration::from_secs(10),
        }
    }
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `connect` succeeded.
    Connected,
    /// `NetStream.Publish.Start`: media may be sent.
    Publishing,
    /// `NetStream.Play.Start`: media will arrive.
    Playing,
    /// Any `onStatus` or `_error`, with its level and code.
    Status {
        /// `status`, `warning` or `error`.
        level: String,
        /// E.g. `NetStream.Publish.BadName`.
        code: String,
    },
    /// A User Control event (StreamBegin = 0, StreamEOF = 1, ...), pings excluded.
    UserControl {
        /// The event type.
        event: u16,
        /// Its stream id.
        stream_id: u32,
    },
    /// Audio, video or data from the server.
    Media(MediaMessage),
}

/// Longest status description kept (a peer's text, for error messages).
pub const MAX_DESCRIPTION_CHARS: usize = 200;

/// Transaction id of our `connect` (7.2.1.1: always 1).
const TID_CONNECT: f64 = 1.0;
/// Transaction id of our `createStream`.
const TID_CREATE_STREAM: f64 = 2.0;
/// Transaction id of our `publish` or `play` (answered with `onStatus`, not `_result`).
const TID_START: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Handshake,
    Connecting,
    CreatingStream,
    Starting,
    Active,
}

/// The client side of an RTMP connection, sans I/O. Drive it as [`crate::ServerSession`]:
/// send what `poll_transmit` gives right after `new`, then feed input and drain the polls.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    handshake: ClientHandshake,
    conn: Conn,
    step: Step,
    stream_id: u32,
    events: VecDeque<ClientEvent>,
    /// The `description` of the last `onStatus`/`_error` that had one.
    last_description: Option<String>,
    deadline: Instant,
}

impl ClientSession {
    /// Starts a session: C0+C1 are ready in `poll_transmit`.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut conn = Conn::new(config.max_message_len);
        let mut handshake = ClientHandshake::new();
        conn.push(handshake.start());
        let deadline = now + config.response_timeout;
        ClientSession {
            config,
            handshake,
            conn,
            step: Step::Handshake,
            stream_id: 0,
            events: VecDeque::new(),
            last_description: None,
            deadline,
        }
    }

    /// The message stream id the server gave us (0 before `createStream` completes).
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// Feeds bytes read from the socket.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), SessionError> {
        if self.step == Step::Handshake {
            self.conn.input.extend_from_slice(data);
            let Some(c2) = self.handshake.process(&mut self.conn.input)? else {
                return Ok(());
            };
            self.conn.push(c2);
            let rest = self.conn.input.split();
            self.conn.receive(&rest);
            let cs = self.config.chunk_size;
            let current = self.conn.out_chunk_size;
            message::control_u32(self.conn.out(), type_id::WINDOW_ACK_SIZE, DEFAULT_WINDOW_ACK_SIZE, current);
            self.conn.set_out_chunk_size(cs);
            let obj = Value::object([
                ("app", Value::from(self.config.app.as_str())),
                ("type", Value::from("nonprivate")),
                ("flashVer", Value::from("FMLE/3.0 (compatible; ferrocast)")),
                ("tcUrl", Value::from(self.config.tc_url.as_str())),
            ]);
            self.command(0, &[Value::from("connect"), Value::Number(TID_CONNECT), obj]);
            self.step = Step::Connecting;
            self.deadline = now + self.config.response_timeout;
        } else {
            self.conn.receive(data);
        }
        while let Some(incoming) = self.conn.next()? {
            match incoming {
                Incoming::UserControl(u) => {
                    if u.event != message::user_control::PING_REQUEST && u.event != message::user_control::PING_RESPONSE
                    {
                        self.events.push_back(ClientEvent::UserControl { event: u.event, stream_id: u.value });
                    }
                }
                Incoming::Message(m) => match m.type_id {
                    type_id::COMMAND_AMF0 => {
                        let values = amf0::decode_all(&m.payload)
                            .map_err(|source| SessionError::Amf0 { type_id: m.type_id, source })?;
                        self.on_command(now, &values)?;
                    }
                    type_id::AUDIO | type_id::VIDEO | type_id::DATA_AMF0 => {
                        let kind = match m.type_id {
                            type_id::AUDIO => MediaKind::Audio,
                            type_id::VIDEO => MediaKind::Video,
                            _ => MediaKind::Data,
                        };
                        self.events.push_back(ClientEvent::Media(MediaMessage {
                            kind,
                            timestamp: m.timestamp,
                            stream_id: m.stream_id,
                            payload: m.payload,
                        }));
                    }
                    _ => {}
                },
            }
        }
        self.conn.check_buffered()?;
        Ok(())
    }

    fn command(&mut self, stream_id: u32, values: &[Value]) {
        let cs = self.conn.out_chunk_size;
        message::amf0_message(self.conn.out(), CSID_COMMAND, type_id::COMMAND_AMF0, stream_id, values, cs);
    }

    fn on_command(&mut self, now: Instant, values: &[Value]) -> Result<(), SessionError> {
        let name = values.first().and_then(Value::as_str).unwrap_or_default();
        let tid = values.get(1).and_then(Value::as_f64);
        let info = values.get(3);
        let field = |k: &str| info.and_then(|i| i.get(k)).and_then(Value::as_str).unwrap_or_default().to_owned();
        // The answer to the request this step waits for, if this is it.
        let awaited = match self.step {
            Step::Connecting => Some(("connect", TID_CONNECT)),
            Step::CreatingStream => Some(("createStream", TID_CREATE_STREAM)),
            _ => None,
        }
        .filter(|(_, t)| tid == Some(*t));
        match name {
            "_error" if awaited.is_some() => {
                let (command, _) = awaited.expect("checked");
                let (level, code) = (field("level"), field("code"));
                self.events.push_back(ClientEvent::Status { level, code: code.clone() });
                return Err(SessionError::Refused { command, code, description: field("description") });
            }
            "_result" if awaited.is_some() && self.step == Step::Connecting => {
                self.events.push_back(ClientEvent::Connected);
                self.command(0, &[Value::from("createStream"), Value::Number(TID_CREATE_STREAM), Value::Null]);
                self.step = Step::CreatingStream;
                self.deadline = now + self.config.response_timeout;
            }
            "_result" if awaited.is_some() && self.step == Step::CreatingStream => {
                self.stream_id = info.and_then(Value::as_f64).unwrap_or(1.0) as u32;
                let sid = self.stream_id;
                match self.config.mode.clone() {
                    ClientMode::Publish(n) => self.command(
                        sid,
                        &[
                            Value::from("publish"),
                            Value::Number(TID_START),
                            Value::Null,
                            Value::from(n.as_str()),
                            Value::from("live"),
                        ],
                    ),
                    ClientMode::Play(n) => self.command(
                        sid,
                        &[
                            Value::from("play"),
                            Value::Number(TID_START),
                            Value::Null,
                            Value::from(n.as_str()),
                            Value::Number(-2000.0),
                        ],
                    ),
                }
                self.step = Step::Starting;
                self.deadline = now + self.config.response_timeout;
            }
            "onStatus" | "_error" => {
                let code = field("code");
                let level = field("level");
                let description = field("description");
                if !description.is_empty() {
                    self.last_description =
                        Some(description.chars().filter(|c| !c.is_control()).take(MAX_DESCRIPTION_CHARS).collect());
                }
                if self.step == Step::Starting && (code == "NetStream.Publish.Start" || code == "NetStream.Play.Start")
                {
                    self.step = Step::Active;
                    // Media may follow (a player's): lift the caps of an unaccepted peer.
                    self.conn.allow_media();
                    self.events.push_back(if code == "NetStream.Publish.Start" {
                        ClientEvent::Publishing
                    } else {
                        ClientEvent::Playing
                    });
                }
                self.events.push_back(ClientEvent::Status { level, code });
            }
            _ => {}
        }
        Ok(())
    }

    /// The `description` of the last status the server sent with one (why a `play` or
    /// `publish` was refused), at most [`MAX_DESCRIPTION_CHARS`] characters.
    pub fn last_description(&self) -> Option<&str> {
        self.last_description.as_deref()
    }

    /// Sends one media message (FLV tag body, or AMF0 values for data) on our stream.
    pub fn send_media(&mut self, kind: MediaKind, timestamp: u32, payload: &[u8]) {
        let payload_owned;
        let payload = if kind == MediaKind::Data {
            let mut b = amf0::encode_all(&[Value::from("@setDataFrame")]);
            b.extend_from_slice(payload);
            payload_owned = b;
            &payload_owned[..]
        } else {
            payload
        };
        let sid = self.stream_id;
        self.conn.send(kind.csid(), timestamp, kind.type_id(), sid, payload);
    }

    /// Sends `deleteStream` for our stream, which ends a publish (the server sees it as an
    /// unpublish; no `FCUnpublish` is needed).
    pub fn unpublish(&mut self) {
        let sid = self.stream_id;
        self.command(0, &[Value::from("deleteStream"), Value::Number(4.0), Value::Null, Value::Number(f64::from(sid))]);
    }

    /// Fires the response timer; an error if the server did not answer in time.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.step != Step::Active && now >= self.deadline {
            return Err(SessionError::IdleTimeout(self.config.response_timeout));
        }
        Ok(())
    }

    /// When [`ClientSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.step != Step::Active).then_some(self.deadline)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.conn.poll_transmit()
    }
}
