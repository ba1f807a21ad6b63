//! The server session alone and paired with [`crate::client::ClientSession`], in memory, on a
//! virtual clock.

use super::*;
use crate::auth::Credentials;
use crate::client::{ClientEvent, ClientMode, ClientSession, ClientTransport};

const URL: &str = "rtsp://h/live/a";
const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:trackID=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\na=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1210\r\na=control:trackID=1\r\n";
const SECRETS: Secrets = Secrets { session_id: 0x1234, nonce: 0x5678 };

fn config() -> ServerConfig {
    ServerConfig { server_ports: (8000, 8001), ..ServerConfig::default() }
}

/// A server session with an application that accepts everything, on a virtual clock.
struct Harness {
    s: ServerSession,
    now: Instant,
    events: Vec<ServerEvent>,
    cseq: u32,
    /// Who may do what, for [`ServerEvent::Authorize`] (the application's user table).
    users: Vec<(AuthAction, Credentials)>,
    /// Answer every authorization with 403 (an address that failed too often).
    blocked: bool,
}

/// The verdict of an application with `users` for `offered`.
fn verdict(
    users: &[(AuthAction, Credentials)],
    action: AuthAction,
    uri: &str,
    offered: &Option<Offered>,
) -> AuthVerdict {
    let ok = users.iter().any(|(a, c)| {
        *a == action
            && match offered {
                Some(Offered::Basic(b)) => b == c,
                Some(Offered::Digest(d)) => d.username == c.user && d.verify(&c.password, uri),
                None => false,
            }
    });
    if ok { AuthVerdict::Allow } else { AuthVerdict::Challenge }
}

impl Harness {
    fn new(config: ServerConfig) -> Harness {
        let now = Instant::now();
        Harness {
            s: ServerSession::new(config, SECRETS, now),
            now,
            events: Vec::new(),
            cseq: 0,
            users: Vec::new(),
            blocked: false,
        }
    }

    /// Answers what the session asks, as a permissive application would.
    fn app(&mut self) {
        while let Some(ev) = self.s.poll_event() {
            match &ev {
                ServerEvent::Authorize { action, uri, offered, .. } => {
                    let v =
                        if self.blocked { AuthVerdict::Forbidden } else { verdict(&self.users, *action, uri, offered) };
                    self.s.authorize(v).unwrap();
                }
                ServerEvent::Describe { .. } => self.s.accept_describe(SDP).unwrap(),
                ServerEvent::Announce { .. } => self.s.accept_announce(self.now).unwrap(),
                ServerEvent::Setup { track, transport, .. } => {
                    let m = transport.multicast.then(|| MulticastReply {
                        destination: "239.255.0.1".into(),
                        ports: (8002, 8003),
                        ttl: 1,
                    });
                    self.s.accept_setup(track.unwrap_or(0), m).unwrap();
                }
                ServerEvent::Play { .. } => {
                    let starts: Vec<RtpStart> = self
                        .s
                        .setups()
                        .iter()
                        .map(|x| RtpStart { track: x.track, seq: 100 + x.track as u16, rtptime: 9000 })
                        .collect();
                    self.s.accept_play("npt=0.000-", &starts).unwrap();
                }
                _ => {}
            }
            self.events.push(ev);
        }
    }

    /// Sends raw bytes; the responses that came back.
    fn send(&mut self, bytes: &[u8]) -> Vec<Response> {
        let r = self.s.handle_input(self.now, bytes);
        self.app();
        assert_eq!(r, Ok(()));
        self.responses()
    }

    fn responses(&mut self) -> Vec<Response> {
        let mut buf = BytesMut::new();
        while let Some(b) = self.s.poll_transmit() {
            buf.extend_from_slice(&b);
        }
        let mut out = Vec::new();
        while let Some(m) = message::decode(&mut buf).unwrap() {
            if let Message::Response(r) = m {
                out.push(r);
            }
        }
        out
    }

    /// One request; its response.
    fn request(&mut self, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Response {
        self.cseq += 1;
        let mut text = format!("{method} {uri} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        if let Some(id) = self.s.session_id() {
            text.push_str(&format!("Session: {id}\r\n"));
        }
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            text.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        text.push_str("\r\n");
        text.push_str(body);
        let mut r = self.send(text.as_bytes());
        assert_eq!(r.len(), 1, "{method}: {r:?}");
        let r = r.remove(0);
        assert_eq!(r.headers.get("CSeq"), Some(self.cseq.to_string().as_str()));
        r
    }

    fn status(&mut self, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> u16 {
        self.request(method, uri, headers, body).status
    }
}

const TCP0: (&str, &str) = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1");
const TCP1: (&str, &str) = ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3");
const REC0: (&str, &str) = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record");
const SDP_TYPE: (&str, &str) = ("Content-Type", "application/sdp");

/// The states a client can bring a session to, and how.
#[derive(Debug, Clone, Copy)]
enum Reached {
    Init,
    Announced,
    ReadyToPlay,
    ReadyToRecord,
    Playing,
    Paused,
    Recording,
}

fn reach(state: Reached) -> Harness {
    let mut h = Harness::new(config());
    let ok = |h: &mut Harness, m: &str, u: &str, hd: &[(&str, &str)], b: &str| {
        assert_eq!(h.status(m, u, hd, b), 200, "{state:?}: {m}");
    };
    match state {
        Reached::Init => {}
        Reached::Announced => ok(&mut h, "ANNOUNCE", URL, &[SDP_TYPE], SDP),
        Reached::ReadyToPlay | Reached::Playing | Reached::Paused => {
            ok(&mut h, "SETUP", &format!("{URL}/trackID=0"), &[TCP0], "");
            if !matches!(state, Reached::ReadyToPlay) {
                ok(&mut h, "PLAY", URL, &[], "");
            }
            if matches!(state, Reached::Paused) {
                ok(&mut h, "PAUSE", URL, &[], "");
            }
        }
        Reached::ReadyToRecord | Reached::Recording => {
            ok(&mut h, "ANNOUNCE", URL, &[SDP_TYPE], SDP);
            ok(&mut h, "SETUP", &format!("{URL}/trackID=0"), &[REC0], "");
            if matches!(state, Reached::Recording) {
                ok(&mut h, "RECORD", URL, &[], "");
            }
        }
    }
    h.events.clear();
    h
}

/// Every (state, method) pair, with the status a client gets (RFC 2326 A.2 and 7.1.1).
#[test]
fn every_state_and_method() {
    use Reached as R;
    let methods = [
        "OPTIONS",
        "DESCRIBE",
        "ANNOUNCE",
        "SETUP",
        "PLAY",
        "PAUSE",
        "RECORD",
        "TEARDOWN",
        "GET_PARAMETER",
        "SET_PARAMETER",
        "REDIRECT",
        "FLY",
    ];
    #[rustfmt::skip]
    let table: [(Reached, [u16; 12]); 7] = [
        //                OPT  DESC ANN  SETUP PLAY PAUSE REC TEAR GET  SET  REDIR FLY
        (R::Init,          [200, 200, 200, 200, 455, 455, 455, 454, 200, 200, 405, 501]),
        (R::Announced,     [200, 200, 455, 200, 455, 455, 455, 200, 200, 200, 405, 501]),
        (R::ReadyToPlay,   [200, 200, 455, 200, 200, 200, 455, 200, 200, 200, 405, 501]),
        (R::ReadyToRecord, [200, 200, 455, 200, 455, 455, 200, 200, 200, 200, 405, 501]),
        (R::Playing,       [200, 200, 455, 455, 200, 200, 455, 200, 200, 200, 405, 501]),
        (R::Paused,        [200, 200, 455, 200, 200, 200, 455, 200, 200, 200, 405, 501]),
        (R::Recording,     [200, 200, 455, 455, 455, 455, 200, 200, 200, 200, 405, 501]),
    ];
    for (state, row) in table {
        for (method, want) in methods.iter().zip(row) {
            let mut h = reach(state);
            let recording = matches!(state, R::Announced | R::ReadyToRecord | R::Recording);
            let setup = if recording { REC0 } else { TCP0 };
            let (uri, headers, body) = match *method {
                "ANNOUNCE" => (URL.to_owned(), vec![SDP_TYPE], SDP),
                // A track not set up yet in every state that has one.
                "SETUP" if matches!(state, R::Init | R::Announced) => (format!("{URL}/trackID=0"), vec![setup], ""),
                "SETUP" => (format!("{URL}/trackID=1"), vec![if recording { REC0 } else { TCP1 }], ""),
                _ => (URL.to_owned(), vec![], ""),
            };
            let got = h.status(method, &uri, &headers, body);
            assert_eq!(got, want, "{state:?} {method}");
            let allow = h.s.poll_transmit();
            assert!(allow.is_none());
        }
    }
}

/// A publisher's SETUP names its own SDP's controls, whatever they look like: relative names
/// that are no `trackID=N` (`audio`, `media1`) and absolute URLs under the stream's own.
#[test]
fn record_setup_by_any_control_the_publisher_wrote() {
    for (video, audio) in [("video".to_owned(), "audio".to_owned()), (format!("{URL}/media0"), format!("{URL}/media1"))]
    {
        let sdp = SDP
            .replace("a=control:trackID=0", &format!("a=control:{video}"))
            .replace("a=control:trackID=1", &format!("a=control:{audio}"));
        let mut h = Harness::new(config());
        assert_eq!(h.status("ANNOUNCE", URL, &[SDP_TYPE], &sdp), 200);
        for (i, control) in [&video, &audio].into_iter().enumerate() {
            let uri = if control.contains("://") { control.clone() } else { format!("{URL}/{control}") };
            let transport =
                if i == 0 { REC0 } else { ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record") };
            assert_eq!(h.status("SETUP", &uri, &[transport], ""), 200, "SETUP {uri}");
        }
        assert_eq!(h.status("RECORD", URL, &[], ""), 200);
        let tracks: Vec<usize> = h.s.setups().iter().map(|s| s.track).collect();
        assert_eq!(tracks, [0, 1], "each SETUP names its m= section");
    }
}

/// The statuses of requests that are wrong for a reason other than the state.
#[test]
fn exact_status_for_each_refusal() {
    // 454: a session id that is not ours, or a PLAY without one.
    let mut h = reach(Reached::ReadyToPlay);
    assert_eq!(h.send(b"PLAY rtsp://h/live/a RTSP/1.0\r\nCSeq: 9\r\nSession: nope\r\n\r\n")[0].status, 454);
    assert_eq!(h.send(b"PLAY rtsp://h/live/a RTSP/1.0\r\nCSeq: 9\r\n\r\n")[0].status, 454);
    // 459: one session, one stream.
    assert_eq!(h.status("SETUP", "rtsp://h/live/other/trackID=1", &[TCP1], ""), 459);
    // 455: a track set up twice.
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=0"), &[TCP0], ""), 455);
    // 461: no Transport, or none we speak.
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=1"), &[], ""), 461);
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=1"), &[("Transport", "RAW/RAW/UDP;unicast")], ""), 461);
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=1"), &[("Transport", "RTP/AVP;unicast")], ""), 461);
    // 460: with two tracks, PLAY names the aggregate.
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=1"), &[TCP1], ""), 200);
    assert_eq!(h.status("PLAY", &format!("{URL}/trackID=0"), &[], ""), 460);
    // 451: parameters we do not have.
    assert_eq!(h.status("SET_PARAMETER", URL, &[("Content-Type", "text/parameters")], "volume: 1\r\n"), 451);

    // A recording: a multicast transport is 461, an unknown control 404.
    let mut h = reach(Reached::Announced);
    let mc = ("Transport", "RTP/AVP;multicast;mode=record");
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=0"), &[mc], ""), 461);
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=7"), &[REC0], ""), 404);
    // 400: an ANNOUNCE without an SDP.
    let mut h = reach(Reached::Init);
    assert_eq!(h.status("ANNOUNCE", URL, &[("Content-Type", "text/plain")], "v=0\r\n"), 400);
    assert_eq!(h.status("ANNOUNCE", URL, &[SDP_TYPE], "not an sdp"), 400);
}

#[test]
fn transports_answered() {
    let mut h = reach(Reached::Init);
    let r =
        h.request("SETUP", &format!("{URL}/trackID=1"), &[("Transport", "RTP/AVP;unicast;client_port=5000-5001")], "");
    let t = Transport::parse(r.headers.get("Transport").unwrap()).unwrap();
    assert_eq!((t.client_port, t.server_port), (Some((5000, 5001)), Some((8000, 8001))));
    assert!(r.headers.get("Session").unwrap().ends_with(";timeout=60"));
    let r = h.request("SETUP", &format!("{URL}/trackID=0"), &[("Transport", "RTP/AVP;multicast")], "");
    let t = Transport::parse(r.headers.get("Transport").unwrap()).unwrap();
    assert!(t.multicast);
    assert_eq!((t.destination.as_deref(), t.port, t.ttl), (Some("239.255.0.1"), Some((8002, 8003)), Some(1)));
    // Interleaved channels default to 2i, 2i+1.
    let mut h = reach(Reached::Init);
    let r = h.request("SETUP", &format!("{URL}/trackID=1"), &[("Transport", "RTP/AVP/TCP;unicast")], "");
    assert!(r.headers.get("Transport").unwrap().contains("interleaved=2-3"), "{r:?}");
    assert_eq!(h.s.setups()[0].track, 1);
}

/// PLAY answers carry RTP-Info with each track's URL as set up, and the first packet's
/// seq and rtptime (retina refuses a PLAY answer without them).
#[test]
fn play_answer_carries_rtp_info_and_range() {
    let mut h = reach(Reached::ReadyToPlay);
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=1"), &[TCP1], ""), 200);
    let r = h.request("PLAY", URL, &[], "");
    assert_eq!(r.headers.get("Range"), Some("npt=0.000-"));
    assert_eq!(
        r.headers.get("RTP-Info"),
        Some("url=rtsp://h/live/a/trackID=0;seq=100;rtptime=9000,url=rtsp://h/live/a/trackID=1;seq=101;rtptime=9000")
    );
}

#[test]
fn play_headers_reach_the_application_and_its_answer_the_client() {
    let mut h = reach(Reached::Playing);
    let headers = [
        ("Range", "clock=20261125T100000Z-"),
        ("Scale", "-2"),
        ("Speed", "4.0"),
        ("Require", "onvif-replay"),
        ("Rate-Control", "no"),
    ];
    h.events.clear();
    // A PLAY while playing is a seek: it reaches the application as one with the session
    // played before.
    assert_eq!(h.status("PLAY", URL, &headers, ""), 200);
    let play = h.events.iter().find_map(|e| match e {
        ServerEvent::Play { resume, request, .. } => Some((*resume, request.clone())),
        _ => None,
    });
    let (resume, req) = play.expect("a Play event");
    assert!(resume);
    assert_eq!(req.range, Some(Range::Clock { start_us: 1_795_600_800_000_000, end_us: None }));
    assert_eq!((req.scale, req.speed, req.onvif_replay, req.rate_control_off), (Some(-2.0), Some(4.0), true, true));
    // The application's answer, as the client reads it.
    let mut h = reach(Reached::ReadyToPlay);
    h.cseq += 1;
    let text = format!(
        "PLAY {URL} RTSP/1.0\r\nCSeq: {}\r\nSession: {}\r\nScale: 16\r\n\r\n",
        h.cseq,
        h.s.session_id().unwrap()
    );
    h.s.handle_input(h.now, text.as_bytes()).unwrap();
    assert!(matches!(h.s.poll_event(), Some(ServerEvent::Play { .. })));
    let starts = [RtpStart { track: 0, seq: 7, rtptime: 70 }];
    let reply =
        PlayReply { range: "npt=5.000-30.000", starts: &starts, scale: Some(8.0), speed: None, rate_control_off: true };
    h.s.accept_play_with(&reply).unwrap();
    let r = h.responses().remove(0);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("Range"), Some("npt=5.000-30.000"));
    assert_eq!(r.headers.get("Scale"), Some("8"), "the Scale actually used");
    assert_eq!(r.headers.get("Rate-Control"), Some("no"));
    assert_eq!(r.headers.get("RTP-Info"), Some("url=rtsp://h/live/a/trackID=0;seq=7;rtptime=70"));
}

#[test]
fn malformed_playback_headers_and_unknown_options_are_refused() {
    for (name, value) in [("Range", "npt=x-"), ("Range", "npt=9-x"), ("Scale", "0"), ("Scale", "fast"), ("Speed", "-1")]
    {
        let mut h = reach(Reached::ReadyToPlay);
        assert_eq!(h.status("PLAY", URL, &[(name, value)], ""), 400, "{name}: {value}");
        assert_eq!(h.s.state(), State::Ready, "a refused PLAY changes nothing");
    }
    let mut h = reach(Reached::ReadyToPlay);
    let r = h.request("PLAY", URL, &[("Require", "onvif-replay, com.example.teleport")], "");
    assert_eq!(r.status, 551);
    assert_eq!(r.headers.get("Unsupported"), Some("com.example.teleport"));
    let r = h.request("OPTIONS", URL, &[("Require", "x-unknown")], "");
    assert_eq!(r.status, 551, "Require applies to every method");
}

#[test]
fn a_playback_url_keeps_its_query_out_of_the_content_base() {
    let mut h = Harness::new(config());
    let url = "rtsp://h/cams/a?start=2026-11-25T10:00:00Z";
    let r = h.request("DESCRIBE", url, &[], "");
    assert_eq!(r.headers.get("Content-Base"), Some("rtsp://h/cams/a/"));
    assert!(
        h.events.iter().any(|e| matches!(e, ServerEvent::Describe { path, uri } if path == "cams/a" && uri == url))
    );
    let abs = "rtsp://h/cams/a/trackID=0?start=2026-11-25T10:00:00Z";
    assert_eq!(h.status("SETUP", abs, &[TCP0], ""), 200);
    assert!(
        h.events.iter().any(
            |e| matches!(e, ServerEvent::Setup { path, track: Some(0), uri, .. } if path == "cams/a" && uri == abs)
        )
    );
}

fn auth_config() -> ServerConfig {
    ServerConfig { auth: Some(ServerAuth::default()), ..config() }
}

fn challenges(r: &Response) -> Vec<String> {
    r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate")).map(|(_, v)| v.to_owned()).collect()
}

#[test]
fn credentials_are_asked_for_by_role() {
    let mut h = Harness::new(auth_config());
    h.users = vec![
        (AuthAction::Publish, Credentials::parse("u:p").unwrap()),
        (AuthAction::Read, Credentials::parse("v:r").unwrap()),
    ];
    // Publishing asks; the 401 offers Digest SHA-256, Digest MD5 (last: clients that know only
    // MD5 take the last one), then Basic.
    let r = h.request("ANNOUNCE", URL, &[SDP_TYPE], SDP);
    assert_eq!(r.status, 401);
    let ch = challenges(&r);
    assert_eq!(ch.len(), 3, "{ch:?}");
    assert!(ch[0].starts_with("Digest realm=\"ferrocast\", nonce=\"") && ch[0].contains("algorithm=SHA-256"));
    assert!(ch[1].starts_with("Digest realm=\"ferrocast\"") && !ch[1].contains("algorithm"));
    assert!(ch[2].starts_with("Basic realm="));
    assert!(h.events.iter().any(|e| matches!(e, ServerEvent::Refused { status: 401, bad_credentials: false, .. })));
    // Wrong password, and a reader's credentials: 401, counted as bad credentials.
    for creds in [&b"u:wrong"[..], b"v:r"] {
        let basic = format!("Basic {}", crate::base64::encode(creds));
        assert_eq!(h.status("ANNOUNCE", URL, &[SDP_TYPE, ("Authorization", &basic)], SDP), 401);
    }
    assert!(h.events.iter().any(|e| matches!(e, ServerEvent::Refused { status: 401, bad_credentials: true, .. })));
    let basic = format!("Basic {}", crate::base64::encode(b"u:p"));
    assert_eq!(h.status("ANNOUNCE", URL, &[SDP_TYPE, ("Authorization", &basic)], SDP), 200);
    // Allowed once per connection and path: SETUP and RECORD of the recording ask nothing more.
    let asked = h.events.iter().filter(|e| matches!(e, ServerEvent::Authorize { .. })).count();
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=0"), &[REC0], ""), 200);
    assert_eq!(h.status("RECORD", URL, &[], ""), 200);
    assert_eq!(h.events.iter().filter(|e| matches!(e, ServerEvent::Authorize { .. })).count(), asked);
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, ServerEvent::Authorize { action: AuthAction::Publish, path, .. } if path == "live/a"))
    );
}

/// Reading a path live does not allow playing its recordings on the same connection: a
/// DESCRIBE or SETUP with `start=` (or of a `vod/` path) raises `Authorize` as `Playback` even
/// after a live read of the path was allowed; a playback SETUP's PLAY asks nothing more.
#[test]
fn playback_is_authorized_apart_from_read() {
    let mut h = Harness::new(auth_config());
    let creds = Credentials::parse("v:r").unwrap();
    h.users = vec![(AuthAction::Read, creds.clone())];
    let basic = format!("Basic {}", crate::base64::encode(b"v:r"));
    let authz = [("Authorization", basic.as_str())];
    let asked = |h: &Harness, action: AuthAction| {
        h.events.iter().filter(|e| matches!(e, ServerEvent::Authorize { action: a, .. } if *a == action)).count()
    };
    assert_eq!(h.status("DESCRIBE", URL, &authz, ""), 200);
    assert_eq!(asked(&h, AuthAction::Read), 1);
    let start = format!("{URL}?start=2026-11-25T10:00:00Z");
    assert_eq!(h.status("DESCRIBE", &start, &authz, ""), 401);
    assert_eq!(asked(&h, AuthAction::Playback), 1);
    let setup = format!("{URL}/trackID=0?start=2026-11-25T10:00:00Z");
    assert_eq!(h.status("SETUP", &setup, &[TCP0, authz[0]], ""), 401);
    assert_eq!(asked(&h, AuthAction::Playback), 2);
    // A live SETUP of the path read before asks nothing more.
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID=0"), &[TCP0], ""), 200);
    assert_eq!(asked(&h, AuthAction::Read), 1);
    assert_eq!(h.status("DESCRIBE", "rtsp://h/vod/a.mp4", &authz, ""), 401);
    assert_eq!(asked(&h, AuthAction::Playback), 3);

    // A user allowed playback: its SETUP asks as playback, its PLAY nothing more.
    let mut h = Harness::new(auth_config());
    h.users = vec![(AuthAction::Playback, creds)];
    assert_eq!(h.status("DESCRIBE", URL, &authz, ""), 401);
    assert_eq!(h.status("SETUP", &setup, &[TCP0, authz[0]], ""), 200);
    let before = h.events.iter().filter(|e| matches!(e, ServerEvent::Authorize { .. })).count();
    assert_eq!(h.status("PLAY", URL, &[], ""), 200);
    assert_eq!(h.events.iter().filter(|e| matches!(e, ServerEvent::Authorize { .. })).count(), before);
    assert!(is_playback("vod/x.mp4", "rtsp://h/vod/x.mp4"));
    assert!(is_playback("a", "rtsp://h/a?x=1&start=now"));
    assert!(!is_playback("a", "rtsp://h/a?restart=1#start=2"));
}

/// Digest with MD5 and SHA-256 as our client computes it, a nonce that expires (401
/// `stale=true` with a new nonce, then accepted), and a nonce we never issued.
#[test]
fn digest_md5_and_sha256_and_nonce_expiry() {
    for sha in [false, true] {
        let mut h = Harness::new(auth_config());
        let creds = Credentials::parse("v:r").unwrap();
        h.users = vec![(AuthAction::Read, creds.clone())];
        let r = h.request("DESCRIBE", URL, &[], "");
        let ch = challenges(&r);
        let pick: Vec<&str> = if sha { vec![ch[0].as_str()] } else { vec![ch[1].as_str()] };
        let mut a = crate::auth::Authenticator::choose(pick).unwrap();
        assert_eq!(a.name(), if sha { "digest-sha256" } else { "digest-md5" });
        let authz = a.authorization(&creds, "DESCRIBE", URL, b"", "c0ffee");
        assert_eq!(h.status("DESCRIBE", URL, &[("Authorization", &authz)], ""), 200, "sha256: {sha}");
        // The same answer later than the nonce's lifetime, for a new path: stale.
        h.now += DEFAULT_NONCE_LIFETIME + Duration::from_secs(1);
        let other = "rtsp://h/live/b";
        let authz = a.authorization(&creds, "DESCRIBE", other, b"", "c0ffee");
        let r = h.request("DESCRIBE", other, &[("Authorization", &authz)], "");
        assert_eq!(r.status, 401);
        let ch = challenges(&r);
        assert!(ch[0].contains("stale=true"), "{ch:?}");
        assert!(h.events.iter().any(|e| matches!(e, ServerEvent::Refused { status: 401, bad_credentials: false, .. })));
        let mut a = crate::auth::Authenticator::choose([ch[1].as_str()]).unwrap();
        let authz = a.authorization(&creds, "DESCRIBE", other, b"", "c0ffee");
        assert_eq!(h.status("DESCRIBE", other, &[("Authorization", &authz)], ""), 200);
    }
    // A Digest answer with a nonce this connection never gave proves nothing.
    let mut h = Harness::new(auth_config());
    let creds = Credentials::parse("v:r").unwrap();
    h.users = vec![(AuthAction::Read, creds.clone())];
    let mut a = crate::auth::Authenticator::choose(["Digest realm=\"ferrocast\", nonce=\"forged\""]).unwrap();
    let authz = a.authorization(&creds, "DESCRIBE", URL, b"", "");
    let r = h.request("DESCRIBE", URL, &[("Authorization", &authz)], "");
    assert_eq!(r.status, 401);
    assert!(h.events.iter().any(|e| matches!(e, ServerEvent::Authorize { offered: None, .. })));
}

/// The application may refuse outright (403), and may offer Basic only (hashed passwords).
#[test]
fn forbidden_and_basic_only() {
    let mut h = Harness::new(auth_config());
    h.blocked = true;
    let basic = format!("Basic {}", crate::base64::encode(b"v:r"));
    assert_eq!(h.status("DESCRIBE", URL, &[("Authorization", &basic)], ""), 403);
    let cfg = ServerConfig {
        auth: Some(ServerAuth { schemes: Schemes { digest: false, basic: true }, ..ServerAuth::default() }),
        ..config()
    };
    let mut h = Harness::new(cfg);
    let r = h.request("DESCRIBE", URL, &[], "");
    assert_eq!(challenges(&r), ["Basic realm=\"ferrocast\""]);
    // Without auth nothing is asked.
    let mut h = Harness::new(config());
    assert_eq!(h.status("DESCRIBE", URL, &[], ""), 200);
    assert!(!h.events.iter().any(|e| matches!(e, ServerEvent::Authorize { .. })));
}

#[test]
fn redirects_answer_301() {
    let mut cfg = config();
    cfg.redirects.insert("old/cam".into(), "rtsp://elsewhere/new/cam".into());
    let mut h = Harness::new(cfg);
    for method in ["DESCRIBE", "SETUP"] {
        let r = h.request(method, "rtsp://h/old/cam", &[TCP0], "");
        assert_eq!((r.status, r.headers.get("Location")), (301, Some("rtsp://elsewhere/new/cam")), "{method}");
    }
}

#[test]
fn bad_input_is_answered_then_closes() {
    for (input, status) in [
        (&b"\x16\x03\x01garbage\r\n\r\n"[..], 400),
        (&b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n"[..], 505),
        (&b"DESCRIBE rtsp://h RTSP/1.0\r\nContent-Length: 99999999\r\n\r\n"[..], 413),
    ] {
        let mut h = Harness::new(config());
        assert!(h.s.handle_input(h.now, input).is_err());
        assert!(h.s.is_closing());
        assert_eq!(h.responses()[0].status, status);
        // Nothing more is read once closing.
        assert_eq!(h.s.handle_input(h.now, b"OPTIONS * RTSP/1.0\r\n\r\n"), Ok(()));
        assert!(h.responses().is_empty());
    }
}

/// Requests pipelined behind a decision wait for it, and are then answered in order.
#[test]
fn pipelined_requests_wait_for_the_decision() {
    let mut h = Harness::new(config());
    let two =
        b"DESCRIBE rtsp://h/live/a RTSP/1.0\r\nCSeq: 1\r\n\r\nOPTIONS rtsp://h/live/a RTSP/1.0\r\nCSeq: 2\r\n\r\n";
    h.s.handle_input(h.now, two).unwrap();
    assert!(h.s.awaiting_decision());
    assert!(h.s.poll_timeout().is_none(), "no session timer runs while the application decides");
    assert!(h.responses().is_empty());
    assert!(matches!(h.s.poll_event(), Some(ServerEvent::Describe { path, .. }) if path == "live/a"));
    h.s.reject(404).unwrap();
    let r = h.responses();
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), [404, 200]);
}

#[test]
fn pending_input_too_large() {
    let mut h = Harness::new(config());
    h.s.handle_input(h.now, b"DESCRIBE rtsp://h/live/a RTSP/1.0\r\nCSeq: 1\r\n\r\n").unwrap();
    let chunk = vec![b'$'; 4096];
    let mut sent = 0;
    let err = loop {
        match h.s.handle_input(h.now, &chunk) {
            Ok(()) => sent += chunk.len(),
            Err(e) => break e,
        }
        assert!(sent <= MAX_PENDING_INPUT, "never refused");
    };
    assert_eq!(err, SessionError::PendingInputTooLarge);
}

#[test]
fn setups_too_large() {
    let mut h = reach(Reached::Init);
    for i in 0..MAX_SETUPS {
        let t = ("Transport", "RTP/AVP/TCP;unicast");
        assert_eq!(h.status("SETUP", &format!("{URL}/trackID={i}"), &[t], ""), 200, "{i}");
    }
    let t = ("Transport", "RTP/AVP/TCP;unicast");
    assert_eq!(h.status("SETUP", &format!("{URL}/trackID={MAX_SETUPS}"), &[t], ""), 453);
}

#[test]
fn interleaved_data_routes_to_its_track() {
    let mut h = reach(Reached::Recording);
    h.send(b"$\x00\x00\x02ab$\x01\x00\x01c$\x07\x00\x01d");
    assert_eq!(
        h.events,
        [
            ServerEvent::Rtp { track: 0, data: Bytes::from_static(b"ab") },
            ServerEvent::Rtcp { track: 0, data: Bytes::from_static(b"c") },
        ],
        "channel 7 was never set up: dropped"
    );
}

// Timers, on the virtual clock.

#[test]
fn session_times_out_without_keep_alive() {
    let mut h = reach(Reached::Playing);
    let timeout = config().session_timeout;
    let start = h.now;
    // Keep-alives hold the session.
    for _ in 0..3 {
        h.now += timeout - Duration::from_secs(1);
        assert_eq!(h.s.handle_timeout(h.now), Ok(()));
        assert_eq!(h.status("GET_PARAMETER", URL, &[], ""), 200);
    }
    let (timer, at) = loop {
        let (timer, at) = h.s.poll_timeout().unwrap();
        if timer != Timer::RtcpReport {
            break (timer, at);
        }
        h.now = at;
        h.s.handle_timeout(h.now).unwrap();
    };
    assert_eq!(timer, Timer::Session);
    assert!(at > start + 3 * (timeout - Duration::from_secs(1)));
    h.now = at;
    assert_eq!(h.s.handle_timeout(h.now), Err(SessionError::SessionTimeout(timeout)));
    assert!(h.s.is_closing());
}

#[test]
fn rtcp_report_timer_fires_each_interval() {
    let mut h = reach(Reached::Playing);
    let interval = config().rtcp_interval;
    let mut fired = 0;
    let end = h.now + interval * 5 + interval / 2;
    while let Some((timer, at)) = h.s.poll_timeout() {
        if at > end {
            break;
        }
        assert_eq!(timer, Timer::RtcpReport);
        h.now = at;
        h.s.handle_timeout(h.now).unwrap();
        h.app();
        // The player's receiver reports keep the session alive.
        h.s.handle_udp(h.now, 0, true, Bytes::from_static(b"rr"));
        h.app();
        fired += 1;
    }
    assert_eq!(fired, 5);
    assert_eq!(h.events.iter().filter(|e| **e == ServerEvent::RtcpReport).count(), 5);
}

#[test]
fn slow_request_and_silent_connection_time_out() {
    let request_timeout = config().request_timeout;
    let mut h = Harness::new(config());
    h.s.handle_input(h.now, b"OPTIONS rtsp://h RTSP/1.0\r\n").unwrap();
    assert_eq!(h.s.poll_timeout().map(|(t, _)| t), Some(Timer::Request));
    h.now += request_timeout;
    assert_eq!(h.s.handle_timeout(h.now), Err(SessionError::RequestTimeout(request_timeout)));

    let mut h = Harness::new(config());
    assert_eq!(h.status("OPTIONS", URL, &[], ""), 200);
    h.now += request_timeout - Duration::from_millis(1);
    assert_eq!(h.s.handle_timeout(h.now), Ok(()));
    h.now += Duration::from_millis(1);
    assert_eq!(h.s.handle_timeout(h.now), Err(SessionError::IdleTimeout(request_timeout)));
}

#[test]
fn recording_without_media_times_out() {
    let media_timeout = config().media_timeout;
    let mut h = reach(Reached::Recording);
    let step = media_timeout / 2;
    for _ in 0..4 {
        h.now += step;
        h.s.handle_timeout(h.now).unwrap();
        h.send(b"$\x00\x00\x01x");
    }
    // RTCP alone is not media.
    h.now += step;
    h.s.handle_timeout(h.now).unwrap();
    h.send(b"$\x01\x00\x01x");
    h.now += step;
    assert_eq!(h.s.handle_timeout(h.now), Err(SessionError::MediaTimeout(media_timeout)));
}

// In-memory pairs: our client session against our server session.

/// Moves bytes both ways until neither side has anything to say.
fn pump(c: &mut ClientSession, h: &mut Harness, client_events: &mut Vec<ClientEvent>) {
    loop {
        let mut moved = false;
        while let Some(b) = c.poll_transmit() {
            moved = true;
            h.s.handle_input(h.now, &b).unwrap();
            h.app();
        }
        while let Some(b) = h.s.poll_transmit() {
            moved = true;
            c.handle_input(h.now, &b).unwrap();
        }
        client_events.extend(std::iter::from_fn(|| c.poll_event()));
        if !moved {
            return;
        }
    }
}

#[test]
fn client_plays_then_tears_down() {
    let mut h = Harness::new(config());
    let mut c = ClientSession::new(URL, ClientMode::Play, ClientTransport::Tcp, vec![], h.now);
    let mut evs = Vec::new();
    pump(&mut c, &mut h, &mut evs);
    assert!(c.is_started(), "{evs:?}");
    assert!(matches!(&evs[0], ClientEvent::Described(s) if s.media.len() == 2));
    assert!(evs.contains(&ClientEvent::SetUp { track: 1, server_port: None }));
    assert_eq!(h.s.state(), State::Playing);
    // The application's media reach the client on the channels negotiated.
    let (rtp, _) = h.s.setups()[1].transport.interleaved.unwrap();
    c.handle_input(h.now, &[b'$', rtp, 0, 2, 0xaa, 0xbb]).unwrap();
    assert_eq!(c.poll_event(), Some(ClientEvent::Rtp { track: 1, packet: Bytes::from_static(&[0xaa, 0xbb]) }));
    // A keep-alive late in the session's life, then TEARDOWN.
    h.now += config().session_timeout - Duration::from_secs(1);
    c.keep_alive(h.now);
    pump(&mut c, &mut h, &mut evs);
    h.now += Duration::from_secs(2);
    assert_eq!(h.s.handle_timeout(h.now), Ok(()), "the keep-alive counted");
    h.app();
    c.teardown(h.now);
    pump(&mut c, &mut h, &mut evs);
    assert!(h.events.contains(&ServerEvent::Teardown));
    assert_eq!((h.s.state(), h.s.session_id()), (State::Init, None));
    assert!(!evs.iter().any(|e| matches!(e, ClientEvent::Failed { .. })), "{evs:?}");
}

#[test]
fn client_records_over_tcp() {
    let mut h = Harness::new(config());
    let mut c = ClientSession::new(URL, ClientMode::Record(SDP.into()), ClientTransport::Tcp, vec![], h.now);
    let mut evs = Vec::new();
    pump(&mut c, &mut h, &mut evs);
    assert!(c.is_started(), "{evs:?}");
    assert_eq!(h.s.state(), State::Recording);
    assert!(h.s.is_recording());
    assert!(matches!(&h.events[0], ServerEvent::Announce { path, sdp } if path == "live/a" && sdp.media.len() == 2));
    assert!(h.events.contains(&ServerEvent::Record { path: "live/a".into() }));
    h.events.clear();
    c.send_rtp(1, b"packet");
    pump(&mut c, &mut h, &mut evs);
    assert_eq!(h.events, [ServerEvent::Rtp { track: 1, data: Bytes::from_static(b"packet") }]);
}

#[test]
fn client_plays_over_udp() {
    let mut h = Harness::new(config());
    let mut c =
        ClientSession::new(URL, ClientMode::Play, ClientTransport::Udp, vec![(5000, 5001), (5002, 5003)], h.now);
    let mut evs = Vec::new();
    pump(&mut c, &mut h, &mut evs);
    assert!(c.is_started());
    assert!(evs.contains(&ClientEvent::SetUp { track: 0, server_port: Some((8000, 8001)) }));
    assert_eq!(h.s.setups()[1].transport.client_port, Some((5002, 5003)));
}

/// Our client with credentials in its URL (a password with `@`, percent-encoded) against our
/// server requiring them: the 401 is answered with Digest and the session plays; the
/// keep-alive the client sends itself carries the Session and is accepted.
#[test]
fn client_authenticates_with_url_credentials() {
    let mut h = Harness::new(auth_config());
    h.users = vec![(AuthAction::Read, Credentials::parse("cam:p@ss").unwrap())];
    let url = URL.replacen("://", "://cam:p%40ss@", 1);
    let mut c = ClientSession::new(&url, ClientMode::Play, ClientTransport::Multicast, vec![], h.now);
    let mut evs = Vec::new();
    pump(&mut c, &mut h, &mut evs);
    assert!(c.is_started(), "{evs:?}");
    assert_eq!(c.auth_scheme(), Some("digest-sha256"));
    assert!(evs.iter().any(|e| matches!(e, ClientEvent::Transport { transport, .. }
        if transport.destination.as_deref() == Some("239.255.0.1") && transport.port == Some((8002, 8003)))));
    h.now = c.poll_timeout().unwrap();
    c.handle_timeout(h.now).unwrap();
    pump(&mut c, &mut h, &mut evs);
    assert!(!evs.iter().any(|e| matches!(e, ClientEvent::Failed { .. })), "{evs:?}");
    // Answered: only the next keep-alive is due (half the server's 60 s), no answer deadline.
    assert_eq!(c.poll_timeout(), Some(h.now + config().session_timeout / 2), "the keep-alive was answered");
}
