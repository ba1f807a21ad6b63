//! What pulled sources, edge pulls and push relays share: the retry delay, URLs with their
//! credentials hidden, and the state the API reports for each.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Exponential backoff with jitter: each failure doubles the delay from `min` up to `max`;
/// the delay waited is uniform in [d/2, d] so that relays failing together (an origin
/// restarting under 200 cameras' edges) do not retry in lockstep. A success resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        Backoff { min, max: max.max(min), next: min, seed }
    }

    /// The delay before the next try; the one after is twice as long (up to the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64: jitter needs no more than this.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = d / 2;
        let span = (d - half).as_micros() as u64;
        half + Duration::from_micros(if span == 0 { 0 } else { self.seed % (span + 1) })
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `url` with any `user:password@` replaced by `***@`: for logs, errors and the API, which
/// never show credentials.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Where a relay (a pulled source, an edge pull, a push) stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// Not running: an on-demand source without readers, a push whose path is not live.
    #[default]
    Idle,
    /// Connecting or negotiating.
    Connecting,
    /// Media flows.
    Live,
    /// Failed; the next try is scheduled.
    WaitingToRetry,
}

/// What the API reports for one relay. Holds no credentials: `url` is redacted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayStatus {
    /// The URL, credentials hidden.
    pub url: String,
    /// Where it stands.
    pub state: RelayState,
    /// Tries that failed since the relay last went live.
    pub retries: u64,
    /// Why the last try failed (credentials hidden).
    pub last_error: Option<String>,
    /// When it last went live (RFC 3339 UTC), while live.
    pub live_since: Option<String>,
    /// Media bytes carried since the relay went live.
    pub bytes: u64,
    /// Media bits per second over the last few seconds.
    pub bitrate: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let full = Duration::from_millis((100u64 << i.min(4)).min(1000));
            assert!(*d >= full / 2 && *d <= full, "try {i}: {d:?} outside [{:?}, {full:?}]", full / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn redact_hides_credentials_only() {
        assert_eq!(redact("rtsp://admin:p%40ss@cam:554/h264?x=1"), "rtsp://***@cam:554/h264?x=1");
        assert_eq!(redact("rtsp://a:b@c@cam/x"), "rtsp://***@cam/x");
        assert_eq!(redact("rtmp://origin/live/a"), "rtmp://origin/live/a");
        assert_eq!(redact("rtmp://origin/live/a@b"), "rtmp://origin/live/a@b");
        assert_eq!(redact("not a url"), "not a url");
    }
}
