//! `/metrics` while a stream is published (ffmpeg, RTMP) and read over RTMP, RTSP (TCP and
//! UDP), HTTP-FLV and HLS (ffmpeg), recorded, pushed to a target that refuses, beside a pulled
//! camera that does not answer: two scrapes a few seconds apart, each parsed by a strict parser
//! of the text format (tests/support/prometheus.rs); the figures move as they must.

#[path = "common/api.rs"]
mod api_common;
mod common;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::time::{Duration, Instant};

use api_common::{free_udp_pair, get_json, read_with_ffmpeg, request};
use common::{Server, free_port, http_get, publish, test_flv, wait_published};
use prometheus::Exposition;

async fn scrape(server: &Server) -> (Exposition, String) {
    let r = http_get(&format!("http://{}/metrics", server.http), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    let e = prometheus::parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    for s in &e.samples {
        assert!(s.name.starts_with("ferrocast_"), "{s:?}");
    }
    (e, text)
}

/// Scrapes until `f` holds (a guard against a hang, not a time limit).
async fn scrape_until(server: &Server, what: &str, f: impl Fn(&Exposition) -> bool) -> (Exposition, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (e, text) = scrape(server).await;
        if f(&e) {
            return (e, text);
        }
        assert!(Instant::now() < deadline, "never: {what}\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every figure the hub keeps (HubStats): metrics.rs takes the struct apart without `..`, so a
/// new field does not compile until it is exported; this list is what a scraper sees.
const HUB_FIGURES: [&str; 9] = [
    "ferrocast_frames_skipped_total",
    "ferrocast_readers_cut_off_total",
    "ferrocast_timestamp_rebases_total",
    "ferrocast_timestamp_jumps_total",
    "ferrocast_timestamps_held_total",
    "ferrocast_reader_panics_total",
    "ferrocast_capture_anchors_total",
    "ferrocast_frames_ingested_total",
    "ferrocast_ingest_to_first_write_seconds",
];

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_while_a_stream_is_published_and_read_over_every_protocol() {
    let dir = std::env::temp_dir().join(format!("ferrocast-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let closed = free_port();
    let rtp = free_udp_pair().await;
    let server = Server::with_config(&format!(
        "[rtsp]\nrtp_port = {rtp}\nrtcp_port = {}\n[record]\ndir = \"{}\"\n\
         [source]\nretry_min_ms = 100\nretry_max_ms = 200\n\
         [paths.\"live/m\"]\nrecord = true\npush = [\"rtmp://127.0.0.1:{closed}/app/secret-key\"]\n\
         [paths.\"cams/x\"]\nsource = \"rtsp://admin:hunter2@127.0.0.1:{closed}/x\"\nsource_on_demand = false\n",
        rtp + 1,
        dir.display()
    ));
    // Before anything is published: the families are there, at zero.
    let (idle, _) = scrape(&server).await;
    assert_eq!(idle.value("ferrocast_streams", &[]), 0.0);
    assert_eq!(idle.value("ferrocast_readers", &[]), 0.0);
    assert_eq!(idle.value("ferrocast_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    for name in [
        "ferrocast_auth_denied_total",
        "ferrocast_auth_blocked_total",
        "ferrocast_hooks_sent_total",
        "ferrocast_hooks_failed_total",
        "ferrocast_hooks_dropped_total",
        "ferrocast_config_reloads_total",
        "ferrocast_config_reloads_refused_total",
    ] {
        assert_eq!(idle.value(name, &[]), 0.0, "{name}");
    }

    let path = "live/m";
    let _publisher = publish(test_flv(), &server.rtmp_url(path));
    wait_published(&server, path).await;
    let mut readers = vec![
        read_with_ffmpeg(&server.rtmp_url(path), &[]),
        read_with_ffmpeg(&server.rtsp_url(path), &["-rtsp_transport", "tcp"]),
        read_with_ffmpeg(&server.rtsp_url(path), &["-rtsp_transport", "udp"]),
        read_with_ffmpeg(&server.flv_url(path), &[]),
        read_with_ffmpeg(&format!("http://{}/{path}/index.m3u8", server.http), &[]),
    ];
    let sessions = |e: &Exposition, protocol: &str, role: &str| {
        e.value("ferrocast_sessions", &[("protocol", protocol), ("role", role)])
    };
    let (first, _) = scrape_until(&server, "every reader, frames written, a receiver report", |e| {
        e.value("ferrocast_stream_readers", &[("path", path)]) == 4.0
            && sessions(e, "hls", "reader") == 1.0
            && e.value("ferrocast_rtcp_reports", &[("protocol", "rtsp")]) >= 1.0
            && e.value("ferrocast_ingest_to_first_write_seconds_count", &[]) > 0.0
            && e.value("ferrocast_recording_bytes_written_total", &[]) > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (second, text) = scrape(&server).await;

    for e in [&first, &second] {
        assert_eq!(e.value("ferrocast_streams", &[]), 1.0);
        // Viewers of the hub: not the recorder, the HLS muxer or the push relay.
        assert_eq!(e.value("ferrocast_readers", &[]), 4.0);
        for (protocol, n) in [("rtmp", 1.0), ("rtsp", 2.0), ("http_flv", 1.0), ("hls", 1.0)] {
            assert_eq!(sessions(e, protocol, "reader"), n, "{protocol} readers");
            assert!(e.value("ferrocast_connections", &[("protocol", protocol)]) >= n, "{protocol} connections");
        }
        assert_eq!(sessions(e, "rtmp", "publisher"), 1.0);
        assert!(e.value("ferrocast_sessions_opened_total", &[]) >= 6.0);
        for name in HUB_FIGURES {
            assert!(e.has_family(name), "{name} is not exported");
        }
    }
    let grew = |name: &str| {
        let (a, b) = (first.value(name, &[]), second.value(name, &[]));
        assert!(b > a, "{name} did not grow: {a} then {b}");
    };
    grew("ferrocast_received_bytes_total");
    grew("ferrocast_sent_bytes_total");
    grew("ferrocast_ingest_to_first_write_seconds_count");
    grew("ferrocast_ingest_to_first_write_seconds_sum");
    grew("ferrocast_frames_ingested_total");
    // Each frame is measured once at most.
    let measured = |e: &Exposition| e.value("ferrocast_ingest_to_first_write_seconds_count", &[]);
    assert!(measured(&second) <= second.value("ferrocast_frames_ingested_total", &[]));
    grew("ferrocast_recording_bytes_written_total");
    grew("ferrocast_recording_parts_written_total");
    grew("ferrocast_uptime_seconds");
    // The camera at a closed port: retried, counted, never named.
    grew("ferrocast_source_reconnects_total");
    assert_eq!(second.sum("ferrocast_sources"), 1.0);
    assert_eq!(second.value("ferrocast_sources", &[("state", "live")]), 0.0);
    // The push target refuses: the relay runs and waits to retry.
    assert_eq!(second.sum("ferrocast_push_targets"), 1.0);
    assert_eq!(second.value("ferrocast_push_targets", &[("state", "live")]), 0.0);
    // Frames reach the readers within a second on an idle loopback.
    let p50 = second.quantile_since(&first, "ferrocast_ingest_to_first_write_seconds", 0.5).unwrap();
    assert!(p50 < 1.0, "median ingest to first write {p50} s");
    // The aggregate of the readers' latest reports: a figure, never NaN.
    let jitter = second.value("ferrocast_rtcp_jitter_seconds_max", &[("protocol", "rtsp")]);
    assert!((0.0..1.0).contains(&jitter), "jitter in seconds on loopback: {jitter}");
    assert!(second.value("ferrocast_rtcp_fraction_lost_max", &[("protocol", "rtsp")]) <= 1.0);
    // Never a credential or a pulled or pushed URL.
    for secret in ["hunter2", "admin", "secret-key", "rtsp://", "rtmp://"] {
        assert!(!text.contains(secret), "{secret} in the metrics:\n{text}");
    }

    // A reader kicked through the API: counted; the RTMP reader's session ends.
    let api = format!("http://{}/api/v1", server.http);
    let all = get_json(&format!("{api}/sessions")).await;
    let rtmp_reader = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["protocol"] == "rtmp" && s["role"] == "reader")
        .expect("the RTMP reader's session")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(request("DELETE", &format!("{api}/sessions/{rtmp_reader}"), None).await.status, 204);
    scrape_until(&server, "the kick counted, the reader gone", |e| {
        e.value("ferrocast_sessions_kicked_total", &[]) == 1.0 && sessions(e, "rtmp", "reader") == 0.0
    })
    .await;

    // The readers leave: counted at once.
    readers.clear();
    scrape_until(&server, "no readers", |e| e.value("ferrocast_readers", &[]) == 0.0).await;
}

/// Every retention reason and the API's deletions are labelled, and HEAD answers headers only.
#[tokio::test(flavor = "multi_thread")]
async fn deletions_are_labelled_by_reason_and_head_has_no_body() {
    let server = Server::start();
    let (e, _) = scrape(&server).await;
    for reason in ["age", "path_bytes", "total_bytes", "free_space", "api"] {
        assert_eq!(e.value("ferrocast_recording_segments_deleted_total", &[("reason", reason)]), 0.0);
    }
    assert_eq!(e.value("ferrocast_rtcp_reports", &[("protocol", "rtsp")]), 0.0);
    for protocol in ["rtmp", "rtsp", "http_flv", "hls", "http_playback"] {
        assert_eq!(e.value("ferrocast_connections", &[("protocol", protocol)]), 0.0);
        for role in ["publisher", "reader", "playback", "source", "push"] {
            assert_eq!(e.value("ferrocast_sessions", &[("protocol", protocol), ("role", role)]), 0.0);
        }
    }
    let head = http_get(&format!("http://{}/metrics", server.http), "").await;
    assert!(!head.body.is_empty());
    let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a body after HEAD: {text}");
}
