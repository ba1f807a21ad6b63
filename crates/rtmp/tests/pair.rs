//! The RTMP client session wired to the server session through an in-memory pipe with a
//! virtual clock: whole exchanges without sockets.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use ferrocast_rtmp::amf0::Amf0ErrorKind;
use ferrocast_rtmp::amf0::{self, Value};
use ferrocast_rtmp::chunk::{ChunkError, MAX_BUFFERED_BEFORE_PUBLISH, MAX_COMMAND_MESSAGE_LEN, encode_message};
use ferrocast_rtmp::client::{ClientConfig, ClientEvent, ClientMode, ClientSession};
use ferrocast_rtmp::message::encode_media;
use ferrocast_rtmp::server::{ServerConfig, ServerEvent, ServerSession, SessionError, Timer};
use ferrocast_rtmp::{MediaKind, MediaMessage};

struct Pair {
    now: Instant,
    client: ClientSession,
    server: ServerSession,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
    /// The error that ended the client, if one did.
    client_error: Option<SessionError>,
}

impl Pair {
    fn new(mode: ClientMode) -> Pair {
        let now = Instant::now();
        let config = ServerConfig { chunk_size: 100, ..ServerConfig::default() };
        Pair {
            now,
            client: ClientSession::new(ClientConfig::new("rtmp://h/live", "live", mode), now),
            server: ServerSession::new(config, now),
            client_events: vec![],
            server_events: vec![],
            client_error: None,
        }
    }

    /// Moves bytes both ways until quiet, answering server decisions with `decide`.
    fn run(&mut self, mut decide: impl FnMut(&mut ServerSession, &ServerEvent)) {
        for _ in 0..50 {
            let mut moved = false;
            while let Some(b) = self.client.poll_transmit() {
                moved = true;
                // Byte-at-a-time halves exercise partial input.
                let (a, c) = b.split_at(b.len() / 2);
                self.server.handle_input(self.now, a).unwrap();
                self.server.handle_input(self.now, c).unwrap();
            }
            while let Some(ev) = self.server.poll_event() {
                decide(&mut self.server, &ev);
                self.server_events.push(ev);
            }
            while let Some(b) = self.server.poll_transmit() {
                moved = true;
                if self.client_error.is_none()
                    && let Err(e) = self.client.handle_input(self.now, &b)
                {
                    self.client_error = Some(e);
                }
            }
            while let Some(ev) = self.client.poll_event() {
                self.client_events.push(ev);
            }
            if !moved {
                return;
            }
        }
        panic!("exchange did not settle");
    }
}

fn accept_all(s: &mut ServerSession, ev: &ServerEvent) {
    match ev {
        ServerEvent::Connect { .. } => s.accept_connect().unwrap(),
        ServerEvent::Publish { stream_id, .. } => s.accept_publish(*stream_id).unwrap(),
        ServerEvent::Play { stream_id, .. } => s.accept_play(*stream_id).unwrap(),
        _ => {}
    }
}

#[test]
fn connect_publish_and_media() {
    let mut p = Pair::new(ClientMode::Publish("cam1?key=s3cret".into()));
    p.run(accept_all);
    assert!(p.client_events.contains(&ClientEvent::Publishing), "{:?}", p.client_events);
    assert!(matches!(&p.server_events[0], ServerEvent::Connect { app, .. } if app == "live"));
    assert!(p.server_events.iter().any(|e| matches!(e,
        ServerEvent::Publish { name, query: Some(q), kind, .. } if name == "cam1" && q == "key=s3cret" && kind == "live")));

    let meta =
        amf0::encode_all(&[Value::from("onMetaData"), Value::EcmaArray(vec![("width".into(), Value::Number(640.0))])]);
    p.client.send_media(MediaKind::Data, 0, &meta);
    let big = vec![7u8; 5000];
    p.client.send_media(MediaKind::Video, 0x0100_0000, &big);
    p.client.send_media(MediaKind::Audio, 23, &[0xaf, 1, 2]);
    p.run(accept_all);
    let media: Vec<&MediaMessage> = p
        .server_events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Media(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(media.len(), 3);
    assert_eq!(media[0].kind, MediaKind::Data);
    assert_eq!(&media[0].payload[..], &meta[..], "@setDataFrame is unwrapped");
    assert_eq!((media[1].timestamp, media[1].payload.len()), (0x0100_0000, 5000));
    assert_eq!(media[2].timestamp, 23);

    p.client.unpublish();
    p.run(accept_all);
    assert!(matches!(p.server_events.last(), Some(ServerEvent::Unpublish { .. })));
}

#[test]
fn play_receives_shared_chunks() {
    let mut p = Pair::new(ClientMode::Play("cam1".into()));
    p.run(accept_all);
    assert!(p.client_events.contains(&ClientEvent::Playing));
    let sid = p.client.stream_id();
    let chunks = encode_media(MediaKind::Video, 40, sid, &[0x17, 1, 0, 0, 0, 1, 2, 3], p.server.chunk_size());
    p.server.send_media(chunks);
    p.run(accept_all);
    assert!(p.client_events.iter().any(|e| matches!(e,
        ClientEvent::Media(m) if m.kind == MediaKind::Video && m.timestamp == 40 && m.payload.len() == 8)));
}

#[test]
fn rejections_reach_the_client() {
    let mut p = Pair::new(ClientMode::Publish("busy".into()));
    p.run(|s, ev| match ev {
        ServerEvent::Connect { .. } => s.accept_connect().unwrap(),
        ServerEvent::Publish { stream_id, .. } => s.reject(*stream_id, "NetStream.Publish.BadName", "busy").unwrap(),
        _ => {}
    });
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Status { code, .. } if code == "NetStream.Publish.BadName"))
    );
    assert!(!p.client_events.contains(&ClientEvent::Publishing));

    let mut p = Pair::new(ClientMode::Play("nothing".into()));
    p.run(|s, ev| {
        if let ServerEvent::Connect { .. } = ev {
            s.reject_connect("no")
        }
    });
    assert!(p.server.is_closing());
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Status { code, .. } if code == "NetConnection.Connect.Rejected"))
    );
    // The client fails at once instead of waiting out its response timer.
    assert!(
        matches!(&p.client_error, Some(SessionError::Refused { command: "connect", code, description })
            if code == "NetConnection.Connect.Rejected" && description == "no"),
        "{:?}",
        p.client_error
    );
    assert!(!p.client_events.contains(&ClientEvent::Connected));
}

/// A client past the handshake with a server that answers from `answers`.
fn client_after_handshake(now: Instant) -> ClientSession {
    let mut c = ClientSession::new(ClientConfig::new("rtmp://h/live", "live", ClientMode::Play("x".into())), now);
    while c.poll_transmit().is_some() {}
    // S0, S1 and S2 of a simple handshake.
    let mut s = vec![3u8];
    s.resize(1 + 1536 * 2, 0);
    c.handle_input(now, &s).unwrap();
    while c.poll_transmit().is_some() {}
    c
}

#[test]
fn client_matches_results_to_transaction_ids() {
    let now = Instant::now();
    let answer = |name: &str, tid: f64, info: Value| {
        let body = amf0::encode_all(&[Value::from(name), Value::Number(tid), Value::Null, info]);
        let mut b = BytesMut::new();
        encode_message(&mut b, 3, 0, 20, 0, &body, 128);
        b
    };
    let mut c = client_after_handshake(now);
    // A `_result` of some other transaction (here 0, as servers send for calls of their
    // own): not the answer to connect.
    c.handle_input(now, &answer("_result", 0.0, Value::Null)).unwrap();
    assert_eq!(c.poll_event(), None, "a _result of transaction 0 taken for connect's");
    c.handle_input(now, &answer("_result", 1.0, Value::Null)).unwrap();
    assert_eq!(c.poll_event(), Some(ClientEvent::Connected));
    // createStream is transaction 2: a stray answer to 1 again does not give us a stream.
    c.handle_input(now, &answer("_result", 1.0, Value::Number(9.0))).unwrap();
    assert_eq!(c.stream_id(), 0);
    c.handle_input(now, &answer("_result", 2.0, Value::Number(5.0))).unwrap();
    assert_eq!(c.stream_id(), 5);

    // `_error` to connect fails the session; to createStream as well.
    let mut c = client_after_handshake(now);
    let err = c
        .handle_input(
            now,
            &answer("_error", 1.0, Value::object([("code", Value::from("NetConnection.Connect.Rejected"))])),
        )
        .unwrap_err();
    assert!(matches!(err, SessionError::Refused { command: "connect", .. }), "{err}");
    let mut c = client_after_handshake(now);
    c.handle_input(now, &answer("_result", 1.0, Value::Null)).unwrap();
    let err = c.handle_input(now, &answer("_error", 2.0, Value::Null)).unwrap_err();
    assert!(matches!(err, SessionError::Refused { command: "createStream", .. }), "{err}");
}

#[test]
fn timers_handshake_ping_idle() {
    let now = Instant::now();
    let config = ServerConfig::default();
    let mut s = ServerSession::new(config.clone(), now);
    assert_eq!(s.poll_timeout(), Some((Timer::Handshake, now + config.handshake_timeout)));
    assert!(matches!(s.handle_timeout(now + config.handshake_timeout), Err(SessionError::HandshakeTimeout(_))));

    let mut p = Pair::new(ClientMode::Play("x".into()));
    p.run(accept_all);
    let (timer, at) = p.server.poll_timeout().unwrap();
    assert_eq!(timer, Timer::KeepAlive);
    p.now = at;
    p.server.handle_timeout(p.now).unwrap();
    let ping = p.server.poll_transmit().expect("ping request");
    // The client answers the ping; the answer resets the idle timer.
    p.client.handle_input(p.now, &ping).unwrap();
    let pong = p.client.poll_transmit().expect("ping response");
    p.now += Duration::from_secs(5);
    p.server.handle_input(p.now, &pong).unwrap();
    assert!(p.server.handle_timeout(p.now + Duration::from_secs(29)).is_ok());
    assert!(matches!(p.server.handle_timeout(p.now + Duration::from_secs(30)), Err(SessionError::IdleTimeout(_))));
}

#[test]
fn connect_without_publish_or_play_times_out() {
    // The handshake deadline lasts until a publish or play: a client that connects and then
    // trickles bytes (each resetting the idle timer) is still cut off.
    let mut s = connected();
    let (timer, at) = s.poll_timeout().unwrap();
    assert_eq!(timer, Timer::Handshake);
    let ack = {
        let mut out = BytesMut::new();
        encode_message(&mut out, 2, 0, 3, 0, &1000u32.to_be_bytes(), 128);
        out
    };
    s.handle_input(at - Duration::from_millis(1), &ack).unwrap();
    assert_eq!(s.poll_timeout().map(|(t, _)| t), Some(Timer::Handshake));
    assert!(matches!(s.handle_timeout(at), Err(SessionError::HandshakeTimeout(_))));
}

/// A server session past the handshake, for feeding raw chunks.
fn handshaken() -> ServerSession {
    handshaken_with(ServerConfig::default())
}

/// With a 64 KiB message cap: the default 16 MiB cap is above what 24 bits can declare.
fn handshaken_small_cap() -> ServerSession {
    handshaken_with(ServerConfig { max_message_len: 65_536, ..ServerConfig::default() })
}

fn handshaken_with(config: ServerConfig) -> ServerSession {
    let now = Instant::now();
    let mut s = ServerSession::new(config, now);
    let mut hs = vec![3u8];
    hs.extend_from_slice(&[0u8; 1536 * 2]);
    s.handle_input(now, &hs).unwrap();
    while s.poll_transmit().is_some() {}
    s
}

fn command(values: &[Value]) -> BytesMut {
    let body = amf0::encode_all(values);
    let mut out = BytesMut::new();
    encode_message(&mut out, 3, 0, 20, 0, &body, 128);
    out
}

fn connected() -> ServerSession {
    let mut s = handshaken();
    let connect = command(&[Value::from("connect"), Value::Number(1.0), Value::object([("app", Value::from("live"))])]);
    s.handle_input(Instant::now(), &connect).unwrap();
    s.accept_connect().unwrap();
    s
}

/// What arrives, on which session, and the error it must give.
type Case = (&'static str, fn() -> ServerSession, BytesMut, fn(&SessionError) -> bool);

#[test]
fn bad_input_is_a_typed_error() {
    let now = Instant::now();
    // Each case: what arrives after the handshake, and the error it must give.
    let chunk_size = |v: u32| {
        let mut b = BytesMut::new();
        encode_message(&mut b, 2, 0, 1, 0, &v.to_be_bytes(), 128);
        b
    };
    let cases: Vec<Case> = vec![
        ("chunk size 0", handshaken, chunk_size(0), |e| matches!(e, SessionError::Chunk(_))),
        ("chunk size above 2^31-1", handshaken, chunk_size(0x8000_0000), |e| matches!(e, SessionError::Chunk(_))),
        (
            "message over the cap",
            handshaken_small_cap,
            {
                let mut b = BytesMut::from(&[0x04, 0, 0, 0, 0x01, 0x00, 0x01, 9, 1, 0, 0, 0][..]);
                b.put_u8(0);
                b
            },
            |e| e.to_string().contains("exceeds the cap"),
        ),
        (
            "command over 64 KiB, with a 16 MiB media cap",
            connected,
            {
                let mut b = BytesMut::new();
                encode_message(&mut b, 3, 0, 20, 0, &vec![5u8; MAX_COMMAND_MESSAGE_LEN as usize + 1], 128);
                b
            },
            |e| {
                matches!(e, SessionError::Chunk(ChunkError::MessageTooLarge { type_id: 20, max, .. })
                    if *max == MAX_COMMAND_MESSAGE_LEN)
            },
        ),
        (
            "AMF0 that would expand past the element budget",
            handshaken,
            {
                // A strict array of one-byte nulls: each would be a 56-byte value.
                let mut body = vec![0x0a];
                body.extend_from_slice(&60_000u32.to_be_bytes());
                body.resize(5 + 60_000, 0x05);
                let mut b = BytesMut::new();
                encode_message(&mut b, 3, 0, 20, 0, &body, 128);
                b
            },
            |e| matches!(e, SessionError::Amf0 { source, .. } if source.kind == Amf0ErrorKind::TooManyElements),
        ),
        (
            "unknown message type",
            connected,
            {
                let mut b = BytesMut::new();
                encode_message(&mut b, 3, 0, 42, 0, b"??", 128);
                b
            },
            |e| matches!(e, SessionError::UnknownMessageType(42)),
        ),
        (
            "malformed AMF",
            handshaken,
            {
                let mut b = BytesMut::new();
                encode_message(&mut b, 3, 0, 20, 0, &[0x02, 0x00, 0x07, b'c'], 128);
                b
            },
            |e| matches!(e, SessionError::Amf0 { .. }),
        ),
        (
            "command before connect",
            handshaken,
            command(&[Value::from("play"), Value::Number(2.0), Value::Null, Value::from("x")]),
            |e| matches!(e, SessionError::CommandBeforeConnect(c) if c == "play"),
        ),
        (
            "media before publish",
            connected,
            {
                let mut b = BytesMut::new();
                encode_message(&mut b, 6, 0, 9, 1, &[0x17, 1, 0, 0, 0], 128);
                b
            },
            |e| matches!(e, SessionError::MediaWithoutPublish { stream_id: 1 }),
        ),
        (
            "publish on a stream never created",
            connected,
            {
                let body =
                    amf0::encode_all(&[Value::from("publish"), Value::Number(3.0), Value::Null, Value::from("x")]);
                let mut b = BytesMut::new();
                encode_message(&mut b, 3, 0, 20, 7, &body, 128);
                b
            },
            |e| matches!(e, SessionError::MalformedCommand { .. }),
        ),
    ];
    for (what, make, bytes, check) in cases {
        let mut s = make();
        let err = s.handle_input(now, &bytes).expect_err(what);
        assert!(check(&err), "{what}: got {err}");
    }
}

#[test]
fn aggregate_messages_are_split_and_rebased() {
    let mut s = connected();
    let now = Instant::now();
    s.handle_input(now, &command(&[Value::from("createStream"), Value::Number(2.0), Value::Null])).unwrap();
    let body = amf0::encode_all(&[Value::from("publish"), Value::Number(3.0), Value::Null, Value::from("a")]);
    let mut b = BytesMut::new();
    encode_message(&mut b, 3, 0, 20, 1, &body, 128);
    s.handle_input(now, &b).unwrap();
    s.accept_publish(1).unwrap();
    let mut agg = BytesMut::new();
    for (t, ts, body) in [(9u8, 1000u32, &[0x17u8, 1, 0, 0, 0][..]), (8, 1020, &[0xaf, 1, 5][..])] {
        agg.put_u8(t);
        agg.put_slice(&(body.len() as u32).to_be_bytes()[1..]);
        agg.put_slice(&ts.to_be_bytes()[1..]);
        agg.put_u8((ts >> 24) as u8);
        agg.put_slice(&[0, 0, 0]);
        agg.put_slice(body);
        agg.put_u32(body.len() as u32 + 11);
    }
    let mut b = BytesMut::new();
    encode_message(&mut b, 6, 500, 22, 1, &agg, 4096);
    let mut chunked = BytesMut::new();
    // Our chunk size on input is still 128: the 40-byte aggregate fits one chunk.
    chunked.extend_from_slice(&b);
    s.handle_input(now, &chunked).unwrap();
    let ts: Vec<u32> = std::iter::from_fn(|| s.poll_event())
        .filter_map(|e| match e {
            ServerEvent::Media(m) => Some(m.timestamp),
            _ => None,
        })
        .collect();
    assert_eq!(ts, [500, 520]);
    let _ = Bytes::new();
}

#[test]
fn pipelined_commands_wait_for_each_decision() {
    let mut s = handshaken();
    let now = Instant::now();
    let mut all = command(&[Value::from("connect"), Value::Number(1.0), Value::object([("app", Value::from("live"))])]);
    all.extend_from_slice(&command(&[Value::from("createStream"), Value::Number(2.0), Value::Null]));
    let body = amf0::encode_all(&[Value::from("publish"), Value::Number(3.0), Value::Null, Value::from("cam")]);
    encode_message(&mut all, 3, 0, 20, 1, &body, 128);
    let meta = amf0::encode_all(&[Value::from("@setDataFrame"), Value::from("onMetaData"), Value::EcmaArray(vec![])]);
    encode_message(&mut all, 5, 0, 18, 1, &meta, 128);
    s.handle_input(now, &all).unwrap();
    assert!(matches!(s.poll_event(), Some(ServerEvent::Connect { .. })));
    assert_eq!(s.poll_event(), None, "nothing past connect before the decision");
    s.accept_connect().unwrap();
    assert!(matches!(s.poll_event(), Some(ServerEvent::Publish { stream_id: 1, .. })));
    assert_eq!(s.poll_event(), None, "metadata waits for the publish decision");
    s.accept_publish(1).unwrap();
    assert!(matches!(s.poll_event(), Some(ServerEvent::Media(m)) if m.kind == MediaKind::Data));
}

#[test]
fn input_buffered_while_a_decision_is_owed_too_large() {
    // connect, then a stream of small commands the session holds until the application
    // decides: a peer cannot make it hold more than the budget before a publish is accepted.
    let mut s = handshaken();
    let now = Instant::now();
    let connect = command(&[Value::from("connect"), Value::Number(1.0), Value::object([("app", Value::from("live"))])]);
    s.handle_input(now, &connect).unwrap();
    let more =
        command(&[Value::from("releaseStream"), Value::Number(2.0), Value::Null, Value::String("x".repeat(900))]);
    let mut sent = 0;
    let err = loop {
        match s.handle_input(now, &more) {
            Ok(()) => sent += more.len(),
            Err(e) => break e,
        }
        assert!(sent <= MAX_BUFFERED_BEFORE_PUBLISH, "{sent} bytes held");
    };
    assert!(matches!(err, SessionError::Chunk(ChunkError::BufferedTooLarge { .. })), "{err}");
}

#[test]
fn media_messages_up_to_the_media_cap_once_publishing() {
    let mut s = connected();
    let now = Instant::now();
    s.handle_input(now, &command(&[Value::from("createStream"), Value::Number(2.0), Value::Null])).unwrap();
    let body = amf0::encode_all(&[Value::from("publish"), Value::Number(3.0), Value::Null, Value::from("a")]);
    let mut b = BytesMut::new();
    encode_message(&mut b, 3, 0, 20, 1, &body, 128);
    s.handle_input(now, &b).unwrap();
    while s.poll_event().is_some() {}
    s.accept_publish(1).unwrap();
    // A 1 MiB keyframe on several chunk streams at once: fine for an accepted publisher.
    let frame = vec![0x17u8; 1 << 20];
    let mut b = BytesMut::new();
    for csid in [6, 7] {
        encode_message(&mut b, csid, 0, 9, 1, &frame, 128);
    }
    for piece in b.chunks(16 * 1024) {
        s.handle_input(now, piece).unwrap();
    }
    let sizes: Vec<usize> = std::iter::from_fn(|| s.poll_event())
        .filter_map(|e| match e {
            ServerEvent::Media(m) => Some(m.payload.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [1 << 20, 1 << 20]);
}
