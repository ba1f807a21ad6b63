//! The HTTP API v1 with real clients: a path published over RTMP and read over RTMP, RTSP
//! (TCP and UDP), HTTP-FLV and HLS at once, as `/api/v1/paths/PATH` and `/api/v1/sessions`
//! show it; kicking readers and the publisher; the OpenAPI document against the routes the
//! server answers; `api.listen`.

#[path = "common/api.rs"]
mod api_common;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use api_common::{exits, free_udp_pair, get_json, read_with_ffmpeg, request, until};
use common::*;
use serde_json::Value;

/// The sessions of `path` with `protocol` and `role`.
fn sessions_of<'a>(all: &'a Value, path: &str, protocol: &str, role: &str) -> Vec<&'a Value> {
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["path"] == path && s["protocol"] == protocol && s["role"] == role)
        .collect()
}

/// Every key the OpenAPI document requires of `schema` is in `value`.
fn has_required(doc: &Value, schema: &str, value: &Value) {
    for key in doc["components"]["schemas"][schema]["required"].as_array().unwrap() {
        let key = key.as_str().unwrap();
        assert!(value.get(key).is_some(), "{schema} without {key}: {value}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_and_sessions_while_read_over_every_protocol_and_kicks() {
    let rtp = free_udp_pair().await;
    let server = Server::with_config(&format!("[rtsp]\nrtp_port = {rtp}\nrtcp_port = {}\n", rtp + 1));
    let api = format!("http://{}/api/v1", server.http);
    let path = "live/api";
    let mut publisher = publish(test_flv(), &server.rtmp_url(path));
    wait_published(&server, path).await;
    let mut rtmp = read_with_ffmpeg(&server.rtmp_url(path), &[]);
    let mut rtsp_tcp = read_with_ffmpeg(&server.rtsp_url(path), &["-rtsp_transport", "tcp"]);
    let mut rtsp_udp = read_with_ffmpeg(&server.rtsp_url(path), &["-rtsp_transport", "udp"]);
    let mut flv = read_with_ffmpeg(&server.flv_url(path), &[]);
    let hls_url = format!("http://{}/{path}/index.m3u8", server.http);
    let hls = read_with_ffmpeg(&hls_url, &[]);

    // Readers counted by protocol, HLS players included.
    let url = format!("{api}/paths/{path}");
    let p = until("a reader of every protocol", async || {
        let p = get_json(&url).await;
        let by = &p["readers_by_protocol"];
        (by["rtmp"] == 1 && by["rtsp"] == 2 && by["http_flv"] == 1 && by["hls"] == 1).then_some(p)
    })
    .await;
    let doc = get_json(&format!("{api}/openapi.json")).await;
    has_required(&doc, "Path", &p);
    assert_eq!(p["live"], true);
    // RTMP, RTSP and HTTP-FLV readers hold a subscription; HLS players are served by the muxer.
    assert_eq!(p["readers"], 4, "{p}");
    assert_eq!(p["publisher"]["protocol"], "rtmp");
    assert!(p["publisher"]["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let publisher_id = p["publisher"]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(p["hls"], true);
    assert_eq!(p["recording"], false);
    assert!(p["uptime"].as_f64().unwrap() > 0.0, "{p}");
    let video = p["tracks"].as_array().unwrap().iter().find(|t| t["kind"] == "video").expect("video track");
    assert_eq!(
        (video["codec"].as_str(), video["width"].as_u64(), video["height"].as_u64()),
        (Some("H264"), Some(320), Some(240))
    );
    let audio = p["tracks"].as_array().unwrap().iter().find(|t| t["kind"] == "audio").expect("audio track");
    assert_eq!(
        (audio["codec"].as_str(), audio["sample_rate"].as_u64(), audio["channels"].as_u64()),
        (Some("AAC"), Some(44100), Some(2))
    );
    // The frame rate and bit rate measured over the last seconds (30 fps; the test clip is
    // a few hundred kbit/s).
    let p = until("the input rates", async || {
        let p = get_json(&url).await;
        (p["bitrate_in"].as_u64().unwrap() > 10_000 && p["tracks"][0]["fps"].as_f64().is_some()).then_some(p)
    })
    .await;
    let fps = p["tracks"].as_array().unwrap().iter().find_map(|t| t["fps"].as_f64()).unwrap();
    assert!((20.0..=40.0).contains(&fps), "fps {fps}");
    // Bytes grow between two reads.
    let (in1, out1) = (p["bytes_in"].as_u64().unwrap(), p["bytes_out"].as_u64().unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p2 = get_json(&url).await;
    let (in2, out2) = (p2["bytes_in"].as_u64().unwrap(), p2["bytes_out"].as_u64().unwrap());
    assert!(in2 > in1 && out2 > out1, "bytes in {in1} -> {in2}, out {out1} -> {out2}");
    // The whole list has the path with the same fields.
    let list = get_json(&format!("{api}/paths")).await;
    assert!(
        list["items"].as_array().unwrap().iter().any(|i| i["path"] == path && i["readers_by_protocol"]["hls"] == 1)
    );

    // Sessions: each with its protocol, role and path.
    let all = get_json(&format!("{api}/sessions")).await;
    for s in all["items"].as_array().unwrap() {
        has_required(&doc, "Session", s);
    }
    let publishers = sessions_of(&all, path, "rtmp", "publisher");
    assert_eq!(publishers.len(), 1, "{all}");
    assert_eq!(publishers[0]["id"], publisher_id.as_str());
    assert!(publishers[0]["bytes_in"].as_u64().unwrap() > 0);
    for (protocol, n) in [("rtmp", 1), ("rtsp", 2), ("http_flv", 1), ("hls", 1)] {
        let readers = sessions_of(&all, path, protocol, "reader");
        assert_eq!(readers.len(), n, "{protocol} readers: {all}");
        for r in readers {
            assert!(r["bytes_out"].as_u64().unwrap() > 0, "{r}");
            assert!(r["created"].as_str().unwrap().ends_with('Z'), "{r}");
            assert!(r["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
        }
    }
    // One session by id; an unknown id is 404.
    let one = get_json(&format!("{api}/sessions/{publisher_id}")).await;
    assert_eq!(one["role"], "publisher");
    for bad in ["0123456789abcdef", "not-an-id"] {
        let a = request("GET", &format!("{api}/sessions/{bad}"), None).await;
        assert_eq!(a.status, 404, "{bad}");
        assert!(a.json()["error"].is_string());
        assert_eq!(request("DELETE", &format!("{api}/sessions/{bad}"), None).await.status, 404);
    }

    // RTCP receiver-report figures of the RTSP reader over UDP: ffmpeg sends its receiver
    // reports over UDP only (to the server's RTCP port), so that reader is the UDP one.
    let (udp_id, rtcp) = until("RTCP figures of the RTSP reader over UDP", async || {
        let all = get_json(&format!("{api}/sessions")).await;
        sessions_of(&all, path, "rtsp", "reader")
            .iter()
            .find(|s| !s["rtcp"].is_null())
            .map(|s| (s["id"].as_str().unwrap().to_owned(), s["rtcp"].clone()))
    })
    .await;
    // In seconds (RTP units over the RTP clock): loopback jitter is milliseconds, never seconds.
    assert!((0.0..1.0).contains(&rtcp["jitter"].as_f64().unwrap()), "{rtcp}");
    assert!(rtcp["packets_lost"].is_i64(), "{rtcp}");
    assert!((0.0..=1.0).contains(&rtcp["fraction_lost"].as_f64().unwrap()), "{rtcp}");

    // Kicking a reader ends its client: the RTSP-over-TCP one and the HTTP-FLV one.
    let all = get_json(&format!("{api}/sessions")).await;
    let flv_id = sessions_of(&all, path, "http_flv", "reader")[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(request("DELETE", &format!("{api}/sessions/{flv_id}"), None).await.status, 204);
    assert!(exits(&mut flv).await, "the kicked HTTP-FLV reader's ffmpeg is still running");
    assert_eq!(request("GET", &format!("{api}/sessions/{flv_id}"), None).await.status, 404);
    let tcp_id = sessions_of(&all, path, "rtsp", "reader")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .find(|id| *id != udp_id)
        .unwrap();
    assert_eq!(request("DELETE", &format!("{api}/sessions/{tcp_id}"), None).await.status, 204);
    assert!(exits(&mut rtsp_tcp).await, "the kicked RTSP reader's ffmpeg is still running");
    assert!(rtsp_udp.0.try_wait().unwrap().is_none(), "the RTSP reader over UDP ended too");
    until("the kicked readers gone from the path", async || {
        let by = get_json(&url).await["readers_by_protocol"].clone();
        (by["rtsp"] == 1 && by["http_flv"] == 0).then_some(())
    })
    .await;

    // Kicking the publisher ends its ffmpeg; the RTMP reader carries on through the republish
    // grace with the next publisher.
    assert!(rtmp.0.try_wait().unwrap().is_none());
    assert_eq!(request("DELETE", &format!("{api}/sessions/{publisher_id}"), None).await.status, 204);
    assert!(exits(&mut publisher).await, "the kicked publisher's ffmpeg is still running");
    until("the path in its republish grace", async || {
        let p = get_json(&url).await;
        (p["live"] == false && p["publisher"] == Value::Null).then_some(())
    })
    .await;
    let _second = publish(test_flv(), &server.rtmp_url(path));
    let p = until("the second publisher", async || {
        let p = get_json(&url).await;
        (p["live"] == true && p["publisher"]["session_id"].is_string()).then_some(p)
    })
    .await;
    assert_ne!(p["publisher"]["session_id"], publisher_id.as_str());
    // The RTMP reader is still there, reading the new publisher.
    let all = get_json(&format!("{api}/sessions")).await;
    let rtmp_reader = sessions_of(&all, path, "rtmp", "reader")[0]["bytes_out"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = get_json(&format!("{api}/sessions")).await;
    let later = sessions_of(&all, path, "rtmp", "reader");
    assert_eq!(later.len(), 1, "the RTMP reader left with the kicked publisher: {all}");
    assert!(later[0]["bytes_out"].as_u64().unwrap() > rtmp_reader, "the RTMP reader gets nothing");
    assert!(rtmp.0.try_wait().unwrap().is_none(), "the RTMP reader's ffmpeg ended");
    drop(hls);
}

/// Kicking a publisher: an RTMP reader that was reading sees the stream come back from the
/// next publisher (published within the republish grace).
#[tokio::test(flavor = "multi_thread")]
async fn a_kicked_publishers_reader_sees_the_republish() {
    let server = Server::start();
    let api = format!("http://{}/api/v1", server.http);
    let path = "live/kick";
    let mut first = publish(test_flv(), &server.rtmp_url(path));
    wait_published(&server, path).await;
    let rtmp_url = server.rtmp_url(path);
    let reader = tokio::task::spawn_blocking(move || probe(&rtmp_url, 9));
    let url = format!("{api}/paths/{path}");
    until("the RTMP reader", async || (get_json(&url).await["readers_by_protocol"]["rtmp"] == 1).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = get_json(&url).await["publisher"]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(request("DELETE", &format!("{api}/sessions/{id}"), None).await.status, 204);
    assert!(exits(&mut first).await, "the kicked publisher's ffmpeg is still running");
    let _second = publish(test_flv(), &server.rtmp_url(path));
    let p = reader.await.unwrap();
    p.assert_h264_aac(320, 240, 150);
    let video = p.packets_of("video");
    assert!(video.last().unwrap().0 - video[0].0 > 7.0, "the reader stopped at the kick");
}

/// The OpenAPI document and the routes agree: every documented method of every documented
/// route is answered (JSON, not 405), every other method of those routes is 405, and a route
/// the document does not have is a JSON 404.
#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_and_routes_agree() {
    let server = Server::start();
    let base = format!("http://{}", server.http);
    let doc = get_json(&format!("{base}/api/v1/openapi.json")).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    // The config routes are helper D's (`api_config`): until that module is in the build,
    // `/api/v1/config` is the catch-all 404 and they are not checked.
    let catch_all = |a: &api_common::Answer| a.status == 404 && a.body.contains("no such API route");
    let config_built = !catch_all(&request("GET", &format!("{base}/api/v1/config"), None).await);
    let methods = ["get", "post", "put", "patch", "delete"];
    let mut checked = BTreeSet::new();
    for (template, item) in paths {
        assert!(template.starts_with("/api/v1/"), "{template}");
        if template.starts_with("/api/v1/config") && !config_built {
            eprintln!("{template}: the config API is not in this build; not checked");
            continue;
        }
        let url = template
            .replace("{path}", "live/none")
            .replace("{id}", "0123456789abcdef")
            .replace("{pattern}", "live/none");
        for m in methods {
            let documented = item.get(m).is_some();
            let body = matches!(m, "post" | "patch" | "put").then_some("{}");
            let a = request(&m.to_uppercase(), &format!("{base}{url}"), body).await;
            if documented {
                assert!(a.status != 405 && !catch_all(&a), "{m} {template}: {} {}", a.status, a.body);
                assert!(
                    a.status == 204 || a.header("content-type").is_some_and(|c| c.contains("json")),
                    "{m} {template}: not JSON: {}",
                    a.head
                );
                if a.status >= 400 {
                    assert!(a.json()["error"].is_string(), "{m} {template}: {}", a.body);
                }
                checked.insert(format!("{m} {template}"));
            } else {
                assert_eq!(a.status, 405, "{m} {template} is answered but not documented: {}", a.body);
                assert!(a.json()["error"].is_string());
            }
        }
    }
    for route in [
        "get /api/v1/paths/{path}",
        "delete /api/v1/sessions/{id}",
        "post /api/v1/probe",
        "get /api/v1/recordings/{path}",
    ] {
        assert!(checked.contains(route), "{route} not documented");
    }
    // Not in the document: not answered.
    for undocumented in ["/api/v1/nothing", "/api/v1/pathsX", "/api/v1/sessionsX/1", "/api/v1"] {
        let a = request("GET", &format!("{base}{undocumented}"), None).await;
        assert_eq!(a.status, 404, "{undocumented}");
        assert!(a.json()["error"].is_string(), "{undocumented}: {}", a.body);
    }
}

/// `api.listen`: the API is served there, and only there.
#[tokio::test(flavor = "multi_thread")]
async fn api_listen_moves_the_api_to_its_own_address() {
    let port = free_port();
    let server = Server::with_config(&format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"));
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let path = "live/apilisten";
    let _publisher = publish(test_flv(), &server.rtmp_url(path));
    wait_published(&server, path).await;
    let p = get_json(&format!("{api}/paths/{path}")).await;
    assert_eq!(p["live"], true);
    assert!(get_json(&format!("{api}/sessions")).await["items"].as_array().unwrap().iter().any(|s| s["path"] == path));
    assert!(get_json(&format!("{api}/openapi.json")).await["paths"].is_object());
    // Not on the HTTP port any more; media not on the API's.
    let a = request("GET", &format!("http://{}/api/v1/paths", server.http), None).await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("api.listen"), "{}", a.body);
    let a = request("GET", &format!("http://127.0.0.1:{port}/{path}.flv"), None).await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].is_string());
    // The media is still served on the HTTP port.
    assert_eq!(http_status(&server.flv_url(path)).await, Some(200));
}

/// A pulled source and a push relay are sessions too: the source's peer is the camera (here
/// another server), the relay's the target; kicking the source makes it reconnect.
#[tokio::test(flavor = "multi_thread")]
async fn pulled_sources_and_push_relays_are_sessions() {
    let origin = Server::start();
    let _camera = publish(test_flv(), &origin.rtmp_url("live/cam"));
    wait_published(&origin, "live/cam").await;
    let relay = Server::with_config(&format!(
        "[paths.\"cams/lobby\"]\nsource = \"rtsp://{}/live/cam\"\nsource_on_demand = false\npush = [\"rtmp://{}/live/pushed\"]\n",
        origin.rtsp, origin.rtmp
    ));
    let api = format!("http://{}/api/v1", relay.http);
    let source_of = |all: &Value| -> Option<(String, String)> {
        let s = sessions_of(all, "cams/lobby", "rtsp", "source").first().copied()?;
        Some((s["id"].as_str()?.to_owned(), s["remote_addr"].as_str()?.to_owned()))
    };
    let (id, peer) =
        until("the source's session", async || source_of(&get_json(&format!("{api}/sessions")).await)).await;
    assert_eq!(peer, origin.rtsp.to_string(), "a source's peer is the camera");
    let p = until("the path live with its source as publisher", async || {
        let p = get_json(&format!("{api}/paths/cams/lobby")).await;
        (p["live"] == true && p["publisher"]["session_id"] == id.as_str()).then_some(p)
    })
    .await;
    assert_eq!(p["publisher"]["protocol"], "rtsp");
    // Its bytes in grow.
    let bytes = |all: &Value, id: &str| {
        all["items"].as_array().unwrap().iter().find(|s| s["id"] == id).map(|s| s["bytes_in"].as_u64().unwrap())
    };
    let b1 = until("source bytes", async || bytes(&get_json(&format!("{api}/sessions")).await, &id).filter(|b| *b > 0))
        .await;
    let b2 = until("source bytes growing", async || {
        bytes(&get_json(&format!("{api}/sessions")).await, &id).filter(|b| *b > b1)
    })
    .await;
    assert!(b2 > b1);
    // The push relay: a session to the target, bytes out growing; the origin sees it as a
    // publisher.
    let push = until("the push relay's session", async || {
        let all = get_json(&format!("{api}/sessions")).await;
        sessions_of(&all, "cams/lobby", "rtmp", "push")
            .first()
            .filter(|s| s["bytes_out"].as_u64().unwrap() > 0)
            .map(|s| s["remote_addr"].as_str().unwrap().to_owned())
    })
    .await;
    assert_eq!(push, origin.rtmp.to_string());
    let origin_api = format!("http://{}/api/v1", origin.http);
    until("the pushed path on the origin", async || {
        let all = get_json(&format!("{origin_api}/sessions")).await;
        (!sessions_of(&all, "live/pushed", "rtmp", "publisher").is_empty()).then_some(())
    })
    .await;
    // The origin sees the source as an RTSP reader of live/cam.
    let all = get_json(&format!("{origin_api}/sessions")).await;
    assert_eq!(sessions_of(&all, "live/cam", "rtsp", "reader").len(), 1, "{all}");
    // Kicked, the source connects again: a new session.
    assert_eq!(request("DELETE", &format!("{api}/sessions/{id}"), None).await.status, 204);
    let (id2, _) = until("the source's next session", async || {
        source_of(&get_json(&format!("{api}/sessions")).await).filter(|(i, _)| *i != id)
    })
    .await;
    assert_ne!(id2, id);
}
