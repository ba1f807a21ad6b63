#![no_main]
//! A whole RTSP server session: requests, interleaved data, timers. The first byte picks how
//! the application answers (accept everything, or refuse some decisions) and how far the
//! virtual clock moves between pieces, so deep states and timeouts are both reached.
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrocast_rtsp::auth::Offered;
use ferrocast_rtsp::server::{
    AuthVerdict, MulticastReply, RtpStart, Secrets, ServerAuth, ServerConfig, ServerEvent, ServerSession,
};
use libfuzzer_sys::fuzz_target;

const SDP: &str = "v=0\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&policy, data)) = data.split_first() else { return };
    let mut now = Instant::now();
    let mut config = ServerConfig::default();
    if policy & 0x80 != 0 {
        config.auth = Some(ServerAuth::default());
    }
    config.redirects.insert("moved".into(), "rtsp://elsewhere/x".into());
    let mut s = ServerSession::new(config, Secrets { session_id: 1, nonce: 2 }, now);
    let step = Duration::from_millis(u64::from(policy & 0x0f) * 700);
    for (i, piece) in data.chunks(257).enumerate() {
        if s.handle_input(now, piece).is_err() {
            return;
        }
        if i % 3 == 2 {
            s.handle_udp(now, i % 3, i % 2 == 0, Bytes::copy_from_slice(&piece[..piece.len().min(16)]));
        }
        while let Some(ev) = s.poll_event() {
            let refuse = policy & 0x10 != 0 && i % 2 == 1;
            let r = match ev {
                ServerEvent::Describe { .. }
                | ServerEvent::Announce { .. }
                | ServerEvent::Setup { .. }
                | ServerEvent::Play { .. }
                    if refuse =>
                {
                    s.reject(404)
                }
                // The application's check: user "u" with password "p", Basic or Digest.
                ServerEvent::Authorize { offered, uri, .. } => {
                    let ok = match &offered {
                        Some(Offered::Basic(c)) => c.user == "u" && c.password == "p",
                        Some(Offered::Digest(d)) => d.username == "u" && d.verify("p", &uri),
                        None => false,
                    };
                    s.authorize(if ok { AuthVerdict::Allow } else { AuthVerdict::Challenge })
                }
                ServerEvent::Describe { .. } => s.accept_describe(SDP),
                ServerEvent::Announce { .. } => s.accept_announce(now),
                ServerEvent::Setup { track, transport, .. } => {
                    let m = (transport.multicast && policy & 0x20 != 0).then(|| MulticastReply {
                        destination: "239.255.0.1".into(),
                        ports: (5000, 5001),
                        ttl: 1,
                    });
                    s.accept_setup(track.unwrap_or(0), m).map(|_| ())
                }
                ServerEvent::Play { .. } => {
                    let starts: Vec<RtpStart> =
                        s.setups().iter().map(|x| RtpStart { track: x.track, seq: 1, rtptime: 2 }).collect();
                    s.accept_play("npt=0.000-", &starts)
                }
                _ => Ok(()),
            };
            if r.is_err() {
                return;
            }
        }
        while s.poll_transmit().is_some() {}
        now += step;
        if let Some((_, at)) = s.poll_timeout()
            && at <= now
            && s.handle_timeout(now).is_err()
        {
            return;
        }
    }
    let _ = s.handle_timeout(now + Duration::from_secs(3600));
});
