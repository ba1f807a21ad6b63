//! Reading MP4 files (ISO/IEC 14496-12, the ISO base media file format) whole: each track's
//! codec parameters and its samples as [`Frame`]s, for publishing a file (`ferrocast-bench`).
//!
//! Built on [`crate::mp4_index`] (one parser of boxes and sample tables): progressive files
//! (moov before or after the mdat) and fragmented ones. H.264, H.265 and AAC tracks are read,
//! others skipped. A damaged or hostile file gives an error, never a panic or an allocation it
//! does not pay for with its own bytes.

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::fmp4_read::ReadError;
use crate::mp4_index::{self, SampleTable};
use crate::{Frame, TrackInfo, TrackKind};

/// Why a file could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Mp4Error {
    /// No `moov` box.
    #[error("not an MP4 file (no moov box)")]
    NoMoov,
    /// A box that is cut short, contradicts itself or is over a limit.
    #[error("malformed MP4: {0}")]
    Malformed(String),
    /// Valid MP4 that this reader does not follow.
    #[error("unsupported MP4: {0}")]
    Unsupported(String),
}

impl From<ReadError> for Mp4Error {
    fn from(e: ReadError) -> Mp4Error {
        match e {
            ReadError::Malformed { rule: "no moov box", .. } => Mp4Error::NoMoov,
            ReadError::Unsupported { .. } => Mp4Error::Unsupported(e.to_string()),
            e => Mp4Error::Malformed(e.to_string()),
        }
    }
}

/// One track of a file.
#[derive(Debug)]
pub struct Mp4Track {
    /// Codec parameters; timestamps are in the track's timescale (its `clock_rate`).
    pub info: TrackInfo,
    /// The samples in decode order. Video data is length-prefixed NAL units (4-byte lengths).
    pub frames: Vec<Arc<Frame>>,
}

/// The H.264, H.265 and AAC tracks of a whole file held in memory.
pub fn read_file(data: &Bytes) -> Result<Vec<Mp4Track>, Mp4Error> {
    let movie = mp4_index::index(data)?;
    let mut tracks = Vec::new();
    for (info, table) in [(&movie.tracks.video, &movie.video), (&movie.tracks.audio, &movie.audio)] {
        if let (Some(info), Some(table)) = (info, table) {
            tracks.push(Mp4Track { info: info.clone(), frames: frames(data, table, info.kind())? });
        }
    }
    Ok(tracks)
}

/// The samples of a table as frames sharing the file's buffer.
fn frames(data: &Bytes, table: &SampleTable, kind: TrackKind) -> Result<Vec<Arc<Frame>>, Mp4Error> {
    table
        .samples()
        .iter()
        .map(|s| {
            let at = usize::try_from(s.offset).map_err(|_| Mp4Error::Malformed("sample offset".into()))?;
            let end = at.checked_add(s.size() as usize).filter(|e| *e <= data.len());
            let end = end.ok_or(Mp4Error::Malformed("sample outside the file".into()))?;
            Ok(Frame::new(kind, s.dts, s.pts(), s.keyframe(), data.slice(at..end)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn bad_files_are_errors() {
        assert_eq!(read_file(&Bytes::from_static(b"")).unwrap_err(), Mp4Error::NoMoov);
        assert!(matches!(read_file(&Bytes::from_static(b"\0\0\0\x20ftypisom")), Err(Mp4Error::Malformed(_))));
        let moof = mp4_box(b"moof", &[]);
        assert!(matches!(read_file(&Bytes::from(moof)), Err(Mp4Error::Malformed(_))));
    }

    #[test]
    fn no_box_past_its_parent() {
        let mut v = mp4_box(b"moov", &mp4_box(b"trak", &[]));
        v[3] = 0xff; // moov claims more than the file
        assert!(read_file(&Bytes::from(v)).is_err());
    }
}
