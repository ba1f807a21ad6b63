//! HLS behind a CDN: Debian's nginx as an ordinary caching proxy (`proxy_cache`,
//! `proxy_cache_lock on`, the origin's Cache-Control honoured) in front of ferrocast's HLS
//! output serves 50 concurrent players with about one origin request per segment and per
//! playlist refresh, counted from nginx's access log (`$upstream_status` per URI).

mod common;
#[path = "common/push.rs"]
mod push_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Server, free_port, http_get, publish, test_flv};
use push_support::{Nginx, test_dir};

const PLAYERS: usize = 50;
/// How long the players play.
const PLAY: Duration = Duration::from_secs(16);

/// The caching proxy of the README's "HLS behind a CDN" section, on `port` in front of
/// `origin`, logging each request's URI, status, upstream status and cache status.
fn proxy_conf(port: u16, origin: std::net::SocketAddr) -> String {
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid nginx.pid;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    log_format cdn '$uri $status $upstream_status $upstream_cache_status';
    access_log logs/access.log cdn;
    proxy_cache_path cache levels=1:2 keys_zone=hls:10m max_size=1g inactive=10m use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{origin};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hls;
            # One request to the origin per URI at a time; the others wait for its answer.
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            # Expired playlists are revalidated (If-None-Match: a 304 when unchanged).
            proxy_cache_revalidate on;
            # proxy_cache_lock holds back only requests for a URI not yet cached: those for
            # an expired playlist that arrive while one is refreshing it would all go to the
            # origin too. With this they get the copy just expired (at most a second old).
            proxy_cache_use_stale updating;
            # Only when the origin says nothing: its Cache-Control comes first.
            proxy_cache_valid 200 1s;
            proxy_cache_valid 404 1s;
        }}
    }}
}}
"#
    )
}

/// One player: the media playlist every half target duration, each new segment once.
async fn play(base: String, until: Instant) -> (usize, usize) {
    let mut seen: HashSet<String> = HashSet::new();
    let (mut playlists, mut segments) = (0, 0);
    let mut first = true;
    while Instant::now() < until {
        let r = http_get(&format!("{base}/media.m3u8"), "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        playlists += 1;
        let uris: Vec<String> =
            r.text().lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(str::to_owned).collect();
        // A player joins at the live edge: the last three segments.
        let start = if first { uris.len().saturating_sub(3) } else { 0 };
        first = false;
        for uri in &uris[start..] {
            assert!(!uri.contains('?'), "no per-player query strings: {uri}");
            if seen.insert(uri.clone()) {
                let s = http_get(&format!("{base}/{uri}"), "").await;
                assert_eq!(s.status, 200, "{uri}: {}", s.text());
                assert!(s.body.len() > 1000, "{uri}: {} bytes", s.body.len());
                segments += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    (playlists, segments)
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_players_through_a_caching_proxy_cost_the_origin_one_request_per_segment() {
    let origin = Server::start();
    let _publisher = publish(test_flv(), &origin.rtmp_url("live/cdn"));
    // The origin has segments before the players come.
    let deadline = Instant::now() + Duration::from_secs(30);
    let at_origin = format!("http://{}/live/cdn/media.m3u8", origin.http);
    loop {
        let r = http_get(&at_origin, "").await;
        if r.status == 200 {
            // Half a target duration (2 s segments): one second.
            assert_eq!(r.header("cache-control").as_deref(), Some("public, max-age=1"));
            let etag = r.header("etag").expect("playlist ETag");
            let again = http_get(&at_origin, &format!("If-None-Match: {etag}\r\n")).await;
            assert!(again.status == 304 || again.status == 200, "{}", again.status);
            break;
        }
        assert!(Instant::now() < deadline, "no HLS at the origin");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let port = free_port();
    let dir = test_dir("cdn");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let nginx = Nginx::start(&dir, port, &proxy_conf(port, origin.http));
    let base = format!("http://127.0.0.1:{port}/live/cdn");
    // Headers as the players get them through the proxy.
    let r = http_get(&format!("{base}/media.m3u8"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control").as_deref(), Some("public, max-age=1"));
    let segment = r.text().lines().rfind(|l| l.ends_with(".ts")).expect("a segment").to_owned();
    let s = http_get(&format!("{base}/{segment}"), "").await;
    assert_eq!(s.header("cache-control").as_deref(), Some("public, max-age=86400, immutable"));
    let missing = http_get(&format!("{base}/0-999999.ts"), "").await;
    assert_eq!((missing.status, missing.header("cache-control").as_deref()), (404, Some("public, max-age=1")));

    let started = Instant::now();
    let until = started + PLAY;
    let players: Vec<_> = (0..PLAYERS).map(|_| tokio::spawn(play(base.clone(), until))).collect();
    let (mut playlists, mut segments) = (0, 0);
    for p in players {
        let (a, b) = p.await.unwrap();
        playlists += a;
        segments += b;
    }
    let played = started.elapsed();
    drop(nginx);

    // Origin requests per URI: log lines whose request went upstream ($upstream_status set;
    // a revalidation answered 304 counts too).
    let log = std::fs::read_to_string(dir.join("logs/access.log")).unwrap();
    let mut origin_requests: HashMap<String, usize> = HashMap::new();
    let mut served: HashMap<String, usize> = HashMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "{line}");
        *served.entry(f[0].to_owned()).or_default() += 1;
        if f[2] != "-" {
            *origin_requests.entry(f[0].to_owned()).or_default() += 1;
        }
    }
    let seg_uris: Vec<&String> = served.keys().filter(|u| u.ends_with(".ts") && !u.ends_with("0-999999.ts")).collect();
    assert!(seg_uris.len() >= 5, "segments played: {seg_uris:?}");
    for uri in &seg_uris {
        let n = origin_requests.get(*uri).copied().unwrap_or(0);
        assert!(n <= 2, "{uri}: {n} origin requests for {} served", served[*uri]);
    }
    // Each player fetched every segment from when it joined.
    assert!(segments >= PLAYERS * seg_uris.len().saturating_sub(3), "{segments} segments fetched");
    let playlist = "/live/cdn/media.m3u8";
    let at_origin = origin_requests.get(playlist).copied().unwrap_or(0);
    // max-age=1: about one origin request per second, however many players.
    let windows = played.as_secs_f64().ceil() as usize + 1;
    assert!(
        at_origin <= 2 * windows,
        "{at_origin} playlist requests at the origin in {played:?} for {playlists} from the players"
    );
    assert!(playlists >= PLAYERS * 5, "the players refreshed: {playlists}");
    eprintln!(
        "{PLAYERS} players, {played:?}: {playlists} playlist fetches ({at_origin} at the origin), \
         {segments} segment fetches of {} segments ({} at the origin)",
        seg_uris.len(),
        seg_uris.iter().map(|u| origin_requests.get(*u).copied().unwrap_or(0)).sum::<usize>()
    );
}
