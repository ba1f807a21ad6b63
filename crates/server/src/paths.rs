//! The per-path table `[paths."PATTERN"]`: what a path does (record it, how HLS segments it),
//! resolved by one rule for every protocol.
//!
//! # Patterns
//! A key is an exact stream path (`cams/lobby`) or a glob over its `/`-separated segments:
//! - `*` matches any run of characters within one segment, never a `/` (`cams/*` matches
//!   `cams/a` but not `cams/a/b`; `cam*/main` matches `cam1/main`; `*` alone matches any one
//!   segment);
//! - `**`, a whole segment on its own, matches any number of whole segments, **including
//!   none**: `cams/**` matches `cams/a` and `cams/a/b` (and `cams` itself), `a/**/b` matches
//!   `a/b` and `a/x/y/b`, and `**` alone matches every path.
//!
//! Everything else is literal and uses the characters of a stream path (`[A-Za-z0-9._~-]`).
//! An empty segment, a `.` or `..` segment, `***`, or `**` next to other characters in a
//! segment (`a**`) is an error naming the pattern.
//!
//! # Which entry applies
//! One entry, the best match, applies to a path, whole:
//! 1. an exact key equal to the path beats any pattern;
//! 2. else the matching pattern with the most literal characters (every character but `*`,
//!    `/` included: `*/*/x` beats `**/x`);
//! 3. else, among those, the first in the file.
//!
//! Keys the winning entry leaves unset fall back to the global sections (`[record]`,
//! `[hls]`), never to a less specific entry (as in MediaMTX): `[paths."cams/*"] record = true`
//! and `[paths."cams/lobby"] hls_variant = "fmp4"` leave `cams/lobby` unrecorded. `record`
//! defaults to false.
//!
//! # Cost
//! Exact keys are a hash lookup. Patterns are tried in precedence order, each matched segment by
//! segment without backtracking across `*`: within a segment the literal pieces between `*`s are
//! found left to right (the leftmost match of each piece is always safe), and across segments the
//! runs between `**`s likewise. A match costs at most (path segments) x (pattern segments)
//! segment comparisons, each linear in the segment, and both are capped
//! ([`MAX_PATTERN_LEN`], [`crate::path::MAX_PATH_LEN`]); [`MAX_PATTERNS`] caps how many are tried.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::config::HlsVariant;
use crate::path::MAX_PATH_LEN;

/// Longest key of `[paths]`, in bytes: a pattern longer than the longest stream path could only
/// match through `**`, and none needs to.
pub const MAX_PATTERN_LEN: usize = MAX_PATH_LEN;

/// Most glob entries in `[paths]`: each lookup may try them all (exact keys cost a hash lookup
/// whatever their number). Far above any real deployment's handful of patterns.
pub const MAX_PATTERNS: usize = 1024;

/// Most entries in `[paths]`, exact keys and patterns together (an NVR may list every camera).
pub const MAX_PATH_ENTRIES: usize = 100_000;

/// `[paths."PATTERN"]`: what one entry sets, and what [`PathTable::get`] returns for a path.
///
/// Adding a per-path key is adding a field here (keys are prefixed by feature: `record_*`,
/// `hls_*`, `source_*`); an `Option` leaves the global section's value in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathSettings {
    /// Record this path (`[record]` holds the directory and the defaults). Default false.
    pub record: bool,
    /// Retention by age for this path's recordings, in ms (0 keeps them); None: `record.max_age_ms`.
    pub record_max_age_ms: Option<u64>,
    /// Retention by total size of this path's recordings, in bytes (0: no cap); None: the
    /// global `record.max_bytes` alone applies.
    pub record_max_bytes: Option<u64>,
    /// HLS segment container; None: `hls.variant`.
    pub hls_variant: Option<HlsVariant>,
    /// HLS target segment duration, in ms; None: `hls.segment_duration_ms`.
    pub hls_segment_duration_ms: Option<u64>,
    /// Pull this path from a camera or another server (`rtsp://[user:pass@]host[:port]/...` or
    /// `rtmp://host[:port]/app/stream`) instead of waiting for a publisher. Valid only on an
    /// exact key (a pattern would make every matching path pull the same URL).
    pub source: Option<String>,
    /// Start the source when the first reader arrives and stop it after the last leaves
    /// (default true); false: always on. A path that records or pushes is always on.
    pub source_on_demand: Option<bool>,
    /// How an RTSP source carries RTP; None: `auto` (UDP, falling back to TCP).
    pub source_transport: Option<SourceTransport>,
    /// How long a reader of an on-demand source waits for it to go live, in ms; None:
    /// `source.start_timeout_ms`.
    pub source_start_timeout_ms: Option<u64>,
    /// How long an on-demand source stays up after its last reader left, in ms; None:
    /// `source.close_after_ms`.
    pub source_close_after_ms: Option<u64>,
    /// While the path is live, re-publish it to each of these (`rtmp://host/app/key`,
    /// `rtsp://host:port/path`).
    pub push: Vec<String>,
}

/// `source_transport`: how an RTSP source carries RTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceTransport {
    /// UDP, falling back to TCP when the camera refuses UDP (461) or no packet arrives in time.
    #[default]
    Auto,
    /// UDP unicast only.
    Udp,
    /// Interleaved in the RTSP connection only.
    Tcp,
    /// UDP multicast, to the group the camera chooses.
    Multicast,
}

/// Why a key of `[paths]` was refused. Each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The key is empty.
    #[error("paths: an empty key matches no stream path")]
    Empty,
    /// Longer than [`MAX_PATTERN_LEN`].
    #[error("paths.{0:?}: longer than {MAX_PATTERN_LEN} bytes")]
    TooLong(String),
    /// An empty segment (`a//b`, a leading or trailing `/`).
    #[error("paths.{0:?}: empty segment (a leading, trailing or doubled '/')")]
    EmptySegment(String),
    /// A `.` or `..` segment, which no stream path has.
    #[error("paths.{0:?}: '.' and '..' segments are not stream paths")]
    DotSegment(String),
    /// A character a stream path cannot have.
    #[error("paths.{0:?}: {1:?} cannot appear in a stream path (use A-Z a-z 0-9 - _ . ~ / and * or **)")]
    BadCharacter(String, char),
    /// `***`, or `**` beside other characters in a segment.
    #[error("paths.{0:?}: '**' must be a whole segment on its own ('*' matches within a segment)")]
    BadStars(String),
    /// More than [`MAX_PATTERNS`] patterns.
    #[error("paths: more than {MAX_PATTERNS} patterns")]
    TooManyPatterns,
    /// More than [`MAX_PATH_ENTRIES`] entries.
    #[error("paths: more than {MAX_PATH_ENTRIES} entries")]
    TooManyEntries,
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of whole segments, none included.
    Any,
    /// A segment with no `*`: equal text.
    Literal(String),
    /// A segment with `*`s: the literal pieces around them (first and last may be empty).
    Glob(Vec<String>),
}

impl Segment {
    fn matches(&self, seg: &str) -> bool {
        match self {
            Segment::Any => true,
            Segment::Literal(l) => l == seg,
            Segment::Glob(pieces) => glob_segment(pieces, seg),
        }
    }
}

/// `pieces` joined by `*` matches `seg`. Leftmost placement of each middle piece is safe: it
/// leaves the longest rest for the pieces after it.
fn glob_segment(pieces: &[String], seg: &str) -> bool {
    let (Some((first, rest)), Some(last)) = (pieces.split_first(), pieces.last()) else {
        return false;
    };
    let Some(mut tail) = seg.strip_prefix(first.as_str()) else {
        return false;
    };
    let middle = &rest[..rest.len().saturating_sub(1)];
    for piece in middle {
        match tail.find(piece.as_str()) {
            Some(at) => tail = &tail[at + piece.len()..],
            None => return false,
        }
    }
    tail.ends_with(last.as_str())
}

/// A parsed glob.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    segments: Vec<Segment>,
    /// Characters other than `*`: the precedence among patterns.
    literals: usize,
}

impl Pattern {
    fn parse(key: &str) -> Result<Pattern, PatternError> {
        if key.is_empty() {
            return Err(PatternError::Empty);
        }
        if key.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong(key.chars().take(64).collect()));
        }
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.~*".contains(c);
        let mut segments = Vec::new();
        for seg in key.split('/') {
            if seg.is_empty() {
                return Err(PatternError::EmptySegment(key.into()));
            }
            if seg == "." || seg == ".." {
                return Err(PatternError::DotSegment(key.into()));
            }
            if let Some(c) = seg.chars().find(|c| !ok_char(*c)) {
                return Err(PatternError::BadCharacter(key.into(), c));
            }
            segments.push(if seg == "**" {
                Segment::Any
            } else if seg.contains("**") {
                return Err(PatternError::BadStars(key.into()));
            } else if seg.contains('*') {
                Segment::Glob(seg.split('*').map(str::to_owned).collect())
            } else {
                Segment::Literal(seg.into())
            });
        }
        Ok(Pattern { segments, literals: key.chars().filter(|c| *c != '*').count() })
    }

    /// Whether the path, split at `/`, matches. The runs of segments between `**`s are placed
    /// leftmost, the first anchored at the start and the last at the end.
    fn matches(&self, path: &[&str]) -> bool {
        let mut runs = self.segments.split(|s| *s == Segment::Any);
        let first = runs.next().unwrap_or(&[]);
        let run_matches = |run: &[Segment], at: &[&str]| run.iter().zip(at).all(|(p, s)| p.matches(s));
        let Some(last) = runs.next_back() else {
            // No `**`: one segment each.
            return first.len() == path.len() && run_matches(first, path);
        };
        if path.len() < first.len() || !run_matches(first, path) {
            return false;
        }
        let mut rest = &path[first.len()..];
        for run in runs {
            if run.is_empty() {
                continue;
            }
            let Some(at) = rest.windows(run.len()).position(|w| run_matches(run, w)) else {
                return false;
            };
            rest = &rest[at + run.len()..];
        }
        rest.len() >= last.len() && run_matches(last, &rest[rest.len() - last.len()..])
    }
}

/// A pattern of the `[paths]` kind on its own, for other settings that name paths (the `path`
/// of an `[[auth.users]]` permission): the same rules and the same matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern(Pattern);

impl PathPattern {
    /// Parses an exact path or a glob.
    pub fn parse(key: &str) -> Result<PathPattern, PatternError> {
        Pattern::parse(key).map(PathPattern)
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        self.0.matches(&segments)
    }
}

/// One key of `[paths]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    /// None for an exact key.
    pattern: Option<Pattern>,
    settings: PathSettings,
}

/// `[paths]`: the entries in file order, and the resolver over them ([`PathTable::get`]).
///
/// Deserialises from TOML only: file order is taken from the keys' positions in the file
/// (toml's `Spanned` keys), since the workspace's `toml` is built without `preserve_order` and
/// hands a table's keys over sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathTable {
    /// In file order.
    entries: Vec<Entry>,
    /// Exact keys: index into `entries`.
    exact: HashMap<String, usize>,
    /// Patterns, indexes into `entries`, in precedence order (most literals, then file order).
    patterns: Vec<usize>,
}

impl PathTable {
    /// A table from `(key, settings)` in file order.
    pub fn new(entries: impl IntoIterator<Item = (String, PathSettings)>) -> Result<PathTable, PatternError> {
        let mut table = PathTable::default();
        for (key, settings) in entries {
            if table.entries.len() >= MAX_PATH_ENTRIES {
                return Err(PatternError::TooManyEntries);
            }
            let index = table.entries.len();
            let pattern = if key.contains('*') {
                if table.patterns.len() >= MAX_PATTERNS {
                    return Err(PatternError::TooManyPatterns);
                }
                table.patterns.push(index);
                Some(Pattern::parse(&key)?)
            } else {
                // An exact key is checked as the pattern grammar (the same characters); a
                // duplicate cannot happen in TOML, and here the first one stays.
                Pattern::parse(&key)?;
                table.exact.entry(key.clone()).or_insert(index);
                None
            };
            table.entries.push(Entry { key, pattern, settings });
        }
        let entries = &table.entries;
        let literals = |i: usize| entries[i].pattern.as_ref().map_or(0, |p| p.literals);
        // Stable: equal literal counts keep file order.
        table.patterns.sort_by_key(|&i| std::cmp::Reverse(literals(i)));
        Ok(table)
    }

    /// The settings of `path`: those of the single best-matching entry (defaults if none).
    pub fn get(&self, path: &str) -> PathSettings {
        self.resolve(path).map(|(_, s)| s.clone()).unwrap_or_default()
    }

    /// The best-matching entry for `path`: its key and settings (for logs), or None.
    pub fn resolve(&self, path: &str) -> Option<(&str, &PathSettings)> {
        let found = match self.exact.get(path) {
            Some(&i) => Some(i),
            None if self.patterns.is_empty() || path.len() > MAX_PATH_LEN => None,
            None => {
                let segments: Vec<&str> = path.split('/').collect();
                // No stream path has an empty segment; `*` must not make one match.
                if segments.iter().any(|s| s.is_empty()) {
                    return None;
                }
                self.patterns
                    .iter()
                    .copied()
                    .find(|&i| self.entries[i].pattern.as_ref().is_some_and(|p| p.matches(&segments)))
            }
        };
        found.map(|i| (self.entries[i].key.as_str(), &self.entries[i].settings))
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &PathSettings)> {
        self.entries.iter().map(|e| (e.key.as_str(), &e.settings))
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The per-path table as services read it: one snapshot at a time, swapped whole on a config
/// reload (SIGHUP, `PATCH /api/v1/config/paths/...`). Clones share the table; a reader holds a
/// snapshot for as long as it needs one consistent answer, and a stream's settings are read
/// when it starts, so a reload changes what new streams do and leaves running ones alone.
#[derive(Debug, Clone, Default)]
pub struct SharedPaths(Arc<RwLock<Arc<PathTable>>>);

impl SharedPaths {
    /// A shared handle on `table`.
    pub fn new(table: PathTable) -> SharedPaths {
        SharedPaths(Arc::new(RwLock::new(Arc::new(table))))
    }

    /// The table now.
    pub fn load(&self) -> Arc<PathTable> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The settings of `path` in the table now ([`PathTable::get`]).
    pub fn get(&self, path: &str) -> PathSettings {
        self.load().get(path)
    }

    /// Whether any entry of the table now satisfies `f`.
    pub fn any(&self, f: impl Fn(&PathSettings) -> bool) -> bool {
        self.load().entries().any(|(_, s)| f(s))
    }

    /// Puts `table` in force for every holder of this handle.
    pub fn replace(&self, table: PathTable) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

impl From<PathTable> for SharedPaths {
    fn from(table: PathTable) -> SharedPaths {
        SharedPaths::new(table)
    }
}

impl Serialize for PathTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for e in &self.entries {
            map.serialize_entry(&e.key, &e.settings)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for PathTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor;
        impl<'de> Visitor<'de> for TableVisitor {
            type Value = PathTable;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of stream path patterns")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PathTable, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
                    if entries.len() >= MAX_PATH_ENTRIES {
                        return Err(de::Error::custom(PatternError::TooManyEntries));
                    }
                    let settings: PathSettings = map.next_value()?;
                    let at = key.span().start;
                    entries.push((at, key.into_inner(), settings));
                }
                // File order: the tie-breaker between equally specific patterns.
                entries.sort_by_key(|e| e.0);
                PathTable::new(entries.into_iter().map(|(_, k, s)| (k, s))).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_map(TableVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(keys: &[&str]) -> PathTable {
        // Entry i records iff... each entry is told apart by its hls_segment_duration_ms = i.
        PathTable::new(keys.iter().enumerate().map(|(i, k)| {
            ((*k).to_owned(), PathSettings { hls_segment_duration_ms: Some(i as u64), ..Default::default() })
        }))
        .unwrap()
    }

    /// The key that wins for `path`.
    fn winner<'a>(t: &'a PathTable, path: &str) -> Option<&'a str> {
        t.resolve(path).map(|(k, _)| k)
    }

    fn matches(pattern: &str, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        Pattern::parse(pattern).unwrap().matches(&segments)
    }

    #[test]
    fn star_matches_within_one_segment() {
        assert!(matches("cams/*", "cams/a"));
        assert!(!matches("cams/*", "cams/a/b"));
        assert!(!matches("cams/*", "cams"));
        assert!(!matches("cams/*", "other/a"));
        assert!(matches("*/main", "cam1/main"));
        assert!(matches("cam*/main", "cam1/main") && matches("cam*/main", "cam/main"));
        assert!(!matches("cam*/main", "door/main"));
        assert!(matches("*-hd/x", "lobby-hd/x") && !matches("*-hd/x", "lobby-sd/x"));
        assert!(matches("a/c*m*r*/b", "a/camera/b") && !matches("a/c*m*r*/b", "a/cxmx/b"));
        // The last piece is anchored at the end without overlapping the first.
        assert!(!matches("live/ab*ba", "live/aba"));
        assert!(matches("live/ab*ba", "live/abba"));
    }

    #[test]
    fn double_star_matches_any_number_of_segments_including_none() {
        assert!(matches("cams/**", "cams/a"));
        assert!(matches("cams/**", "cams/a/b"));
        assert!(matches("cams/**", "cams"), "** matches zero segments");
        assert!(!matches("cams/**", "camsx/a"));
        assert!(matches("a/**/b", "a/b") && matches("a/**/b", "a/x/b") && matches("a/**/b", "a/x/y/b"));
        assert!(!matches("a/**/b", "a/x/y/c"));
        assert!(matches("**", "x") && matches("**", "x/y/z"));
        assert!(matches("**/main", "site/cam1/main") && !matches("**/main", "site/cam1/sub"));
        assert!(matches("a/**/m*/**/z", "a/q/mid/r/s/z") && !matches("a/**/m*/**/z", "a/q/r/s/z"));
        // The tail run never overlaps the head run.
        assert!(!matches("x/**/x", "x"));
        assert!(matches("x/**/x", "x/x"));
    }

    #[test]
    fn exact_beats_any_pattern() {
        let t = table(&["**", "cams/lobby/**", "cams/lob*", "cams/lobby"]);
        assert_eq!(winner(&t, "cams/lobby"), Some("cams/lobby"));
        assert_eq!(t.get("cams/lobby").hls_segment_duration_ms, Some(3));
    }

    #[test]
    fn most_literal_characters_then_file_order() {
        let t = table(&["**", "cams/*", "cams/lob*", "*/lobby", "c*/lobby"]);
        // cams/lob* (8 literals) beats c*/lobby (7), */lobby (6), cams/* (5), ** (0).
        assert_eq!(winner(&t, "cams/lobby"), Some("cams/lob*"));
        assert_eq!(winner(&t, "cars/lobby"), Some("c*/lobby"));
        assert_eq!(winner(&t, "x/lobby"), Some("*/lobby"));
        assert_eq!(winner(&t, "cams/door"), Some("cams/*"));
        assert_eq!(winner(&t, "live/a/b"), Some("**"));
        // `/` counts: */*/x pins three segments.
        let t = table(&["**/x", "*/*/x"]);
        assert_eq!(winner(&t, "a/b/x"), Some("*/*/x"));
        assert_eq!(winner(&t, "a/x"), Some("**/x"));
        // Equal literal counts: the first in the file, whichever way round.
        let t = table(&["a*/x", "*a/x"]);
        assert_eq!(winner(&t, "a/x"), Some("a*/x"));
        let t = table(&["*a/x", "a*/x"]);
        assert_eq!(winner(&t, "a/x"), Some("*a/x"));
    }

    #[test]
    fn the_best_entry_wins_whole() {
        let t = PathTable::new([
            ("cams/*".to_owned(), PathSettings { record: true, record_max_age_ms: Some(7), ..Default::default() }),
            ("cams/lobby".to_owned(), PathSettings { hls_variant: Some(HlsVariant::Fmp4), ..Default::default() }),
        ])
        .unwrap();
        // cams/lobby takes nothing from cams/*: unset keys are the global defaults.
        assert_eq!(
            t.get("cams/lobby"),
            PathSettings { hls_variant: Some(HlsVariant::Fmp4), ..PathSettings::default() }
        );
        assert!(t.get("cams/door").record);
    }

    #[test]
    fn no_match_gives_defaults() {
        let t = table(&["cams/*", "live/x"]);
        assert_eq!(winner(&t, "live/y"), None);
        assert_eq!(t.get("live/y"), PathSettings::default());
        assert!(!t.get("live/y").record);
        assert_eq!(PathTable::default().get("anything"), PathSettings::default());
        // Input no stream path has: no match, no panic.
        for odd in ["", "/", "//", "cams/", "/cams/a", "cams//a", "c\u{e9}/\u{0}"] {
            assert_eq!(winner(&t, odd), None, "{odd:?}");
        }
    }

    #[test]
    fn bad_patterns_are_named() {
        for (key, want) in [
            ("", PatternError::Empty),
            ("a//b", PatternError::EmptySegment("a//b".into())),
            ("/a", PatternError::EmptySegment("/a".into())),
            ("a/", PatternError::EmptySegment("a/".into())),
            ("a/../b", PatternError::DotSegment("a/../b".into())),
            ("a/***", PatternError::BadStars("a/***".into())),
            ("a/b**", PatternError::BadStars("a/b**".into())),
            ("a/b c", PatternError::BadCharacter("a/b c".into(), ' ')),
            ("a/b?", PatternError::BadCharacter("a/b?".into(), '?')),
            ("live/[ab]", PatternError::BadCharacter("live/[ab]".into(), '[')),
        ] {
            assert_eq!(PathTable::new([(key.to_owned(), PathSettings::default())]).unwrap_err(), want, "{key:?}");
        }
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert!(matches!(PathTable::new([(long, PathSettings::default())]), Err(PatternError::TooLong(_))));
        let msg = PatternError::BadStars("a/***".into()).to_string();
        assert!(msg.contains("\"a/***\""), "{msg}");
    }

    #[test]
    fn too_many_patterns() {
        let keys = (0..=MAX_PATTERNS).map(|i| (format!("p{i}/*"), PathSettings::default()));
        assert_eq!(PathTable::new(keys).unwrap_err(), PatternError::TooManyPatterns);
        // Exact keys are not patterns: many are fine.
        let keys = (0..=MAX_PATTERNS).map(|i| (format!("cams/c{i}"), PathSettings::default()));
        let t = PathTable::new(keys).unwrap();
        assert_eq!(winner(&t, "cams/c1024"), Some("cams/c1024"));
    }

    #[test]
    fn too_many_entries() {
        let keys = (0..=MAX_PATH_ENTRIES).map(|i| (format!("cams/c{i}"), PathSettings::default()));
        assert_eq!(PathTable::new(keys).unwrap_err(), PatternError::TooManyEntries);
    }

    /// Patterns built to make a backtracking matcher blow up: many `*` in a segment and many
    /// `**` across segments against long paths that almost match. Each match is a bounded
    /// number of segment comparisons (module doc), so these answer at once; a backtracking
    /// matcher would take exponential time here and never finish.
    #[test]
    fn adversarial_patterns_are_matched_without_backtracking() {
        let stars = format!("x/{}b", "*a".repeat(60));
        let path = format!("x/{}", "a".repeat(200));
        assert!(!matches(&stars, &path));
        assert!(matches(&stars, &format!("{path}b")));
        let many = format!("{}z", "**/a/".repeat(40));
        let path = vec!["a"; 120].join("/");
        assert!(!matches(&many, &path));
        assert!(matches(&many, &format!("{path}/z")));
    }

    #[test]
    fn toml_keys_keep_file_order() {
        #[derive(Deserialize)]
        struct Doc {
            paths: PathTable,
        }
        // Alphabetically "b*/x" < "z*/x" would put "b*/x" first; the file says otherwise.
        let text = "[paths.\"z*/x\"]\nrecord = true\n[paths.\"*/x\"]\n[paths.\"*z/x\"]\n[paths.\"b*/x\"]\n";
        let doc: Doc = toml::from_str(text).unwrap();
        let keys: Vec<&str> = doc.paths.entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["z*/x", "*/x", "*z/x", "b*/x"]);
        // "zz/x" matches z*/x and *z/x (2 literals each): the first in the file.
        assert_eq!(winner(&doc.paths, "zz/x"), Some("z*/x"));
        assert!(doc.paths.get("zz/x").record);
        // Inline tables too.
        let doc: Doc = toml::from_str("[paths]\n\"z*\" = { record = true }\n\"a*\" = {}\n").unwrap();
        assert_eq!(doc.paths.entries().map(|(k, _)| k).collect::<Vec<_>>(), ["z*", "a*"]);
        // And back: serialised in file order.
        let text = toml::to_string(&doc.paths).unwrap();
        assert!(text.find("z*").unwrap() < text.find("a*").unwrap(), "{text}");
    }

    #[test]
    fn shared_paths_swap_for_every_clone() {
        let shared = SharedPaths::new(table(&["cams/*"]));
        let other = shared.clone();
        let before = shared.load();
        assert!(!shared.any(|s| s.record));
        other.replace(
            PathTable::new([("cams/*".to_owned(), PathSettings { record: true, ..Default::default() })]).unwrap(),
        );
        assert!(shared.get("cams/a").record && shared.any(|s| s.record));
        // A snapshot taken before stays as it was.
        assert!(!before.get("cams/a").record);
    }
}
