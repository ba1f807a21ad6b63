//! On-demand playback of recordings and MP4 files (DESIGN.md "Recordings": playback is a
//! source like any other). Each viewer gets its own reader over the files ([`source`]), paced
//! into the same packetizers and muxers the live path uses:
//! - RTSP: `rtsp://HOST:8554/PATH?start=T[&end=T]` (recordings) and `rtsp://HOST:8554/vod/NAME.mp4`
//!   (files), with Range, PAUSE, Scale and Speed ([`pace`], driven by `crate::rtsp`);
//! - HTTP: `/PATH/recording.mp4?start=T&end=T` and `/vod/NAME.mp4` as progressive MP4 with byte
//!   ranges ([`mp4_http`]), `/PATH/index.m3u8?start=T&end=T` and `/vod/NAME.mp4/index.m3u8` as
//!   HLS VOD ([`hls_vod`]); [`http`] routes between them.

pub mod hls_vod;
pub mod http;
pub mod mp4_http;
pub mod pace;
pub mod player;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::VodConfig;
use crate::record::Recordings;
use crate::utc;

/// The URL prefix of files: `vod/NAME.mp4`.
pub const FILE_PREFIX: &str = "vod/";

/// What playback shares: the recordings and the directory of files.
pub struct Playback {
    /// The recordings (their index and files).
    pub recordings: Arc<Recordings>,
    /// `[vod]`.
    pub config: VodConfig,
}

impl Playback {
    /// Playback over these recordings and `[vod]` files.
    pub fn new(recordings: Arc<Recordings>, config: VodConfig) -> Arc<Playback> {
        Arc::new(Playback { recordings, config })
    }

    /// The file `name` (what follows `vod/` in a URL, percent-decoded by this function) under
    /// the directory, or None when there is no such MP4 file there. `..`, encoded traversal,
    /// absolute names and symlinks that lead out of the directory are None: nothing outside
    /// it is ever opened. Blocking (the file system).
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        resolve_file(&self.config.dir, name)
    }

    /// False while the recordings index is still being opened after a start (recordings
    /// exist on disk, the index is not there yet): playback answers 503, not 404.
    pub fn index_ready(&self) -> bool {
        self.recordings.index().is_some() || !self.recordings.config().dir.join(crate::record::INDEX_FILE).exists()
    }
}

/// Most bytes of a file name in a URL.
const MAX_NAME_LEN: usize = 1024;

/// See [`Playback::file`].
pub fn resolve_file(dir: &Path, name: &str) -> Option<PathBuf> {
    if name.len() > MAX_NAME_LEN {
        return None;
    }
    let name = utc::percent_decode(name)?;
    let safe = !name.is_empty()
        && name.to_ascii_lowercase().ends_with(".mp4")
        && name.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains(['\\', '\0']));
    if !safe {
        return None;
    }
    let root = dir.canonicalize().ok()?;
    let file = root.join(&name).canonicalize().ok()?;
    (file.starts_with(&root) && file.is_file()).then_some(file)
}

/// What a playback URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The recordings of a stream path from `start_us` to `end_us` (UTC µs); no end: on
    /// through what is written meanwhile while the path records.
    Recording {
        /// The stream path.
        path: String,
        /// Start, UTC µs.
        start_us: u64,
        /// End, UTC µs.
        end_us: Option<u64>,
    },
    /// A file under `[vod] dir` (resolved and checked).
    File(PathBuf),
}

/// Why a URL names no playable target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// A `start` or `end` that does not parse, or an end before the start (400).
    #[error("{0}")]
    BadTime(String),
    /// No such file (404).
    #[error("no such file")]
    NoFile,
}

impl Playback {
    /// What `path` with `query` plays: a file for `vod/NAME.mp4`, recordings for a path with
    /// `start=`; None for a live path (no `start`). Blocking (the file system).
    pub fn target(&self, path: &str, query: Option<&str>) -> Option<Result<Target, TargetError>> {
        if let Some(name) = path.strip_prefix(FILE_PREFIX) {
            return Some(self.file(name).map(Target::File).ok_or(TargetError::NoFile));
        }
        let start = match utc::query_time(query, "start") {
            Ok(None) => return None,
            Ok(Some(s)) => s,
            Err(e) => return Some(Err(TargetError::BadTime(e))),
        };
        let end = match utc::query_time(query, "end") {
            Ok(e) => e,
            Err(e) => return Some(Err(TargetError::BadTime(e))),
        };
        if end.is_some_and(|e| e <= start) {
            return Some(Err(TargetError::BadTime("end: not after start".into())));
        }
        Some(Ok(Target::Recording { path: path.to_owned(), start_us: start, end_us: end }))
    }
}

/// `target` opened for one RTSP viewer (blocking: the file system). Err: the RTSP status to
/// refuse with (404 nothing there, 503 the recordings index is still opening, 500 unreadable).
pub fn open_media(playback: &Playback, target: &Target) -> Result<Box<dyn player::Media>, u16> {
    match source::Source::open(playback, target) {
        Ok(s) => Ok(Box::new(s)),
        Err(source::SourceError::NotFound) if matches!(target, Target::Recording { .. }) && !playback.index_ready() => {
            Err(503)
        }
        Err(source::SourceError::NotFound) => Err(404),
        Err(e) => {
            tracing::warn!("playback: {e}");
            Err(500)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_outside_the_directory_are_never_named() {
        let base = std::env::temp_dir().join(format!("ferrocast-vod-{}", std::process::id()));
        let dir = base.join("media");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.mp4"), b"x").unwrap();
        std::fs::write(dir.join("sub/b.MP4"), b"x").unwrap();
        std::fs::write(base.join("secret.mp4"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(base.join("secret.mp4"), dir.join("link.mp4")).unwrap();
        assert!(resolve_file(&dir, "a.mp4").is_some());
        assert!(resolve_file(&dir, "sub/b.MP4").is_some());
        assert!(resolve_file(&dir, "sub%2Fb.MP4").is_some(), "an encoded slash is a slash");
        for bad in [
            "../secret.mp4",
            "%2e%2e/secret.mp4",
            "sub/../../secret.mp4",
            "/etc/passwd.mp4",
            "link.mp4",
            "missing.mp4",
            "sub",
            "a.mp4%00",
            "",
            "%zz.mp4",
        ] {
            assert_eq!(resolve_file(&dir, bad), None, "{bad}");
        }
        assert_eq!(resolve_file(&dir, &"a/".repeat(600)), None);
        let _ = std::fs::remove_dir_all(&base);
    }
}
