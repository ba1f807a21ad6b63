//! A push to an RTSP target: the `ferrocast_rtsp` client in record mode. ANNOUNCE an SDP made
//! by the server's DESCRIBE builder from the stream's tracks, SETUP each track over TCP
//! interleaved, RECORD, then the frames as RTP from the RTSP output's packetizers, with a
//! sequence numbering and SSRC of this target's own (RFC 3550 5.1, 8.2) and RTCP sender
//! reports (RFC 3550 6.4.1) on the stream's media clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks, rescale};
use ferrocast_rtsp::client::{ClientError, ClientEvent, ClientMode, ClientSession, ClientTransport};
use ferrocast_rtsp::codec::{self, Packetizer};
use ferrocast_rtsp::message::Method;
use ferrocast_rtsp::{rtcp, sdp};
use tokio::io::AsyncReadExt;
use tracing::info;

use super::{BATCH, Ctx, PushError, Target, connect, write_all};
use crate::reader::{Reader, ReaderItem};
use crate::relay::redact_key;
use crate::rtsp::{random_u64, unix_micros};

/// Bytes read from the target at a time (it sends little: answers, receiver reports).
const READ_BUFFER: usize = 4096;
/// A stream with one kind of track waits this long for the other before the SDP is made
/// (an RTMP publisher's audio and video headers arrive a moment apart).
const TRACKS_SETTLE: Duration = Duration::from_secs(1);
/// Most reader items held while the tracks settle.
const MAX_HELD: usize = 512;
/// Sender reports, per track (RFC 3550 6.2 suggests 5 s as the minimum interval).
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest reason phrase quoted from a target's answer.
const MAX_REASON: usize = 80;

/// The track kinds an SDP describes, in media order (track `i` is channels `2i`, `2i+1`).
fn kinds(ids: &[(u8, TrackInfo)]) -> Vec<TrackKind> {
    ids.iter().map(|(_, t)| t.kind()).collect()
}

/// The kinds RTP can carry in a set of tracks, in SDP order (video first).
fn carried(tracks: &Tracks) -> Vec<TrackKind> {
    let (_, ids) = sdp::describe(tracks, "0.0.0.0", "0.0.0.0");
    kinds(&ids)
}

/// Takes reader items until the tracks are worth describing: both kinds, or one kind that
/// stayed alone for [`TRACKS_SETTLE`]. Frames taken meanwhile are kept for after RECORD.
/// None when the stream ended first.
async fn settled_tracks(
    reader: &mut Reader,
    held: &mut VecDeque<ReaderItem>,
) -> Result<Option<Arc<Tracks>>, PushError> {
    let mut tracks = reader.initial_tracks().clone();
    let mut first_usable: Option<tokio::time::Instant> = None;
    loop {
        let kinds = carried(&tracks);
        if kinds.len() == 2 {
            return Ok(Some(tracks));
        }
        if !kinds.is_empty() {
            let since = *first_usable.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= TRACKS_SETTLE || held.len() >= MAX_HELD {
                return Ok(Some(tracks));
            }
        } else if held.len() >= MAX_HELD {
            // Frames without parameters cannot be sent anyway.
            held.clear();
        }
        let wait = first_usable.map_or(Duration::from_secs(3600), |t| TRACKS_SETTLE.saturating_sub(t.elapsed()));
        let Ok(item) = tokio::time::timeout(wait, reader.next()).await else { continue };
        match item {
            ReaderItem::Tracks(t) => {
                tracks = t.clone();
                held.push_back(ReaderItem::Tracks(t));
            }
            ReaderItem::Ended => return Ok(None),
            ReaderItem::TooSlow => return Err(PushError::TooSlow),
            other => held.push_back(other),
        }
    }
}

/// This target's RTP side: a packetizer per described track.
struct RtpOut {
    kinds: Vec<TrackKind>,
    packetizers: Vec<Option<Packetizer>>,
    reported: Vec<bool>,
    tracks: Arc<Tracks>,
    mtu: usize,
}

impl RtpOut {
    fn index(&self, kind: TrackKind) -> Option<usize> {
        self.kinds.iter().position(|k| *k == kind)
    }

    /// New tracks: the same kinds go on (a packetizer whose parameters changed keeps its
    /// SSRC and numbering); other kinds need a new session.
    fn tracks(&mut self, tracks: Arc<Tracks>) -> Result<(), PushError> {
        let now = carried(&tracks);
        if now.is_empty() {
            // A republish starts with no tracks; its parameters follow.
            return Ok(());
        }
        if now != self.kinds {
            return Err(PushError::TracksChanged("the target's session has other tracks"));
        }
        self.tracks = tracks;
        Ok(())
    }

    /// The packets of a frame for this target, and its track index.
    fn packetize(&mut self, f: &Frame) -> Option<(usize, bytes::Bytes)> {
        let i = self.index(f.kind)?;
        let track = match f.kind {
            TrackKind::Video => self.tracks.video.as_ref(),
            TrackKind::Audio => self.tracks.audio.as_ref(),
        }?;
        let p = &mut self.packetizers[i];
        if p.as_ref().is_none_or(|p| p.track() != track) {
            let r = random_u64();
            let (seq, ssrc, offset) = match p.as_ref() {
                Some(p) => (p.next_sequence(), p.ssrc(), p.time_offset()),
                None => (r as u16, (r >> 16) as u32, (r >> 48) as u32),
            };
            *p = Packetizer::new(track, sdp::payload_type(track), ssrc, seq, offset, self.mtu);
        }
        Some((i, p.as_mut()?.packetize(f)))
    }

    /// A sender report for track `i`, on the stream's media clock.
    fn sender_report(&self, i: usize, clock: Option<&crate::clock::MediaClock>) -> Option<bytes::Bytes> {
        let p = self.packetizers.get(i)?.as_ref()?;
        let now = unix_micros();
        let media = clock?.mapping()?.media_at(now);
        let rtp_time = p.rtp_time(rescale(media, 1_000_000, p.track().clock_rate()));
        Some(rtcp::sender_report(p.ssrc(), rtcp::ntp_from_unix_micros(now), rtp_time, p.packets, p.octets, "ferrocast"))
    }
}

/// A refused step: its method, the status and the target's reason phrase.
fn refused(client: &ClientSession, method: &Method, status: u16) -> PushError {
    let reason = client.last_response().filter(|r| r.status == status).map_or("", |r| r.reason.as_str());
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(MAX_REASON).collect();
    let answer = if reason.is_empty() { status.to_string() } else { format!("{status} {reason}") };
    PushError::Refused { step: method.as_str().to_owned(), answer }
}

fn client_error(e: ClientError, step: &str, timeout: Duration) -> PushError {
    match e {
        ClientError::Timeout(method) => PushError::Timeout { step: method, timeout },
        e => PushError::Protocol { step: step.to_owned(), why: e.to_string() },
    }
}

/// One try: announce, record, send until the path ends (Ok) or the target fails.
pub(super) async fn run(ctx: &Ctx, mut reader: Reader, went_live: &mut bool) -> Result<(), PushError> {
    let target = Target::parse(&ctx.url, "rtsp", 554)?;
    let mut held = VecDeque::new();
    let Some(tracks) = settled_tracks(&mut reader, &mut held).await? else {
        return Ok(());
    };
    let socket = connect(ctx, &target.addr).await?;
    let local = socket.local_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "0.0.0.0".into());
    let peer = socket.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "0.0.0.0".into());
    let (text, ids) = sdp::describe(&tracks, &local, &peer);
    let kinds = kinds(&ids);
    let (mut rd, mut wr) = socket.into_split();
    // The client takes the credentials from the URL (Basic or Digest, as the target asks);
    // no request line carries them.
    let mut client =
        ClientSession::new(&ctx.url, ClientMode::Record(text), ClientTransport::Tcp, vec![], Instant::now());
    let timeout = ctx.request_timeout();
    client.set_response_timeout(timeout);
    let mut out = Vec::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let (mut described, mut set_up) = (false, 0usize);
    loop {
        let step = if !described {
            "ANNOUNCE"
        } else if set_up < kinds.len() {
            "SETUP"
        } else {
            "RECORD"
        };
        while let Some(b) = client.poll_transmit() {
            out.push(b);
        }
        write_all(&mut wr, &mut out, timeout, step).await?;
        let mut started = false;
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Described(_) => described = true,
                ClientEvent::SetUp { .. } => set_up += 1,
                ClientEvent::Started => started = true,
                ClientEvent::Failed { method, status } => return Err(refused(&client, &method, status)),
                _ => {}
            }
        }
        if started {
            break;
        }
        // Every answer within the request timeout (the client's own timer).
        let deadline = client.poll_timeout().unwrap_or_else(|| Instant::now() + timeout);
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = r.map_err(|source| PushError::Io { step: step.to_owned(), source })?;
                if n == 0 {
                    return Err(PushError::Closed { step: step.to_owned() });
                }
                client.handle_input(Instant::now(), &buf[..n]).map_err(|e| client_error(e, step, timeout))?;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                client.handle_timeout(Instant::now()).map_err(|e| client_error(e, step, timeout))?;
            }
        }
    }
    info!(path = ctx.path, url = redact_key(&ctx.url), tracks = kinds.len(), "push: recording over RTSP");
    *went_live = true;
    ctx.relay.live();
    let clock = ctx.hub.media_clock(&ctx.path);
    let n = kinds.len();
    let mut rtp =
        RtpOut { kinds, packetizers: (0..n).map(|_| None).collect(), reported: vec![false; n], tracks, mtu: ctx.mtu };
    let mut next_report = Instant::now() + REPORT_INTERVAL;
    const STEP: &str = "recording";
    loop {
        let mut ended = false;
        let mut bytes = 0u64;
        let mut handle = |item: ReaderItem, client: &mut ClientSession, rtp: &mut RtpOut| -> Result<bool, PushError> {
            match item {
                ReaderItem::Tracks(t) => rtp.tracks(t)?,
                ReaderItem::Frame(f) => {
                    if let Some((i, packets)) = rtp.packetize(&f) {
                        if !rtp.reported[i] {
                            // A report before the first packet gives the NTP/RTP mapping that
                            // aligns the tracks from the start.
                            rtp.reported[i] = true;
                            if let Some(sr) = rtp.sender_report(i, clock.as_deref()) {
                                client.send_rtcp(i, &sr);
                            }
                        }
                        for pkt in codec::packets(&packets) {
                            client.send_rtp(i, &pkt);
                        }
                        bytes += packets.len() as u64;
                    }
                }
                ReaderItem::Unpublished | ReaderItem::Republished => {}
                ReaderItem::Ended => return Ok(true),
                ReaderItem::TooSlow => return Err(PushError::TooSlow),
            }
            Ok(false)
        };
        while let Some(item) = held.pop_front() {
            if handle(item, &mut client, &mut rtp)? {
                ended = true;
                break;
            }
        }
        if !ended {
            // Sender reports, and the client's keep-alives and answer deadlines.
            let timer = client.poll_timeout().map_or(next_report, |t| t.min(next_report));
            tokio::select! {
                item = reader.next() => {
                    let mut item = Some(item);
                    let mut count = 0;
                    while let Some(it) = item.take() {
                        if handle(it, &mut client, &mut rtp)? {
                            ended = true;
                            break;
                        }
                        count += 1;
                        if count < BATCH {
                            item = reader.try_next();
                        }
                    }
                }
                r = rd.read(&mut buf) => {
                    let n = r.map_err(|source| PushError::Io { step: STEP.into(), source })?;
                    if n == 0 {
                        return Err(PushError::Closed { step: STEP.into() });
                    }
                    client.handle_input(Instant::now(), &buf[..n]).map_err(|e| client_error(e, STEP, timeout))?;
                    while let Some(ev) = client.poll_event() {
                        match ev {
                            // A keep-alive the target does not know is no failure (the client
                            // falls back to OPTIONS).
                            ClientEvent::Failed { method: Method::GetParameter | Method::Options, .. } => {}
                            ClientEvent::Failed { method, status } => return Err(refused(&client, &method, status)),
                            _ => {}
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {
                    let now = Instant::now();
                    if now >= next_report {
                        next_report = now + REPORT_INTERVAL;
                        for i in 0..rtp.kinds.len() {
                            if let Some(sr) = rtp.sender_report(i, clock.as_deref()) {
                                client.send_rtcp(i, &sr);
                            }
                        }
                    }
                    client.handle_timeout(now).map_err(|e| client_error(e, "keep-alive", timeout))?;
                }
            }
        }
        if ended {
            client.teardown(Instant::now());
        }
        while let Some(b) = client.poll_transmit() {
            out.push(b);
        }
        let written = write_all(&mut wr, &mut out, ctx.write_timeout(), STEP).await;
        if ended {
            return Ok(());
        }
        written?;
        ctx.sent(bytes);
    }
}
