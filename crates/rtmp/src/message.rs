//! RTMP message types (RTMP spec 1.0 sections 5.4, 6.2 and 7.1) and builders for the
//! control messages.

use bytes::{BufMut, Bytes, BytesMut};

use crate::amf0::{self, Value};
use crate::chunk::encode_message;

/// Message type ids.
pub mod type_id {
    /// Set Chunk Size (5.4.1).
    pub const SET_CHUNK_SIZE: u8 = 1;
    /// Abort Message (5.4.2).
    pub const ABORT: u8 = 2;
    /// Acknowledgement (5.4.3).
    pub const ACK: u8 = 3;
    /// User Control Message (6.2).
    pub const USER_CONTROL: u8 = 4;
    /// Window Acknowledgement Size (5.4.4).
    pub const WINDOW_ACK_SIZE: u8 = 5;
    /// Set Peer Bandwidth (5.4.5).
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    /// Audio data (7.1.4).
    pub const AUDIO: u8 = 8;
    /// Video data (7.1.5).
    pub const VIDEO: u8 = 9;
    /// AMF3 data message (7.1.2).
    pub const DATA_AMF3: u8 = 15;
    /// AMF3 shared object (7.1.3).
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    /// AMF3 command (7.1.1): a zero format byte, then AMF0 values.
    pub const COMMAND_AMF3: u8 = 17;
    /// AMF0 data message (7.1.2): `@setDataFrame`, `onMetaData`.
    pub const DATA_AMF0: u8 = 18;
    /// AMF0 shared object (7.1.3).
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    /// AMF0 command (7.1.1).
    pub const COMMAND_AMF0: u8 = 20;
    /// Aggregate message (7.1.6).
    pub const AGGREGATE: u8 = 22;
}

/// User Control event types (6.2, 7.1.7).
pub mod user_control {
    /// StreamBegin.
    pub const STREAM_BEGIN: u16 = 0;
    /// StreamEOF.
    pub const STREAM_EOF: u16 = 1;
    /// StreamDry.
    pub const STREAM_DRY: u16 = 2;
    /// SetBufferLength.
    pub const SET_BUFFER_LENGTH: u16 = 3;
    /// StreamIsRecorded.
    pub const STREAM_IS_RECORDED: u16 = 4;
    /// PingRequest.
    pub const PING_REQUEST: u16 = 6;
    /// PingResponse.
    pub const PING_RESPONSE: u16 = 7;
}

/// Chunk stream used for protocol control messages (5.4).
pub const CSID_CONTROL: u32 = 2;
/// Chunk stream used for commands.
pub const CSID_COMMAND: u32 = 3;
/// Chunk stream used for audio.
pub const CSID_AUDIO: u32 = 4;
/// Chunk stream used for data (metadata).
pub const CSID_DATA: u32 = 5;
/// Chunk stream used for video.
pub const CSID_VIDEO: u32 = 6;

/// Which kind of media message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Audio (type 8).
    Audio,
    /// Video (type 9).
    Video,
    /// AMF0 data (type 18).
    Data,
}

impl MediaKind {
    /// The kind of an FLV tag (whose tag types are RTMP's message type ids: 8 audio, 9 video,
    /// 18 script data); any other type is sent as data.
    pub fn from_tag_type(tag_type: u8) -> MediaKind {
        match tag_type {
            type_id::AUDIO => MediaKind::Audio,
            type_id::VIDEO => MediaKind::Video,
            _ => MediaKind::Data,
        }
    }

    /// The message type id.
    pub fn type_id(self) -> u8 {
        match self {
            MediaKind::Audio => type_id::AUDIO,
            MediaKind::Video => type_id::VIDEO,
            MediaKind::Data => type_id::DATA_AMF0,
        }
    }

    /// The chunk stream ferrocast sends it on.
    pub fn csid(self) -> u32 {
        match self {
            MediaKind::Audio => CSID_AUDIO,
            MediaKind::Video => CSID_VIDEO,
            MediaKind::Data => CSID_DATA,
        }
    }
}

/// An audio, video or data message on a message stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaMessage {
    /// Audio, video or data.
    pub kind: MediaKind,
    /// Timestamp in milliseconds (32 bits, wraps).
    pub timestamp: u32,
    /// Message stream id.
    pub stream_id: u32,
    /// The FLV tag body (audio/video) or AMF0 values (data).
    pub payload: Bytes,
}

/// Encodes a media message to chunks.
pub fn encode_media(kind: MediaKind, timestamp: u32, stream_id: u32, payload: &[u8], chunk_size: u32) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(&mut out, kind.csid(), timestamp, kind.type_id(), stream_id, payload, chunk_size);
    out.freeze()
}

/// A protocol control message with a 4-byte body.
pub(crate) fn control_u32(out: &mut BytesMut, type_id: u8, value: u32, chunk_size: u32) {
    encode_message(out, CSID_CONTROL, 0, type_id, 0, &value.to_be_bytes(), chunk_size);
}

/// Set Peer Bandwidth with limit type 2 (dynamic).
pub(crate) fn set_peer_bandwidth(out: &mut BytesMut, size: u32, chunk_size: u32) {
    let mut b = size.to_be_bytes().to_vec();
    b.push(2);
    encode_message(out, CSID_CONTROL, 0, type_id::SET_PEER_BANDWIDTH, 0, &b, chunk_size);
}

/// A User Control event with a 4-byte parameter.
pub(crate) fn user_control(out: &mut BytesMut, event: u16, value: u32, chunk_size: u32) {
    let mut b = BytesMut::with_capacity(6);
    b.put_u16(event);
    b.put_u32(value);
    encode_message(out, CSID_CONTROL, 0, type_id::USER_CONTROL, 0, &b, chunk_size);
}

/// An AMF0 command or data message from values.
pub(crate) fn amf0_message(
    out: &mut BytesMut,
    csid: u32,
    type_id: u8,
    stream_id: u32,
    values: &[Value],
    chunk_size: u32,
) {
    let body = amf0::encode_all(values);
    encode_message(out, csid, 0, type_id, stream_id, &body, chunk_size);
}

/// An `onStatus` info object.
pub(crate) fn status_object(level: &str, code: &str, description: &str) -> Value {
    Value::object([
        ("level", Value::from(level)),
        ("code", Value::from(code)),
        ("description", Value::from(description)),
    ])
}
