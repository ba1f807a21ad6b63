//! What the server and client sessions share once the handshake is done: chunk decoding,
//! protocol control messages (chunk size, acknowledgements, pings) and the transmit queue.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::chunk::{ChunkDecoder, ChunkError, MAX_BUFFERED_BEFORE_PUBLISH, RawMessage, encode_message};
use crate::message::{self, type_id, user_control};

/// Our default Window Acknowledgement Size (what nginx-rtmp and SRS send).
pub const DEFAULT_WINDOW_ACK_SIZE: u32 = 2_500_000;

/// A User Control event the peer sent (pings are answered here, not returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserControl {
    pub event: u16,
    pub value: u32,
}

/// Result of reading one message from the peer.
#[derive(Debug)]
pub(crate) enum Incoming {
    Message(RawMessage),
    UserControl(UserControl),
}

#[derive(Debug)]
pub(crate) struct Conn {
    decoder: ChunkDecoder,
    pub input: BytesMut,
    out: BytesMut,
    queue: VecDeque<Bytes>,
    pub out_chunk_size: u32,
    bytes_in: u64,
    last_ack: u64,
    peer_window: u32,
}

impl Conn {
    pub fn new(max_message_len: u32) -> Self {
        Conn {
            decoder: ChunkDecoder::new(max_message_len),
            input: BytesMut::new(),
            out: BytesMut::new(),
            queue: VecDeque::new(),
            out_chunk_size: crate::chunk::DEFAULT_CHUNK_SIZE,
            bytes_in: 0,
            last_ack: 0,
            peer_window: 0,
        }
    }

    /// Counts received bytes for acknowledgements (5.4.3) and buffers them.
    pub fn receive(&mut self, data: &[u8]) {
        self.bytes_in += data.len() as u64;
        self.input.extend_from_slice(data);
        if self.peer_window > 0 && self.bytes_in - self.last_ack >= u64::from(self.peer_window) {
            self.last_ack = self.bytes_in;
            message::control_u32(&mut self.out, type_id::ACK, self.bytes_in as u32, self.out_chunk_size);
        }
    }

    /// Lifts the caps that hold until a publish is accepted (see [`ChunkDecoder`]).
    pub fn allow_media(&mut self) {
        self.decoder.allow_media();
    }

    /// Until media is allowed, what the peer made us buffer (partial messages and input not
    /// yet decoded, which grows while a decision is owed) must stay within
    /// [`MAX_BUFFERED_BEFORE_PUBLISH`].
    pub fn check_buffered(&self) -> Result<(), ChunkError> {
        if self.decoder.media_allowed() {
            return Ok(());
        }
        let held = self.decoder.held() + self.input.len();
        if held > MAX_BUFFERED_BEFORE_PUBLISH {
            return Err(ChunkError::BufferedTooLarge { held });
        }
        Ok(())
    }

    /// The buffer for building session messages, in order with queued media.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Announces and switches to our chunk size.
    pub fn set_out_chunk_size(&mut self, size: u32) {
        message::control_u32(&mut self.out, type_id::SET_CHUNK_SIZE, size, self.out_chunk_size);
        self.out_chunk_size = size;
    }

    /// Queues pre-encoded chunks (shared media) after what was built so far.
    pub fn push(&mut self, chunks: Bytes) {
        if !self.out.is_empty() {
            let built = self.out.split().freeze();
            self.queue.push_back(built);
        }
        self.queue.push_back(chunks);
    }

    /// Encodes a message of ours.
    pub fn send(&mut self, csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) {
        encode_message(&mut self.out, csid, timestamp, type_id, stream_id, payload, self.out_chunk_size);
    }

    /// True while bytes wait for `poll_transmit`.
    pub fn has_output(&self) -> bool {
        !self.queue.is_empty() || !self.out.is_empty()
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(b) = self.queue.pop_front() {
            if self.queue.is_empty() && self.queue.capacity() > 16 {
                // After a burst (a GOP cache for a new player): not kept per connection.
                self.queue = VecDeque::new();
            }
            return Some(b);
        }
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Reads the next message that is not a protocol control message; control messages are
    /// applied on the way.
    pub fn next(&mut self) -> Result<Option<Incoming>, ChunkError> {
        loop {
            let Some(msg) = self.decoder.decode(&mut self.input)? else {
                return Ok(None);
            };
            let p = &msg.payload;
            let u32_at = |i: usize| p.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            match msg.type_id {
                type_id::SET_CHUNK_SIZE => {
                    let size = u32_at(0).unwrap_or(0);
                    self.decoder.set_chunk_size(size)?;
                }
                type_id::ABORT => {
                    if let Some(csid) = u32_at(0) {
                        self.decoder.abort(csid);
                    }
                }
                type_id::WINDOW_ACK_SIZE => self.peer_window = u32_at(0).unwrap_or(0),
                type_id::ACK | type_id::SET_PEER_BANDWIDTH => {}
                type_id::USER_CONTROL if p.len() >= 2 => {
                    let event = u16::from_be_bytes([p[0], p[1]]);
                    let value = u32_at(2).unwrap_or(0);
                    if event == user_control::PING_REQUEST {
                        message::user_control(&mut self.out, user_control::PING_RESPONSE, value, self.out_chunk_size);
                    }
                    return Ok(Some(Incoming::UserControl(UserControl { event, value })));
                }
                type_id::USER_CONTROL => {}
                _ => return Ok(Some(Incoming::Message(msg))),
            }
        }
    }
}
