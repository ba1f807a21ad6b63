//! Wall-clock time for the server's timelines, and the mapping of a stream's media time to
//! it (DESIGN.md "Timeline").
//!
//! One rule: wall-clock time is read from the system once, then advanced by the monotonic
//! clock, so a step of the system clock (NTP correcting it, an operator setting it) moves
//! nothing that was derived from it: not a stream's mapping, not the NTP times of RTCP sender
//! reports, not arrival times.

use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time as the system gave it at one instant, advanced from there by the
/// monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    unix_micros: u64,
    at: Instant,
}

impl WallClock {
    /// A clock that reads `unix_micros` at `at`.
    pub fn new(unix_micros: u64, at: Instant) -> WallClock {
        WallClock { unix_micros, at }
    }

    /// The process's clock: the system's wall-clock time at its first use.
    pub fn process() -> &'static WallClock {
        static CLOCK: OnceLock<WallClock> = OnceLock::new();
        CLOCK.get_or_init(|| {
            let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
            WallClock::new(unix, Instant::now())
        })
    }

    /// Wall-clock time at `instant`, in µs since the Unix epoch.
    pub fn at(&self, instant: Instant) -> u64 {
        if instant >= self.at {
            self.unix_micros.saturating_add(instant.duration_since(self.at).as_micros() as u64)
        } else {
            self.unix_micros.saturating_sub(self.at.duration_since(instant).as_micros() as u64)
        }
    }
}

/// Wall-clock time now, in µs since the Unix epoch, by the process's [`WallClock`].
pub fn unix_micros() -> u64 {
    WallClock::process().at(Instant::now())
}

/// Where a stream's mapping of media time to wall-clock time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The arrival of the publish's first frame.
    Arrival,
    /// The publisher said when it captured a frame (RTCP sender reports).
    Capture,
}

/// A point of a stream's timeline: media time (the stream's output timeline, in µs) and the
/// wall-clock time it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Media time, µs, on the timeline readers see.
    pub media_micros: i64,
    /// Wall-clock time of that media time, µs since the Unix epoch.
    pub unix_micros: u64,
    /// Where it came from.
    pub source: Source,
}

impl Mapping {
    /// The media time (µs) at wall-clock time `unix_micros`.
    pub fn media_at(&self, unix_micros: u64) -> i64 {
        self.media_micros.saturating_add(unix_micros as i64 - self.unix_micros as i64)
    }
}

/// The farthest a publisher's capture time (RTCP sender reports) may be from the arrival
/// mapping to replace it. Media is captured shortly before it arrives; a camera whose clock is
/// minutes or years off (never set, counting from boot) would otherwise move every wall-clock
/// time the stream's outputs state.
pub const MAX_CAPTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// The mapping of one stream, set once per publish: from the first frame's arrival, replaced
/// once by the publisher's own word ([`MediaClock::capture`]). Shared with the stream's
/// outputs (RTP sender reports).
#[derive(Debug, Default)]
pub struct MediaClock {
    mapping: Mutex<Option<Mapping>>,
}

impl MediaClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Mapping>> {
        self.mapping.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new publish: no mapping until its first frame.
    pub(crate) fn reset(&self) {
        *self.lock() = None;
    }

    /// The first frame of a publish arrived: its media time is now, unless the publisher
    /// said otherwise already.
    pub(crate) fn arrival(&self, media_micros: i64, unix_micros: u64) {
        self.lock().get_or_insert(Mapping { media_micros, unix_micros, source: Source::Arrival });
    }

    /// The publisher says when it captured `media_micros`. The first word of a publish
    /// replaces the arrival mapping, unless it is more than [`MAX_CAPTURE_SKEW`] away from
    /// it (logged); later ones are ignored. True when it was taken.
    pub(crate) fn capture(&self, media_micros: i64, unix_micros: u64) -> bool {
        let mut m = self.lock();
        if m.is_some_and(|m| m.source == Source::Capture) {
            return false;
        }
        if let Some(arrival) = *m {
            let skew = arrival.media_at(unix_micros).saturating_sub(media_micros).unsigned_abs();
            if skew > MAX_CAPTURE_SKEW.as_micros() as u64 {
                tracing::warn!(
                    skew_s = skew / 1_000_000,
                    "timeline: the publisher's capture time is too far from arrival (its clock is off); kept arrival"
                );
                return false;
            }
        }
        *m = Some(Mapping { media_micros, unix_micros, source: Source::Capture });
        true
    }

    /// The mapping, once the publish has a frame.
    pub fn mapping(&self) -> Option<Mapping> {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wall_clock_advances_with_the_monotonic_clock_only() {
        let t0 = Instant::now();
        let c = WallClock::new(1_000_000_000, t0);
        assert_eq!(c.at(t0), 1_000_000_000);
        assert_eq!(c.at(t0 + Duration::from_secs(5)), 1_005_000_000);
        // Whatever the system clock does meanwhile, the process clock read once is kept.
        let p = WallClock::process();
        let a = p.at(t0);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(p.at(t0), a);
        assert!(unix_micros() >= a + 2000);
    }

    #[test]
    fn capture_skew_too_large() {
        let c = MediaClock::default();
        c.arrival(0, 1_000_000_000_000);
        // A camera whose clock is an hour off: arrival is kept.
        assert!(!c.capture(0, 1_000_000_000_000 + 3_600_000_000));
        assert_eq!(c.mapping().map(|m| m.source), Some(Source::Arrival));
        // Half a second of capture-to-arrival delay is taken.
        assert!(c.capture(0, 1_000_000_000_000 - 500_000));
        assert_eq!(c.mapping().map(|m| m.source), Some(Source::Capture));
    }

    #[test]
    fn arrival_then_capture_once() {
        let c = MediaClock::default();
        assert_eq!(c.mapping(), None);
        c.arrival(5_000, 100);
        c.arrival(9_000, 900);
        assert_eq!(c.mapping().unwrap().media_at(1_100), 6_000, "the first arrival stays");
        assert!(c.capture(0, 50));
        assert!(!c.capture(0, 70), "only the first word of a publish counts");
        let m = c.mapping().unwrap();
        assert_eq!((m.source, m.media_at(1_050)), (Source::Capture, 1_000));
        c.reset();
        assert_eq!(c.mapping(), None);
    }
}
