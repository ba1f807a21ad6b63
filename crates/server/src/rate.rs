//! A stream's input rate over the last seconds (`bitrate_in` and the measured frame rate of
//! `/api/v1/paths`): a few one-second buckets, fed under the stream's state lock the publish
//! path already holds (no atomic, no allocation per frame).

use std::time::Duration;

use tokio::time::Instant;

/// Seconds averaged over.
pub const WINDOW_SECS: usize = 5;

/// Bytes and video frames per one-second bucket, the newest [`WINDOW_SECS`] of them.
#[derive(Debug, Default, Clone)]
pub struct RateMeter {
    /// When bucket 0 began (the first frame).
    origin: Option<Instant>,
    /// Seconds since `origin` of the newest bucket.
    newest: u64,
    /// (bytes, video frames) per second, ring indexed by second % WINDOW_SECS.
    buckets: [(u64, u32); WINDOW_SECS],
}

impl RateMeter {
    /// Counts `bytes` (a frame's payload; `video` when it is a video frame) arriving at `now`.
    pub fn add(&mut self, now: Instant, bytes: usize, video: bool) {
        let origin = *self.origin.get_or_insert(now);
        let sec = now.saturating_duration_since(origin).as_secs();
        self.advance(sec);
        let b = &mut self.buckets[(sec % WINDOW_SECS as u64) as usize];
        b.0 += bytes as u64;
        b.1 += u32::from(video);
    }

    /// Empties the buckets between the newest one and second `sec`.
    fn advance(&mut self, sec: u64) {
        if sec <= self.newest {
            return;
        }
        let gap = (sec - self.newest).min(WINDOW_SECS as u64);
        for k in 1..=gap {
            self.buckets[((self.newest + k) % WINDOW_SECS as u64) as usize] = (0, 0);
        }
        self.newest = sec;
    }

    /// (bits per second, video frames per second) over the whole seconds before `now` in the
    /// window (the current, partial second is left out; fewer seconds right after a start).
    pub fn rates(&self, now: Instant) -> (f64, f64) {
        let Some(origin) = self.origin else { return (0.0, 0.0) };
        let sec = now.saturating_duration_since(origin).as_secs();
        let full = sec.min(WINDOW_SECS as u64 - 1);
        if full == 0 {
            return (0.0, 0.0);
        }
        let (mut bytes, mut frames) = (0u64, 0u64);
        for back in 1..=full {
            let s = sec - back;
            // Seconds newer than the newest bucket, or fallen out of the ring, had nothing.
            if s > self.newest || self.newest - s >= WINDOW_SECS as u64 {
                continue;
            }
            let b = self.buckets[(s % WINDOW_SECS as u64) as usize];
            bytes += b.0;
            frames += u64::from(b.1);
        }
        let secs = Duration::from_secs(full).as_secs_f64();
        (bytes as f64 * 8.0 / secs, frames as f64 / secs)
    }

    /// Starts over (a new publisher).
    pub fn reset(&mut self) {
        *self = RateMeter::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rates_over_whole_seconds_and_silence_counts_as_zero() {
        let mut m = RateMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.rates(t0), (0.0, 0.0));
        // 25 video frames of 1000 bytes a second for 3 s.
        for i in 0..75u64 {
            m.add(t0 + Duration::from_millis(i * 40), 1000, true);
        }
        let (bps, fps) = m.rates(t0 + Duration::from_millis(3500));
        assert_eq!(bps, 200_000.0);
        assert_eq!(fps, 25.0);
        // Silence: older seconds leave the window, and the rate falls to zero.
        let (bps, fps) = m.rates(t0 + Duration::from_secs(20));
        assert_eq!((bps, fps), (0.0, 0.0));
        // Audio counts bytes, not frames.
        m.add(t0 + Duration::from_secs(21), 500, false);
        let (bps, fps) = m.rates(t0 + Duration::from_millis(22_100));
        assert_eq!(fps, 0.0);
        assert_eq!(bps, 500.0 * 8.0 / 4.0);
        m.reset();
        assert_eq!(m.rates(t0 + Duration::from_secs(30)), (0.0, 0.0));
    }
}
