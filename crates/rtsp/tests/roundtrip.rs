//! Packetizer/depacketizer round trips on real encoded frames (x264, x265 and ffmpeg's AAC,
//! made by ffmpeg in the test), and packet loss: the stream recovers at the next keyframe and
//! the receiver statistics count what was lost.

use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use ferrocast_media::{AudioCodec, Frame, TrackInfo, TrackKind, VideoCodec, avc, h264, h265};
use ferrocast_rtsp::codec::{self, Depacketizer, Packetizer};
use ferrocast_rtsp::rtcp::ReceiverStats;
use ferrocast_rtsp::rtp::RtpPacket;
use ferrocast_rtsp::sdp;

fn ffmpeg(out: &str, args: &[&str]) -> Vec<u8> {
    let path = std::env::temp_dir().join(format!("ferrocast-rtsp-{}-{out}", std::process::id()));
    let ok = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).arg(&path).status();
    assert!(ok.is_ok_and(|s| s.success()), "ffmpeg is required (./scripts/test installs it)");
    let data = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    data
}

/// Access units of an Annex B stream split at AUDs, parameter sets set aside.
fn access_units(data: &[u8], hevc: bool) -> (Vec<Bytes>, Vec<(bool, Bytes)>) {
    let kind = |n: &[u8]| if hevc { h265::nal_type(n) } else { n[0] & 0x1f };
    let (aud, params): (u8, &[u8]) = if hevc { (35, &[32, 33, 34]) } else { (9, &[7, 8]) };
    let mut sets = Vec::new();
    let mut aus: Vec<(bool, Vec<u8>)> = Vec::new();
    for n in avc::split_annexb(data) {
        let k = kind(n);
        if k == aud || aus.is_empty() {
            aus.push((false, Vec::new()));
        }
        if params.contains(&k) {
            if sets.len() < params.len() {
                sets.push(Bytes::copy_from_slice(n));
            }
            continue;
        }
        if k == aud {
            continue;
        }
        let key = if hevc { (16..=23).contains(&k) } else { k == 5 };
        let au = aus.last_mut().unwrap();
        au.0 |= key;
        au.1.extend_from_slice(&(n.len() as u32).to_be_bytes());
        au.1.extend_from_slice(n);
    }
    (sets, aus.into_iter().filter(|a| !a.1.is_empty()).map(|(k, d)| (k, Bytes::from(d))).collect())
}

fn video_track(hevc: bool, sets: &[Bytes]) -> TrackInfo {
    let config = if hevc {
        h265::build_hvcc(&sets[0..1], &sets[1..2], &sets[2..3]).unwrap()
    } else {
        h264::build_avcc(&sets[0..1], &sets[1..2]).unwrap()
    };
    TrackInfo::Video { codec: if hevc { VideoCodec::H265 } else { VideoCodec::H264 }, config, clock_rate: 90_000 }
}

fn sdp_media(track: &TrackInfo) -> sdp::Media {
    let (text, _) = sdp::describe(
        &ferrocast_media::Tracks { video: Some(track.clone()), ..Default::default() },
        "127.0.0.1",
        "0.0.0.0",
    );
    sdp::parse(text.as_bytes()).unwrap().media.remove(0)
}

fn packetize(p: &mut Packetizer, frames: &[Arc<Frame>]) -> Vec<RtpPacket> {
    frames
        .iter()
        .flat_map(|f| codec::packets(&p.packetize(f)).map(|b| RtpPacket::parse(b).unwrap()).collect::<Vec<_>>())
        .collect()
}

fn video_case(hevc: bool) {
    let data = if hevc {
        ffmpeg(
            "v.hevc",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1280x720:rate=30",
                "-t",
                "2",
                "-c:v",
                "libx265",
                "-x265-params",
                "keyint=15:aud=1:log-level=error",
                "-f",
                "hevc",
            ],
        )
    } else {
        ffmpeg(
            "v.h264",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1280x720:rate=30",
                "-t",
                "2",
                "-c:v",
                "libx264",
                "-g",
                "15",
                "-x264-params",
                "aud=1",
                "-f",
                "h264",
            ],
        )
    };
    let (sets, aus) = access_units(&data, hevc);
    let track = video_track(hevc, &sets);
    let frames: Vec<Arc<Frame>> = aus
        .iter()
        .enumerate()
        .map(|(i, (k, d))| Frame::new(TrackKind::Video, i as i64 * 3000, i as i64 * 3000, *k, d.clone()))
        .collect();
    let mut p = Packetizer::new(&track, 96, 0x1234, 65_000, 7, 1400).unwrap();
    let packets = packetize(&mut p, &frames);
    assert!(packets.iter().all(|x| x.payload.len() <= 1400));
    assert!(packets.len() > frames.len() * 2, "large IDR frames need fragmentation: {} packets", packets.len());

    // Lossless: every frame comes back as sent, with its timestamp, in-band parameter sets
    // lifted into the configuration.
    let mut d = Depacketizer::new(&track, &sdp_media(&track)).unwrap();
    let mut out = Vec::new();
    for x in &packets {
        d.push(x).unwrap();
        while let Some(au) = d.pull() {
            out.push(au);
        }
    }
    assert_eq!(out.len(), frames.len());
    for (f, au) in frames.iter().zip(&out) {
        assert_eq!((au.data.clone(), au.keyframe), (f.data.clone(), f.keyframe));
        assert_eq!(au.rtp_time, p.rtp_time(f.pts));
    }
    let TrackInfo::Video { config, .. } = &track else { unreachable!() };
    assert_eq!(d.take_new_config().as_ref(), Some(config));

    // Loss inside a keyframe's fragments: that GOP is dropped, the next keyframe recovers,
    // and the statistics count exactly the lost packets.
    let mut d = Depacketizer::new(&track, &sdp_media(&track)).unwrap();
    let mut stats = ReceiverStats::default();
    let lost_at: Vec<usize> = vec![1, 2, 3];
    let mut got = Vec::new();
    for (i, x) in packets.iter().enumerate() {
        if lost_at.contains(&i) {
            continue;
        }
        stats.on_packet(x.ssrc, x.sequence, x.timestamp, x.timestamp);
        let _ = d.push(x);
        while let Some(au) = d.pull() {
            got.push(au);
        }
    }
    let next_key = 1 + frames[1..].iter().position(|f| f.keyframe).expect("a second keyframe");
    assert!(got[0].keyframe, "resumes at a keyframe");
    assert_eq!(got[0].rtp_time, p.rtp_time(frames[next_key].pts), "the first GOP is skipped");
    assert_eq!(got.len(), frames.len() - next_key);
    let report = stats.report(0);
    assert_eq!(report.cumulative_lost, lost_at.len() as i32);
    assert!(report.fraction_lost > 0);
}

#[test]
fn h264_round_trip_and_loss() {
    video_case(false);
}

#[test]
fn h265_round_trip_and_loss() {
    video_case(true);
}

#[test]
fn aac_round_trip_with_several_aus_per_packet() {
    let adts = ffmpeg(
        "a.aac",
        &["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "1", "-c:a", "aac", "-f", "adts"],
    );
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos + 7 <= adts.len() {
        let len = ((usize::from(adts[pos + 3] & 3)) << 11)
            | (usize::from(adts[pos + 4]) << 3)
            | usize::from(adts[pos + 5] >> 5);
        frames.push(Bytes::copy_from_slice(&adts[pos + 7..pos + len]));
        pos += len;
    }
    assert!(frames.len() > 40);
    let track = TrackInfo::Audio {
        codec: AudioCodec::Aac,
        config: Bytes::from_static(&[0x11, 0x90]),
        sample_rate: 48_000,
        channels: 1,
        clock_rate: 48_000,
    };
    let media = sdp::parse(
        sdp::describe(&ferrocast_media::Tracks { audio: Some(track.clone()), ..Default::default() }, "h", "0.0.0.0")
            .0
            .as_bytes(),
    )
    .unwrap()
    .media
    .remove(0);
    // Several AUs per packet, as some encoders and cameras send: AU-headers-length covers
    // three headers.
    let mut d = Depacketizer::new(&track, &media).unwrap();
    let mut out = Vec::new();
    for (k, chunk) in frames.chunks(3).enumerate() {
        let mut payload = vec![0, (16 * chunk.len()) as u8];
        for f in chunk {
            let size = (f.len() as u16) << 3;
            payload.extend_from_slice(&size.to_be_bytes());
        }
        for f in chunk {
            payload.extend_from_slice(f);
        }
        let pkt = RtpPacket {
            marker: true,
            payload_type: 97,
            sequence: k as u16,
            timestamp: (k * 3 * 1024) as u32,
            ssrc: 1,
            payload: Bytes::from(payload),
        };
        d.push(&pkt).unwrap();
        while let Some(au) = d.pull() {
            out.push(au);
        }
    }
    assert_eq!(out.len(), frames.len());
    for (i, (f, au)) in frames.iter().zip(&out).enumerate() {
        assert_eq!(&au.data, f);
        assert_eq!(au.rtp_time, (i * 1024) as u32);
    }
    // And our own packetizer, one AU per packet.
    let mut p = Packetizer::new(&track, 97, 1, 0, 0, 1400).unwrap();
    let fr: Vec<Arc<Frame>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Frame::new(TrackKind::Audio, i as i64 * 1024, i as i64 * 1024, true, f.clone()))
        .collect();
    let mut d = Depacketizer::new(&track, &media).unwrap();
    for x in packetize(&mut p, &fr) {
        d.push(&x).unwrap();
    }
    assert_eq!(std::iter::from_fn(|| d.pull()).count(), frames.len());
}
