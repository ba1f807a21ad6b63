//! The RTSP listener: TCP connections driven by [`conn`], the shared unicast UDP sockets
//! (server_port) with their dispatch by client address, per-stream RTP packetizers shared by
//! every reader (encode once), and multicast groups.

mod conn;
mod multicast;
mod player;
pub mod record;
mod udp_out;
mod vod;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks, Wire, rescale};
use ferrocast_rtsp::codec::Packetizer;
use ferrocast_rtsp::rtcp;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::clock::MediaClock;
use crate::config::{LimitsConfig, RtspConfig};
use crate::hub::{Hub, OrderedWire};
use crate::limits::Limiter;
use crate::vod::Playback;

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
    playback: Arc<Playback>,
    config: RtspConfig,
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    server_ports: (u16, u16),
    routes: Mutex<HashMap<SocketAddr, (mpsc::Sender<UdpIn>, usize)>>,
    outputs: Mutex<HashMap<String, Arc<StreamRtp>>>,
    groups: Mutex<HashMap<String, Weak<MulticastGroup>>>,
    limits: LimitsConfig,
}

/// A random number from the operating system's CSPRNG: session ids and Digest nonces must
/// not be guessable (a hash of the time was), and SSRCs and initial sequence numbers
/// should not be (RFC 3550 section 8.2, RFC 3711 section 8.1).
pub fn random_u64() -> u64 {
    match getrandom::u64() {
        Ok(n) => n,
        // No entropy source at all (never seen on Linux since 3.17's getrandom(2)): a
        // session id is still unique per process, if guessable, and the server goes on.
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| warn!("no CSPRNG: {e}"));
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
            h.finish()
        }
    }
}

/// Wall-clock time in microseconds, which a step of the system clock does not move (see
/// [`crate::clock`]).
pub fn unix_micros() -> u64 {
    crate::clock::unix_micros()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The RTP packetizers of one stream, shared by all its RTSP readers: each frame is
/// packetized once ([`Wire::Rtp`]) and every reader sends the same packets. Frames are
/// packetized in the stream's order, by the stream ([`OrderedWire`]: the GOP when the first
/// RTSP reader comes, then each frame as it is pushed), so sequence numbers follow the
/// stream for every reader, a slow one included.
#[derive(Debug)]
pub struct StreamRtp {
    mtu: usize,
    out: Mutex<Out>,
}

#[derive(Debug, Default)]
struct Out {
    /// Video, audio.
    packetizers: [Option<Packetizer>; 2],
    /// The stream's mapping of media time to wall-clock time: the NTP/RTP mapping of every
    /// report. One for the stream, so that the reports of its tracks agree with each other
    /// and players align audio and video by them (RFC 3550 6.4.1); set from the first
    /// frame's arrival or the publisher's own sender reports, and not moved by a step of the
    /// server's clock (DESIGN.md "Timeline").
    clock: Option<Arc<MediaClock>>,
}

/// Index of a track kind in per-stream arrays.
pub fn slot(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

impl StreamRtp {
    /// Packetizers with payloads of at most `mtu` bytes.
    pub fn new(mtu: usize) -> StreamRtp {
        StreamRtp { mtu, out: Mutex::default() }
    }

    /// Packetizes `path`'s frames in the stream's order from now on (its GOP first), and
    /// takes the stream's media clock for the reports.
    pub fn follow(self: &Arc<Self>, hub: &Hub, path: &str) {
        if let Some(clock) = hub.build_in_order(path, self.clone()) {
            lock(&self.out).clock = Some(clock);
        }
    }

    /// The packets of a frame, as the stream built them. A frame pushed before the stream had
    /// RTSP readers and not in the GOP then has none (it would take sequence numbers out of
    /// order): the reader skips it.
    pub fn packets(&self, frame: &Frame) -> Bytes {
        frame.built(Wire::Rtp).unwrap_or_default()
    }

    /// Packetizes a frame, the stream's next one.
    fn build_packets(&self, track: &TrackInfo, frame: &Frame) -> Bytes {
        frame.wire(Wire::Rtp, |f| {
            let mut out = lock(&self.out);
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

    /// A sender report for a track: NTP now, and the RTP time of now on the stream's media
    /// clock; `packets`/`octets` are what this reader was sent. `now_micros` is wall-clock
    /// time from [`unix_micros`].
    pub fn sender_report(&self, kind: TrackKind, now_micros: u64, packets: u32, octets: u32) -> Option<(u32, Bytes)> {
        let out = lock(&self.out);
        let p = out.packetizers[slot(kind)].as_ref()?;
        let media = out.clock.as_ref()?.mapping()?.media_at(now_micros);
        let rtp_time = p.rtp_time(rescale(media, 1_000_000, p.track().clock_rate()));
        let ntp = rtcp::ntp_from_unix_micros(now_micros);
        Some((p.ssrc(), rtcp::sender_report(p.ssrc(), ntp, rtp_time, packets, octets, "ferrocast")))
    }

    /// The SSRC of a track, once it has sent.
    pub fn ssrc(&self, kind: TrackKind) -> Option<u32> {
        lock(&self.out).packetizers[slot(kind)].as_ref().map(|p| p.ssrc())
    }
}

impl OrderedWire for StreamRtp {
    fn build(&self, tracks: &Tracks, frame: &Frame) {
        let track = match frame.kind {
            TrackKind::Video => tracks.video.as_ref(),
            TrackKind::Audio => tracks.audio.as_ref(),
        };
        if let Some(track) = track {
            self.build_packets(track, frame);
        }
    }
}

impl Shared {
    /// The shared packetizers of a stream. They live as long as the stream: frames keep
    /// their packets (with sequence numbers) in their wire cache, so a later reader must
    /// continue the same numbering.
    pub fn stream_rtp(&self, path: &str) -> Arc<StreamRtp> {
        let mut outputs = lock(&self.outputs);
        if let Some(s) = outputs.get(path) {
            let s = s.clone();
            drop(outputs);
            s.follow(&self.hub, path);
            return s;
        }
        // Streams in their republish grace period keep their packetizers: their readers
        // carry on with the same SSRC and numbering.
        outputs.retain(|p, _| self.hub.has_stream(p));
        let s = Arc::new(StreamRtp::new(self.config.mtu));
        outputs.insert(path.to_owned(), s.clone());
        drop(outputs);
        s.follow(&self.hub, path);
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
    playback: Arc<Playback>,
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
        playback,
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
    use crate::config::HubConfig;
    use crate::hub::Publisher;
    use ferrocast_media::{AudioCodec, VideoCodec};
    use ferrocast_rtsp::codec;
    use ferrocast_rtsp::rtcp::RtcpPacket;

    /// The (NTP µs, RTP time) of a track's sender report for `now_micros`.
    fn report(s: &StreamRtp, kind: TrackKind, now_micros: u64) -> (u64, u32) {
        let (_, sr) = s.sender_report(kind, now_micros, 0, 0).unwrap();
        match &rtcp::parse(&sr).unwrap()[0] {
            RtcpPacket::SenderReport { ntp, rtp_time, .. } => {
                let micros = ((ntp >> 32) - 2_208_988_800) * 1_000_000 + (((ntp & 0xffff_ffff) * 1_000_000) >> 32);
                (micros, *rtp_time)
            }
            p => panic!("not a sender report: {p:?}"),
        }
    }

    fn tracks() -> Tracks {
        Tracks {
            video: Some(TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 1000 }),
            audio: Some(TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x12, 0x10]),
                sample_rate: 44_100,
                channels: 2,
                clock_rate: 1000,
            }),
            metadata: None,
        }
    }

    const IDR: &[u8] = &[0, 0, 0, 2, 0x65, 0x88];
    const P: &[u8] = &[0, 0, 0, 2, 0x41, 0x9a];
    const AAC: &[u8] = &[1, 2, 3, 4];

    fn publish(hub: &Arc<Hub>, path: &str) -> Publisher {
        let p = hub.publish(path).unwrap();
        p.set_tracks(tracks());
        p
    }

    /// The RTP timestamp and sequence number of a frame's first packet.
    fn first_packet(b: &Bytes) -> (u32, u16) {
        let p = codec::packets(b).next().unwrap();
        (u32::from_be_bytes(p[4..8].try_into().unwrap()), u16::from_be_bytes(p[2..4].try_into().unwrap()))
    }

    /// Players align audio and video by the sender reports: the reports of both tracks must
    /// put one instant at the same media time, however far apart the tracks' frames arrived
    /// and were packetized.
    #[tokio::test]
    async fn reports_of_all_tracks_share_one_clock() {
        let hub = Hub::new(HubConfig::default());
        let p = publish(&hub, "live/sr");
        let s = Arc::new(StreamRtp::new(1400));
        let mut sub = hub.subscribe("live/sr").unwrap();
        s.follow(&hub, "live/sr");
        // Two frames of one instant (5 s), pushed 50 ms apart, as a busy publisher may.
        p.push(TrackKind::Video, 5000, 5000, true, Bytes::from_static(IDR));
        std::thread::sleep(std::time::Duration::from_millis(50));
        p.push(TrackKind::Audio, 5000, 5000, true, Bytes::from_static(AAC));
        let rx = sub.rx.as_mut().unwrap();
        let mut frames = Vec::new();
        while let Ok((_, ev)) = rx.try_recv() {
            if let crate::event::HubEvent::Frame(f) = ev {
                frames.push(f);
            }
        }
        let v = s.packets(&frames[0]);
        let a = s.packets(&frames[1]);
        let now = unix_micros() + 1_000_000;
        // Seconds of media from the frames to `now`, by each track's report.
        let since = |kind, frame_ts: u32, clock: f64| f64::from(report(&s, kind, now).1.wrapping_sub(frame_ts)) / clock;
        let (by_video, by_audio) = (
            since(TrackKind::Video, first_packet(&v).0, 90_000.0),
            since(TrackKind::Audio, first_packet(&a).0, 44_100.0),
        );
        assert!((by_video - by_audio).abs() < 0.002, "video's report says {by_video} s, audio's {by_audio} s");
        assert!(by_video > 0.9, "{by_video}");
    }

    /// The report's mapping of RTP time to NTP time is the stream's, set once per publish:
    /// the publisher's word on when media was captured replaces the arrival mapping (once),
    /// and the reports' wall clock advances with the monotonic clock, so a step of the system
    /// clock moves neither.
    #[tokio::test]
    async fn reports_map_rtp_time_to_the_capture_time() {
        let hub = Hub::new(HubConfig::default());
        let p = publish(&hub, "live/cap");
        let s = Arc::new(StreamRtp::new(1400));
        let _sub = hub.subscribe("live/cap").unwrap();
        s.follow(&hub, "live/cap");
        p.push(TrackKind::Video, 10_000, 10_000, true, Bytes::from_static(IDR));
        // The publisher captured media time 10 s 3 s before it arrived here (say).
        let captured = (crate::clock::unix_micros() / 1_000_000 - 3) * 1_000_000; // whole seconds: NTP fractions round
        p.anchor_capture_time(TrackKind::Video, 10_000, captured);
        p.anchor_capture_time(TrackKind::Video, 10_000, captured + 5_000_000);
        let (ntp, rtp) = report(&s, TrackKind::Video, captured + 2_000_000);
        assert_eq!(ntp, captured + 2_000_000);
        let f0 = {
            let f = Frame::new(TrackKind::Video, 10_000, 10_000, true, Bytes::from_static(IDR));
            s.build(&tracks(), &f);
            first_packet(&s.packets(&f)).0
        };
        // 2 s after capture of media 10 s: media 12 s, 180,000 ticks after the frame.
        assert_eq!(rtp.wrapping_sub(f0), 180_000, "the report follows the publisher's capture time");
        // The reports' "now" comes from the process clock: the system clock is read once.
        let c = crate::clock::WallClock::process();
        let t = std::time::Instant::now();
        assert_eq!(c.at(t + std::time::Duration::from_secs(3600)), c.at(t) + 3_600_000_000);
    }

    /// Sequence numbers follow the stream's order for every reader: a reader that joins later
    /// and works through the GOP, and a fast one that has the newest frames, see only
    /// increasing numbers (before, the first reader to touch a frame numbered its packets).
    #[tokio::test]
    async fn sequence_numbers_follow_the_stream_for_slow_and_fast_readers() {
        let hub = Hub::new(HubConfig::default());
        let p = publish(&hub, "live/seq");
        let s = Arc::new(StreamRtp::new(1400));
        // A GOP is pushed before any RTSP reader.
        p.push(TrackKind::Video, 0, 0, true, Bytes::from_static(IDR));
        for i in 1..5 {
            p.push(TrackKind::Video, i * 40, i * 40, false, Bytes::from_static(P));
        }
        // The slow reader joins; the fast one joins and at once reads a frame pushed after.
        let slow = hub.subscribe("live/seq").unwrap();
        s.follow(&hub, "live/seq");
        let mut fast = hub.subscribe("live/seq").unwrap();
        for i in 5..10 {
            p.push(TrackKind::Video, i * 40, i * 40, false, Bytes::from_static(P));
        }
        let mut fast_seqs = Vec::new();
        while let Ok((_, crate::event::HubEvent::Frame(f))) = fast.rx.as_mut().unwrap().try_recv() {
            fast_seqs.push(first_packet(&s.packets(&f)).1);
        }
        // The slow reader now works through its GOP, then the live frames.
        let mut slow_seqs: Vec<u16> = slow.gop.iter().map(|f| first_packet(&s.packets(f)).1).collect();
        let mut slow = slow;
        while let Ok((_, crate::event::HubEvent::Frame(f))) = slow.rx.as_mut().unwrap().try_recv() {
            slow_seqs.push(first_packet(&s.packets(&f)).1);
        }
        assert_eq!(slow_seqs.len(), 10);
        assert_eq!(fast_seqs.len(), 5);
        for seqs in [&slow_seqs, &fast_seqs] {
            for w in seqs.windows(2) {
                assert_eq!(w[1], w[0].wrapping_add(1), "sequence numbers out of stream order: {seqs:?}");
            }
        }
        assert_eq!(&slow_seqs[5..], &fast_seqs[..], "both readers send the same packets");
    }
}
