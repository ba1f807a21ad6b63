//! Decode timestamps for video that arrives in decode order with presentation times only
//! (RTP carries PTS, RFC 6184 5.1): without B-frames DTS = PTS; with reordering of depth D,
//! the frame at decode index i is decoded at the (i-D)-th smallest presentation time, which
//! has already arrived by then (a frame is at most D places out of order). No delay, no
//! slice-header parsing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Largest reordering depth we grow to.
pub const MAX_REORDER_DEPTH: usize = 8;

/// Derives DTS from PTS in decode order.
#[derive(Debug)]
pub struct DtsEstimator {
    depth: usize,
    seen: usize,
    heap: BinaryHeap<Reverse<i64>>,
    first_pts: Option<i64>,
    last_dts: Option<i64>,
    /// Spacing of the decode times of the first `depth` frames, before them.
    warmup_step: i64,
    /// Frames whose PTS had to be raised because they came more out of order than the depth
    /// allowed (the depth grows after each).
    pub corrections: u64,
}

impl DtsEstimator {
    /// An estimator expecting reordering up to `depth` frames (0 for streams without
    /// B-frames, such as H.264 Baseline). The first `depth` frames are decoded before the
    /// first frame's presentation time, `warmup_step` apart: a frame interval (a guess is
    /// fine; any positive step keeps decode times rising). Steps of one tick there make
    /// players and muxers take the stream for one of a thousand frames a second.
    pub fn new(depth: usize, warmup_step: i64) -> Self {
        DtsEstimator {
            depth: depth.min(MAX_REORDER_DEPTH),
            seen: 0,
            heap: BinaryHeap::new(),
            first_pts: None,
            last_dts: None,
            warmup_step: warmup_step.max(1),
            corrections: 0,
        }
    }

    /// The (dts, pts) of the next frame in decode order. PTS is returned unchanged unless
    /// the frame broke the depth assumption.
    pub fn next(&mut self, pts: i64) -> (i64, i64) {
        let first = *self.first_pts.get_or_insert(pts);
        self.heap.push(Reverse(pts));
        let i = self.seen;
        self.seen += 1;
        let mut dts = if i < self.depth {
            // Before D frames have arrived: just below the first (key)frame's time.
            first.saturating_sub((self.depth - i) as i64 * self.warmup_step)
        } else {
            self.heap.pop().map_or(pts, |Reverse(p)| p)
        };
        // Keep the heap bounded even if the depth shrank assumptions were wrong.
        while self.heap.len() > MAX_REORDER_DEPTH + 1 {
            self.heap.pop();
        }
        if let Some(last) = self.last_dts
            && dts <= last
        {
            dts = last + 1;
        }
        let mut pts = pts;
        if dts > pts {
            self.corrections += 1;
            if self.depth < MAX_REORDER_DEPTH {
                self.depth += 1;
                // Skip one pop so the heap holds one more frame from now on.
                self.seen -= 1;
            }
            pts = dts;
        }
        self.last_dts = Some(dts);
        (dts, pts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(depth: usize, pts: &[i64]) -> Vec<(i64, i64)> {
        let mut e = DtsEstimator::new(depth, 3000);
        pts.iter().map(|p| e.next(*p)).collect()
    }

    fn valid(out: &[(i64, i64)]) {
        for w in out.windows(2) {
            assert!(w[1].0 > w[0].0, "dts not increasing: {out:?}");
        }
        assert!(out.iter().all(|(d, p)| d <= p), "dts after pts: {out:?}");
    }

    #[test]
    fn no_b_frames() {
        assert_eq!(run(0, &[0, 3000, 6000]), vec![(0, 0), (3000, 3000), (6000, 6000)]);
    }

    #[test]
    fn x264_bframes_3_with_pyramid() {
        // Decode order I0 P4 B2 b1 b3 P8 B6 b5 b7 (frame units of 3000).
        let pts: Vec<i64> = [0, 4, 2, 1, 3, 8, 6, 5, 7].iter().map(|p| p * 3000).collect();
        let out = run(2, &pts);
        valid(&out);
        assert_eq!(out.iter().map(|o| o.1).collect::<Vec<_>>(), pts, "PTS untouched");
        assert_eq!(out[4].0, 3000 * 2, "dts of b3 is the 3rd smallest pts: {out:?}");
    }

    #[test]
    fn the_first_frames_are_decoded_a_frame_apart() {
        let pts: Vec<i64> = [0, 3, 1, 2, 6, 4, 5].iter().map(|p| 9000 + p * 3000).collect();
        let out = run(2, &pts);
        valid(&out);
        let dts: Vec<i64> = out.iter().map(|o| o.0).collect();
        assert_eq!(dts[..4], [3000, 6000, 9000, 12000], "a frame apart from the start");
    }

    #[test]
    fn too_small_depth_grows_and_stays_valid() {
        let pts: Vec<i64> = [0, 4, 2, 1, 3, 8, 6, 5, 7, 12, 10, 9, 11].iter().map(|p| p * 3000).collect();
        let mut e = DtsEstimator::new(0, 3000);
        let out: Vec<_> = pts.iter().map(|p| e.next(*p)).collect();
        valid(&out);
        assert!(e.corrections > 0 && e.corrections <= 6, "{}", e.corrections);
    }
}
