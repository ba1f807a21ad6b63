//! The one rule of playback timing (issue 16, "Timestamps"): a client that plays what it gets
//! at normal speed shows Scale N as N times media per second.
//!
//! - **Stamps.** A frame of media time `t`, played from the PLAY point at media time `t0`, is
//!   stamped `|t - t0| / |scale|` after the stamp of the PLAY point (`t` ahead of `t0` in the
//!   direction of play). Stamps are µs on the
//!   client's presentation timeline; they always increase, forward or backward in media
//!   (a reverse play reaches earlier media with later stamps). After a seek, a resume or a
//!   new Scale the timeline continues as the client's clock does: the new PLAY point is
//!   stamped where the old timeline stands at that moment (a pause counts), and at least
//!   [`GAP_US`] after the last stamp sent.
//! - **Sending.** A frame is sent `stamp / speed` after the PLAY was answered (by its decode
//!   time, so B-frames go in decode order); `Speed` changes when packets leave, never their
//!   stamps. Without rate control (ONVIF `Rate-Control: no`) frames go as fast as the client
//!   reads.

use std::time::{Duration, Instant};

/// Slowest and fastest Scale magnitude served (RFC 2326 12.34 lets the server pick the
/// nearest it supports and say so).
pub const SCALES: std::ops::RangeInclusive<f64> = 0.5..=16.0;

/// Above this Scale (and in reverse at any Scale) only keyframes are sent: decoding every
/// frame at 4x or more, or backwards, is what clients cannot do.
pub const ALL_FRAMES_MAX_SCALE: f64 = 2.0;

/// Slowest and fastest Speed served.
pub const SPEEDS: std::ops::RangeInclusive<f64> = 0.25..=16.0;

/// The stamp distance from the last frame sent to the first after a seek, resume or new
/// Scale: one frame of 25 fps video, so no two frames share a stamp.
pub const GAP_US: i64 = 40_000;

/// The Scale served for an asked one: its magnitude clamped to [`SCALES`], its sign kept.
pub fn supported_scale(asked: f64) -> f64 {
    if !asked.is_finite() || asked == 0.0 {
        return 1.0;
    }
    asked.signum() * asked.abs().clamp(*SCALES.start(), *SCALES.end())
}

/// The Speed served for an asked one.
pub fn supported_speed(asked: f64) -> f64 {
    if !asked.is_finite() || asked <= 0.0 {
        return 1.0;
    }
    asked.clamp(*SPEEDS.start(), *SPEEDS.end())
}

/// Whether a Scale sends keyframes only.
pub fn keyframes_only(scale: f64) -> bool {
    !(0.0..=ALL_FRAMES_MAX_SCALE).contains(&scale)
}

/// The timing of one PLAY: from its point in media time and on the client's timeline, at its
/// Scale and Speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Media time of the PLAY point, µs.
    pub t0_us: i64,
    /// The stamp of the PLAY point, µs on the client's timeline.
    pub stamp0_us: i64,
    /// When the PLAY point is sent.
    pub wall0: Instant,
    /// Scale (negative: reverse).
    pub scale: f64,
    /// Speed.
    pub speed: f64,
    /// False for `Rate-Control: no`: send as fast as the client reads.
    pub realtime: bool,
}

impl Pace {
    /// The stamp of media time `t_us`. Media behind the PLAY point in the direction of play
    /// (a B-frame presented before the keyframe it follows) is stamped before the point.
    pub fn stamp(&self, t_us: i64) -> i64 {
        let media = if self.scale < 0.0 { self.t0_us - t_us } else { t_us - self.t0_us } as f64;
        self.stamp0_us + (media / self.scale.abs()).round() as i64
    }

    /// When a frame stamped `stamp_us` is sent; None: now (no rate control).
    pub fn send_at(&self, stamp_us: i64) -> Option<Instant> {
        if !self.realtime {
            return None;
        }
        let after = (stamp_us - self.stamp0_us).max(0) as f64 / self.speed;
        Some(self.wall0 + Duration::from_micros(after as u64))
    }

    /// The stamp being presented at `now` (for sender reports): the PLAY point's advanced by
    /// the time since it was sent, times Speed.
    pub fn stamp_at(&self, now: Instant) -> i64 {
        let since = now.saturating_duration_since(self.wall0).as_micros() as f64;
        self.stamp0_us + (since * self.speed) as i64
    }

    /// Whether media time `t_us` comes after `u_us` in the direction of play.
    pub fn ahead(&self, t_us: i64, u_us: i64) -> bool {
        if self.scale < 0.0 { t_us < u_us } else { t_us > u_us }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(scale: f64, speed: f64) -> (Pace, Instant) {
        let wall0 = Instant::now();
        (Pace { t0_us: 10_000_000, stamp0_us: 500_000, wall0, scale, speed, realtime: true }, wall0)
    }

    #[test]
    fn scale_decides_stamps_and_speed_sending() {
        let (p, w) = pace(4.0, 1.0);
        assert_eq!(p.stamp(10_000_000), 500_000);
        assert_eq!(p.stamp(14_000_000), 1_500_000, "4 s of media in 1 s");
        assert_eq!(p.send_at(1_500_000), Some(w + Duration::from_secs(1)));
        let (p, w) = pace(-2.0, 1.0);
        assert_eq!(p.stamp(6_000_000), 2_500_000, "backwards: later stamps for earlier media");
        assert!(p.ahead(6_000_000, 7_000_000));
        assert_eq!(p.send_at(2_500_000), Some(w + Duration::from_secs(2)));
        let (p, w) = pace(1.0, 2.0);
        assert_eq!(p.stamp(12_000_000), 2_500_000, "Speed never changes stamps");
        assert_eq!(p.send_at(2_500_000), Some(w + Duration::from_secs(1)), "it sends twice as fast");
        assert_eq!(p.stamp_at(w + Duration::from_secs(1)), 2_500_000);
        let (p, _) = pace(0.5, 1.0);
        assert_eq!(p.stamp(11_000_000), 2_500_000, "half speed: 1 s of media over 2 s");
        let p = Pace { realtime: false, ..p };
        assert_eq!(p.send_at(9_000_000), None);
    }

    #[test]
    fn unsupported_rates_become_the_nearest_supported() {
        assert_eq!(supported_scale(32.0), 16.0);
        assert_eq!(supported_scale(-100.0), -16.0);
        assert_eq!(supported_scale(0.1), 0.5);
        assert_eq!(supported_scale(-2.0), -2.0);
        assert_eq!(supported_speed(100.0), 16.0);
        assert_eq!(supported_speed(-1.0), 1.0);
        assert!(keyframes_only(4.0) && keyframes_only(-0.5) && !keyframes_only(2.0) && !keyframes_only(0.5));
    }
}
