//! Pulled sources against real peers on loopback: a second ferrocast that ffmpeg publishes to
//! (H.264 + AAC) is pulled over RTSP (TCP, UDP, auto) and RTMP, and the pulled path is read by
//! ffprobe over RTMP, RTSP, HTTP-FLV and HLS. On demand: nothing is pulled before the first
//! reader, many readers start one pull, the pull stops after the last reader. Always on, an
//! unreachable source, a source that never sends media, and the upstream restarting within
//! the republish grace.

mod common;
#[path = "common/source.rs"]
mod source_common;

use std::time::Duration;

use common::*;
use ferrocast_rtmp::client::ClientEvent;
use ferrocast_rtmp::message::MediaKind;
use serde_json::Value;
use source_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn blocking_probe(url: String, seconds: u32, opts: &'static [&'static str]) -> tokio::task::JoinHandle<Probe> {
    tokio::task::spawn_blocking(move || probe_with(&url, seconds, opts))
}

/// The upstream's viewers of `path` (its HLS muxer is not one).
async fn upstream_readers(up: &Server, path: &str) -> u64 {
    path_status(up, path).await["readers"].as_u64().unwrap()
}

/// RTSP over TCP, on demand: nothing pulled before a reader; RTMP, RTSP, HTTP-FLV and HLS
/// readers of the pulled path get the stream; after the last leaves, the pull stops (the
/// upstream's reader is gone, the status is idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_tcp_pull_on_demand_is_read_over_every_protocol_and_stops_after_the_last_reader() {
    let (up, _ffmpeg) = upstream("live/a").await;
    let puller = Server::with_config(&format!(
        "[source]\nretry_min_ms = 200\n[paths.\"cams/a\"]\nsource = \"rtsp://{}/live/a\"\nsource_transport = \"tcp\"\nsource_close_after_ms = 1000\n",
        up.rtsp
    ));
    let before = path_status(&puller, "cams/a").await;
    assert_eq!(before["live"], false, "{before}");
    assert_eq!(before["source"]["state"], "idle", "{before}");
    assert_eq!(before["source"]["on_demand"], true, "{before}");
    assert_eq!(before["source"]["url"], format!("rtsp://{}/live/a", up.rtsp));
    assert_eq!(before["push"], serde_json::json!([]));
    assert_eq!(upstream_readers(&up, "live/a").await, 0, "pulled before any reader");

    blocking_probe(puller.rtmp_url("cams/a"), 3, &[]).await.unwrap().assert_h264_aac(320, 240, 30);
    blocking_probe(puller.rtsp_url("cams/a"), 3, &["-rtsp_transport", "tcp"])
        .await
        .unwrap()
        .assert_rtsp("h264", 320, 240, 30);
    blocking_probe(puller.flv_url("cams/a"), 3, &[]).await.unwrap().assert_h264_aac(320, 240, 30);
    let hls = format!("http://{}/cams/a/index.m3u8", puller.http);
    blocking_probe(hls, 4, &[]).await.unwrap().assert_h264_aac(320, 240, 30);

    let after = until("the pull stopped after the last reader", || async {
        let s = path_status(&puller, "cams/a").await;
        (s["source"]["state"] == "idle" && s["live"] == false).then_some(s)
    })
    .await;
    assert!(after["source"]["frames"].as_u64().unwrap() > 100, "{after}");
    assert!(after["source"]["bytes"].as_u64().unwrap() > 10_000, "{after}");
    until("the upstream lost its reader", || async { (upstream_readers(&up, "live/a").await == 0).then_some(()) })
        .await;
}

/// RTSP over UDP and with `auto` (which picks UDP on loopback): the status says so while a
/// reader reads, and the reader gets the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_udp_and_auto_pulls() {
    let (up, _ffmpeg) = upstream("live/u").await;
    let puller = Server::with_config(&format!(
        "[paths.\"cams/udp\"]\nsource = \"rtsp://{0}/live/u\"\nsource_transport = \"udp\"\n[paths.\"cams/auto\"]\nsource = \"rtsp://{0}/live/u\"\n",
        up.rtsp
    ));
    for path in ["cams/udp", "cams/auto"] {
        let reading = blocking_probe(puller.flv_url(path), 4, &[]);
        let live = until("the source went live", || async {
            let s = path_status(&puller, path).await;
            (s["source"]["state"] == "live").then_some(s)
        })
        .await;
        assert_eq!(live["source"]["transport"], "udp", "{live}");
        assert_eq!(live["live"], true);
        reading.await.unwrap().assert_h264_aac(320, 240, 40);
    }
}

/// RTMP pull, always on: live before any reader (the upstream has one reader, the pull),
/// listed by the API, read over RTSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_pull_always_on() {
    let (up, _ffmpeg) = upstream("live/r").await;
    let puller = Server::with_config(&format!(
        "[paths.\"cams/r\"]\nsource = \"rtmp://{}/live/r\"\nsource_on_demand = false\n",
        up.rtmp
    ));
    let live = until("the always-on source went live", || async {
        let s = path_status(&puller, "cams/r").await;
        (s["live"] == true && s["source"]["state"] == "live").then_some(s)
    })
    .await;
    assert_eq!(live["source"]["transport"], "rtmp", "{live}");
    assert_eq!(live["source"]["on_demand"], false);
    assert_eq!(live["readers"], 0);
    assert_eq!(upstream_readers(&up, "live/r").await, 1);
    let list = http_get(&format!("http://{}/api/v1/paths", puller.http), "").await;
    let list: Value = serde_json::from_slice(&list.body).unwrap();
    let paths: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["cams/r"]);
    blocking_probe(puller.rtsp_url("cams/r"), 3, &[]).await.unwrap().assert_rtsp("h264", 320, 240, 30);
    let s = path_status(&puller, "cams/r").await;
    assert_eq!(s["source"]["state"], "live", "an always-on source stays up: {s}");
    assert!(s["source"]["bitrate"].as_u64().unwrap() > 0, "{s}");
}

/// Eight readers arriving at once start one pull: the upstream has one reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_at_once_start_one_pull() {
    let (up, _ffmpeg) = upstream("live/m").await;
    let puller = Server::with_config(&format!("[paths.\"cams/m\"]\nsource = \"rtsp://{}/live/m\"\n", up.rtsp));
    let readers: Vec<_> = (0..8).map(|_| blocking_probe(puller.flv_url("cams/m"), 5, &[])).collect();
    until("eight readers on the pulled path", || async {
        (path_status(&puller, "cams/m").await["readers"].as_u64() == Some(8)).then_some(())
    })
    .await;
    assert_eq!(upstream_readers(&up, "live/m").await, 1, "one pull for all readers");
    assert_eq!(path_status(&puller, "cams/m").await["source"]["retries"], 0);
    for r in readers {
        r.await.unwrap().assert_h264_aac(320, 240, 40);
    }
}

/// A source nobody listens at: a clear last error, retries counting up; its readers give up
/// after the start timeout with a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_says_why_and_retries() {
    let port = free_port();
    let puller = Server::with_config(&format!(
        "[source]\nretry_min_ms = 100\nretry_max_ms = 200\n[paths.\"cams/gone\"]\nsource = \"rtsp://admin:secret@127.0.0.1:{port}/x\"\nsource_on_demand = false\n[paths.\"cams/gone2\"]\nsource = \"rtmp://127.0.0.1:{port}/live/x\"\nsource_start_timeout_ms = 1000\n"
    ));
    let s = until("three failed tries", || async {
        let s = path_status(&puller, "cams/gone").await;
        (s["source"]["retries"].as_u64() >= Some(3)).then_some(s)
    })
    .await;
    assert_eq!(s["source"]["last_error"], format!("connect to 127.0.0.1:{port}: connection refused"), "{s}");
    assert_eq!(s["source"]["url"], format!("rtsp://***@127.0.0.1:{port}/x"));
    assert!(!s.to_string().contains("secret"));
    assert_eq!(s["live"], false);
    // On demand: the reader waits for the start timeout, then is refused.
    assert_eq!(http_status(&puller.flv_url("cams/gone2")).await, Some(404));
    let s = path_status(&puller, "cams/gone2").await;
    assert_eq!(s["source"]["last_error"], format!("connect to 127.0.0.1:{port}: connection refused"), "{s}");
}

/// A scripted RTSP server that answers every request 200 (with an SDP for DESCRIBE) and never
/// sends a packet.
async fn silent_camera() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n";
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let cseq =
                            head.lines().find_map(|l| l.strip_prefix("CSeq:")).map(str::trim).unwrap_or("0").to_owned();
                        let answer = if head.starts_with("DESCRIBE") {
                            format!(
                                "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                                sdp.len()
                            )
                        } else if head.starts_with("SETUP") {
                            format!(
                                "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: 1234;timeout=60\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
                            )
                        } else {
                            format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: 1234\r\n\r\n")
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A source that answers PLAY but never sends media is dropped after the read timeout, and
/// retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_sends_nothing_is_dropped_after_the_read_timeout() {
    let camera = silent_camera().await;
    let puller = Server::with_config(&format!(
        "[source]\nread_timeout_ms = 1000\nretry_min_ms = 100\nretry_max_ms = 200\n[paths.\"cams/silent\"]\nsource = \"rtsp://{camera}/x\"\nsource_transport = \"tcp\"\nsource_on_demand = false\n"
    ));
    let s = until("two dropped tries", || async {
        let s = path_status(&puller, "cams/silent").await;
        (s["source"]["retries"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(s["source"]["last_error"], "no media within 1 s after PLAY", "{s}");
}

/// The upstream server restarts (same ports) within the puller's republish grace: a reader
/// of the pulled path carries on, frames keep coming, timestamps monotonic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restart_within_the_grace_is_survived_by_a_reader() {
    let (rtmp, http, rtsp) = (free_port(), free_port(), free_port());
    let up = server_on("", rtmp, http, rtsp);
    let ffmpeg = publish(test_flv(), &up.rtmp_url("live/g"));
    wait_published(&up, "live/g").await;
    let puller = Server::with_config(&format!(
        "[hub]\nrepublish_grace_ms = 20000\n[source]\nretry_min_ms = 100\nretry_max_ms = 300\n[paths.\"cams/g\"]\nsource = \"rtsp://{}/live/g\"\nsource_transport = \"tcp\"\n",
        up.rtsp
    ));
    let mut reader = RtmpClient::connect(puller.rtmp, "cams/g", false).await;
    let mut last = [None::<u32>; 2];
    let mut frames = 0;
    // Frames before the restart.
    while frames < 60 {
        match reader.next_event(Duration::from_secs(30)).await.expect("frames before the restart") {
            ClientEvent::Media(m) if m.kind != MediaKind::Data => {
                let i = usize::from(m.kind == MediaKind::Audio);
                if let Some(l) = last[i] {
                    // RTMP timestamps are 32-bit and wrap (a first audio frame may sit just
                    // before 0).
                    assert!(m.timestamp.wrapping_sub(l) as i32 >= 0, "{:?} went back: {l} -> {}", m.kind, m.timestamp);
                }
                last[i] = Some(m.timestamp);
                frames += 1;
            }
            _ => {}
        }
    }
    drop(ffmpeg);
    drop(up);
    let up = server_on("", rtmp, http, rtsp);
    let _ffmpeg = publish(test_flv(), &up.rtmp_url("live/g"));
    let before = last;
    let mut after = 0;
    // More than any buffer holds: most of these come from the restarted upstream.
    while after < 400 {
        match reader.next_event(Duration::from_secs(30)).await.expect("frames after the restart") {
            ClientEvent::Media(m) if m.kind != MediaKind::Data => {
                let i = usize::from(m.kind == MediaKind::Audio);
                if let Some(l) = last[i] {
                    assert!(
                        m.timestamp.wrapping_sub(l) as i32 >= 0,
                        "{:?} went back across the restart: {l} -> {}",
                        m.kind,
                        m.timestamp
                    );
                }
                last[i] = Some(m.timestamp);
                after += 1;
            }
            ClientEvent::Status { level, code } if level == "error" => panic!("reader ended: {code}"),
            _ => {}
        }
    }
    let (b, l) = (before[0].unwrap(), last[0].unwrap());
    assert!(l.wrapping_sub(b) as i32 > 1000, "video went on after the restart: {b} -> {l}");
    let s = path_status(&puller, "cams/g").await;
    assert_eq!(s["source"]["state"], "live", "{s}");
}

/// `POST /api/v1/probe`: what a working source offers, a failing one's step and answer, and
/// bad requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_tracks_or_the_failing_step() {
    let (up, _ffmpeg) = upstream("live/p").await;
    let server = Server::start();
    let url = format!("http://{}/api/v1/probe", server.http);
    let body = format!("{{\"url\": \"rtsp://admin:secret@{}/live/p\"}}", up.rtsp);
    let (status, ok) = post_json(&url, &body).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["url"], format!("rtsp://***@{}/live/p", up.rtsp));
    assert!(!ok.to_string().contains("secret"), "{ok}");
    assert_eq!(ok["transport"], "udp", "{ok}");
    assert!(ok["sdp"].as_str().unwrap().contains("m=video"), "{ok}");
    assert!(ok["first_keyframe_ms"].as_f64().unwrap() > 0.0, "{ok}");
    let tracks = ok["tracks"].as_array().unwrap();
    assert_eq!(tracks[0]["kind"], "video");
    assert_eq!(tracks[0]["codec"], "H264");
    assert_eq!((tracks[0]["width"].as_u64(), tracks[0]["height"].as_u64()), (Some(320), Some(240)));
    assert_eq!(tracks[0]["clock_rate"], 90000);
    assert_eq!(tracks[1]["kind"], "audio");
    assert_eq!(tracks[1]["codec"], "AAC");
    assert_eq!((tracks[1]["sample_rate"].as_u64(), tracks[1]["channels"].as_u64()), (Some(44100), Some(2)));
    // The server's own streams were not touched.
    assert!(server_paths(&server).await.is_empty());

    let (status, rtmp) = post_json(&url, &format!("{{\"url\": \"rtmp://{}/live/p\"}}", up.rtmp)).await;
    assert_eq!((status, &rtmp["ok"], &rtmp["transport"]), (200, &Value::Bool(true), &Value::from("rtmp")), "{rtmp}");

    let (status, failed) = post_json(&url, &format!("{{\"url\": \"rtsp://{}/live/none\"}}", up.rtsp)).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(failed["step"], "DESCRIBE", "{failed}");
    assert_eq!(failed["status"], 404, "{failed}");
    assert_eq!(failed["error"], "DESCRIBE answered 404 Not Found", "{failed}");

    for bad in ["{\"url\": \"http://x/y\"}", "{\"nourl\": 1}", "not json"] {
        let (status, e) = post_json(&url, bad).await;
        assert_eq!(status, 400, "{bad}: {e}");
        assert!(e["error"].is_string(), "{e}");
    }
    let (status, _) = post_json(&url, &format!("{{\"url\": \"rtsp://x/{}\"}}", "a".repeat(9000))).await;
    assert_eq!(status, 413);
}

async fn server_paths(server: &Server) -> Vec<Value> {
    let list = http_get(&format!("http://{}/api/v1/paths", server.http), "").await;
    let list: Value = serde_json::from_slice(&list.body).unwrap();
    list["items"].as_array().unwrap().clone()
}

/// A TCP proxy to `upstream` that points every UDP SETUP's `client_port` at a port nobody
/// listens on: the camera "sends" RTP over UDP that never arrives, as behind a NAT or a
/// firewall. Interleaved (TCP) sessions pass untouched.
async fn udp_blackhole_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dead = free_port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut data = buf[..n].to_vec();
                    if let Ok(text) = std::str::from_utf8(&data)
                        && let Some(at) = text.find("client_port=")
                    {
                        let end = text[at..].find([';', '\r']).map_or(text.len(), |e| at + e);
                        let rewritten = format!("{}client_port={dead}-{}{}", &text[..at], dead + 1, &text[end..]);
                        data = rewritten.into_bytes();
                    }
                    if sw.write_all(&data).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `auto` with a camera whose UDP never arrives: after `source.udp_timeout_ms` the source
/// tears the UDP session down and plays over TCP, says why, and starts its next try with TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_tcp_when_no_udp_arrives() {
    let (up, _ffmpeg) = upstream("live/f").await;
    let proxy = udp_blackhole_proxy(up.rtsp).await;
    let puller = Server::with_config(&format!(
        "[source]\nudp_timeout_ms = 1000\n[paths.\"cams/f\"]\nsource = \"rtsp://{proxy}/live/f\"\nsource_on_demand = false\n"
    ));
    let live = until("the source went live over TCP", || async {
        let s = path_status(&puller, "cams/f").await;
        (s["source"]["state"] == "live").then_some(s)
    })
    .await;
    assert_eq!(live["source"]["transport"], "tcp", "{live}");
    blocking_probe(puller.flv_url("cams/f"), 3, &[]).await.unwrap().assert_h264_aac(320, 240, 30);
    // The probe goes the same way and says why.
    let (status, p) =
        post_json(&format!("http://{}/api/v1/probe", puller.http), &format!("{{\"url\": \"rtsp://{proxy}/live/f\"}}"))
            .await;
    assert_eq!((status, &p["ok"]), (200, &Value::Bool(true)), "{p}");
    assert_eq!(p["transport"], "tcp", "{p}");
    assert!(p["transport_reason"].as_str().unwrap().contains("no RTP over UDP within 1 s after PLAY"), "{p}");
}

/// The upstream goes away for good: the pulled path's reader is ended once the republish grace
/// is over, as a publisher's readers are, while the source keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_stays_down_ends_its_readers_after_the_grace() {
    let (up, ffmpeg) = upstream("live/d").await;
    let puller = Server::with_config(&format!(
        "[hub]\nrepublish_grace_ms = 1500\n[source]\nretry_min_ms = 100\nretry_max_ms = 200\n[paths.\"cams/d\"]\nsource = \"rtmp://{}/live/d\"\n",
        up.rtmp
    ));
    let mut reader = RtmpClient::connect(puller.rtmp, "cams/d", false).await;
    let mut frames = 0;
    while frames < 30 {
        if let ClientEvent::Media(m) = reader.next_event(Duration::from_secs(30)).await.expect("frames")
            && m.kind != MediaKind::Data
        {
            frames += 1;
        }
    }
    drop(ffmpeg);
    drop(up);
    // The reader is ended: its connection closes (each read waits longer than the guard, so
    // only a close ends the loop in time).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while reader.next_event(Duration::from_secs(60)).await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the reader was never ended");
    let s = until("the source retries", || async {
        let s = path_status(&puller, "cams/d").await;
        (s["source"]["retries"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(s["live"], false, "{s}");
    assert!(s["source"]["last_error"].as_str().unwrap().starts_with("connect to 127.0.0.1:"), "{s}");
}
