//! Hooks (issue 18) against the real binary: a loopback HTTP server receives publish, read
//! start, read stop, unpublish and recording segment complete, in order, with the right fields;
//! a command hook writes its environment to a file; a hook server that never answers does not
//! keep publishing and reading from working.

mod common;
#[path = "common/ops.rs"]
mod ops;

use common::*;
use ops::*;
use serde_json::Value;

fn kind(v: &Value) -> &str {
    v["event"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_arrive_in_order_with_their_fields() {
    require("ffmpeg");
    require("ffprobe");
    let mut hooks = HookServer::start().await;
    let hang = hanging_server().await;
    let rec_dir = std::env::temp_dir().join(format!("ferrocast-hooks-{}", std::process::id()));
    let env_file = rec_dir.join("env.txt");
    std::fs::create_dir_all(&rec_dir).unwrap();
    let server = Server::with_config(&format!(
        "[record]\ndir = {rec:?}\nsegment_duration_ms = 1000\npart_duration_ms = 500\n\
         [paths.\"live/rec\"]\nrecord = true\n\
         [hooks]\nretry_delay_ms = 100\ntimeout_ms = 600000\n\
         [[hooks.targets]]\nurl = {hang:?}\n\
         [[hooks.targets]]\nurl = {url:?}\n\
         [[hooks.targets]]\ncommand = [\"sh\", \"-c\", 'env | grep ^FERROCAST_ | sort >> \"$0\"', {env:?}]\n\
         events = [\"publish\"]\n",
        rec = rec_dir.display().to_string(),
        url = hooks.url,
        env = env_file.display().to_string(),
    ));
    let publisher = publish(test_flv(), &server.rtmp_url("live/rec"));
    let first = hooks.next().await;
    assert_eq!(kind(&first), "publish", "{first}");
    assert_eq!(first["path"], "live/rec");
    assert_eq!(first["protocol"], "rtmp");
    assert!(first["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{first}");
    let pub_session = first["session"].as_str().unwrap().to_owned();
    assert_eq!(pub_session.len(), 16);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));

    // A reader while the hanging target holds its first event and drops the rest: frames
    // still flow (counted, no timing).
    let url = server.rtmp_url("live/rec");
    let probe = tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap();
    probe.assert_h264_aac(320, 240, 20);

    let seen = hooks.until(|v| kind(v) == "read_stop").await;
    let start = seen.iter().find(|v| kind(v) == "read_start").unwrap_or_else(|| panic!("{seen:#?}"));
    let stop = seen.last().unwrap();
    assert_eq!(start["session"], stop["session"]);
    assert_ne!(start["session"].as_str().unwrap(), pub_session);
    assert_eq!((&start["path"], &start["protocol"]), (&Value::from("live/rec"), &Value::from("rtmp")));
    assert!(stop["bytes_out"].as_u64().unwrap() > 10_000, "{stop}");
    assert!(stop["duration"].as_f64().unwrap() > 0.0 && stop["reason"].is_string(), "{stop}");

    drop(publisher);
    let seen = hooks.until(|v| kind(v) == "unpublish").await;
    let unpub = seen.last().unwrap();
    assert_eq!(unpub["session"].as_str(), Some(pub_session.as_str()));
    assert!(unpub["bytes_in"].as_u64().unwrap() > 10_000, "{unpub}");
    // The recording's last file completes once the recorder sees the stream end (after the
    // republish grace); earlier ones were completed each second.
    let mut segments: Vec<Value> = seen.into_iter().filter(|v| kind(v) == "segment_complete").collect();
    if segments.is_empty() {
        segments = hooks.until(|v| kind(v) == "segment_complete").await;
    }
    let seg = segments.iter().find(|v| kind(v) == "segment_complete").unwrap();
    assert_eq!(seg["path"], "live/rec");
    let file = seg["file"].as_str().unwrap();
    assert!(file.starts_with(&rec_dir.display().to_string()) && file.ends_with(".mp4"), "{seg}");
    assert!(std::fs::metadata(file).unwrap().len() >= seg["bytes_in"].as_u64().unwrap(), "{seg}");
    assert!(seg["duration"].as_f64().unwrap() > 0.0, "{seg}");

    // The command hook ran with the publish in its environment.
    let env = std::fs::read_to_string(&env_file).unwrap_or_default();
    assert!(env.contains("FERROCAST_EVENT=publish\n"), "{env}");
    assert!(env.contains("FERROCAST_PATH=live/rec\n") && env.contains("FERROCAST_PROTOCOL=rtmp\n"), "{env}");
    assert!(env.contains(&format!("FERROCAST_SESSION={pub_session}\n")), "{env}");
    let _ = std::fs::remove_dir_all(&rec_dir);
}
