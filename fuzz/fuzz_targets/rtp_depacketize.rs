#![no_main]
//! RTP packets (length-prefixed in the input) into each depacketizer.
use bytes::Bytes;
use ferrocast_media::{AudioCodec, TrackInfo, VideoCodec};
use ferrocast_rtsp::codec::Depacketizer;
use ferrocast_rtsp::rtp::RtpPacket;
use ferrocast_rtsp::sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let track = match which % 6 {
        0 => TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 90_000 },
        1 => TrackInfo::Video { codec: VideoCodec::H265, config: Bytes::new(), clock_rate: 90_000 },
        2 => TrackInfo::Audio { codec: AudioCodec::Aac, config: Bytes::from_static(&[0x12, 0x10]), sample_rate: 44_100, channels: 2, clock_rate: 44_100 },
        3 => TrackInfo::Audio { codec: AudioCodec::Pcma, config: Bytes::new(), sample_rate: 8000, channels: 1, clock_rate: 8000 },
        4 => TrackInfo::Audio { codec: AudioCodec::Opus, config: Bytes::new(), sample_rate: 48_000, channels: 2, clock_rate: 48_000 },
        _ => TrackInfo::Audio { codec: AudioCodec::Pcmu, config: Bytes::new(), sample_rate: 8000, channels: 1, clock_rate: 8000 },
    };
    let media = sdp::parse(b"m=audio 0 RTP/AVP 97\r\na=fmtp:97 sizelength=13;indexlength=3;indexdeltalength=3\r\n").unwrap().media.remove(0);
    let mut d = Depacketizer::new(&track, &media).unwrap();
    let mut pos = 0;
    while pos + 2 <= rest.len() {
        let len = usize::from(u16::from_be_bytes([rest[pos], rest[pos + 1]])).min(rest.len() - pos - 2);
        let pkt = Bytes::copy_from_slice(&rest[pos + 2..pos + 2 + len]);
        pos += 2 + len;
        if let Ok(p) = RtpPacket::parse(pkt) {
            let _ = d.push(&p);
            while d.pull().is_some() {}
            let _ = d.take_new_config();
        }
    }
});
