//! Which recordings go: by age, by total size (per path and overall) and by free disk
//! space, oldest first, never a segment being written. Deciding is separate from deleting
//! so that the rules are tested on an index alone.

use std::collections::HashSet;

use super::index::{Index, IndexError, Segment};

/// Segments looked at per query while planning.
const BATCH: usize = 256;

/// Limits, each off when None.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Keep segments that ended less than this long ago, µs.
    pub max_age_us: Option<u64>,
    /// Keep at most this many bytes.
    pub max_bytes: Option<u64>,
}

/// Why a segment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Older than the path's age limit.
    Age,
    /// Its path holds more than its size limit.
    PathBytes,
    /// All recordings hold more than the global size limit.
    TotalBytes,
    /// The disk has less free space than `min_free_bytes`.
    FreeSpace,
}

impl Reason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [Reason; 4] = [Reason::Age, Reason::PathBytes, Reason::TotalBytes, Reason::FreeSpace];

    /// The name in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::PathBytes => "path_bytes",
            Reason::TotalBytes => "total_bytes",
            Reason::FreeSpace => "free_space",
        }
    }
}

/// The segments to delete now, in order, each with its reason. `limits(path)` gives a path's
/// limits (its own, else the global ones); `total` the global size limit; `free_bytes` the
/// disk's free space now and `min_free_bytes` what must stay free.
pub fn plan(
    index: &Index,
    now_us: u64,
    limits: impl Fn(&str) -> Limits,
    total: Option<u64>,
    free_bytes: Option<u64>,
    min_free_bytes: u64,
) -> Result<Vec<(Segment, Reason)>, IndexError> {
    let mut out: Vec<(Segment, Reason)> = Vec::new();
    let mut gone: HashSet<(String, u64)> = HashSet::new();
    let mut freed_total = 0u64;
    let mut take = |s: Segment, r: Reason, out: &mut Vec<(Segment, Reason)>| {
        if gone.insert((s.path.clone(), s.start_us)) {
            out.push((s, r));
            true
        } else {
            false
        }
    };
    for path in index.paths() {
        let l = limits(&path);
        let mut path_bytes = index.total_bytes(Some(&path));
        let cap = l.max_bytes.unwrap_or(u64::MAX);
        let cutoff = l.max_age_us.map(|a| now_us.saturating_sub(a));
        let mut after: Option<(u64, String)> = None;
        'path: loop {
            let batch = index.oldest_after(Some(&path), after.as_ref().map(|(s, p)| (*s, p.as_str())), BATCH)?;
            let n = batch.len();
            for s in batch {
                let reason = if cutoff.is_some_and(|c| s.end_us() < c) {
                    Reason::Age
                } else if path_bytes > cap {
                    Reason::PathBytes
                } else {
                    break 'path;
                };
                path_bytes = path_bytes.saturating_sub(s.bytes);
                freed_total += s.bytes;
                after = Some((s.start_us, s.path.clone()));
                take(s, reason, &mut out);
            }
            if n < BATCH {
                break;
            }
        }
    }
    let mut all_bytes = index.total_bytes(None).saturating_sub(freed_total);
    let mut free = free_bytes.map(|f| f.saturating_add(freed_total));
    let over = |all: u64, free: Option<u64>| {
        if total.is_some_and(|t| all > t) {
            Some(Reason::TotalBytes)
        } else if free.is_some_and(|f| f < min_free_bytes) {
            Some(Reason::FreeSpace)
        } else {
            None
        }
    };
    let mut after: Option<(u64, String)> = None;
    while over(all_bytes, free).is_some() {
        let batch = index.oldest_after(None, after.as_ref().map(|(s, p)| (*s, p.as_str())), BATCH)?;
        let n = batch.len();
        for s in batch {
            let Some(reason) = over(all_bytes, free) else { break };
            let bytes = s.bytes;
            after = Some((s.start_us, s.path.clone()));
            if take(s, reason, &mut out) {
                all_bytes = all_bytes.saturating_sub(bytes);
                free = free.map(|f| f.saturating_add(bytes));
            }
        }
        if n < BATCH {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// The metrics index their counters by `reason as usize`.
    #[test]
    fn all_reasons_in_declaration_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    fn index(segments: &[(&str, u64, u64, bool)]) -> Index {
        let ix = Index::in_memory().unwrap();
        for &(path, start, bytes, writing) in segments {
            ix.put(&Segment {
                path: path.into(),
                start_us: start * S,
                duration_us: 10 * S,
                bytes,
                file: format!("{path}/{start}.mp4"),
                writing,
            })
            .unwrap();
        }
        ix
    }

    fn names(plan: &[(Segment, Reason)]) -> Vec<(String, u64, Reason)> {
        plan.iter().map(|(s, r)| (s.path.clone(), s.start_us / S, *r)).collect()
    }

    #[test]
    fn by_age_per_path() {
        let ix = index(&[("a", 0, 1, false), ("a", 10, 1, false), ("a", 20, 1, false), ("b", 0, 1, false)]);
        // "a" keeps 15 s; "b" keeps everything. Now is 40 s: a/0 ended at 10, a/10 at 20.
        let limits = |p: &str| {
            if p == "a" { Limits { max_age_us: Some(15 * S), ..Limits::default() } } else { Limits::default() }
        };
        let p = plan(&ix, 40 * S, limits, None, None, 0).unwrap();
        assert_eq!(names(&p), [("a".into(), 0, Reason::Age), ("a".into(), 10, Reason::Age)]);
    }

    #[test]
    fn by_size_per_path_and_overall_oldest_first() {
        let ix = index(&[
            ("a", 0, 100, false),
            ("a", 10, 100, false),
            ("a", 20, 100, false),
            ("b", 5, 100, false),
            ("b", 15, 100, false),
        ]);
        let limits =
            |p: &str| if p == "a" { Limits { max_bytes: Some(150), ..Limits::default() } } else { Limits::default() };
        // "a" over its 150: its two oldest go. Then 300 left against a total cap of 200: the
        // oldest left overall (b/5) goes.
        let p = plan(&ix, 0, limits, Some(200), None, 0).unwrap();
        assert_eq!(
            names(&p),
            [
                ("a".into(), 0, Reason::PathBytes),
                ("a".into(), 10, Reason::PathBytes),
                ("b".into(), 5, Reason::TotalBytes)
            ]
        );
    }

    #[test]
    fn by_free_space_never_the_segment_being_written() {
        let ix = index(&[("a", 0, 100, false), ("b", 5, 100, false), ("a", 10, 100, true)]);
        // 50 free, 220 wanted: both finished segments go, and not the one being written
        // even though that is still not enough.
        let p = plan(&ix, 0, |_| Limits::default(), None, Some(50), 220).unwrap();
        assert_eq!(names(&p), [("a".into(), 0, Reason::FreeSpace), ("b".into(), 5, Reason::FreeSpace)]);
        // Enough free: nothing goes.
        assert!(plan(&ix, 0, |_| Limits::default(), None, Some(1000), 220).unwrap().is_empty());
    }

    #[test]
    fn many_segments_in_batches() {
        let ix = Index::in_memory().unwrap();
        let segs: Vec<Segment> = (0..1000)
            .map(|i| Segment {
                path: "a".into(),
                start_us: i * 10 * S,
                duration_us: 10 * S,
                bytes: 1,
                file: String::new(),
                writing: false,
            })
            .collect();
        ix.put_many(&segs).unwrap();
        let limits = |_: &str| Limits { max_bytes: Some(100), ..Limits::default() };
        let p = plan(&ix, 0, limits, None, None, 0).unwrap();
        assert_eq!(p.len(), 900);
        assert!(p.windows(2).all(|w| w[0].0.start_us < w[1].0.start_us));
        let p = plan(&ix, 0, |_| Limits::default(), Some(10), None, 0).unwrap();
        assert_eq!(p.len(), 990);
    }
}
