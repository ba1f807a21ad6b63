//! Recordings written with `fmp4::recording_init` + `recording_part` and read back with
//! `fmp4_read`: the frames that went in come out (data, dts, pts, keyframe), for every codec a
//! recording holds; a file cut at any byte scans to its last whole part; garbage and
//! oversized boxes are errors.

use std::sync::Arc;

use bytes::Bytes;
use ferrocast_media::fmp4::{self, MAX_PART_DATA, MAX_PART_SAMPLES, TrackTimes};
use ferrocast_media::fmp4_read::{self, End, MAX_INIT_SIZE, MAX_MOOF_SIZE, ReadError, Scan, Scanner};
use ferrocast_media::{AudioCodec, Frame, TrackInfo, TrackKind, Tracks, VideoCodec, aac, h264, h265};

fn hex(s: &str) -> Bytes {
    Bytes::from((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<_>>())
}

fn h264_track(clock_rate: u32) -> TrackInfo {
    let sps = Bytes::from_static(&[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
        0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
    ]);
    let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
    TrackInfo::Video { codec: VideoCodec::H264, config: h264::build_avcc(&[sps], &[pps]).unwrap(), clock_rate }
}

/// Parameter sets of `ffmpeg -f lavfi -i testsrc2=size=320x240 -c:v libx265` (x265 3.5).
fn h265_track() -> TrackInfo {
    let vps = hex("40010c01ffff01600000030090000003000003003c959809");
    let sps = hex("42010101600000030090000003000003003ca00a080f165959a4932bc05a020000030002000003003c10");
    let pps = hex("4401c172b46240");
    TrackInfo::Video {
        codec: VideoCodec::H265,
        config: h265::build_hvcc(&[vps], &[sps], &[pps]).unwrap(),
        clock_rate: 90000,
    }
}

fn aac_track() -> TrackInfo {
    // AAC-LC, 44.1 kHz, stereo.
    aac::track(Bytes::from_static(&[0x12, 0x10]), 44100).unwrap()
}

fn audio(codec: AudioCodec, sample_rate: u32, channels: u8) -> TrackInfo {
    TrackInfo::Audio { codec, config: Bytes::new(), sample_rate, channels, clock_rate: sample_rate }
}

fn payload(kind: TrackKind, i: usize, len: usize) -> Bytes {
    let tag = if kind == TrackKind::Video { 0x40 } else { 0x80 };
    Bytes::from((0..len).map(|j| tag ^ (i as u8).wrapping_add(j as u8)).collect::<Vec<u8>>())
}

/// H.264 in decode order I P B B P B B ... with composition offsets both negative and
/// positive (B-frames shown before the P decoded ahead of them), a keyframe every 12 frames.
fn video_frames(start: i64, n: usize, step: i64) -> Vec<Arc<Frame>> {
    // Presentation index: an I or P frame is shown after the two B-frames decoded after it.
    (0..n)
        .map(|i| {
            let shown = if i % 3 == 0 { i as i64 + 2 } else { i as i64 - 1 };
            let dts = start + i as i64 * step;
            Frame::new(
                TrackKind::Video,
                dts,
                start + shown * step,
                i % 12 == 0,
                payload(TrackKind::Video, i, 20 + i % 7),
            )
        })
        .collect()
}

fn audio_frames(start: i64, n: usize, step: i64, len: usize, gap_at: Option<(usize, i64)>) -> Vec<Arc<Frame>> {
    (0..n)
        .map(|i| {
            let gap = gap_at.filter(|(at, _)| i >= *at).map_or(0, |(_, g)| g);
            let dts = start + i as i64 * step + gap;
            Frame::new(TrackKind::Audio, dts, dts, true, payload(TrackKind::Audio, i, len))
        })
        .collect()
}

/// Interleaves two tracks by time (ms), as the hub would deliver them.
fn interleave(tracks: &Tracks, a: Vec<Arc<Frame>>, b: Vec<Arc<Frame>>) -> Vec<Arc<Frame>> {
    let ms = |f: &Frame| {
        let t = if f.kind == TrackKind::Video { &tracks.video } else { &tracks.audio };
        t.as_ref().unwrap().to_ms(f.dts)
    };
    let mut all: Vec<Arc<Frame>> = a.into_iter().chain(b).collect();
    all.sort_by_key(|f| ms(f));
    all
}

/// A recording of `frames` cut into parts of `per_part` frames, the file starting at `base`.
fn record(tracks: &Tracks, frames: &[Arc<Frame>], per_part: usize, base: TrackTimes) -> Vec<u8> {
    let mut file = fmp4::recording_init(tracks).unwrap().to_vec();
    let chunks: Vec<&[Arc<Frame>]> = frames.chunks(per_part).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let later = &frames[((i + 1) * per_part).min(frames.len())..];
        let next_of = |k| later.iter().find(|f| f.kind == k).map(|f| f.dts);
        let next = TrackTimes { video: next_of(TrackKind::Video), audio: next_of(TrackKind::Audio) };
        file.extend_from_slice(&fmp4::recording_part(i as u32 + 1, tracks, base, chunk, next));
    }
    file
}

/// The tracks a scan gives for these: each with its timescale as its clock.
fn as_scanned(tracks: &Tracks) -> Tracks {
    let with_clock = |t: &TrackInfo| match t.clone() {
        TrackInfo::Video { codec, config, .. } => TrackInfo::Video { codec, config, clock_rate: fmp4::timescale(t) },
        TrackInfo::Audio { codec, config, sample_rate, channels, .. } => {
            TrackInfo::Audio { codec, config, sample_rate, channels, clock_rate: fmp4::timescale(t) }
        }
    };
    Tracks {
        video: tracks.video.as_ref().map(with_clock),
        audio: tracks.audio.as_ref().map(with_clock),
        metadata: None,
    }
}

/// Every frame of every part, read back, moved by `base`.
fn read_back(scan: &Scan, file: &[u8], base: TrackTimes) -> Vec<(TrackKind, i64, i64, bool, Bytes)> {
    let file = Bytes::copy_from_slice(file);
    let mut out = Vec::new();
    for p in &scan.parts {
        let part = file.slice(p.offset as usize..(p.offset + p.len) as usize);
        for f in fmp4_read::read_part(&scan.layout, &part).unwrap() {
            let b = base.get(f.kind).unwrap_or(0);
            out.push((f.kind, f.dts + b, f.pts + b, f.keyframe, f.data.clone()));
        }
        // The sample table from the moof alone agrees with the frames.
        let moof = &file[p.offset as usize..(p.offset + p.moof_len) as usize];
        let samples = fmp4_read::part_samples(&scan.layout, moof).unwrap();
        assert_eq!(samples.len() as u32, p.video_samples + p.audio_samples);
    }
    out
}

fn of_kind(v: &[(TrackKind, i64, i64, bool, Bytes)], k: TrackKind) -> Vec<(TrackKind, i64, i64, bool, Bytes)> {
    v.iter().filter(|f| f.0 == k).cloned().collect()
}

/// Writes, scans and reads back; the frames (in clocks equal to the timescales) come back.
fn round_trip(tracks: &Tracks, frames: &[Arc<Frame>], per_part: usize) -> (Scan, Vec<u8>) {
    let base = TrackTimes {
        video: frames.iter().find(|f| f.kind == TrackKind::Video).map(|f| f.dts),
        audio: frames.iter().find(|f| f.kind == TrackKind::Audio).map(|f| f.dts),
    };
    let file = record(tracks, frames, per_part, base);
    let scan = fmp4_read::scan(&file).unwrap();
    assert_eq!(scan.tracks, as_scanned(tracks));
    assert_eq!(scan.end, End::Clean);
    assert_eq!(scan.good_len, file.len() as u64);
    assert_eq!(scan.parts.len(), frames.len().div_ceil(per_part));
    let back = read_back(&scan, &file, base);
    let went_in: Vec<_> = frames.iter().map(|f| (f.kind, f.dts, f.pts, f.keyframe, f.data.clone())).collect();
    for k in [TrackKind::Video, TrackKind::Audio] {
        assert_eq!(of_kind(&back, k), of_kind(&went_in, k), "{k:?}");
    }
    (scan, file)
}

#[test]
fn h264_with_b_frames_and_aac_round_trip() {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: Some(aac_track()), metadata: None };
    let video = video_frames(9_000_000_000, 60, 3000);
    assert!(video.iter().any(|f| f.cts() < 0) && video.iter().any(|f| f.cts() > 0));
    // Audio starts half a second after the video and pauses for two seconds.
    let audio = audio_frames(4_410_000_000 + 22050, 90, 1024, 9, Some((40, 88200)));
    let frames = interleave(&tracks, video, audio);
    let base = TrackTimes { video: Some(9_000_000_000), audio: Some(4_410_000_000) };
    let file = record(&tracks, &frames, 25, base);
    let scan = fmp4_read::scan(&file).unwrap();
    assert_eq!(scan.parts.len(), 6);
    // The file's times start at 0; the audio track keeps its late start.
    assert_eq!(scan.parts[0].start, TrackTimes { video: Some(0), audio: Some(22050) });
    assert_eq!(scan.parts[0].keyframe, Some(0));
    let back = read_back(&scan, &file, base);
    let went_in: Vec<_> = frames.iter().map(|f| (f.kind, f.dts, f.pts, f.keyframe, f.data.clone())).collect();
    for k in [TrackKind::Video, TrackKind::Audio] {
        assert_eq!(of_kind(&back, k), of_kind(&went_in, k), "{k:?}");
    }
    // Parts follow each other: each track's end is where its next part starts.
    for w in scan.parts.windows(2) {
        for k in [TrackKind::Video, TrackKind::Audio] {
            if let (Some(end), Some(start)) = (w[0].end.get(k), w[1].start.get(k)) {
                assert_eq!(end, start, "{k:?}");
            }
        }
        assert_eq!(w[0].offset + w[0].len, w[1].offset);
        assert_eq!(w[1].sequence, w[0].sequence + 1);
    }
    // read_part interleaves the tracks by time.
    let part = Bytes::copy_from_slice(&file[scan.parts[1].offset as usize..][..scan.parts[1].len as usize]);
    let frames = fmp4_read::read_part(&scan.layout, &part).unwrap();
    let secs: Vec<f64> =
        frames.iter().map(|f| f.dts as f64 / if f.kind == TrackKind::Video { 90000.0 } else { 44100.0 }).collect();
    assert!(secs.windows(2).all(|w| w[0] <= w[1]), "{secs:?}");
}

#[test]
fn h265_and_mp3_round_trip() {
    let tracks = Tracks { video: Some(h265_track()), audio: Some(audio(AudioCodec::Mp3, 44100, 2)), metadata: None };
    let frames = interleave(&tracks, video_frames(0, 30, 3003), audio_frames(0, 40, 1152, 30, None));
    round_trip(&tracks, &frames, 16);
}

#[test]
fn opus_round_trip() {
    let tracks =
        Tracks { video: Some(h264_track(90000)), audio: Some(audio(AudioCodec::Opus, 48000, 2)), metadata: None };
    let opus: Vec<Arc<Frame>> = audio_frames(5_000, 50, 960, 12, Some((20, 96_000)))
        .into_iter()
        .map(|f| {
            let mut data = f.data.to_vec();
            data[0] = 0xf8; // CELT fullband 20 ms, one frame
            Frame::new(TrackKind::Audio, f.dts, f.pts, true, Bytes::from(data))
        })
        .collect();
    let frames = interleave(&tracks, video_frames(100, 30, 3000), opus);
    round_trip(&tracks, &frames, 20);
    // Audio alone: the last packet lasts what its TOC says.
    let alone = Tracks { video: None, audio: tracks.audio.clone(), metadata: None };
    let audio: Vec<Arc<Frame>> = frames.iter().filter(|f| f.kind == TrackKind::Audio).cloned().collect();
    let (scan, _) = round_trip(&alone, &audio, 50);
    let p = &scan.parts[0];
    assert_eq!(p.end.audio.unwrap() - p.start.audio.unwrap(), 49 * 960 + 96_000 + 960);
    assert_eq!(p.duration_ms, 3000);
    // The audio starts 5000 ticks into the file (its base is 0 here): it ends 104 ms later.
    let late = record(&alone, &audio, 50, TrackTimes::default());
    assert_eq!(fmp4_read::scan(&late).unwrap().end_ms(), 3104);
}

#[test]
fn g711_round_trip() {
    for codec in [AudioCodec::Pcma, AudioCodec::Pcmu] {
        let tracks = Tracks { video: Some(h264_track(90000)), audio: Some(audio(codec, 8000, 1)), metadata: None };
        let frames = interleave(&tracks, video_frames(0, 25, 3600), audio_frames(7, 50, 160, 160, None));
        let (scan, _) = round_trip(&tracks, &frames, 30);
        // The last G.711 frame lasts what its bytes hold: 160 samples.
        let last = scan.parts.last().unwrap();
        assert_eq!(last.end.audio, Some(50 * 160));
    }
    // G.711 at 16 kHz stereo keeps its rate and channels.
    let tracks = Tracks { video: None, audio: Some(audio(AudioCodec::Pcmu, 16000, 2)), metadata: None };
    round_trip(&tracks, &audio_frames(0, 10, 320, 640, None), 4);
}

#[test]
fn video_only_and_audio_only_round_trip() {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: None, metadata: None };
    round_trip(&tracks, &video_frames(0, 24, 3000), 12);
    let tracks = Tracks { video: None, audio: Some(aac_track()), metadata: None };
    round_trip(&tracks, &audio_frames(0, 24, 1024, 5, None), 5);
}

/// RTMP's millisecond clocks become 90 kHz and the sample rate: times come back within the
/// rounding of one tick.
#[test]
fn millisecond_clocks_are_rescaled() {
    let aac = match aac_track() {
        TrackInfo::Audio { codec, config, sample_rate, channels, .. } => {
            TrackInfo::Audio { codec, config, sample_rate, channels, clock_rate: 1000 }
        }
        v => v,
    };
    let tracks = Tracks { video: Some(h264_track(1000)), audio: Some(aac), metadata: None };
    let frames = interleave(&tracks, video_frames(1000, 30, 33), audio_frames(1000, 43, 23, 4, None));
    let base = TrackTimes { video: Some(1000), audio: Some(1000) };
    let file = record(&tracks, &frames, 10, base);
    let scan = fmp4_read::scan(&file).unwrap();
    let back = read_back(&scan, &file, TrackTimes::default());
    for k in [TrackKind::Video, TrackKind::Audio] {
        let ts = f64::from(scan.layout.get(k).unwrap().timescale);
        let got = of_kind(&back, k);
        let want: Vec<_> = frames.iter().filter(|f| f.kind == k).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g.1 as f64 / ts * 1000.0 - (w.dts - 1000) as f64).abs() <= 0.5, "{k:?} dts");
            assert!((g.2 as f64 / ts * 1000.0 - (w.pts - 1000) as f64).abs() <= 1.0, "{k:?} pts");
        }
    }
}

/// A file cut at every byte: before the end of its init segment it is an error; after, it
/// scans to the end of its last whole part, and the parts it lists are the file's first ones.
#[test]
fn truncated_at_every_byte() {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: Some(aac_track()), metadata: None };
    let frames = interleave(&tracks, video_frames(0, 12, 3000), audio_frames(0, 18, 1024, 3, None));
    let (whole, file) = round_trip(&tracks, &frames, 8);
    assert_eq!(whole.parts.len(), 4);
    let ends: Vec<u64> = std::iter::once(whole.init_len).chain(whole.parts.iter().map(|p| p.offset + p.len)).collect();
    for cut in 0..=file.len() {
        let r = fmp4_read::scan(&file[..cut]);
        if (cut as u64) < whole.init_len {
            assert_eq!(r, Err(ReadError::IncompleteInit { len: cut as u64 }), "cut at {cut}");
            continue;
        }
        let s = r.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let good = *ends.iter().filter(|e| **e <= cut as u64).max().unwrap();
        assert_eq!(s.good_len, good, "cut at {cut}");
        assert_eq!(s.parts[..], whole.parts[..s.parts.len()], "cut at {cut}");
        assert_eq!(s.parts.last().map_or(whole.init_len, |p| p.offset + p.len), good);
        let clean = ends.contains(&(cut as u64));
        assert_eq!(s.end, if clean { End::Clean } else { End::Truncated }, "cut at {cut}");
    }
}

/// The scanner asks for box headers and moofs only: never a byte of an mdat's payload.
#[test]
fn scanner_reads_no_media_data() {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: Some(aac_track()), metadata: None };
    let video: Vec<Arc<Frame>> = video_frames(0, 40, 3000)
        .iter()
        .map(|f| Frame::new(f.kind, f.dts, f.pts, f.keyframe, Bytes::from(vec![7u8; 5000])))
        .collect();
    let frames = interleave(&tracks, video, audio_frames(0, 60, 1024, 300, None));
    let (whole, file) = round_trip(&tracks, &frames, 20);
    let mut scanner = Scanner::new(file.len() as u64);
    let mut read = 0;
    while let Some((at, len)) = scanner.wanted() {
        for p in &whole.parts {
            let payload = p.offset + p.moof_len + 8..p.offset + p.len;
            let wanted = at..at + len as u64;
            assert!(wanted.end <= payload.start || wanted.start >= payload.end, "{wanted:?} reads {payload:?}");
        }
        read += len;
        scanner.handle_input(&file[at as usize..at as usize + len]).unwrap();
    }
    assert_eq!(scanner.finish().unwrap(), whole);
    assert!(read * 10 < file.len(), "read {read} of {} bytes", file.len());
}

fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(body);
    v
}

fn init_of_h264() -> Vec<u8> {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: None, metadata: None };
    fmp4::recording_init(&tracks).unwrap().to_vec()
}

#[test]
fn garbage_is_refused() {
    assert_eq!(fmp4_read::scan(b""), Err(ReadError::IncompleteInit { len: 0 }));
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
    assert!(matches!(fmp4_read::scan(png), Err(ReadError::Malformed { offset: 0, .. })));
    // A plain MP4 (moov with sample tables, no mvex) is not a recording.
    let plain = [mp4_box(b"ftyp", b"isom\0\0\0\0"), mp4_box(b"moov", &mp4_box(b"mvhd", &[0; 100]))].concat();
    assert!(matches!(fmp4_read::scan(&plain), Err(ReadError::Unsupported { .. })));
    // A moof before the moov.
    let early = [mp4_box(b"ftyp", b"isom\0\0\0\0"), mp4_box(b"moof", &[])].concat();
    assert!(matches!(fmp4_read::scan(&early), Err(ReadError::Malformed { offset: 16, .. })));
    // Bytes after the init segment that are not a part: the file is damaged there.
    let init = init_of_h264();
    let mut damaged = init.clone();
    damaged.extend_from_slice(b"\0\0\0\x10garbage!garbage!");
    let s = fmp4_read::scan(&damaged).unwrap();
    assert!(matches!(s.end, End::Damaged(ReadError::Malformed { offset, .. }) if offset == init.len() as u64));
    assert_eq!(s.good_len, init.len() as u64);
    // A moof followed by something other than its mdat.
    let tracks = Tracks { video: Some(h264_track(90000)), audio: None, metadata: None };
    let part =
        fmp4::recording_part(1, &tracks, TrackTimes::default(), &video_frames(0, 3, 3000), TrackTimes::default());
    let moof_len = u32::from_be_bytes(part[..4].try_into().unwrap()) as usize;
    let mut bad = init.clone();
    bad.extend_from_slice(&part[..moof_len]);
    bad.extend_from_slice(&mp4_box(b"free", &[0; 8]));
    assert!(matches!(fmp4_read::scan(&bad).unwrap().end, End::Damaged(_)));
    // read_part refuses what is not a part.
    let layout = fmp4_read::scan(&init).unwrap().layout;
    assert!(fmp4_read::read_part(&layout, &Bytes::from_static(b"\0\0\0\x08mdat")).is_err());
    assert!(fmp4_read::read_part(&layout, &Bytes::copy_from_slice(&part[..moof_len + 3])).is_err());
    assert!(fmp4_read::read_part(&layout, &part.slice(..part.len() - 1)).is_err());
    assert_eq!(fmp4_read::read_part(&layout, &part).unwrap().len(), 3);
}

#[test]
fn init_too_large() {
    let mut file = mp4_box(b"ftyp", b"isom\0\0\0\0");
    file.extend_from_slice(&((MAX_INIT_SIZE + 9) as u32).to_be_bytes());
    file.extend_from_slice(b"moov");
    assert!(matches!(fmp4_read::scan(&file), Err(ReadError::TooLarge { what: "moov", .. })));
}

#[test]
fn moof_too_large() {
    let mut file = init_of_h264();
    file.extend_from_slice(&((MAX_MOOF_SIZE + 1) as u32).to_be_bytes());
    file.extend_from_slice(b"moof");
    file.resize(file.len() + 100, 0);
    let s = fmp4_read::scan(&file).unwrap();
    assert!(matches!(s.end, End::Damaged(ReadError::TooLarge { what: "moof", .. })), "{:?}", s.end);
}

#[test]
fn mdat_too_large() {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: None, metadata: None };
    let part =
        fmp4::recording_part(1, &tracks, TrackTimes::default(), &video_frames(0, 1, 3000), TrackTimes::default());
    let moof_len = u32::from_be_bytes(part[..4].try_into().unwrap()) as usize;
    let mut file = init_of_h264();
    file.extend_from_slice(&part[..moof_len]);
    file.extend_from_slice(&((MAX_PART_DATA + 9) as u32).to_be_bytes());
    file.extend_from_slice(b"mdat");
    file.resize(file.len() + 100, 0);
    let s = fmp4_read::scan(&file).unwrap();
    assert!(matches!(s.end, End::Damaged(ReadError::TooLarge { what: "mdat", .. })), "{:?}", s.end);
}

/// A moof of a few bytes claiming four billion samples, each of the track's default size.
#[test]
fn samples_too_many() {
    let file = init_of_h264();
    let tfhd = mp4_box(b"tfhd", &[0, 0x02, 0, 0x10, 0, 0, 0, 1, 0, 0, 0, 0]);
    let tfdt = mp4_box(b"tfdt", &[0; 8]);
    let trun = mp4_box(b"trun", &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let traf = mp4_box(b"traf", &[tfhd, tfdt, trun].concat());
    let moof = mp4_box(b"moof", &[mp4_box(b"mfhd", &[0, 0, 0, 0, 0, 0, 0, 1]), traf].concat());
    let mut bad = file.clone();
    bad.extend_from_slice(&moof);
    bad.extend_from_slice(&mp4_box(b"mdat", &[]));
    let s = fmp4_read::scan(&bad).unwrap();
    assert!(
        matches!(s.end, End::Damaged(ReadError::TooLarge { what: "samples in a moof", max, .. }) if max == MAX_PART_SAMPLES as u64),
        "{:?}",
        s.end
    );
    // With per-sample sizes, more samples than the trun has entries for.
    let trun = mp4_box(b"trun", &[0, 0, 0x02, 0, 0, 0, 0, 3, 0, 0, 0, 1]);
    let traf =
        mp4_box(b"traf", &[mp4_box(b"tfhd", &[0, 0x02, 0, 0, 0, 0, 0, 1]), mp4_box(b"tfdt", &[0; 8]), trun].concat());
    let moof = mp4_box(b"moof", &[mp4_box(b"mfhd", &[0, 0, 0, 0, 0, 0, 0, 1]), traf].concat());
    let mut bad = file;
    bad.extend_from_slice(&moof);
    bad.extend_from_slice(&mp4_box(b"mdat", &[0; 3]));
    assert!(matches!(fmp4_read::scan(&bad).unwrap().end, End::Damaged(ReadError::Malformed { .. })));
}

/// Sample data that points outside the part's mdat is refused by the scan, not at playback.
#[test]
fn sample_outside_mdat() {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: None, metadata: None };
    let part =
        fmp4::recording_part(1, &tracks, TrackTimes::default(), &video_frames(0, 2, 3000), TrackTimes::default());
    let mut part = part.to_vec();
    // Shrink the mdat by one byte: the last sample now ends past it.
    let moof_len = u32::from_be_bytes(part[..4].try_into().unwrap()) as usize;
    let mdat_len = u32::from_be_bytes(part[moof_len..moof_len + 4].try_into().unwrap()) - 1;
    part[moof_len..moof_len + 4].copy_from_slice(&mdat_len.to_be_bytes());
    part.pop();
    let mut file = init_of_h264();
    file.extend_from_slice(&part);
    let s = fmp4_read::scan(&file).unwrap();
    assert!(matches!(s.end, End::Damaged(ReadError::Malformed { .. })), "{:?}", s.end);
    assert!(s.parts.is_empty());
    let layout = s.layout;
    assert!(fmp4_read::read_part(&layout, &Bytes::from(part)).is_err());
}

/// Publisher timestamps anywhere in i64 never panic the writer, and what it writes scans:
/// a part whose times a reader can hold reads back whole, one whose times are past
/// MAX_MEDIA_TIME_US is refused (Malformed), never read with wrapped times.
#[test]
fn extreme_timestamps() {
    let tracks = Tracks { video: Some(h264_track(1000)), audio: Some(aac_track()), metadata: None };
    let extremes = [i64::MIN, -1, 0, 1, i64::MAX];
    let mut frames = Vec::new();
    for (i, dts) in extremes.iter().enumerate() {
        for pts in extremes {
            let kind = if i % 2 == 0 { TrackKind::Video } else { TrackKind::Audio };
            frames.push(Frame::new(kind, *dts, pts, i == 0, Bytes::new()));
        }
    }
    let init = fmp4::recording_init(&tracks).unwrap().to_vec();
    let (mut clean, mut refused) = (0, 0);
    for base in [None, Some(i64::MIN), Some(0), Some(i64::MAX)] {
        for next in [None, Some(i64::MIN), Some(i64::MAX)] {
            let t = |v| TrackTimes { video: v, audio: v };
            let part = fmp4::recording_part(1, &tracks, t(base), &frames, t(next));
            let mut file = init.clone();
            file.extend_from_slice(&part);
            let s = fmp4_read::scan(&file).unwrap();
            match &s.end {
                End::Clean => {
                    clean += 1;
                    assert_eq!(s.parts.len(), 1);
                    let frames = fmp4_read::read_part(&s.layout, &part).unwrap();
                    assert_eq!(frames.len(), 25);
                    let max = fmp4_read::max_media_ticks(1000);
                    assert!(frames.iter().all(|f| (0..=max).contains(&f.dts)), "base {base:?}");
                }
                End::Damaged(ReadError::Malformed { .. }) => {
                    refused += 1;
                    assert!(s.parts.is_empty());
                    assert!(fmp4_read::read_part(&s.layout, &part).is_err());
                }
                e => panic!("base {base:?} next {next:?}: {e:?}"),
            }
        }
    }
    assert!(clean >= 3 && refused >= 3, "{clean} read, {refused} refused");
}

/// A box with a 64-bit size between parts is skipped, its size read in a second step.
#[test]
fn large_size_box_between_parts() {
    let tracks = Tracks { video: Some(h264_track(90000)), audio: None, metadata: None };
    let mut file = init_of_h264();
    let mut free = vec![0, 0, 0, 1];
    free.extend_from_slice(b"free");
    free.extend_from_slice(&24u64.to_be_bytes());
    free.extend_from_slice(&[0xee; 8]);
    file.extend_from_slice(&free);
    let part_at = file.len();
    file.extend_from_slice(&fmp4::recording_part(
        1,
        &tracks,
        TrackTimes::default(),
        &video_frames(0, 3, 3000),
        TrackTimes::default(),
    ));
    let s = fmp4_read::scan(&file).unwrap();
    assert_eq!((s.parts.len(), s.parts[0].offset, s.end.clone()), (1, part_at as u64, End::Clean));
    for cut in part_at - 24..part_at {
        let s = fmp4_read::scan(&file[..cut]).unwrap();
        assert_eq!((s.parts.len(), s.end), (0, if cut == part_at - 24 { End::Clean } else { End::Truncated }));
    }
}

/// A tfdt or durations past MAX_MEDIA_TIME_US (in the track's ticks) are refused: a time
/// that would wrap when rescaled to µs never reaches a reader.
#[test]
fn times_past_the_latest_a_file_may_state() {
    use ferrocast_media::fmp4_read::{MAX_MEDIA_TIME_US, max_media_ticks};
    let file = init_of_h264();
    let layout = fmp4_read::scan(&file).unwrap().layout;
    let max = max_media_ticks(90000);
    assert_eq!(max, MAX_MEDIA_TIME_US / 1_000_000 * 90000 + (MAX_MEDIA_TIME_US % 1_000_000) * 90000 / 1_000_000);
    let moof = |tfdt: u64, duration: u32| {
        // One sample of 1 byte with its duration, flags default (sync).
        let tfhd = mp4_box(b"tfhd", &[0, 0x02, 0, 0, 0, 0, 0, 1]);
        let mut t = vec![1, 0, 0, 0];
        t.extend_from_slice(&tfdt.to_be_bytes());
        let tfdt = mp4_box(b"tfdt", &t);
        let mut r = vec![0, 0, 0x03, 0x01, 0, 0, 0, 1];
        r.extend_from_slice(&0u32.to_be_bytes()); // data offset, patched below
        r.extend_from_slice(&duration.to_be_bytes());
        r.extend_from_slice(&1u32.to_be_bytes());
        let trun = mp4_box(b"trun", &r);
        let traf = mp4_box(b"traf", &[tfhd, tfdt, trun].concat());
        mp4_box(b"moof", &[mp4_box(b"mfhd", &[0, 0, 0, 0, 0, 0, 0, 1]), traf].concat())
    };
    let ok = fmp4_read::part_samples(&layout, &moof(max as u64 - 10, 10)).unwrap();
    assert_eq!(ok[0].dts, max - 10);
    for (tfdt, duration) in [(max as u64 + 1, 0), (max as u64 - 10, 11), (i64::MAX as u64, 1), (u64::MAX, 1)] {
        let e = fmp4_read::part_samples(&layout, &moof(tfdt, duration));
        assert!(matches!(e, Err(ReadError::Malformed { .. })), "tfdt {tfdt} + {duration}: {e:?}");
    }
}
