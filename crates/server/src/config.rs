//! Configuration: every key has a compiled-in default, so `ferrocast` with no arguments
//! serves. Files are TOML; unknown keys are errors that name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::paths::PathTable;

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
    /// Recording: the directory, and the defaults the per-path table overrides.
    pub record: RecordConfig,
    /// On-demand playback of MP4 files (`vod/NAME.mp4`).
    pub vod: VodConfig,
    /// Pulled sources (`source` in `[paths]`) and push relays: timeouts and retry delays.
    pub source: SourceConfig,
    /// Edge mode: paths not published here are pulled from an origin.
    pub edge: EdgeConfig,
    /// Log line format: `"text"` or `"json"`.
    pub log_format: LogFormat,
    /// `[auth]`: users and their permissions, the external decision (HTTP, JWT).
    pub auth: crate::auth::AuthConfig,
    /// `[api]`: the HTTP API (`/api/v1`).
    pub api: ApiConfig,
    /// `[hooks]`: notifications on publish, read and recordings.
    pub hooks: crate::hooks::HooksConfig,
    /// `[console]`: the web console at `/`.
    pub console: crate::console::ConsoleConfig,
    /// `[paths."PATTERN"]`: per-path settings (record, `hls_variant`, ...), in file order.
    pub paths: PathTable,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[api]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API (`/api/v1`) on this address instead of the HTTP listener's.
    pub listen: Option<SocketAddr>,
}

/// `record.part_duration_ms`: at least 100 ms (a part per frame or two would be all box
/// headers), at most 10 s (what a crash may lose).
pub const RECORD_PART_DURATION_MS: RangeInclusive<u64> = 100..=10_000;

/// Longest `record.segment_duration_ms`: one file a day.
pub const MAX_RECORD_SEGMENT_DURATION_MS: u64 = 86_400_000;

/// The valid HLS target segment durations, in ms (`hls.segment_duration_ms` and the per-path
/// `hls_segment_duration_ms`).
pub const HLS_SEGMENT_DURATION_MS: RangeInclusive<u64> = 500..=60_000;

/// `[record]`: what is never per path (the directory, file lengths) and the retention defaults
/// that `[paths."PATTERN"]` may override (`record_max_age_ms`, `record_max_bytes`). Which paths
/// are recorded is per path only (`record = true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordConfig {
    /// Recordings go under `DIR/PATH/`.
    pub dir: PathBuf,
    /// A new file starts at the first keyframe after this, in ms.
    pub segment_duration_ms: u64,
    /// fMP4 fragment length, in ms: at most this is lost on a crash.
    pub part_duration_ms: u64,
    /// Recordings older than this are deleted, in ms; 0 keeps them.
    pub max_age_ms: u64,
    /// The oldest recordings are deleted while all of them together exceed this, in bytes; 0:
    /// no cap.
    pub max_bytes: u64,
    /// The oldest recordings are deleted while the disk has less free space than this, in bytes.
    pub min_free_bytes: u64,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            dir: PathBuf::from("recordings"),
            segment_duration_ms: 600_000,
            part_duration_ms: 1000,
            max_age_ms: 0,
            max_bytes: 0,
            min_free_bytes: 1 << 30,
        }
    }
}

/// `[vod]`: MP4 files (progressive or fragmented) under `dir` are played as `vod/NAME.mp4`
/// over RTSP and HTTP. Recordings are played from `[record] dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VodConfig {
    /// The directory of the files; nothing outside it is served (symlinks out are refused).
    pub dir: PathBuf,
}

impl Default for VodConfig {
    fn default() -> Self {
        VodConfig { dir: PathBuf::from("media") }
    }
}

/// `[source]`: what pulled sources (`source` in `[paths]`), edge pulls and push relays share;
/// `source_start_timeout_ms` and `source_close_after_ms` may be set per path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// How long a reader of an on-demand source waits for it to go live, in ms.
    pub start_timeout_ms: u64,
    /// How long an on-demand source stays up after its last reader left, in ms.
    pub close_after_ms: u64,
    /// Every network step (connect, each request's answer) must complete within this, in ms.
    pub request_timeout_ms: u64,
    /// A live source that delivers nothing for this long is dropped and retried, in ms.
    pub read_timeout_ms: u64,
    /// `source_transport = "auto"` falls back to TCP when no UDP packet arrived this long after
    /// PLAY, in ms.
    pub udp_timeout_ms: u64,
    /// First delay before a retry, in ms; each failure doubles it (with jitter) up to
    /// `retry_max_ms`.
    pub retry_min_ms: u64,
    /// Longest delay between retries, in ms.
    pub retry_max_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            start_timeout_ms: 10_000,
            close_after_ms: 10_000,
            request_timeout_ms: 10_000,
            read_timeout_ms: 10_000,
            udp_timeout_ms: 3_000,
            retry_min_ms: 500,
            retry_max_ms: 30_000,
        }
    }
}

/// `[edge]`: with origins listed, a path that is neither published here nor has a `source` is
/// pulled on demand from the first origin that has it (`ORIGIN/PATH`), once for all local
/// readers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Origins in order of preference: `rtmp://host[:port]` or `rtsp://host[:port]`.
    pub origin: Vec<String>,
    /// A pull that has passed through this many servers already is refused (a loop guard
    /// beside the check for the server's own id).
    pub max_hops: u32,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig { origin: Vec::new(), max_hops: 8 }
    }
}

/// Checks a relay URL (`source`, `push`, `edge.origin`): `rtsp://` or `rtmp://` with a host.
pub fn check_relay_url(key: &str, url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("rtsp://")
        .or_else(|| url.strip_prefix("rtmp://"))
        .ok_or_else(|| anyhow::anyhow!("{key}: {:?} must start with rtsp:// or rtmp://", crate::relay::redact(url)))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    // A raw `/` in the user name or password would end the authority early (and hide the
    // credentials from redaction); `?` and `#` would end it for other URL readers.
    let path_part = rest.split(['?', '#']).next().unwrap_or("");
    anyhow::ensure!(
        !path_part[authority.len().min(path_part.len())..].contains('@')
            && !authority.rsplit_once('@').is_some_and(|(user, _)| user.contains(['?', '#'])),
        "{key}: percent-encode '/', '?', '#' and '@' in the user name and password (%2F, %3F, %23, %40)"
    );
    anyhow::ensure!(!host.is_empty(), "{key}: {:?} has no host", crate::relay::redact(url));
    anyhow::ensure!(url.len() <= 2048, "{key}: longer than 2048 bytes");
    anyhow::ensure!(!url.chars().any(|c| c.is_control() || c == ' '), "{key}: spaces or control characters");
    Ok(())
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
        }
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
    /// 1 ms or more) opens a window of its own when the stream's next frame is due within
    /// three passes (at most this many ms), and the frames that arrive in it share a write; a
    /// frame that arrives during a pass waits about that long for its last reader anyway. An
    /// idle fan-out writes each
    /// frame as it arrives, and a loaded one holds only while that measurably costs it less
    /// (its passes' share of time with and without holding, measured in turn; fanout.rs
    /// `Choice`). 0 writes each frame as it arrives under any load.
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
            record: RecordConfig::default(),
            vod: VodConfig::default(),
            source: SourceConfig::default(),
            edge: EdgeConfig::default(),
            log_format: LogFormat::Text,
            auth: Default::default(),
            api: ApiConfig::default(),
            hooks: Default::default(),
            console: Default::default(),
            paths: PathTable::default(),
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
            load_merge_max_ms: 40,
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
        reject_moved_tables(text)?;
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
            HLS_SEGMENT_DURATION_MS.contains(&self.hls.segment_duration_ms),
            "hls.segment_duration_ms must be 500..=60000, got {}",
            self.hls.segment_duration_ms
        );
        for (key, p) in self.paths.entries() {
            if let Some(d) = p.hls_segment_duration_ms {
                anyhow::ensure!(
                    HLS_SEGMENT_DURATION_MS.contains(&d),
                    "paths.\"{key}\".hls_segment_duration_ms must be 500..=60000, got {d}"
                );
            }
        }
        for (key, p) in self.paths.entries() {
            if let Some(url) = &p.source {
                check_relay_url(&format!("paths.\"{key}\".source"), url)?;
                anyhow::ensure!(
                    !key.contains('*'),
                    "paths.\"{key}\".source: a source needs an exact path, not a pattern"
                );
            }
            for url in &p.push {
                check_relay_url(&format!("paths.\"{key}\".push"), url)?;
            }
            for (name, v) in [
                ("source_start_timeout_ms", p.source_start_timeout_ms),
                ("source_close_after_ms", p.source_close_after_ms),
            ] {
                anyhow::ensure!(v != Some(0), "paths.\"{key}\".{name} must be above 0");
            }
        }
        for url in &self.edge.origin {
            check_relay_url("edge.origin", url)?;
        }
        anyhow::ensure!(self.edge.max_hops >= 1, "edge.max_hops must be at least 1");
        let sc = &self.source;
        anyhow::ensure!(sc.retry_min_ms <= sc.retry_max_ms, "source.retry_min_ms must not exceed source.retry_max_ms");
        self.record.validate()?;
        self.hooks.validate()?;
        self.rtsp.multicast_net()?;
        anyhow::ensure!((200..=65_000).contains(&self.rtsp.mtu), "rtsp.mtu must be 200..=65000");
        anyhow::ensure!(
            (1..=65_532).contains(&self.rtsp.multicast_port),
            "rtsp.multicast_port must be 1..=65532 (video and audio take four ports from it)"
        );
        self.auth.validate()?;
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
            ("source.start_timeout_ms", sc.start_timeout_ms),
            ("source.close_after_ms", sc.close_after_ms),
            ("source.request_timeout_ms", sc.request_timeout_ms),
            ("source.read_timeout_ms", sc.read_timeout_ms),
            ("source.udp_timeout_ms", sc.udp_timeout_ms),
            ("source.retry_min_ms", sc.retry_min_ms),
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

impl RecordConfig {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.dir.as_os_str().is_empty(), "record.dir must not be empty");
        anyhow::ensure!(
            RECORD_PART_DURATION_MS.contains(&self.part_duration_ms),
            "record.part_duration_ms must be 100..=10000, got {}",
            self.part_duration_ms
        );
        anyhow::ensure!(
            (self.part_duration_ms..=MAX_RECORD_SEGMENT_DURATION_MS).contains(&self.segment_duration_ms),
            "record.segment_duration_ms must be at least record.part_duration_ms ({}) and at most 86400000, got {}",
            self.part_duration_ms,
            self.segment_duration_ms
        );
        Ok(())
    }
}

/// Tables that moved, with where they went. Nothing was released with them, so no alias: the
/// old place is an error that names the new one.
fn reject_moved_tables(text: &str) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Top {
        hls: Option<Hls>,
        rtsp: Option<Rtsp>,
    }
    #[derive(Deserialize)]
    struct Hls {
        paths: Option<serde::de::IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Rtsp {
        read_credentials: Option<serde::de::IgnoredAny>,
        publish_credentials: Option<serde::de::IgnoredAny>,
    }
    if let Ok(Top { rtsp: Some(r), .. }) = toml::from_str::<Top>(text) {
        for (key, action, set) in [
            ("read_credentials", "read", r.read_credentials.is_some()),
            ("publish_credentials", "publish", r.publish_credentials.is_some()),
        ] {
            anyhow::ensure!(
                !set,
                "rtsp.{key} moved: use [[auth.users]] with user, pass and \
                 permissions = [{{ action = \"{action}\" }}] (it covers every protocol)"
            );
        }
    }
    // Text that does not parse is left to the real parse to report.
    if let Ok(Top { hls: Some(Hls { paths: Some(_) }), .. }) = toml::from_str::<Top>(text) {
        anyhow::bail!(
            "[hls.paths] moved: use [paths.\"PATTERN\"] with hls_variant (was variant) and \
             hls_segment_duration_ms (was segment_duration_ms)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::PathSettings;

    #[test]
    fn example_file_parses_to_the_defaults() {
        let text = include_str!("../../../ferrocast.example.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    /// The commented `[paths]` example at the end of the example file, uncommented, parses and
    /// means what its comments say.
    #[test]
    fn example_file_paths_example_means_what_it_says() {
        let text = include_str!("../../../ferrocast.example.toml");
        let at = text.find("# [paths.\"cams/*\"]").expect("the example's [paths] block");
        let block: String =
            text[at..].lines().map(|l| format!("{}\n", l.trim_start_matches('#').trim_start())).collect();
        let c = Config::parse(&block).unwrap();
        let door = c.paths.get("cams/door");
        assert!(door.record && door.record_max_age_ms == Some(604_800_000), "{door:?}");
        assert_eq!(door.hls_variant, Some(HlsVariant::Fmp4));
        let lobby = c.paths.get("cams/lobby");
        assert_eq!(lobby, PathSettings { hls_segment_duration_ms: Some(6000), ..Default::default() });
    }

    /// The commented `[[hooks.targets]]` examples of the example file, uncommented, parse and
    /// check.
    #[test]
    fn example_file_hooks_example_parses() {
        let text = include_str!("../../../ferrocast.example.toml");
        let at = text.find("# [[hooks.targets]]").expect("the example's hooks targets");
        let block: String = text[at..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
            .collect();
        let c = Config::parse(&block).unwrap();
        assert_eq!(c.hooks.targets.len(), 2, "{block}");
        assert_eq!(c.hooks.targets[1].command[0], "/usr/local/bin/on-segment");
    }

    #[test]
    fn printed_defaults_parse_back() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn paths_table_parses_in_file_order() {
        let c = Config::parse(
            "[paths.\"cams/*\"]\nrecord = true\nrecord_max_age_ms = 604800000\n\
             [paths.\"cams/lobby\"]\nhls_variant = \"fmp4\"\nhls_segment_duration_ms = 6000\n\
             [paths.\"**\"]\nrecord_max_bytes = 1000\n",
        )
        .unwrap();
        let keys: Vec<&str> = c.paths.entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["cams/*", "cams/lobby", "**"]);
        let lobby = c.paths.get("cams/lobby");
        assert_eq!(
            lobby,
            PathSettings {
                hls_variant: Some(HlsVariant::Fmp4),
                hls_segment_duration_ms: Some(6000),
                ..Default::default()
            }
        );
        let door = c.paths.get("cams/door");
        assert!(door.record);
        assert_eq!(door.record_max_age_ms, Some(604_800_000));
        assert_eq!(c.paths.get("live/x").record_max_bytes, Some(1000));
        assert!(!c.paths.get("live/x").record);
        // Printed and parsed back: the same table, in the same order.
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c, "{text}");
    }

    #[test]
    fn paths_errors_name_the_key_or_pattern() {
        let err = format!("{:#}", Config::parse("[paths.\"cams/*\"]\nrecrod = true\n").unwrap_err());
        assert!(err.contains("recrod"), "{err}");
        let err = format!("{:#}", Config::parse("[paths.\"cams/***\"]\nrecord = true\n").unwrap_err());
        assert!(err.contains("cams/***") && err.contains("**"), "{err}");
        let err = format!("{:#}", Config::parse("[paths.\"cams//x\"]\n").unwrap_err());
        assert!(err.contains("cams//x") && err.contains("empty segment"), "{err}");
        let err = format!("{:#}", Config::parse("[paths.\"cams/a b\"]\n").unwrap_err());
        assert!(err.contains("cams/a b"), "{err}");
        let err = format!("{:#}", Config::parse("[paths.\"x/*\"]\nhls_segment_duration_ms = 10\n").unwrap_err());
        assert!(err.contains("paths.\"x/*\".hls_segment_duration_ms"), "{err}");
        let err = format!("{:#}", Config::parse("[paths.\"x/*\"]\nhls_variant = \"webm\"\n").unwrap_err());
        assert!(err.contains("webm"), "{err}");
    }

    #[test]
    fn old_rtsp_credentials_name_auth_users() {
        for key in ["read_credentials", "publish_credentials"] {
            let err = Config::parse(&format!("[rtsp]\n{key} = \"u:p\"\n")).unwrap_err().to_string();
            assert!(err.contains(&format!("rtsp.{key} moved")) && err.contains("[[auth.users]]"), "{err}");
            assert!(!err.contains("u:p"), "{err}");
        }
        let c = Config::parse(
            "[[auth.users]]\nuser = \"cam\"\npass = \"x\"\nips = [\"10.0.0.0/8\"]\n\
             permissions = [{ action = \"publish\", path = \"cams/*\" }, { action = \"read\" }]\n",
        )
        .unwrap();
        assert_eq!(c.auth.users[0].permissions.len(), 2);
        let err = Config::parse("[[auth.users]]\nuser = \"cam\"\npass = \"x\"\nips = [\"10.0.0.1/8\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("auth.users[0].ips[0]"), "{err:#}");
        let err = Config::parse("[[auth.users]]\nuser = \"cam\"\npermissions = [{ action = \"fly\" }]\n").unwrap_err();
        assert!(format!("{err:#}").contains("fly"), "{err:#}");
    }

    #[test]
    fn old_hls_paths_table_names_the_new_place() {
        for text in [
            "[hls.paths.\"cams/*\"]\nvariant = \"fmp4\"\n",
            "[hls]\nenabled = true\n[hls.paths]\n",
            "[hls]\npaths = {}\n",
        ] {
            let err = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(err.contains("[hls.paths] moved") && err.contains("[paths.\"PATTERN\"]"), "{text}: {err}");
            assert!(err.contains("hls_variant"), "{err}");
        }
        // A syntax error is still reported as one.
        let err = format!("{:#}", Config::parse("[hls\npaths = 1\n").unwrap_err());
        assert!(!err.contains("moved"), "{err}");
    }

    #[test]
    fn record_section_defaults_and_limits() {
        let r = Config::parse("").unwrap().record;
        assert_eq!(r.dir, PathBuf::from("recordings"));
        assert_eq!((r.segment_duration_ms, r.part_duration_ms), (600_000, 1000));
        assert_eq!((r.max_age_ms, r.max_bytes, r.min_free_bytes), (0, 0, 1_073_741_824));
        let r = Config::parse("[record]\ndir = \"/var/rec\"\nsegment_duration_ms = 100\npart_duration_ms = 100\n")
            .unwrap()
            .record;
        assert_eq!((r.dir.to_str(), r.segment_duration_ms), (Some("/var/rec"), 100));
        for (text, want) in [
            ("part_duration_ms = 99", "record.part_duration_ms must be 100..=10000, got 99"),
            ("part_duration_ms = 10001", "record.part_duration_ms must be 100..=10000, got 10001"),
            ("segment_duration_ms = 999", "record.segment_duration_ms must be at least record.part_duration_ms (1000)"),
            ("segment_duration_ms = 86400001", "at most 86400000, got 86400001"),
            ("dir = \"\"", "record.dir must not be empty"),
        ] {
            let err = format!("{:#}", Config::parse(&format!("[record]\n{text}\n")).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
        assert_eq!(
            Config::parse("[record]\nsegment_duration_ms = 86400000\n").unwrap().record.segment_duration_ms,
            MAX_RECORD_SEGMENT_DURATION_MS
        );
        let err = format!("{:#}", Config::parse("[record]\nmax_age = 5\n").unwrap_err());
        assert!(err.contains("max_age"), "{err}");
    }

    #[test]
    fn relay_urls_whose_credentials_would_leak_are_refused() {
        for bad in ["rtsp://admin:s3cr/et@cam/x", "rtsp://admin:s3cr?et@cam/x", "rtsp://admin:s3cr#et@cam/x"] {
            let e = check_relay_url("k", bad).unwrap_err().to_string();
            assert!(e.contains("percent-encode") && !e.contains("s3cr"), "{bad}: {e}");
        }
        for good in ["rtsp://admin:pa%2Fss@cam/x", "rtsp://a:b@c@cam/x?token=a@b", "rtmp://origin:1935/live/a"] {
            check_relay_url("k", good).unwrap();
        }
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
