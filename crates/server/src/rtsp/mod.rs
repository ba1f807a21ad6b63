//! The RTSP listener: TCP connections driven by [`conn`], the shared unicast UDP sockets
//! (server_port) with their dispatch by client address, per-stream RTP packetizers shared by
//! every reader (encode once), and multicast groups.

mod conn;
mod multicast;
pub mod record;
mod udp_out;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use ferrocast_media::{Frame, TrackInfo, TrackKind, Wire, rescale};
use ferrocast_rtsp::codec::Packetizer;
use ferrocast_rtsp::rtcp;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::{LimitsConfig, RtspConfig};
use crate::hub::Hub;
use crate::limits::Limiter;

pub use multicast::MulticastGroup;

/// A datagram from a client, routed to the connection that owns its address.
#[derive(Debug)]
pub struct UdpIn {
    /// Arrived on the RTCP socket.
    pub rtcp: bool,
    /// The track whose client port sent it.
    pub index: usize,
    /// The bytes.
    pub data: Bytes,
}

/// What every RTSP connection shares.
pub struct Shared {
    hub: Arc<Hub>,
    config: RtspConfig,
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    server_ports: (u16, u16),
    routes: Mutex<HashMap<SocketAddr, (mpsc::Sender<UdpIn>, usize)>>,
    outputs: Mutex<HashMap<String, Arc<StreamRtp>>>,
    groups: Mutex<HashMap<String, Weak<MulticastGroup>>>,
    limits: LimitsConfig,
}

/// A random number, good enough for SSRCs, sequence numbers and session ids (RFC 3550 asks
/// for unpredictability, not secrecy).
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Wall-clock time in microseconds.
pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The RTP packetizers of one stream, shared by all its RTSP readers: each frame is
/// packetized once ([`Wire::Rtp`]) and every reader sends the same packets.
pub struct StreamRtp {
    mtu: usize,
    out: Mutex<Out>,
}

#[derive(Default)]
struct Out {
    /// Video, audio.
    packetizers: [Option<Packetizer>; 2],
    /// (wall clock µs, media time µs) of the first frame packetized, of either track: the
    /// NTP/RTP mapping of every report. One for the stream, so that the reports of its
    /// tracks agree with each other and players align audio and video by them (RFC 3550
    /// 6.4.1); a mapping per track took each track's first frame at a different moment.
    anchor: Option<(u64, i64)>,
}

/// Index of a track kind in per-stream arrays.
pub fn slot(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

impl StreamRtp {
    /// The packets of a frame (built on first use, then shared).
    pub fn packets(&self, track: &TrackInfo, frame: &Frame) -> Bytes {
        frame.wire(Wire::Rtp, |f| {
            let mut out = lock(&self.out);
            if out.anchor.is_none() {
                out.anchor = Some((unix_micros(), rescale(f.pts, track.clock_rate(), 1_000_000)));
            }
            let t = &mut out.packetizers[slot(f.kind)];
            let stale = t.as_ref().is_none_or(|t| t.track() != track);
            if stale {
                let r = random_u64();
                let previous = t.take();
                let (seq, ssrc, offset) = match &previous {
                    // Keep the source identity across parameter changes.
                    Some(p) => (p.next_sequence(), p.ssrc(), p.time_offset()),
                    None => (r as u16, (r >> 16) as u32, (r >> 48) as u32),
                };
                let pt = ferrocast_rtsp::sdp::payload_type(track);
                *t = Packetizer::new(track, pt, ssrc, seq, offset, self.mtu);
            }
            match t {
                Some(t) => t.packetize(f),
                None => Bytes::new(),
            }
        })
    }

    /// A sender report for a track: NTP now, and the RTP time of now on the track's
    /// timeline; `packets`/`octets` are what this reader was sent.
    pub fn sender_report(&self, kind: TrackKind, now_micros: u64, packets: u32, octets: u32) -> Option<(u32, Bytes)> {
        let out = lock(&self.out);
        let p = out.packetizers[slot(kind)].as_ref()?;
        let (wall, media) = out.anchor?;
        let since = now_micros as i64 - wall as i64;
        let rtp_time = p.rtp_time(rescale(media + since, 1_000_000, p.track().clock_rate()));
        let ntp = rtcp::ntp_from_unix_micros(now_micros);
        Some((p.ssrc(), rtcp::sender_report(p.ssrc(), ntp, rtp_time, packets, octets, "ferrocast")))
    }

    /// The SSRC of a track, once it has sent.
    pub fn ssrc(&self, kind: TrackKind) -> Option<u32> {
        lock(&self.out).packetizers[slot(kind)].as_ref().map(|p| p.ssrc())
    }
}

impl Shared {
    /// The shared packetizers of a stream. They live as long as the stream: frames keep
    /// their packets (with sequence numbers) in their wire cache, so a later reader must
    /// continue the same numbering.
    pub fn stream_rtp(&self, path: &str) -> Arc<StreamRtp> {
        let mut outputs = lock(&self.outputs);
        if let Some(s) = outputs.get(path) {
            return s.clone();
        }
        let live = self.hub.live_paths();
        outputs.retain(|p, _| live.contains(p));
        let s = Arc::new(StreamRtp { mtu: self.config.mtu, out: Mutex::default() });
        outputs.insert(path.to_owned(), s.clone());
        s
    }

    fn route(&self, addr: SocketAddr, tx: mpsc::Sender<UdpIn>, index: usize) {
        lock(&self.routes).insert(addr, (tx, index));
    }

    fn unroute(&self, addrs: &[SocketAddr]) {
        let mut routes = lock(&self.routes);
        for a in addrs {
            routes.remove(a);
        }
    }
}

/// The RTSP TCP listener and the unicast RTP/RTCP sockets.
pub struct Listeners {
    /// RTSP requests.
    pub tcp: TcpListener,
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Listeners {
    /// Binds all three.
    pub async fn bind(config: &RtspConfig) -> anyhow::Result<Listeners> {
        let ip = config.listen.ip();
        let tcp =
            TcpListener::bind(config.listen).await.with_context(|| format!("binding RTSP to {}", config.listen))?;
        let rtp = UdpSocket::bind(SocketAddr::new(ip, config.rtp_port))
            .await
            .with_context(|| format!("binding RTP port {}", config.rtp_port))?;
        let rtcp = UdpSocket::bind(SocketAddr::new(ip, config.rtcp_port))
            .await
            .with_context(|| format!("binding RTCP port {}", config.rtcp_port))?;
        Ok(Listeners { tcp, rtp, rtcp })
    }
}

/// Serves RTSP until the task is dropped.
pub async fn serve(
    listeners: Listeners,
    config: RtspConfig,
    hub: Arc<Hub>,
    limiter: Arc<Limiter>,
    limits: LimitsConfig,
) {
    let Listeners { tcp: listener, rtp, rtcp } = listeners;
    let Ok(rtp_addr) = rtp.local_addr() else {
        return;
    };
    let Ok(rtcp_addr) = rtcp.local_addr() else {
        return;
    };
    let server_ports = (rtp_addr.port(), rtcp_addr.port());
    let shared = Arc::new(Shared {
        hub,
        config,
        rtp: Arc::new(rtp),
        rtcp: Arc::new(rtcp),
        server_ports,
        routes: Mutex::new(HashMap::new()),
        outputs: Mutex::new(HashMap::new()),
        groups: Mutex::new(HashMap::new()),
        limits,
    });
    for is_rtcp in [false, true] {
        let shared = shared.clone();
        tokio::spawn(async move { udp_dispatch(shared, is_rtcp).await });
    }
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("rtsp accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admission = match limiter.admit(peer.ip()) {
            Ok(a) => a,
            Err(e) => {
                warn!(%peer, "rtsp connection refused: {e}");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _admission = admission;
            match conn::run(shared, socket, peer).await {
                Ok(()) => debug!(%peer, "rtsp connection closed"),
                Err(e) => tracing::info!(%peer, "rtsp connection ended: {e:#}"),
            }
        });
    }
}

/// Largest UDP datagram we read.
const MAX_DATAGRAM: usize = 65_536;

async fn udp_dispatch(shared: Arc<Shared>, is_rtcp: bool) {
    let socket = if is_rtcp { shared.rtcp.clone() } else { shared.rtp.clone() };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!("rtsp udp: {e}");
                continue;
            }
        };
        let tx = lock(&shared.routes).get(&from).cloned();
        match tx {
            // A full queue means the connection is behind: drop, as the network would.
            Some((tx, index)) => {
                let _ = tx.try_send(UdpIn { rtcp: is_rtcp, index, data: Bytes::copy_from_slice(&buf[..n]) });
            }
            None => debug!(%from, "rtsp udp: datagram from an unknown address dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_media::{AudioCodec, VideoCodec};
    use ferrocast_rtsp::codec;
    use ferrocast_rtsp::rtcp::RtcpPacket;

    /// The RTP time a track's sender report gives for `now_micros`.
    fn report_rtp_time(s: &StreamRtp, kind: TrackKind, now_micros: u64) -> u32 {
        let (_, sr) = s.sender_report(kind, now_micros, 0, 0).unwrap();
        match &rtcp::parse(&sr).unwrap()[0] {
            RtcpPacket::SenderReport { rtp_time, .. } => *rtp_time,
            p => panic!("not a sender report: {p:?}"),
        }
    }

    /// Players align audio and video by the sender reports: the reports of both tracks must
    /// put one instant at the same media time, however far apart the tracks' first frames
    /// were packetized.
    #[test]
    fn reports_of_all_tracks_share_one_clock() {
        let s = StreamRtp { mtu: 1400, out: Mutex::default() };
        let video = TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 1000 };
        let audio = TrackInfo::Audio {
            codec: AudioCodec::Aac,
            config: Bytes::from_static(&[0x12, 0x10]),
            sample_rate: 44_100,
            channels: 2,
            clock_rate: 1000,
        };
        // Two frames of one instant (5 s), packetized 50 ms apart, as a busy task may.
        let v = s.packets(
            &video,
            &Frame::new(TrackKind::Video, 5000, 5000, false, Bytes::from_static(&[0, 0, 0, 2, 0x41, 0x9a])),
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        let a = s.packets(&audio, &Frame::new(TrackKind::Audio, 5000, 5000, true, Bytes::from_static(&[1, 2, 3, 4])));
        let ts = |p: &Bytes| u32::from_be_bytes(codec::packets(p).next().unwrap()[4..8].try_into().unwrap());
        let now = unix_micros() + 1_000_000;
        // Seconds of media from the frames to `now`, by each track's report.
        let since =
            |kind, frame_ts: u32, clock: f64| f64::from(report_rtp_time(&s, kind, now).wrapping_sub(frame_ts)) / clock;
        let (by_video, by_audio) =
            (since(TrackKind::Video, ts(&v), 90_000.0), since(TrackKind::Audio, ts(&a), 44_100.0));
        assert!((by_video - by_audio).abs() < 0.002, "video's report says {by_video} s, audio's {by_audio} s");
        assert!(by_video > 0.9, "{by_video}");
    }
}
