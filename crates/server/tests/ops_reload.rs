//! Config reload and the config API (issue 18) against the real binary: SIGHUP with a new
//! path setting takes effect for the next publish while a stream it does not concern keeps
//! its publisher and reader; a broken file is refused with its file, line and key, and the old
//! settings stay; PATCH writes back with the file's comments kept; `log_format = "json"` gives
//! one JSON object per line, the session lines carrying their fields.

mod common;
#[path = "common/ops.rs"]
mod ops;

use std::process::Stdio;

use common::*;
use ops::*;
use serde_json::Value;

/// Waits until a recording file of `path` exists under `dir` (a guard stops a hang).
async fn wait_recording(dir: &std::path::Path, path: &str) {
    for _ in 0..600 {
        let found = std::fs::read_dir(dir.join(path))
            .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "mp4")))
            .unwrap_or(false);
        if found {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} was never recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_paths_keeps_streams_and_refuses_a_broken_file() {
    require("ffmpeg");
    let rec_dir = std::env::temp_dir().join(format!("ferrocast-reload-{}", std::process::id()));
    let base = format!("# operator's notes\n[record]\ndir = {:?}\n", rec_dir.display().to_string());
    let mut server = Server::spawn(&base, ["127.0.0.1:0"; 3], Stdio::piped());
    let logs = log_lines(&mut server);
    let file = config_path(&server);

    // A stream the reload does not concern, with a reader.
    let _live = publish(test_flv(), &server.rtmp_url("live/x"));
    wait_published(&server, "live/x").await;
    let reader = FlvReader::start(&server.flv_url("live/x")).await;
    reader.wait_past(50_000).await;

    // cams/early is live before the reload and not recorded.
    let _early = publish(test_flv(), &server.rtmp_url("cams/early"));
    wait_published(&server, "cams/early").await;
    assert!(!rec_dir.join("cams/early").exists());

    // The reload: cams/* records, the live cams/early at once, cams/x at its publish.
    let text = std::fs::read_to_string(&file).unwrap();
    let new_text = format!("{text}\n[paths.\"cams/*\"]\nrecord = true\n");
    std::fs::write(&file, &new_text).unwrap();
    sighup(&server);
    let seen = wait_log(&logs, "config reloaded");
    assert!(seen.last().unwrap().contains("paths"), "{seen:#?}");
    let (_, config) = http_json("GET", &format!("http://{}/api/v1/config", server.http), "").await;
    assert_eq!(config["paths"]["cams/*"]["record"], true, "{config}");
    wait_recording(&rec_dir, "cams/early").await;
    {
        let _cam = publish(test_flv(), &server.rtmp_url("cams/x"));
        wait_recording(&rec_dir, "cams/x").await;
    }
    // The stream the reload did not concern kept its publisher and reader.
    let before = reader.bytes();
    reader.wait_past(before + 50_000).await;
    assert!(server.alive());

    // A change that needs a restart is logged as not applied.
    std::fs::write(&file, format!("{new_text}[rtmp]\nchunk_size = 8192\n")).unwrap();
    sighup(&server);
    let seen = wait_log(&logs, "config reloaded");
    assert!(seen.iter().any(|l| l.contains("needs a restart") && l.contains("rtmp.chunk_size")), "{seen:#?}");

    // A broken file: refused, with the file, line and key; the old settings stay.
    let broken = format!("{new_text}\n[paths.\"cams/y\"]\nrecrod = true\n");
    let line = broken.lines().position(|l| l.starts_with("recrod")).unwrap() + 1;
    std::fs::write(&file, &broken).unwrap();
    sighup(&server);
    let seen = wait_log(&logs, "config reload refused");
    let msg = seen.last().unwrap();
    assert!(msg.contains(&format!("{}:{line}:", file.display())), "{msg}");
    assert!(msg.contains("paths.\"cams/y\".recrod"), "{msg}");
    let (_, config) = http_json("GET", &format!("http://{}/api/v1/config", server.http), "").await;
    assert_eq!(config["paths"]["cams/*"]["record"], true, "{config}");
    assert!(config["paths"].get("cams/y").is_none(), "{config}");
    let before = reader.bytes();
    reader.wait_past(before + 50_000).await;
    assert!(server.alive());
    let _ = std::fs::remove_dir_all(&rec_dir);
}

#[tokio::test]
async fn patch_writes_back_keeping_comments_and_get_redacts() {
    let server = Server::with_config(
        "# top comment: kept\n[hooks]\n# who hears of it\n[[hooks.targets]]\nurl = \"http://u:hunter2@127.0.0.1:9/x\"\n\n\
         [[auth.users]]\nuser = \"any\"\npass = \"\"\npermissions = [{ action = \"api\" }]\n\
         [[auth.users]]\nuser = \"ops\"\npass = \"hunter2\"\npermissions = [{ action = \"api\" }]\n\n\
         [paths.\"cams/*\"]\n# an entry comment: kept\nrecord = false # inline: kept\n",
    );
    let file = config_path(&server);
    let api = |p: &str| format!("http://{}/api/v1/config{p}", server.http);

    let (status, v) = http_json("PATCH", &api("/paths/cams/*"), "{\"record_max_age_ms\": 60000}").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["settings"]["record_max_age_ms"], 60000, "{v}");
    let (status, v) = http_json("PATCH", &api("/paths/live/new"), "{\"hls_variant\": \"fmp4\"}").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["pattern"], "live/new");
    let text = std::fs::read_to_string(&file).unwrap();
    for kept in
        ["# top comment: kept", "# who hears of it", "# an entry comment: kept", "record = false # inline: kept"]
    {
        assert!(text.contains(kept), "{kept:?} lost:\n{text}");
    }
    assert!(text.contains("record_max_age_ms = 60000") && text.contains("[paths.\"live/new\"]"), "{text}");
    assert!(text.find("[hooks]").unwrap() < text.find("cams/*").unwrap(), "order kept:\n{text}");

    // Invalid: 400 naming the key; the file is untouched.
    let (status, v) = http_json("PATCH", &api("/paths/cams/*"), "{\"recrod\": true}").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("recrod"), "{v}");
    let (status, v) = http_json("PATCH", &api("/paths/cams/*"), "{\"hls_segment_duration_ms\": 1}").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("hls_segment_duration_ms"), "{v}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // GET: in force at once, the password hidden.
    let (status, config) = http_json("GET", &api(""), "").await;
    assert_eq!(status, 200);
    assert_eq!(config["paths"]["cams/*"]["record_max_age_ms"], 60000, "{config}");
    assert_eq!(config["paths"]["live/new"]["hls_variant"], "fmp4", "{config}");
    assert_eq!(config["hooks"]["targets"][0]["url"], "http://***@127.0.0.1:9/x", "{config}");
    assert_eq!(config["auth"]["users"][1]["user"], "ops", "{config}");
    assert!(!config.to_string().contains("hunter2"));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_session_fields() {
    require("ffmpeg");
    let mut server = Server::spawn("log_format = \"json\"\n", ["127.0.0.1:0"; 3], Stdio::piped());
    let logs = log_lines(&mut server);
    let mut seen = {
        let _p = publish_args(test_flv(), &server.rtmp_url("live/j"), &["-t", "1"]);
        wait_log(&logs, "session started")
    };
    seen.extend(wait_log(&logs, "session ended"));
    let parsed: Vec<Value> =
        seen.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let started = parsed.iter().find(|v| v["message"] == "session started").unwrap();
    let ended = parsed.last().unwrap();
    for v in [started, ended] {
        assert_eq!(v["path"], "live/j", "{v}");
        assert_eq!(v["protocol"], "rtmp", "{v}");
        assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
        assert_eq!(v["session"].as_str().unwrap().len(), 16, "{v}");
    }
    assert_eq!(started["session"], ended["session"]);
    assert!(ended["bytes_in"].as_u64().unwrap() > 0, "{ended}");
    assert!(ended["duration_s"].as_f64().is_some() && ended["reason"].is_string(), "{ended}");
}

/// SIGHUP with a changed user list: the new password is in force for the next request, the
/// old one refused, and a reader that came in before the reload keeps reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_user_list_and_keeps_connected_readers() {
    require("ffmpeg");
    let users = |pass: &str| {
        format!(
            "[[auth.users]]\nuser = \"any\"\npass = \"\"\npermissions = [{{ action = \"publish\" }}]\n\
             [[auth.users]]\nuser = \"view\"\npass = \"{pass}\"\npermissions = [{{ action = \"read\" }}]\n"
        )
    };
    let mut server = Server::spawn(&users("one"), ["127.0.0.1:0"; 3], Stdio::piped());
    let logs = log_lines(&mut server);
    let file = config_path(&server);
    let _publisher = publish(test_flv(), &server.rtmp_url("live/a"));
    let flv = |pass: &str| format!("http://{}/live/a.flv?user=view&pass={pass}", server.http);
    for _ in 0..600 {
        if http_status(&flv("one")).await == Some(200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(http_status(&flv("one")).await, Some(200));
    assert_eq!(http_status(&flv("two")).await, Some(401));
    let reader = FlvReader::start(&flv("one")).await;
    reader.wait_past(50_000).await;

    let text = std::fs::read_to_string(&file).unwrap().replace("pass = \"one\"", "pass = \"two\"");
    std::fs::write(&file, text).unwrap();
    sighup(&server);
    let seen = wait_log(&logs, "config reloaded");
    assert!(seen.last().unwrap().contains("auth"), "{seen:#?}");
    assert_eq!(http_status(&flv("one")).await, Some(401));
    assert_eq!(http_status(&flv("two")).await, Some(200));
    let before = reader.bytes();
    reader.wait_past(before + 50_000).await;
    // Nothing of the passwords in the logs or the API.
    let (_, config) = http_json("GET", &format!("http://{}/api/v1/config", server.http), "").await;
    assert!(!config.to_string().contains("\"two\""), "{config}");
    assert!(!seen.iter().any(|l| l.contains("pass=two") || l.contains("\"two\"")), "{seen:#?}");
}

/// SIGHUP with a new path that pulls a source: it starts pulling (here from the server's own
/// RTMP port); a reload that removes it stops the pull and the path goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_starts_and_stops_a_pulled_source() {
    require("ffmpeg");
    let mut server = Server::spawn("[hub]\nrepublish_grace_ms = 100\n", ["127.0.0.1:0"; 3], Stdio::piped());
    let logs = log_lines(&mut server);
    let file = config_path(&server);
    let _publisher = publish(test_flv(), &server.rtmp_url("live/src"));
    wait_published(&server, "live/src").await;
    assert_eq!(http_status(&server.flv_url("cams/pulled")).await, Some(404));

    let text = std::fs::read_to_string(&file).unwrap();
    let with_source = format!(
        "{text}\n[paths.\"cams/pulled\"]\nsource = \"rtmp://{}/live/src\"\nsource_on_demand = false\n",
        server.rtmp
    );
    std::fs::write(&file, &with_source).unwrap();
    sighup(&server);
    wait_log(&logs, "config reloaded");
    wait_published(&server, "cams/pulled").await;
    let pulled = FlvReader::start(&server.flv_url("cams/pulled")).await;
    pulled.wait_past(50_000).await;

    std::fs::write(&file, &text).unwrap();
    sighup(&server);
    wait_log(&logs, "source: stopped (config reloaded)");
    for _ in 0..600 {
        if http_status(&server.flv_url("cams/pulled")).await == Some(404) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(http_status(&server.flv_url("cams/pulled")).await, Some(404));
    // The published path was not touched.
    assert_eq!(http_status(&server.flv_url("live/src")).await, Some(200));
}
