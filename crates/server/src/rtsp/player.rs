//! A player's RTP side: where each track's packets go, what it was sent (for its sender
//! reports), the encoder the stream's fan-out task drives for it, and the first packets of a
//! PLAY (whose headers make the answer's RTP-Info).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use ferrocast_media::{Frame, TrackKind, Tracks};
use ferrocast_rtsp::codec;
use ferrocast_rtsp::server::RtpStart;

use super::{MulticastGroup, Shared, StreamRtp, slot, unix_micros};
use crate::fanout::Encoder;
use crate::reader::ReaderItem;
use crate::session::OutCount;

/// How long a PLAY answer waits for the first frame of every set-up track: its RTP-Info
/// carries the header of the first packet of each (a stream whose audio stays silent
/// longer is answered without that track's seq and rtptime).
pub(super) const FIRST_PACKETS_WAIT: Duration = Duration::from_secs(2);
/// Most frames held while waiting for the first packet of every track (about two seconds
/// of 60 fps video with audio).
pub(super) const MAX_FIRST_FRAMES: usize = 256;

/// Where one track's packets go.
#[derive(Clone)]
pub(super) enum Tx {
    Tcp { rtp: u8, rtcp: u8 },
    Udp { rtp: SocketAddr, rtcp: SocketAddr },
    Multicast(Arc<MulticastGroup>),
}

/// What a player was sent on one track, for its sender reports.
#[derive(Default, Clone, Copy)]
pub(super) struct Sent {
    pub(super) report: bool,
    pub(super) packets: u32,
    pub(super) octets: u32,
}

impl Sent {
    /// Counts an RTP packet: its payload octets, as sender reports give them (RFC 3550 6.4.1).
    fn count(&mut self, pkt: &[u8]) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(pkt.len().saturating_sub(12) as u32);
    }
}

/// Frames held until a PLAY is answered, and the first packet header of each track.
pub(super) struct Starting {
    pub(super) deadline: Instant,
    pub(super) items: Vec<ReaderItem>,
    /// Tracks (0 video, 1 audio) still without a first packet.
    pub(super) wanted: [bool; 2],
    pub(super) starts: Vec<RtpStart>,
    /// npt of the first frame, in ms.
    pub(super) first_ms: Option<i64>,
}

/// The RTP side of a player: its frames as packets on its transports. Used by the player's
/// own task and, in direct mode, by the stream's fan-out task (see [`crate::fanout`]), which
/// sends a frame to each of hundreds of players in turn: what each frame uses (what was sent,
/// the socket) is the first cache line, and where a track goes the next.
#[repr(C, align(64))]
pub(super) struct RtpOut {
    pub(super) sent: [Sent; 2],
    /// Bytes sent over UDP, not yet added to the session.
    pub(super) udp_sent: OutCount,
    pub(super) shared: Arc<Shared>,
    pub(super) stream: Arc<StreamRtp>,
    /// Where each track's packets go (video, audio): None when not set up or multicast.
    pub(super) txs: [Option<Tx>; 2],
    pub(super) tracks: Tracks,
    /// Scratch for interleaved headers.
    pub(super) headers: BytesMut,
    /// The player's session: the bytes sent over UDP are added there, every
    /// [`OutCount::EVERY`] frames (`udp_sent`; TCP bytes are counted where they are written).
    pub(super) session: Option<Arc<crate::session::SessionInfo>>,
}

impl Drop for RtpOut {
    fn drop(&mut self) {
        self.count_sent();
    }
}

impl RtpOut {
    /// The player's RTP side, as the fan-out hands it back ([`crate::fanout::Slot::take_back`]).
    pub(super) fn back(encoder: Box<dyn Encoder>) -> Option<Box<RtpOut>> {
        let any: Box<dyn std::any::Any> = encoder;
        any.downcast().ok()
    }

    /// Adds the bytes sent over UDP to the session.
    pub(super) fn count_sent(&mut self) {
        self.udp_sent.flush(self.session.as_deref());
    }

    /// Sends a frame: over UDP at once, over TCP as buffers appended to `out`.
    pub(super) fn frame(&mut self, f: &Frame, out: &mut Vec<Bytes>) {
        // Only set-up tracks have a transport (a change of tracks goes through the player's
        // own task).
        let idx = slot(f.kind);
        let Some(tx) = &self.txs[idx] else { return };
        let packets = self.stream.packets(f);
        let t = &mut self.sent[idx];
        if !t.report {
            // A sender report before the first packet gives players the NTP/RTP mapping
            // that aligns audio and video from the start.
            t.report = true;
            if let Some((_, sr)) = self.stream.sender_report(f.kind, unix_micros(), 0, 0) {
                send_rtcp(&self.shared, &mut self.headers, out, tx, sr);
            }
        }
        let udp = send_frame(&self.shared, &mut self.headers, out, tx, &packets, t);
        if udp > 0 {
            self.udp_sent.add(udp, self.session.as_deref());
        }
    }
}

/// A frame's packets (`[u16 length][packet]` records) on one transport: over UDP at once,
/// all together (see udp_out); over TCP as interleaved buffers appended to `out`. Counted in
/// `sent`. Returns the bytes sent over UDP.
pub(super) fn send_frame(
    shared: &Shared,
    headers: &mut BytesMut,
    out: &mut Vec<Bytes>,
    tx: &Tx,
    packets: &Bytes,
    sent: &mut Sent,
) -> usize {
    if let Tx::Udp { rtp, .. } = tx {
        // Counted as they are gathered: one walk over the frame's records per reader.
        let mut udp_bytes = 0;
        let counted = codec::packet_slices(packets).inspect(|pkt| {
            sent.count(pkt);
            udp_bytes += pkt.len();
        });
        super::udp_out::send_packets(&shared.rtp, *rtp, counted);
        return udp_bytes;
    }
    for pkt in codec::packets(packets) {
        sent.count(&pkt);
        send_rtp(headers, out, tx, pkt);
    }
    0
}

/// The fan-out task sends for a player in step with its own [`RtpOut`], handed over whole
/// (see [`RtpOut::back`]): the pass over the readers reaches each one's packet state with no
/// lock or pointer of its own.
impl Encoder for RtpOut {
    fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>) {
        RtpOut::frame(self, frame, out);
    }
}

impl Starting {
    pub(super) fn new(txs: &[(usize, Tx)]) -> Starting {
        let mut wanted = [false; 2];
        for (index, tx) in txs {
            if !matches!(tx, Tx::Multicast(_))
                && let Some(w) = wanted.get_mut(*index)
            {
                *w = true;
            }
        }
        Starting {
            deadline: Instant::now() + FIRST_PACKETS_WAIT,
            items: Vec::new(),
            wanted,
            starts: Vec::new(),
            first_ms: None,
        }
    }

    /// Notes the header of a frame's first packet when it is the first of its track. The
    /// packets are the stream's shared ones: the player will be sent exactly these.
    pub(super) fn first_packet(&mut self, out: &RtpOut, stream: &StreamRtp, f: &Frame) {
        let idx = slot(f.kind);
        if !self.wanted[idx] {
            return;
        }
        let track = match f.kind {
            TrackKind::Video => out.tracks.video.as_ref(),
            TrackKind::Audio => out.tracks.audio.as_ref(),
        };
        let Some(track) = track else { return };
        let packets = stream.packets(f);
        let Some(first) = codec::packets(&packets).next() else { return };
        if first.len() < 12 {
            return;
        }
        self.wanted[idx] = false;
        self.starts.push(RtpStart {
            track: idx,
            seq: u16::from_be_bytes([first[2], first[3]]),
            rtptime: u32::from_be_bytes([first[4], first[5], first[6], first[7]]),
        });
        if self.first_ms.is_none() {
            self.first_ms = Some(ferrocast_media::rescale(f.pts, track.clock_rate(), 1000).max(0));
        }
    }
}

/// What a connection will write next: encoded responses, interleaved frame headers and
/// shared RTP packets, written with one vectored write.
#[derive(Default)]
pub(super) struct Out {
    pub(super) bufs: Vec<Bytes>,
    /// Scratch for the 4-byte interleaved headers: they are split off one buffer, so a
    /// packet costs no allocation of its own.
    pub(super) headers: BytesMut,
}

impl Out {
    pub(super) fn push(&mut self, b: Bytes) {
        self.bufs.push(b);
    }
}

fn interleaved(headers: &mut BytesMut, out: &mut Vec<Bytes>, channel: u8, pkt: Bytes) {
    if headers.capacity() < 4 {
        // Room for the headers of a frame or two (per-viewer memory).
        headers.reserve(1024);
    }
    headers.put_u8(b'$');
    headers.put_u8(channel);
    headers.put_u16(pkt.len() as u16);
    out.push(headers.split().freeze());
    out.push(pkt);
}

/// An RTP packet on a TCP transport (UDP packets go by frame, see [`RtpOut::frame`]).
fn send_rtp(headers: &mut BytesMut, out: &mut Vec<Bytes>, tx: &Tx, pkt: Bytes) {
    if let Tx::Tcp { rtp, .. } = tx {
        interleaved(headers, out, *rtp, pkt);
    }
}

pub(super) fn send_rtcp(shared: &Shared, headers: &mut BytesMut, out: &mut Vec<Bytes>, tx: &Tx, pkt: Bytes) {
    match tx {
        Tx::Tcp { rtcp, .. } => interleaved(headers, out, *rtcp, pkt),
        Tx::Udp { rtcp, .. } => {
            let _ = shared.rtcp.try_send_to(&pkt, *rtcp);
        }
        Tx::Multicast(_) => {}
    }
}
