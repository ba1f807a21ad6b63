//! The RTMP chunk stream (RTMP spec 1.0 section 5.3): splitting messages into chunks and
//! reassembling them, with header compression (fmt 0-3) and extended timestamps.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::message::type_id;

/// Chunk size both sides use until a Set Chunk Size message (5.4.1).
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// The largest chunk size the protocol allows: the field has 31 bits (5.4.1).
pub const MAX_CHUNK_SIZE: u32 = 0x7fff_ffff;
/// Default cap on one media message's length (audio, video, aggregate), which applies once
/// media is allowed ([`ChunkDecoder::allow_media`]: a publish was accepted). Nothing an encoder
/// sends comes close (a 4K IDR frame is a few MiB); the cap bounds what one peer can make us
/// buffer per chunk stream.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 16 * 1024 * 1024;
/// Cap on every other message (commands, data, control, shared objects), and on every message
/// before media is allowed. The largest a real client sends is `onMetaData` or a `connect`
/// with a long tcUrl, a few hundred bytes to a few KiB; a larger command is an attack on our
/// memory (it is AMF0-decoded before the session knows who sent it).
pub const MAX_COMMAND_MESSAGE_LEN: u32 = 64 * 1024;
/// Most chunk streams a peer may have open at once. Encoders use 3 to 8; the cap bounds the
/// per-stream state an attacker can make us keep (csids go up to 65,599).
pub const MAX_CHUNK_STREAMS: usize = 64;
/// Most chunk streams before media is allowed. Clients use two or three for their control
/// messages and commands (ffmpeg: 2 and 3; OBS: 2, 3 and 4).
pub const MAX_CHUNK_STREAMS_BEFORE_PUBLISH: usize = 8;
/// Most bytes a peer can make us hold before media is allowed (before anyone accepted a
/// publish): partial messages over all chunk streams (their reserved capacity) and input not
/// yet decoded. Room for a few whole commands of [`MAX_COMMAND_MESSAGE_LEN`]; 200 connections
/// from one address then hold at most 50 MiB, where 64 streams x 16 MiB each allowed 200 GiB.
pub const MAX_BUFFERED_BEFORE_PUBLISH: usize = 256 * 1024;
/// Most a partial message reserves before its bytes arrive.
const INITIAL_RESERVE: usize = 64 * 1024;
/// A timestamp field of this value means a 4-byte extended timestamp follows (5.3.1.3).
const EXTENDED_TIMESTAMP: u32 = 0xff_ffff;

/// Why the chunk stream could not be decoded. Each is fatal for the connection.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChunkError {
    /// A message longer than its cap: [`MAX_COMMAND_MESSAGE_LEN`] for commands, data and
    /// everything before media is allowed, the configured cap for media after.
    #[error("chunk stream {csid}: message of type {type_id} and length {len} exceeds the cap of {max}")]
    MessageTooLarge {
        /// Chunk stream id.
        csid: u32,
        /// Message type id.
        type_id: u8,
        /// Declared length.
        len: u32,
        /// The cap.
        max: u32,
    },
    /// fmt 1, 2 or 3 on a chunk stream that has had no fmt 0 chunk.
    #[error("chunk stream {csid}: fmt {fmt} chunk without a preceding full header")]
    NoPreviousHeader {
        /// Chunk stream id.
        csid: u32,
        /// Chunk type.
        fmt: u8,
    },
    /// A new message header arrived before the previous message on the stream was complete.
    #[error("chunk stream {csid}: new message header while a message is incomplete")]
    InterruptedMessage {
        /// Chunk stream id.
        csid: u32,
    },
    /// More chunk streams than allowed: [`MAX_CHUNK_STREAMS_BEFORE_PUBLISH`] before media is
    /// allowed, [`MAX_CHUNK_STREAMS`] after.
    #[error("more than {0} chunk streams")]
    TooManyChunkStreams(usize),
    /// Before media is allowed, partial messages and undecoded input over
    /// [`MAX_BUFFERED_BEFORE_PUBLISH`].
    #[error("{held} bytes buffered before publishing, over the cap of {MAX_BUFFERED_BEFORE_PUBLISH}")]
    BufferedTooLarge {
        /// Bytes that would be held.
        held: usize,
    },
    /// Set Chunk Size of 0 or with bit 31 set.
    #[error("invalid chunk size {0} (must be 1..=2^31-1)")]
    BadChunkSize(u32),
}

/// A reassembled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Chunk stream it arrived on.
    pub csid: u32,
    /// Absolute timestamp in milliseconds (32 bits, wraps).
    pub timestamp: u32,
    /// Message type id (5.4, 7.1).
    pub type_id: u8,
    /// Message stream id.
    pub stream_id: u32,
    /// The message body.
    pub payload: Bytes,
}

#[derive(Debug, Default)]
struct StreamState {
    timestamp: u32,
    /// The timestamp field of the last header: absolute after fmt 0, delta after fmt 1/2. A fmt
    /// 3 chunk that starts a message adds it again (5.3.1.2.4).
    ts_field: u32,
    extended: bool,
    length: u32,
    type_id: u8,
    stream_id: u32,
    partial: BytesMut,
    in_progress: bool,
}

/// Reassembles messages from a peer's chunk stream.
///
/// It starts strict, as for a peer nobody has accepted yet: every message is capped at
/// [`MAX_COMMAND_MESSAGE_LEN`], and partial messages plus undecoded input at
/// [`MAX_BUFFERED_BEFORE_PUBLISH`] over at most [`MAX_CHUNK_STREAMS_BEFORE_PUBLISH`] chunk
/// streams. [`ChunkDecoder::allow_media`] (a publish was accepted) lifts media messages to the
/// configured cap.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    max_message_len: u32,
    media_allowed: bool,
    streams: HashMap<u32, StreamState>,
}

impl ChunkDecoder {
    /// A decoder with the default chunk size and the given cap on media messages.
    pub fn new(max_message_len: u32) -> Self {
        ChunkDecoder { chunk_size: DEFAULT_CHUNK_SIZE, max_message_len, media_allowed: false, streams: HashMap::new() }
    }

    /// Media messages up to the configured cap, [`MAX_CHUNK_STREAMS`] chunk streams, and no
    /// cap on what is buffered over them: call once the peer may publish.
    pub fn allow_media(&mut self) {
        self.media_allowed = true;
    }

    /// Whether [`ChunkDecoder::allow_media`] was called.
    pub fn media_allowed(&self) -> bool {
        self.media_allowed
    }

    /// Bytes held by partial messages (their reserved capacity).
    pub fn held(&self) -> usize {
        self.streams.values().map(|s| s.partial.capacity()).sum()
    }

    /// The cap on a message of this type.
    fn max_len(&self, type_id: u8) -> u32 {
        let media = matches!(type_id, type_id::AUDIO | type_id::VIDEO | type_id::AGGREGATE);
        if media && self.media_allowed {
            self.max_message_len
        } else {
            self.max_message_len.min(MAX_COMMAND_MESSAGE_LEN)
        }
    }

    /// Applies the peer's Set Chunk Size.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Discards the partial message on `csid` (Abort Message, 5.4.2).
    pub fn abort(&mut self, csid: u32) {
        if let Some(s) = self.streams.get_mut(&csid) {
            s.partial = BytesMut::new();
            s.in_progress = false;
        }
    }

    /// Decodes chunks from the front of `buf` until a message is complete (returned) or the
    /// buffer holds only part of a chunk (`Ok(None)`, nothing of that chunk consumed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            let Some(done) = self.decode_chunk(buf)? else {
                return Ok(None);
            };
            if let Some(msg) = done {
                return Ok(Some(msg));
            }
        }
    }

    /// One chunk. `Ok(None)`: incomplete; `Ok(Some(None))`: chunk consumed, message not yet
    /// complete.
    fn decode_chunk(&mut self, buf: &mut BytesMut) -> Result<Option<Option<RawMessage>>, ChunkError> {
        let b = &buf[..];
        let Some(&b0) = b.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut pos) = match b0 & 0x3f {
            0 if b.len() >= 2 => (64 + u32::from(b[1]), 2),
            1 if b.len() >= 3 => (64 + u32::from(b[1]) + 256 * u32::from(b[2]), 3),
            0 | 1 => return Ok(None),
            c => (u32::from(c), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        if b.len() < pos + header_len {
            return Ok(None);
        }
        if !self.streams.contains_key(&csid) {
            if fmt != 0 {
                return Err(ChunkError::NoPreviousHeader { csid, fmt });
            }
            let max = if self.media_allowed { MAX_CHUNK_STREAMS } else { MAX_CHUNK_STREAMS_BEFORE_PUBLISH };
            if self.streams.len() >= max {
                return Err(ChunkError::TooManyChunkStreams(max));
            }
        }
        let h = &b[pos..pos + header_len];
        let u24 = |s: &[u8]| u32::from(s[0]) << 16 | u32::from(s[1]) << 8 | u32::from(s[2]);
        let prev = self.streams.get(&csid);
        let in_progress = prev.is_some_and(|p| p.in_progress);
        if fmt != 3 && in_progress {
            return Err(ChunkError::InterruptedMessage { csid });
        }
        let (ts_field, length, type_id, stream_id) = match (fmt, prev) {
            (0, _) => (u24(&h[0..3]), u24(&h[3..6]), h[6], u32::from_le_bytes([h[7], h[8], h[9], h[10]])),
            (1, Some(p)) => (u24(&h[0..3]), u24(&h[3..6]), h[6], p.stream_id),
            (2, Some(p)) => (u24(&h[0..3]), p.length, p.type_id, p.stream_id),
            (3, Some(p)) => {
                (if p.extended { EXTENDED_TIMESTAMP } else { p.ts_field }, p.length, p.type_id, p.stream_id)
            }
            _ => unreachable!("checked above"),
        };
        pos += header_len;
        // Extended timestamp: present when the field is 0xFFFFFF; a fmt 3 chunk carries it again
        // when the previous header on the stream had one (5.3.1.3).
        let mut ts_value = ts_field;
        let extended = ts_field == EXTENDED_TIMESTAMP;
        if extended {
            if b.len() < pos + 4 {
                return Ok(None);
            }
            let ext = u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
            // Quirk: some encoders (librtmp before 2.4 and its forks) omit the extended
            // timestamp on continuation chunks. If the bytes do not repeat the value we saw,
            // they are payload.
            let continuation_without_ext = fmt == 3 && in_progress && prev.is_some_and(|p| p.ts_field != ext);
            if !continuation_without_ext {
                ts_value = ext;
                pos += 4;
            } else {
                ts_value = prev.map_or(0, |p| p.ts_field);
            }
        }
        let max = self.max_len(type_id);
        if length > max {
            return Err(ChunkError::MessageTooLarge { csid, type_id, len: length, max });
        }
        let already = if in_progress { prev.map_or(0, |p| p.partial.len()) } else { 0 };
        let want = (length as usize - already).min(self.chunk_size as usize);
        if b.len() < pos + want {
            return Ok(None);
        }
        let single = !in_progress && want == length as usize;
        if !self.media_allowed && !single {
            // What partial messages would hold with this chunk in one. (Undecoded input is
            // the session's to count: see `Conn::check_buffered`.)
            let reserve = if in_progress { 0 } else { (length as usize).min(INITIAL_RESERVE) };
            let held = self.held() + reserve;
            if held > MAX_BUFFERED_BEFORE_PUBLISH {
                return Err(ChunkError::BufferedTooLarge { held });
            }
        }
        // The whole chunk is here: commit.
        buf.advance(pos);
        let data = buf.split_to(want);
        let s = self.streams.entry(csid).or_default();
        if !in_progress {
            s.timestamp = match fmt {
                0 => ts_value,
                _ => s.timestamp.wrapping_add(ts_value),
            };
            s.ts_field = ts_value;
            s.extended = extended;
            s.length = length;
            s.type_id = type_id;
            s.stream_id = stream_id;
            s.in_progress = true;
            s.partial = BytesMut::new();
        }
        if s.partial.is_empty() && data.len() == length as usize {
            // Single-chunk message: no copy.
            s.in_progress = false;
            return Ok(Some(Some(RawMessage {
                csid,
                timestamp: s.timestamp,
                type_id,
                stream_id,
                payload: data.freeze(),
            })));
        }
        if s.partial.is_empty() {
            // The buffer grows with the bytes that arrive: reserving the declared length up
            // front would let a peer claim 64 streams x 16 MiB with a few hundred bytes.
            s.partial.reserve((length as usize).min(INITIAL_RESERVE));
        }
        s.partial.extend_from_slice(&data);
        if s.partial.len() < length as usize {
            return Ok(Some(None));
        }
        s.in_progress = false;
        let payload = std::mem::take(&mut s.partial).freeze();
        Ok(Some(Some(RawMessage { csid, timestamp: s.timestamp, type_id, stream_id, payload })))
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.put_u8(fmt << 6 | csid as u8),
        64..=319 => {
            out.put_u8(fmt << 6);
            out.put_u8((csid - 64) as u8);
        }
        _ => {
            let c = csid.clamp(320, 65_599) - 64;
            out.put_u8(fmt << 6 | 1);
            out.put_u16_le(c as u16);
        }
    }
}

/// Appends `payload` as one message in chunks of `chunk_size`: a fmt 0 chunk, then fmt 3
/// chunks. Every chunk is self-describing, so the bytes are the same for every receiver of
/// this message on this chunk stream and can be shared.
pub fn encode_message(
    out: &mut BytesMut,
    csid: u32,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: u32,
) {
    let chunk_size = chunk_size.max(1) as usize;
    let extended = timestamp >= EXTENDED_TIMESTAMP;
    let chunks = payload.len().div_ceil(chunk_size).max(1);
    out.reserve(payload.len() + 16 + chunks * if extended { 5 } else { 1 });
    put_basic_header(out, 0, csid);
    let ts_field = timestamp.min(EXTENDED_TIMESTAMP);
    out.put_slice(&ts_field.to_be_bytes()[1..]);
    out.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.put_u8(type_id);
    out.put_u32_le(stream_id);
    if extended {
        out.put_u32(timestamp);
    }
    for (i, chunk) in payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            put_basic_header(out, 3, csid);
            if extended {
                out.put_u32(timestamp);
            }
        }
        out.put_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut ChunkDecoder, bytes: &[u8]) -> Vec<RawMessage> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = dec.decode(&mut buf).unwrap() {
            out.push(m);
        }
        assert!(buf.is_empty(), "left {} bytes", buf.len());
        out
    }

    #[test]
    fn round_trip_with_extended_timestamps_and_large_csids() {
        for (ts, csid) in [(0, 3), (1000, 63), (0x00ff_ffff, 64), (0x1234_5678, 400)] {
            let payload: Vec<u8> = (0..1000).map(|i| i as u8).collect();
            let mut out = BytesMut::new();
            encode_message(&mut out, csid, ts, 9, 1, &payload, 128);
            let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
            let msgs = decode_all(&mut dec, &out);
            assert_eq!(msgs.len(), 1);
            assert_eq!((msgs[0].timestamp, msgs[0].csid, &msgs[0].payload[..]), (ts, csid, &payload[..]));
        }
    }

    #[test]
    fn byte_at_a_time_input_reassembles() {
        let mut out = BytesMut::new();
        encode_message(&mut out, 4, 40, 8, 1, &[5u8; 300], 128);
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let mut buf = BytesMut::new();
        let mut got = None;
        for b in out.iter() {
            buf.put_u8(*b);
            if let Some(m) = dec.decode(&mut buf).unwrap() {
                got = Some(m);
            }
        }
        assert_eq!(got.unwrap().payload.len(), 300);
    }

    #[test]
    fn header_compression_fmt1_fmt2_fmt3() {
        // fmt 0 at t=1000 (len 2), fmt 1 delta 40 (len 1), fmt 2 delta 20, fmt 3 repeats delta 20.
        let bytes = [
            0x04, 0x00, 0x03, 0xe8, 0, 0, 2, 8, 1, 0, 0, 0, 0xaa, 0xbb, // fmt 0
            0x44, 0, 0, 40, 0, 0, 1, 8, 0xcc, // fmt 1
            0x84, 0, 0, 20, 0xdd, // fmt 2
            0xc4, 0xee, // fmt 3
        ];
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let ts: Vec<u32> = decode_all(&mut dec, &bytes).iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, [1000, 1040, 1060, 1080]);
    }

    #[test]
    fn fmt3_after_fmt0_adds_the_absolute_timestamp_again() {
        // RTMP spec 5.3.1.2.4: a type 3 chunk may follow type 0 when the delta equals the
        // first message's timestamp.
        let bytes = [0x04, 0, 0, 20, 0, 0, 1, 8, 1, 0, 0, 0, 0xaa, 0xc4, 0xbb];
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let ts: Vec<u32> = decode_all(&mut dec, &bytes).iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, [20, 40]);
    }

    #[test]
    fn continuation_without_extended_timestamp_quirk() {
        // librtmp < 2.4 style: fmt 3 continuation chunks without the extended field.
        let ts = 0x0100_0000u32;
        let mut bytes = vec![0x06, 0xff, 0xff, 0xff, 0, 0, 4, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&ts.to_be_bytes());
        bytes.extend_from_slice(&[1, 2]);
        bytes.extend_from_slice(&[0xc6, 3, 4]);
        // The next message lets the decoder see past the continuation chunk.
        bytes.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 1, 20, 0, 0, 0, 0, 5]);
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        dec.chunk_size = 2;
        let msgs = decode_all(&mut dec, &bytes);
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].timestamp, &msgs[0].payload[..]), (ts, &[1, 2, 3, 4][..]));
    }

    #[test]
    fn message_too_large() {
        let bytes = [0x04, 0, 0, 0, 0x01, 0x00, 0x01, 9, 1, 0, 0, 0];
        let mut dec = ChunkDecoder::new(65_536);
        assert_eq!(
            dec.decode(&mut BytesMut::from(&bytes[..])),
            Err(ChunkError::MessageTooLarge { csid: 4, type_id: 9, len: 65_537, max: 65_536 })
        );
    }

    /// A header declaring a message of `len` bytes of type `type_id` on `csid` (2..=63).
    fn header(csid: u8, len: u32, type_id: u8) -> Vec<u8> {
        let l = len.to_be_bytes();
        vec![csid, 0, 0, 0, l[1], l[2], l[3], type_id, 1, 0, 0, 0]
    }

    #[test]
    fn command_too_large() {
        // Commands and data are capped at 64 KiB before and after a publish; media at 64 KiB
        // until media is allowed, then at the configured cap.
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        for t in [type_id::COMMAND_AMF0, type_id::DATA_AMF0, type_id::VIDEO, type_id::AGGREGATE] {
            let mut buf = BytesMut::from(&header(3, MAX_COMMAND_MESSAGE_LEN + 1, t)[..]);
            assert_eq!(
                dec.decode(&mut buf),
                Err(ChunkError::MessageTooLarge {
                    csid: 3,
                    type_id: t,
                    len: MAX_COMMAND_MESSAGE_LEN + 1,
                    max: MAX_COMMAND_MESSAGE_LEN
                }),
                "type {t}"
            );
        }
        dec.allow_media();
        for t in [type_id::COMMAND_AMF0, type_id::COMMAND_AMF3, type_id::DATA_AMF0, type_id::SHARED_OBJECT_AMF0] {
            let mut buf = BytesMut::from(&header(3, MAX_COMMAND_MESSAGE_LEN + 1, t)[..]);
            assert!(matches!(dec.decode(&mut buf), Err(ChunkError::MessageTooLarge { .. })), "type {t}");
        }
        let mut buf = BytesMut::from(&header(3, DEFAULT_MAX_MESSAGE_LEN - 1, type_id::VIDEO)[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None), "a 16 MiB video message is fine once publishing");
    }

    #[test]
    fn buffered_before_publish_too_large() {
        // Partial commands on several chunk streams: the fifth 64 KiB reservation is
        // over the 256 KiB budget (64 KiB each: it counts what is reserved, not only sent).
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let mut buf = BytesMut::new();
        for csid in 3..8u8 {
            buf.extend_from_slice(&header(csid, MAX_COMMAND_MESSAGE_LEN, type_id::COMMAND_AMF0));
            buf.extend_from_slice(&[0; DEFAULT_CHUNK_SIZE as usize]);
        }
        let err = dec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ChunkError::BufferedTooLarge { held } if held > MAX_BUFFERED_BEFORE_PUBLISH), "{err}");
        assert!(dec.held() <= MAX_BUFFERED_BEFORE_PUBLISH);
        // Once publishing, partial media messages are not capped together (only each by the
        // media cap and the stream count).
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        dec.allow_media();
        let mut buf = BytesMut::new();
        for csid in 3..8u8 {
            buf.extend_from_slice(&header(csid, 1 << 20, type_id::VIDEO));
            buf.extend_from_slice(&[0; DEFAULT_CHUNK_SIZE as usize]);
        }
        assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn chunk_streams_before_publish_too_many() {
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        let mut buf = BytesMut::new();
        for csid in 3..4 + MAX_CHUNK_STREAMS_BEFORE_PUBLISH as u8 {
            // Whole one-byte messages: nothing is held but the streams' state.
            buf.extend_from_slice(&header(csid, 1, type_id::COMMAND_AMF0));
            buf.put_u8(5);
        }
        let mut got = Ok(None);
        for _ in 0..=MAX_CHUNK_STREAMS_BEFORE_PUBLISH {
            got = dec.decode(&mut buf);
            if got.is_err() {
                break;
            }
        }
        assert_eq!(got, Err(ChunkError::TooManyChunkStreams(MAX_CHUNK_STREAMS_BEFORE_PUBLISH)));
    }

    #[test]
    fn declared_lengths_do_not_reserve_memory() {
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        dec.allow_media();
        dec.set_chunk_size(4).unwrap();
        let mut buf = BytesMut::new();
        for csid in 3..63u8 {
            // Each stream claims an almost-16 MiB message and sends 4 bytes of it.
            buf.extend_from_slice(&[csid, 0, 0, 0, 0xff, 0xff, 0xf0, 9, 1, 0, 0, 0, 1, 2, 3, 4]);
        }
        assert_eq!(dec.decode(&mut buf), Ok(None));
        let held: usize = dec.streams.values().map(|s| s.partial.capacity()).sum();
        assert!(held <= MAX_CHUNK_STREAMS * INITIAL_RESERVE, "{held} bytes reserved");
    }

    #[test]
    fn bad_chunk_sizes() {
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        assert_eq!(dec.set_chunk_size(0), Err(ChunkError::BadChunkSize(0)));
        assert_eq!(dec.set_chunk_size(0x8000_0000), Err(ChunkError::BadChunkSize(0x8000_0000)));
        assert_eq!(dec.set_chunk_size(MAX_CHUNK_SIZE), Ok(()));
    }

    #[test]
    fn compressed_header_without_history_and_too_many_streams() {
        let mut dec = ChunkDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        assert_eq!(
            dec.decode(&mut BytesMut::from(&[0xc5u8, 0][..])),
            Err(ChunkError::NoPreviousHeader { csid: 5, fmt: 3 })
        );
        dec.allow_media();
        dec.set_chunk_size(1).unwrap();
        let mut buf = BytesMut::new();
        for csid in 0..=MAX_CHUNK_STREAMS as u32 {
            // Incomplete messages keep every stream open.
            buf.extend_from_slice(&[0x00, csid as u8, 0, 0, 0, 0, 0, 9, 9, 1, 0, 0, 0, 7]);
        }
        let mut err = None;
        for _ in 0..=MAX_CHUNK_STREAMS {
            match dec.decode(&mut buf) {
                Err(e) => {
                    err = Some(e);
                    break;
                }
                Ok(m) => assert!(m.is_none() || buf.is_empty()),
            }
        }
        assert_eq!(err, Some(ChunkError::TooManyChunkStreams(MAX_CHUNK_STREAMS)));
    }
}
