#![no_main]
//! Whatever a publisher can send, through ingest and the hub into every output encoder.
//!
//! Input: one byte choosing the ingest, then its messages.
//! - even: RTMP media messages after an accepted publish, each `[kind][u16 ts delta][u16
//!   len][body]` (kind % 3: audio, video, data), through `RtmpIngest`;
//! - odd: an RTSP RECORD, `[u16 len][SDP]` then RTP packets `[track][u16 len][packet]`,
//!   through `Recording`.
//!
//! After every message, the stream's tracks and its newest frame go through the FLV tag,
//! RTMP chunk, RTP packetizer, SDP, MPEG-TS, fMP4 and HLS segmenter encoders.
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ferrocast::config::HubConfig;
use ferrocast::hub::{Hub, Publisher};
use ferrocast::ingest::RtmpIngest;
use ferrocast::rtsp::record::Recording;
use ferrocast_hls::{Segmenter, SegmenterConfig, Variant};
use ferrocast_media::{Frame, TrackKind, Tracks, flv, fmp4, ts::TsMuxer};
use ferrocast_rtmp::message::encode_media;
use ferrocast_rtmp::{MediaKind, MediaMessage};
use ferrocast_rtsp::codec::{Packetizer, packets};
use ferrocast_rtsp::sdp;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "fuzz/outputs";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

/// Every output's encoders for one stream, as readers would hold them.
struct Outputs {
    tracks: Tracks,
    rtp: [Option<Packetizer>; 2],
    ts: Option<TsMuxer>,
    hls: [Segmenter; 2],
    last: Option<(TrackKind, i64, usize)>,
}

impl Outputs {
    fn new() -> Outputs {
        let seg = |variant| Segmenter::new(SegmenterConfig { variant, ..SegmenterConfig::default() }, "f");
        Outputs {
            tracks: Tracks::default(),
            rtp: [None, None],
            ts: None,
            hls: [seg(Variant::MpegTs), seg(Variant::Fmp4)],
            last: None,
        }
    }

    fn set_tracks(&mut self, tracks: &Tracks) {
        if *tracks == self.tracks {
            return;
        }
        self.tracks = tracks.clone();
        for t in [&tracks.video, &tracks.audio].into_iter().flatten() {
            if let Some(body) = flv::config_body(t) {
                let _ = flv::tag(flv::TAG_VIDEO, 0, &body);
                let _ = encode_media(MediaKind::Video, 0, 1, &body, 128);
            }
        }
        if let Some(m) = &tracks.metadata {
            let _ = encode_media(MediaKind::Data, 0, 1, m, 4096);
        }
        let (_, described) = sdp::describe(tracks, "127.0.0.1", "0.0.0.0");
        for (pt, t) in described {
            let _ = Packetizer::new(&t, pt, 1, 0, 0, 1400);
        }
        self.rtp = [tracks.video.as_ref(), tracks.audio.as_ref()]
            .map(|t| t.and_then(|t| Packetizer::new(t, sdp::payload_type(t), 1, 0, 0, 1400)));
        self.ts = TsMuxer::new(tracks).ok();
        if let Some(m) = self.ts.as_mut() {
            let mut out = bytes::BytesMut::new();
            m.write_tables(&mut out);
        }
        let _ = fmp4::init_segment(tracks);
        for t in [&tracks.video, &tracks.audio].into_iter().flatten() {
            let _ = (fmp4::codec_string(t), fmp4::dimensions(t));
        }
        for s in &mut self.hls {
            s.set_tracks(tracks, 0);
        }
    }

    fn frame(&mut self, f: &Arc<Frame>) {
        let track = match f.kind {
            TrackKind::Video => self.tracks.video.clone(),
            TrackKind::Audio => self.tracks.audio.clone(),
        };
        if let Some(track) = &track {
            let body = flv::frame_body(track, f);
            let tag = flv::tag(flv::TAG_AUDIO, track.to_ms(f.dts), &body);
            assert_eq!(tag.len(), body.len() + 15);
            let kind = if f.kind == TrackKind::Video { MediaKind::Video } else { MediaKind::Audio };
            let _ = encode_media(kind, track.to_ms(f.dts) as u32, 1, &body, 4096);
            let slot = usize::from(f.kind == TrackKind::Audio);
            if let Some(p) = self.rtp[slot].as_mut() {
                let buf = p.packetize(f);
                let framed: usize = packets(&buf).map(|p| p.len() + 2).sum();
                assert_eq!(framed, buf.len(), "RTP records frame the buffer");
            }
            let _ = fmp4::media_segment(1, &self.tracks, std::slice::from_ref(f), None, None);
        }
        if let Some(m) = self.ts.as_mut() {
            let mut out = bytes::BytesMut::new();
            m.write_frame(f, &mut out);
            assert_eq!(out.len() % 188, 0);
        }
        for s in &mut self.hls {
            s.push(f.clone(), 0);
            let _ = s.media_playlist();
            let _ = s.multivariant_playlist("index.m3u8");
        }
    }

    /// Encodes what the stream holds now: its tracks, and its newest frame if new.
    fn poll(&mut self, hub: &Hub) {
        let Some(sub) = hub.subscribe(PATH) else { return };
        self.set_tracks(&sub.current_tracks());
        if let Some(f) = sub.gop.last() {
            let id = (f.kind, f.dts, f.data.len());
            if self.last != Some(id) {
                self.last = Some(id);
                self.frame(f);
            }
        }
    }

    fn finish(&mut self) {
        for s in &mut self.hls {
            s.finish(0);
            let _ = s.media_playlist();
        }
    }
}

fn u16_at(d: &[u8], pos: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([*d.get(pos)?, *d.get(pos + 1)?])))
}

fn rtmp(hub: &Hub, publisher: Publisher, mut d: &[u8], out: &mut Outputs) {
    let mut ingest = RtmpIngest::new(publisher);
    let mut ts = 0u32;
    while d.len() >= 5 {
        let kind = [MediaKind::Audio, MediaKind::Video, MediaKind::Data][usize::from(d[0] % 3)];
        ts = ts.wrapping_add(u16_at(d, 1).unwrap_or(0) as u32);
        let len = u16_at(d, 3).unwrap_or(0).min(d.len() - 5);
        let payload = Bytes::copy_from_slice(&d[5..5 + len]);
        d = &d[5 + len..];
        let _ = ingest.handle(MediaMessage { kind, timestamp: ts, stream_id: 1, payload });
        out.poll(hub);
    }
}

fn rtsp(hub: &Hub, publisher: Publisher, d: &[u8], out: &mut Outputs) {
    let Some(sdp_len) = u16_at(d, 0) else { return };
    let Some(text) = d.get(2..2 + sdp_len) else { return };
    let Ok(sdp) = sdp::parse(text) else { return };
    let Ok(mut rec) = Recording::new(publisher, &sdp) else { return };
    rec.start();
    out.poll(hub);
    let mut d = &d[2 + sdp_len..];
    while d.len() >= 3 {
        let track = usize::from(d[0] % 4);
        let len = u16_at(d, 1).unwrap_or(0).min(d.len() - 3);
        let packet = Bytes::copy_from_slice(&d[3..3 + len]);
        d = &d[3 + len..];
        rec.on_rtp(track, packet, track % 2 == 1);
        out.poll(hub);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let _guard = runtime().enter();
    let hub = Hub::new(HubConfig { republish_grace_ms: 0, ..HubConfig::default() });
    let publisher = hub.publish(PATH).expect("a fresh hub");
    let mut out = Outputs::new();
    if mode % 2 == 0 {
        rtmp(&hub, publisher, rest, &mut out);
    } else {
        rtsp(&hub, publisher, rest, &mut out);
    }
    out.finish();
});
