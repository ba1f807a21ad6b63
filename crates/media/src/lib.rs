//! Codec parameters and containers for ferrocast, as pure functions with no I/O: the `Frame`
//! and `Tracks` vocabulary every protocol speaks, FLV tags, and codec configuration records.
#![warn(missing_docs)]

pub mod aac;
pub mod avc;
pub mod bits;
pub mod check;
pub mod dts;
pub mod flv;
pub mod fmp4;
pub mod fmp4_read;
mod frame;
pub mod h264;
pub mod h265;
pub mod mp4;
pub mod mp4_index;
pub mod mp4_progressive;
pub mod opus;
pub mod ts;

pub use frame::{AudioCodec, Frame, TrackInfo, TrackKind, Tracks, VideoCodec, Wire, rescale};

/// Why codec parameters could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    /// A record or parameter set ends early.
    #[error("{0} truncated")]
    Truncated(&'static str),
    /// A parameter set the operation needs is absent.
    #[error("no {0}")]
    Missing(&'static str),
}
