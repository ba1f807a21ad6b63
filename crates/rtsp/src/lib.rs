//! Sans-IO RTSP 1.0 (RFC 2326) for ferrocast: message decoding and encoding, the Transport
//! header, the session state table, the server session, SDP, RTP and RTCP, and the RTP payload formats of H.264,
//! H.265 and AAC. No sockets, runtime or clock: time enters as an argument.
#![warn(missing_docs)]

pub mod auth;
pub mod base64;
pub mod client;
pub mod codec;
pub mod message;
pub mod range;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod server;
pub mod state;
pub mod transport;
pub mod url;
