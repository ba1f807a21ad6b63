//! Pulling cameras that misbehave, replayed by a scripted RTSP server written from scratch
//! (tests/support/quirk_camera.py, none of our RTSP code): each scenario there reproduces one
//! camera behaviour seen in the field, and each test here shows that the pull plays (ffprobe
//! reads the pulled path and sees H.264 of the camera's size) or fails with a clear
//! `last_error`, the rest of the server untouched. Also `POST /api/v1/probe`.

mod common;
#[path = "common/pull.rs"]
mod pull;

use common::*;
use pull::*;
use serde_json::Value;

/// A server pulling `url` into `cams/q` with extra per-path keys and `[source]` keys, plus a
/// second path published by ffmpeg (`live/other`) where asked.
fn server(url: &str, path_keys: &str, source_keys: &str) -> LoggedServer {
    LoggedServer::start(&format!(
        "[paths.\"cams/q\"]\nsource = \"{url}\"\n{path_keys}\n\
         [source]\nretry_min_ms = 200\nretry_max_ms = 1000\n{source_keys}\n"
    ))
}

/// ffprobe reads the pulled path over HTTP-FLV: H.264 of the quirk camera's size, frames
/// flowing, starting on a keyframe.
async fn assert_plays(server: &LoggedServer) {
    let url = server.flv_url("cams/q");
    let p = tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap();
    let Some(v) = p.codec("video") else {
        let (_, status) = server.path_status("cams/q").await;
        panic!("no video: {:?}\n{}\nstatus: {status}\nlog:\n{}", p.streams, p.stderr, server.log_tail(40));
    };
    assert_eq!(v["codec_name"], "h264");
    assert_eq!((v["width"].as_i64(), v["height"].as_i64()), (Some(QUIRK_SIZE.0), Some(QUIRK_SIZE.1)), "{v}");
    let video = p.packets_of("video");
    assert!(video.len() >= 30, "only {} video packets\n{}", video.len(), p.stderr);
    assert!(video[0].1, "the first frame is not a keyframe");
}

/// Starts the camera in `scenario` and a server pulling it always on; once live, ffprobe must
/// read it. (On demand is shown by pull_camera.rs and by
/// `video_only_camera_first_reader_gets_a_video_only_flv` here.)
async fn plays(scenario: &str, path_keys: &str) -> (LoggedServer, Camera) {
    let camera = Camera::quirk(scenario, &[]);
    let server = server(&camera.url(None), &format!("source_on_demand = false\n{path_keys}"), "");
    server.wait_state("cams/q", "live").await;
    assert_plays(&server).await;
    (server, camera)
}

/// Waits for `last_error` to satisfy `f` after at least one retry; returns the status.
async fn fails(server: &LoggedServer, what: &str, f: impl Fn(&str) -> bool) -> Value {
    let status = server
        .wait_status("cams/q", what, |v| {
            v["source"]["last_error"].as_str().is_some_and(&f) && v["source"]["retries"].as_u64() >= Some(1)
        })
        .await;
    assert_ne!(status["source"]["state"], "live", "{status}");
    eprintln!("last_error: {}", status["source"]["last_error"]);
    status
}

/// ffmpeg publishing `live/other` on the server while a camera misbehaves on `cams/q`.
fn publish_other(server: &LoggedServer) -> Proc {
    publish(test_flv(), &server.rtmp_url("live/other"))
}

/// The server is healthy: still running, and the path ffmpeg publishes (see
/// [`publish_other`]) plays.
async fn assert_healthy(server: &mut LoggedServer) {
    wait_published(server, "live/other").await;
    let url = server.flv_url("live/other");
    let p = tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap();
    p.assert_h264_aac(320, 240, 30);
    assert!(server.server.alive(), "the server died");
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

// --- SDP lies and omissions --------------------------------------------------------------

/// Hikvision style: absolute a=control URLs under a Content-Base ending in '/', sprop present,
/// `Session: 12345678;timeout=60`; the RTP comes from another port than server_port.
#[tokio::test(flavor = "multi_thread")]
async fn hikvision_absolute_controls_play() {
    let (server, mut camera) = plays("hikvision", "").await;
    assert!(camera.count(|l| l.starts_with("request SETUP") && l.contains("/Streaming/Channels/101/trackID=1 ")) >= 1);
    let status = server.wait_state("cams/q", "live").await;
    assert_eq!(status["source"]["transport"], "udp", "{status}");
    // Receiver reports reach the RTCP port announced in server_port.
    camera.wait_line(|l| l == "rtcp", "an RTCP receiver report");
}

/// Dahua style: no sprop-parameter-sets, SPS/PPS in band only; a path with a query string.
#[tokio::test(flavor = "multi_thread")]
async fn dahua_sdp_without_sprop_plays() {
    plays("dahua_no_sprop", "").await;
}

/// Axis style: sprop with the SPS only (no PPS), lower-case header names.
#[tokio::test(flavor = "multi_thread")]
async fn axis_pps_less_sprop_plays() {
    plays("axis_pps_less", "").await;
}

/// The SDP's SPS says 640x360; the stream is 320x180: the in-band SPS wins.
#[tokio::test(flavor = "multi_thread")]
async fn sprop_of_another_size_loses_to_in_band() {
    plays("wrong_sprop", "").await;
}

/// A video-only camera pulled on demand: a reader that starts the source, and so waits for
/// it, gets an FLV header announcing video only (flags 0x01), as readers of the running source
/// do. Announcing audio too makes players (ffprobe) wait for audio that never comes. Three
/// rounds of start and stop (the header raced the source's first frame).
#[tokio::test(flavor = "multi_thread")]
async fn video_only_camera_first_reader_gets_a_video_only_flv() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let camera = Camera::quirk("hikvision", &[]);
    // No grace: each round's stream is gone before the next starts it afresh.
    let server = LoggedServer::start(&format!(
        "[paths.\"cams/q\"]\nsource = \"{}\"\nsource_close_after_ms = 100\n[hub]\nrepublish_grace_ms = 0\n",
        camera.url(None)
    ));
    let mut flags = Vec::new();
    for round in 0..3 {
        server.wait_status("cams/q", "idle and gone", |v| v["source"]["state"] == "idle" && v["live"] == false).await;
        // Both readers stay connected until the round ends; then the source stops.
        let mut open = Vec::new();
        for reader in ["starting", "joining"] {
            let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
            let req = format!("GET /cams/q.flv HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.http);
            s.write_all(req.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                    && got.len() >= end + 4 + 13
                {
                    break got[end + 4..].to_vec();
                }
                let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("FLV in time").unwrap();
                assert!(n > 0, "{reader} reader: the response ended: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            };
            assert_eq!(&body[..3], b"FLV", "{reader} reader");
            flags.push((round, reader, body[4]));
            open.push(s);
        }
        drop(open);
    }
    let wrong: Vec<_> = flags.iter().filter(|f| f.2 != 0x01).collect();
    assert!(wrong.is_empty(), "FLV header flags other than 0x01 (video only): {wrong:?}");
}

// --- Requests answered oddly --------------------------------------------------------------

/// OPTIONS answered 403: a failure of OPTIONS is tolerated.
#[tokio::test(flavor = "multi_thread")]
async fn options_403_still_plays() {
    plays("options_403", "").await;
}

/// The camera's session lasts 4 s and only keep-alives carrying the Session header renew it
/// (one without gets 454 and kills the session): the pull outlives two periods.
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_with_session_outlives_two_periods() {
    let mut camera = Camera::quirk("keepalive_session", &[]);
    let server = server(&camera.url(None), "source_on_demand = false", "");
    server.wait_state("cams/q", "live").await;
    camera.wait_count(3, |l| l == "keepalive ok", "keep-alives with the Session");
    assert_eq!(camera.count(|l| l.starts_with("session dropped")), 0, "{:?}", camera.lines());
    let status = server.wait_state("cams/q", "live").await;
    assert_eq!(status["source"]["retries"], 0, "{status}");
    let before = progress(&status);
    server.wait_status("cams/q", "more frames", |v| progress(v) > before).await;
    assert_plays(&server).await;
    assert_eq!(camera.count(|l| l.starts_with("session dropped")), 0, "{:?}", camera.lines());
    assert_eq!(camera.count(|l| l.starts_with("request PLAY")), 1, "the session was restarted: {:?}", camera.lines());
}

/// UDP SETUP refused with 461: auto plays over TCP interleaved.
#[tokio::test(flavor = "multi_thread")]
async fn udp_refused_461_auto_plays_over_tcp() {
    let (server, mut camera) = plays("udp_461", "").await;
    let status = server.wait_state("cams/q", "live").await;
    assert_eq!(status["source"]["transport"], "tcp", "{status}");
    // Receiver reports go interleaved on the RTSP connection.
    camera.wait_line(|l| l == "rtcp", "an RTCP receiver report");
}

/// UDP SETUP refused with 461 when `udp` is required: a clear error naming SETUP and 461.
#[tokio::test(flavor = "multi_thread")]
async fn udp_refused_461_forced_udp_fails_clearly() {
    let camera = Camera::quirk("udp_461", &[]);
    let mut server = server(&camera.url(None), "source_on_demand = false\nsource_transport = \"udp\"", "");
    let _other = publish_other(&server);
    let status = fails(&server, "failing with 461", |e| e.contains("461") && e.contains("SETUP")).await;
    assert_eq!(status["live"], false, "{status}");
    assert_healthy(&mut server).await;
}

/// Every answer a second late (a busy camera): within request_timeout_ms, it plays.
#[tokio::test(flavor = "multi_thread")]
async fn slow_answers_play() {
    plays("slow", "").await;
}

/// DESCRIBE never answered: a timeout naming the step, then retries.
#[tokio::test(flavor = "multi_thread")]
async fn answer_later_than_request_timeout_fails_naming_the_step() {
    let camera = Camera::quirk("stuck_describe", &[]);
    let mut server = server(&camera.url(None), "source_on_demand = false", "request_timeout_ms = 1500");
    let _other = publish_other(&server);
    fails(&server, "timing out in DESCRIBE", |e| {
        e.contains("DESCRIBE") && (lower(e).contains("time") || lower(e).contains("no answer"))
    })
    .await;
    assert_healthy(&mut server).await;
}

// --- Authentication -----------------------------------------------------------------------

/// Plays with `--auth mode` and the password `p@ss` (`p%40ss` in the URL); the status names
/// the scheme and nothing shows the password.
async fn auth_plays(mode: &str, want: &str) {
    let mut camera = Camera::quirk("hikvision", &["--auth", mode, "--user", "admin", "--password", "p@ss"]);
    let server = server(&camera.url(Some("admin:p%40ss")), "source_on_demand = false", "");
    let status = server.wait_state("cams/q", "live").await;
    assert_plays(&server).await;
    assert_eq!(status["source"]["auth"], want, "{status}");
    if mode == "digest-stale" {
        camera.wait_line(|l| l.ends_with(" stale"), "the stale nonce");
    }
    if mode == "digest-realm-change" {
        camera.wait_line(|l| l == "realm changed", "the realm change");
    }
    let text = status.to_string();
    assert!(!text.contains("p@ss") && !text.contains("p%40ss"), "{text}");
    let log = server.log_text();
    assert!(!log.contains("p@ss") && !log.contains("p%40ss"), "the log shows the password");
}

/// Basic only (the camera offers nothing else).
#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_plays() {
    auth_plays("basic", "basic").await;
}

/// Digest MD5 with qop=auth (RFC 2617 §3.2.2).
#[tokio::test(flavor = "multi_thread")]
async fn digest_md5_qop_auth_plays() {
    auth_plays("digest-md5", "digest-md5").await;
}

/// Digest SHA-256 (RFC 7616).
#[tokio::test(flavor = "multi_thread")]
async fn digest_sha256_plays() {
    auth_plays("digest-sha256", "digest-sha256").await;
}

/// A right answer refused once with `stale=TRUE` and a new nonce (RFC 7616 §3.3): retried
/// with the new nonce, without a new password.
#[tokio::test(flavor = "multi_thread")]
async fn digest_stale_nonce_once_plays() {
    auth_plays("digest-stale", "digest-md5").await;
}

/// The realm changes under a right answer (401 with a new realm and nonce): answered again
/// for the new realm, it plays.
#[tokio::test(flavor = "multi_thread")]
async fn digest_realm_change_once_plays() {
    auth_plays("digest-realm-change", "digest-md5").await;
}

/// A wrong password: 401 named in last_error, the password nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_fails_with_401() {
    let camera = Camera::quirk("hikvision", &["--auth", "digest-md5", "--user", "admin", "--password", "right"]);
    let mut server = server(&camera.url(Some("admin:n0tit%40all")), "source_on_demand = false", "");
    let _other = publish_other(&server);
    let status = fails(&server, "failing with 401", |e| e.contains("401")).await;
    assert!(!status.to_string().contains("n0tit"), "{status}");
    assert!(!server.log_text().contains("n0tit"), "the log shows the password");
    assert_healthy(&mut server).await;
}

// --- Garbage ------------------------------------------------------------------------------

/// Binary junk for an answer to DESCRIBE.
#[tokio::test(flavor = "multi_thread")]
async fn junk_answer_fails_clearly() {
    let camera = Camera::quirk("junk", &[]);
    let mut server = server(&camera.url(None), "source_on_demand = false", "");
    let _other = publish_other(&server);
    // Junk is an answer, and not RTSP: saying "no answer" (a timeout) would send the user
    // looking at the network instead of the camera.
    let status = fails(&server, "failing on junk", |e| e.contains("DESCRIBE")).await;
    let error = status["source"]["last_error"].as_str().unwrap();
    assert!(!lower(error).contains("no answer"), "junk reported as silence: {error}");
    assert_healthy(&mut server).await;
}

/// DESCRIBE's answer cut in the middle of its SDP, connection closed.
#[tokio::test(flavor = "multi_thread")]
async fn close_mid_answer_fails_clearly() {
    let camera = Camera::quirk("close_mid", &[]);
    let mut server = server(&camera.url(None), "source_on_demand = false", "");
    let _other = publish_other(&server);
    fails(&server, "failing on a cut answer", |e| e.contains("DESCRIBE")).await;
    assert_healthy(&mut server).await;
}

/// A header line that never ends: refused at the header size cap, not buffered forever.
#[tokio::test(flavor = "multi_thread")]
async fn endless_header_line_fails_clearly() {
    let camera = Camera::quirk("endless_header", &[]);
    let mut server = server(&camera.url(None), "source_on_demand = false", "request_timeout_ms = 5000");
    let _other = publish_other(&server);
    fails(&server, "failing on an endless header", |e| e.contains("DESCRIBE")).await;
    assert_healthy(&mut server).await;
}

/// RTP stops a second after PLAY: the read timeout drops the session and retries.
#[tokio::test(flavor = "multi_thread")]
async fn rtp_stopping_after_play_times_out_and_retries() {
    let mut camera = Camera::quirk("stall", &[]);
    let mut server =
        server(&camera.url(None), "source_on_demand = false\nsource_transport = \"tcp\"", "read_timeout_ms = 1500");
    let _other = publish_other(&server);
    camera.wait_line(|l| l == "stalled", "the stall");
    // The retry plays again (for a second) and goes live, so `retries` may be back to 0: the
    // camera's second PLAY is the proof of the retry.
    server
        .wait_status("cams/q", "reporting the read timeout", |v| {
            v["source"]["last_error"].as_str().is_some_and(|e| {
                let e = lower(e);
                e.contains("time") || e.contains("no media") || e.contains("no data")
            })
        })
        .await;
    camera.wait_count(2, |l| l.starts_with("request PLAY"), "a second PLAY (the retry)");
    assert_healthy(&mut server).await;
}

// --- POST /api/v1/probe -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn probe_reports_a_good_camera() {
    let camera = Camera::quirk("hikvision", &["--auth", "digest-md5", "--user", "admin", "--password", "p@ss"]);
    let server = LoggedServer::start("");
    let (code, r) = server.probe_api(&camera.url(Some("admin:p%40ss"))).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["sdp"].as_str().is_some_and(|s| s.contains("m=video")), "{r}");
    let tracks = r["tracks"].as_array().unwrap_or_else(|| panic!("no tracks: {r}"));
    assert_eq!(tracks.len(), 1, "{r}");
    assert_eq!(tracks[0]["kind"], "video", "{r}");
    assert_eq!(tracks[0]["codec"].as_str().map(lower).as_deref(), Some("h264"), "{r}");
    assert_eq!((tracks[0]["width"].as_i64(), tracks[0]["height"].as_i64()), (Some(320), Some(180)), "{r}");
    assert_eq!(r["auth"], "digest-md5", "{r}");
    assert!(["udp", "tcp"].contains(&r["transport"].as_str().unwrap_or("")), "{r}");
    assert!(r["transport_reason"].is_string(), "{r}");
    assert!(r["first_keyframe_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{r}");
    let text = r.to_string();
    assert!(!text.contains("p@ss") && !text.contains("p%40ss"), "{text}");
}

/// The probe shows the SDP as the camera sent it (its session name, its vendor attributes),
/// not a rendering of what was understood: that is what someone adding a camera needs to see.
#[tokio::test(flavor = "multi_thread")]
async fn probe_shows_the_cameras_own_sdp() {
    let camera = Camera::quirk("hikvision", &[]);
    let server = LoggedServer::start("");
    let (_, r) = server.probe_api(&camera.url(None)).await;
    assert_eq!(r["ok"], true, "{r}");
    let sdp = r["sdp"].as_str().unwrap_or_else(|| panic!("no sdp: {r}"));
    for line in ["s=Media Presentation", "a=x-dimensions:0,0", "b=AS:5000"] {
        assert!(sdp.contains(line), "{line:?} missing from the probe's SDP:\n{sdp}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_reports_401_with_the_step() {
    let camera = Camera::quirk("hikvision", &["--auth", "basic", "--user", "admin", "--password", "right"]);
    let server = LoggedServer::start("");
    let (code, r) = server.probe_api(&camera.url(Some("admin:s3cret%40x"))).await;
    assert_eq!(code, 200, "a failed probe is a report, not an API error: {r}");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["step"], "DESCRIBE", "{r}");
    assert_eq!(r["status"], 401, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    let text = r.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!server.log_text().contains("s3cret"), "the log shows the password");
}
