//! Origin and edges (issue 17): two and three ferrocast processes on loopback. ffmpeg publishes
//! to the origin; ffprobe reads from the last edge over every protocol; an edge pulls only
//! while it is read; a second origin takes over when the first dies; loops and long chains
//! are refused with a clear error.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `GET /api/v1/paths/PATH` of `server`: None for a 404.
async fn path_status(server: &Server, path: &str) -> Option<Value> {
    let r = http_get(&format!("http://{}/api/v1/paths/{path}", server.http), "").await;
    match r.status {
        404 => None,
        200 => Some(serde_json::from_slice(&r.body).expect("JSON")),
        s => panic!("/api/v1/paths/{path}: {s} {}", r.text()),
    }
}

/// Readers of `path` on `server` (0 when it has none or no such path).
async fn readers(server: &Server, path: &str) -> u64 {
    path_status(server, path).await.map_or(0, |v| v["readers"].as_u64().expect("readers"))
}

/// Polls `f` until it is true; panics with `what` after a generous bound.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An edge of `origins` (`rtmp://...` or `rtsp://...`) that lets go of a pull 1 s after its
/// last reader.
fn edge(origins: &[String], extra: &str) -> Server {
    let list: Vec<String> = origins.iter().map(|o| format!("{o:?}")).collect();
    Server::with_config(&format!("[edge]\norigin = [{}]\n{extra}\n[source]\nclose_after_ms = 1000\n", list.join(", ")))
}

/// The real binary with its RTMP listener on `rtmp_port` (the others on free ports).
fn server_on(rtmp_port: u16, toml: &str) -> Server {
    Server::spawn(toml, [&format!("127.0.0.1:{rtmp_port}"), "127.0.0.1:0", "127.0.0.1:0"], Stdio::inherit())
}

/// One origin, one edge: nothing is pulled before a reader comes; ffprobe reads the edge over
/// RTMP, RTSP, HTTP-FLV and HLS; the origin sees the edge as one reader while they read, and
/// none once the last has left.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_pulls_on_demand_once_for_all_readers_and_serves_every_protocol() {
    let origin = Server::start();
    let _publisher = publish(test_flv(), &origin.rtmp_url("live/e1"));
    wait_published(&origin, "live/e1").await;
    let edge = edge(&[format!("rtmp://{}", origin.rtmp)], "");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(readers(&origin, "live/e1").await, 0, "the edge pulled before anyone read it");
    assert!(path_status(&edge, "live/e1").await.is_none_or(|v| v["live"] == false), "the edge pulled unasked");

    let urls = [
        edge.rtmp_url("live/e1"),
        edge.rtsp_url("live/e1"),
        edge.flv_url("live/e1"),
        format!("http://{}/live/e1/index.m3u8", edge.http),
    ];
    let probes: Vec<_> = urls.iter().cloned().map(|u| tokio::task::spawn_blocking(move || probe(&u, 4))).collect();
    // While they read: one pull, one reader at the origin, however many read the edge.
    until("the origin sees the edge's pull", async || readers(&origin, "live/e1").await == 1).await;
    let status = path_status(&edge, "live/e1").await.expect("the edge lists the path it pulls");
    assert_eq!(status["source"]["edge"], true, "{status}");
    assert!(status["source"]["url"].as_str().unwrap().contains(&origin.rtmp.to_string()), "{status}");
    for (url, p) in urls.iter().zip(probes) {
        let p = p.await.unwrap();
        if url.starts_with("rtsp") {
            p.assert_rtsp("h264", 320, 240, 60);
        } else {
            p.assert_h264_aac(320, 240, 60);
        }
    }
    assert_eq!(readers(&origin, "live/e1").await, 1, "one pull for every reader of the edge");
    // The last reader gone (HLS lingers for its close-after too), the pull ends.
    until("the edge lets go of the origin", async || readers(&origin, "live/e1").await == 0).await;
    until("the edge forgets the path", async || path_status(&edge, "live/e1").await.is_none()).await;
}

/// origin -> edge 1 (over RTMP) -> edge 2 (over RTSP): the last edge serves the stream over
/// every protocol.
#[tokio::test(flavor = "multi_thread")]
async fn three_servers_chain_over_rtmp_and_rtsp() {
    let origin = Server::start();
    let _publisher = publish(test_flv(), &origin.rtmp_url("live/c3"));
    wait_published(&origin, "live/c3").await;
    let e1 = edge(&[format!("rtmp://{}", origin.rtmp)], "");
    let e2 = edge(&[format!("rtsp://{}", e1.rtsp)], "");
    let urls = [e2.rtmp_url("live/c3"), e2.rtsp_url("live/c3"), e2.flv_url("live/c3")];
    let probes: Vec<_> = urls.iter().cloned().map(|u| tokio::task::spawn_blocking(move || probe(&u, 4))).collect();
    for (url, p) in urls.iter().zip(probes) {
        let p = p.await.unwrap();
        if url.starts_with("rtsp") {
            p.assert_rtsp("h264", 320, 240, 60);
        } else {
            p.assert_h264_aac(320, 240, 60);
        }
    }
    assert_eq!(path_status(&e2, "live/c3").await.unwrap()["source"]["transport"], "tcp");
    until("the chain lets go", async || readers(&origin, "live/c3").await == 0).await;
}

/// ffmpeg publishes to two origins at once (its tee muxer); the edge pulls from the first;
/// killing it moves the edge to the second within the republish grace, and a reader that was
/// reading the edge carries on on the same connection.
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_first_origin_moves_the_edge_to_the_second() {
    require("ffmpeg");
    let mut o1 = Server::start();
    let o2 = Server::start();
    let tee = format!("[f=flv:onfail=ignore]{}|[f=flv:onfail=ignore]{}", o1.rtmp_url("live/f"), o2.rtmp_url("live/f"));
    let _publisher = Proc(
        Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-stream_loop", "-1", "-i"])
            .arg(test_flv())
            .args(["-c", "copy", "-map", "0", "-f", "tee", &tee])
            .stdout(Stdio::null())
            .spawn()
            .expect("ffmpeg"),
    );
    wait_published(&o1, "live/f").await;
    wait_published(&o2, "live/f").await;
    let edge = edge(&[format!("rtmp://{}", o1.rtmp), format!("rtmp://{}", o2.rtmp)], "");
    let url = edge.rtmp_url("live/f");
    let reader = tokio::task::spawn_blocking(move || probe(&url, 14));
    until("the edge pulls from the first origin", async || readers(&o1, "live/f").await == 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    o1.proc.0.kill().unwrap();
    o1.proc.0.wait().unwrap();
    assert!(!o1.alive());
    until("the edge pulls from the second origin", async || readers(&o2, "live/f").await == 1).await;
    let p = reader.await.unwrap();
    let video = p.packets_of("video");
    let span = video.last().expect("video").0 - video[0].0;
    assert!(span >= 11.0, "the reader stopped at the first origin's death: {span:.1} s of video\n{}", p.stderr);
    let ts: Vec<f64> = video.iter().map(|v| v.0).collect();
    assert!(ts.windows(2).all(|w| w[1] >= w[0] - 0.5), "video time went back");
    let status = path_status(&edge, "live/f").await.unwrap();
    assert!(status["source"]["url"].as_str().unwrap().contains(&o2.rtmp.to_string()), "{status}");
}

/// Two edges that name each other as origin: a reader of either is refused with a clear
/// error (the loop is found where the chain comes back), not left waiting on pulls that wait
/// on each other; an origin whose `edge.max_hops` the chain reaches refuses it too.
#[tokio::test(flavor = "multi_thread")]
async fn loops_and_too_long_chains_are_refused_clearly() {
    let (pa, pb) = (free_port(), free_port());
    let a =
        server_on(pa, &format!("[edge]\norigin = [\"rtmp://127.0.0.1:{pb}\"]\n[source]\nstart_timeout_ms = 3000\n"));
    let b =
        server_on(pb, &format!("[edge]\norigin = [\"rtmp://127.0.0.1:{pa}\"]\n[source]\nstart_timeout_ms = 3000\n"));
    let url = a.rtmp_url("live/loop");
    let p = tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap();
    assert!(p.packets.is_empty(), "a loop served media");
    // B's pull back to A was refused as a loop, and B says so.
    let mut error = String::new();
    until("B reports the loop", async || {
        error = path_status(&b, "live/loop")
            .await
            .and_then(|v| v["source"]["last_error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        error.contains("loop")
    })
    .await;
    assert!(error.contains("pull loop"), "{error}");
    drop((a, b));

    // origin (max_hops 2) <- e1 <- e2: e2's pull reaches the origin through two servers.
    let origin = Server::with_config("[edge]\nmax_hops = 2\n");
    let _publisher = publish(test_flv(), &origin.rtmp_url("live/h"));
    wait_published(&origin, "live/h").await;
    let e1 = edge(&[format!("rtmp://{}", origin.rtmp)], "");
    let e2 = edge(&[format!("rtmp://{}", e1.rtmp)], "");
    let direct = e1.rtmp_url("live/h");
    tokio::task::spawn_blocking(move || probe(&direct, 2)).await.unwrap().assert_h264_aac(320, 240, 20);
    // e1's own pull (a chain of none) is gone before e2 asks, so e2's goes out anew.
    until("e1 lets go", async || path_status(&e1, "live/h").await.is_none()).await;
    let url = e2.rtmp_url("live/h");
    let far = tokio::task::spawn_blocking(move || probe(&url, 2));
    until("e1 reports the hop limit", async || {
        path_status(&e1, "live/h")
            .await
            .and_then(|v| v["source"]["last_error"].as_str().map(str::to_owned))
            .is_some_and(|e| e.contains("2 servers"))
    })
    .await;
    assert!(far.await.unwrap().packets.is_empty(), "a chain over max_hops served media");
}

/// The only origin dies: the edge's reader waits through the republish grace (the edge keeps
/// retrying), then is told the stream is gone (`NetStream.Play.UnpublishNotify`), as a
/// publisher's readers are.
#[tokio::test(flavor = "multi_thread")]
async fn when_the_only_origin_vanishes_edge_readers_end_after_the_grace() {
    use ferrocast_rtmp::client::ClientEvent;
    let mut origin = Server::start();
    let _publisher = publish(test_flv(), &origin.rtmp_url("live/v"));
    wait_published(&origin, "live/v").await;
    let edge = edge(&[format!("rtmp://{}", origin.rtmp)], "[hub]\nrepublish_grace_ms = 2000\n");
    let mut reader = RtmpClient::connect(edge.rtmp, "live/v", false).await;
    reader.wait_for(|e| matches!(e, ClientEvent::Media(m) if m.kind == ferrocast_rtmp::MediaKind::Video)).await;
    origin.proc.0.kill().unwrap();
    origin.proc.0.wait().unwrap();
    let mut seen = Vec::new();
    loop {
        match reader.next_event(Duration::from_secs(60)).await {
            Some(ClientEvent::Status { code, .. }) if code == "NetStream.Play.UnpublishNotify" => break,
            Some(ClientEvent::Status { code, .. }) => seen.push(code),
            Some(_) => {}
            None => panic!("no UnpublishNotify; statuses seen: {seen:?}"),
        }
    }
    // The pull may be forgotten already (its reader is gone); while listed, it says why.
    if let Some(status) = path_status(&edge, "live/v").await {
        assert!(status["source"]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    }
}
