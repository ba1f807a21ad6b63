//! What pulled sources, edge pulls and push relays share: the retry delay, URLs with their
//! credentials hidden, and the state the API reports for each.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How long a relay must stay live for its next failure to start the backoff over: one that
/// goes live and drops at once (a camera that sends a packet and closes, a target that
/// accepts a publish and then drops it) keeps backing off instead of reconnecting in a loop.
pub const STABLE_LIVE: Duration = Duration::from_secs(10);

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

/// `url` with what may be a secret hidden, for logs, errors and the API: any `user:password@`
/// becomes `***@` and the value of each query parameter `***` (tokens, camera passwords in
/// the query; an edge's `ferrocast_via` chain stays). The user part ends at the last `@` before the first `/` after the host: a
/// password with a raw `?` or `#` is hidden too (one with a raw `/` is refused by
/// [`crate::config::check_relay_url`]).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = match rest[..end].rfind('@') {
        Some(at) => (format!("***@{}", &rest[at + 1..end]), &rest[end..]),
        None => {
            // No credentials: the authority ends at the first of `/ ? #`.
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            (rest[..end].to_owned(), &rest[end..])
        }
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
            let hidden: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    // An edge's chain of server ids is no secret, and it shows how a pull came.
                    Some((k, _)) if k == crate::edge::VIA_KEY => kv.to_owned(),
                    Some((k, _)) => format!("{k}=***"),
                    None => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}{}", hidden.join("&"), fragment.map(|f| format!("#{f}")).unwrap_or_default())
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// [`redact`] for a push target, whose last path segment is a stream key (`rtmp://a.rtmp.
/// youtube.com/live2/KEY`): that is hidden too.
pub fn redact_key(url: &str) -> String {
    let r = redact(url);
    let (base, query) = r.split_once('?').map_or((r.as_str(), None), |(b, q)| (b, Some(q)));
    let Some((scheme, rest)) = base.split_once("://") else { return r };
    match rest.find('/').map(|i| (i, rest.rfind('/').unwrap_or(i))) {
        // At least `/app/key`: the key is the last segment.
        Some((first, last)) if last > first && last + 1 < rest.len() => {
            let q = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{scheme}://{}/***{q}", &rest[..last])
        }
        _ => r,
    }
}

/// `text` (a camera's SDP, an answer) with the `user:password@` of every URL in it hidden:
/// cameras echo their own URL, credentials included, in `a=control` and Content-Base.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '>').unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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
    fn redact_hides_credentials_and_query_values() {
        assert_eq!(redact("rtsp://admin:p%40ss@cam:554/h264?x=1"), "rtsp://***@cam:554/h264?x=***");
        assert_eq!(redact("rtsp://a:b@c@cam/x"), "rtsp://***@cam/x");
        assert_eq!(redact("rtmp://origin/live/a"), "rtmp://origin/live/a");
        assert_eq!(redact("rtmp://origin/live/a@b"), "rtmp://origin/live/a@b");
        assert_eq!(redact("not a url"), "not a url");
        // A password with a raw ? or # is hidden whole.
        assert_eq!(redact("rtsp://admin:pa?ss@cam/x"), "rtsp://***@cam/x");
        assert_eq!(redact("rtsp://admin:pa#ss@cam/x"), "rtsp://***@cam/x");
        assert_eq!(redact("rtsp://admin:pa?ss@cam"), "rtsp://***@cam");
        assert_eq!(
            redact("rtsp://cam/onvif?user=admin&password=secret&x#frag"),
            "rtsp://cam/onvif?user=***&password=***&x#frag"
        );
        assert_eq!(redact("rtmp://o:1935?ferrocast_via=a.b&t=x"), "rtmp://o:1935?ferrocast_via=a.b&t=***");
    }

    #[test]
    fn urls_in_text_lose_their_credentials() {
        let sdp = "v=0\r\na=control:rtsp://admin:p@ss@10.0.0.5:554/Streaming/\r\na=x:rtsp://cam/trackID=1\r\n";
        assert_eq!(
            redact_urls_in(sdp),
            "v=0\r\na=control:rtsp://***@10.0.0.5:554/Streaming/\r\na=x:rtsp://cam/trackID=1\r\n"
        );
        assert_eq!(redact_urls_in("no urls, a@b"), "no urls, a@b");
        assert_eq!(redact_urls_in("end rtsp://u:p@h"), "end rtsp://***@h");
    }

    #[test]
    fn push_keys_are_hidden() {
        assert_eq!(redact_key("rtmp://a.rtmp.youtube.com/live2/abcd-efgh"), "rtmp://a.rtmp.youtube.com/live2/***");
        assert_eq!(redact_key("rtmp://u:p@host/app/key?token=x"), "rtmp://***@host/app/***?token=***");
        assert_eq!(redact_key("rtsp://other:8554/cams/a"), "rtsp://other:8554/cams/***");
        assert_eq!(redact_key("rtmp://host/app"), "rtmp://host/app");
        assert_eq!(redact_key("rtmp://host"), "rtmp://host");
    }
}
