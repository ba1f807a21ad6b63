//! `ferrocast-bench`: publishes a file to a live-streaming server in real time and plays it
//! back with many concurrent readers, reporting how many keep up, throughput, added latency
//! (receive time minus send time of the same frame, one machine clock), time to first frame,
//! and the server's CPU and memory. Works against any RTMP / HTTP-FLV server.
//!
//! `ferrocast-bench camera --cameras N --listen ADDR --file FILE` serves N looping RTSP
//! cameras instead, for servers that pull (camera.rs).

mod camera;
mod flv_reader;
mod hls_reader;
mod publisher;
mod rtsp_reader;
mod stats;
mod vod_reader;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::{ClientConfig, ClientEvent, ClientMode, ClientSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::{Percentiles, ServerSampler};
use crate::vod_reader::Viewer;

/// How readers play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// RTMP play.
    Rtmp,
    /// HTTP-FLV (`http://HOST:PORT/APP/STREAM.flv`).
    Flv,
    /// RTSP, RTP interleaved in the TCP connection (`RTSP/APP/STREAM`).
    RtspTcp,
    /// RTSP, RTP over UDP unicast.
    RtspUdp,
    /// HLS (`http://HOST:PORT/APP/STREAM/index.m3u8`), polled as players do.
    Hls,
}

/// How the publisher pushes the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PublishProtocol {
    /// RTMP publish to --rtmp.
    Rtmp,
    /// RTSP ANNOUNCE/RECORD, RTP interleaved over TCP, to --rtsp with the path of --rtmp.
    Rtsp,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// RTMP URL to publish to (`rtmp://host:port/app/stream`); with --no-publish, the stream
    /// must already be live.
    #[arg(long)]
    rtmp: String,
    /// HTTP base for HTTP-FLV and HLS readers (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// RTSP base for RTSP readers (`rtsp://host:port`).
    #[arg(long, default_value = "rtsp://127.0.0.1:8554")]
    rtsp: String,
    /// Publishers: with more than one, publisher i publishes STREAM-i and reader j reads
    /// STREAM-(j mod N) (the ingest scenario). Latency is measured on the first.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// FLV or MP4 file (H.264/H.265 and AAC) to publish, looped with increasing timestamps.
    #[arg(long)]
    file: Option<PathBuf>,
    /// How to publish.
    #[arg(long, value_enum, default_value = "rtmp")]
    publish_protocol: PublishProtocol,
    /// Do not publish (another publisher is live); latency is then not measured.
    #[arg(long)]
    no_publish: bool,
    /// Reader protocol.
    #[arg(long, value_enum, default_value = "rtmp")]
    protocol: Protocol,
    /// Number of readers.
    #[arg(long, default_value_t = 10)]
    readers: usize,
    /// Readers started per second.
    #[arg(long, default_value_t = 200)]
    ramp: u32,
    /// Test length in seconds (after the publisher starts).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The first N readers read at most --throttle-kbps (to see a slow reader reported).
    #[arg(long, default_value_t = 0)]
    throttle_readers: usize,
    /// Read rate of throttled readers, kbit/s.
    #[arg(long, default_value_t = 100)]
    throttle_kbps: u64,
    /// Batched readers: once it has its first video frame, every reader but the probes and the
    /// first sleeps this long before each read and then takes up to 256 KiB at once, as a player on a real network with a buffer
    /// does, instead of reading each write the moment it lands (the eager shape, 0). Latency is
    /// measured on the eager probes, so it is the server's and not the sleep's. RTMP, HTTP-FLV
    /// and RTSP interleaved readers.
    #[arg(long, default_value_t = 0)]
    read_every_ms: u64,
    /// RTSP/UDP readers take each segmented send of the server whole (`UDP_GRO`, Linux 5.0+)
    /// and split it themselves. On loopback the receive path of every datagram runs on the
    /// sending core and is counted as the server's CPU; on a network it is the player's. With
    /// this, a frame sent in one `sendmsg` costs the server's core one receive, as a TCP write
    /// does on loopback.
    #[arg(long)]
    udp_gro: bool,
    /// Readers that join all at once (no ramp) --burst-at seconds after the others have
    /// started, to see whether a burst of joins delays the publisher's frames to the readers
    /// already playing.
    #[arg(long, default_value_t = 0)]
    burst: usize,
    /// When the burst comes, in seconds after the last of --readers started. Latency is then
    /// also reported for the BURST_WINDOW_S seconds before and from then, with or without a
    /// burst (--burst 0 gives the figure to compare with).
    #[arg(long)]
    burst_at: Option<u64>,
    /// VOD viewers: each plays --vod-url over RTSP (TCP interleaved) from its own position
    /// (drawn from --vod-seed), beside the live readers, started at --ramp per second.
    #[arg(long, default_value_t = 0)]
    vod_readers: usize,
    /// The RTSP playback URL of the VOD viewers: a recording by time
    /// (`rtsp://HOST:PORT/PATH?start=T`) or a file (`rtsp://HOST:PORT/vod/NAME.mp4`). Each
    /// viewer's first PLAY asks for `Range: npt=POSITION-`.
    #[arg(long)]
    vod_url: Option<String>,
    /// When the VOD viewers start, in seconds after the last live reader started (default:
    /// right after them). The server's CPU and RSS are then reported for the window before
    /// (live readers only) and after (live readers and VOD viewers).
    #[arg(long)]
    vod_at: Option<f64>,
    /// Seed of the VOD viewers' positions (the same seed, the same positions).
    #[arg(long, default_value_t = 1)]
    vod_seed: u64,
    /// Positions are drawn from 0 to this many seconds into the URL's media: leave the run
    /// room to play before the end.
    #[arg(long, default_value_t = 30.0)]
    vod_max_start: f64,
    /// PID of the server, to sample its CPU and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON summary here (it is always printed last on stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// A reader is keeping up while its newest frame is at most this far behind the newest frame
/// sent (a GOP cache start and socket buffers fit well inside).
const KEEP_UP_LAG_MS: i64 = 3000;

/// Server samples taken within this long after the last reader or viewer of a group started
/// are left out of the CPU windows around --vod-at: connecting and the first GOP are the cost
/// of joining, not of playing.
const SETTLE_S: f64 = 2.0;

/// The windows --burst-at compares, seconds.
const BURST_WINDOW_S: f64 = 5.0;

/// What every reader reports.
#[derive(Default)]
struct ReaderState {
    /// The first reader to play: the first a server writes to in its passes, so its latency
    /// is the publisher's ingest-to-first-write (recorded apart from the probes').
    first_written: bool,
    bytes: AtomicU64,
    /// Newest video timestamp received, ms; -1 before the first.
    newest_ms: AtomicI64,
    /// The newest frame sent when this reader connected.
    joined_at_ms: AtomicI64,
    /// Last video timestamp, for loss counting (RTMP and HTTP-FLV: decode order).
    last_ms: AtomicI64,
    /// Video frames missing between received ones (timestamp gaps).
    lost: AtomicU64,
    connected: std::sync::atomic::AtomicBool,
    /// A batched reader's sleep before each read (`Args::read_every_ms`); None reads eagerly.
    read_every: Option<Duration>,
    /// Reads from the socket, and when the reader started (ms after `Shared::start`): how
    /// often each shape of reader reads.
    reads: AtomicU64,
    spawned_ms: AtomicU64,
}

/// A batched reader's read buffer: it takes what its sleep let pile up in one read.
const BATCH_READ_BYTES: usize = 256 * 1024;

/// What the publisher sent: video timestamp -> send instant (a bounded window), by decode
/// time (RTMP, FLV) and by presentation time (RTP carries that).
#[derive(Default)]
struct Sent {
    times: Mutex<HashMap<u32, Instant>>,
    pts_times: Mutex<HashMap<u32, Instant>>,
    newest_ms: AtomicI64,
    /// Presentation time of the newest keyframe (where a GOP-cache reader starts).
    last_keyframe_ms: AtomicI64,
    /// Typical video frame interval of the file, ms (loss counting).
    frame_ms: AtomicI64,
    /// The step between the file's last video frame and the next loop's first: a gap there
    /// is the loop, not a loss.
    loop_gap_ms: AtomicI64,
    /// How far behind its schedule a publisher's write finished, at worst (every publisher):
    /// a server that cannot take the media in real time pushes back here.
    max_lag_ms: AtomicI64,
}

struct Shared {
    sent: Sent,
    /// The stream is published over RTSP: the server derives decode times from RTP's
    /// presentation times, so RTMP and HTTP-FLV readers match frames by presentation time.
    by_pts: bool,
    /// See `Args::udp_gro`.
    udp_gro: bool,
    latencies: Mutex<Vec<f64>>,
    /// (seconds since start, ms) of the probes' samples and of the first reader's.
    timed_latencies: Mutex<Vec<(f64, f64)>>,
    first_write_latencies: Mutex<Vec<(f64, f64)>>,
    first_frames: Mutex<Vec<(f64, bool)>>,
    start: Instant,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `ferrocast-bench camera ...`: serve RTSP cameras instead (see camera.rs).
    if std::env::args().nth(1).as_deref() == Some("camera") {
        let args = std::env::args().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| a);
        return camera::run(camera::CameraArgs::parse_from(args)).await;
    }
    let args = Args::parse();
    let (app, stream) = split_url(&args.rtmp)?;
    let vod_url = match (args.vod_readers, &args.vod_url) {
        (0, _) => None,
        (_, Some(url)) if url.starts_with("rtsp://") => Some(url.clone()),
        _ => anyhow::bail!("--vod-readers needs --vod-url rtsp://..."),
    };
    let shared = Arc::new(Shared {
        sent: Sent::default(),
        by_pts: args.publish_protocol == PublishProtocol::Rtsp,
        udp_gro: args.udp_gro,
        latencies: Mutex::default(),
        timed_latencies: Mutex::default(),
        first_write_latencies: Mutex::default(),
        first_frames: Mutex::default(),
        start: Instant::now(),
    });
    shared.sent.newest_ms.store(-1, Ordering::Relaxed);
    if !args.no_publish {
        let file = args.file.clone().context("--file is needed to publish")?;
        let data = Bytes::from(std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
        let tags = Arc::new(if data.starts_with(b"FLV") {
            ferrocast_media::flv::read_file(&data)?
        } else {
            publisher::tags_from_mp4(&data).with_context(|| format!("reading {}", file.display()))?
        });
        shared.sent.frame_ms.store(frame_interval(&tags), Ordering::Relaxed);
        shared.sent.loop_gap_ms.store(loop_gap(&tags), Ordering::Relaxed);
        for i in 0..args.publishers {
            let name = stream_name(&stream, i, args.publishers);
            let (url, app2, tags, shared2) = (args.rtmp.clone(), app.clone(), tags.clone(), shared.clone());
            let (how, rtsp) = (args.publish_protocol, args.rtsp.clone());
            tokio::spawn(async move {
                let r = match how {
                    PublishProtocol::Rtmp => publish(&url, &app2, &name, &tags, shared2, i == 0).await,
                    PublishProtocol::Rtsp => {
                        let url = format!("{}/{app2}/{name}", rtsp.trim_end_matches('/'));
                        publisher::publish_rtsp(&url, &tags, shared2, i == 0).await
                    }
                };
                if let Err(e) = r {
                    eprintln!("publisher {i}: {e:#}");
                }
            });
        }
        // Let the server see the sequence headers before readers arrive.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // The server's memory with the stream live and no reader yet: the base for per-reader RSS.
    let rss_before_readers = args.server_pid.and_then(|p| ServerSampler::new(p).sample()).map(|(_, rss)| rss);
    let mut readers = Vec::with_capacity(args.readers + args.burst);
    for i in 0..args.readers {
        readers.push(spawn_reader(&args, i, &app, &stream, &shared));
        if args.ramp > 0 {
            tokio::time::sleep(Duration::from_secs(1) / args.ramp).await;
        }
    }
    let readers_started = Instant::now();
    let burst_at = args.burst_at.map(|s| shared.start.elapsed().as_secs_f64() + s as f64);
    // VOD viewers, started by their own task at --vod-at: when the first and the last began.
    let viewers: Vec<Arc<Viewer>> = vod_reader::positions(args.vod_seed, args.vod_readers, args.vod_max_start)
        .into_iter()
        .map(Viewer::new)
        .collect();
    let vod_at = readers_started + Duration::from_secs_f64(args.vod_at.unwrap_or(0.0).max(0.0));
    let vod_started: Arc<Mutex<(Option<Instant>, Option<Instant>)>> = Arc::default();
    if let Some(url) = vod_url.clone() {
        let (viewers, started, ramp) = (viewers.clone(), vod_started.clone(), args.ramp);
        tokio::spawn(async move {
            tokio::time::sleep_until(vod_at.into()).await;
            started.lock().unwrap().0 = Some(Instant::now());
            for (i, v) in viewers.into_iter().enumerate() {
                let url = url.clone();
                tokio::spawn(async move {
                    if let Err(e) = vod_reader::play(&url, v).await {
                        eprintln!("vod viewer {i}: {e:#}");
                    }
                });
                if ramp > 0 {
                    tokio::time::sleep(Duration::from_secs(1) / ramp).await;
                }
            }
            started.lock().unwrap().1 = Some(Instant::now());
        });
    }
    let mut sampler = args.server_pid.map(ServerSampler::new);
    let mut throughput = Vec::new();
    let mut last_bytes = 0u64;
    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut burst_pending = burst_at.filter(|_| args.burst > 0);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if burst_pending.is_some_and(|at| shared.start.elapsed().as_secs_f64() >= at) {
            burst_pending = None;
            for i in args.readers..args.readers + args.burst {
                readers.push(spawn_reader(&args, i, &app, &stream, &shared));
            }
        }
        let bytes: u64 = readers.iter().map(|r| r.bytes.load(Ordering::Relaxed)).sum::<u64>()
            + viewers.iter().map(|v| v.bytes()).sum::<u64>();
        let mbps = (bytes - last_bytes) as f64 * 8.0 / 1e6;
        last_bytes = bytes;
        throughput.push(mbps);
        let (connected, keeping) = keeping_up(&readers, &shared);
        let lat = Percentiles::of(&shared.latencies.lock().unwrap());
        let server = sampler.as_mut().and_then(|s| s.sample());
        if !args.quiet {
            let now = Instant::now();
            let vod = if viewers.is_empty() {
                String::new()
            } else {
                let r = viewers.iter().filter(|v| v.receiving(now)).count();
                format!(" vod receiving {r}/{}", viewers.len())
            };
            eprintln!(
                "t={:>3}s readers {connected}/{} keeping up {keeping}{vod} {mbps:8.1} Mbit/s latency p50 {:.1} ms p99 {:.1} ms{}",
                shared.start.elapsed().as_secs(),
                args.readers,
                lat.p50,
                lat.p99,
                server.map(|(cpu, rss)| format!(" server cpu {cpu:.0}% rss {} MiB", rss / 1024)).unwrap_or_default()
            );
        }
    }
    // Ingest: is every publisher's stream muxed to HLS?
    let mut hls_muxed = None;
    if args.publishers > 1 && !args.no_publish {
        let mut n = 0;
        for i in 0..args.publishers {
            let url = format!("{}/{app}/{}/index.m3u8", args.http, stream_name(&stream, i, args.publishers));
            if hls_reader::segments(&url).await.is_some_and(|s| s > 0) {
                n += 1;
            }
        }
        hls_muxed = Some(n);
    }
    let (connected, keeping) = keeping_up(&readers, &shared);
    let lost: u64 = readers.iter().map(|r| r.lost.load(Ordering::Relaxed)).sum();
    let lat = Percentiles::of(&shared.latencies.lock().unwrap());
    let ff = shared.first_frames.lock().unwrap().clone();
    let ttff = Percentiles::of(&ff.iter().map(|f| f.0).collect::<Vec<_>>());
    let vod = vod_url.map(|url| {
        let (first, last) = *vod_started.lock().unwrap();
        vod_summary(&url, &args, &viewers, sampler.as_ref(), &shared, readers_started, first, last)
    });
    let summary = serde_json::json!({
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "publishers": if args.no_publish { 0 } else { args.publishers },
        "readers": args.readers,
        "frames_lost": lost,
        "publisher_max_lag_ms": shared.sent.max_lag_ms.load(Ordering::Relaxed),
        "streams_with_hls_segments": hls_muxed,
        "rss_before_readers_kib": rss_before_readers,
        "connected": connected,
        "keeping_up": keeping,
        "throughput_mbps_median": stats::median(&throughput),
        "latency_ms": { "p50": lat.p50, "p99": lat.p99, "max": lat.max, "samples": lat.n },
        "time_to_first_frame_ms": { "p50": ttff.p50, "p99": ttff.p99, "max": ttff.max },
        "read_every_ms": args.read_every_ms,
        "reads_per_s": {
            "eager": reads_per_s(&readers, &shared, false),
            "batched": reads_per_s(&readers, &shared, true),
        },
        "first_frame_keyframe": ff.iter().filter(|f| f.1).count(),
        "first_write_latency_ms": window(&shared.first_write_latencies, 0.0, f64::MAX),
        "burst": burst_at.map(|at| serde_json::json!({
            "readers": args.burst,
            "at_s": at,
            "window_s": BURST_WINDOW_S,
            "probe_latency_ms_before": window(&shared.timed_latencies, at - BURST_WINDOW_S, at),
            "probe_latency_ms_during": window(&shared.timed_latencies, at, at + BURST_WINDOW_S),
            "first_write_latency_ms_before": window(&shared.first_write_latencies, at - BURST_WINDOW_S, at),
            "first_write_latency_ms_during": window(&shared.first_write_latencies, at, at + BURST_WINDOW_S),
        })),
        "vod": vod,
        "server": sampler.map(|s| s.summary()),
    });
    let text = serde_json::to_string_pretty(&summary)?;
    if let Some(p) = &args.json {
        std::fs::write(p, &text)?;
    }
    println!("{text}");
    Ok(())
}

/// The VOD viewers' figures, and the server's CPU and RSS in the window before they started
/// (live readers only, when --vod-at put them later) and after they all had (live and VOD):
/// RSS per VOD viewer is the peak after less the last before, over the viewers. The live
/// probes' latency is given for the same two windows.
#[allow(clippy::too_many_arguments)]
fn vod_summary(
    url: &str,
    args: &Args,
    viewers: &[Arc<Viewer>],
    sampler: Option<&ServerSampler>,
    shared: &Shared,
    readers_started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
) -> serde_json::Value {
    let now = Instant::now();
    let settle = Duration::from_secs_f64(SETTLE_S);
    let mut v = vod_reader::summary(viewers, now);
    v["url"] = url.into();
    v["seed"] = args.vod_seed.into();
    v["at_s"] = args.vod_at.into();
    let before =
        sampler.zip(first).filter(|_| args.vod_at.is_some()).and_then(|(s, f)| s.window(readers_started + settle, f));
    let after = sampler.zip(last).and_then(|(s, l)| s.window(l + settle, now));
    v["server_live_only"] = before.map(|w| w.json()).into();
    v["server_live_and_vod"] = after.map(|w| w.json()).into();
    v["rss_per_vod_viewer_kib"] = before
        .zip(after)
        .filter(|_| !viewers.is_empty())
        .map(|(b, a)| (a.rss_max_kib as f64 - b.rss_last_kib as f64) / viewers.len() as f64)
        .into();
    let at = |t: Instant| t.saturating_duration_since(shared.start).as_secs_f64();
    v["live_latency_ms_live_only"] = first
        .filter(|_| args.vod_at.is_some())
        .map(|f| window(&shared.timed_latencies, at(readers_started + settle), at(f)))
        .into();
    v["live_latency_ms_with_vod"] = last.map(|l| window(&shared.timed_latencies, at(l + settle), at(now))).into();
    v["cpu_added_by_vod_percent"] = before.zip(after).map(|(b, a)| a.cpu_percent_median - b.cpu_percent_median).into();
    v
}

/// Starts reader `i`.
fn spawn_reader(args: &Args, i: usize, app: &str, stream: &str, shared: &Arc<Shared>) -> Arc<ReaderState> {
    let probe = is_probe(i, args.throttle_readers, args.readers);
    let read_every = (args.read_every_ms > 0 && !probe && i != 0).then(|| Duration::from_millis(args.read_every_ms));
    let state = Arc::new(ReaderState { first_written: i == 0, read_every, ..ReaderState::default() });
    state.newest_ms.store(-1, Ordering::Relaxed);
    state.last_ms.store(-1, Ordering::Relaxed);
    state.spawned_ms.store(shared.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    state.joined_at_ms.store(shared.sent.newest_ms.load(Ordering::Relaxed), Ordering::Relaxed);
    let shared = shared.clone();
    let limit = (i < args.throttle_readers).then_some(args.throttle_kbps * 1000 / 8);
    let (protocol, rtmp, http, rtsp, app) =
        (args.protocol, args.rtmp.clone(), args.http.clone(), args.rtsp.clone(), app.to_owned());
    let stream = stream_name(stream, i % args.publishers.max(1), args.publishers);
    let reader = state.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let r = match protocol {
            Protocol::Rtmp => play_rtmp(&rtmp, &app, &stream, &state, &shared, probe, limit, started).await,
            Protocol::Flv => {
                flv_reader::play(&format!("{http}/{app}/{stream}.flv"), &state, &shared, probe, limit, started).await
            }
            Protocol::RtspTcp | Protocol::RtspUdp => {
                let url = format!("{rtsp}/{app}/{stream}");
                let udp = protocol == Protocol::RtspUdp;
                rtsp_reader::play(&url, udp, &state, &shared, probe, limit, started).await
            }
            Protocol::Hls => {
                hls_reader::play(&format!("{http}/{app}/{stream}/index.m3u8"), &state, &shared, started).await
            }
        };
        state.connected.store(false, Ordering::Relaxed);
        if let Err(e) = r {
            eprintln!("reader {i}: {e:#}");
        }
    });
    reader
}

/// Percentiles of the timed samples from `from` to `to` seconds.
fn window(samples: &Mutex<Vec<(f64, f64)>>, from: f64, to: f64) -> serde_json::Value {
    let v: Vec<f64> = samples.lock().unwrap().iter().filter(|(t, _)| (from..to).contains(t)).map(|s| s.1).collect();
    let p = Percentiles::of(&v);
    serde_json::json!({ "p50": p.p50, "p99": p.p99, "max": p.max, "samples": p.n })
}

/// The mean number of socket reads a second of the eager or the batched readers, each over
/// the time since it started (None without such readers, or for RTSP over UDP and HLS, which
/// do not count reads).
fn reads_per_s(readers: &[Arc<ReaderState>], shared: &Shared, batched: bool) -> Option<f64> {
    let now_ms = shared.start.elapsed().as_millis() as f64;
    let rates: Vec<f64> = readers
        .iter()
        .filter(|r| r.read_every.is_some() == batched && r.reads.load(Ordering::Relaxed) > 0)
        .map(|r| {
            r.reads.load(Ordering::Relaxed) as f64 * 1000.0
                / (now_ms - r.spawned_ms.load(Ordering::Relaxed) as f64).max(1.0)
        })
        .collect();
    (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
}

fn keeping_up(readers: &[Arc<ReaderState>], shared: &Shared) -> (usize, usize) {
    let newest = shared.sent.newest_ms.load(Ordering::Relaxed);
    let connected = readers.iter().filter(|r| r.connected.load(Ordering::Relaxed)).count();
    let keeping = readers
        .iter()
        .filter(|r| r.connected.load(Ordering::Relaxed))
        .filter(|r| {
            let n = r.newest_ms.load(Ordering::Relaxed);
            n >= 0 && (newest < 0 || newest - n <= KEEP_UP_LAG_MS)
        })
        .count();
    (connected, keeping)
}

/// The stream publisher `i` of `n` uses.
/// Four readers that are not throttled are probes, spread over the ramp (the last of each
/// quarter): a server that writes to its readers in turn serves the first ones first, and
/// probes among the first only would see the best case.
fn is_probe(i: usize, throttled: usize, readers: usize) -> bool {
    let Some(k) = i.checked_sub(throttled) else { return false };
    let n = readers.saturating_sub(throttled);
    if n <= 4 {
        return true;
    }
    (1..=4).any(|q| k == q * n / 4 - 1)
}

fn stream_name(stream: &str, i: usize, n: usize) -> String {
    if n > 1 { format!("{stream}-{i}") } else { stream.to_owned() }
}

/// The step from the file's last video frame to the first of the next loop, ms (see
/// `publish`: each loop is offset by the largest timestamp + 40).
fn loop_gap(tags: &[ferrocast_media::flv::FileTag]) -> i64 {
    let span = i64::from(tags.iter().map(|t| t.timestamp).max().unwrap_or(0)) + 40;
    let mut video = tags.iter().filter(|t| t.tag_type == 9).map(|t| i64::from(t.timestamp));
    let first = video.next().unwrap_or(0);
    let last = video.last().unwrap_or(first);
    span + first - last
}

/// The median interval between video frames of the file, ms.
fn frame_interval(tags: &[ferrocast_media::flv::FileTag]) -> i64 {
    let ts: Vec<u32> = tags.iter().filter(|t| t.tag_type == 9).map(|t| t.timestamp).collect();
    let mut d: Vec<i64> = ts.windows(2).map(|w| i64::from(w[1]) - i64::from(w[0])).filter(|d| *d > 0).collect();
    d.sort_unstable();
    d.get(d.len() / 2).copied().unwrap_or(33)
}

/// `rtmp://host:port/app/stream` -> (app, stream).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("rtmp://").context("the publish URL must start with rtmp://")?;
    let path = rest.split_once('/').map(|(_, p)| p).context("no path in the URL")?;
    let (app, stream) = path.split_once('/').context("the URL path must be APP/STREAM")?;
    Ok((app.to_owned(), stream.to_owned()))
}

fn host_of(url: &str) -> anyhow::Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().context("no host")?;
    Ok(if host.contains(':') { host.to_owned() } else { format!("{host}:1935") })
}

/// Publishes the tags in real time, looping with increasing timestamps; records the send
/// instant of each video frame by its timestamp.
async fn publish(
    url: &str,
    app: &str,
    stream: &str,
    tags: &[ferrocast_media::flv::FileTag],
    shared: Arc<Shared>,
    record: bool,
) -> anyhow::Result<()> {
    let mut socket = TcpStream::connect(host_of(url)?).await?;
    socket.set_nodelay(true)?;
    let tc_url = format!("rtmp://{}/{app}", host_of(url)?);
    let mut session =
        ClientSession::new(ClientConfig::new(&tc_url, app, ClientMode::Publish(stream.to_owned())), Instant::now());
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(b) = session.poll_transmit() {
            socket.write_all(&b).await?;
        }
        if let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Publishing => break,
                ClientEvent::Status { level, code } if level == "error" => anyhow::bail!("publish refused: {code}"),
                _ => continue,
            }
        }
        let n = socket.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "server closed during publish setup");
        session.handle_input(Instant::now(), &buf[..n])?;
    }
    let (mut wr, span, start) = start_sending(socket, tags);
    for l in 0u32.. {
        for t in tags {
            let ts = t.timestamp + l * span;
            let kind = match t.tag_type {
                8 => MediaKind::Audio,
                9 => MediaKind::Video,
                18 if l == 0 => MediaKind::Data,
                _ => continue,
            };
            tokio::time::sleep_until(start + Duration::from_millis(u64::from(ts))).await;
            session.send_media(kind, ts, &t.body);
            while let Some(b) = session.poll_transmit() {
                wr.write_all(&b).await?;
            }
            note_sent(&shared, start, t, ts, record);
        }
    }
    Ok(())
}

/// After a publisher's set-up: the socket's write half (what the server sends, acks and
/// pings, is drained by a task so its buffers never fill), the time one loop of the file
/// spans, and the start of the sending schedule.
fn start_sending(
    socket: TcpStream,
    tags: &[ferrocast_media::flv::FileTag],
) -> (tokio::net::tcp::OwnedWriteHalf, u32, tokio::time::Instant) {
    let span = tags.iter().map(|t| t.timestamp).max().unwrap_or(0) + 40;
    let (mut rd, wr) = socket.into_split();
    tokio::spawn(async move {
        let mut b = vec![0u8; 16384];
        while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
    });
    (wr, span, tokio::time::Instant::now())
}

/// Notes a tag just sent: how late it left, and for the recorded publisher, when each video
/// frame left (by decode and presentation time) for the readers' latency.
fn note_sent(shared: &Shared, start: tokio::time::Instant, t: &ferrocast_media::flv::FileTag, ts: u32, record: bool) {
    let due = start + Duration::from_millis(u64::from(ts));
    let lag = tokio::time::Instant::now().saturating_duration_since(due).as_millis() as i64;
    shared.sent.max_lag_ms.fetch_max(lag, Ordering::Relaxed);
    if record
        && t.tag_type == 9
        && let Ok(ferrocast_media::flv::VideoTag::Frame { keyframe, cts, .. }) =
            ferrocast_media::flv::parse_video(&t.body)
    {
        let now = Instant::now();
        let pts = ts.wrapping_add_signed(cts);
        for (map, key) in [(&shared.sent.times, ts), (&shared.sent.pts_times, pts)] {
            let mut times = map.lock().unwrap();
            times.insert(key, now);
            if times.len() > 4096 {
                let cutoff = ts.saturating_sub(30_000);
                times.retain(|k, _| *k >= cutoff);
            }
        }
        if keyframe {
            shared.sent.last_keyframe_ms.store(i64::from(pts), Ordering::Relaxed);
        }
        shared.sent.newest_ms.store(i64::from(ts), Ordering::Relaxed);
    }
}

/// Whether a reader's video timestamps are decode times (RTMP, FLV) or presentation times
/// (RTP).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    Decode,
    Presentation,
}

/// The timestamp and clock an FLV-carried video frame is matched by. Over RTSP ingest the
/// server makes its own timeline from RTP times (see [`Shared::by_pts`]): presentation times,
/// mapped to the publisher's through the reader's first frame, the keyframe it starts on (as
/// the RTSP readers do). `base` is the reader's (first pts, publisher ms).
fn flv_clock(shared: &Shared, base: &mut Option<(u32, i64)>, dts: u32, cts: i32) -> (u32, Clock) {
    if !shared.by_pts {
        return (dts, Clock::Decode);
    }
    let pts = dts.wrapping_add_signed(cts);
    let (p0, ms0) = *base.get_or_insert_with(|| (pts, shared.sent.last_keyframe_ms.load(Ordering::Relaxed)));
    ((ms0 + i64::from(pts.wrapping_sub(p0) as i32)).max(0) as u32, Clock::Presentation)
}

/// Notes a received video frame: newest timestamp, first frame, and latency for probes.
#[allow(clippy::too_many_arguments)]
fn on_video(
    state: &ReaderState,
    shared: &Shared,
    probe: bool,
    started: Instant,
    ts: u32,
    keyframe: bool,
    first: &mut bool,
    clock: Clock,
) {
    // Decode times rise one frame at a time; a larger step is frames that never came.
    if clock == Clock::Decode && shared.sent.frame_ms.load(Ordering::Relaxed) > 0 {
        let last = state.last_ms.swap(i64::from(ts), Ordering::Relaxed);
        let frame = shared.sent.frame_ms.load(Ordering::Relaxed).max(1);
        let gap = i64::from(ts) - last;
        let loop_gap = shared.sent.loop_gap_ms.load(Ordering::Relaxed);
        if last >= 0 && !*first && gap > frame * 3 / 2 && (gap - loop_gap).abs() > 2 {
            state.lost.fetch_add(((gap + frame / 2) / frame - 1) as u64, Ordering::Relaxed);
        }
    }
    let now = Instant::now();
    if *first {
        *first = false;
        shared.first_frames.lock().unwrap().push((now.duration_since(started).as_secs_f64() * 1000.0, keyframe));
    }
    state.newest_ms.fetch_max(i64::from(ts), Ordering::Relaxed);
    // Frames sent before the reader connected (the GOP cache it starts with) are not latency
    // samples: their age is the cache's, not the server's delay.
    let times = if clock == Clock::Decode { &shared.sent.times } else { &shared.sent.pts_times };
    if (probe || state.first_written)
        && i64::from(ts) > state.joined_at_ms.load(Ordering::Relaxed)
        && let Some(sent) = times.lock().unwrap().get(&ts)
    {
        let ms = now.duration_since(*sent).as_secs_f64() * 1000.0;
        let at = now.duration_since(shared.start).as_secs_f64();
        if probe {
            shared.latencies.lock().unwrap().push(ms);
            shared.timed_latencies.lock().unwrap().push((at, ms));
        }
        if state.first_written {
            shared.first_write_latencies.lock().unwrap().push((at, ms));
        }
    }
}

/// Before each read: a batched reader sleeps (see `Args::read_every_ms`), and one with a
/// `limit` reads at most that many bytes per second.
async fn throttle(state: &ReaderState, limit: Option<u64>, total: u64, started: Instant) {
    state.reads.fetch_add(1, Ordering::Relaxed);
    // A player sets up and takes its first frame as fast as it can; it buffers after that.
    if let Some(every) = state.read_every.filter(|_| state.newest_ms.load(Ordering::Relaxed) >= 0) {
        tokio::time::sleep(every).await;
    }
    rate_limit(limit, total, started).await;
}

/// Reads at most `limit` bytes per second when given.
async fn rate_limit(limit: Option<u64>, total: u64, started: Instant) {
    if let Some(rate) = limit {
        let due = Duration::from_secs_f64(total as f64 / rate.max(1) as f64);
        let elapsed = started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// A reader's read buffer: small for a throttled one, large for a batched one.
fn read_buffer(state: &ReaderState, limit: Option<u64>) -> usize {
    match (limit, state.read_every) {
        (Some(_), _) => 4096,
        (None, Some(_)) => BATCH_READ_BYTES,
        (None, None) => 65536,
    }
}

#[allow(clippy::too_many_arguments)]
async fn play_rtmp(
    url: &str,
    app: &str,
    stream: &str,
    state: &ReaderState,
    shared: &Shared,
    probe: bool,
    limit: Option<u64>,
    started: Instant,
) -> anyhow::Result<()> {
    let host = host_of(url)?;
    let mut socket = TcpStream::connect(&host).await?;
    // As players do: the client's own small writes (handshake, commands) leave at once, so
    // time to first frame is the server's, not Nagle's.
    let _ = socket.set_nodelay(true);
    let tc_url = format!("rtmp://{host}/{app}");
    let mut session =
        ClientSession::new(ClientConfig::new(&tc_url, app, ClientMode::Play(stream.to_owned())), Instant::now());
    state.connected.store(true, Ordering::Relaxed);
    let mut buf = vec![0u8; read_buffer(state, limit)];
    let mut total = 0u64;
    let mut first = true;
    let mut base = None;
    loop {
        while let Some(b) = session.poll_transmit() {
            socket.write_all(&b).await?;
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Media(m) if m.kind == MediaKind::Video => {
                    if let Ok(ferrocast_media::flv::VideoTag::Frame { keyframe, cts, .. }) =
                        ferrocast_media::flv::parse_video(&m.payload)
                    {
                        let (ts, clock) = flv_clock(shared, &mut base, m.timestamp, cts);
                        on_video(state, shared, probe, started, ts, keyframe, &mut first, clock);
                    }
                }
                ClientEvent::Status { level, code } if level == "error" => anyhow::bail!("play refused: {code}"),
                _ => {}
            }
        }
        throttle(state, limit, total, started).await;
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            anyhow::bail!("server closed the connection");
        }
        total += n as u64;
        state.bytes.fetch_add(n as u64, Ordering::Relaxed);
        session.handle_input(Instant::now(), &buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::is_probe;

    #[test]
    fn probes_are_spread_over_the_readers() {
        let probes: Vec<usize> = (0..100).filter(|&i| is_probe(i, 0, 100)).collect();
        assert_eq!(probes, [24, 49, 74, 99]);
        let probes: Vec<usize> = (0..6).filter(|&i| is_probe(i, 1, 6)).collect();
        assert_eq!(probes, [1, 2, 3, 5], "never the throttled reader");
        assert_eq!((0..3).filter(|&i| is_probe(i, 0, 3)).count(), 3);
    }
}
