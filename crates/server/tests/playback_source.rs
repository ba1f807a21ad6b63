//! The playback source (`vod::source::Source`) over real files: the recording of the clip
//! (three files made by our recorder) and MP4 files made by ffmpeg (progressive and
//! fragmented). Frames are counted against ffprobe's count of the files; seeks land on the
//! keyframe at or before; keyframes() and keyframe() agree with the files; damaged files are
//! errors and deleted ones Gone.

mod common;
#[path = "common/playback.rs"]
mod playback;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocast::config::{HubConfig, RecordConfig, VodConfig};
use ferrocast::hub::Hub;
use ferrocast::paths::PathTable;
use ferrocast::record;
use ferrocast::vod::source::{Next, Source, SourceError, Timed};
use ferrocast::vod::{Playback, Target};
use ferrocast_media::TrackKind;
use playback::{clip_file, media_dir, recorded_whole as recorded};

/// Playback over the recordings in `dir` and the files in [`media_dir`], once its index is open.
async fn playback_of(dir: &Path) -> Arc<Playback> {
    let rec = record::start(
        Hub::new(HubConfig::default()),
        RecordConfig { dir: dir.to_owned(), ..Default::default() },
        PathTable::new([]).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while rec.index().is_none() {
        assert!(Instant::now() < deadline, "the index of {dir:?} did not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Playback::new(rec, VodConfig { dir: media_dir() })
}

/// ffprobe's packets of a file's stream (`v` or `a`): (dts seconds, size, keyframe).
fn probe(file: &Path, stream: &str) -> Vec<(f64, usize, bool)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            stream,
            "-show_entries",
            "packet=dts_time,size,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].starts_with('K'))
        })
        .collect()
}

/// The recording's files, oldest first.
fn recording_files(dir: &Path, path: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(path))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    files.sort();
    files
}

/// Every frame from the position to the end: (video, audio), checking order on the way.
fn drain(s: &mut Source) -> (Vec<Timed>, Vec<Timed>) {
    let (mut video, mut audio) = (Vec::<Timed>::new(), Vec::<Timed>::new());
    let mut first = true;
    loop {
        match s.next().unwrap() {
            Next::End => break,
            Next::Batch(b) => {
                assert!(!first || b.tracks.is_some(), "the first batch states its tracks");
                first = false;
                assert!(!b.frames.is_empty());
                for f in b.frames {
                    let track = if f.frame.kind == TrackKind::Video { &mut video } else { &mut audio };
                    if let Some(last) = track.last() {
                        // Not strictly: the recorder may write two audio frames at one time.
                        assert!(f.dts_us >= last.dts_us, "in decode order: {} then {}", last.dts_us, f.dts_us);
                    }
                    track.push(f);
                }
            }
        }
    }
    (video, audio)
}

#[tokio::test(flavor = "multi_thread")]
async fn recording_batches_cross_files_with_every_frame() {
    let rec = recorded().await;
    let playback = playback_of(&rec.dir).await;
    let files = recording_files(&rec.dir, &rec.path);
    assert!(files.len() >= 3);
    let expect_v: usize = files.iter().map(|f| probe(f, "v").len()).sum();
    let expect_a: usize = files.iter().map(|f| probe(f, "a").len()).sum();
    let target = Target::Recording { path: rec.path.clone(), start_us: rec.start_us, end_us: None };
    let mut s = Source::open(&playback, &target).unwrap();
    assert!(s.is_clock());
    assert_eq!(s.start_us(), rec.start_us as i64);
    assert!(s.end_us().is_some_and(|e| (e - rec.end_us as i64).abs() < 1000), "{:?} {}", s.end_us(), rec.end_us);
    assert!(s.tracks().video.is_some() && s.tracks().audio.is_some());
    let (video, audio) = drain(&mut s);
    assert_eq!((video.len(), audio.len()), (expect_v, expect_a), "every frame of the files, once");
    assert!(video[0].frame.keyframe);
    // A window: frames of [start + 5 s, start + 15 s) only, from the keyframe at 5 s.
    let from = rec.start_us + 5_000_000;
    let target = Target::Recording { path: rec.path.clone(), start_us: from, end_us: Some(from + 10_000_000) };
    let mut s = Source::open(&playback, &target).unwrap();
    let (video, _) = drain(&mut s);
    let first = video[0].dts_us - rec.start_us as i64;
    assert!(video[0].frame.keyframe && (4_000_000..=5_000_000).contains(&first), "starts at {first}");
    assert!(video.last().unwrap().dts_us < (from + 10_000_000) as i64);
    assert!((240..=276).contains(&video.len()), "about 10 s of 25 fps: {}", video.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn recording_seeks_and_keyframes_match_the_files() {
    let rec = recorded().await;
    let playback = playback_of(&rec.dir).await;
    let target = Target::Recording { path: rec.path.clone(), start_us: rec.start_us, end_us: None };
    let mut s = Source::open(&playback, &target).unwrap();
    let end = s.end_us().unwrap();
    let keys = s.keyframes(rec.start_us as i64, end, 10_000).unwrap();
    // The files' keyframes, per ffprobe: as many, with the same sizes as read alone.
    let files = recording_files(&rec.dir, &rec.path);
    let mut sizes: Vec<usize> = files.iter().flat_map(|f| probe(f, "v")).filter(|p| p.2).map(|p| p.1).collect();
    assert_eq!(keys.len(), sizes.len(), "one keyframe a part here (GOP and parts of 1 s): {keys:?}");
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    let mut ours: Vec<usize> = Vec::new();
    for &k in &keys {
        let t = s.keyframe(k).unwrap().expect("a keyframe where keyframes() says");
        assert!(t.frame.keyframe && t.dts_us == k && t.frame.kind == TrackKind::Video);
        ours.push(t.frame.data.len());
    }
    sizes.sort();
    ours.sort();
    assert_eq!(ours, sizes);
    assert_eq!(s.keyframes(keys[3], keys[6], 100).unwrap(), keys[3..6].to_vec());
    assert_eq!(s.keyframes(keys[0], end, 2).unwrap().len(), 2);
    // Seeks: to the keyframe at or before, in any file; before the start: the first.
    for at in [keys[2] + 500_000, keys[12], keys[12] - 1, keys[25] + 10, rec.start_us as i64 - 5_000_000] {
        let k = s.seek(at).unwrap().expect("inside the recording");
        let want = keys.iter().rev().find(|&&x| x <= at).copied().unwrap_or(keys[0]);
        assert_eq!(k, want, "seek to {at}");
        let Next::Batch(b) = s.next().unwrap() else { panic!("frames after a seek") };
        assert!(b.tracks.is_some(), "a batch after a seek states its tracks");
        let v = b.frames.iter().find(|f| f.frame.kind == TrackKind::Video).unwrap();
        assert!(v.frame.keyframe && v.dts_us == k);
        assert!(b.frames.iter().all(|f| f.dts_us >= k));
    }
    assert_eq!(s.seek(end).unwrap(), None, "at the end");
    assert_eq!(s.seek(end + 1_000_000).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_recording_in_the_range_is_not_found() {
    let rec = recorded().await;
    let playback = playback_of(&rec.dir).await;
    for (path, start, end) in [
        ("cams/nobody", rec.start_us, None),
        (rec.path.as_str(), rec.start_us - 60_000_000, Some(rec.start_us - 30_000_000)),
        (rec.path.as_str(), rec.end_us + 60_000_000, None),
    ] {
        let target = Target::Recording { path: path.into(), start_us: start, end_us: end };
        assert!(matches!(Source::open(&playback, &target), Err(SourceError::NotFound)), "{path} {start}");
    }
    let missing = Target::File(media_dir().join("missing.mp4"));
    assert!(matches!(Source::open(&playback, &missing), Err(SourceError::NotFound)));
}

fn check_file(playback: &Playback, file: &Path) {
    let (pv, pa) = (probe(file, "v"), probe(file, "a"));
    let mut s = Source::open(playback, &Target::File(file.to_owned())).unwrap();
    assert!(!s.is_clock());
    assert_eq!(s.start_us(), 0);
    let end = s.end_us().unwrap();
    assert!((9_900_000..=10_100_000).contains(&end), "{file:?}: {end}");
    let (video, audio) = drain(&mut s);
    assert_eq!((video.len(), audio.len()), (pv.len(), pa.len()), "{file:?}: every packet");
    let sizes = |t: &[Timed]| t.iter().map(|f| f.frame.data.len()).collect::<Vec<_>>();
    assert_eq!(sizes(&video), pv.iter().map(|p| p.1).collect::<Vec<_>>());
    assert_eq!(sizes(&audio), pa.iter().map(|p| p.1).collect::<Vec<_>>());
    // GOP 1 s from 0: keyframes at whole seconds.
    let keys = s.keyframes(0, end, 100).unwrap();
    assert_eq!(keys.len(), pv.iter().filter(|p| p.2).count());
    assert_eq!(keys[5], 5_000_000);
    for (at, want) in [(5_500_000, 5_000_000), (5_000_000, 5_000_000), (4_999_999, 4_000_000), (-7, 0)] {
        assert_eq!(s.seek(at).unwrap(), Some(want), "{file:?}: seek to {at}");
        let Next::Batch(b) = s.next().unwrap() else { panic!("frames after a seek") };
        assert!(b.tracks.is_some());
        assert!(b.frames[0].frame.keyframe && b.frames.iter().all(|f| f.dts_us >= want));
        let span = b.frames.last().unwrap().dts_us - b.frames[0].dts_us;
        assert!(span <= 1_000_000, "about a second a batch: {span}");
    }
    assert_eq!(s.seek(end).unwrap(), None);
    let k = s.keyframe(keys[3]).unwrap().unwrap();
    assert_eq!(k.frame.data.len(), pv.iter().filter(|p| p.2).nth(3).unwrap().1);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_progressive_and_fragmented() {
    let rec = recorded().await;
    let playback = playback_of(&rec.dir).await;
    check_file(&playback, &clip_file("src_plain.mp4", 10, &[]));
    check_file(&playback, &clip_file("src_faststart.mp4", 10, &["-movflags", "+faststart"]));
    check_file(&playback, &clip_file("src_frag.mp4", 10, &["-movflags", "frag_keyframe+empty_moov"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_files_are_errors() {
    let rec = recorded().await;
    let playback = playback_of(&rec.dir).await;
    let plain = std::fs::read(clip_file("src_plain.mp4", 10, &[])).unwrap();
    let fast = std::fs::read(clip_file("src_faststart.mp4", 10, &["-movflags", "+faststart"])).unwrap();
    let mut garbage_moov = fast.clone();
    for b in &mut garbage_moov[60..3000] {
        *b = 0x5a;
    }
    let cases: [(&str, Vec<u8>); 4] = [
        ("cut_no_moov.mp4", plain[..plain.len() / 2].to_vec()),
        ("cut_in_data.mp4", fast[..fast.len() / 2].to_vec()),
        ("garbage_moov.mp4", garbage_moov),
        ("not_mp4.mp4", b"hello, this is no video".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = media_dir().join(name);
        std::fs::write(&path, bytes).unwrap();
        match Source::open(&playback, &Target::File(path)) {
            Err(SourceError::Malformed { .. }) => {}
            Err(e) => panic!("{name}: {e}"),
            Ok(_) => panic!("{name} opened"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_while_played_is_gone() {
    let rec = recorded().await;
    // A copy: the other tests play the recording itself.
    let copy = media_dir().join("recordings-gone");
    let _ = std::fs::remove_dir_all(&copy);
    let status = Command::new("cp").arg("-r").arg(&rec.dir).arg(&copy).status().unwrap();
    assert!(status.success());
    let playback = playback_of(&copy).await;
    let target = Target::Recording { path: rec.path.clone(), start_us: rec.start_us, end_us: None };
    let mut s = Source::open(&playback, &target).unwrap();
    assert!(matches!(s.next().unwrap(), Next::Batch(_)));
    for f in recording_files(&copy, &rec.path) {
        std::fs::remove_file(f).unwrap();
    }
    assert!(matches!(s.next(), Err(SourceError::Gone)));
    // A file.
    let file = media_dir().join("gone.mp4");
    std::fs::copy(clip_file("src_plain.mp4", 10, &[]), &file).unwrap();
    let mut s = Source::open(&playback, &Target::File(file.clone())).unwrap();
    assert!(matches!(s.next().unwrap(), Next::Batch(_)));
    std::fs::remove_file(&file).unwrap();
    assert!(matches!(s.next(), Err(SourceError::Gone)));
}

/// Frames of an MP4 file by decode time across tracks: (kind, dts, pts, keyframe, data, µs).
fn frames_of(file: &Path) -> (ferrocast_media::Tracks, Vec<(Arc<ferrocast_media::Frame>, i64)>) {
    let tracks = ferrocast_media::mp4::read_file(&bytes::Bytes::from(std::fs::read(file).unwrap())).unwrap();
    let mut t = ferrocast_media::Tracks::default();
    let mut all = Vec::new();
    for track in tracks {
        let clock = track.info.clock_rate();
        for f in &track.frames {
            all.push((f.clone(), ferrocast_media::rescale(f.dts, clock, 1_000_000)));
        }
        match track.info.kind() {
            TrackKind::Video => t.video = Some(track.info),
            TrackKind::Audio => t.audio = Some(track.info),
        }
    }
    all.sort_by_key(|f| f.1);
    (t, all)
}

/// Drains to End, going on from where the last call stopped; the frames read: (video, audio).
fn read_to_end(s: &mut Source) -> (usize, usize) {
    let mut n = (0, 0);
    while let Next::Batch(b) = s.next().unwrap() {
        for f in b.frames {
            if f.frame.kind == TrackKind::Video {
                n.0 += 1;
            } else {
                n.1 += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn open_ended_recording_reads_parts_written_meanwhile() {
    use ferrocast::paths::PathSettings;
    let dir = media_dir().join("recordings-live");
    let _ = std::fs::remove_dir_all(&dir);
    let (tracks, frames) = frames_of(&clip_file("src_plain.mp4", 10, &[]));
    let hub = Hub::new(HubConfig { reader_queue_frames: 8192, ..Default::default() });
    let paths = PathTable::new([("cams/*".to_owned(), PathSettings { record: true, ..Default::default() })]).unwrap();
    let rec = record::start(
        hub.clone(),
        RecordConfig { dir: dir.clone(), segment_duration_ms: 60_000, part_duration_ms: 1000, ..Default::default() },
        paths,
    );
    let playback = Playback::new(rec.clone(), VodConfig { dir: media_dir() });
    let publisher = hub.publish("cams/live").unwrap();
    publisher.set_tracks(tracks);
    // Pushes the clip's next second (the recorder may join a little late: it starts at a
    // keyframe, so what counts is what the file holds).
    let mut second = 0i64;
    let push_second = |second: &mut i64| {
        for (f, _) in frames.iter().filter(|f| f.1 >= *second * 1_000_000 && f.1 < (*second + 1) * 1_000_000) {
            publisher.push(f.kind, f.dts, f.pts, f.keyframe, f.data.clone());
        }
        *second += 1;
    };
    let written = |rec: &record::Recordings| {
        let seg = rec.index().and_then(|ix| ix.list("cams/live", None, None).ok()).and_then(|s| s.first().cloned())?;
        let n = rec.parts(&seg)?.len();
        Some((seg, n))
    };
    // Until two parts are written (a second pushed at a time; each ends the part before).
    let deadline = Instant::now() + Duration::from_secs(60);
    let seg = loop {
        if let Some((seg, n)) = written(&rec)
            && n >= 2
        {
            break seg;
        }
        assert!(Instant::now() < deadline, "no parts were written");
        if second < 4 {
            push_second(&mut second);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(seg.writing);
    let target = Target::Recording { path: "cams/live".into(), start_us: seg.start_us, end_us: None };
    let mut s = Source::open(&playback, &target).unwrap();
    assert_eq!(s.end_us(), None, "no end asked and the path records");
    let first = read_to_end(&mut s);
    assert!(first.0 >= 25, "the written parts: {first:?}");
    // More parts are written: the same reader goes on through them.
    let (_, before) = written(&rec).unwrap();
    for _ in 0..3 {
        push_second(&mut second);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(&rec).is_none_or(|(_, n)| n < before + 2) {
        assert!(Instant::now() < deadline, "more parts were never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let more = read_to_end(&mut s);
    assert!(more.0 >= 50, "parts written meanwhile: {more:?}");
    // The publisher leaves: the file is closed with its last part, and the reader ends with it.
    drop(publisher);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rec.index().and_then(|ix| ix.list("cams/live", None, None).ok()).is_none_or(|s| s.iter().any(|s| s.writing)) {
        assert!(Instant::now() < deadline, "the file was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = read_to_end(&mut s);
    assert!(s.end_us().is_some(), "closed: the recording has an end");
    assert!(matches!(s.next().unwrap(), Next::End));
    let total = (first.0 + more.0 + last.0, first.1 + more.1 + last.1);
    let files = recording_files(&dir, "cams/live");
    let in_file = (probe(&files[0], "v").len(), probe(&files[0], "a").len());
    assert_eq!(total, in_file, "every frame of the file, once");
}

#[tokio::test(flavor = "multi_thread")]
async fn codec_parameters_change_between_files() {
    use axum::http::{Method, Uri};
    use ferrocast::paths::PathSettings;
    let dir = media_dir().join("recordings-change");
    let _ = std::fs::remove_dir_all(&dir);
    let small = playback::ffmpeg_make(
        "src_small.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=sample_rate=48000",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-t",
            "4",
        ],
    );
    let hub = Hub::new(HubConfig { reader_queue_frames: 8192, republish_grace_ms: 0, ..Default::default() });
    let paths = PathTable::new([("cams/*".to_owned(), PathSettings { record: true, ..Default::default() })]).unwrap();
    let rec = record::start(
        hub.clone(),
        RecordConfig { dir: dir.clone(), segment_duration_ms: 60_000, part_duration_ms: 1000, ..Default::default() },
        paths,
    );
    let playback = Playback::new(rec.clone(), VodConfig { dir: media_dir() });
    let segments = |rec: &record::Recordings| {
        rec.index().and_then(|ix| ix.list("cams/change", None, None).ok()).unwrap_or_default()
    };
    // Two publishes of clips of other sizes: two files, the second with other parameters.
    for (n, clip) in [clip_file("src_plain.mp4", 10, &[]), small].iter().enumerate() {
        let (tracks, frames) = frames_of(clip);
        let publisher = hub.publish("cams/change").unwrap();
        publisher.set_tracks(tracks);
        // A second at a time until the recorder has a file (it may join a moment late).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut second = 0;
        while segments(&rec).len() <= n {
            assert!(Instant::now() < deadline, "publish {n} was never recorded");
            for (f, _) in frames.iter().filter(|f| f.1 >= second * 1_000_000 && f.1 < (second + 1) * 1_000_000) {
                publisher.push(f.kind, f.dts, f.pts, f.keyframe, f.data.clone());
            }
            second += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (f, _) in frames.iter().filter(|f| f.1 >= second * 1_000_000 && f.1 < 3_000_000) {
            publisher.push(f.kind, f.dts, f.pts, f.keyframe, f.data.clone());
        }
        drop(publisher);
        let deadline = Instant::now() + Duration::from_secs(60);
        while segments(&rec).iter().any(|s| s.writing) || hub.has_stream("cams/change") {
            assert!(Instant::now() < deadline, "publish {n}: the file was never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let segs = segments(&rec);
    assert_eq!(segs.len(), 2, "{segs:?}");
    // The source says where the parameters change: the first batch of the second file.
    let target = Target::Recording { path: "cams/change".into(), start_us: segs[0].start_us, end_us: None };
    let mut s = Source::open(&playback, &target).unwrap();
    let mut changes = Vec::new();
    while let Next::Batch(b) = s.next().unwrap() {
        if let Some(t) = b.tracks {
            changes.push((b.frames[0].dts_us, t));
        }
    }
    assert_eq!(changes.len(), 2, "stated at the start and where they change");
    assert_eq!(changes[1].0, segs[1].start_us as i64);
    assert_ne!(changes[0].1.video, changes[1].1.video);
    // The HLS playlist: a discontinuity and a new init segment there.
    let uri: Uri = format!("/cams/change/index.m3u8?start={}", playback::format_us(segs[0].start_us)).parse().unwrap();
    let r = ferrocast::vod::hls_vod::respond(&playback, &Method::GET, &uri).await.expect("an HLS VOD URL");
    assert_eq!(r.status(), 200);
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    let maps: Vec<&str> = text.lines().filter(|l| l.starts_with("#EXT-X-MAP:")).collect();
    assert_eq!(maps.len(), 2, "{text}");
    let after = text.split("#EXT-X-DISCONTINUITY\n").nth(1).unwrap();
    assert!(after.starts_with("#EXT-X-MAP:"), "the new map follows the discontinuity: {text}");
    let mut inits = Vec::new();
    for m in maps {
        let name = m.trim_start_matches("#EXT-X-MAP:URI=\"").trim_end_matches('"');
        let uri: Uri = format!("/cams/change/{name}").parse().unwrap();
        let r = ferrocast::vod::hls_vod::respond(&playback, &Method::GET, &uri).await.unwrap();
        assert_eq!(r.status(), 200);
        inits.push(axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap());
    }
    assert_ne!(inits[0], inits[1], "two init segments, of the two parameter sets");
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_recordings_are_errors() {
    let rec = recorded().await;
    let copy = media_dir().join("recordings-damaged");
    let _ = std::fs::remove_dir_all(&copy);
    assert!(Command::new("cp").arg("-r").arg(&rec.dir).arg(&copy).status().unwrap().success());
    let files = recording_files(&copy, &rec.path);
    // The second file cut in half (its table still lists every part), the first one's moov
    // overwritten with garbage.
    let second = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &second[..second.len() / 2]).unwrap();
    let mut first = std::fs::read(&files[0]).unwrap();
    for b in &mut first[40..400] {
        *b = 0xa5;
    }
    std::fs::write(&files[0], &first).unwrap();
    let playback = playback_of(&copy).await;
    let target = Target::Recording { path: rec.path.clone(), start_us: rec.start_us, end_us: None };
    assert!(matches!(Source::open(&playback, &target), Err(SourceError::Malformed { .. })), "garbage moov");
    // From the second file on: its first half plays, then an error (not a panic, not a hang).
    let from = rec.start_us + 12_000_000;
    let target = Target::Recording { path: rec.path.clone(), start_us: from, end_us: None };
    let mut s = Source::open(&playback, &target).unwrap();
    let mut batches = 0;
    let err = loop {
        match s.next() {
            Ok(Next::Batch(_)) => batches += 1,
            Ok(Next::End) => panic!("a cut file ended cleanly after {batches} batches"),
            Err(e) => break e,
        }
    };
    assert!(batches >= 2, "{batches} batches before the cut");
    assert!(matches!(err, SourceError::Malformed { .. }), "{err}");
}

/// More recording files in a window than the index lists at once (1024): every one is a span
/// and the HLS playlist reaches the last (review finding: a playlist stopped at the 1024th
/// file yet ended with EXT-X-ENDLIST).
#[tokio::test(flavor = "multi_thread")]
async fn spans_page_past_the_index_page() {
    use axum::http::{Method, Uri};
    const FILES: u64 = 1030;
    let rec = recorded().await;
    let dir = media_dir().join("recordings-many");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(Command::new("cp").arg("-r").arg(&rec.dir).arg(&dir).status().unwrap().success());
    let into = dir.join(&rec.path);
    // The recording's three files, then its first file and part table linked under more
    // names 11 s apart (times in a file are from its start: each is a recording of its own),
    // put in the index as the recorder would (rebuilding an index from so many files takes
    // long in a debug build).
    let first = recording_files(&dir, &rec.path)[0].clone();
    let first_idx = first.with_extension("idx");
    assert!(first_idx.exists(), "the fixture's part table");
    let playback = playback_of(&dir).await;
    let index = playback.recordings.index().unwrap();
    let listed = index.list(&rec.path, None, None).unwrap();
    let (seg0, start) = (listed[0].clone(), listed[0].start_us);
    let mut segments = Vec::new();
    for i in listed.len() as u64..FILES {
        let at = start + i * 11_000_000;
        let name = playback::format_us(at).replace(':', "-");
        std::fs::hard_link(&first, into.join(format!("{name}.mp4"))).unwrap();
        std::fs::hard_link(&first_idx, into.join(format!("{name}.idx"))).unwrap();
        let file = format!("{}/{name}.mp4", rec.path);
        segments.push(record::index::Segment { start_us: at, file, ..seg0.clone() });
    }
    index.put_many(&segments).unwrap();
    let target = Target::Recording { path: rec.path.clone(), start_us: start, end_us: None };
    let mut s = Source::open(&playback, &target).unwrap();
    let spans = s.spans(2000).unwrap();
    assert_eq!(spans.len(), FILES as usize);
    assert!(spans.windows(2).all(|w| w[0].end_us <= w[1].start_us), "in order, each once");
    let last_end = spans.last().unwrap().end_us;
    let uri: Uri = format!("/{}/index.m3u8?start={}", rec.path, playback::format_us(start)).parse().unwrap();
    let r = ferrocast::vod::hls_vod::respond(&playback, &Method::GET, &uri).await.expect("an HLS VOD URL");
    assert_eq!(r.status(), 200);
    let body = axum::body::to_bytes(r.into_body(), 64 << 20).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let last = text.lines().rfind(|l| l.ends_with(".m4s")).unwrap();
    assert!(last.ends_with(&format!("_{last_end}.m4s")), "the playlist reaches the last file: {last}");
    assert!(!text.contains("# ferrocast: more than"), "not truncated");
}
