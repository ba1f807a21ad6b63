//! Camera mode (`ferrocast-bench camera`): one process serving N RTSP "cameras" at
//! `rtsp://HOST:PORT/cN`, each a looping H.264 (+AAC) stream of the bench's input file, paced
//! in real time, for a server that pulls them (the issue-17 benchmark).
//!
//! Cheap on one core: the file is packetized once at start (RTP packets of every frame of one
//! loop, in one buffer per frame). Each camera is a task on the file's schedule (camera `i`
//! starts `i / N` of the way into the file, so keyframes do not all leave at once) handing
//! frame numbers to the sessions playing it; a session copies each packet and rewrites its
//! header: its own sequence numbers, random SSRC and random starting timestamps per track (RFC
//! 3550 5.1), as cameras do. A session starts at the camera's next keyframe. RTP goes
//! interleaved in the RTSP connection (RFC 2326 10.12) or over UDP unicast to the client's
//! ports from one pair of server ports shared by all sessions. The RTSP side is the project's
//! sans-IO server session (OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, GET_PARAMETER, TEARDOWN,
//! session timeout); RTCP sender reports every 5 s.
//!
//! Per camera it counts the frames, packets and bytes it sent, and prints them with totals as
//! JSON when it ends (after --duration, or on SIGINT/SIGTERM): sending stops first, so the
//! counts are final and a server's counts can be compared with them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use ferrocast_media::{TrackKind, flv};
use ferrocast_rtsp::codec::{self, Packetizer};
use ferrocast_rtsp::rtcp;
use ferrocast_rtsp::sdp;
use ferrocast_rtsp::server::{RtpStart, Secrets, ServerConfig, ServerEvent, ServerSession};
use ferrocast_rtsp::transport::Lower;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::publisher::{frame_of, tracks_of};

/// Command line of the camera mode.
#[derive(Debug, Parser)]
#[command(name = "ferrocast-bench camera", about = "Serve N looping RTSP cameras at rtsp://LISTEN/cN")]
pub struct CameraArgs {
    /// Number of cameras: paths c0 .. c(N-1).
    #[arg(long, default_value_t = 200)]
    pub cameras: usize,
    /// RTSP address to listen on (port 0: any free port; the first line on stdout says which).
    #[arg(long, default_value = "127.0.0.1:8554")]
    pub listen: SocketAddr,
    /// FLV or MP4 file (H.264/H.265 and AAC) every camera loops.
    #[arg(long)]
    pub file: PathBuf,
    /// Seconds to run; 0: until SIGINT or SIGTERM.
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// Largest RTP payload.
    #[arg(long, default_value_t = codec::DEFAULT_MTU)]
    pub mtu: usize,
    /// Write the JSON summary here too (it is always printed last on stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A session that is this many frames behind its camera (a client that does not read) loses
/// the newest ones, counted as `dropped_frames`: a camera does not buffer without end either.
const SESSION_QUEUE_FRAMES: usize = 512;

/// A frame due longer ago than this is skipped, not sent late: a camera whose process was
/// held up (its core busy) drops what it missed, as a camera does, rather than sending seconds
/// of media in one burst that no real camera sends (and that a receiver's socket buffer may
/// not hold). Skipped frames are counted apart and are not in `frames`.
const MAX_LATE_MS: u64 = 250;

/// Interval of RTCP sender reports (RFC 3550 6.2 suggests 5 s as the minimum).
const RTCP_INTERVAL: Duration = Duration::from_secs(5);

/// Session timeout announced in SETUP answers; a client keeps alive with GET_PARAMETER,
/// OPTIONS or RTCP.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// A client that takes nothing for this long (its TCP window shut) is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes all of `data` within [`WRITE_TIMEOUT`].
async fn write(wr: &mut tokio::net::tcp::OwnedWriteHalf, data: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(data)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client took nothing for 10 s")),
    }
}

/// Largest RTSP read; requests are capped by the session's own message limits.
const READ_BUF: usize = 16 * 1024;

/// One frame of the file, packetized once.
#[derive(Debug)]
pub struct PacketizedFrame {
    /// The SDP track (`trackID=N`).
    pub track: usize,
    /// When it is sent, ms into one loop (the file's decode time).
    pub due_ms: u32,
    /// Its presentation time, ms into one loop.
    pub pts_ms: i64,
    /// A video frame.
    pub video: bool,
    /// A video keyframe.
    pub keyframe: bool,
    /// Its RTP packets as `[u16 length][packet]` records ([`codec::packets`]); the header's
    /// sequence number, timestamp and SSRC are rewritten per session.
    pub packets: Bytes,
    /// How many packets.
    pub count: u32,
    /// Their bytes, RTP headers included.
    pub bytes: u32,
}

/// The file as every camera sends it.
#[derive(Debug)]
pub struct CameraMedia {
    /// The SDP of DESCRIBE (`a=control:trackID=N`, sprop-parameter-sets).
    pub sdp: String,
    /// RTP clock rate of each SDP track (index: `trackID`).
    pub clock_rates: Vec<u32>,
    /// The frames of one loop, in sending order.
    pub frames: Vec<PacketizedFrame>,
    /// What one loop spans, ms (the largest timestamp + 40, as the bench publisher loops).
    pub span_ms: u32,
}

impl CameraMedia {
    /// Packetizes the tags of a file once.
    pub fn new(tags: &[flv::FileTag], mtu: usize) -> anyhow::Result<CameraMedia> {
        let tracks = tracks_of(tags)?;
        let (sdp, described) = sdp::describe(&tracks, "127.0.0.1", "0.0.0.0");
        anyhow::ensure!(!described.is_empty(), "the file has no track RTSP can carry");
        let mut clock_rates = vec![0; described.iter().map(|(id, _)| usize::from(*id) + 1).max().unwrap_or(0)];
        let mut packetizers: Vec<(usize, TrackKind, Packetizer)> = Vec::new();
        for (id, track) in &described {
            let p =
                Packetizer::new(track, sdp::payload_type(track), 0, 0, 0, mtu).context("no packetizer for a track")?;
            clock_rates[usize::from(*id)] = p.clock_rate;
            packetizers.push((usize::from(*id), track.kind(), p));
        }
        let mut frames = Vec::new();
        for t in tags {
            let Some(frame) = frame_of(t, t.timestamp) else { continue };
            let Some((id, _, p)) = packetizers.iter_mut().find(|(_, k, _)| *k == frame.kind) else { continue };
            let packets = p.packetize(&frame);
            let count = codec::packets(&packets).count() as u32;
            let bytes = codec::packets(&packets).map(|p| p.len() as u32).sum();
            if count == 0 {
                continue;
            }
            frames.push(PacketizedFrame {
                track: *id,
                due_ms: t.timestamp,
                pts_ms: frame.pts,
                video: frame.kind == TrackKind::Video,
                keyframe: frame.kind == TrackKind::Video && frame.keyframe,
                packets,
                count,
                bytes,
            });
        }
        anyhow::ensure!(frames.iter().any(|f| f.keyframe), "the file has no video keyframe");
        let span_ms = tags.iter().map(|t| t.timestamp).max().unwrap_or(0) + 40;
        Ok(CameraMedia { sdp, clock_rates, frames, span_ms })
    }

    /// The RTP time (before a session's random offset) of `ms` of the camera's timeline in
    /// track `track`'s clock.
    fn rtp_time(&self, track: usize, ms: i64) -> u32 {
        (i128::from(ms) * i128::from(self.clock_rates[track]) / 1000) as u32
    }
}

/// What a camera sent, over all its sessions.
#[derive(Debug, Default)]
pub struct CameraStats {
    /// Frames (video and audio) sent.
    pub frames: AtomicU64,
    /// Video frames sent.
    pub video_frames: AtomicU64,
    /// RTP packets sent.
    pub packets: AtomicU64,
    /// RTP bytes sent (headers included, interleaving not).
    pub bytes: AtomicU64,
    /// Sessions that played.
    pub sessions: AtomicU64,
    /// Frames a session was too far behind to take.
    pub dropped_frames: AtomicU64,
    /// How late a frame left, at worst, ms: a camera process that cannot keep up (its core
    /// busy) shows here, not as the server's loss.
    pub max_late_ms: AtomicU64,
    /// Frames over [`MAX_LATE_MS`] late, skipped (counted once whatever the sessions).
    pub skipped_frames: AtomicU64,
}

impl CameraStats {
    fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "frames": g(&self.frames),
            "video_frames": g(&self.video_frames),
            "audio_frames": g(&self.frames) - g(&self.video_frames),
            "packets": g(&self.packets),
            "bytes": g(&self.bytes),
            "sessions": g(&self.sessions),
            "dropped_frames": g(&self.dropped_frames),
            "max_late_ms": g(&self.max_late_ms),
            "skipped_frames": g(&self.skipped_frames),
        })
    }
}

/// RTCP from a client, for its session: (track, packet).
type RtcpIn = (usize, Bytes);

/// A frame for a session: its index in [`CameraMedia::frames`] and the loop it is in.
type FrameRef = (u32, u32);

/// One camera: its schedule and the sessions playing it.
struct Camera {
    /// The instant its timeline's 0 ms was (its first loop started this long ago).
    epoch: Instant,
    sinks: Mutex<Vec<(u64, mpsc::Sender<FrameRef>)>>,
    stats: CameraStats,
}

/// Everything the connections share.
struct Ctx {
    media: CameraMedia,
    cameras: Vec<Camera>,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// The RTSP address listened on.
    local: SocketAddr,
    server_ports: (u16, u16),
    /// RTCP from clients by their address: (session's channel, track).
    rtcp_routes: Mutex<HashMap<SocketAddr, (mpsc::Sender<RtcpIn>, usize)>>,
    /// Set when the run ends: nothing more is sent.
    stopping: AtomicBool,
    next_sink: AtomicU64,
}

/// A random number for SSRCs, sequence numbers, timestamps and session ids (a load generator:
/// unpredictable enough, not a CSPRNG).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), Instant::now()))
}

/// The camera index of a path `cN`.
fn camera_of(path: &str, cameras: usize) -> Option<usize> {
    let n = path.trim_matches('/').strip_prefix('c')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|&i| i < cameras)
}

/// Binds an even RTP port and the RTCP port after it (RFC 3550 11) on `ip`.
async fn bind_udp_pair(ip: IpAddr) -> anyhow::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..64 {
        let rtp = UdpSocket::bind((ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((ip, port + 1)).await {
            return Ok((rtp, rtcp));
        }
    }
    anyhow::bail!("no free pair of UDP ports on {ip}")
}

/// Runs the camera mode to its end and prints the summary.
pub async fn run(args: CameraArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.cameras > 0, "--cameras must be at least 1");
    let data = Bytes::from(std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?);
    let tags = if data.starts_with(b"FLV") {
        flv::read_file(&data)?
    } else {
        crate::publisher::tags_from_mp4(&data).with_context(|| format!("reading {}", args.file.display()))?
    };
    let media = CameraMedia::new(&tags, args.mtu)?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let (rtp, rtcp) = bind_udp_pair(local.ip()).await?;
    let server_ports = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
    let started = Instant::now();
    let cameras = (0..args.cameras)
        .map(|i| {
            // Spread over the loop: camera i is i/N of the way in.
            let phase = u64::from(media.span_ms) * i as u64 / args.cameras as u64;
            Camera {
                epoch: started - Duration::from_millis(phase),
                sinks: Mutex::default(),
                stats: CameraStats::default(),
            }
        })
        .collect();
    let ctx = Arc::new(Ctx {
        media,
        cameras,
        rtp,
        rtcp,
        local,
        server_ports,
        rtcp_routes: Mutex::default(),
        stopping: AtomicBool::new(false),
        next_sink: AtomicU64::new(0),
    });
    println!(
        "listening rtsp://{local}/c0 .. c{} (RTP/RTCP ports {}-{})",
        args.cameras - 1,
        server_ports.0,
        server_ports.1
    );
    for i in 0..args.cameras {
        tokio::spawn(run_camera(ctx.clone(), i));
    }
    tokio::spawn(drain_rtcp(ctx.clone()));
    tokio::spawn(drain_rtp(ctx.clone()));
    let accept = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, peer)) = listener.accept().await else { continue };
                let _ = socket.set_nodelay(true);
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    // A client that goes without TEARDOWN (a reset) is no news.
                    if let Err(e) = serve(socket, peer, ctx).await
                        && !e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                            matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
                        })
                    {
                        eprintln!("camera connection from {peer}: {e:#}");
                    }
                });
            }
        })
    };
    wait_for_end(args.duration).await?;
    ctx.stopping.store(true, Ordering::SeqCst);
    accept.abort();
    // Writes under way finish and are counted; nothing new starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = summary(&ctx, &args, started.elapsed());
    let text = serde_json::to_string_pretty(&summary)?;
    if let Some(p) = &args.json {
        std::fs::write(p, &text)?;
    }
    println!("{text}");
    Ok(())
}

/// Until --duration has passed (when not 0), or SIGINT or SIGTERM.
async fn wait_for_end(duration: u64) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let timer = async {
        if duration > 0 {
            tokio::time::sleep(Duration::from_secs(duration)).await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        _ = timer => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn summary(ctx: &Ctx, args: &CameraArgs, elapsed: Duration) -> serde_json::Value {
    let per: Vec<serde_json::Value> = ctx.cameras.iter().map(|c| c.stats.json()).collect();
    let total = |k: &str| per.iter().map(|c| c[k].as_u64().unwrap_or(0)).sum::<u64>();
    let keys =
        ["frames", "video_frames", "audio_frames", "packets", "bytes", "sessions", "dropped_frames", "skipped_frames"];
    let mut totals: serde_json::Map<String, serde_json::Value> =
        keys.iter().map(|k| ((*k).to_owned(), total(k).into())).collect();
    let late = per.iter().map(|c| c["max_late_ms"].as_u64().unwrap_or(0)).max().unwrap_or(0);
    totals.insert("max_late_ms".to_owned(), late.into());
    serde_json::json!({
        "mode": "camera",
        "cameras": args.cameras,
        "listen": ctx.local.to_string(),
        "file": args.file.display().to_string(),
        "seconds": elapsed.as_secs_f64(),
        // This process's CPU over the run, % of one core (utime + stime).
        "cpu_percent": own_cpu_ticks().map(|t| t as f64 / 100.0 / elapsed.as_secs_f64() * 100.0),
        "cameras_playing": ctx.cameras.iter().filter(|c| c.stats.sessions.load(Ordering::Relaxed) > 0).count(),
        "totals": totals,
        "per_camera": per,
    })
}

/// Sends an RTCP packet of a track: interleaved on the RTP channel + 1, or to the client's RTCP
/// port from ours.
async fn send_rtcp(
    ctx: &Ctx,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    o: &TrackOut,
    packet: &[u8],
) -> std::io::Result<()> {
    match o.to {
        Dest::Tcp(ch) => {
            let mut b = BytesMut::with_capacity(4 + packet.len());
            b.put_u8(b'$');
            b.put_u8(ch.wrapping_add(1));
            b.put_u16(packet.len() as u16);
            b.put_slice(packet);
            write(wr, &b).await
        }
        Dest::Udp(to) => {
            let _ = ctx.rtcp.send_to(packet, SocketAddr::new(to.ip(), o.rtcp_port)).await;
            Ok(())
        }
    }
}

/// This process's utime + stime in clock ticks (USER_HZ, 100 on Linux).
fn own_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Camera `i`: walks the file's schedule from its phase, looping, and hands each frame to the
/// sessions playing it.
async fn run_camera(ctx: Arc<Ctx>, i: usize) {
    let cam = &ctx.cameras[i];
    let media = &ctx.media;
    let span = u64::from(media.span_ms);
    let now_ms = cam.epoch.elapsed().as_millis() as u64;
    let (mut l, mut at) = ((now_ms / span) as u32, 0usize);
    let offset = now_ms % span;
    while at < media.frames.len() && u64::from(media.frames[at].due_ms) < offset {
        at += 1;
    }
    while !ctx.stopping.load(Ordering::Relaxed) {
        if at == media.frames.len() {
            (l, at) = (l + 1, 0);
        }
        let f = &media.frames[at];
        let due = cam.epoch + Duration::from_millis(u64::from(l) * span + u64::from(f.due_ms));
        tokio::time::sleep_until(due.into()).await;
        let late = Instant::now().saturating_duration_since(due).as_millis() as u64;
        cam.stats.max_late_ms.fetch_max(late, Ordering::Relaxed);
        if late > MAX_LATE_MS {
            cam.stats.skipped_frames.fetch_add(1, Ordering::Relaxed);
            at += 1;
            continue;
        }
        let sinks = cam.sinks.lock().unwrap();
        for (_, tx) in sinks.iter() {
            if tx.try_send((at as u32, l)).is_err() {
                cam.stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(sinks);
        at += 1;
    }
}

/// RTCP from clients (receiver reports) to the session that set up that address.
async fn drain_rtcp(ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = ctx.rtcp.recv_from(&mut buf).await else { continue };
        let route = ctx.rtcp_routes.lock().unwrap().get(&from).cloned();
        if let Some((tx, track)) = route {
            let _ = tx.try_send((track, Bytes::copy_from_slice(&buf[..n])));
        }
    }
}

/// Whatever clients send to the RTP port (NAT punching) is read and dropped.
async fn drain_rtp(ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let _ = ctx.rtp.recv_from(&mut buf).await;
    }
}

/// Where one set-up track goes and how its packets are rewritten.
#[derive(Debug, Clone)]
struct TrackOut {
    track: usize,
    ssrc: u32,
    /// Next sequence number.
    seq: u16,
    /// Random offset of RTP timestamps.
    time_offset: u32,
    to: Dest,
    /// The client's RTCP port (UDP).
    rtcp_port: u16,
    packets: u32,
    octets: u32,
}

#[derive(Debug, Clone, Copy)]
enum Dest {
    /// Interleaved RTP channel.
    Tcp(u8),
    /// Client's RTP address.
    Udp(SocketAddr),
}

/// A session playing a camera.
struct Playing {
    camera: usize,
    sink: u64,
    rx: mpsc::Receiver<FrameRef>,
    /// Waiting for the camera's next keyframe.
    started: bool,
}

/// Rewrites a packet's header for a session (RFC 3550 5.1: sequence number, timestamp, SSRC).
fn rewrite(out: &mut BytesMut, packet: &[u8], seq: u16, rtp_time: u32, ssrc: u32) {
    out.put_slice(&packet[..2]);
    out.put_u16(seq);
    out.put_u32(rtp_time);
    out.put_u32(ssrc);
    out.put_slice(&packet[12..]);
}

/// Builds what one frame sends on one session's track: for TCP all its packets interleaved in
/// one buffer, for UDP each packet (split by `datagrams`).
fn build_frame(
    media: &CameraMedia,
    f: &PacketizedFrame,
    l: u32,
    out: &mut TrackOut,
    buf: &mut BytesMut,
    datagrams: &mut Vec<usize>,
) {
    let ms = i64::from(l) * i64::from(media.span_ms) + f.pts_ms;
    let rtp_time = media.rtp_time(f.track, ms).wrapping_add(out.time_offset);
    for p in codec::packets(&f.packets) {
        if p.len() < 12 {
            continue;
        }
        if let Dest::Tcp(ch) = out.to {
            buf.put_u8(b'$');
            buf.put_u8(ch);
            buf.put_u16(p.len() as u16);
        }
        rewrite(buf, &p, out.seq, rtp_time, out.ssrc);
        datagrams.push(buf.len());
        out.seq = out.seq.wrapping_add(1);
        out.packets = out.packets.wrapping_add(1);
        out.octets = out.octets.wrapping_add(p.len() as u32 - 12);
    }
}

/// One RTSP connection: the sans-IO server session driven over the socket.
async fn serve(socket: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let config = ServerConfig {
        session_timeout: SESSION_TIMEOUT,
        rtcp_interval: RTCP_INTERVAL,
        server_ports: ctx.server_ports,
        ..ServerConfig::default()
    };
    let secrets = Secrets { session_id: random_u64(), nonce: random_u64() };
    let mut session = ServerSession::new(config, secrets, Instant::now());
    let (mut rd, mut wr) = socket.into_split();
    let mut buf = vec![0u8; READ_BUF];
    let (rtcp_tx, mut rtcp_rx) = mpsc::channel::<RtcpIn>(16);
    let mut outs: Vec<TrackOut> = Vec::new();
    let mut routes: Vec<SocketAddr> = Vec::new();
    let mut playing: Option<Playing> = None;
    let mut frame_buf = BytesMut::new();
    let mut datagrams = Vec::new();
    let result = async {
        loop {
            while let Some(ev) = session.poll_event() {
                match ev {
                    ServerEvent::Describe { path, .. } => match camera_of(&path, ctx.cameras.len()) {
                        Some(_) => session.accept_describe(&ctx.media.sdp)?,
                        None => session.reject(404)?,
                    },
                    ServerEvent::Setup { path, track, transport, record, .. } => {
                        let Some(track) = track.filter(|t| *t < ctx.media.clock_rates.len() && !record) else {
                            // The aggregate URL of a two-track stream, or a track we do not have.
                            session.reject(if track.is_none() { 459 } else { 404 })?;
                            continue;
                        };
                        if camera_of(&path, ctx.cameras.len()).is_none() {
                            session.reject(404)?;
                            continue;
                        }
                        if transport.multicast {
                            session.reject(461)?;
                            continue;
                        }
                        let Some(reply) = session.accept_setup(track, None)? else { continue };
                        let (rtp_port, rtcp_port) = reply.client_port.unwrap_or((0, 0));
                        let to = match reply.lower {
                            Lower::Tcp => Dest::Tcp(reply.interleaved.map_or(0, |(rtp, _)| rtp)),
                            Lower::Udp => {
                                let rtcp_addr = SocketAddr::new(peer.ip(), rtcp_port);
                                ctx.rtcp_routes.lock().unwrap().insert(rtcp_addr, (rtcp_tx.clone(), track));
                                routes.push(rtcp_addr);
                                Dest::Udp(SocketAddr::new(peer.ip(), rtp_port))
                            }
                        };
                        let r = random_u64();
                        outs.retain(|o| o.track != track);
                        outs.push(TrackOut {
                            track,
                            ssrc: r as u32,
                            seq: (r >> 32) as u16,
                            time_offset: random_u64() as u32,
                            to,
                            rtcp_port,
                            packets: 0,
                            octets: 0,
                        });
                    }
                    ServerEvent::Play { path, .. } => {
                        let Some(camera) = camera_of(&path, ctx.cameras.len()) else {
                            session.reject(404)?;
                            continue;
                        };
                        let cam = &ctx.cameras[camera];
                        let now_ms = cam.epoch.elapsed().as_millis() as i64;
                        let starts: Vec<RtpStart> = outs
                            .iter()
                            .map(|o| RtpStart {
                                track: o.track,
                                seq: o.seq,
                                rtptime: ctx.media.rtp_time(o.track, now_ms).wrapping_add(o.time_offset),
                            })
                            .collect();
                        session.accept_play("npt=now-", &starts)?;
                        if playing.is_none() {
                            let (tx, rx) = mpsc::channel(SESSION_QUEUE_FRAMES);
                            let sink = ctx.next_sink.fetch_add(1, Ordering::Relaxed);
                            cam.sinks.lock().unwrap().push((sink, tx));
                            cam.stats.sessions.fetch_add(1, Ordering::Relaxed);
                            playing = Some(Playing { camera, sink, rx, started: false });
                        }
                    }
                    ServerEvent::Pause | ServerEvent::Teardown => {
                        if let Some(p) = playing.take() {
                            ctx.cameras[p.camera].sinks.lock().unwrap().retain(|(id, _)| *id != p.sink);
                        }
                        if matches!(ev, ServerEvent::Teardown) {
                            outs.clear();
                        }
                    }
                    ServerEvent::RtcpReport => {
                        if let Some(p) = &playing {
                            let cam = &ctx.cameras[p.camera];
                            let now_ms = cam.epoch.elapsed().as_millis() as i64;
                            let unix = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_micros() as u64);
                            let ntp = rtcp::ntp_from_unix_micros(unix);
                            for o in &outs {
                                let rtp_time = ctx.media.rtp_time(o.track, now_ms).wrapping_add(o.time_offset);
                                let sr =
                                    rtcp::sender_report(o.ssrc, ntp, rtp_time, o.packets, o.octets, "ferrocast-bench");
                                send_rtcp(&ctx, &mut wr, o, &sr).await?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            while let Some(b) = session.poll_transmit() {
                write(&mut wr, &b).await?;
            }
            if session.is_closing() {
                return Ok(());
            }
            let deadline = session.poll_timeout().map(|(_, at)| at).unwrap_or_else(|| Instant::now() + SESSION_TIMEOUT);
            tokio::select! {
                r = rd.read(&mut buf) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    session.handle_input(Instant::now(), &buf[..n])?;
                }
                _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now())?,
                Some((track, data)) = rtcp_rx.recv() => session.handle_udp(Instant::now(), track, true, data),
                Some((at, l)) = async { playing.as_mut()?.rx.recv().await } => {
                    if ctx.stopping.load(Ordering::Relaxed) {
                        continue;
                    }
                    let p = playing.as_mut().expect("received from it");
                    let f = &ctx.media.frames[at as usize];
                    if !p.started && !f.keyframe {
                        continue;
                    }
                    p.started = true;
                    let Some(out) = outs.iter_mut().find(|o| o.track == f.track) else { continue };
                    frame_buf.clear();
                    datagrams.clear();
                    build_frame(&ctx.media, f, l, out, &mut frame_buf, &mut datagrams);
                    match out.to {
                        Dest::Tcp(_) => write(&mut wr, &frame_buf).await?,
                        Dest::Udp(to) => {
                            let mut from = 0;
                            for &end in &datagrams {
                                // A full socket buffer drops the datagram, as a network would.
                                let _ = ctx.rtp.send_to(&frame_buf[from..end], to).await;
                                from = end;
                            }
                        }
                    }
                    let stats = &ctx.cameras[p.camera].stats;
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    stats.video_frames.fetch_add(u64::from(f.video), Ordering::Relaxed);
                    stats.packets.fetch_add(u64::from(f.count), Ordering::Relaxed);
                    stats.bytes.fetch_add(u64::from(f.bytes), Ordering::Relaxed);
                }
            }
        }
    }
    .await;
    if let Some(p) = playing.take() {
        ctx.cameras[p.camera].sinks.lock().unwrap().retain(|(id, _)| *id != p.sink);
    }
    let mut r = ctx.rtcp_routes.lock().unwrap();
    for a in routes {
        r.remove(&a);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_rtsp::rtp::RtpPacket;

    #[test]
    fn camera_paths() {
        assert_eq!(camera_of("c0", 200), Some(0));
        assert_eq!(camera_of("c199", 200), Some(199));
        assert_eq!(camera_of("/c7/", 200), Some(7));
        for bad in ["c200", "c", "c01", "cx", "d1", "c-1", "c1/trackID=0", ""] {
            assert_eq!(camera_of(bad, 200), None, "{bad}");
        }
    }

    /// A frame of `n` packets whose payloads are `[track, i]`, stamped with junk headers.
    fn frame(track: usize, due_ms: u32, pts_ms: i64, keyframe: bool, n: u8) -> PacketizedFrame {
        let mut b = BytesMut::new();
        for i in 0..n {
            b.put_u16(14);
            RtpPacket::write(&mut b, i + 1 == n, 96, 0xeeee, 0xdddd_dddd, 0xcccc_cccc, &[&[track as u8, i]]);
        }
        PacketizedFrame {
            track,
            due_ms,
            pts_ms,
            video: track == 0,
            keyframe,
            packets: b.freeze(),
            count: n.into(),
            bytes: 14 * u32::from(n),
        }
    }

    fn media() -> CameraMedia {
        CameraMedia {
            sdp: String::new(),
            clock_rates: vec![90_000, 48_000],
            frames: vec![frame(0, 0, 0, true, 3), frame(1, 10, 10, false, 1), frame(0, 33, 66, false, 2)],
            span_ms: 1000,
        }
    }

    fn out(track: usize, to: Dest) -> TrackOut {
        TrackOut {
            track,
            ssrc: 0x1234_5678 + track as u32,
            seq: 65534,
            time_offset: 0xffff_0000,
            to,
            rtcp_port: 0,
            packets: 0,
            octets: 0,
        }
    }

    /// The packets one session gets of a frame in loop `l`, parsed.
    fn sent(m: &CameraMedia, at: usize, l: u32, o: &mut TrackOut) -> Vec<RtpPacket> {
        let (mut buf, mut ends) = (BytesMut::new(), Vec::new());
        build_frame(m, &m.frames[at], l, o, &mut buf, &mut ends);
        let buf = buf.freeze();
        let mut from = 0;
        ends.iter()
            .map(|&end| {
                let mut p = buf.slice(from..end);
                from = end;
                if let Dest::Tcp(ch) = o.to {
                    assert_eq!((p[0], p[1], usize::from(u16::from_be_bytes([p[2], p[3]]))), (b'$', ch, p.len() - 4));
                    p = p.slice(4..);
                }
                RtpPacket::parse(p).unwrap()
            })
            .collect()
    }

    /// Each session numbers its own packets (wrapping) and offsets its own timestamps; the
    /// shared packets keep their payload and marker; timestamps go on across loops.
    #[test]
    fn sessions_rewrite_headers_of_shared_packets() {
        let m = media();
        let mut a = out(0, Dest::Tcp(0));
        let mut b = out(0, Dest::Udp("127.0.0.1:5000".parse().unwrap()));
        b.ssrc = 99;
        b.seq = 7;
        let pa = sent(&m, 0, 0, &mut a);
        let pb = sent(&m, 0, 0, &mut b);
        assert_eq!(pa.iter().map(|p| p.sequence).collect::<Vec<_>>(), [65534, 65535, 0]);
        assert_eq!(pb.iter().map(|p| p.sequence).collect::<Vec<_>>(), [7, 8, 9]);
        assert!(pa.iter().all(|p| p.ssrc == 0x1234_5678 && p.timestamp == 0xffff_0000 && p.payload_type == 96));
        assert!(pb.iter().all(|p| p.ssrc == 99));
        assert_eq!(pa.iter().map(|p| p.marker).collect::<Vec<_>>(), [false, false, true]);
        assert_eq!(
            pa.iter().map(|p| p.payload.to_vec()).collect::<Vec<_>>(),
            pb.iter().map(|p| p.payload.to_vec()).collect::<Vec<_>>()
        );
        // The next frame goes on from there, at its presentation time (66 ms at 90 kHz).
        let next = sent(&m, 2, 0, &mut a);
        assert_eq!(next.iter().map(|p| p.sequence).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(next[0].timestamp, 0xffff_0000u32.wrapping_add(66 * 90));
        // The second loop is one span (1 s) later, the timestamp wrapping.
        let again = sent(&m, 0, 1, &mut a);
        assert_eq!(again[0].sequence, 3);
        assert_eq!(again[0].timestamp, 0xffff_0000u32.wrapping_add(90_000));
        assert_eq!((a.packets, a.octets), (8, 16), "for sender reports");
        // Audio in its own clock.
        let mut audio = out(1, Dest::Tcp(2));
        assert_eq!(sent(&m, 1, 2, &mut audio)[0].timestamp, 0xffff_0000u32.wrapping_add(2010 * 48));
    }
}
