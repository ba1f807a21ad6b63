//! Recording under retention rules and faults, with the real binary and ffmpeg: retention by
//! age, by size per path and overall, and by free space (through the injected free-space
//! probe `FERROCAST_TEST_RECORD_FREE_BYTES`), always oldest first and never the file being
//! written; a full disk (`FERROCAST_TEST_RECORD_FULL`: every write fails with ENOSPC) stops
//! recording with one error, leaves the file it was writing playable, never disturbs live
//! readers, and recording resumes when space is back; deleting through the API; a recordings
//! directory that cannot be created; and paths that would escape the directory.

mod common;
#[path = "common/record.rs"]
mod record_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ferrocast_rtmp::client::ClientEvent;
use record_common::*;

/// The `[record]` section (1 s files of 250 ms parts unless `keys` say otherwise; no free-space
/// floor unless `keys` set one: the test machine's disk must not decide) and `paths`.
fn config(dir: &Path, keys: &str, paths: &str) -> String {
    let mut record = format!("[record]\ndir = \"{}\"\n{keys}\n", dir.display());
    for (key, default) in [("segment_duration_ms", "1000"), ("part_duration_ms", "250"), ("min_free_bytes", "0")] {
        if !keys.contains(key) {
            record.push_str(&format!("{key} = {default}\n"));
        }
    }
    format!("{record}\n{paths}\n")
}

/// Waits until `path` lists at least `n` finished segments; gives the listing.
async fn finished_segments(server: &RecServer, path: &str, n: usize) -> Vec<Seg> {
    let d = Deadline::new(&format!("{n} finished segments of {path}"), 90);
    loop {
        let segs = server.segments(path).await;
        if segs.iter().filter(|s| !s.writing).count() >= n {
            return segs;
        }
        d.tick(format!("{segs:?}")).await;
    }
}

/// The final size of every finished segment seen, by start.
fn note_finished(seen: &mut BTreeMap<String, u64>, segs: &[Seg]) {
    for s in segs.iter().filter(|s| !s.writing) {
        seen.insert(s.start.clone(), s.bytes);
    }
}

/// Every listed segment has its file, with the listed size once finished; no other file
/// (but one newer than the listing: recording may go on).
fn assert_listing_matches_disk(dir: &Path, path: &str, segs: &[Seg]) {
    for s in segs {
        let file = s.file(dir, path);
        let len = std::fs::metadata(&file).map(|m| m.len());
        assert!(len.is_ok(), "{path}: listed segment {} has no file {}", s.start, file.display());
        if !s.writing {
            assert_eq!(len.unwrap(), s.bytes, "{path}: listed size of {}", s.start);
        }
    }
    let listed: Vec<_> = segs.iter().map(|s| s.file(dir, path)).collect();
    let files: Vec<_> =
        mp4_files(&dir.join(path)).into_iter().filter(|f| listed.last().is_none_or(|last| f <= last)).collect();
    assert_eq!(files, listed, "{path}: files on disk are the listed segments");
}

/// Retention by age applies to the paths it is set for: their files go, oldest first, from
/// the disk and from the API, while another path keeps everything.
#[tokio::test(flavor = "multi_thread")]
async fn retention_by_age_per_path() {
    let work = temp_dir("age");
    let dir = work.join("rec");
    let paths = "[paths.\"age/**\"]\nrecord = true\nrecord_max_age_ms = 3000\n[paths.\"keep/**\"]\nrecord = true\n";
    let server = RecServer::start(&work, &config(&dir, "", paths), &[]);
    let mut publishers =
        vec![publish(test_flv(), &server.rtmp_url("age/cam")), publish(test_flv(), &server.rtmp_url("keep/cam"))];
    let first_age = finished_segments(&server, "age/cam", 1).await[0].clone();
    let first_keep = finished_segments(&server, "keep/cam", 1).await[0].clone();
    let first_file = first_age.file(&dir, "age/cam");
    assert!(first_file.exists(), "{}", first_file.display());

    // While recording goes on, the oldest file of age/cam goes: from the disk and the API.
    let mut kept: BTreeMap<String, u64> = BTreeMap::new();
    let mut aged: BTreeMap<u64, u64> = BTreeMap::new();
    let d = Deadline::new("the first age/cam segment to go", 90);
    let after = loop {
        let segs = server.segments("age/cam").await;
        aged.extend(segs.iter().filter(|s| !s.writing).map(|s| (s.start_us(), s.end_us())));
        note_finished(&mut kept, &server.segments("keep/cam").await);
        if !first_file.exists() && !segs.iter().any(|s| s.start == first_age.start) {
            break segs;
        }
        d.tick(format!("{segs:?}")).await;
    };
    assert!(!after.is_empty(), "recording goes on: the newest segments stay");
    assert!(after.iter().all(|s| s.start > first_age.start), "the oldest went first: {after:?}");

    // The publishers stop: every age/cam file goes once 3 s old, keep/cam keeps all of them.
    publishers.clear();
    let d = Deadline::new("every age/cam file to go", 90);
    loop {
        let segs = server.segments("age/cam").await;
        aged.extend(segs.iter().filter(|s| !s.writing).map(|s| (s.start_us(), s.end_us())));
        let files = mp4_files(&dir.join("age/cam"));
        note_finished(&mut kept, &server.segments("keep/cam").await);
        if segs.is_empty() && files.is_empty() {
            break;
        }
        d.tick(format!("listed {segs:?}, on disk {files:?}")).await;
    }
    let (status, v) = request("GET", &server.api("age/cam")).await;
    assert_eq!(status, 404, "no recordings of age/cam left: {v}");
    let paths = server.paths().await;
    assert!(paths.iter().all(|(p, _)| p != "age/cam"), "age/cam no longer listed: {paths:?}");
    assert!(paths.iter().any(|(p, _)| p == "keep/cam"), "keep/cam listed: {paths:?}");

    let keep = server.segments("keep/cam").await;
    assert_eq!(keep[0].start, first_keep.start, "keep/cam kept its first segment: {keep:?}");
    for (start, bytes) in &kept {
        assert!(keep.iter().any(|s| &s.start == start && s.bytes == *bytes), "keep/cam lost {start}: {keep:?}");
    }
    assert!(kept.len() >= 3, "keep/cam recorded for a while: {kept:?}");
    assert_listing_matches_disk(&dir, "keep/cam", &keep);
    // The log: only age/cam lost files, for their age, oldest first, each once 3 s old.
    let log = server.log();
    let dels = deletions(&log);
    assert_oldest_first(&dels);
    assert!(dels.iter().all(|d| d.path == "age/cam" && d.reason == "Age"), "{dels:#?}");
    let mut checked = 0;
    for d in &dels {
        if let Some(end) = aged.get(&d.start_us) {
            assert!(d.at_us + 2000 >= end + 3_000_000, "deleted {} ms after its end: {d:?}", (d.at_us - end) / 1000);
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked} deletions of segments seen finished");
    assert!(!log.contains("panicked"), "{}", tail(&log, 50));
    let _ = std::fs::remove_dir_all(&work);
}

/// Per path, retention deleted the oldest files first.
fn assert_oldest_first(dels: &[Deletion]) {
    assert!(!dels.is_empty(), "no deletion logged");
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for d in dels {
        if let Some(prev) = last.insert(&d.path, d.start_us) {
            assert!(prev < d.start_us, "{} deleted out of order: {dels:#?}", d.path);
        }
    }
}

/// Samples the listing of `paths` while their publishers run for `seconds`; gives every
/// finished segment seen (by path, by start: final size) and the largest total seen.
async fn sample_while_recording(
    server: &RecServer,
    paths: &[&str],
    seconds: u64,
) -> (BTreeMap<(String, String), u64>, u64) {
    let mut seen = BTreeMap::new();
    let mut max_total = 0;
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let mut total = 0;
        for p in paths {
            let segs = server.segments(p).await;
            total += segs.iter().map(|s| s.bytes).sum::<u64>();
            for s in segs.iter().filter(|s| !s.writing) {
                seen.insert((p.to_string(), s.start.clone()), s.bytes);
            }
        }
        max_total = max_total.max(total);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    (seen, max_total)
}

/// Checks the state retention by size must leave once nothing is being written: at most
/// `cap` bytes; what was deleted is older than everything left; no more was deleted than
/// needed (the newest deleted segment would not have fit).
fn assert_size_retention(what: &str, cap: u64, seen: &BTreeMap<(String, String), u64>, left: &[(String, Seg)]) {
    let total: u64 = left.iter().map(|(_, s)| s.bytes).sum();
    assert!(total <= cap, "{what}: {total} bytes left, cap {cap}");
    let oldest_left = left.iter().map(|(_, s)| s.start.clone()).min().expect("something left");
    let deleted: Vec<_> =
        seen.iter().filter(|((p, st), _)| !left.iter().any(|(lp, s)| lp == p && &s.start == st)).collect();
    assert!(!deleted.is_empty(), "{what}: nothing was deleted");
    for ((p, start), _) in &deleted {
        assert!(*start < oldest_left, "{what}: {p} {start} deleted while the older {oldest_left} stays");
    }
    let ((_, newest), bytes) = deleted.iter().max_by_key(|((_, st), _)| st.clone()).unwrap();
    assert!(total + **bytes > cap, "{what}: {newest} ({bytes} bytes) was deleted but fits: {total} left, cap {cap}");
}

/// A per-path size cap (`record_max_bytes`): the path's total stays near its cap while
/// recording and ends under it, the oldest files going first; another path is not capped.
#[tokio::test(flavor = "multi_thread")]
async fn retention_by_size_per_path() {
    let work = temp_dir("size");
    let dir = work.join("rec");
    const CAP: u64 = 200_000;
    let paths =
        format!("[paths.\"size/**\"]\nrecord = true\nrecord_max_bytes = {CAP}\n[paths.\"other/**\"]\nrecord = true\n");
    let server = RecServer::start(&work, &config(&dir, "", &paths), &[]);
    let publishers =
        vec![publish(test_flv(), &server.rtmp_url("size/cam")), publish(test_flv(), &server.rtmp_url("other/cam"))];
    finished_segments(&server, "size/cam", 1).await;
    let (seen, max_total) = sample_while_recording(&server, &["size/cam"], 14).await;
    // Between two runs of the rules (every 5 s) recording adds to the total: at most what
    // 5 s (and a few seconds of slack for a loaded machine) bring.
    let rate = test_flv_bytes_per_second();
    assert!(max_total <= CAP + 10 * rate, "size/cam held {max_total} bytes while recording (cap {CAP}, {rate} B/s)");
    let size_during = server.segments("size/cam").await;
    assert!(
        !seen.keys().all(|(_, st)| size_during.iter().any(|s| &s.start == st)),
        "retention deleted while recording: {seen:?}"
    );
    drop(publishers);

    let d = Deadline::new("size/cam at most its cap, nothing being written", 60);
    let left = loop {
        let segs = server.segments("size/cam").await;
        let total: u64 = segs.iter().map(|s| s.bytes).sum();
        if total <= CAP && !segs.is_empty() && segs.iter().all(|s| !s.writing) {
            break segs;
        }
        d.tick(format!("{total} bytes: {segs:?}")).await;
    };
    let mut seen = seen;
    for s in &left {
        seen.insert(("size/cam".into(), s.start.clone()), s.bytes);
    }
    let left_pairs: Vec<_> = left.iter().map(|s| ("size/cam".to_owned(), s.clone())).collect();
    assert_size_retention("size/cam", CAP, &seen, &left_pairs);
    assert_listing_matches_disk(&dir, "size/cam", &left);
    for s in &left {
        assert_eq!(decode_errors(&s.file(&dir, "size/cam")), "", "{} decodes", s.start);
    }
    // The other path kept everything: far more than the cap.
    let other = server.segments("other/cam").await;
    let other_total: u64 = other.iter().map(|s| s.bytes).sum();
    assert!(other_total > 2 * CAP, "other/cam is not capped: {other_total} bytes");
    assert_listing_matches_disk(&dir, "other/cam", &other);
    let paths = server.paths().await;
    let listed = |p: &str| paths.iter().find(|(q, _)| q == p).map(|(_, b)| *b);
    assert_eq!(listed("size/cam"), Some(left.iter().map(|s| s.bytes).sum()), "{paths:?}");
    assert_eq!(listed("other/cam"), Some(other_total), "{paths:?}");
    let dels = deletions(&server.log());
    assert_oldest_first(&dels);
    assert!(dels.iter().all(|d| d.path == "size/cam" && d.reason == "PathBytes"), "{dels:#?}");
    let _ = std::fs::remove_dir_all(&work);
}

/// Bytes per second of the test stream (its FLV size over its 4 s), rounded up.
fn test_flv_bytes_per_second() -> u64 {
    std::fs::metadata(test_flv()).unwrap().len() / 4 + 1
}

/// The global size cap (`[record] max_bytes`): all recordings together end under it, the
/// oldest going first whichever path they belong to.
#[tokio::test(flavor = "multi_thread")]
async fn retention_by_total_size() {
    let work = temp_dir("total");
    let dir = work.join("rec");
    const CAP: u64 = 300_000;
    let server = RecServer::start(
        &work,
        &config(&dir, &format!("max_bytes = {CAP}"), "[paths.\"tot/**\"]\nrecord = true\n"),
        &[],
    );
    let a = publish(test_flv(), &server.rtmp_url("tot/a"));
    finished_segments(&server, "tot/a", 2).await;
    // b starts later: the oldest files overall are a's.
    let b = publish(test_flv(), &server.rtmp_url("tot/b"));
    finished_segments(&server, "tot/b", 1).await;
    let (seen, max_total) = sample_while_recording(&server, &["tot/a", "tot/b"], 12).await;
    let rate = 2 * test_flv_bytes_per_second();
    assert!(max_total <= CAP + 10 * rate, "{max_total} bytes while recording (cap {CAP}, {rate} B/s)");
    drop((a, b));

    let d = Deadline::new("all recordings at most the cap, nothing being written", 60);
    let left = loop {
        let mut left = Vec::new();
        for p in ["tot/a", "tot/b"] {
            left.extend(server.segments(p).await.into_iter().map(|s| (p.to_owned(), s)));
        }
        let total: u64 = left.iter().map(|(_, s)| s.bytes).sum();
        if total <= CAP && !left.is_empty() && left.iter().all(|(_, s)| !s.writing) {
            break left;
        }
        d.tick(format!("{total} bytes: {left:?}")).await;
    };
    let mut seen = seen;
    for (p, s) in &left {
        seen.insert((p.clone(), s.start.clone()), s.bytes);
    }
    assert_size_retention("all recordings", CAP, &seen, &left);
    for p in ["tot/a", "tot/b"] {
        let segs: Vec<Seg> = left.iter().filter(|(q, _)| q == p).map(|(_, s)| s.clone()).collect();
        assert_listing_matches_disk(&dir, p, &segs);
    }
    let total: u64 = server.paths().await.iter().map(|(_, b)| b).sum();
    assert_eq!(total, left.iter().map(|(_, s)| s.bytes).sum::<u64>(), "GET /api/v1/recordings agrees");
    // Oldest first across both paths too.
    let dels = deletions(&server.log());
    assert!(dels.iter().all(|d| d.reason == "TotalBytes"), "{dels:#?}");
    assert!(dels.windows(2).all(|w| w[0].start_us < w[1].start_us), "deleted out of order: {dels:#?}");
    assert!(dels.iter().any(|d| d.path == "tot/a") && dels.iter().any(|d| d.path == "tot/b"), "{dels:#?}");
    let _ = std::fs::remove_dir_all(&work);
}

/// The files of the segments `segs` lists as being written exist. (One missing may have been
/// finished and deleted since the listing: then the listing no longer says it is written.)
async fn assert_writing_files_exist(server: &RecServer, dir: &Path, path: &str, segs: &[Seg]) {
    for s in segs.iter().filter(|s| s.writing) {
        if !s.file(dir, path).exists() {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let now = server.segments(path).await;
            assert!(
                !now.iter().any(|n| n.start == s.start && n.writing),
                "the file being written was deleted: {} ({now:?})",
                s.start
            );
        }
    }
}

/// Free space below `min_free_bytes` (through the injected probe): nothing goes while there is
/// enough; then the oldest go, one run of the rules at a time when one file is enough, and
/// every finished file when nothing is, but never the one being written, and recording goes on.
#[tokio::test(flavor = "multi_thread")]
async fn retention_by_free_space() {
    let work = temp_dir("free");
    let dir = work.join("rec");
    let free = work.join("free-bytes");
    const MIN_FREE: u64 = 1_000_000_000;
    std::fs::write(&free, "1000000000000\n").unwrap();
    let server = RecServer::start(
        &work,
        &config(&dir, &format!("min_free_bytes = {MIN_FREE}"), "[paths.\"cams/**\"]\nrecord = true\n"),
        &[("FERROCAST_TEST_RECORD_FREE_BYTES", &free)],
    );
    let _publisher = publish(test_flv(), &server.rtmp_url("cams/a"));
    // Plenty of space: after 6 s (a run of the rules at least), every segment is still there.
    let mut seen = BTreeMap::new();
    let first = finished_segments(&server, "cams/a", 6).await;
    note_finished(&mut seen, &first);
    assert_eq!(first.iter().filter(|s| !s.writing).count(), seen.len());
    assert!(seen.keys().all(|st| first.iter().any(|s| &s.start == st)), "nothing deleted with plenty of space");

    // One byte short: each run deletes the oldest file, one at a time.
    std::fs::write(&free, format!("{}\n", MIN_FREE - 1)).unwrap();
    let mut deleted: Vec<String> = Vec::new();
    let d = Deadline::new("three deletions, one byte short", 90);
    let mut last = first.clone();
    while deleted.len() < 3 {
        let segs = server.segments("cams/a").await;
        assert_writing_files_exist(&server, &dir, "cams/a", &segs).await;
        let gone: Vec<String> =
            last.iter().filter(|s| !segs.iter().any(|n| n.start == s.start)).map(|s| s.start.clone()).collect();
        for (g, oldest) in gone.iter().zip(&last) {
            assert_eq!(g, &oldest.start, "the oldest go first: {gone:?} of {last:?}");
            assert!(!oldest.writing, "a file being written was deleted");
            assert!(!oldest.file(&dir, "cams/a").exists());
            deleted.push(g.clone());
        }
        note_finished(&mut seen, &segs);
        last = segs;
        d.tick(format!("deleted {deleted:?}")).await;
    }

    // One file per run of the rules: the first deletions are a run (5 s) apart.
    let dels = deletions(&server.log());
    assert!(dels.len() >= 3 && dels.iter().all(|d| d.reason == "FreeSpace"), "{dels:#?}");
    for w in dels[..3].windows(2) {
        assert!(w[1].at_us - w[0].at_us > 2_500_000, "one byte short, one file per run: {dels:#?}");
    }

    // Nothing free: every finished file goes, never the one being written; recording goes on.
    std::fs::write(&free, "0\n").unwrap();
    let at_zero = server.segments("cams/a").await;
    let writing_then: Vec<Seg> = at_zero.iter().filter(|s| s.writing).cloned().collect();
    assert_eq!(writing_then.len(), 1, "{at_zero:?}");
    let d = Deadline::new("every finished file older than the one being written to go", 90);
    loop {
        let segs = server.segments("cams/a").await;
        assert_writing_files_exist(&server, &dir, "cams/a", &segs).await;
        let older_left = segs.iter().filter(|s| s.start < writing_then[0].start).count();
        if older_left == 0 && segs.iter().any(|s| s.start > writing_then[0].start) {
            break;
        }
        d.tick(format!("{segs:?}")).await;
    }
    let dels = deletions(&server.log());
    assert_oldest_first(&dels);
    assert!(dels.iter().all(|d| d.reason == "FreeSpace"), "{dels:#?}");
    let _ = std::fs::remove_dir_all(&work);
}

/// A full disk: recording stops with one clear error, the file being written is closed at its
/// last good part and decodes, no part is written while the disk is full (though the writer
/// retries), a live reader never notices, and recording resumes with a new file once there is
/// space again.
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_stops_recording_and_resumes() {
    let work = temp_dir("full");
    let dir = work.join("rec");
    let marker = work.join("disk-full");
    let server = RecServer::start(
        &work,
        &config(&dir, "segment_duration_ms = 3000", "[paths.\"cams/**\"]\nrecord = true\n"),
        &[("FERROCAST_TEST_RECORD_FULL", &marker)],
    );
    let mut publisher = publish(test_flv(), &server.rtmp_url("cams/a"));
    wait_published(&server, "cams/a").await;
    let reader = FrameCounter::start(&server, "cams/a").await;
    reader.wait_more(60, "before the disk fills").await;
    // A finished file and one being written with a few parts in it.
    let d = Deadline::new("a file being written with parts in it", 90);
    loop {
        let segs = server.segments("cams/a").await;
        if segs.iter().any(|s| !s.writing) && segs.last().is_some_and(|s| s.writing && s.duration >= 1.0) {
            break;
        }
        d.tick(format!("{segs:?}")).await;
    }

    std::fs::write(&marker, "").unwrap();
    let full_at = Instant::now();
    // The file being written is closed at its last good part.
    let d = Deadline::new("recording to stop", 60);
    let stopped = loop {
        let segs = server.segments("cams/a").await;
        if !segs.is_empty() && segs.iter().all(|s| !s.writing) {
            break segs;
        }
        d.tick(format!("{segs:?}")).await;
    };
    assert_listing_matches_disk(&dir, "cams/a", &stopped);
    let cut = stopped.last().unwrap();
    assert!(cut.duration > 0.0, "{cut:?}");
    let cut_file = cut.file(&dir, "cams/a");
    assert_eq!(decode_errors(&cut_file), "", "the file cut by the full disk decodes cleanly");
    let (video, audio) = frame_counts(&cut_file);
    assert!(video > 0 && audio > 0, "{video} video and {audio} audio frames in {}", cut_file.display());
    // Its listed duration is what it holds (30 fps video), within a part.
    let held = video as f64 / 30.0;
    assert!((held - cut.duration).abs() <= 0.25, "{} s listed, {held} s of video in the file", cut.duration);

    // One clear error, while the writer keeps trying (every 5 s) and the reader keeps playing.
    let d = Deadline::new("two retries on the full disk", 60);
    loop {
        let log = server.log();
        let retries = log.lines().filter(|l| l.contains("No space left") && !l.contains(" ERROR ")).count();
        if retries >= 2 {
            break;
        }
        assert!(reader.connected(), "the reader was disconnected");
        d.tick(format!("{retries} retries")).await;
    }
    reader.wait_more(150, "while the disk is full").await;
    let errors = server.error_lines();
    assert_eq!(errors.len(), 1, "one error for a full disk: {:#?}", &errors[..errors.len().min(5)]);
    assert!(
        errors[0].contains("cams/a") && errors[0].contains("No space left") && errors[0].contains("recording stopped"),
        "a clear error naming the path and the cause: {}",
        errors[0]
    );
    // Nothing written while the disk is full.
    let still = server.segments("cams/a").await;
    assert_eq!(still, stopped, "no part written while the disk is full");
    assert_listing_matches_disk(&dir, "cams/a", &still);
    let full_for = full_at.elapsed();

    // Space again: a new file within a retry or two.
    std::fs::remove_file(&marker).unwrap();
    let freed_at = Instant::now();
    let d = Deadline::new("recording to resume", 60);
    let resumed = loop {
        let segs = server.segments("cams/a").await;
        if let Some(new) = segs.iter().find(|s| s.start > cut.start && s.duration > 0.0) {
            break new.clone();
        }
        d.tick(format!("{segs:?}")).await;
    };
    let resumed_after = freed_at.elapsed();
    assert!(resumed.file(&dir, "cams/a").exists());
    assert!(server.log().contains("writing again"), "the log says recording resumed");
    reader.wait_more(60, "after recording resumed").await;
    assert_eq!(server.error_lines().len(), 1, "{:#?}", server.error_lines());
    let log = server.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") && l.contains("record")).collect();
    assert!(warnings.is_empty(), "no warnings besides the one error: {warnings:#?}");

    // Every file, the one cut short included, decodes.
    publisher.0.kill().unwrap();
    let d = Deadline::new("the last file to be closed", 60);
    let last = loop {
        let segs = server.segments("cams/a").await;
        if segs.iter().all(|s| !s.writing) && segs.iter().any(|s| s.start == resumed.start) {
            break segs;
        }
        d.tick(format!("{segs:?}")).await;
    };
    assert_listing_matches_disk(&dir, "cams/a", &last);
    for s in &last {
        assert_eq!(decode_errors(&s.file(&dir, "cams/a")), "", "{} decodes", s.start);
    }
    eprintln!("disk full for {full_for:?}; recording resumed {resumed_after:?} after space came back");
    drop(reader);
    let _ = std::fs::remove_dir_all(&work);
}

/// `DELETE /api/v1/recordings/PATH?start=T`: 204 and the file goes; 404 for a time no
/// segment starts at, or a path with no recordings; 409 for the file being written; 400
/// without a start or with a bad one. (The server listens on loopback only here: that other
/// clients get 403 is for unit tests.)
#[tokio::test(flavor = "multi_thread")]
async fn delete_through_the_api() {
    let work = temp_dir("delete");
    let dir = work.join("rec");
    let server = RecServer::start(&work, &config(&dir, "", "[paths.\"cams/**\"]\nrecord = true\n"), &[]);
    let _publisher = publish(test_flv(), &server.rtmp_url("cams/del"));
    let d = Deadline::new("two finished segments and one being written", 90);
    let segs = loop {
        let segs = server.segments("cams/del").await;
        if segs.iter().filter(|s| !s.writing).count() >= 3 && segs.last().is_some_and(|s| s.writing) {
            break segs;
        }
        d.tick(format!("{segs:?}")).await;
    };
    let url = |start: &str| format!("{}?start={start}", server.api("cams/del"));
    let (first, second) = (&segs[0], &segs[1]);

    let (status, v) = request("DELETE", &url(&first.start)).await;
    assert_eq!(status, 204, "{v}");
    assert!(!first.file(&dir, "cams/del").exists(), "the file is gone");
    let now = server.segments("cams/del").await;
    assert!(!now.iter().any(|s| s.start == first.start), "and not listed: {now:?}");
    let (status, v) = request("DELETE", &url(&first.start)).await;
    assert_eq!((status, v["error"].is_string()), (404, true), "deleted already: {v}");

    // Not a segment start: one millisecond off.
    let ms: u32 = second.start[20..23].parse().unwrap();
    let off = format!("{}{:03}Z", &second.start[..20], if ms < 999 { ms + 1 } else { ms - 1 });
    assert_ne!(off, second.start);
    let (status, v) = request("DELETE", &url(&off)).await;
    assert_eq!((status, v["error"].is_string()), (404, true), "{off}: {v}");
    assert!(second.file(&dir, "cams/del").exists());
    // The start with its colons percent-encoded, as clients send it.
    let (status, v) = request("DELETE", &url(&second.start.replace(':', "%3A"))).await;
    assert_eq!(status, 204, "{v}");
    assert!(!second.file(&dir, "cams/del").exists());
    // The same instant with an offset: +00:00 (its `+` percent-encoded).
    let third = &segs[2];
    let (status, v) = request("DELETE", &url(&third.start.replace('Z', "%2B00:00"))).await;
    assert_eq!(status, 204, "{v}");
    assert!(!third.file(&dir, "cams/del").exists());

    // The file being written.
    let writing = server.segments("cams/del").await.into_iter().find(|s| s.writing).expect("a file being written");
    let (status, v) = request("DELETE", &url(&writing.start)).await;
    assert_eq!((status, v["error"].is_string()), (409, true), "{v}");
    assert!(writing.file(&dir, "cams/del").exists(), "the file being written stays");

    for (q, what) in [
        ("", "no start"),
        ("?start=", "an empty start"),
        ("?start=yesterday", "a bad start"),
        ("?end=2026-01-01T00:00:00Z", "an end only"),
    ] {
        let (status, v) = request("DELETE", &format!("{}{q}", server.api("cams/del"))).await;
        assert_eq!((status, v["error"].is_string()), (400, true), "{what}: {v}");
    }
    let (status, v) = request("DELETE", &format!("{}?start={}", server.api("cams/none"), writing.start)).await;
    assert_eq!((status, v["error"].is_string()), (404, true), "a path with no recordings: {v}");
    let (status, _) = request("DELETE", &server.api("")).await;
    assert_eq!(status, 405, "DELETE of the list of paths");
    // Deletions are logged; the rest is as listed.
    assert!(server.log().contains("deleted through the API"));
    let now = server.segments("cams/del").await;
    assert!(now.iter().all(|s| s.start > third.start), "{now:?}");
    assert_listing_matches_disk(&dir, "cams/del", &now);
    let _ = std::fs::remove_dir_all(&work);
}

/// The error lines of the log that name `dir`.
fn errors_naming(server: &RecServer, dir: &Path) -> Vec<String> {
    let name = dir.display().to_string();
    server.error_lines().into_iter().filter(|l| l.contains(&name)).collect()
}

/// A recordings directory that cannot be created (its parent is a regular file): live
/// streams are served all the same, the log names the directory, and nothing panics.
#[tokio::test(flavor = "multi_thread")]
async fn uncreatable_dir_keeps_live_streams_serving() {
    let work = temp_dir("nodir");
    let blocker = work.join("afile");
    std::fs::write(&blocker, "not a directory").unwrap();
    let dir = blocker.join("recordings");
    let mut server = RecServer::start(&work, &config(&dir, "", "[paths.\"live/**\"]\nrecord = true\n"), &[]);
    let _publisher = publish(test_flv(), &server.rtmp_url("live/cam"));
    wait_published(&server, "live/cam").await;
    let reader = FrameCounter::start(&server, "live/cam").await;
    let probe = probe(&server.flv_url("live/cam"), 3);
    probe.assert_h264_aac(320, 240, 30);
    reader.wait_more(100, "with no recordings directory").await;
    let d = Deadline::new("an error naming the recordings directory", 30);
    while errors_naming(&server, &dir).is_empty() {
        d.tick(tail(&server.log(), 20)).await;
    }
    let (status, v) = request("GET", &server.api("")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["paths"].as_array().map(Vec::len), Some(0), "{v}");
    let (status, _) = request("GET", &server.api("live/cam")).await;
    assert_eq!(status, 404);
    assert!(server.alive(), "the server runs");
    let log = server.log();
    assert!(!log.contains("panicked"), "{}", tail(&log, 50));
    assert!(!dir.exists());
    let _ = std::fs::remove_dir_all(&work);
}

/// Starts a server whose recordings directory cannot be created (its parent is a regular
/// file), with `live/**` recorded and kept 2 s, and publishes `live/cam` for four seconds of
/// stream (sixteen parts the recorder cannot write). Gives the server, the blocking file, the
/// directory, the publisher and a reader.
async fn server_without_dir(name: &str) -> (RecServer, std::path::PathBuf, std::path::PathBuf, Proc, FrameCounter) {
    let work = temp_dir(name);
    let blocker = work.join("afile");
    std::fs::write(&blocker, "not a directory").unwrap();
    let dir = blocker.join("recordings");
    let server = RecServer::start(
        &work,
        &config(&dir, "", "[paths.\"live/**\"]\nrecord = true\nrecord_max_age_ms = 2000\n"),
        &[],
    );
    let publisher = publish(test_flv(), &server.rtmp_url("live/cam"));
    wait_published(&server, "live/cam").await;
    let reader = FrameCounter::start(&server, "live/cam").await;
    reader.wait_more(4 * 70, "with no recordings directory").await;
    (server, blocker, dir, publisher, reader)
}

/// A recordings directory that cannot be created gives one clear error per path, not one per
/// part (issue 15, "Bad input and faults").
#[tokio::test(flavor = "multi_thread")]
async fn uncreatable_dir_logs_one_error() {
    let (server, _blocker, dir, _publisher, _reader) = server_without_dir("nodir-once").await;
    let errors = errors_naming(&server, &dir);
    assert_eq!(
        errors.len(),
        1,
        "one error for the directory, not one per part: {} errors: {:#?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let _ = std::fs::remove_dir_all(server.log_file.parent().unwrap());
}

/// A recordings directory that could not be created is tried again: once it can be, recording
/// starts and the retention rules run.
#[tokio::test(flavor = "multi_thread")]
async fn uncreatable_dir_recording_and_retention_resume() {
    let (server, blocker, dir, _publisher, _reader) = server_without_dir("nodir-retry").await;
    std::fs::remove_file(&blocker).unwrap();
    let first = finished_segments(&server, "live/cam", 1).await[0].clone();
    assert!(first.file(&dir, "live/cam").exists());
    // Files older than 2 s go.
    let d = Deadline::new("retention to delete the first file (kept 2 s)", 60);
    while first.file(&dir, "live/cam").exists() {
        d.tick(format!("{:?}", server.segments("live/cam").await)).await;
    }
    let _ = std::fs::remove_dir_all(server.log_file.parent().unwrap());
}

/// A path whose name would leave the recordings directory cannot be published (over RTMP with
/// our client and ffmpeg, over RTSP), the API refuses it, and nothing is created outside the
/// directory; an ordinary path beside it records.
#[tokio::test(flavor = "multi_thread")]
async fn paths_escaping_the_directory_are_refused() {
    let work = temp_dir("escape");
    let dir = work.join("a/b/rec");
    let server = RecServer::start(&work, &config(&dir, "", "[paths.\"**\"]\nrecord = true\n"), &[]);
    for path in ["x/../../etc", "x/../../../escape", "x/./y", "x/y/..", "x/../x/y"] {
        let mut c = RtmpClient::connect(server.rtmp, path, true).await;
        let mut seen = Vec::new();
        while let Some(ev) = c.next_event(Duration::from_secs(15)).await {
            let end = matches!(&ev, ClientEvent::Status { level, .. } if level == "error");
            let published = matches!(ev, ClientEvent::Publishing);
            seen.push(ev);
            assert!(!published, "{path} was accepted for publishing: {seen:?}");
            if end {
                break;
            }
        }
        assert!(
            seen.iter().any(
                |e| matches!(e, ClientEvent::Status { level, code } if level == "error" && code.contains("BadName"))
            ),
            "{path}: refused as a bad name: {seen:?}"
        );
    }
    // The app itself leaving the directory: the connect is refused.
    let mut c = RtmpClient::connect(server.rtmp, "../x", true).await;
    let mut seen = Vec::new();
    while let Some(ev) = c.next_event(Duration::from_secs(15)).await {
        assert!(!matches!(ev, ClientEvent::Connected | ClientEvent::Publishing), "../x: {ev:?}");
        seen.push(ev);
    }
    // ffmpeg, whatever it makes of the URL.
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-t", "2", "-i"])
        .arg(test_flv())
        .args(["-c", "copy", "-f", "flv", &server.rtmp_url("x/../../etc")])
        .output()
        .expect("ffmpeg");
    assert!(!out.status.success(), "ffmpeg published to x/../../etc");
    // RTSP: ANNOUNCE refused with 400.
    let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
    for path in ["x/../../etc", "x/../y"] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server.rtsp).await.unwrap();
        let req = format!(
            "ANNOUNCE rtsp://{}/{path} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            server.rtsp,
            sdp.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await.expect("an answer").unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("RTSP/1.0 400"), "{path}: {answer}");
    }
    // The API: no listing, no deletion.
    for path in ["x/../../etc", "../rec", "x/%2E%2E/y"] {
        let (status, v) = request("GET", &server.api(path)).await;
        assert!(status == 404 || status == 400, "GET {path}: {status} {v}");
        let (status, v) = request("DELETE", &format!("{}?start=2026-01-01T00:00:00.000Z", server.api(path))).await;
        assert!(status == 404 || status == 400, "DELETE {path}: {status} {v}");
    }

    // An ordinary path records, so the directory is in use: still nothing outside it.
    let publisher = publish(test_flv(), &server.rtmp_url("x/ok"));
    finished_segments(&server, "x/ok", 1).await;
    drop(publisher);
    let outside: Vec<_> = all_files(&work)
        .into_iter()
        .filter(|p| {
            !p.starts_with("a/b/rec") && !["a", "a/b", "ferrocast.toml", "server.log"].contains(&p.to_str().unwrap())
        })
        .collect();
    assert!(outside.is_empty(), "created outside the recordings directory: {outside:?}");
    let inside: Vec<_> = all_files(&dir)
        .into_iter()
        .filter(|p| !p.starts_with("x/ok") && !p.to_str().unwrap().starts_with("index+ferrocast.db"))
        .collect();
    assert_eq!(inside, [Path::new("x")], "nothing but x/ok recorded: {inside:?}");
    assert!(!server.log().contains("panicked"));
    let _ = std::fs::remove_dir_all(&work);
}

/// A publisher arriving while the index is being rebuilt from many files at start (the index
/// gone): its recording is listed with its files, the rebuilt files are all listed, and the
/// byte totals (the API's, and what retention by size counts) are what the files hold.
#[tokio::test(flavor = "multi_thread")]
async fn publishing_while_the_index_is_rebuilt() {
    const COPIES: usize = 10_000;
    let work = temp_dir("rebuild");
    // About 100 MB of copies: gone even when the test fails.
    let _cleanup = RemoveOnDrop(work.clone());
    let dir = work.join("rec");
    let toml = config(&dir, "", "[paths.\"old/**\"]\nrecord = true\n[paths.\"new/**\"]\nrecord = true\n");
    // A small recording to copy: 64x64 video at 10 fps, no audio.
    let data = {
        let server = RecServer::start(&work, &toml, &[]);
        let _encoder = Proc(
            std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-nostdin", "-re", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10"])
                .args(["-c:v", "libx264", "-g", "10", "-preset", "ultrafast", "-f", "flv", &server.rtmp_url("old/cam")])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("ffmpeg"),
        );
        let segs = finished_segments(&server, "old/cam", 1).await;
        std::fs::read(segs[0].file(&dir, "old/cam")).unwrap()
    };
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        if f.file_name().to_str().unwrap().starts_with("index+ferrocast.db") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let old_dir = dir.join("old/cam");
    for f in mp4_files(&old_dir) {
        std::fs::remove_file(f).unwrap();
    }
    for i in 0..COPIES {
        let name = format!("2020-01-01T{:02}-{:02}-{:02}.000Z.mp4", i / 3600, i / 60 % 60, i % 60);
        std::fs::write(old_dir.join(name), &data).unwrap();
    }

    // Publish while the server recovers the files it found (it logs "index rebuilt" when it
    // has listed them, then reads each).
    let work2 = work.join("second");
    std::fs::create_dir_all(&work2).unwrap();
    let server = RecServer::start(&work2, &toml, &[]);
    let d = Deadline::new("the index rebuild to start", 60);
    while !server.log().contains("index rebuilt from the files") {
        d.tick(tail(&server.log(), 5)).await;
    }
    let mut publisher = RtmpClient::connect(server.rtmp, "new/cam", true).await;
    publisher.wait_for(|e| matches!(e, ClientEvent::Publishing)).await;
    let publishing = tokio::spawn(async move { publisher.publish_file(test_flv(), 2).await });
    let segs = finished_segments(&server, "new/cam", 3).await;
    publishing.await.unwrap();
    let d = Deadline::new("new/cam's last file to be closed", 60);
    let segs = loop {
        let now = server.segments("new/cam").await;
        if now.iter().all(|s| !s.writing) && now.len() >= segs.len() {
            break now;
        }
        d.tick(format!("{now:?}")).await;
    };
    assert_listing_matches_disk(&dir, "new/cam", &segs);
    let log = server.log();
    assert!(log.contains("index rebuilt from the files"), "{}", tail(&log, 30));
    let old = server.segments("old/cam").await;
    assert_eq!(old.len(), COPIES, "every file found again");
    assert!(old.iter().all(|s| s.bytes == data.len() as u64), "every file's size");
    let paths = server.paths().await;
    let listed = |p: &str| paths.iter().find(|(q, _)| q == p).map(|(_, b)| *b);
    assert_eq!(listed("old/cam"), Some(COPIES as u64 * data.len() as u64), "old/cam's total: {paths:?}");
    assert_eq!(listed("new/cam"), Some(segs.iter().map(|s| s.bytes).sum()), "new/cam's total: {paths:?}");
    let _ = std::fs::remove_dir_all(&work);
}
