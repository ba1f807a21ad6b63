//! MP4 files by index against ffprobe: for files ffmpeg writes progressive (moov at the end,
//! and first with `+faststart`) and fragmented (`frag_keyframe+empty_moov`, with and without
//! `default_base_moof`), every track's sample table has ffprobe's packets: count, sizes,
//! sync flags and decode-time steps; each sample's bytes read by its offset are the packet
//! ffmpeg demuxes. `mp4::read_file` (built on the index) reads the same frames.
//!
//! These tests need ffmpeg and ffprobe (5.1) with libx264 and libx265, and fail when they are
//! missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use ferrocast_media::mp4_index::{self, Movie};
use ferrocast_media::{TrackKind, mp4};

fn run(tool: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required by this test and could not be run: {e}"));
    assert!(out.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn make(name: &str, codec: &str, extra: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocast-mp4-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let mut args = vec![
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=sample_rate=48000",
        "-c:v",
        codec,
        "-bf",
        "2",
        "-g",
        "25",
        "-preset",
        "veryfast",
        "-c:a",
        "aac",
        "-t",
        "3",
    ];
    if codec == "libx265" {
        args.extend(["-tag:v", "hvc1", "-x265-params", "log-level=error"]);
    }
    args.extend(extra);
    args.push(out.to_str().unwrap());
    run("ffmpeg", &args);
    out
}

/// ffprobe's packets of one stream: (dts, size, keyframe), in decode order.
fn packets(file: &Path, stream: &str) -> Vec<(i64, u32, bool)> {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            stream,
            "-show_entries",
            "packet=dts,size,flags",
            "-of",
            "csv=p=0",
            file.to_str().unwrap(),
        ],
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].starts_with('K'))
        })
        .collect()
}

/// The raw packets ffmpeg demuxes from a stream, concatenated.
fn raw(file: &Path, stream: &str) -> Vec<u8> {
    run("ffmpeg", &["-v", "error", "-i", file.to_str().unwrap(), "-map", stream, "-c", "copy", "-f", "data", "-"])
}

fn check(file: PathBuf, fragmented: bool) {
    let data = std::fs::read(&file).unwrap();
    let movie: Movie = mp4_index::index(&data).unwrap();
    assert_eq!(movie.fragmented, fragmented);
    for (kind, stream, map) in [(TrackKind::Video, "v", "0:v"), (TrackKind::Audio, "a", "0:a")] {
        let table = movie.table(kind).unwrap_or_else(|| panic!("{file:?}: no {kind:?} track"));
        let probe = packets(&file, stream);
        let s = table.samples();
        assert_eq!(s.len(), probe.len(), "{file:?} {kind:?}: sample count");
        for (i, (sample, p)) in s.iter().zip(&probe).enumerate() {
            assert_eq!(sample.size(), p.1, "{file:?} {kind:?} sample {i}: size");
            assert_eq!(sample.keyframe(), p.2, "{file:?} {kind:?} sample {i}: sync");
            assert_eq!(sample.dts - s[0].dts, p.0 - probe[0].0, "{file:?} {kind:?} sample {i}: dts step");
        }
        // Each sample's bytes, read by offset, are the packets ffmpeg demuxes (video packets
        // pass through `-f data` as they are in the file: length-prefixed NAL units).
        let mut ours = Vec::new();
        for x in s {
            ours.extend_from_slice(&data[x.offset as usize..][..x.size() as usize]);
        }
        if kind == TrackKind::Audio {
            assert_eq!(ours, raw(&file, map), "{file:?}: audio bytes by offset");
        } else {
            assert_eq!(ours.len(), raw(&file, map).len(), "{file:?}: video bytes by offset");
        }
    }
    // The whole-file reader is built on the index: the same frames.
    let tracks = mp4::read_file(&Bytes::from(data)).unwrap();
    for t in &tracks {
        let table = movie.table(t.info.kind()).unwrap();
        assert_eq!(t.frames.len(), table.samples().len());
        assert!(t.frames.iter().zip(table.samples()).all(|(f, s)| f.dts == s.dts && f.data.len() == s.size() as usize));
    }
}

#[test]
fn progressive_files_match_ffprobe() {
    check(make("plain.mp4", "libx264", &[]), false);
    check(make("faststart.mp4", "libx264", &["-movflags", "+faststart"]), false);
    check(make("hevc.mp4", "libx265", &[]), false);
}

#[test]
fn fragmented_files_match_ffprobe() {
    check(make("frag.mp4", "libx264", &["-movflags", "frag_keyframe+empty_moov"]), true);
    check(make("frag_moof.mp4", "libx264", &["-movflags", "frag_keyframe+empty_moov+default_base_moof"]), true);
}

#[test]
fn cut_and_garbled_files_are_errors() {
    let file = make("cut.mp4", "libx264", &["-movflags", "+faststart"]);
    let data = std::fs::read(&file).unwrap();
    // Cut inside the moov, and cut before the last samples' data (moov first): errors.
    for len in [40, 1000, data.len() - 100] {
        assert!(mp4_index::index(&data[..len]).is_err(), "cut at {len}");
    }
    // Garbage over the moov's tables: an error or a table, never a panic.
    let mut bad = data.clone();
    for b in bad[40..2000].iter_mut() {
        *b = 0xff;
    }
    assert!(mp4_index::index(&bad).is_err());
}
