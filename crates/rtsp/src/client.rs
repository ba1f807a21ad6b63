//! The client side of RTSP: plays a stream (DESCRIBE, SETUP per track, PLAY) over TCP
//! interleaved or UDP, or publishes one (ANNOUNCE, SETUP with `mode=record`, RECORD). Sans
//! I/O like the rest of the crate: the application owns the sockets. ferrocast's tests use it
//! now; pulling from cameras will later.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{self, Headers, Message, MessageError, Method, Request, Response};
use crate::sdp::{self, Sdp};
use crate::transport::{Lower, Transport};

/// How RTP travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    /// Interleaved in the RTSP connection; track `i` uses channels `2i`, `2i+1`.
    Tcp,
    /// UDP; track `i` receives on the `i`-th client port pair the application opened.
    Udp,
}

/// Play or publish.
#[derive(Debug, Clone)]
pub enum ClientMode {
    /// DESCRIBE, SETUP each supported track, PLAY.
    Play,
    /// ANNOUNCE this SDP (whose media have `a=control:trackID=N`), SETUP each, RECORD.
    Record(String),
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The session description (DESCRIBE answer, or what we announced).
    Described(Sdp),
    /// A track is set up; for UDP, with the server's RTP/RTCP ports.
    SetUp {
        /// Track index (media order in the SDP).
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
    /// A request failed.
    Failed {
        /// The request's method.
        method: Method,
        /// The status.
        status: u16,
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
}

/// The client side of one RTSP session, sans I/O.
#[derive(Debug)]
pub struct ClientSession {
    url: String,
    mode: ClientMode,
    transport: ClientTransport,
    client_ports: Vec<(u16, u16)>,
    cseq: u32,
    session: Option<String>,
    controls: Vec<String>,
    next_setup: usize,
    pending: Option<(Method, Instant)>,
    input: BytesMut,
    out: BytesMut,
    events: VecDeque<ClientEvent>,
    response_timeout: Duration,
    started: bool,
    /// The Range of the first PLAY.
    play_range: String,
}

impl ClientSession {
    /// A session for `url`. For UDP, `client_ports` holds one RTP/RTCP port pair per track.
    pub fn new(
        url: &str,
        mode: ClientMode,
        transport: ClientTransport,
        client_ports: Vec<(u16, u16)>,
        now: Instant,
    ) -> ClientSession {
        let mut c = ClientSession {
            url: url.trim_end_matches('/').to_owned(),
            mode,
            transport,
            client_ports,
            cseq: 0,
            session: None,
            controls: Vec::new(),
            next_setup: 0,
            pending: None,
            input: BytesMut::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            response_timeout: Duration::from_secs(10),
            started: false,
            play_range: "npt=0.000-".to_owned(),
        };
        match c.mode.clone() {
            ClientMode::Play => c.request(now, Method::Describe, &c.url.clone(), Headers::default(), Bytes::new()),
            ClientMode::Record(text) => {
                let mut h = Headers::default();
                h.add("Content-Type", "application/sdp");
                c.request(now, Method::Announce, &c.url.clone(), h, Bytes::from(text));
            }
        }
        c
    }

    fn request(&mut self, now: Instant, method: Method, uri: &str, mut headers: Headers, body: Bytes) {
        self.cseq += 1;
        let mut h = Headers::default();
        h.add("CSeq", self.cseq.to_string());
        h.add("User-Agent", "ferrocast");
        if let Some(s) = &self.session {
            h.add("Session", s.clone());
        }
        for (k, v) in headers.iter() {
            h.add(k, v);
        }
        headers = h;
        let req = Request { method: method.clone(), uri: uri.to_owned(), headers, body };
        self.out.put_slice(&req.encode());
        self.pending = Some((method, now));
    }

    fn control_url(&self, control: &str) -> String {
        if control.contains("://") { control.to_owned() } else { format!("{}/{}", self.url, control) }
    }

    fn setup_next(&mut self, now: Instant) {
        let i = self.next_setup;
        let Some(control) = self.controls.get(i).cloned() else {
            let method = if matches!(self.mode, ClientMode::Play) { Method::Play } else { Method::Record };
            let url = self.url.clone();
            let mut h = Headers::default();
            if method == Method::Play {
                h.add("Range", self.play_range.clone());
            }
            self.request(now, method, &url, h, Bytes::new());
            return;
        };
        let mut t = Transport::new(if self.transport == ClientTransport::Tcp { Lower::Tcp } else { Lower::Udp });
        t.record = matches!(self.mode, ClientMode::Record(_));
        match self.transport {
            ClientTransport::Tcp => t.interleaved = Some((2 * i as u8, 2 * i as u8 + 1)),
            ClientTransport::Udp => t.client_port = self.client_ports.get(i).copied(),
        }
        let mut h = Headers::default();
        h.add("Transport", t.encode());
        let url = self.control_url(&control);
        self.request(now, Method::Setup, &url, h, Bytes::new());
    }

    /// Feeds bytes read from the RTSP connection.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), ClientError> {
        self.input.extend_from_slice(data);
        while let Some(m) = message::decode(&mut self.input)? {
            match m {
                Message::Response(r) => self.on_response(now, r)?,
                Message::Interleaved { channel, data } => {
                    let track = usize::from(channel / 2);
                    self.events.push_back(if channel % 2 == 0 {
                        ClientEvent::Rtp { track, packet: data }
                    } else {
                        ClientEvent::Rtcp { track, packet: data }
                    });
                }
                Message::Request(_) => {}
            }
        }
        Ok(())
    }

    fn on_response(&mut self, now: Instant, r: Response) -> Result<(), ClientError> {
        let Some((method, _)) = self.pending.take() else {
            return Ok(());
        };
        if r.status != 200 {
            self.events.push_back(ClientEvent::Failed { method, status: r.status });
            return Ok(());
        }
        if let Some(s) = r.headers.get("Session") {
            self.session = Some(s.split(';').next().unwrap_or("").trim().to_owned());
        }
        match method {
            Method::Describe | Method::Announce => {
                let description = match &self.mode {
                    ClientMode::Play => sdp::parse(&r.body)?,
                    ClientMode::Record(text) => sdp::parse(text.as_bytes())?,
                };
                self.controls = description
                    .media
                    .iter()
                    .filter(|m| sdp::track_info(m).is_some())
                    .map(|m| m.control.clone().unwrap_or_default())
                    .collect();
                self.events.push_back(ClientEvent::Described(description));
                self.setup_next(now);
            }
            Method::Setup => {
                let server_port =
                    r.headers.get("Transport").and_then(|t| Transport::parse(t).ok()).and_then(|t| t.server_port);
                self.events.push_back(ClientEvent::SetUp { track: self.next_setup, server_port });
                self.next_setup += 1;
                self.setup_next(now);
            }
            Method::Play | Method::Record => {
                if !self.started {
                    self.started = true;
                    self.events.push_back(ClientEvent::Started);
                }
                if method == Method::Play {
                    self.events.push_back(ClientEvent::Played(r.headers.clone()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends an RTP packet of `track` interleaved (TCP record).
    pub fn send_rtp(&mut self, track: usize, packet: &[u8]) {
        self.out.put_u8(b'$');
        self.out.put_u8(2 * track as u8);
        self.out.put_u16(packet.len() as u16);
        self.out.put_slice(packet);
    }

    /// Sends an RTCP packet of `track` interleaved (TCP record: sender reports).
    pub fn send_rtcp(&mut self, track: usize, packet: &[u8]) {
        self.out.put_u8(b'$');
        self.out.put_u8(2 * track as u8 + 1);
        self.out.put_u16(packet.len() as u16);
        self.out.put_slice(packet);
    }

    /// A PLAY of the aggregate URL with these headers (`Range`, `Scale`, `Speed`, ...): a
    /// seek, a resume after [`ClientSession::pause`], or a new rate.
    pub fn play(&mut self, now: Instant, headers: &[(&str, &str)]) {
        let url = self.url.clone();
        let mut h = Headers::default();
        for (k, v) in headers {
            h.add(k, *v);
        }
        self.request(now, Method::Play, &url, h, Bytes::new());
    }

    /// PAUSE.
    pub fn pause(&mut self, now: Instant) {
        let url = self.url.clone();
        self.request(now, Method::Pause, &url, Headers::default(), Bytes::new());
    }

    /// The Range the first PLAY asks for (`npt=0.000-` unless set before it is sent).
    pub fn set_play_range(&mut self, range: &str) {
        self.play_range = range.to_owned();
    }

    /// A keep-alive (GET_PARAMETER).
    pub fn keep_alive(&mut self, now: Instant) {
        let url = self.url.clone();
        self.request(now, Method::GetParameter, &url, Headers::default(), Bytes::new());
    }

    /// Ends the session (TEARDOWN).
    pub fn teardown(&mut self, now: Instant) {
        let url = self.url.clone();
        self.request(now, Method::Teardown, &url, Headers::default(), Bytes::new());
    }

    /// Fails when the server has not answered a request in time.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        match &self.pending {
            Some((m, at)) if now >= *at + self.response_timeout => Err(ClientError::Timeout(m.as_str().to_owned())),
            _ => Ok(()),
        }
    }

    /// When [`ClientSession::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.as_ref().map(|(_, at)| *at + self.response_timeout)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(c: &mut ClientSession, now: Instant, text: &str) {
        c.handle_input(now, text.as_bytes()).unwrap();
    }

    #[test]
    fn play_sequence_over_tcp() {
        let now = Instant::now();
        let mut c = ClientSession::new("rtsp://h/live/a", ClientMode::Play, ClientTransport::Tcp, vec![], now);
        let req = String::from_utf8(c.poll_transmit().unwrap().to_vec()).unwrap();
        assert!(req.starts_with("DESCRIBE rtsp://h/live/a RTSP/1.0\r\nCSeq: 1\r\n"), "{req}");
        let sdp = "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\na=fmtp:97 config=1210\r\na=control:trackID=1\r\n";
        respond(&mut c, now, &format!("RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()));
        assert!(matches!(c.poll_event(), Some(ClientEvent::Described(s)) if s.media.len() == 2));
        let req = String::from_utf8(c.poll_transmit().unwrap().to_vec()).unwrap();
        assert!(req.starts_with("SETUP rtsp://h/live/a/trackID=0 ") && req.contains("interleaved=0-1"), "{req}");
        respond(
            &mut c,
            now,
            "RTSP/1.0 200 OK\r\nCSeq: 2\r\nSession: abc;timeout=60\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n\r\n",
        );
        let req = String::from_utf8(c.poll_transmit().unwrap().to_vec()).unwrap();
        assert!(req.contains("trackID=1") && req.contains("Session: abc\r\n"), "{req}");
        respond(&mut c, now, "RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: abc\r\n\r\n");
        let req = String::from_utf8(c.poll_transmit().unwrap().to_vec()).unwrap();
        assert!(req.starts_with("PLAY rtsp://h/live/a RTSP/1.0"), "{req}");
        respond(&mut c, now, "RTSP/1.0 200 OK\r\nCSeq: 4\r\nSession: abc\r\n\r\n$\x02\x00\x01x");
        let evs: Vec<ClientEvent> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(evs.contains(&ClientEvent::Started));
        assert!(evs.contains(&ClientEvent::Rtp { track: 1, packet: Bytes::from_static(b"x") }));
    }

    #[test]
    fn failure_and_timeout() {
        let now = Instant::now();
        let mut c =
            ClientSession::new("rtsp://h/none", ClientMode::Play, ClientTransport::Udp, vec![(5000, 5001)], now);
        c.poll_transmit();
        assert!(c.handle_timeout(now + Duration::from_secs(11)).is_err());
        respond(&mut c, now, "RTSP/1.0 404 Not Found\r\nCSeq: 1\r\n\r\n");
        assert_eq!(c.poll_event(), Some(ClientEvent::Failed { method: Method::Describe, status: 404 }));
    }
}
