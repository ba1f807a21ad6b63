//! Shared pieces of the integration tests: the real `ferrocast` binary on loopback, media made
//! by ffmpeg's lavfi sources, ffmpeg/ffprobe runners, and a tokio driver for our own RTMP
//! client session.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrocast_rtmp::client::{ClientConfig, ClientEvent, ClientMode, ClientSession};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether `program arg` runs and exits 0.
fn succeeds(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Fails loudly when a tool is missing: interop tests never skip.
pub fn require(tool: &str) {
    assert!(
        succeeds(tool, "-version"),
        "{tool} is required for the interop tests: run ./scripts/test (it installs ffmpeg) or apt-get install -y ffmpeg"
    );
}

fn work_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocast-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn make_media(name: &str, args: &[&str]) -> PathBuf {
    require("ffmpeg");
    let out = work_dir().join(name);
    let status = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).arg(&out).status().expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not make {name}");
    out
}

/// 4 s of H.264 high profile with B-frames (GOP 1 s) + AAC 44.1 kHz stereo, in FLV.
pub fn test_flv() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        make_media(
            "h264_aac.flv",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
                "-c:v",
                "libx264",
                "-profile:v",
                "high",
                "-bf",
                "2",
                "-g",
                "30",
                "-preset",
                "veryfast",
                "-c:a",
                "aac",
                "-ac",
                "2",
                "-t",
                "4",
                "-f",
                "flv",
            ],
        )
    })
}

/// H.264 + MP3 44.1 kHz in FLV.
pub fn mp3_flv() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        make_media(
            "h264_mp3.flv",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
                "-c:v",
                "libx264",
                "-g",
                "30",
                "-preset",
                "veryfast",
                "-c:a",
                "libmp3lame",
                "-t",
                "4",
                "-f",
                "flv",
            ],
        )
    })
}

/// H.265 (x265, no B-frames, keyframe every 30 frames, with AUDs) as an Annex B stream.
pub fn hevc_annexb() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        make_media(
            "x265.hevc",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-c:v",
                "libx265",
                "-x265-params",
                "keyint=30:min-keyint=30:bframes=0:aud=1:log-level=error",
                "-t",
                "4",
                "-f",
                "hevc",
            ],
        )
    })
}

/// 4 s of H.265 (x265 with B-frames) + AAC in Matroska, for publishing over RTSP.
pub fn hevc_aac_mkv() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        make_media(
            "h265_aac.mkv",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
                "-c:v",
                "libx265",
                "-x265-params",
                "keyint=30:min-keyint=30:log-level=error",
                "-c:a",
                "aac",
                "-t",
                "4",
                "-f",
                "matroska",
            ],
        )
    })
}

/// `ffmpeg -re -stream_loop -1 -i FILE -c copy -f rtsp -rtsp_transport T URL`.
pub fn publish_rtsp(file: &Path, url: &str, transport: &str) -> Proc {
    publish_rtsp_codecs(file, url, transport, &["-c", "copy"])
}

/// As [`publish_rtsp`] with codec options (e.g. `-c:v copy -c:a pcm_alaw -ar 8000`).
pub fn publish_rtsp_codecs(file: &Path, url: &str, transport: &str, codecs: &[&str]) -> Proc {
    require("ffmpeg");
    let child = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i"])
        .arg(file)
        .args(codecs)
        .args(["-f", "rtsp", "-rtsp_transport", transport, url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    Proc(child)
}

/// A high-bitrate (noisy, ~8 Mbit/s) H.264 stream, to fill socket buffers quickly.
pub fn heavy_flv() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        make_media(
            "heavy.flv",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=640x360:rate=30,noise=alls=60:allf=t",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
                "-c:v",
                "libx264",
                "-bf",
                "2",
                "-g",
                "30",
                "-preset",
                "ultrafast",
                "-b:v",
                "8M",
                "-c:a",
                "aac",
                "-t",
                "4",
                "-f",
                "flv",
            ],
        )
    })
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary on loopback with ports chosen by the kernel.
pub struct Server {
    pub proc: Proc,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub rtsp: SocketAddr,
}

impl Server {
    pub fn start() -> Server {
        Server::with_config("")
    }

    /// Starts with a TOML config (listen addresses are overridden to port 0).
    pub fn with_config(toml: &str) -> Server {
        Server::spawn(toml, ["127.0.0.1:0"; 3], Stdio::inherit())
    }

    /// Starts the binary with `toml` listening on `[rtmp, http, rtsp]` (`HOST:0` for a free
    /// port; fixed ports let a server be restarted in place or named by another's config
    /// before it starts), its log (at debug level) to `stderr`.
    pub fn spawn(toml: &str, listen: [&str; 3], stderr: Stdio) -> Server {
        let cfg = work_dir().join(format!("cfg-{}.toml", rand_suffix()));
        // Tests run in parallel: the RTSP UDP ports must be free ones too.
        let ports = "rtp_port = 0\nrtcp_port = 0\n";
        let toml = if toml.contains("rtp_port") {
            toml.to_owned()
        } else if toml.contains("[rtsp]\n") {
            toml.replace("[rtsp]\n", &format!("[rtsp]\n{ports}"))
        } else {
            format!("{toml}\n[rtsp]\n{ports}")
        };
        std::fs::write(&cfg, toml).unwrap();
        let [rtmp, http, rtsp] = listen;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrocast"))
            .args(["--rtmp-addr", rtmp, "--http-addr", http, "--rtsp-addr", rtsp])
            .arg("--config")
            .arg(&cfg)
            .args(["--log-level", "debug"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start ferrocast");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = |what: &str| -> SocketAddr {
            let line = lines.next().expect("ferrocast exited early").unwrap();
            let prefix = format!("ferrocast: {what} listening on ");
            line.strip_prefix(&prefix).unwrap_or_else(|| panic!("unexpected line {line:?}")).parse().unwrap()
        };
        let rtmp = addr("rtmp");
        let http = addr("http");
        let rtsp = addr("rtsp");
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { proc: Proc(child), rtmp, http, rtsp }
    }

    pub fn rtmp_url(&self, path: &str) -> String {
        format!("rtmp://{}/{path}", self.rtmp)
    }

    pub fn rtsp_url(&self, path: &str) -> String {
        format!("rtsp://{}/{path}", self.rtsp)
    }

    pub fn flv_url(&self, path: &str) -> String {
        format!("http://{}/{path}.flv", self.http)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.proc.0.try_wait().unwrap().is_none()
    }
}

/// A TCP port free now on loopback (bound and let go), for peers that must be started on a
/// known port: restarted in place, or named in another's config before they start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A network namespace with only loopback, multicast routed to it; its processes are killed
/// and it is removed on drop. Needs root and iproute2 (./scripts/test installs it).
pub struct Netns(pub String);

impl Netns {
    /// `ferrocast-PREFIX-PID`: one per test process (nextest runs each test in its own).
    pub fn new(prefix: &str) -> Netns {
        let name = format!("ferrocast-{prefix}-{}", std::process::id());
        let run = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            assert!(
                ok,
                "`ip {}` failed: the multicast test needs root and iproute2 (./scripts/test installs it)",
                args.join(" ")
            );
        };
        run(&["netns", "add", &name]);
        let ns = Netns(name);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"],
            &["route", "add", "224.0.0.0/4", "dev", "lo"],
        ] {
            let mut full = vec!["netns", "exec", &ns.0, "ip"];
            full.extend_from_slice(args);
            run(&full);
        }
        ns
    }

    /// `program` run inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        command_in(Some(&self.0), program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `ffmpeg -re -stream_loop -1 -i FILE -c copy -f flv URL`: a real-time publisher.
pub fn publish(file: &Path, url: &str) -> Proc {
    publish_args(file, url, &["-stream_loop", "-1"])
}

/// A publisher with extra input options (e.g. `-t 3` for a bounded run).
pub fn publish_args(file: &Path, url: &str, input_opts: &[&str]) -> Proc {
    require("ffmpeg");
    let child = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re"])
        .args(input_opts)
        .arg("-i")
        .arg(file)
        .args(["-c", "copy", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg");
    Proc(child)
}

/// What ffprobe saw.
#[derive(Debug)]
pub struct Probe {
    pub streams: Vec<Value>,
    pub packets: Vec<Value>,
    pub stderr: String,
}

impl Probe {
    pub fn codec(&self, kind: &str) -> Option<&Value> {
        self.streams.iter().find(|s| s["codec_type"] == kind)
    }

    fn index(&self, kind: &str) -> i64 {
        self.codec(kind).unwrap_or_else(|| panic!("no {kind} stream in {:?}", self.streams))["index"].as_i64().unwrap()
    }

    /// Packets of one stream as (dts seconds, keyframe).
    pub fn packets_of(&self, kind: &str) -> Vec<(f64, bool)> {
        let idx = self.index(kind);
        self.packets
            .iter()
            .filter(|p| p["stream_index"].as_i64() == Some(idx))
            .map(|p| {
                let dts = p["dts_time"].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                (dts, p["flags"].as_str().unwrap_or("").starts_with('K'))
            })
            .collect()
    }

    /// The checks every read of the H.264+AAC test stream must pass: codecs, resolution, no
    /// stray data stream, packets throughout, monotonic timestamps, first video frame a
    /// keyframe.
    pub fn assert_h264_aac(&self, width: i64, height: i64, min_video_packets: usize) {
        assert_eq!(self.streams.len(), 2, "streams: {:?}\n{}", self.streams, self.stderr);
        let v = self.codec("video").expect("video stream");
        assert_eq!(v["codec_name"], "h264");
        assert_eq!((v["width"].as_i64(), v["height"].as_i64()), (Some(width), Some(height)));
        assert_eq!(self.codec("audio").expect("audio stream")["codec_name"], "aac");
        let video = self.packets_of("video");
        let audio = self.packets_of("audio");
        assert!(video.len() >= min_video_packets, "only {} video packets\n{}", video.len(), self.stderr);
        assert!(audio.len() >= min_video_packets, "only {} audio packets\n{}", audio.len(), self.stderr);
        assert!(video[0].1, "first video packet is not a keyframe");
        for (name, pk) in [("video", &video), ("audio", &audio)] {
            for w in pk.windows(2) {
                assert!(w[1].0 >= w[0].0, "{name} dts went backwards: {} -> {}", w[0].0, w[1].0);
            }
        }
    }
}

impl Probe {
    /// Checks for a read over RTSP: RTP carries presentation times only, so ffmpeg reports no
    /// video DTS; presentation times must be there, and audio timestamps monotonic.
    pub fn assert_rtsp(&self, video_codec: &str, width: i64, height: i64, min_video_packets: usize) {
        self.assert_rtsp_from(video_codec, width, height, min_video_packets, true);
    }

    /// As [`Probe::assert_rtsp`]; a multicast reader joins the shared group mid-GOP, so
    /// `starts_on_keyframe` is false for it and a keyframe must come within a GOP instead.
    pub fn assert_rtsp_from(
        &self,
        video_codec: &str,
        width: i64,
        height: i64,
        min_video_packets: usize,
        starts_on_keyframe: bool,
    ) {
        let v = self.codec("video").unwrap_or_else(|| panic!("no video in {:?}\n{}", self.streams, self.stderr));
        assert_eq!(v["codec_name"], video_codec);
        assert_eq!((v["width"].as_i64(), v["height"].as_i64()), (Some(width), Some(height)));
        assert_eq!(self.codec("audio").expect("audio stream")["codec_name"], "aac");
        let idx = v["index"].as_i64();
        let video: Vec<&Value> = self.packets.iter().filter(|p| p["stream_index"].as_i64() == idx).collect();
        assert!(video.len() >= min_video_packets, "only {} video packets\n{}", video.len(), self.stderr);
        let with_pts = video.iter().filter(|p| p["pts_time"].as_str().is_some_and(|s| s != "N/A")).count();
        assert!(with_pts * 10 >= video.len() * 9, "{with_pts} of {} video packets have a pts", video.len());
        let key = |p: &&Value| p["flags"].as_str().unwrap_or("").starts_with('K');
        if starts_on_keyframe {
            assert!(key(&video[0]), "first video packet is not a keyframe");
        } else {
            assert!(video.iter().take(60).any(key), "no keyframe within the first GOP");
        }
        let audio = self.packets_of("audio");
        assert!(audio.len() >= min_video_packets, "only {} audio packets\n{}", audio.len(), self.stderr);
        for w in audio.windows(2) {
            assert!(w[1].0 >= w[0].0, "audio went backwards: {} -> {}", w[0].0, w[1].0);
        }
    }
}

/// Fails loudly when a GStreamer element is missing.
pub fn require_gst(element: &str) {
    assert!(
        succeeds("gst-inspect-1.0", element),
        "GStreamer element {element} is required: run ./scripts/test (it installs Debian's GStreamer packages)"
    );
}

/// A command for `program`, run inside a network namespace when `netns` is given.
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a GStreamer pipeline to completion (a bounded number of buffers), in a network
/// namespace if given, with a guard: None on success, else what went wrong (GStreamer's
/// messages).
pub fn gst_in(netns: Option<&str>, pipeline: &str) -> Option<String> {
    let mut command = command_in(netns, "gst-launch-1.0");
    let mut child = command
        .args(pipeline.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0");
    // Drain both pipes while it runs (a full pipe would stall it); keep the tail.
    let tail = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            let eos = text.contains("Got EOS from element");
            // GStreamer 1.22's rtspsrc, shutting down after EOS, may send its PAUSE on a
            // connection its own CLOSE command is flushing and report "Could not write to
            // resource ... (Received end-of-file)" (seen with every server version, the peer
            // closing being rtspsrc itself): after EOS that is no failure of the stream.
            let teardown_race_only = text
                .lines()
                .filter(|l| l.starts_with("ERROR:"))
                .all(|l| l.contains("GstRTSPSrc") && l.contains("Could not write to resource"));
            let tail = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            (tail, eos && teardown_race_only)
        })
    };
    let out = tail(child.stdout.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
    let err = tail(child.stderr.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ((out, out_eos), (err, _)) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => None,
        Some(_) if out_eos => None,
        Some(s) => Some(format!("{s}\n{out}\n{err}")),
        None => Some(format!("no end within 30 s\n{out}\n{err}")),
    }
}

/// `ffprobe` reading `url` for `seconds` of stream time (killed after a generous guard).
pub fn probe(url: &str, seconds: u32) -> Probe {
    probe_with(url, seconds, &[])
}

/// `ffprobe` with extra input options (e.g. `-rtsp_transport tcp`).
pub fn probe_with(url: &str, seconds: u32, opts: &[&str]) -> Probe {
    probe_in(None, url, seconds, opts)
}

/// `ffprobe`, inside a network namespace when `netns` is given.
pub fn probe_in(netns: Option<&str>, url: &str, seconds: u32, opts: &[&str]) -> Probe {
    require("ffprobe");
    let interval = format!("%+{seconds}");
    // Output to files, not pipes: a full pipe would stall ffprobe while we wait on it.
    let out_path = work_dir().join(format!("probe-{}.json", rand_suffix()));
    let err_path = out_path.with_extension("err");
    let mut command = command_in(netns, "ffprobe");
    let mut child = command
        .args(["-v", "error", "-show_streams", "-show_packets", "-of", "json", "-read_intervals", &interval])
        // An I/O timeout: -timeout for RTSP (socket), -rw_timeout for the others.
        .args(if url.starts_with("rtsp") { ["-timeout", "15000000"] } else { ["-rw_timeout", "15000000"] })
        .args(opts)
        .arg(url)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("ffprobe");
    let guard = Duration::from_secs(u64::from(seconds) + 30);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let json: Value = serde_json::from_slice(&stdout).unwrap_or(Value::Null);
    let arr = |k: &str| json[k].as_array().cloned().unwrap_or_default();
    Probe { streams: arr("streams"), packets: arr("packets"), stderr }
}

/// Waits until `url` is readable (the publisher is up), polling with ffprobe-free RTMP.
pub async fn wait_published(server: &Server, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("http://{}/{path}.flv", server.http);
        if http_status(&url).await == Some(200) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} was never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A whole HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().to_ascii_lowercase() == name).then(|| v.trim().to_owned())
        })
    }
}

/// GET with extra request headers, reading to the end (Connection: close).
pub async fn http_get(url: &str, extra: &str) -> HttpResponse {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all)).await.expect("response in time").unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let headers = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    HttpResponse { status, headers, body: all[split + 4..].to_vec() }
}

/// `METHOD url` with a JSON body (may be empty), reading to the end (Connection: close):
/// status code, response head, and body (de-chunked).
pub async fn http_request(method: &str, url: &str, body: &str) -> (u16, String, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    // The server answers under its own timeouts (a probe connects to a camera); this only
    // keeps a hang from stalling the run.
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut all)).await.expect("answered").unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = all[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    (status, head, body)
}

/// POST with a JSON body, reading to the end: status code and body text.
pub async fn http_post(url: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_request("POST", url, body).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}

/// Status code of a GET (headers only).
pub async fn http_status(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let mut s = TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.ok()?.ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.split(' ').nth(1)?.parse().ok()
}

/// Our RTMP client session over a real socket.
pub struct RtmpClient {
    pub socket: TcpStream,
    pub session: ClientSession,
    buf: Vec<u8>,
}

impl RtmpClient {
    pub async fn connect(addr: SocketAddr, path: &str, publish: bool) -> RtmpClient {
        RtmpClient::connect_socket(TcpStream::connect(addr).await.unwrap(), addr, path, publish).await
    }

    pub async fn connect_socket(socket: TcpStream, addr: SocketAddr, path: &str, publish: bool) -> RtmpClient {
        let (app, name) = path.split_once('/').unwrap();
        let mode = if publish { ClientMode::Publish(name.into()) } else { ClientMode::Play(name.into()) };
        RtmpClient::with_config(socket, ClientConfig::new(&format!("rtmp://{addr}/{app}"), app, mode)).await
    }

    pub async fn with_config(socket: TcpStream, config: ClientConfig) -> RtmpClient {
        let mut c = RtmpClient { socket, session: ClientSession::new(config, Instant::now()), buf: vec![0; 65536] };
        c.flush().await;
        c
    }

    pub async fn flush(&mut self) {
        while let Some(b) = self.session.poll_transmit() {
            self.socket.write_all(&b).await.unwrap();
        }
    }

    /// Reads until an event arrives; None on EOF or after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<ClientEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self.session.poll_event() {
                return Some(ev);
            }
            let n = match tokio::time::timeout_at(deadline, self.socket.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return None,
            };
            if self.session.handle_input(Instant::now(), &self.buf[..n]).is_err() {
                // The session ended (a refused connect, say): what it reported before is
                // still given.
                return self.session.poll_event();
            }
            self.flush().await;
        }
    }

    /// Waits for an event matching `f`, returning the events before it too.
    pub async fn wait_for(&mut self, f: impl Fn(&ClientEvent) -> bool) -> Vec<ClientEvent> {
        let mut seen = Vec::new();
        loop {
            let ev = self
                .next_event(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("connection ended; saw {seen:?}"));
            let done = f(&ev);
            seen.push(ev);
            if done {
                return seen;
            }
        }
    }

    /// Publishes an H.265 Annex B file as Enhanced RTMP at 30 fps, real-time paced, `loops`
    /// times: access units split at AUDs, parameter sets moved into the hvcC.
    pub async fn publish_hevc(&mut self, file: &Path, loops: u32) {
        use ferrocast_media::{avc, h265};
        let data = std::fs::read(file).unwrap();
        let mut units: Vec<Vec<&[u8]>> = Vec::new();
        for nal in avc::split_annexb(&data) {
            if h265::nal_type(nal) == h265::nal::AUD || units.is_empty() {
                units.push(Vec::new());
            }
            units.last_mut().unwrap().push(nal);
        }
        let by_type = |t: u8| -> Vec<Bytes> {
            units
                .iter()
                .flatten()
                .filter(|n| h265::nal_type(n) == t)
                .take(1)
                .map(|n| Bytes::copy_from_slice(n))
                .collect()
        };
        let hvcc =
            h265::build_hvcc(&by_type(h265::nal::VPS), &by_type(h265::nal::SPS), &by_type(h265::nal::PPS)).unwrap();
        let mut config = vec![0x90, b'h', b'v', b'c', b'1'];
        config.extend_from_slice(&hvcc);
        self.session.send_media(ferrocast_rtmp::MediaKind::Video, 0, &config);
        let start = tokio::time::Instant::now();
        let mut n = 0u32;
        for _ in 0..loops {
            for au in &units {
                let key =
                    au.iter().any(|u| (h265::nal::IRAP_FIRST..=h265::nal::IRAP_LAST).contains(&h265::nal_type(u)));
                let mut tag = vec![if key { 0x93 } else { 0xa3 }, b'h', b'v', b'c', b'1'];
                for u in au.iter().filter(|u| !(h265::nal::VPS..=h265::nal::AUD).contains(&h265::nal_type(u))) {
                    tag.extend_from_slice(&(u.len() as u32).to_be_bytes());
                    tag.extend_from_slice(u);
                }
                let ts = n * 1000 / 30;
                tokio::time::sleep_until(start + Duration::from_millis(u64::from(ts))).await;
                self.session.send_media(ferrocast_rtmp::MediaKind::Video, ts, &tag);
                self.flush().await;
                n += 1;
            }
        }
    }

    /// Publishes the FLV file's tags at real-time pace, `loops` times with increasing
    /// timestamps.
    pub async fn publish_file(&mut self, file: &Path, loops: u32) {
        self.publish_file_from(file, loops, 0).await
    }

    /// As [`RtmpClient::publish_file`] with every timestamp moved by `base` (wrapping at 32
    /// bits, as RTMP timestamps do).
    pub async fn publish_file_from(&mut self, file: &Path, loops: u32, base: u32) {
        let data = Bytes::from(std::fs::read(file).unwrap());
        let tags = ferrocast_media::flv::read_file(&data).unwrap();
        let span = tags.iter().map(|t| t.timestamp).max().unwrap_or(0) + 33;
        let start = tokio::time::Instant::now();
        for l in 0..loops {
            for t in &tags {
                let ts = t.timestamp + l * span;
                let kind = match t.tag_type {
                    8 => ferrocast_rtmp::MediaKind::Audio,
                    9 => ferrocast_rtmp::MediaKind::Video,
                    _ if l == 0 => ferrocast_rtmp::MediaKind::Data,
                    _ => continue,
                };
                tokio::time::sleep_until(start + Duration::from_millis(u64::from(ts))).await;
                self.session.send_media(kind, ts.wrapping_add(base), &t.body);
                self.flush().await;
            }
        }
    }
}
