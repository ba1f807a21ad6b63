//! Codec parameters and containers for ferrocast, as pure functions with no I/O: the `Frame`
//! and `Tracks` vocabulary every protocol speaks, FLV tags, and codec configuration records.
#![warn(missing_docs)]

pub mod aac;
pub mod avc;
pub mod flv;
mod frame;

pub use frame::{AudioCodec, Frame, TrackInfo, TrackKind, Tracks, VideoCodec, Wire, rescale};
