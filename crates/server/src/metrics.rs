//! Prometheus metrics at `/metrics` (issue 18): the text exposition format 0.0.4, every name
//! prefixed `ferrocast_`, with HELP and TYPE lines and escaped label values.
//!
//! A hand-kept registry rather than the `metrics` and `metrics-exporter-prometheus` crates:
//! the server already keeps its figures in atomics (the hub's [`HubStats`], the sessions,
//! the recorder's and the auth counters) and a scrape reads them as they are, so nothing on a
//! media path changes to feed a second registry, no global recorder is installed (tests run
//! several servers in one process), and the build gains no crate. The one figure the server
//! did not keep, the ingest-to-first-write latency, is a [`Histogram`] of fixed buckets that
//! costs a few relaxed atomic adds per observation.
//!
//! What is exported (each with its HELP line): build info and uptime; connections and
//! sessions open by protocol and role, opened and kicked; bytes received and sent; streams and
//! readers (per live path too: a label bounded by `limits.max_streams`); every [`HubStats`]
//! figure (a field added to it without being exported here is a compile error: see
//! [`hub_counters`]); auth refusals; RTCP loss and jitter of RTSP readers, aggregated per
//! protocol (never a label per session); recording bytes, errors and deletions by reason;
//! pulled sources by state and their reconnects; push targets by state. Credentials are never
//! in a label: pulled and push URLs are not exported at all.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::hub::{Hub, HubStats};
use crate::push::PushRegistry;
use crate::record::Recordings;
use crate::relay::RelayState;
use crate::session::{Protocol, Role};
use crate::source::Sources;

/// The route.
pub const PATH: &str = "/metrics";

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the [`Histogram`] buckets, in microseconds: 0.1 ms to 1 s, four per decade
/// (1, 2, 3, 5), fine enough to tell a p99 of 2 ms from one of 5 ms.
pub const BUCKETS_US: [u64; 17] = [
    100, 200, 300, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 20_000, 30_000, 50_000, 100_000, 200_000, 300_000, 500_000,
    1_000_000,
];

/// A latency histogram with the fixed [`BUCKETS_US`] (and +Inf): an observation is three
/// relaxed atomic adds, a scrape reads the buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    /// Sum of the observations, µs.
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// What a [`Histogram`] held at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`BUCKETS_US`], then +Inf (not cumulative).
    pub buckets: Vec<u64>,
    /// Sum, µs.
    pub sum_us: u64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now. The count is read first, so it never exceeds the buckets' sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let count = self.count.load(Ordering::Relaxed);
        let sum_us = self.sum_us.load(Ordering::Relaxed);
        let buckets = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        HistogramSnapshot { buckets, sum_us, count }
    }
}

/// One exported [`HubStats`] figure.
#[derive(Debug)]
pub enum HubFigure {
    /// A counter: name (without the prefix), help, value.
    Counter(&'static str, &'static str, u64),
    /// A histogram of seconds: name (without the prefix), help, snapshot.
    Histogram(&'static str, &'static str, HistogramSnapshot),
}

impl HubFigure {
    /// The metric's name, `ferrocast_` prefix included.
    pub fn name(&self) -> String {
        match self {
            HubFigure::Counter(n, ..) | HubFigure::Histogram(n, ..) => format!("ferrocast_{n}"),
        }
    }
}

/// Every [`HubStats`] figure. The struct is taken apart without `..`: a field added to it
/// does not compile until it is exported here.
pub fn hub_counters(stats: &HubStats) -> Vec<HubFigure> {
    let HubStats {
        frames_dropped,
        readers_too_slow,
        timestamp_rebases,
        timestamp_jumps,
        timestamps_held,
        reader_panics,
        capture_anchors,
        frames_ingested,
        ingest_to_first_write,
    } = stats;
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    vec![
        HubFigure::Counter(
            "frames_skipped_total",
            "Frames readers skipped to catch up with a keyframe (slow readers).",
            v(frames_dropped),
        ),
        HubFigure::Counter(
            "readers_cut_off_total",
            "Readers disconnected for staying behind the stream.",
            v(readers_too_slow),
        ),
        HubFigure::Counter(
            "timestamp_rebases_total",
            "Publishers whose timestamps were shifted to follow on from the previous publisher.",
            v(timestamp_rebases),
        ),
        HubFigure::Counter(
            "timestamp_jumps_total",
            "Breaks in a publisher's clock (whole stream or one track) smoothed over.",
            v(timestamp_jumps),
        ),
        HubFigure::Counter(
            "timestamps_held_total",
            "Frames that stepped back a little in their track and were held at its last time.",
            v(timestamps_held),
        ),
        HubFigure::Counter(
            "reader_panics_total",
            "Readers ended by a panic in their stream's fan-out.",
            v(reader_panics),
        ),
        HubFigure::Counter(
            "capture_anchors_total",
            "Streams whose media time was mapped to the publisher's capture time (RTCP sender reports).",
            v(capture_anchors),
        ),
        HubFigure::Counter(
            "frames_ingested_total",
            "Frames handed to readers, every stream (the histogram below measures those the fan-out writes).",
            v(frames_ingested),
        ),
        HubFigure::Histogram(
            "ingest_to_first_write_seconds",
            "From a frame entering the hub (the publisher's push) to the fan-out's first write of it to a reader socket.",
            ingest_to_first_write.snapshot(),
        ),
    ]
}

/// What a scrape reads, beyond the hub.
#[derive(Clone, Default)]
pub struct Extras {
    /// Pulled sources.
    pub sources: Option<Arc<Sources>>,
    /// Push relays.
    pub push: Option<Arc<PushRegistry>>,
    /// Recordings.
    pub recordings: Option<Arc<Recordings>>,
    /// Config reloads and, through them, the hooks.
    pub reloader: Option<Arc<crate::reload::Reloader>>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("sources", &self.sources.is_some())
            .field("push", &self.push.is_some())
            .field("recordings", &self.recordings.is_some())
            .field("reloader", &self.reloader.is_some())
            .finish()
    }
}

/// The exporter: what `/metrics` reads, and the high-water marks that keep its byte counters
/// monotonic (a session's bytes move from the live sessions to the ended total when it ends;
/// a scrape in between must not see the sum go back).
#[derive(Debug)]
pub struct Exporter {
    hub: Arc<Hub>,
    more: Extras,
    started: SystemTime,
    started_at: std::time::Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Exporter {
    /// An exporter of `hub` and what `more` holds; the uptime counts from now.
    pub fn new(hub: Arc<Hub>, more: Extras) -> Arc<Exporter> {
        Arc::new(Exporter {
            hub,
            more,
            started: SystemTime::now(),
            started_at: std::time::Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        })
    }

    /// The exposition now.
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        self.render_process(&mut w);
        self.render_sessions(&mut w);
        self.render_streams(&mut w);
        for figure in hub_counters(&self.hub.stats) {
            match figure {
                HubFigure::Counter(name, help, value) => w.single(name, "counter", help, value),
                HubFigure::Histogram(name, help, snap) => w.histogram(name, help, &snap),
            }
        }
        let auth = &self.hub.auth.stats;
        w.single(
            "auth_denied_total",
            "counter",
            "Requests refused: no or wrong credentials, or no permission.",
            auth.denied.load(Ordering::Relaxed),
        );
        w.single(
            "auth_blocked_total",
            "counter",
            "Requests refused without a check because their address failed too often.",
            auth.blocked.load(Ordering::Relaxed),
        );
        self.render_recordings(&mut w);
        self.render_relays(&mut w);
        self.render_ops(&mut w);
        w.out
    }

    fn render_process(&self, w: &mut Writer) {
        w.family("build_info", "gauge", "The server's version, as a label; always 1.");
        w.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1u64);
        let start = self.started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
        w.single(
            "start_time_seconds",
            "gauge",
            "When the server started, seconds since the Unix epoch.",
            start.as_secs_f64(),
        );
        w.single(
            "uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            self.started_at.elapsed().as_secs_f64(),
        );
    }

    fn render_sessions(&self, w: &mut Writer) {
        let sessions = &self.hub.sessions;
        let st = &sessions.stats;
        let ended_in = st.ended_bytes_in.load(Ordering::Relaxed);
        let ended_out = st.ended_bytes_out.load(Ordering::Relaxed);
        let list = sessions.list();
        let mut connections = [0u64; Protocol::ALL.len()];
        let mut begun = [[0u64; Role::ALL.len()]; Protocol::ALL.len()];
        let (mut live_in, mut live_out) = (0u64, 0u64);
        // Per protocol: reports, packets lost, worst fraction lost, jitter sum and worst.
        let mut rtcp: [RtcpSum; Protocol::ALL.len()] = Default::default();
        for s in &list {
            let p = proto_index(s.protocol);
            connections[p] += 1;
            if let Some(role) = s.role() {
                begun[p][role_index(role)] += 1;
            }
            live_in += s.bytes_in.load(Ordering::Relaxed);
            live_out += s.bytes_out.load(Ordering::Relaxed);
            if let Some(r) = *s.rtcp.lock().unwrap_or_else(|e| e.into_inner()) {
                let e = &mut rtcp[p];
                e.0 += 1;
                e.1 = e.1.saturating_add(r.packets_lost);
                e.2 = e.2.max(r.fraction_lost);
                e.3 += r.jitter;
                e.4 = e.4.max(r.jitter);
            }
        }
        w.family("connections", "gauge", "Open sessions (connections, sources, push relays) by protocol.");
        for (p, n) in Protocol::ALL.iter().zip(connections) {
            w.sample("connections", &[("protocol", p.as_str())], n);
        }
        w.family("sessions", "gauge", "Sessions that publish, read, play back, pull or push, by protocol and role.");
        for (p, row) in Protocol::ALL.iter().zip(begun) {
            for (r, n) in Role::ALL.iter().zip(row) {
                w.sample("sessions", &[("protocol", p.as_str()), ("role", r.as_str())], n);
            }
        }
        w.single("sessions_opened_total", "counter", "Sessions opened.", st.opened.load(Ordering::Relaxed));
        w.single(
            "sessions_kicked_total",
            "counter",
            "Sessions kicked through the API.",
            st.kicked.load(Ordering::Relaxed),
        );
        // Ended totals were read before the list: a session that ended in between is missing
        // from both (never counted twice), and the high-water mark hides the dip.
        let now_in = ended_in + live_in;
        let bytes_in = self.bytes_in.fetch_max(now_in, Ordering::Relaxed).max(now_in);
        let now_out = ended_out + live_out;
        let bytes_out = self.bytes_out.fetch_max(now_out, Ordering::Relaxed).max(now_out);
        w.single("received_bytes_total", "counter", "Bytes received by sessions, open and ended.", bytes_in);
        w.single("sent_bytes_total", "counter", "Bytes sent by sessions, open and ended.", bytes_out);
        // RTSP always (its readers are the ones that report); others once they have reports.
        let reporting: Vec<(Protocol, RtcpSum)> = Protocol::ALL
            .iter()
            .zip(rtcp)
            .filter(|(p, r)| r.0 > 0 || **p == Protocol::Rtsp)
            .map(|(p, r)| (*p, r))
            .collect();
        type Pick = fn(&RtcpSum) -> f64;
        let families: [(&str, &str, Pick); 5] = [
            ("rtcp_reports", "Open sessions whose peer sent an RTCP receiver report (RFC 3550 6.4.2).", |r| r.0 as f64),
            ("rtcp_packets_lost", "Packets lost, summed over the open sessions' latest receiver reports.", |r| {
                r.1 as f64
            }),
            ("rtcp_fraction_lost_max", "The worst fraction lost (0..1) in the open sessions' latest reports.", |r| r.2),
            ("rtcp_jitter_seconds_mean", "Mean interarrival jitter in the open sessions' latest reports.", |r| {
                if r.0 == 0 { 0.0 } else { r.3 / r.0 as f64 }
            }),
            ("rtcp_jitter_seconds_max", "The worst interarrival jitter in the open sessions' latest reports.", |r| r.4),
        ];
        for (name, help, pick) in families {
            w.family(name, "gauge", help);
            for (p, r) in &reporting {
                w.sample(name, &[("protocol", p.as_str())], pick(r));
            }
        }
    }

    fn render_streams(&self, w: &mut Writer) {
        let paths = self.hub.live_paths();
        let readers: Vec<usize> = paths.iter().map(|p| self.hub.readers(p)).collect();
        w.single("streams", "gauge", "Published paths.", paths.len() as u64);
        w.single(
            "readers",
            "gauge",
            "Readers (viewers) of the published paths; the server's own (HLS muxing, recording, push) not counted.",
            readers.iter().sum::<usize>() as u64,
        );
        w.family("stream_readers", "gauge", "Readers (viewers) of each published path.");
        for (p, n) in paths.iter().zip(readers) {
            w.sample("stream_readers", &[("path", p)], n as u64);
        }
    }

    fn render_recordings(&self, w: &mut Writer) {
        let Some(rec) = &self.more.recordings else { return };
        let s = &rec.stats;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        w.single("recording_bytes_written_total", "counter", "Bytes written to recording files.", v(&s.bytes_written));
        w.single(
            "recording_parts_written_total",
            "counter",
            "Recording parts (fMP4 fragments) written.",
            v(&s.parts_written),
        );
        w.single(
            "recording_parts_dropped_total",
            "counter",
            "Recording parts lost: a disk that could not keep up, or no file could be written.",
            v(&s.parts_dropped),
        );
        w.single("recording_write_errors_total", "counter", "Recording writes that failed.", v(&s.write_errors));
        w.family("recording_segments_deleted_total", "counter", "Recording files deleted, by reason.");
        for (reason, n) in s.deleted_by_reason() {
            w.sample("recording_segments_deleted_total", &[("reason", reason)], n);
        }
        w.single(
            "recording_bytes_deleted_total",
            "counter",
            "Bytes of recording files deleted by retention.",
            v(&s.bytes_deleted),
        );
    }

    fn render_ops(&self, w: &mut Writer) {
        let Some(reloader) = &self.more.reloader else { return };
        let hooks = &reloader.hooks().stats;
        let figures = [
            ("hooks_sent_total", "Hook events delivered (a 2xx answer, a command's zero exit).", &hooks.sent),
            ("hooks_failed_total", "Hook events given up after every try.", &hooks.failed),
            ("hooks_dropped_total", "Hook events dropped: a target's queue was full.", &hooks.dropped),
            ("config_reloads_total", "Config reloads (SIGHUP) and API patches applied.", &reloader.stats.applied),
            (
                "config_reloads_refused_total",
                "Config reloads and API patches refused; the old settings stayed.",
                &reloader.stats.refused,
            ),
        ];
        for (name, help, value) in figures {
            w.single(name, "counter", help, value.load(Ordering::Relaxed));
        }
    }

    fn render_relays(&self, w: &mut Writer) {
        const STATES: [RelayState; 4] =
            [RelayState::Idle, RelayState::Connecting, RelayState::Live, RelayState::WaitingToRetry];
        if let Some(sources) = &self.more.sources {
            let mut by_state = [0u64; 4];
            for path in sources.paths() {
                if let Some(s) = sources.status(&path) {
                    by_state[state_index(s.relay.state)] += 1;
                }
            }
            w.family("sources", "gauge", "Pulled sources (configured, and edge pulls running), by state.");
            for (s, n) in STATES.iter().zip(by_state) {
                w.sample("sources", &[("state", state_name(*s))], n);
            }
            w.single(
                "source_reconnects_total",
                "counter",
                "Tries of a pulled source that failed or ended, each followed by another.",
                sources.stats.reconnects.load(Ordering::Relaxed),
            );
        }
        if let Some(push) = &self.more.push {
            let mut by_state = [0u64; 4];
            for s in push.running() {
                by_state[state_index(s)] += 1;
            }
            w.family(
                "push_targets",
                "gauge",
                "Push relays running (their path is live or in its grace period), by state.",
            );
            for (s, n) in STATES.iter().zip(by_state) {
                w.sample("push_targets", &[("state", state_name(*s))], n);
            }
        }
    }
}

/// RTCP figures of one protocol's open sessions: reports, packets lost, worst fraction lost,
/// jitter sum and worst jitter (seconds).
type RtcpSum = (u64, i64, f64, f64, f64);

/// The answer to `GET /metrics` (hyper leaves the body out for `HEAD`).
pub fn respond(exporter: &Exporter) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    ([(header::CONTENT_TYPE, CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")], exporter.render()).into_response()
}

fn proto_index(p: Protocol) -> usize {
    Protocol::ALL.iter().position(|x| *x == p).unwrap_or(0)
}

fn role_index(r: Role) -> usize {
    Role::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

fn state_index(s: RelayState) -> usize {
    match s {
        RelayState::Idle => 0,
        RelayState::Connecting => 1,
        RelayState::Live => 2,
        RelayState::WaitingToRetry => 3,
    }
}

fn state_name(s: RelayState) -> &'static str {
    match s {
        RelayState::Idle => "idle",
        RelayState::Connecting => "connecting",
        RelayState::Live => "live",
        RelayState::WaitingToRetry => "waiting_to_retry",
    }
}

/// A sample's value: integers as they are, floats in Prometheus' notation.
trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// Builds the exposition.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    /// HELP and TYPE lines of a family: its samples follow at once.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP ferrocast_{name} {}\n# TYPE ferrocast_{name} {kind}\n", escape_help(help));
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Value) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One sample line.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        line(&mut self.out, name, "", labels, value);
    }

    /// A histogram of seconds from a snapshot in µs.
    fn histogram(&mut self, name: &str, help: &str, snap: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (i, n) in snap.buckets.iter().enumerate() {
            cumulative += n;
            let le = match BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            // The count was read before the buckets: +Inf says the buckets' total, which the
            // format wants equal to `_count`; take the larger for both.
            line(&mut self.out, name, "_bucket", &[("le", &le)], cumulative);
        }
        let count = cumulative.max(snap.count);
        line(&mut self.out, name, "_sum", &[], snap.sum_us as f64 / 1e6);
        line(&mut self.out, name, "_count", &[], count);
    }
}

fn line(out: &mut String, name: &str, suffix: &str, labels: &[(&str, &str)], value: impl Value) {
    let _ = write!(out, "ferrocast_{name}{suffix}");
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    out.push(' ');
    value.write(out);
    out.push('\n');
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A HELP text as the format wants it: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;

    #[test]
    fn an_observation_goes_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        for us in [0, 100, 101, 1_000_000, 1_000_001, u64::MAX / 2] {
            h.observe_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!((s.buckets[0], s.buckets[1]), (2, 1), "le is inclusive: 100 µs is in the 0.1 ms bucket");
        assert_eq!(s.buckets[BUCKETS_US.len() - 1], 1, "1 s");
        assert_eq!(s.buckets[BUCKETS_US.len()], 2, "+Inf");
        assert!(BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }

    /// Each HubStats figure is in the exposition, with its HELP and TYPE lines; a histogram
    /// with cumulative buckets ending at +Inf = _count.
    #[tokio::test]
    async fn every_hub_figure_is_exported() {
        let hub = Hub::new(HubConfig::default());
        hub.stats.frames_dropped.fetch_add(7, Ordering::Relaxed);
        hub.stats.ingest_to_first_write.observe_us(1_500);
        hub.stats.ingest_to_first_write.observe_us(40_000);
        let text = Exporter::new(hub.clone(), Extras::default()).render();
        let figures = hub_counters(&hub.stats);
        assert_eq!(figures.len(), 9);
        for f in &figures {
            let name = f.name();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(text.contains("\nferrocast_frames_skipped_total 7\n"), "{text}");
        for line in [
            "ferrocast_ingest_to_first_write_seconds_bucket{le=\"0.001\"} 0",
            "ferrocast_ingest_to_first_write_seconds_bucket{le=\"0.002\"} 1",
            "ferrocast_ingest_to_first_write_seconds_bucket{le=\"0.05\"} 2",
            "ferrocast_ingest_to_first_write_seconds_bucket{le=\"+Inf\"} 2",
            "ferrocast_ingest_to_first_write_seconds_sum 0.0415",
            "ferrocast_ingest_to_first_write_seconds_count 2",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line}\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let mut out = String::new();
        line(&mut out, "x", "", &[("path", "live/\"q\"")], 1u64);
        assert_eq!(out, "ferrocast_x{path=\"live/\\\"q\\\"\"} 1\n");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    /// A session's bytes move from the open sessions to the ended total when it ends: the
    /// counters never go back, whenever the scrape comes.
    #[tokio::test]
    async fn byte_counters_never_go_back() {
        let hub = Hub::new(HubConfig::default());
        let exporter = Exporter::new(hub.clone(), Extras::default());
        let sent = |e: &Exporter| {
            let text = e.render();
            let line = text.lines().find(|l| l.starts_with("ferrocast_sent_bytes_total ")).unwrap().to_owned();
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        let h = hub.sessions.open(Protocol::Rtmp, "192.0.2.1:1".parse().unwrap());
        h.begin(Role::Reader, "live/a");
        h.info().add_out(1000);
        assert_eq!(sent(&exporter), 1000);
        assert!(exporter.render().contains("ferrocast_sessions{protocol=\"rtmp\",role=\"reader\"} 1\n"));
        drop(h);
        assert_eq!(sent(&exporter), 1000, "ended: in the ended total");
        // As if a scrape fell between the session leaving the list and its bytes reaching the
        // ended total: the high-water mark hides the dip.
        hub.sessions.stats.ended_bytes_out.fetch_sub(1000, Ordering::Relaxed);
        assert_eq!(sent(&exporter), 1000, "the dip is hidden");
    }
}
