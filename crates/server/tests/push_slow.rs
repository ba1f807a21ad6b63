//! A push target that stops reading costs its own relay only: with one target that accepts
//! TCP and never answers (a listener that never reads) and one that stops reading mid-stream
//! (nginx-rtmp frozen with SIGSTOP), another target and a local reader get every frame.

mod common;
#[path = "common/push.rs"]
mod push_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Probe, Server, free_port, heavy_flv, probe, publish};
use push_support::{Nginx, push_status, test_dir, wait_readable, wait_status};

/// Every video frame is there: dts steps of one frame at 30 fps, no jump to a later keyframe.
fn assert_every_frame(p: &Probe, what: &str, seconds: f64) {
    let video = p.packets_of("video");
    assert!(video.len() as f64 >= seconds * 30.0 * 0.9, "{what}: only {} video packets\n{}", video.len(), p.stderr);
    for w in video.windows(2) {
        let step = w[1].0 - w[0].0;
        assert!((0.0..0.1).contains(&step), "{what}: video dts jumped {} -> {}: frames skipped", w[0].0, w[1].0);
    }
    assert!(!p.packets_of("audio").is_empty(), "{what}: no audio");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_push_target_slows_nothing_else() {
    // Accepts connections (the kernel's backlog) and never reads or answers.
    let never = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let never_port = never.local_addr().unwrap().port();
    let nginx_port = free_port();
    let nginx = Nginx::rtmp(&test_dir("nginx-stall"), nginx_port);
    let ok = Server::start();
    let source = Server::with_config(&format!(
        "[hub]\nreader_write_timeout_ms = 2000\n\
         [source]\nrequest_timeout_ms = 2000\nretry_min_ms = 200\nretry_max_ms = 1000\n\
         [paths.\"live/src\"]\npush = [\"rtmp://127.0.0.1:{never_port}/live/never\", \
         \"rtmp://127.0.0.1:{nginx_port}/live/stall\", \"rtmp://{}/live/ok\"]\n",
        ok.rtmp
    ));
    // 8 Mbit/s: the stalled connection's socket buffers fill within seconds.
    let _publisher = publish(heavy_flv(), &source.rtmp_url("live/src"));
    wait_status(&source, "live/src", 1, "live on nginx", |s| s["state"] == "live").await;
    let url = format!("rtmp://127.0.0.1:{nginx_port}/live/stall");
    tokio::task::spawn_blocking(move || wait_readable(&url)).await.unwrap();
    wait_status(&source, "live/src", 2, "live on the other ferrocast", |s| s["state"] == "live").await;

    // Every error the stalled target's relay reports (a later retry's replaces the first).
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let watch = {
        let (errors, http) = (errors.clone(), source.http);
        tokio::spawn(async move {
            loop {
                let s = push_support::status_at(http, "live/src").await;
                if let Some(e) = s.get(1).and_then(|t| t["last_error"].as_str()) {
                    let mut errors = errors.lock().unwrap();
                    if errors.last().map(String::as_str) != Some(e) {
                        errors.push(e.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // nginx stops reading mid-stream; meanwhile the other target and a local reader are read.
    nginx.signal("STOP");
    let seconds = 12;
    let (ok_url, local_url) = (ok.rtmp_url("live/ok"), source.rtmp_url("live/src"));
    let at_target = tokio::task::spawn_blocking(move || probe(&ok_url, seconds));
    let local = tokio::task::spawn_blocking(move || probe(&local_url, seconds));
    let (at_target, local) = (at_target.await.unwrap(), local.await.unwrap());
    assert_every_frame(&at_target, "the other target", f64::from(seconds));
    assert_every_frame(&local, "the local reader", f64::from(seconds));

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !errors.lock().unwrap().iter().any(|e| e.contains("stopped reading: a write blocked for 2s")) {
        assert!(std::time::Instant::now() < deadline, "never cut for not reading: {:?}", errors.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let stalled = &push_status(&source, "live/src").await[1];
    assert_ne!(stalled["state"], "live", "{stalled}");
    let never_status = wait_status(&source, "live/src", 0, "timed out", |s| {
        s["last_error"].as_str().is_some_and(|e| e.contains("no answer to handshake"))
    })
    .await;
    assert!(never_status["retries"].as_u64() >= Some(1), "{never_status}");
    let other = wait_status(&source, "live/src", 2, "live", |s| s["state"] == "live").await;
    assert_eq!(other["retries"], 0, "{other}");
    drop(never);
}
