//! The playback side of an RTSP connection: a recording (`PATH?start=T`) or a file
//! (`vod/NAME.mp4`) opened for this viewer alone, described, and played by a
//! [`VodPlayer`] whose reads run on the blocking pool.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ferrocast_rtsp::range;
use ferrocast_rtsp::sdp;
use ferrocast_rtsp::server::{PlayReply, ServerSession, SessionError};
use ferrocast_rtsp::url;
use tracing::{debug, info};

use super::Shared;
use super::player::{Sent, Tx, send_frame, send_rtcp};
use crate::vod::player::{Media, MediaInfo, Output, Read, VodPlayer};
use crate::vod::{Target, TargetError};

/// Most player outputs handled per turn of the connection's loop: a viewer without rate
/// control gets its frames in slices, each written before the next is made.
const MAX_OUTPUTS_PER_TURN: usize = 64;

/// A playback target opened for this connection.
pub(super) struct Opened {
    /// The stream path and query it was opened for.
    key: (String, Option<String>),
    media: Arc<Mutex<Box<dyn Media>>>,
    info: MediaInfo,
}

fn lock(m: &Mutex<Box<dyn Media>>) -> std::sync::MutexGuard<'_, Box<dyn Media>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Opened {
    /// Whether this was opened for `path` with the query of `uri`.
    pub(super) fn is_for(&self, path: &str, uri: &str) -> bool {
        self.key.0 == path && self.key.1.as_deref() == url::query(uri)
    }

    /// The stream path it was opened for.
    pub(super) fn key_path(&self) -> &str {
        &self.key.0
    }

    /// What is played.
    pub(super) fn info(&self) -> &MediaInfo {
        &self.info
    }

    /// The SDP of a DESCRIBE of `uri`: `a=range` in npt (and clock for recordings), track
    /// controls as absolute URLs carrying the query.
    pub(super) fn sdp(&self, uri: &str, origin: &str) -> (String, usize) {
        let i = &self.info;
        let duration = i.end_us.map(|e| (e - i.start_us) as f64 / 1e6);
        let mut ranges = vec![range::format_npt(0.0, duration)];
        if i.clock {
            ranges.push(range::format_clock(i.start_us.max(0) as u64, i.end_us.map(|e| e.max(0) as u64)));
        }
        // DESCRIBE names the presentation, never a track: its URL is the base as it is (a file
        // named `stream1.mp4` is no control).
        let base = url::without_query(uri);
        let p = sdp::Presentation { ranges: &ranges, absolute: Some((base, url::query(uri).unwrap_or(""))) };
        let (text, ids) = sdp::describe_with(&i.tracks, origin, "0.0.0.0", &p);
        (text, ids.len())
    }
}

/// The playback target `path` with `uri`'s query names, opened (blocking reads on the pool);
/// None when it is a live path. Err: the status to refuse with.
pub(super) async fn open(shared: &Arc<Shared>, path: &str, uri: &str) -> Option<Result<Opened, u16>> {
    let playback = shared.playback.clone();
    let (p, q) = (path.to_owned(), url::query(uri).map(str::to_owned));
    let opened = tokio::task::spawn_blocking(move || {
        let target = match playback.target(&p, q.as_deref())? {
            Ok(t) => t,
            Err(TargetError::BadTime(e)) => {
                debug!(path = p, "rtsp playback: {e}");
                return Some(Err(400));
            }
            Err(TargetError::NoFile) => return Some(Err(404)),
        };
        Some(crate::vod::open_media(&playback, &target).map(|media| (target, media)))
    })
    .await
    .ok()??;
    Some(opened.map(|(target, media)| {
        let info = media.info();
        match &target {
            Target::Recording { path, .. } => info!(path, "rtsp playback of recordings opened"),
            Target::File(f) => info!(file = %f.display(), "rtsp playback of a file opened"),
        }
        Opened { key: (path.to_owned(), url::query(uri).map(str::to_owned)), media: Arc::new(Mutex::new(media)), info }
    }))
}

/// A viewer playing.
pub(super) struct VodPlaying {
    pub(super) player: VodPlayer,
    media: Arc<Mutex<Box<dyn Media>>>,
    reading: Option<tokio::task::JoinHandle<Read>>,
    sent: [Sent; 2],
    /// Bytes sent over UDP since the connection last took the count (its session's bytes out).
    pub(super) udp_sent: u64,
}

/// What woke a playing viewer.
pub(super) enum Wake {
    Read(Read),
    Due,
}

impl VodPlaying {
    /// A viewer of `opened` for the tracks set up.
    pub(super) fn new(opened: &Opened, set_up: [bool; 2], mtu: usize) -> VodPlaying {
        VodPlaying {
            player: VodPlayer::new(opened.info.clone(), set_up, super::random_u64(), mtu),
            media: opened.media.clone(),
            reading: None,
            sent: Default::default(),
            udp_sent: 0,
        }
    }

    /// Starts the read the player needs, if any and none runs.
    fn start_read(&mut self) {
        if self.reading.is_some() {
            return;
        }
        if let Some(need) = self.player.poll_need(Instant::now()) {
            let media = self.media.clone();
            self.reading = Some(tokio::task::spawn_blocking(move || lock(&media).read(need)));
        }
    }

    /// Waits for a read or the next frame's time.
    pub(super) async fn wake(&mut self) -> Wake {
        let due = self.player.poll_timeout(Instant::now());
        tokio::select! {
            r = async { self.reading.as_mut().expect("guarded").await }, if self.reading.is_some() => {
                self.reading = None;
                Wake::Read(r.unwrap_or(Read::Failed))
            }
            _ = super::conn::sleep_until(due), if due.is_some() => Wake::Due,
        }
    }

    /// Whether there is anything to wait for.
    pub(super) fn waits(&self) -> bool {
        self.reading.is_some() || self.player.poll_timeout(Instant::now()).is_some()
    }

    /// Handles what woke it.
    pub(super) fn handle(&mut self, wake: Wake) {
        if let Wake::Read(r) = wake {
            self.player.handle_read(Instant::now(), r);
        }
    }

    /// Sends what is due, answers a PLAY whose position is known, and starts the next read.
    pub(super) fn pump(
        &mut self,
        shared: &Shared,
        session: &mut ServerSession,
        out: &mut super::player::Out,
        txs: &[(usize, Tx)],
    ) -> Result<(), SessionError> {
        let now = Instant::now();
        for _ in 0..MAX_OUTPUTS_PER_TURN {
            self.start_read();
            let Some(o) = self.player.poll_output(now) else { break };
            match o {
                Output::Reject(code) => session.reject(code)?,
                Output::Answer(a) => {
                    let reply = PlayReply {
                        range: &a.range,
                        starts: &a.starts,
                        scale: a.scale,
                        speed: a.speed,
                        rate_control_off: a.rate_control_off,
                    };
                    session.accept_play_with(&reply)?;
                    // The answer goes before the first packet.
                    while let Some(b) = session.poll_transmit() {
                        out.push(b);
                    }
                }
                Output::Rtp { track, packets } => {
                    if let Some((_, tx)) = txs.iter().find(|(i, _)| *i == track) {
                        let sent = &mut self.sent[track.min(1)];
                        self.udp_sent += send_frame(shared, &mut out.headers, &mut out.bufs, tx, &packets, sent) as u64;
                    }
                }
                Output::Rtcp { track, packet } => {
                    if let Some((_, tx)) = txs.iter().find(|(i, _)| *i == track) {
                        send_rtcp(shared, &mut out.headers, &mut out.bufs, tx, packet);
                    }
                }
            }
        }
        self.start_read();
        Ok(())
    }

    /// Sender reports for the report timer.
    pub(super) fn reports(&self, shared: &Shared, out: &mut super::player::Out, txs: &[(usize, Tx)]) {
        for o in self.player.sender_reports(Instant::now(), super::unix_micros()) {
            if let Output::Rtcp { track, packet } = o
                && let Some((_, tx)) = txs.iter().find(|(i, _)| *i == track)
            {
                send_rtcp(shared, &mut out.headers, &mut out.bufs, tx, packet);
            }
        }
    }

    /// BYE on every track (TEARDOWN, or the connection closing).
    pub(super) fn bye(&self, shared: &Shared, headers: &mut BytesMut, bufs: &mut Vec<Bytes>, txs: &[(usize, Tx)]) {
        for (index, tx) in txs {
            if let Some(ssrc) = self.player.ssrc(*index) {
                send_rtcp(shared, headers, bufs, tx, ferrocast_rtsp::rtcp::bye(ssrc));
            }
        }
    }
}

impl Drop for VodPlaying {
    fn drop(&mut self) {
        if let Some(r) = self.reading.take() {
            r.abort();
        }
    }
}
