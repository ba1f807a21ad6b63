//! RTSP 1.0 messages (RFC 2326 sections 6, 7 and 10.12): an incremental decoder for requests,
//! responses and interleaved binary data on one TCP stream, and their encoding.

use std::fmt::Write;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Longest request or status line we accept.
pub const MAX_LINE_LEN: usize = 8 * 1024;
/// Largest header block (request line and headers).
pub const MAX_HEADER_LEN: usize = 64 * 1024;
/// Most header fields in one message.
pub const MAX_HEADERS: usize = 128;
/// Largest body (an SDP, a GET_PARAMETER list). Real SDPs are a few hundred bytes.
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// RTSP methods (RFC 2326 section 10).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// OPTIONS.
    Options,
    /// DESCRIBE.
    Describe,
    /// ANNOUNCE.
    Announce,
    /// SETUP.
    Setup,
    /// PLAY.
    Play,
    /// PAUSE.
    Pause,
    /// RECORD.
    Record,
    /// TEARDOWN.
    Teardown,
    /// GET_PARAMETER.
    GetParameter,
    /// SET_PARAMETER.
    SetParameter,
    /// REDIRECT.
    Redirect,
    /// Anything else (answered 501).
    Other(String),
}

impl Method {
    /// Parses a method token.
    pub fn parse(s: &str) -> Method {
        match s {
            "OPTIONS" => Method::Options,
            "DESCRIBE" => Method::Describe,
            "ANNOUNCE" => Method::Announce,
            "SETUP" => Method::Setup,
            "PLAY" => Method::Play,
            "PAUSE" => Method::Pause,
            "RECORD" => Method::Record,
            "TEARDOWN" => Method::Teardown,
            "GET_PARAMETER" => Method::GetParameter,
            "SET_PARAMETER" => Method::SetParameter,
            "REDIRECT" => Method::Redirect,
            o => Method::Other(o.to_owned()),
        }
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Options => "OPTIONS",
            Method::Describe => "DESCRIBE",
            Method::Announce => "ANNOUNCE",
            Method::Setup => "SETUP",
            Method::Play => "PLAY",
            Method::Pause => "PAUSE",
            Method::Record => "RECORD",
            Method::Teardown => "TEARDOWN",
            Method::GetParameter => "GET_PARAMETER",
            Method::SetParameter => "SET_PARAMETER",
            Method::Redirect => "REDIRECT",
            Method::Other(o) => o,
        }
    }
}

/// Header fields in order; names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Appends a field. Values with CR or LF are refused (no header injection).
    pub fn add(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if !value.contains(['\r', '\n']) {
            self.0.push((name.to_owned(), value));
        }
    }

    /// All fields.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request URI as sent.
    pub uri: String,
    /// Header fields.
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
}

impl Request {
    /// CSeq, if present and numeric.
    pub fn cseq(&self) -> Option<u32> {
        self.headers.get("CSeq")?.trim().parse().ok()
    }

    /// The session id of the Session header (without `;timeout=`).
    pub fn session(&self) -> Option<&str> {
        self.headers.get("Session").map(|s| s.split(';').next().unwrap_or("").trim())
    }

    /// Encodes the request.
    pub fn encode(&self) -> Bytes {
        let mut s = format!("{} {} RTSP/1.0\r\n", self.method.as_str(), self.uri);
        encode_rest(&mut s, &self.headers, &self.body)
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header fields.
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
}

/// The reason phrase of a status code (RFC 2326 section 7.1.1).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        451 => "Parameter Not Understood",
        453 => "Not Enough Bandwidth",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        456 => "Header Field Not Valid for Resource",
        457 => "Invalid Range",
        459 => "Aggregate operation not allowed",
        460 => "Only aggregate operation allowed",
        461 => "Unsupported transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version not supported",
        // HTTP's (RFC 5842 section 7.2), for a pull between edges that would loop.
        508 => "Loop Detected",
        551 => "Option not supported",
        _ => "Unknown",
    }
}

impl Response {
    /// A response with `status` echoing the request's CSeq.
    pub fn new(status: u16, cseq: Option<u32>) -> Response {
        let mut headers = Headers::default();
        if let Some(c) = cseq {
            headers.add("CSeq", c.to_string());
        }
        Response { status, reason: reason(status).to_owned(), headers, body: Bytes::new() }
    }

    /// Adds a header (builder style).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.add(name, value);
        self
    }

    /// Sets a body and its Content-Type.
    pub fn with_body(mut self, content_type: &str, body: impl Into<Bytes>) -> Response {
        self.headers.add("Content-Type", content_type);
        self.body = body.into();
        self
    }

    /// Encodes the response.
    pub fn encode(&self) -> Bytes {
        let mut s = format!("RTSP/1.0 {} {}\r\n", self.status, self.reason);
        encode_rest(&mut s, &self.headers, &self.body)
    }
}

fn encode_rest(s: &mut String, headers: &Headers, body: &Bytes) -> Bytes {
    for (k, v) in headers.iter() {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    if !body.is_empty() {
        let _ = write!(s, "Content-Length: {}\r\n", body.len());
    }
    s.push_str("\r\n");
    let mut out = BytesMut::with_capacity(s.len() + body.len());
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(body);
    out.freeze()
}

/// One thing read from an RTSP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
    /// Interleaved binary data (RFC 2326 10.12): `$`, channel, 16-bit length, data.
    Interleaved {
        /// The channel.
        channel: u8,
        /// The RTP or RTCP packet.
        data: Bytes,
    },
}

/// Why input could not be decoded; the status code the server answers with.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MessageError {
    /// A request or status line longer than [`MAX_LINE_LEN`].
    #[error("first line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    /// A header block larger than [`MAX_HEADER_LEN`] or with more than [`MAX_HEADERS`]
    /// fields.
    #[error("header block over {MAX_HEADER_LEN} bytes or {MAX_HEADERS} fields")]
    HeadersTooLarge,
    /// A Content-Length over [`MAX_BODY_LEN`].
    #[error("body of {0} bytes over the {MAX_BODY_LEN}-byte cap")]
    BodyTooLarge(usize),
    /// Not an RTSP message.
    #[error("malformed message at byte {offset}: {why}")]
    Malformed {
        /// Offset in the message.
        offset: usize,
        /// The rule broken.
        why: &'static str,
    },
    /// An RTSP version other than 1.0.
    #[error("RTSP version {0:?} not supported")]
    Version(String),
}

impl MessageError {
    /// The status a server answers this with.
    pub fn status(&self) -> u16 {
        match self {
            MessageError::LineTooLong => 414,
            MessageError::HeadersTooLarge | MessageError::BodyTooLarge(_) => 413,
            MessageError::Malformed { .. } => 400,
            MessageError::Version(_) => 505,
        }
    }
}

/// Decodes the next message from the front of `buf`; `Ok(None)` until one is complete.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, MessageError> {
    // Tolerate blank lines between messages (RFC 2326 allows CRLF keep-alives).
    while buf.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        buf.advance(1);
    }
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == b'$' {
        if buf.len() < 4 {
            return Ok(None);
        }
        let channel = buf[1];
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(4);
        let data = buf.split_to(len).freeze();
        return Ok(Some(Message::Interleaved { channel, data }));
    }
    let line_end = buf.iter().position(|b| *b == b'\n');
    match line_end {
        None if buf.len() > MAX_LINE_LEN => return Err(MessageError::LineTooLong),
        None => return Ok(None),
        Some(n) if n > MAX_LINE_LEN => return Err(MessageError::LineTooLong),
        Some(_) => {}
    }
    let Some(head_end) = find_head_end(buf) else {
        if buf.len() > MAX_HEADER_LEN {
            return Err(MessageError::HeadersTooLarge);
        }
        return Ok(None);
    };
    if head_end.0 > MAX_HEADER_LEN {
        return Err(MessageError::HeadersTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_end.0])
        .map_err(|e| MessageError::Malformed { offset: e.valid_up_to(), why: "not UTF-8" })?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().unwrap_or_default();
    let mut headers = Headers::default();
    let mut count = 0;
    let mut offset = start.len() + 1;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(MessageError::HeadersTooLarge);
        }
        let (k, v) = line.split_once(':').ok_or(MessageError::Malformed { offset, why: "header field without ':'" })?;
        if k.is_empty() || k.contains(' ') {
            return Err(MessageError::Malformed { offset, why: "bad header field name" });
        }
        headers.0.push((k.trim().to_owned(), v.trim().to_owned()));
        offset += line.len() + 1;
    }
    let body_len = match headers.get("Content-Length") {
        Some(v) => {
            v.trim().parse::<usize>().map_err(|_| MessageError::Malformed { offset: 0, why: "bad Content-Length" })?
        }
        None => 0,
    };
    if body_len > MAX_BODY_LEN {
        return Err(MessageError::BodyTooLarge(body_len));
    }
    if buf.len() < head_end.1 + body_len {
        return Ok(None);
    }
    let mut parts = start.splitn(3, ' ');
    let (a, b, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let msg = if let Some(version) = a.strip_prefix("RTSP/") {
        if version != "1.0" {
            return Err(MessageError::Version(a.to_owned()));
        }
        let status =
            b.parse::<u16>().map_err(|_| MessageError::Malformed { offset: a.len() + 1, why: "bad status code" })?;
        Message::Response(Response { status, reason: c.to_owned(), headers, body: Bytes::new() })
    } else {
        if a.is_empty() || !a.bytes().all(|ch| ch.is_ascii_uppercase() || ch == b'_') || b.is_empty() {
            return Err(MessageError::Malformed { offset: 0, why: "not an RTSP request line" });
        }
        match c.strip_prefix("RTSP/") {
            Some("1.0") => {}
            Some(_) => return Err(MessageError::Version(c.to_owned())),
            None => {
                return Err(MessageError::Malformed { offset: a.len() + b.len() + 2, why: "no RTSP version" });
            }
        }
        Message::Request(Request { method: Method::parse(a), uri: b.to_owned(), headers, body: Bytes::new() })
    };
    buf.advance(head_end.1);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(match msg {
        Message::Request(mut r) => {
            r.body = body;
            Message::Request(r)
        }
        Message::Response(mut r) => {
            r.body = body;
            Message::Response(r)
        }
        m => m,
    }))
}

/// End of the header block: (length of the head, offset of the body). A blank line ends it,
/// whether lines end in CRLF or a bare LF. Looks at most [`MAX_HEADER_LEN`] + 4 bytes.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let limit = buf.len().min(MAX_HEADER_LEN + 4);
    let b = &buf[..limit];
    for i in 0..b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &[u8]) -> Result<Option<Message>, MessageError> {
        decode(&mut BytesMut::from(text))
    }

    #[test]
    fn request_with_body_and_interleaved_data() {
        let mut buf = BytesMut::from(
            &b"ANNOUNCE rtsp://h/live/a RTSP/1.0\r\nCSeq: 3\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n$\x01\x00\x02ab"[..],
        );
        let Some(Message::Request(r)) = decode(&mut buf).unwrap() else { panic!() };
        assert_eq!((&r.method, r.cseq(), &r.body[..]), (&Method::Announce, Some(3), &b"v=0\n"[..]));
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(Message::Interleaved { channel: 1, data: Bytes::from_static(b"ab") })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_input_waits() {
        assert_eq!(one(b"OPTIONS rtsp://h RTSP/1.0\r\nCSeq: 1\r\n"), Ok(None));
        assert_eq!(one(b"$\x00\x00\x05ab"), Ok(None));
        assert_eq!(one(b"DESCRIBE rtsp://h RTSP/1.0\r\nContent-Length: 10\r\n\r\nabc"), Ok(None));
    }

    #[test]
    fn limits_and_garbage() {
        let long = vec![b'A'; MAX_LINE_LEN + 1];
        assert_eq!(one(&long), Err(MessageError::LineTooLong));
        let mut big = b"OPTIONS rtsp://h RTSP/1.0\r\n".to_vec();
        while big.len() <= MAX_HEADER_LEN {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(one(&big), Err(MessageError::HeadersTooLarge));
        assert_eq!(
            one(b"DESCRIBE rtsp://h RTSP/1.0\r\nContent-Length: 99999999\r\n\r\n"),
            Err(MessageError::BodyTooLarge(99_999_999))
        );
        assert_eq!(one(b"\x16\x03\x01garbage\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(one(b"GET / HTTP/1.1\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(one(b"OPTIONS * RTSP/2.0\r\n\r\n").unwrap_err().status(), 505);
    }

    #[test]
    fn response_round_trip_and_no_header_injection() {
        let r = Response::new(200, Some(7))
            .with("Session", "abc;timeout=60")
            .with("X-Evil", "a\r\nInjected: 1")
            .with_body("application/sdp", "v=0\r\n");
        let mut buf = BytesMut::from(&r.encode()[..]);
        let Some(Message::Response(back)) = decode(&mut buf).unwrap() else { panic!() };
        assert_eq!(back.status, 200);
        assert_eq!(back.headers.get("cseq"), Some("7"));
        assert_eq!(back.headers.get("Injected"), None);
        assert_eq!(&back.body[..], b"v=0\r\n");
    }
}
