//! HLS (RFC 8216) for ferrocast, sans I/O: a segmenter that cuts a stream's frames into
//! MPEG-TS or fMP4 segments on keyframes, keeps a bounded window of them in memory, and
//! renders the media and multivariant playlists. Wall-clock time enters as an argument.
#![warn(missing_docs)]

mod playlist;
mod segmenter;

pub use playlist::format_date_time;
pub use segmenter::{Segment, Segmenter, SegmenterConfig, Variant};
