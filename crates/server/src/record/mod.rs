//! Recording: every stream a path's `record` setting selects is written to fMP4 segment files
//! under `[record] dir`, part by part, with an index of the segments (DESIGN.md "Recordings").

pub mod index;
pub mod retention;
pub mod segmenter;
