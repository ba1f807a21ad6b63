//! HLS as an ordinary hub reader: every new stream gets a segmenter task from its first
//! frame, so the first viewer finds segments ready. HTTP handlers only read what it made:
//! segments (or their memory files, for `sendfile` on the raw path, see `hls_http`) and
//! playlists made once per change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferrocast_hls::{Segmenter, SegmenterConfig, Variant};
use ferrocast_media::VideoCodec;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{HlsConfig, HlsVariant, ms};
use crate::hls_http::SegmentFile;
use crate::hub::Hub;
use crate::paths::{PathSettings, SharedPaths};
use crate::reader::{Reader, ReaderItem};

/// The live HLS state of one stream.
pub struct HlsStream {
    segmenter: Mutex<Option<Segmenter>>,
    /// Bumped on every new segment; playlist requests wait on it.
    updated: watch::Sender<u64>,
    /// Memory files of the segments players were sent with `sendfile` (see `hls_http`), by
    /// name; those that left the live window are dropped with each new segment.
    files: Mutex<Vec<(String, Arc<SegmentFile>)>>,
    /// The playlists as served, made once per segmenter generation rather than per request
    /// (every player asks for the media playlist about once a second).
    playlists: Mutex<PlaylistCache>,
}

/// A playlist as served: its text, its validator and the target duration it was made with.
pub struct ServedPlaylist {
    /// The playlist.
    pub body: Bytes,
    /// Its ETag.
    pub etag: String,
    /// The stream's target duration when it was made.
    pub target_secs: u64,
}

/// The playlists of one segmenter generation.
struct PlaylistCache {
    generation: u64,
    media: Option<Arc<ServedPlaylist>>,
    multivariant: Option<Arc<ServedPlaylist>>,
}

impl PlaylistCache {
    fn empty() -> PlaylistCache {
        PlaylistCache { generation: u64::MAX, media: None, multivariant: None }
    }
}

impl HlsStream {
    /// Runs `f` on the segmenter, once it exists.
    pub fn with<T>(&self, f: impl FnOnce(&Segmenter) -> Option<T>) -> Option<T> {
        let g = self.segmenter.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().and_then(f)
    }

    /// The media playlist (or the multivariant one), with `etag` of its text: made once per
    /// segmenter generation. None before the first segment.
    pub fn playlist(&self, multivariant: bool, etag: impl FnOnce(&[u8]) -> String) -> Option<Arc<ServedPlaylist>> {
        // Lock order: the segmenter, then the cache (nothing takes them the other way).
        let g = self.segmenter.lock().unwrap_or_else(|e| e.into_inner());
        let s = g.as_ref()?;
        let mut cache = self.playlists.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation != s.generation() {
            *cache = PlaylistCache { generation: s.generation(), ..PlaylistCache::empty() };
        }
        let slot = if multivariant { &mut cache.multivariant } else { &mut cache.media };
        if let Some(p) = slot {
            return Some(p.clone());
        }
        let text = if multivariant { s.multivariant_playlist("media.m3u8") } else { s.media_playlist() }?;
        let body = Bytes::from(text);
        let made = Arc::new(ServedPlaylist { etag: etag(&body), body, target_secs: s.target_duration_secs() });
        *slot = Some(made.clone());
        Some(made)
    }

    /// The memory file of segment `name`, whose bytes are `data`: made on the first request
    /// for it. None if the file cannot be made (the caller then sends `data`).
    pub fn file(&self, name: &str, data: &[u8]) -> Option<Arc<SegmentFile>> {
        let found =
            |files: &Vec<(String, Arc<SegmentFile>)>| files.iter().find(|(n, _)| n == name).map(|(_, f)| f.clone());
        {
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = found(&files) {
                return Some(f);
            }
            // Over the cap (a window longer than it) the segment is sent from memory as
            // before, rather than files being made and dropped in turn.
            if files.len() >= MAX_SEGMENT_FILES {
                return None;
            }
        }
        // Written outside the lock: other players' requests go on meanwhile. Two first
        // requests at once may both write one; the first in the list wins.
        let made = match SegmentFile::new(data) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                warn!("hls: memory file for {name}: {e}");
                return None;
            }
        };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = found(&files) {
            return Some(f);
        }
        // A segment is only asked for while it is in the window, and the window is pruned
        // with every new segment; two first requests at once may both have got here.
        if files.len() >= MAX_SEGMENT_FILES {
            return None;
        }
        files.push((name.to_owned(), made.clone()));
        Some(made)
    }

    /// Drops the memory files of segments no longer in the window.
    fn prune_files(&self) {
        let names: Vec<String> = {
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            files.iter().map(|(n, _)| n.clone()).collect()
        };
        if names.is_empty() {
            return;
        }
        // One lock at a time: the names still in the window, then the files.
        let gone: Vec<String> = names.into_iter().filter(|n| self.with(|s| s.get(n)).is_none()).collect();
        self.files.lock().unwrap_or_else(|e| e.into_inner()).retain(|(n, _)| !gone.contains(n));
    }

    /// Waits until the stream has a segment, up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.updated.subscribe();
        let ready = tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0)).await;
        matches!(ready, Ok(Ok(_)))
    }
}

/// The most memory files one stream keeps: the default window (6 segments) and its init
/// segments many times over. Past it segments are sent from memory: files are a cache of the
/// segments' bytes, never the only copy.
const MAX_SEGMENT_FILES: usize = 64;

/// Every stream's HLS state.
pub struct HlsRegistry {
    streams: Mutex<HashMap<String, Arc<HlsStream>>>,
    config: HlsConfig,
    /// Per-path `hls_variant` and `hls_segment_duration_ms` (read when a stream starts, so a
    /// reload applies to the next publish).
    paths: SharedPaths,
}

impl HlsRegistry {
    /// The settings.
    pub fn config(&self) -> &HlsConfig {
        &self.config
    }

    /// The HLS state of a path.
    pub fn get(&self, path: &str) -> Option<Arc<HlsStream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).get(path).cloned()
    }
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Starts following the hub; returns the registry HTTP serves from. `paths` gives each
/// stream's `hls_variant` and `hls_segment_duration_ms` over `config`'s.
pub fn start(hub: Arc<Hub>, config: HlsConfig, paths: impl Into<SharedPaths>) -> Arc<HlsRegistry> {
    let registry = Arc::new(HlsRegistry { streams: Mutex::new(HashMap::new()), config, paths: paths.into() });
    if registry.config.enabled {
        let reg = registry.clone();
        hub.on_new_streams(move |hub, path| spawn_stream(hub, &reg, path));
    }
    registry
}

fn spawn_stream(hub: &Arc<Hub>, reg: &Arc<HlsRegistry>, path: String) {
    // The muxer is the server's own: it keeps no on-demand source running.
    let Some(sub) = hub.subscribe_internal(&path) else {
        return;
    };
    let stream = Arc::new(HlsStream {
        segmenter: Mutex::new(None),
        updated: watch::channel(0).0,
        files: Mutex::new(Vec::new()),
        playlists: Mutex::new(PlaylistCache::empty()),
    });
    {
        let mut streams = reg.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.contains_key(&path) {
            return;
        }
        streams.insert(path.clone(), stream.clone());
    }
    let reader = Reader::new(hub.clone(), sub);
    let reg = reg.clone();
    tokio::spawn(async move {
        run_stream(&reg, &path, &stream, reader).await;
        let mut streams = reg.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.get(&path).is_some_and(|s| Arc::ptr_eq(s, &stream)) {
            streams.remove(&path);
        }
        debug!(path, "hls: stream removed");
    });
}

/// The segmenter of a stream: the path's settings (`[paths."PATTERN"]`) where it has them,
/// else `[hls]`'s.
fn segmenter_for(config: &HlsConfig, over: &PathSettings, codec: Option<VideoCodec>, instance: &str) -> Segmenter {
    let variant = match over.hls_variant.unwrap_or(config.variant) {
        HlsVariant::Mpegts => Variant::MpegTs,
        HlsVariant::Fmp4 => Variant::Fmp4,
        HlsVariant::Auto if codec == Some(VideoCodec::H265) => Variant::Fmp4,
        HlsVariant::Auto => Variant::MpegTs,
    };
    let seg_config = SegmenterConfig {
        variant,
        target_duration_ms: over.hls_segment_duration_ms.unwrap_or(config.segment_duration_ms),
        window: config.window,
        max_segment_bytes: config.max_segment_bytes,
    };
    Segmenter::new(seg_config, instance)
}

async fn run_stream(reg: &HlsRegistry, path: &str, stream: &HlsStream, mut reader: Reader) {
    let instance = format!("{:x}", wall_ms());
    let dir = (!reg.config.dir.is_empty()).then(|| PathBuf::from(&reg.config.dir).join(path));
    let mut written: Vec<String> = Vec::new();
    loop {
        let item = reader.next().await;
        let now = wall_ms();
        let mut done = false;
        let new_segment = {
            let mut g = stream.segmenter.lock().unwrap_or_else(|e| e.into_inner());
            match item {
                ReaderItem::Tracks(t) => {
                    if g.is_none() && (t.video.is_some() || t.audio.is_some()) {
                        let codec = match &t.video {
                            Some(ferrocast_media::TrackInfo::Video { codec, .. }) => Some(*codec),
                            _ => None,
                        };
                        *g = Some(segmenter_for(&reg.config, &reg.paths.get(path), codec, &instance));
                        info!(path, variant = ?g.as_ref().map(|s| s.variant()), "hls: segmenting");
                    }
                    // New codec parameters end the segment in progress: a new segment too.
                    g.as_mut().is_some_and(|s| s.set_tracks(&t, now))
                }
                ReaderItem::Frame(f) => g.as_mut().is_some_and(|s| s.push(f, now)),
                ReaderItem::Republished => {
                    if let Some(s) = g.as_mut() {
                        s.discontinuity(now);
                    }
                    true
                }
                ReaderItem::Unpublished => false,
                ReaderItem::Ended | ReaderItem::TooSlow => {
                    if let Some(s) = g.as_mut() {
                        s.finish(now);
                    }
                    done = true;
                    true
                }
            }
        };
        if new_segment {
            stream.prune_files();
            stream.updated.send_modify(|n| *n += 1);
            if let Some(dir) = &dir {
                write_dir(stream, dir, &mut written).await;
            }
        }
        if done {
            return;
        }
    }
}

/// Mirrors the live window to disk: new segments, then playlists (atomically), then removal
/// of segments that left memory.
async fn write_dir(stream: &HlsStream, dir: &std::path::Path, written: &mut Vec<String>) {
    let Some((files, media, multi)) = stream.with(|s| {
        let mut files: Vec<(String, Bytes)> = s.window().iter().map(|x| (x.name.clone(), x.data.clone())).collect();
        for x in s.window() {
            if let Some(init) = &x.init_name
                && let Some(b) = s.get(init)
            {
                files.push((init.clone(), b));
            }
        }
        Some((files, s.media_playlist()?, s.multivariant_playlist("media.m3u8")?))
    }) else {
        return;
    };
    let dir = dir.to_owned();
    let already: Vec<String> = written.clone();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(&dir)?;
        let mut now_written = Vec::new();
        for (name, data) in &files {
            if !already.contains(name) {
                std::fs::write(dir.join(name), data)?;
            }
            now_written.push(name.clone());
        }
        for (name, text) in [("media.m3u8", media), ("index.m3u8", multi)] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        for old in already.iter().filter(|n| !now_written.contains(n)) {
            let _ = std::fs::remove_file(dir.join(old));
        }
        Ok(now_written)
    })
    .await;
    match result {
        Ok(Ok(names)) => *written = names,
        Ok(Err(e)) => warn!("hls: writing segments: {e}"),
        Err(e) => warn!("hls: writer task: {e}"),
    }
}

/// What an HLS URL names.
#[derive(Debug, PartialEq, Eq)]
pub enum HlsFile<'a> {
    /// `index.m3u8`: the multivariant playlist.
    Multivariant,
    /// `media.m3u8`: the media playlist.
    Media,
    /// A segment or init segment.
    Segment(&'a str),
}

/// Splits `/APP/STREAM/FILE` into the stream path and the file, for HLS names only.
pub fn parse_url(uri_path: &str) -> Option<(&str, HlsFile<'_>)> {
    let (stream, file) = uri_path.strip_prefix('/')?.rsplit_once('/')?;
    let kind = match file {
        "index.m3u8" => HlsFile::Multivariant,
        "media.m3u8" => HlsFile::Media,
        f if (f.ends_with(".ts") || f.ends_with(".m4s") || f.ends_with(".mp4"))
            && f.len() <= 64
            && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            HlsFile::Segment(f)
        }
        _ => return None,
    };
    Some((stream, kind))
}

/// The playlist wait.
pub fn playlist_wait(config: &HlsConfig) -> Duration {
    ms(config.playlist_wait_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("/live/cam1/index.m3u8"), Some(("live/cam1", HlsFile::Multivariant)));
        assert_eq!(parse_url("/live/cam1/media.m3u8"), Some(("live/cam1", HlsFile::Media)));
        assert_eq!(parse_url("/live/cam1/abc-3.ts"), Some(("live/cam1", HlsFile::Segment("abc-3.ts"))));
        assert_eq!(parse_url("/live/cam1/..%2f..%2fetc.ts"), None);
        assert_eq!(parse_url("/live/cam1/x.html"), None);
        assert_eq!(parse_url("/live/cam1.flv"), None);
    }
}
