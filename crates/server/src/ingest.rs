//! Turns what an RTMP publisher sends (FLV tag bodies and metadata) into hub tracks and
//! frames.

use bytes::Bytes;
use ferrocast_media::avc::{nal_length_size, to_four_byte_lengths};
use ferrocast_media::check::{self, ConfigError, MAX_CONFIG_SIZE, MAX_FRAME_SIZE, check_track};
use ferrocast_media::flv::{self, AudioTag, VideoTag};
use ferrocast_media::{AudioCodec, TrackInfo, TrackKind, Tracks, VideoCodec};
use ferrocast_rtmp::{MediaKind, MediaMessage};
use tracing::warn;

use crate::hub::Publisher;

/// RTMP timestamps are milliseconds, for every track.
const RTMP_CLOCK: u32 = 1000;

/// Why a publisher's message was dropped (logged; the session goes on).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad FLV body.
    #[error(transparent)]
    Flv(#[from] ferrocast_media::flv::FlvError),
    /// Bad NAL unit framing.
    #[error(transparent)]
    Nal(#[from] ferrocast_media::avc::NalError),
    /// A sequence header with nothing usable: refused, readers keep the last good one.
    #[error("sequence header refused: {0}")]
    Config(#[from] ConfigError),
    /// A frame of a codec whose parameters never arrived.
    #[error("{0:?} frame before its sequence header")]
    NoConfig(TrackKind),
    /// A media or data message over the size a stream carries.
    #[error("{kind:?} message of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Audio, video or data.
        kind: MediaKind,
        /// Its length.
        len: usize,
        /// The limit ([`MAX_FRAME_SIZE`] for media, [`MAX_CONFIG_SIZE`] for metadata).
        max: usize,
    },
}

impl IngestError {
    /// Whether the publish must end: the publisher sent a codec configuration that cannot
    /// be carried, so what follows cannot be decoded. Other errors drop one message.
    pub fn ends_publish(&self) -> bool {
        matches!(self, IngestError::Config(_))
    }
}

/// The track a publisher's codec configuration describes after [`check_track`], with the
/// entries dropped logged in one warning. `None` (logged) when it is refused: an RTSP video
/// track then waits for parameter sets in band, as cameras that send bad or no
/// `sprop-parameter-sets` expect; an audio track is not carried.
pub fn checked_track(path: &str, track: TrackInfo) -> Option<TrackInfo> {
    let kind = track.kind();
    // An AAC track whose AudioSpecificConfig comes in band (RFC 6416 MP4A-LATM with
    // `cpresent=1` and no `config=`): nothing to check yet; it is checked when it arrives.
    if let TrackInfo::Audio { codec: AudioCodec::Aac, config, .. } = &track
        && config.is_empty()
    {
        return Some(track);
    }
    match check_track(track.clone()) {
        Ok(c) => {
            warn_dropped(path, kind, &c.dropped);
            Some(c.value)
        }
        Err(e) => match track {
            TrackInfo::Video { codec, clock_rate, .. } => {
                warn!(path, "{kind:?} configuration refused, waiting for parameter sets in band: {e}");
                Some(TrackInfo::Video { codec, config: Bytes::new(), clock_rate })
            }
            TrackInfo::Audio { .. } => {
                warn!(path, "{kind:?} configuration refused, track not carried: {e}");
                None
            }
        },
    }
}

/// A video configuration built from parameter sets seen in band, after [`check_track`];
/// `None` (logged) when refused, and readers keep the last good one.
pub fn checked_video_config(path: &str, codec: VideoCodec, config: Bytes) -> Option<Bytes> {
    match check_track(TrackInfo::Video { codec, config, clock_rate: 1 }) {
        Ok(check::Checked { value: TrackInfo::Video { config, .. }, dropped }) => {
            warn_dropped(path, TrackKind::Video, &dropped);
            Some(config)
        }
        Ok(_) => None,
        Err(e) => {
            warn!(path, "in-band parameter sets refused, readers keep the last good ones: {e}");
            None
        }
    }
}

fn warn_dropped(path: &str, kind: TrackKind, dropped: &[check::Dropped]) {
    if !dropped.is_empty() {
        let list: Vec<String> = dropped.iter().map(ToString::to_string).collect();
        warn!(path, "{kind:?} configuration: dropped {}", list.join(", "));
    }
}

/// Extends 32-bit RTMP timestamps to 64 bits across wraps (RTMP spec 1.0 5.3.1.3 allows
/// them to wrap after ~49.7 days).
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<u32>,
    high: i64,
}

impl Unwrap {
    fn extend(&mut self, ts: u32) -> i64 {
        if let Some(last) = self.last {
            let back = last.wrapping_sub(ts);
            if ts < last && back > u32::MAX / 2 {
                self.high += 1 << 32;
            } else if ts > last && ts - last > u32::MAX / 2 && self.high > 0 {
                // A late message from before the wrap.
                return self.high - (1 << 32) + i64::from(ts);
            }
        }
        self.last = Some(ts);
        self.high + i64::from(ts)
    }
}

/// Per-publisher ingest state.
#[derive(Debug)]
pub struct RtmpIngest {
    publisher: Publisher,
    tracks: Tracks,
    nal_length_size: usize,
    clock: Unwrap,
    /// The last sequence header bodies as received (video, audio): encoders that repeat an
    /// unchanged one (before every keyframe) are neither checked nor warned about again.
    /// Boxed: the ingest lives in every RTMP connection's role.
    last_config: Box<[Option<Bytes>; 2]>,
}

impl RtmpIngest {
    /// Ingest into `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        RtmpIngest {
            publisher,
            tracks: Tracks::default(),
            nal_length_size: 4,
            clock: Unwrap::default(),
            last_config: Default::default(),
        }
    }

    /// Whether `config` repeats the last accepted sequence header of slot `i`.
    fn repeated(&self, i: usize, config: &Bytes) -> bool {
        self.last_config[i].as_ref() == Some(config)
    }

    /// The checked track of a sequence header; the warning for dropped entries is logged here.
    fn check(&self, track: TrackInfo) -> Result<TrackInfo, IngestError> {
        let c = check_track(track)?;
        warn_dropped(self.path(), c.value.kind(), &c.dropped);
        Ok(c.value)
    }

    /// The path being published.
    pub fn path(&self) -> &str {
        self.publisher.path()
    }

    /// Handles one message from the publisher.
    pub fn handle(&mut self, msg: MediaMessage) -> Result<(), IngestError> {
        // Every reader receives the metadata on joining: it is capped like a configuration.
        let max = if msg.kind == MediaKind::Data { MAX_CONFIG_SIZE } else { MAX_FRAME_SIZE };
        if msg.payload.len() > max {
            return Err(IngestError::TooLarge { kind: msg.kind, len: msg.payload.len(), max });
        }
        let ts = self.clock.extend(msg.timestamp);
        match msg.kind {
            MediaKind::Data => {
                self.tracks.metadata = Some(msg.payload);
                self.publisher.set_tracks(self.tracks.clone());
            }
            MediaKind::Video => match flv::parse_video(&msg.payload)? {
                VideoTag::Config { codec, config } => {
                    if self.repeated(0, &config)
                        && matches!(&self.tracks.video, Some(TrackInfo::Video { codec: c, .. }) if *c == codec)
                    {
                        return Ok(());
                    }
                    let track =
                        self.check(TrackInfo::Video { codec, config: config.clone(), clock_rate: RTMP_CLOCK })?;
                    let TrackInfo::Video { config: usable, .. } = &track else { unreachable!("a video track") };
                    self.nal_length_size = nal_length_size(codec, usable)?;
                    self.tracks.video = Some(track);
                    self.last_config[0] = Some(config);
                    self.publisher.set_tracks(self.tracks.clone());
                }
                VideoTag::Frame { codec, keyframe, cts, data } => {
                    match &self.tracks.video {
                        Some(TrackInfo::Video { codec: c, .. }) if *c == codec => {}
                        _ => return Err(IngestError::NoConfig(TrackKind::Video)),
                    }
                    let data = to_four_byte_lengths(data, self.nal_length_size)?;
                    self.publisher.push(TrackKind::Video, ts, ts + i64::from(cts), keyframe, data);
                }
                VideoTag::Ignored(_) => {}
            },
            MediaKind::Audio => match flv::parse_audio(&msg.payload)? {
                AudioTag::AacConfig(config) => {
                    if self.repeated(1, &config)
                        && matches!(self.tracks.audio, Some(TrackInfo::Audio { codec: AudioCodec::Aac, .. }))
                    {
                        return Ok(());
                    }
                    let track = TrackInfo::Audio {
                        codec: AudioCodec::Aac,
                        config: config.clone(),
                        sample_rate: 0,
                        channels: 0,
                        clock_rate: RTMP_CLOCK,
                    };
                    self.tracks.audio = Some(self.check(track)?);
                    self.last_config[1] = Some(config);
                    self.publisher.set_tracks(self.tracks.clone());
                }
                AudioTag::AacFrame(data) => {
                    if !matches!(self.tracks.audio, Some(TrackInfo::Audio { codec: AudioCodec::Aac, .. })) {
                        return Err(IngestError::NoConfig(TrackKind::Audio));
                    }
                    self.publisher.push(TrackKind::Audio, ts, ts, true, data);
                }
                AudioTag::Mp3 { sample_rate, channels, data } => {
                    let track = TrackInfo::Audio {
                        codec: AudioCodec::Mp3,
                        config: Bytes::new(),
                        sample_rate,
                        channels,
                        clock_rate: RTMP_CLOCK,
                    };
                    if self.tracks.audio.as_ref() != Some(&track) {
                        self.tracks.audio = Some(track);
                        self.publisher.set_tracks(self.tracks.clone());
                    }
                    self.publisher.push(TrackKind::Audio, ts, ts, true, data);
                }
                AudioTag::G711 { alaw, data } => {
                    let track = TrackInfo::Audio {
                        codec: if alaw { AudioCodec::Pcma } else { AudioCodec::Pcmu },
                        config: Bytes::new(),
                        sample_rate: 8000,
                        channels: 1,
                        clock_rate: RTMP_CLOCK,
                    };
                    if self.tracks.audio.as_ref() != Some(&track) {
                        self.tracks.audio = Some(track);
                        self.publisher.set_tracks(self.tracks.clone());
                    }
                    self.publisher.push(TrackKind::Audio, ts, ts, true, data);
                }
                AudioTag::Ignored(_) => {}
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;
    use crate::hub::Hub;

    /// SPS and PPS of `ffmpeg -f lavfi -i testsrc2=size=320x240 -c:v libx264 -profile:v high`.
    const SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
        0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    fn avcc(sps: &[&[u8]], pps: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![1, 0x64, 0, 0x0d, 0xff, 0xe0 | sps.len() as u8];
        for s in sps {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s);
        }
        out.push(pps.len() as u8);
        for p in pps {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    fn message(kind: MediaKind, payload: Vec<u8>) -> MediaMessage {
        MediaMessage { kind, timestamp: 0, stream_id: 1, payload: Bytes::from(payload) }
    }

    fn sequence_header(avcc: &[u8]) -> MediaMessage {
        let mut body = vec![0x17, 0, 0, 0, 0];
        body.extend_from_slice(avcc);
        message(MediaKind::Video, body)
    }

    fn video_config(hub: &Hub, path: &str) -> Option<Bytes> {
        match hub.subscribe(path)?.tracks.video.clone()? {
            TrackInfo::Video { config, .. } => Some(config),
            TrackInfo::Audio { .. } => None,
        }
    }

    #[tokio::test]
    async fn zero_length_sps_entry_is_dropped_at_ingest() {
        let hub = Hub::new(HubConfig::default());
        let mut ingest = RtmpIngest::new(hub.publish("live/a").unwrap());
        ingest.handle(sequence_header(&avcc(&[&[], SPS], &[PPS]))).unwrap();
        assert_eq!(video_config(&hub, "live/a").as_deref(), Some(&avcc(&[SPS], &[PPS])[..]));
    }

    #[tokio::test]
    async fn unusable_config_is_refused_and_readers_keep_the_last_good_one() {
        let hub = Hub::new(HubConfig::default());
        let mut ingest = RtmpIngest::new(hub.publish("live/a").unwrap());
        let good = avcc(&[SPS], &[PPS]);
        ingest.handle(sequence_header(&good)).unwrap();
        for bad in [avcc(&[&[]], &[PPS]), avcc(&[SPS], &[&[0x68]]), good[..7].to_vec()] {
            let e = ingest.handle(sequence_header(&bad)).unwrap_err();
            assert!(e.ends_publish(), "{e}");
            assert_eq!(video_config(&hub, "live/a").as_deref(), Some(&good[..]));
        }
        // AAC: a 0 Hz explicit sampling frequency.
        let e = ingest.handle(message(MediaKind::Audio, vec![0xaf, 0, 0x17, 0x80, 0, 0, 0x10])).unwrap_err();
        assert!(matches!(e, IngestError::Config(ConfigError::Aac(_))), "{e}");
        assert!(hub.subscribe("live/a").unwrap().tracks.audio.is_none());
    }

    /// RTSP: a video configuration with nothing usable (bad `sprop-parameter-sets`) leaves
    /// the track waiting for parameter sets in band; a refused AAC one is not carried; in-band
    /// parameter sets that are refused leave readers with the last good ones.
    #[test]
    fn rtsp_policy_for_refused_configurations() {
        let video =
            |config: Vec<u8>| TrackInfo::Video { codec: VideoCodec::H264, config: config.into(), clock_rate: 90000 };
        assert_eq!(
            checked_track("live/a", video(avcc(&[&[0x67]], &[PPS]))),
            Some(TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 90000 })
        );
        assert_eq!(checked_track("live/a", video(avcc(&[&[], SPS], &[PPS]))), Some(video(avcc(&[SPS], &[PPS]))));
        let aac = |config: &'static [u8]| TrackInfo::Audio {
            codec: AudioCodec::Aac,
            config: Bytes::from_static(config),
            sample_rate: 44100,
            channels: 2,
            clock_rate: 44100,
        };
        assert_eq!(checked_track("live/a", aac(&[0x02, 0x10])), None);
        assert!(checked_track("live/a", aac(&[0x12, 0x10])).is_some());
        let in_band = |c: Vec<u8>| checked_video_config("live/a", VideoCodec::H264, c.into());
        assert_eq!(in_band(avcc(&[SPS], &[&[]])), None);
        assert_eq!(in_band(avcc(&[SPS], &[PPS])).as_deref(), Some(&avcc(&[SPS], &[PPS])[..]));
    }

    #[tokio::test]
    async fn frames_with_overrunning_nal_lengths_are_dropped() {
        let hub = Hub::new(HubConfig::default());
        let mut ingest = RtmpIngest::new(hub.publish("live/a").unwrap());
        ingest.handle(sequence_header(&avcc(&[SPS], &[PPS]))).unwrap();
        let frame = vec![0x17, 1, 0, 0, 0, 0, 0, 0, 9, 0x65, 1];
        let e = ingest.handle(message(MediaKind::Video, frame)).unwrap_err();
        assert!(matches!(e, IngestError::Nal(_)), "{e}");
        assert!(!e.ends_publish());
    }

    #[tokio::test]
    async fn message_too_large() {
        let hub = Hub::new(HubConfig::default());
        let mut ingest = RtmpIngest::new(hub.publish("live/a").unwrap());
        let e = ingest.handle(message(MediaKind::Video, vec![0; MAX_FRAME_SIZE + 1])).unwrap_err();
        assert!(matches!(e, IngestError::TooLarge { kind: MediaKind::Video, .. }), "{e}");
        let e = ingest.handle(message(MediaKind::Data, vec![0; MAX_CONFIG_SIZE + 1])).unwrap_err();
        assert!(matches!(e, IngestError::TooLarge { kind: MediaKind::Data, .. }), "{e}");
        // With 1-byte NAL lengths a frame under the message limit grows over the frame limit.
        let mut hvcc = vec![1u8; 23];
        hvcc[21] = 0xfc; // lengthSizeMinusOne 0
        hvcc[22] = 0;
        let mut config = vec![0x1c, 0, 0, 0, 0];
        config.extend_from_slice(&hvcc);
        assert!(ingest.handle(message(MediaKind::Video, config)).is_err(), "an hvcC without VPS/SPS/PPS");
        let mut config = vec![0x17, 0, 0, 0, 0];
        let mut one_byte = avcc(&[SPS], &[PPS]);
        one_byte[4] = 0xfc;
        config.extend_from_slice(&one_byte);
        ingest.handle(message(MediaKind::Video, config)).unwrap();
        let mut frame = vec![0x17, 1, 0, 0, 0];
        frame.resize(MAX_FRAME_SIZE / 2, 0);
        let e = ingest.handle(message(MediaKind::Video, frame)).unwrap_err();
        assert!(matches!(e, IngestError::Nal(ferrocast_media::avc::NalError::TooLarge { .. })), "{e}");
    }

    #[test]
    fn timestamps_unwrap_across_32_bits() {
        let mut u = Unwrap::default();
        assert_eq!(u.extend(u32::MAX - 10), i64::from(u32::MAX - 10));
        assert_eq!(u.extend(5), (1i64 << 32) + 5);
        assert_eq!(u.extend(u32::MAX - 2), i64::from(u32::MAX - 2), "late message before the wrap");
        assert_eq!(u.extend(40), (1i64 << 32) + 40);
    }
}
