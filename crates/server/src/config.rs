//! Configuration: every key has a compiled-in default, so `ferrocast` with no arguments
//! serves. Files are TOML; unknown keys are errors that name the key.

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
    /// RTSP listener (not served yet; the address is accepted).
    pub rtsp: RtspConfig,
    /// HTTP listener: HTTP-FLV now; HLS, API and metrics later.
    pub http: HttpConfig,
    /// Stream hub: GOP cache, reader lag, republish grace.
    pub hub: HubConfig,
}

/// `[rtmp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Our outgoing chunk size.
    pub chunk_size: u32,
    /// Largest message a peer may send, in bytes.
    pub max_message_size: u32,
    /// Time allowed for the handshake, in ms.
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
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: "info".into(),
            rtmp: RtmpConfig::default(),
            rtsp: RtspConfig::default(),
            http: HttpConfig::default(),
            hub: HubConfig::default(),
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
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
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
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
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
            self.hub.reader_queue_frames >= 16,
            "hub.reader_queue_frames must be at least 16"
        );
        for (key, v) in [
            ("rtmp.handshake_timeout_ms", r.handshake_timeout_ms),
            ("rtmp.idle_timeout_ms", r.idle_timeout_ms),
            ("rtmp.ping_interval_ms", r.ping_interval_ms),
            (
                "hub.reader_write_timeout_ms",
                self.hub.reader_write_timeout_ms,
            ),
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
    fn unknown_keys_are_named() {
        let err = Config::parse("[rtmp]\nchunk_sise = 5000\n").unwrap_err();
        assert!(format!("{err:#}").contains("chunk_sise"), "{err:#}");
        let err = Config::parse("[rtmp]\nchunk_size = 0\n").unwrap_err();
        assert!(err.to_string().contains("rtmp.chunk_size"), "{err}");
    }
}
