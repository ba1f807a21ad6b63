//! Sans-IO RTMP for ferrocast: the handshake, chunk stream, AMF0, and server and client
//! sessions. Bytes go in with `handle_input`, decisions come out of `poll_event`, bytes to send
//! come out of `poll_transmit`; no sockets, no runtime, time enters as an argument.
#![warn(missing_docs)]

pub mod amf0;
pub mod chunk;
pub mod client;
mod conn;
pub mod handshake;
pub mod message;
pub mod server;

pub use client::{ClientConfig, ClientEvent, ClientMode, ClientSession};
pub use message::{MediaKind, MediaMessage};
pub use server::{ServerConfig, ServerEvent, ServerSession, SessionError};
