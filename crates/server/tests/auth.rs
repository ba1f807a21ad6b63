//! The auth matrix (issue 18) against the real binary with real clients: ffmpeg publishing
//! RTMP and RTSP, ffprobe reading RTMP and RTSP (Digest), HLS, HTTP-FLV, the API and metrics;
//! with no credentials, wrong ones and right ones; protected and open paths; plain, sha256 and
//! argon2 passwords; address ranges; the http_url callback (with one that hangs); blocking
//! after repeated failures; and no password in the server's log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server whose log (debug level) goes to a file, read back by [`assert_log_clean`].
fn server_logged(toml: &str) -> (Server, PathBuf) {
    let log = std::env::temp_dir().join(format!(
        "ferrocast-auth-{}-{}.log",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    let file = std::fs::File::create(&log).unwrap();
    (Server::spawn(toml, ["127.0.0.1:0"; 3], Stdio::from(file)), log)
}

/// None of `secrets` appears in the server's log.
fn assert_log_clean(log: &Path, secrets: &[&str]) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("ferrocast serving"), "the log was captured");
    for s in secrets {
        assert!(!text.contains(s), "{s:?} in the server's log");
    }
}

/// ffmpeg publishes one second of the test clip; whether it succeeded.
fn publish_once(url: &str) -> bool {
    require("ffmpeg");
    let format: &[&str] =
        if url.starts_with("rtsp") { &["-f", "rtsp", "-rtsp_transport", "tcp"] } else { &["-f", "flv"] };
    Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-t", "1", "-i"])
        .arg(test_flv())
        .args(["-c", "copy"])
        .args(format)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Waits for `url` (an HTTP-FLV URL, credentials in its query) to answer 200.
async fn wait_readable(url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http_status(url).await != Some(200) {
        assert!(std::time::Instant::now() < deadline, "{url} never became readable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn probe_async(url: String, opts: &'static [&'static str]) -> Probe {
    tokio::task::spawn_blocking(move || probe_with(&url, 2, opts)).await.unwrap()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn argon2_phc(pass: &str) -> String {
    use argon2::password_hash::PasswordHasher;
    let h: argon2::password_hash::phc::PasswordHash =
        argon2::Argon2::default().hash_password_with_salt(pass.as_bytes(), b"ferrocast-test-salt").unwrap();
    h.to_string()
}

fn basic(user: &str, pass: &str) -> String {
    format!("Authorization: Basic {}\r\n", ferrocast_rtsp::base64::encode(format!("{user}:{pass}").as_bytes()))
}

/// Sends `req` on `s` and reads one answer (its head and its body); its status.
async fn rtsp_exchange(s: &mut TcpStream, req: &str) -> u16 {
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                .map_or(0, |(_, v)| v.trim().parse().unwrap());
            if got.len() >= end + 4 + len {
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

/// The users of the matrix: a publisher (plain password) on `cams/*`, a viewer (sha256) of
/// `cams/*`, an operator (argon2) with the API and metrics, a user who plays recordings of
/// `cams/*` and VOD files back, and everyone on `open/*`.
fn matrix_config() -> String {
    format!(
        "[auth]\nfail_limit = 100000\n\
         [[auth.users]]\nuser = \"cam\"\npass = \"s3cret-pub\"\npermissions = [{{ action = \"publish\", path = \"cams/*\" }}]\n\
         [[auth.users]]\nuser = \"view\"\npass = \"sha256:{}\"\npermissions = [{{ action = \"read\", path = \"cams/*\" }}]\n\
         [[auth.users]]\nuser = \"ops\"\npass = \"{}\"\npermissions = [{{ action = \"api\" }}, {{ action = \"metrics\" }}]\n\
         [[auth.users]]\nuser = \"rec\"\npass = \"r3c-pw\"\npermissions = [{{ action = \"playback\", path = \"cams/*\" }}, {{ action = \"playback\", path = \"vod/**\" }}]\n\
         [[auth.users]]\nuser = \"any\"\npass = \"\"\npermissions = [{{ action = \"publish\", path = \"open/*\" }}, {{ action = \"read\", path = \"open/*\" }}]\n",
        sha256_hex("v13w-pw"),
        argon2_phc("0ps-pw"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rtmp_hls_flv_api_matrix() {
    let (server, log) = server_logged(&matrix_config());
    let url = |path: &str, q: &str| format!("rtmp://{}/{path}{q}", server.rtmp);
    // RTMP publish: none, wrong, another user's, then right (in the stream name's query).
    assert!(!publish_once(&url("cams/a", "")), "published without credentials");
    assert!(!publish_once(&url("cams/a", "?user=cam&pass=wrong-pw")), "published with a wrong password");
    assert!(!publish_once(&url("cams/a", "?user=view&pass=v13w-pw")), "a viewer published");
    let _publisher = publish(test_flv(), &url("cams/a", "?user=cam&pass=s3cret-pub"));
    let flv_ok = format!("http://{}/cams/a.flv?user=view&pass=v13w-pw", server.http);
    wait_readable(&flv_ok).await;
    // An open path: anyone publishes and reads.
    let _open = publish(test_flv(), &url("open/x", ""));
    wait_published(&server, "open/x").await;

    // RTMP read: none and wrong get nothing; the sha256 user reads.
    assert!(probe_async(url("cams/a", ""), &[]).await.streams.is_empty(), "read without credentials");
    assert!(probe_async(url("cams/a", "?user=view&pass=nope"), &[]).await.streams.is_empty(), "wrong password");
    probe_async(url("cams/a", "?user=view&pass=v13w-pw"), &[]).await.assert_h264_aac(320, 240, 20);
    probe_async(url("open/x", ""), &[]).await.assert_h264_aac(320, 240, 20);

    // HTTP-FLV (served on the raw socket).
    assert_eq!(http_status(&server.flv_url("cams/a")).await, Some(401));
    assert_eq!(http_status(&format!("{}?user=view&pass=bad", server.flv_url("cams/a"))).await, Some(401));
    assert_eq!(http_status(&flv_ok).await, Some(200));
    assert_eq!(http_status(&server.flv_url("open/x")).await, Some(200));

    // HLS: 401 with a Basic challenge for browsers; Basic, query and wrong credentials.
    let hls = format!("http://{}/cams/a/index.m3u8", server.http);
    let r = http_get(&hls, "").await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Basic")), "{}", r.headers);
    assert_eq!(http_get(&hls, &basic("view", "wrong")).await.status, 401);
    assert_eq!(http_get(&hls, &basic("cam", "s3cret-pub")).await.status, 401, "a publisher may not read");
    let r = http_get(&hls, &basic("view", "v13w-pw")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("#EXTM3U"));
    // With the credentials in the query, the playlists pass them on to what they list, so a
    // player given only the URL fetches the media playlist and the segments with them.
    let r = http_get(&format!("{hls}?user=view&pass=v13w-pw"), "").await;
    assert_eq!(r.status, 200);
    let media = r.text().lines().find(|l| !l.starts_with('#') && !l.is_empty()).unwrap().to_owned();
    assert!(media.ends_with("?user=view&pass=v13w-pw"), "{}", r.text());
    let r = http_get(&format!("http://{}/cams/a/{media}", server.http), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let segment = r.text().lines().rfind(|l| !l.starts_with('#') && !l.is_empty()).unwrap().to_owned();
    assert!(segment.ends_with("?user=view&pass=v13w-pw"), "{}", r.text());
    assert_eq!(http_get(&format!("http://{}/cams/a/{segment}", server.http), "").await.status, 200);
    let bare = segment.split('?').next().unwrap();
    assert_eq!(http_get(&format!("http://{}/cams/a/{bare}", server.http), "").await.status, 401);
    assert_eq!(http_get(&format!("http://{}/open/x/index.m3u8", server.http), "").await.status, 200);

    // Playback (recordings by time, VOD files) needs `playback`, not `read`: over HTTP and RTSP.
    let start = "start=2026-01-01T00:00:00Z";
    for url in [
        format!("http://{}/cams/a/index.m3u8?{start}", server.http),
        format!("http://{}/cams/a/recording.mp4?{start}", server.http),
        format!("http://{}/vod/clip.mp4", server.http),
    ] {
        assert_eq!(http_get(&url, &basic("view", "v13w-pw")).await.status, 401, "{url}");
        // Past auth: 404, as nothing was recorded and there is no such file.
        assert_eq!(http_get(&url, &basic("rec", "r3c-pw")).await.status, 404, "{url}");
    }
    for (creds, expected) in [("view:v13w-pw", "401"), ("rec:r3c-pw", "404")] {
        let auth = ferrocast_rtsp::base64::encode(creds.as_bytes());
        let mut s = TcpStream::connect(server.rtsp).await.unwrap();
        let req = format!(
            "DESCRIBE rtsp://{}/cams/a?{start} RTSP/1.0\r\nCSeq: 1\r\nAuthorization: Basic {auth}\r\n\r\n",
            server.rtsp
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let status = String::from_utf8_lossy(&buf[..n]).split(' ').nth(1).unwrap().to_owned();
        assert_eq!(status, expected, "{creds}");
    }

    // Reading a path live on a connection does not allow playing its recordings back on the
    // same connection: the second DESCRIBE (with `start=`) is asked again and refused.
    let mut s = TcpStream::connect(server.rtsp).await.unwrap();
    let view = basic("view", "v13w-pw");
    let live = format!("DESCRIBE rtsp://{}/cams/a RTSP/1.0\r\nCSeq: 1\r\n{view}\r\n", server.rtsp);
    assert_eq!(rtsp_exchange(&mut s, &live).await, 200);
    let back = format!("DESCRIBE rtsp://{}/cams/a?{start} RTSP/1.0\r\nCSeq: 2\r\n{view}\r\n", server.rtsp);
    assert_eq!(rtsp_exchange(&mut s, &back).await, 401, "a reader played recordings back");
    let setup = format!(
        "SETUP rtsp://{}/cams/a/trackID=0?{start} RTSP/1.0\r\nCSeq: 3\r\n{view}Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
        server.rtsp
    );
    assert_eq!(rtsp_exchange(&mut s, &setup).await, 401, "a reader set up a playback");
    drop(s);

    // API and metrics: the argon2 user only (Basic or Bearer-less query), twice (the second
    // from the verified cache).
    let api = format!("http://{}/api/v1/paths", server.http);
    assert_eq!(http_get(&api, "").await.status, 401);
    assert_eq!(http_get(&api, &basic("view", "v13w-pw")).await.status, 401);
    assert_eq!(http_get(&api, &basic("ops", "wrong")).await.status, 401);
    for _ in 0..2 {
        let r = http_get(&api, &basic("ops", "0ps-pw")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("cams/a"));
    }
    assert_eq!(http_get(&format!("{api}?user=ops&pass=0ps-pw"), "").await.status, 200);
    let metrics = format!("http://{}/metrics", server.http);
    assert_eq!(http_get(&metrics, "").await.status, 401);
    assert_eq!(http_get(&metrics, &basic("ops", "0ps-pw")).await.status, 200);
    // The API never shows a password.
    for route in ["paths", "sessions", "config"] {
        let all = http_get(&format!("http://{}/api/v1/{route}", server.http), &basic("ops", "0ps-pw")).await;
        assert_eq!(all.status, 200, "{route}");
        let all = all.text();
        for s in ["s3cret-pub", "v13w-pw", "0ps-pw", "r3c-pw"] {
            assert!(!all.contains(s), "{s} in /api/v1/{route}: {all}");
        }
    }
    drop(server);
    assert_log_clean(&log, &["s3cret-pub", "v13w-pw", "0ps-pw", "wrong-pw", "r3c-pw"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rtsp_matrix_with_digest_and_basic() {
    let (server, log) = server_logged(&matrix_config());
    let rtsp = |path: &str, creds: &str| format!("rtsp://{creds}{}/{path}", server.rtsp);
    // Publishing over RTSP: ffmpeg answers the Digest challenge with the plain password.
    assert!(!publish_once(&rtsp("cams/r", "")), "published without credentials");
    assert!(!publish_once(&rtsp("cams/r", "cam:wrong-pw@")), "published with a wrong password");
    let _publisher = publish_rtsp(test_flv(), &rtsp("cams/r", "cam:s3cret-pub@"), "tcp");
    wait_readable(&format!("http://{}/cams/r.flv?user=view&pass=v13w-pw", server.http)).await;
    let _open = publish_rtsp(test_flv(), &rtsp("open/r", ""), "tcp");
    wait_published(&server, "open/r").await;

    // The 401: Digest SHA-256, Digest MD5, Basic.
    let mut s = TcpStream::connect(server.rtsp).await.unwrap();
    s.write_all(format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", rtsp("cams/r", "")).as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("RTSP/1.0 401"), "{head}");
    let challenges: Vec<&str> = head.lines().filter_map(|l| l.strip_prefix("WWW-Authenticate: ")).collect();
    assert_eq!(challenges.len(), 3, "{head}");
    assert!(challenges[0].contains("algorithm=SHA-256") && challenges[2].starts_with("Basic"), "{head}");

    // Reading: the viewer's password is a sha256 hash, which Digest cannot check: a plain
    // reader is needed for Digest. The open path plays without credentials.
    const TCP: &[&str] = &["-rtsp_transport", "tcp"];
    assert!(probe_async(rtsp("cams/r", ""), TCP).await.streams.is_empty(), "read without credentials");
    assert!(
        probe_async(rtsp("cams/r", "view:v13w-pw@"), TCP).await.streams.is_empty(),
        "Digest with a hashed password"
    );
    probe_async(rtsp("open/r", ""), TCP).await.assert_rtsp("h264", 320, 240, 20);
    drop(server);

    // A reader with a plain password: Digest.
    let (server, log2) = server_logged(
        "[[auth.users]]\nuser = \"cam\"\npass = \"s3cret-pub\"\npermissions = [{ action = \"publish\", path = \"cams/*\" }]\n\
         [[auth.users]]\nuser = \"view\"\npass = \"v13w-pw\"\npermissions = [{ action = \"read\", path = \"cams/*\" }]\n",
    );
    let rtsp = |path: &str, creds: &str| format!("rtsp://{creds}{}/{path}", server.rtsp);
    let _publisher = publish_rtsp(test_flv(), &rtsp("cams/r", "cam:s3cret-pub@"), "tcp");
    wait_readable(&format!("http://{}/cams/r.flv?user=view&pass=v13w-pw", server.http)).await;
    probe_async(rtsp("cams/r", "view:v13w-pw@"), TCP).await.assert_rtsp("h264", 320, 240, 20);
    assert!(probe_async(rtsp("cams/r", "view:wrong-pw@"), TCP).await.streams.is_empty(), "wrong password");
    // GStreamer 1.22 (which knows Digest MD5 only) answers the same three challenges: right
    // plays, wrong is refused.
    require_gst("rtspsrc");
    let gst = |pass: &str| {
        format!(
            "rtspsrc location={} user-id=view user-pw={pass} protocols=tcp ! fakesink num-buffers=30",
            rtsp("cams/r", "")
        )
    };
    let (right, wrong) = (gst("v13w-pw"), gst("wrong-pw"));
    let (right, wrong) =
        tokio::task::spawn_blocking(move || (gst_in(None, &right), gst_in(None, &wrong))).await.unwrap();
    assert_eq!(right, None, "GStreamer with the right password");
    assert!(wrong.is_some_and(|e| e.contains("Unauthorized")), "GStreamer with a wrong password");
    drop(server);
    // Hashed passwords over RTSP: Basic only (rtsp_digest off).
    let (server, log3) = server_logged(&format!(
        "[auth]\nrtsp_digest = false\n[[auth.users]]\nuser = \"cam\"\npass = \"s3cret-pub\"\npermissions = [{{ action = \"publish\" }}]\n\
         [[auth.users]]\nuser = \"hashed\"\npass = \"sha256:{}\"\npermissions = [{{ action = \"read\" }}]\n",
        sha256_hex("h4sh-pw")
    ));
    let rtsp = |path: &str, creds: &str| format!("rtsp://{creds}{}/{path}", server.rtsp);
    let _publisher = publish_rtsp(test_flv(), &rtsp("cams/h", "cam:s3cret-pub@"), "tcp");
    wait_readable(&format!("http://{}/cams/h.flv?user=hashed&pass=h4sh-pw", server.http)).await;
    probe_async(rtsp("cams/h", "hashed:h4sh-pw@"), TCP).await.assert_rtsp("h264", 320, 240, 20);
    drop(server);
    for l in [&log, &log2, &log3] {
        assert_log_clean(l, &["s3cret-pub", "v13w-pw", "wrong-pw", "h4sh-pw"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn address_ranges() {
    let server = Server::with_config(
        "[[auth.users]]\nuser = \"far\"\npass = \"pw\"\nips = [\"10.0.0.0/8\"]\npermissions = [{ action = \"api\" }]\n\
         [[auth.users]]\nuser = \"near\"\npass = \"pw\"\nips = [\"192.168.0.0/16\", \"127.0.0.0/8\"]\npermissions = [{ action = \"api\" }]\n",
    );
    let api = format!("http://{}/api/v1/paths", server.http);
    assert_eq!(http_get(&api, &basic("far", "pw")).await.status, 401, "outside its range");
    assert_eq!(http_get(&api, &basic("near", "pw")).await.status, 200);
    assert_eq!(http_get(&api, "").await.status, 401);
}

/// What the test's callback service saw.
#[derive(Default)]
struct Calls {
    bodies: Mutex<Vec<Value>>,
    hung: tokio::sync::Notify,
}

/// An `auth.http_url` service: allows user "good" with pass "pw", refuses others with 403,
/// and never answers for paths under `hang/`.
async fn callback_service() -> (String, Arc<Calls>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    let calls = Arc::new(Calls::default());
    let seen = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() >= end + 4 + len {
                        break data[end + 4..end + 4 + len].to_vec();
                    }
                };
                let v: Value = serde_json::from_slice(&body).unwrap();
                seen.bodies.lock().unwrap().push(v.clone());
                if v["path"].as_str().is_some_and(|p| p.starts_with("hang/")) {
                    seen.hung.notify_one();
                    // Holds the connection without answering.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let ok = v["user"] == "good" && v["pass"] == "pw";
                let status = if ok { "200 OK" } else { "403 Forbidden" };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            });
        }
    });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_callback_decides_and_a_hanging_one_denies() {
    let (cb, calls) = callback_service().await;
    let (server, log) = server_logged(&format!("[auth]\nhttp_url = \"{cb}\"\nhttp_timeout_ms = 6000\n"));
    let rtmp = |path: &str, q: &str| format!("rtmp://{}/{path}{q}", server.rtmp);
    assert!(!publish_once(&rtmp("cb/a", "?user=bad&pass=nope-pw")), "the service refused");
    let _publisher = publish(test_flv(), &rtmp("cb/a", "?user=good&pass=pw"));
    let flv = format!("http://{}/cb/a.flv?user=good&pass=pw", server.http);
    wait_readable(&flv).await;
    {
        let bodies = calls.bodies.lock().unwrap();
        let publish = bodies
            .iter()
            .find(|b| b["action"] == "publish" && b["user"] == "good")
            .unwrap_or_else(|| panic!("{bodies:?}"));
        assert_eq!(publish["path"], "cb/a");
        assert_eq!(publish["protocol"], "rtmp");
        assert_eq!(publish["ip"], "127.0.0.1");
        assert_eq!(publish["pass"], "pw");
        assert!(publish["query"].as_str().unwrap().contains("user=good"), "{publish}");
        assert!(publish.get("id").is_some());
        let read = bodies.iter().find(|b| b["action"] == "read").unwrap();
        assert_eq!(read["protocol"], "http-flv");
    }
    // Answers are reused for a while: the same request again asks nobody.
    let before = calls.bodies.lock().unwrap().len();
    assert_eq!(http_status(&flv).await, Some(200));
    assert_eq!(calls.bodies.lock().unwrap().len(), before, "cached");
    assert_eq!(http_status(&format!("http://{}/cb/a.flv?user=good&pass=bad", server.http)).await, Some(401));

    // A service that hangs: that request is denied after the timeout; others go on meanwhile.
    let hang_url = format!("http://{}/hang/x.flv?user=good&pass=pw", server.http);
    let hanging = tokio::spawn(async move { http_status(&hang_url).await });
    calls.hung.notified().await;
    let r = http_get(&format!("http://{}/cb/b/index.m3u8?user=good&pass=pw", server.http), "").await;
    assert_eq!(r.status, 404, "decided (and answered) while the other waits: {}", r.text());
    assert_eq!(http_status(&flv).await, Some(200));
    assert!(!hanging.is_finished(), "the hanging check did not wait for its service");
    assert_eq!(hanging.await.unwrap(), Some(401));
    drop(server);
    assert_log_clean(&log, &["nope-pw"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failures_then_403() {
    let server = Server::with_config(
        "[auth]\nfail_limit = 3\nblock_ms = 600000\n\
         [[auth.users]]\nuser = \"u\"\npass = \"right-pw\"\npermissions = [{ action = \"read\" }, { action = \"api\" }]\n",
    );
    let describe = |creds: &str| {
        let auth = format!("Basic {}", ferrocast_rtsp::base64::encode(creds.as_bytes()));
        format!("DESCRIBE rtsp://{}/live/a RTSP/1.0\r\nCSeq: 1\r\nAuthorization: {auth}\r\n\r\n", server.rtsp)
    };
    let status = |req: String| async move {
        let mut s = TcpStream::connect(server.rtsp).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).split(' ').nth(1).unwrap().to_owned()
    };
    // Before: the right password passes auth (404: no such stream).
    assert_eq!(status(describe("u:right-pw")).await, "404");
    for _ in 0..3 {
        assert_eq!(status(describe("u:wrong")).await, "401");
    }
    // Now the address is blocked: 403 even with the right password, on every protocol.
    assert_eq!(status(describe("u:right-pw")).await, "403");
    let api = format!("http://{}/api/v1/paths", server.http);
    assert_eq!(http_get(&api, &basic("u", "right-pw")).await.status, 403);
    assert_eq!(http_status(&format!("{}?user=u&pass=right-pw", server.flv_url("live/a"))).await, Some(403));
}

/// One HTTP request with `method` and extra headers; its status.
async fn http_method(method: &str, url: &str, extra: &str) -> u16 {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all)).await.unwrap().unwrap();
    String::from_utf8_lossy(&all).split(' ').nth(1).unwrap().parse().unwrap()
}

/// `api` given to the `any` user does not make anonymous clients count as loopback for what
/// changes anything: they keep their address (a forwarded request is from elsewhere); a
/// named user with `api` may. (An unknown session: 404 once past the loopback rule, 403 before
/// it.)
#[tokio::test(flavor = "multi_thread")]
async fn api_for_any_keeps_the_real_address() {
    let kick = |server: &Server| format!("http://{}/api/v1/sessions/0000000000000001", server.http);
    let fwd = "X-Forwarded-For: 203.0.113.9\r\n";
    let ops = "[[auth.users]]\nuser = \"ops\"\npass = \"0ps-pw\"\npermissions = [{ action = \"api\" }]\n";
    let server = Server::with_config(ops);
    assert_eq!(http_method("DELETE", &kick(&server), "").await, 401, "anonymous");
    assert_eq!(http_method("DELETE", &kick(&server), fwd).await, 401, "anonymous, forwarded");
    let named = format!("{fwd}{}", basic("ops", "0ps-pw"));
    assert_eq!(http_method("DELETE", &kick(&server), &named).await, 404, "a named user with api");
    drop(server);
    // `any` listed first: the named user still proves who it is.
    let server = Server::with_config(&format!(
        "[[auth.users]]\nuser = \"any\"\npass = \"\"\npermissions = [{{ action = \"api\" }}]\n{ops}"
    ));
    assert_eq!(http_get(&format!("http://{}/api/v1/paths", server.http), fwd).await.status, 200, "reads stay open");
    assert_eq!(http_method("DELETE", &kick(&server), fwd).await, 403, "anonymous from elsewhere");
    assert_eq!(http_method("DELETE", &kick(&server), "").await, 404, "anonymous from loopback");
    assert_eq!(http_method("DELETE", &kick(&server), &named).await, 404, "a named user with api");
}

/// The API never shows a secret: a user's password, the credentials of `auth.http_url`, a push
/// target's stream key; not in the paths, the sessions or the config.
#[tokio::test(flavor = "multi_thread")]
async fn api_never_shows_a_secret() {
    let server = Server::with_config(
        "[auth]\nhttp_url = \"http://cbuser:cb-s3cret@127.0.0.1:9/auth\"\nhttp_timeout_ms = 500\n\
         [[auth.users]]\nuser = \"ops\"\npass = \"0ps-pw\"\npermissions = [{ action = \"api\" }, { action = \"read\" }]\n\
         [paths.\"cams/p\"]\npush = [\"rtmp://127.0.0.1:9/app/push-k3y-secret\"]\n",
    );
    // A session that sent the password (and is still connected).
    let mut s = TcpStream::connect(server.rtsp).await.unwrap();
    let req = format!("DESCRIBE rtsp://{}/cams/p RTSP/1.0\r\nCSeq: 1\r\n{}\r\n", server.rtsp, basic("ops", "0ps-pw"));
    assert_eq!(rtsp_exchange(&mut s, &req).await, 404);
    for route in ["paths", "sessions", "config"] {
        let r = http_get(&format!("http://{}/api/v1/{route}", server.http), &basic("ops", "0ps-pw")).await;
        assert_eq!(r.status, 200, "{route}: {}", r.text());
        let text = r.text();
        for secret in ["0ps-pw", "cb-s3cret", "push-k3y-secret"] {
            assert!(!text.contains(secret), "{secret} in /api/v1/{route}: {text}");
        }
    }
    let sessions = http_get(&format!("http://{}/api/v1/sessions", server.http), &basic("ops", "0ps-pw")).await.text();
    assert!(sessions.contains("\"ops\""), "the RTSP session and its user are listed: {sessions}");
    drop(s);
}
