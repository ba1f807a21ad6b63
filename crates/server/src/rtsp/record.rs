//! A stream published with ANNOUNCE + RECORD: RTP in (interleaved or UDP), depacketized into
//! frames with decode timestamps, into the hub.

use bytes::Bytes;
use ferrocast_media::dts::DtsEstimator;
use ferrocast_media::{TrackInfo, TrackKind, Tracks, VideoCodec};
use ferrocast_rtsp::codec::{Depacketizer, Reorder};
use ferrocast_rtsp::rtcp::{self, ReceiverStats};
use ferrocast_rtsp::rtp::RtpPacket;
use ferrocast_rtsp::sdp::{self, Media, Sdp};
use tracing::debug;

use super::{random_u64, unix_micros};
use crate::hub::Publisher;

/// Extends 32-bit RTP timestamps across wraps.
#[derive(Default)]
struct Unwrap {
    last: Option<u32>,
    value: i64,
}

impl Unwrap {
    fn extend(&mut self, ts: u32) -> i64 {
        match self.last {
            None => self.value = 0,
            Some(l) => self.value += i64::from(ts.wrapping_sub(l) as i32),
        }
        self.last = Some(ts);
        self.value
    }
}

struct InTrack {
    media: Media,
    kind: TrackKind,
    depacketizer: Depacketizer,
    reorder: Reorder,
    dts: Option<DtsEstimator>,
    clock: Unwrap,
    /// This track's first packet, on the session timeline (track clock): aligns tracks
    /// whose RTP timestamps have independent random offsets.
    offset: Option<i64>,
    stats: ReceiverStats,
    /// (RTP time, arrival µs) of the first packet.
    first: Option<(u32, u64)>,
    ssrc: u32,
    /// Packets and frames dropped (loss, bad payloads).
    dropped: u64,
}

/// State of one RTSP publisher.
pub struct Recording {
    publisher: Publisher,
    tracks: Vec<InTrack>,
    info: Tracks,
    started_micros: Option<u64>,
    last_media: std::time::Instant,
}

fn reorder_depth(track: &TrackInfo) -> usize {
    match track {
        TrackInfo::Video { codec: VideoCodec::H264, config, .. } => {
            // Baseline (66) and Constrained Baseline have no B-frames.
            if config.get(1) == Some(&66) { 0 } else { 2 }
        }
        TrackInfo::Video { .. } => 3,
        TrackInfo::Audio { .. } => 0,
    }
}

impl Recording {
    /// A recording of the announced SDP's supported tracks (one video, one audio).
    pub fn new(publisher: Publisher, sdp: &Sdp) -> Result<Recording, String> {
        let mut tracks = Vec::new();
        let mut info = Tracks::default();
        for m in &sdp.media {
            let Some(t) = sdp::track_info(m).and_then(|t| crate::ingest::checked_track(publisher.path(), t)) else {
                continue;
            };
            let kind = t.kind();
            let slot = match kind {
                TrackKind::Video => &mut info.video,
                TrackKind::Audio => &mut info.audio,
            };
            if slot.is_some() {
                continue;
            }
            let Some(depacketizer) = Depacketizer::new(&t, m) else {
                continue;
            };
            let dts = (kind == TrackKind::Video).then(|| DtsEstimator::new(reorder_depth(&t)));
            tracks.push(InTrack {
                media: m.clone(),
                kind,
                depacketizer,
                reorder: Reorder::default(),
                dts,
                clock: Unwrap::default(),
                offset: None,
                stats: ReceiverStats::default(),
                first: None,
                ssrc: random_u64() as u32,
                dropped: 0,
            });
            *slot = Some(t);
        }
        if tracks.is_empty() {
            return Err("no supported track (H.264, H.265, AAC) in the SDP".into());
        }
        let has_config = |t: &Option<TrackInfo>| match t {
            Some(TrackInfo::Video { config, .. }) => !config.is_empty(),
            Some(_) => true,
            None => false,
        };
        // Parameters known from the SDP go to readers at once; in-band ones follow.
        if has_config(&info.video) || info.video.is_none() {
            publisher.set_tracks(info.clone());
        }
        Ok(Recording { publisher, tracks, info, started_micros: None, last_media: std::time::Instant::now() })
    }

    /// Number of tracks.
    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    /// The track a SETUP URL names: its control matched against each media's `a=control`.
    pub fn track_for_control(&self, uri: &str, control: Option<&str>) -> Option<usize> {
        self.tracks.iter().position(|t| match (&t.media.control, control) {
            (Some(c), _) if c.contains("://") => uri.trim_end_matches('/') == c.trim_end_matches('/'),
            (Some(c), Some(ctl)) => c == ctl,
            // No a=control: the media is addressed by the aggregate URL.
            (None, None) => true,
            _ => false,
        })
    }

    /// RECORD accepted: the session timeline starts.
    pub fn start(&mut self) {
        self.started_micros.get_or_insert_with(unix_micros);
    }

    /// How long since the last media packet (or the ANNOUNCE).
    pub fn idle_for(&self) -> std::time::Duration {
        self.last_media.elapsed()
    }

    /// An RTP packet for track `index`; UDP packets go through the reorder buffer.
    pub fn on_rtp(&mut self, index: usize, data: Bytes, udp: bool) {
        self.last_media = std::time::Instant::now();
        let Some(t) = self.tracks.get_mut(index) else {
            return;
        };
        let packet = match RtpPacket::parse(data) {
            Ok(p) => p,
            Err(e) => {
                t.dropped += 1;
                debug!(path = self.publisher.path(), "rtsp record: {e}");
                return;
            }
        };
        let started = *self.started_micros.get_or_insert_with(unix_micros);
        let arrival = unix_micros();
        let clock = t.media.clock_rate.max(1);
        // Arrival time in RTP units, anchored at the first packet (RFC 3550 A.8).
        let (first_ts, first_arrival) = *t.first.get_or_insert((packet.timestamp, arrival));
        let since = ferrocast_media::rescale(arrival.saturating_sub(first_arrival) as i64, 1_000_000, clock) as u32;
        t.stats.on_packet(packet.ssrc, packet.sequence, packet.timestamp, first_ts.wrapping_add(since));
        let in_order = if udp { t.reorder.push(packet) } else { vec![packet] };
        for p in in_order {
            if let Err(e) = t.depacketizer.push(&p) {
                t.dropped += 1;
                debug!(path = self.publisher.path(), "rtsp record: {e}");
            }
        }
        if let Some(config) = t.depacketizer.take_new_config()
            && let Some(TrackInfo::Video { codec, config: c, .. }) = self.info.video.as_mut()
            && let Some(config) = crate::ingest::checked_video_config(self.publisher.path(), *codec, config)
            && *c != config
        {
            *c = config;
            self.publisher.set_tracks(self.info.clone());
        }
        while let Some(au) = t.depacketizer.pull() {
            let ts = t.clock.extend(au.rtp_time);
            let offset =
                *t.offset.get_or_insert_with(|| ferrocast_media::rescale((arrival - started) as i64, 1_000_000, clock));
            let pts = ts + offset;
            let (dts, pts) = match t.dts.as_mut() {
                Some(e) => e.next(pts),
                None => (pts, pts),
            };
            self.publisher.push(t.kind, dts, pts, au.keyframe, au.data);
        }
    }

    /// A sender report from the publisher (for LSR/DLSR in our receiver reports).
    pub fn on_sender_report(&mut self, index: usize, ntp: u64) {
        if let Some(t) = self.tracks.get_mut(index) {
            t.stats.on_sender_report(ntp, unix_micros());
        }
    }

    /// Receiver reports to send, per track index.
    pub fn receiver_reports(&mut self, now_micros: u64) -> Vec<(usize, Bytes)> {
        self.tracks
            .iter_mut()
            .enumerate()
            .filter(|(_, t)| t.stats.extended_max() > 0)
            .map(|(i, t)| {
                let block = t.stats.report(now_micros);
                if block.cumulative_lost > 0 {
                    debug!(
                        track = i,
                        lost = block.cumulative_lost,
                        fraction = block.fraction_lost,
                        jitter = block.jitter,
                        dropped = t.dropped,
                        "rtsp record: loss"
                    );
                }
                (i, rtcp::receiver_report(t.ssrc, &block, "ferrocast"))
            })
            .collect()
    }
}
