//! Configuration: every key has a compiled-in default, so `ferrocast` with no arguments
//! serves. Files are TOML; unknown keys are errors that name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The whole configuration, an immutable snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log_level: String,
    /// RTMP listener and sessions.
    pub rtmp: RtmpConfig,
    /// RTSP listener, its UDP ports and multicast.
    pub rtsp: RtspConfig,
    /// HTTP listener: HTTP-FLV and HLS (the API and metrics will join them).
    pub http: HttpConfig,
    /// Stream hub: GOP cache, reader lag, republish grace.
    pub hub: HubConfig,
    /// HLS output.
    pub hls: HlsConfig,
    /// Caps on what clients may hold.
    pub limits: LimitsConfig,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// RTMP, RTSP and HTTP-FLV connections open at once.
    pub max_connections: usize,
    /// RTMP, RTSP and HTTP-FLV connections open at once from one client address. Until its
    /// publish or play is accepted an RTMP connection may hold up to 256 KiB, so this bounds
    /// what one address can make the server hold (200 x 256 KiB = 50 MiB by default); raise it
    /// for many viewers behind one NAT or proxy, or a load generator on one host.
    pub max_connections_per_ip: usize,
    /// Streams published at once.
    pub max_streams: usize,
    /// Readers of one stream at once (every protocol).
    pub max_readers_per_stream: usize,
    /// A publisher that sends no media for this long is unpublished and disconnected, in ms.
    pub publisher_idle_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 20_000,
            max_connections_per_ip: 200,
            max_streams: 1_000,
            max_readers_per_stream: 10_000,
            publisher_idle_timeout_ms: 20_000,
        }
    }
}

/// HLS segment container choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HlsVariant {
    /// MPEG-TS for H.264 streams, fMP4 for H.265 (which Safari plays only in fMP4).
    Auto,
    /// MPEG-TS segments.
    Mpegts,
    /// fMP4 (CMAF) segments.
    Fmp4,
}

/// `[hls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HlsConfig {
    /// Segment every published stream.
    pub enabled: bool,
    /// Segment container.
    pub variant: HlsVariant,
    /// Target segment duration in ms; segments are cut at the first keyframe after it.
    pub segment_duration_ms: u64,
    /// Segments in the live playlist.
    pub window: usize,
    /// Largest segment kept, in bytes (memory bound when keyframes never come).
    pub max_segment_bytes: usize,
    /// How long a playlist request for a live stream without segments yet waits, in ms.
    pub playlist_wait_ms: u64,
    /// Also write segments and playlists under this directory (`DIR/APP/STREAM/...`), for
    /// an external web server or CDN. Empty: memory only.
    pub dir: String,
    /// Per-path overrides: exact paths first, then `*` patterns, longest first.
    pub paths: BTreeMap<String, HlsPathConfig>,
}

/// `[hls.paths."PATTERN"]`: what may differ per path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HlsPathConfig {
    /// Segment container for these paths.
    pub variant: Option<HlsVariant>,
    /// Target segment duration for these paths, in ms.
    pub segment_duration_ms: Option<u64>,
}

impl Default for HlsConfig {
    fn default() -> Self {
        HlsConfig {
            enabled: true,
            variant: HlsVariant::Auto,
            segment_duration_ms: 2000,
            window: 6,
            max_segment_bytes: 64 * 1024 * 1024,
            playlist_wait_ms: 10_000,
            dir: String::new(),
            paths: BTreeMap::new(),
        }
    }
}

/// Whether `pattern` (with `*` for any run of characters) matches `path`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == path;
    };
    let Some(mut tail) = path.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return tail.ends_with(part);
        }
        match tail.find(part) {
            Some(at) => tail = &tail[at + part.len()..],
            None => return false,
        }
    }
    true
}

impl HlsConfig {
    /// The override for a path: the exact entry, else the first matching pattern, longest
    /// pattern first, then in lexical order.
    pub fn for_path(&self, path: &str) -> HlsPathConfig {
        if let Some(c) = self.paths.get(path) {
            return c.clone();
        }
        let mut patterns: Vec<(&String, &HlsPathConfig)> = self.paths.iter().filter(|(k, _)| k.contains('*')).collect();
        patterns.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
        patterns.into_iter().find(|(k, _)| glob_match(k, path)).map(|(_, c)| c.clone()).unwrap_or_default()
    }
}

/// `[rtmp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Our outgoing chunk size.
    pub chunk_size: u32,
    /// Largest media message (audio, video, aggregate) a publisher may send once its publish
    /// is accepted, in bytes. Commands and data messages, and every message before a publish
    /// is accepted, are capped at 64 KiB whatever this says.
    pub max_message_size: u32,
    /// Time allowed from accept until publish or play starts (handshake and commands), in ms.
    pub handshake_timeout_ms: u64,
    /// A peer that sends nothing for this long is disconnected, in ms.
    pub idle_timeout_ms: u64,
    /// Silence after which we ping the peer, in ms.
    pub ping_interval_ms: u64,
}

/// `[rtsp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtspConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Server UDP port for RTP (unicast); 0 picks a free one.
    pub rtp_port: u16,
    /// Server UDP port for RTCP (unicast); 0 picks a free one.
    pub rtcp_port: u16,
    /// A session with no request and no RTCP for this long is ended, in ms.
    pub session_timeout_ms: u64,
    /// A request must arrive whole within this time of its first byte, and a connection
    /// without a session must send one this often, in ms.
    pub request_timeout_ms: u64,
    /// Largest RTP payload we send, in bytes.
    pub mtu: usize,
    /// Interval of our RTCP sender and receiver reports, in ms.
    pub rtcp_interval_ms: u64,
    /// Multicast groups are assigned to streams from this IPv4 range (CIDR).
    pub multicast_range: String,
    /// RTP port of video in every multicast group (RTCP is the next port); audio uses the pair
    /// after it (RTP on this port + 2, RTCP on + 3).
    pub multicast_port: u16,
    /// TTL of multicast packets.
    pub multicast_ttl: u32,
    /// Local interface address multicast is sent from (0.0.0.0: the kernel's choice).
    pub multicast_interface: std::net::Ipv4Addr,
    /// Paths that moved: DESCRIBE, ANNOUNCE and SETUP answer 301 with this location.
    pub redirects: BTreeMap<String, String>,
    /// `user:password` required to play over RTSP (Digest or Basic); empty: open.
    pub read_credentials: String,
    /// `user:password` required to publish over RTSP; empty: open.
    pub publish_credentials: String,
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// A request's head must arrive whole within this time of its first byte, and an idle
    /// keep-alive connection is closed after it, in ms.
    pub request_timeout_ms: u64,
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    pub max_header_bytes: usize,
}

/// `[hub]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// How long a path stays alive after its publisher leaves, so readers carry on when it
    /// comes back, in ms.
    pub republish_grace_ms: u64,
    /// How long a player of a path with no publisher waits for one before StreamNotFound /
    /// 404, in ms. 0 answers at once.
    pub play_wait_ms: u64,
    /// Frames each stream keeps for readers that are behind. A reader further behind skips
    /// to the next keyframe.
    pub reader_queue_frames: usize,
    /// Largest GOP cache per stream, in bytes; a longer GOP is not cached.
    pub max_gop_cache_bytes: usize,
    /// A reader whose socket accepts nothing for this long is disconnected, in ms.
    pub reader_write_timeout_ms: u64,
    /// A reader that has to skip to a keyframe more often than this within a minute is
    /// disconnected.
    pub max_reader_skips_per_minute: u32,
    /// Readers gather the frames of this many ms into one write: fewer system calls and TCP
    /// segments for that much more latency (SRS's merged write). The stream's fan-out waits
    /// out the window its first frame opened and writes the window's frames to each reader
    /// at once (RTMP, HTTP-FLV and RTSP players alike). 0: no window (but see
    /// `load_merge_max_ms`).
    pub write_merge_ms: u64,
    /// Without a write-merge window, a loaded fan-out (one whose pass over its readers takes
    /// 1 ms or more) holds a frame for the stream's next frame when that is due within two
    /// passes (at most this many ms), so the two share a write; a frame that arrives during a
    /// pass waits about that long for its last reader anyway. An idle fan-out writes each
    /// frame as it arrives. 0 writes each frame as it arrives under any load.
    pub load_merge_max_ms: u64,
    /// TCP_NODELAY on reader sockets: each write leaves at once. Off (the default, as in
    /// nginx-rtmp), Nagle's algorithm may hold a small write until the previous one is
    /// acknowledged: ~12% less CPU with 1,000 readers, the same p99, but occasional stalls of
    /// 30-40 ms with few readers (BENCHMARKS.md).
    pub tcp_nodelay: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: "info".into(),
            rtmp: RtmpConfig::default(),
            rtsp: RtspConfig::default(),
            http: HttpConfig::default(),
            hub: HubConfig::default(),
            hls: HlsConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            chunk_size: 4096,
            max_message_size: ferrocast_rtmp::chunk::DEFAULT_MAX_MESSAGE_LEN,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            ping_interval_ms: 10_000,
        }
    }
}

impl Default for RtspConfig {
    fn default() -> Self {
        RtspConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8554)),
            rtp_port: 8000,
            rtcp_port: 8001,
            session_timeout_ms: 60_000,
            request_timeout_ms: 10_000,
            mtu: 1400,
            rtcp_interval_ms: 5000,
            multicast_range: "239.255.0.0/16".into(),
            multicast_port: 8002,
            multicast_ttl: 1,
            multicast_interface: std::net::Ipv4Addr::UNSPECIFIED,
            redirects: BTreeMap::new(),
            read_credentials: String::new(),
            publish_credentials: String::new(),
        }
    }
}

impl RtspConfig {
    /// The multicast range as (network, prefix length).
    pub fn multicast_net(&self) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
        let (net, len) = self.multicast_range.split_once('/').unwrap_or((&self.multicast_range, "32"));
        let net: std::net::Ipv4Addr = net.parse().map_err(|e| anyhow::anyhow!("rtsp.multicast_range: {e}"))?;
        let len: u8 = len.parse().map_err(|e| anyhow::anyhow!("rtsp.multicast_range: {e}"))?;
        anyhow::ensure!(
            net.is_multicast() && (4..=32).contains(&len),
            "rtsp.multicast_range must be a multicast CIDR like 239.255.0.0/16"
        );
        Ok((net, len))
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            request_timeout_ms: 10_000,
            max_header_bytes: 16_384,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            republish_grace_ms: 5_000,
            play_wait_ms: 0,
            reader_queue_frames: 512,
            max_gop_cache_bytes: 32 * 1024 * 1024,
            reader_write_timeout_ms: 10_000,
            max_reader_skips_per_minute: 4,
            write_merge_ms: 0,
            load_merge_max_ms: 20,
            tcp_nodelay: false,
        }
    }
}

/// Milliseconds as a duration.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Config {
    /// Parses TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        let r = &self.rtmp;
        anyhow::ensure!(
            (128..=ferrocast_rtmp::chunk::MAX_CHUNK_SIZE).contains(&r.chunk_size),
            "rtmp.chunk_size must be 128..=2147483647, got {}",
            r.chunk_size
        );
        anyhow::ensure!(
            (4096..=0xff_ffff + 1).contains(&r.max_message_size),
            "rtmp.max_message_size must be 4096..=16777216, got {}",
            r.max_message_size
        );
        anyhow::ensure!(
            (8192..=1 << 20).contains(&self.http.max_header_bytes),
            "http.max_header_bytes must be 8192..=1048576, got {}",
            self.http.max_header_bytes
        );
        anyhow::ensure!(self.hub.write_merge_ms <= 1000, "hub.write_merge_ms must be 0..=1000");
        anyhow::ensure!(self.hub.load_merge_max_ms <= 1000, "hub.load_merge_max_ms must be 0..=1000");
        anyhow::ensure!(self.hub.reader_queue_frames >= 16, "hub.reader_queue_frames must be at least 16");
        anyhow::ensure!(self.hls.window >= 1, "hls.window must be at least 1");
        anyhow::ensure!(
            (500..=60_000).contains(&self.hls.segment_duration_ms),
            "hls.segment_duration_ms must be 500..=60000, got {}",
            self.hls.segment_duration_ms
        );
        for (k, p) in &self.hls.paths {
            if let Some(d) = p.segment_duration_ms {
                anyhow::ensure!(
                    (500..=60_000).contains(&d),
                    "hls.paths.\"{k}\".segment_duration_ms must be 500..=60000"
                );
            }
        }
        self.rtsp.multicast_net()?;
        anyhow::ensure!((200..=65_000).contains(&self.rtsp.mtu), "rtsp.mtu must be 200..=65000");
        anyhow::ensure!(
            (1..=65_532).contains(&self.rtsp.multicast_port),
            "rtsp.multicast_port must be 1..=65532 (video and audio take four ports from it)"
        );
        for (key, v) in [
            ("rtsp.read_credentials", &self.rtsp.read_credentials),
            ("rtsp.publish_credentials", &self.rtsp.publish_credentials),
        ] {
            anyhow::ensure!(v.is_empty() || v.contains(':'), "{key} must be \"user:password\" or empty");
        }
        for (key, v) in [
            ("rtmp.handshake_timeout_ms", r.handshake_timeout_ms),
            ("rtmp.idle_timeout_ms", r.idle_timeout_ms),
            ("rtmp.ping_interval_ms", r.ping_interval_ms),
            ("hub.reader_write_timeout_ms", self.hub.reader_write_timeout_ms),
            ("rtsp.session_timeout_ms", self.rtsp.session_timeout_ms),
            ("rtsp.request_timeout_ms", self.rtsp.request_timeout_ms),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("rtsp.rtcp_interval_ms", self.rtsp.rtcp_interval_ms),
            ("limits.publisher_idle_timeout_ms", self.limits.publisher_idle_timeout_ms),
            ("limits.max_connections", self.limits.max_connections as u64),
            ("limits.max_connections_per_ip", self.limits.max_connections_per_ip as u64),
            ("limits.max_streams", self.limits.max_streams as u64),
            ("limits.max_readers_per_stream", self.limits.max_readers_per_stream as u64),
        ] {
            anyhow::ensure!(v > 0, "{key} must be above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_to_the_defaults() {
        let text = include_str!("../../../ferrocast.example.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn printed_defaults_parse_back() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn per_path_settings_exact_first_then_patterns() {
        let c = Config::parse(
            "[hls.paths.\"cams/*\"]\nvariant = \"fmp4\"\n[hls.paths.\"cams/lobby\"]\nsegment_duration_ms = 6000\n[hls.paths.\"*\"]\nsegment_duration_ms = 4000\n",
        )
        .unwrap();
        assert_eq!(c.hls.for_path("cams/lobby"), HlsPathConfig { variant: None, segment_duration_ms: Some(6000) });
        assert_eq!(c.hls.for_path("cams/door").variant, Some(HlsVariant::Fmp4));
        assert_eq!(c.hls.for_path("live/x").segment_duration_ms, Some(4000));
        assert!(glob_match("a/*/c", "a/b/c") && !glob_match("a/*/c", "a/b/d"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[rtmp]\nchunk_sise = 5000\n").unwrap_err();
        assert!(format!("{err:#}").contains("chunk_sise"), "{err:#}");
        let err = Config::parse("[rtmp]\nchunk_size = 0\n").unwrap_err();
        assert!(err.to_string().contains("rtmp.chunk_size"), "{err}");
    }

    #[test]
    fn multicast_ports_leave_room_for_audio() {
        let err = Config::parse("[rtsp]\nmulticast_port = 65534\n").unwrap_err();
        assert!(err.to_string().contains("rtsp.multicast_port"), "{err}");
        assert_eq!(Config::parse("[rtsp]\nmulticast_port = 65532\n").unwrap().rtsp.multicast_port, 65532);
    }
}
