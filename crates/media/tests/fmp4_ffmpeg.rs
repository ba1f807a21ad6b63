//! Recordings that a real player reads: frames taken from files ffmpeg made are written with
//! `fmp4::recording_init` + `recording_part` in parts of about a second, then ffmpeg decodes
//! the file with no error and ffprobe counts every frame that went in, per track; cut in the
//! middle of its last part and truncated where `fmp4_read::scan` says, it decodes cleanly too.
//!
//! These tests need ffmpeg and ffprobe (5.1) with libx264, libx265 and libopus, and fail when
//! they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use ferrocast_media::fmp4::{self, TrackTimes};
use ferrocast_media::fmp4_read::{self, End};
use ferrocast_media::{AudioCodec, Frame, TrackInfo, TrackKind, Tracks, mp4};

/// A directory for one test's files, removed when the test passes.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ferrocast-fmp4-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs a tool and returns its stdout; panics (the test fails) when it is missing or fails.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required by this test and could not be run: {e}"));
    assert!(out.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes a file with ffmpeg.
fn ffmpeg(args: &[&str], out: &Path) {
    let mut all = vec!["-v", "error", "-y"];
    all.extend_from_slice(args);
    all.push(out.to_str().unwrap());
    run("ffmpeg", &all);
}

/// ffmpeg decodes the whole file with nothing on stderr.
fn decodes_cleanly(file: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", file.to_str().unwrap(), "-f", "null", "-"])
        .output()
        .expect("ffmpeg is required by this test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "ffmpeg decoding {file:?}: {stderr}");
}

/// Frames per track that ffprobe decodes: (video, audio).
fn frame_counts(file: &Path) -> (usize, usize) {
    let csv = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,nb_read_frames",
            "-of",
            "csv=p=0",
            file.to_str().unwrap(),
        ],
    );
    let (mut video, mut audio) = (0, 0);
    for line in csv.lines() {
        let mut f = line.split(',');
        let (kind, n) = (f.next().unwrap_or_default(), f.next().unwrap_or_default().trim());
        let n: usize = n.parse().unwrap_or_else(|_| panic!("ffprobe: {line}"));
        match kind {
            "video" => video += n,
            "audio" => audio += n,
            other => panic!("ffprobe: stream of type {other}"),
        }
    }
    (video, audio)
}

/// Where each track ends, in seconds, as ffprobe sees it (start time plus duration).
fn track_ends(file: &Path) -> Vec<(String, f64)> {
    let csv = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,start_time,duration",
            "-of",
            "csv=p=0",
            file.to_str().unwrap(),
        ],
    );
    csv.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let num = |i: usize| {
                f.get(i).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or_else(|| panic!("ffprobe: {line}"))
            };
            (f[0].to_string(), num(1) + num(2))
        })
        .collect()
}

fn ms(tracks: &Tracks, f: &Frame) -> i64 {
    let t = if f.kind == TrackKind::Video { &tracks.video } else { &tracks.audio };
    t.as_ref().unwrap().to_ms(f.dts)
}

/// A recording of these frames (each track in decode order) in parts that start at a video
/// keyframe once the part before is a second long (or at a second, without video).
fn record(tracks: &Tracks, frames: Vec<Arc<Frame>>) -> Vec<u8> {
    record_with(tracks, frames, true)
}

/// Like [`record`]; with `lookahead` each part knows each track's next frame, without it only
/// the frame that starts the next part (as a recorder writing a part as soon as it can knows).
fn record_with(tracks: &Tracks, frames: Vec<Arc<Frame>>, lookahead: bool) -> Vec<u8> {
    let mut frames = frames;
    frames.sort_by_key(|f| ms(tracks, f));
    let first = |k| frames.iter().find(|f| f.kind == k).map(|f| f.dts);
    let base = TrackTimes { video: first(TrackKind::Video), audio: first(TrackKind::Audio) };
    let mut parts: Vec<Vec<Arc<Frame>>> = vec![];
    let mut start = None;
    for f in &frames {
        let cut = match start {
            None => true,
            Some(s) => {
                ms(tracks, f) - s >= 1000 && (tracks.video.is_none() || (f.kind == TrackKind::Video && f.keyframe))
            }
        };
        if cut {
            parts.push(vec![]);
            start = Some(ms(tracks, f));
        }
        parts.last_mut().unwrap().push(f.clone());
    }
    let mut file = fmp4::recording_init(tracks).unwrap().to_vec();
    for (i, part) in parts.iter().enumerate() {
        let later: Vec<&Arc<Frame>> = match lookahead {
            true => parts[i + 1..].iter().flatten().collect(),
            false => parts.get(i + 1).and_then(|p| p.first()).into_iter().collect(),
        };
        let next_of = |k| later.iter().find(|f| f.kind == k).map(|f| f.dts);
        let next = TrackTimes { video: next_of(TrackKind::Video), audio: next_of(TrackKind::Audio) };
        file.extend_from_slice(&fmp4::recording_part(i as u32 + 1, tracks, base, part, next));
    }
    file
}

/// Records, has ffmpeg decode and count, then cuts the file in its last part.
fn check_recording(dir: &TempDir, name: &str, tracks: &Tracks, frames: Vec<Arc<Frame>>) {
    let count = |k| frames.iter().filter(|f| f.kind == k).count();
    let (videos, audios) = (count(TrackKind::Video), count(TrackKind::Audio));
    let file = record(tracks, frames);
    let path = dir.path(&format!("{name}.mp4"));
    std::fs::write(&path, &file).unwrap();
    decodes_cleanly(&path);
    assert_eq!(frame_counts(&path), (videos, audios), "{name}: frames per track");
    // Both tracks of the 4 s source end together.
    let ends = track_ends(&path);
    assert_eq!(ends.len(), 2, "{name}: {ends:?}");
    assert!((ends[0].1 - ends[1].1).abs() < 0.1 && (ends[0].1 - 4.0).abs() < 0.1, "{name}: {ends:?}");
    let scan = fmp4_read::scan(&file).unwrap();
    assert_eq!(scan.end, End::Clean);
    assert!(scan.parts.len() >= 3, "{name}: {} parts", scan.parts.len());
    let sum = |f: fn(&fmp4_read::PartInfo) -> u32| scan.parts.iter().map(|p| f(p) as usize).sum::<usize>();
    assert_eq!((sum(|p| p.video_samples), sum(|p| p.audio_samples)), (videos, audios));

    // A crash in the middle of the last part: the scan stops at the part before.
    let last = scan.parts.last().unwrap();
    let cut = &file[..(last.offset + last.len / 2) as usize];
    let cut_scan = fmp4_read::scan(cut).unwrap();
    assert_eq!((cut_scan.end.clone(), cut_scan.good_len), (End::Truncated, last.offset));
    let path = dir.path(&format!("{name}-cut.mp4"));
    std::fs::write(&path, &cut[..cut_scan.good_len as usize]).unwrap();
    decodes_cleanly(&path);
    let want = (videos - last.video_samples as usize, audios - last.audio_samples as usize);
    assert_eq!(frame_counts(&path), want, "{name}: frames per track after the cut");
}

/// The tracks and frames of an MP4 file, through `mp4::read_file`.
fn read_mp4(path: &Path) -> (Tracks, Vec<Arc<Frame>>) {
    let data = Bytes::from(std::fs::read(path).unwrap());
    let mut tracks = Tracks::default();
    let mut frames = vec![];
    for t in mp4::read_file(&data).unwrap() {
        match t.info.kind() {
            TrackKind::Video => tracks.video = Some(t.info),
            TrackKind::Audio => tracks.audio = Some(t.info),
        }
        frames.extend(t.frames);
    }
    (tracks, frames)
}

/// The tracks and frames of a fragmented MP4 file, through `fmp4_read`.
fn read_fmp4(path: &Path) -> (Tracks, Vec<Arc<Frame>>) {
    let data = Bytes::from(std::fs::read(path).unwrap());
    let scan = fmp4_read::scan(&data).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(scan.end, End::Clean, "{path:?}");
    let mut frames = vec![];
    for p in &scan.parts {
        frames.extend(
            fmp4_read::read_part(&scan.layout, &data.slice(p.offset as usize..(p.offset + p.len) as usize)).unwrap(),
        );
    }
    (scan.tracks, frames)
}

const VIDEO: &[&str] = &["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "4"];
const SINE_48K: &[&str] = &["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "4"];
const H264: &[&str] = &["-c:v", "libx264", "-bf", "2", "-g", "25", "-pix_fmt", "yuv420p"];

#[test]
fn h264_with_b_frames_and_aac() {
    let dir = TempDir::new("h264-aac");
    let src = dir.path("src.mp4");
    ffmpeg(&[VIDEO, SINE_48K, H264, &["-c:a", "aac", "-b:a", "64k"]].concat(), &src);
    let (tracks, frames) = read_mp4(&src);
    assert!(frames.iter().any(|f| f.kind == TrackKind::Video && f.cts() != 0), "the source has B-frames");
    check_recording(&dir, "h264-aac", &tracks, frames);
}

#[test]
fn h265_and_aac() {
    let dir = TempDir::new("h265-aac");
    let src = dir.path("src.mp4");
    let x265 = ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=25:bframes=2", "-pix_fmt", "yuv420p"];
    ffmpeg(&[VIDEO, SINE_48K, &x265, &["-c:a", "aac", "-b:a", "64k"]].concat(), &src);
    let (tracks, frames) = read_mp4(&src);
    assert!(matches!(tracks.video, Some(TrackInfo::Video { codec: ferrocast_media::VideoCodec::H265, .. })));
    check_recording(&dir, "h265-aac", &tracks, frames);
}

/// Opus, taken from a fragmented MP4 that ffmpeg wrote (so `fmp4_read` reads ffmpeg's
/// fragments too: trex and tfhd defaults, first-sample flags), recorded with H.264.
#[test]
fn h264_and_opus() {
    let dir = TempDir::new("h264-opus");
    let src = dir.path("src.mp4");
    let frag = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "1000000"];
    ffmpeg(&[VIDEO, SINE_48K, H264, &["-c:a", "libopus", "-b:a", "48k"], &frag].concat(), &src);
    let (tracks, frames) = read_fmp4(&src);
    assert!(matches!(tracks.audio, Some(TrackInfo::Audio { codec: AudioCodec::Opus, clock_rate: 48000, .. })));
    // ffmpeg's own count of what it wrote agrees with what fmp4_read read.
    let count = |k| frames.iter().filter(|f| f.kind == k).count();
    assert_eq!(frame_counts(&src), (count(TrackKind::Video), count(TrackKind::Audio)));
    check_recording(&dir, "h264-opus", &tracks, frames);
}

/// G.711 as a camera sends it over RTP: 20 ms frames of 160 samples at 8 kHz, here encoded by
/// ffmpeg, recorded with H.264.
#[test]
fn h264_and_g711() {
    let dir = TempDir::new("h264-g711");
    let src = dir.path("src.mp4");
    ffmpeg(&[VIDEO, H264].concat(), &src);
    let (video, video_frames) = read_mp4(&src);
    for (codec, format) in [(AudioCodec::Pcmu, "mulaw"), (AudioCodec::Pcma, "alaw")] {
        let raw = dir.path(&format!("audio.{format}"));
        let sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000", "-t", "4"];
        ffmpeg(&[&sine[..], &["-c:a", &format!("pcm_{format}"), "-f", format]].concat(), &raw);
        let bytes = Bytes::from(std::fs::read(&raw).unwrap());
        assert_eq!(bytes.len(), 32000);
        let audio: Vec<Arc<Frame>> = (0..bytes.len() / 160)
            .map(|i| {
                Frame::new(TrackKind::Audio, i as i64 * 160, i as i64 * 160, true, bytes.slice(i * 160..(i + 1) * 160))
            })
            .collect();
        let track = TrackInfo::Audio { codec, config: Bytes::new(), sample_rate: 8000, channels: 1, clock_rate: 8000 };
        let tracks = Tracks { video: video.video.clone(), audio: Some(track), metadata: None };
        let frames = video_frames.iter().cloned().chain(audio).collect();
        check_recording(&dir, &format!("h264-{format}"), &tracks, frames);
    }
}

/// ffmpeg's own fragmented MOV with G.711 (QuickTime `ulaw` and `alaw` sample entries) reads
/// back with every packet ffprobe counts.
#[test]
fn reads_ffmpeg_fragmented_g711() {
    let dir = TempDir::new("ffmpeg-g711");
    for (codec, name) in [(AudioCodec::Pcmu, "pcm_mulaw"), (AudioCodec::Pcma, "pcm_alaw")] {
        let src = dir.path(&format!("{name}.mov"));
        let sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000", "-t", "2"];
        let frag = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "500000"];
        ffmpeg(&[&sine[..], &["-c:a", name], &frag, &["-f", "mov"]].concat(), &src);
        let (tracks, frames) = read_fmp4(&src);
        let want = TrackInfo::Audio { codec, config: Bytes::new(), sample_rate: 8000, channels: 1, clock_rate: 8000 };
        assert_eq!(tracks.audio, Some(want));
        assert_eq!(frame_counts(&src), (0, frames.len()), "{name}");
        assert_eq!(frames.iter().map(|f| f.data.len()).sum::<usize>(), 16000, "{name}: two seconds of samples");
    }
}

/// Video pauses for two seconds while audio goes on (video resumes at a keyframe): the gap
/// stays where it was, both tracks end together, and every frame decodes.
#[test]
fn video_pause_keeps_its_gap() {
    let dir = TempDir::new("pause");
    let src = dir.path("src.mp4");
    ffmpeg(&[VIDEO, SINE_48K, H264, &["-c:a", "aac", "-b:a", "64k"]].concat(), &src);
    let (tracks, frames) = read_mp4(&src);
    let Some(TrackInfo::Video { clock_rate, .. }) = tracks.video else { unreachable!() };
    let secs = |f: &Frame| f.dts as f64 / f64::from(clock_rate);
    // GOPs of one second: the video of seconds 1 and 2 is missing.
    let kept: Vec<Arc<Frame>> =
        frames.into_iter().filter(|f| f.kind == TrackKind::Audio || !(1.0..3.0).contains(&secs(f))).collect();
    let count = |k| kept.iter().filter(|f| f.kind == k).count();
    let (videos, audios) = (count(TrackKind::Video), count(TrackKind::Audio));
    let path = dir.path("pause.mp4");
    std::fs::write(&path, record_with(&tracks, kept, false)).unwrap();
    decodes_cleanly(&path);
    assert_eq!(frame_counts(&path), (videos, audios));
    let ends = track_ends(&path);
    assert!((ends[0].1 - ends[1].1).abs() < 0.1 && (ends[0].1 - 4.0).abs() < 0.1, "{ends:?}");
    // The first video frame after the pause is decoded at 3 s.
    let csv = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=dts_time",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    let dts: Vec<f64> = csv.lines().map(|l| l.trim().parse().unwrap()).collect();
    let jump = dts.windows(2).find(|w| w[1] - w[0] > 0.5).unwrap_or_else(|| panic!("no gap: {dts:?}"));
    assert!((jump[1] - jump[0] - 2.04).abs() < 0.01, "{jump:?}");
}
