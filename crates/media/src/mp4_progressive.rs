//! Progressive MP4 (ISO/IEC 14496-12) laid out from sample tables alone: `ftyp`, a `moov` with
//! complete sample tables (stts, ctts, stss, stsz, stsc, stco or co64), then one `mdat` whose
//! bytes the caller supplies from elsewhere (recording files), chunk by chunk, in the order the
//! chunks were pushed. Nothing here sees media data: a [`Builder`] takes each chunk's sample
//! sizes and times, and [`Layout`] says where every chunk's bytes go in the file.
//!
//! Sample times are decode times on one output timeline per track, in the track's timescale;
//! each sample lasts until the next one (`stts`), the last one its own duration. A decode time
//! that goes back (overlapping input) is placed one tick after its predecessor and the times
//! after it catch up: the tables never hold a negative or zero duration.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::fmp4::{AUDIO_ID, MATRIX, VIDEO_ID, bx, dimensions, full, sample_entry};
use crate::{ParamError, TrackInfo, TrackKind, Tracks};

/// Most samples in one file, both tracks together. A day at 120 fps video with 48 kHz AAC
/// (47 frames a second) is 14.4 million; at about 20 bytes of tables a sample the `moov` of
/// the cap is some 330 MB, which is what a caller must be ready to hold.
pub const MAX_SAMPLES: u64 = 1 << 24;

/// The movie timescale (`mvhd`): milliseconds.
const MOVIE_TIMESCALE: u32 = 1000;

/// Bytes of the `mdat` header: always the 64-bit form, so any length fits.
pub const MDAT_HEADER_LEN: u64 = 16;

/// Why a layout could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProgressiveError {
    /// More than [`MAX_SAMPLES`] samples.
    #[error("more than {MAX_SAMPLES} samples")]
    TooManySamples,
    /// A sample of a track the builder was not given.
    #[error("no {0:?} track")]
    NoTrack(TrackKind),
    /// A track's codec parameters do not make a sample entry.
    #[error("sample entry: {0}")]
    Param(#[from] ParamError),
    /// No samples at all.
    #[error("no samples")]
    Empty,
}

/// One sample of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSample {
    /// Decode time on the output timeline, in the track's timescale.
    pub dts: i64,
    /// Composition offset (`pts - dts`).
    pub cts: i64,
    /// Its duration, used when it is the track's last sample.
    pub duration: u32,
    /// Bytes of data.
    pub size: u32,
    /// A sync sample.
    pub keyframe: bool,
}

/// The tables of one track, run-length coded as they grow.
#[derive(Debug)]
struct Track {
    info: TrackInfo,
    timescale: u32,
    /// (count, delta): all but the pending sample's.
    stts: Vec<(u32, u32)>,
    /// (count, offset).
    ctts: Vec<(u32, i32)>,
    /// 1-based numbers of sync samples.
    stss: Vec<u32>,
    sizes: Vec<u32>,
    /// (offset from the start of mdat's data, samples).
    chunks: Vec<(u64, u32)>,
    /// Where the last sample was placed and its own duration: its delta comes with the next.
    pending: Option<(i64, u32)>,
    /// Sum of all deltas so far (the placed decode time of the pending sample).
    placed: i64,
}

impl Track {
    fn new(info: TrackInfo, timescale: u32) -> Track {
        Track {
            info,
            timescale: timescale.max(1),
            stts: Vec::new(),
            ctts: Vec::new(),
            stss: Vec::new(),
            sizes: Vec::new(),
            chunks: Vec::new(),
            pending: None,
            placed: 0,
        }
    }

    fn push(&mut self, s: &ChunkSample) {
        if let Some((at, _)) = self.pending {
            let delta = (s.dts - at).clamp(1, i64::from(u32::MAX)) as u32;
            run(&mut self.stts, delta);
            self.placed = at + i64::from(delta);
        } else {
            self.placed = s.dts;
        }
        self.pending = Some((self.placed, s.duration));
        self.sizes.push(s.size);
        if s.keyframe {
            self.stss.push(self.sizes.len() as u32);
        }
        let cts = s.cts.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        run(&mut self.ctts, cts);
    }

    /// The full stts, the pending sample's own duration last.
    fn stts(&self) -> Vec<(u32, u32)> {
        let mut t = self.stts.clone();
        if let Some((_, d)) = self.pending {
            run(&mut t, d.max(1));
        }
        t
    }

    /// Media duration: from the first sample's decode time 0 of the timeline to the end of
    /// the last one.
    fn duration(&self) -> u64 {
        self.stts().iter().map(|(n, d)| u64::from(*n) * u64::from(*d)).sum()
    }
}

/// Appends `v` to a run-length table.
fn run<T: PartialEq + Copy>(table: &mut Vec<(u32, T)>, v: T) {
    match table.last_mut() {
        Some((n, last)) if *last == v && *n < u32::MAX => *n += 1,
        _ => table.push((1, v)),
    }
}

/// Builds a progressive MP4's header from chunks of samples.
///
/// ```
/// # use ferrocast_media::mp4_progressive::{Builder, ChunkSample};
/// # use ferrocast_media::{TrackInfo, TrackKind, Tracks, AudioCodec};
/// let audio = TrackInfo::Audio { codec: AudioCodec::Pcma, config: Default::default(), sample_rate: 8000, channels: 1, clock_rate: 8000 };
/// let mut b = Builder::new(&Tracks { video: None, audio: Some(audio), metadata: None }, None, Some(8000));
/// let s = ChunkSample { dts: 0, cts: 0, duration: 160, size: 160, keyframe: true };
/// let at = b.push(TrackKind::Audio, &[s]).unwrap(); // the chunk's bytes go at `at` in mdat's data
/// assert_eq!(at, 0);
/// let layout = b.finish().unwrap();
/// assert_eq!(layout.len(), layout.header.len() as u64 + 160);
/// ```
#[derive(Debug)]
pub struct Builder {
    video: Option<Track>,
    audio: Option<Track>,
    data_len: u64,
    samples: u64,
}

impl Builder {
    /// A file of these tracks with these timescales (a track without a timescale is left out).
    pub fn new(tracks: &Tracks, video_timescale: Option<u32>, audio_timescale: Option<u32>) -> Builder {
        let track = |t: &Option<TrackInfo>, ts: Option<u32>| Some(Track::new(t.clone()?, ts?));
        Builder {
            video: track(&tracks.video, video_timescale),
            audio: track(&tracks.audio, audio_timescale),
            data_len: 0,
            samples: 0,
        }
    }

    /// Appends a chunk of `kind`'s samples, in decode order, whose data follows one another in
    /// the file; returns where the chunk's data starts, from the start of mdat's data. An empty
    /// chunk is skipped.
    pub fn push(&mut self, kind: TrackKind, samples: &[ChunkSample]) -> Result<u64, ProgressiveError> {
        let at = self.data_len;
        if samples.is_empty() {
            return Ok(at);
        }
        self.samples += samples.len() as u64;
        if self.samples > MAX_SAMPLES {
            return Err(ProgressiveError::TooManySamples);
        }
        let track = match kind {
            TrackKind::Video => self.video.as_mut(),
            TrackKind::Audio => self.audio.as_mut(),
        }
        .ok_or(ProgressiveError::NoTrack(kind))?;
        for s in samples {
            track.push(s);
            self.data_len += u64::from(s.size);
        }
        track.chunks.push((at, samples.len() as u32));
        Ok(at)
    }

    /// Samples pushed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Bytes of media data pushed so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The header (ftyp, moov, mdat's header). Tracks without samples are left out.
    pub fn finish(self) -> Result<Layout, ProgressiveError> {
        let tracks: Vec<(u32, &Track)> = [(VIDEO_ID, &self.video), (AUDIO_ID, &self.audio)]
            .into_iter()
            .filter_map(|(id, t)| t.as_ref().filter(|t| !t.sizes.is_empty()).map(|t| (id, t)))
            .collect();
        if tracks.is_empty() {
            return Err(ProgressiveError::Empty);
        }
        let mut out = BytesMut::new();
        let opus = self
            .audio
            .as_ref()
            .is_some_and(|a| matches!(a.info, TrackInfo::Audio { codec: crate::AudioCodec::Opus, .. }));
        bx(&mut out, b"ftyp", |o| {
            o.put_slice(b"isom");
            o.put_u32(0x200);
            for b in [b"isom", b"iso2", b"avc1", b"mp41"] {
                o.put_slice(b);
            }
            if opus {
                o.put_slice(b"Opus");
            }
        });
        // Chunk offsets are written relative to mdat's data, then moved by the header's
        // length once it is known (the moov's size does not depend on their values).
        let total_guess = self.data_len + (out.len() as u64) + MDAT_HEADER_LEN;
        let mut entries = Vec::new();
        for (id, t) in &tracks {
            entries.push((*id, t, sample_entry_of(t)?));
        }
        // co64 when any offset may pass 32 bits: judged with a moov of the most bytes it can
        // take (every table 12 bytes a sample or less), which costs nothing when it is small.
        let table_bound: u64 = tracks.iter().map(|(_, t)| t.sizes.len() as u64 * 32 + 4096).sum();
        let co64 = total_guess + table_bound > u64::from(u32::MAX);
        let movie_duration = tracks
            .iter()
            .map(|(_, t)| crate::rescale(t.duration() as i64, t.timescale, MOVIE_TIMESCALE))
            .max()
            .unwrap_or(0) as u64;
        let mut patches = Vec::new();
        bx(&mut out, b"moov", |o| {
            let v1 = movie_duration > u64::from(u32::MAX);
            full(o, b"mvhd", u8::from(v1), 0, |o| {
                times(o, v1, MOVIE_TIMESCALE, movie_duration);
                o.put_u32(0x0001_0000); // rate
                o.put_u16(0x0100); // volume
                o.put_slice(&[0; 10]);
                for m in MATRIX {
                    o.put_u32(m);
                }
                o.put_slice(&[0; 24]);
                o.put_u32(AUDIO_ID + 1); // next_track_ID
            });
            for (id, t, entry) in &entries {
                trak(o, *id, t, entry, co64, &mut patches);
            }
        });
        let header_len = out.len() as u64 + MDAT_HEADER_LEN;
        for (at, id) in patches {
            let Some((_, t)) = tracks.iter().find(|(i, _)| *i == id) else { continue };
            let mut pos = at;
            for (offset, _) in &t.chunks {
                let v = offset + header_len;
                if co64 {
                    out[pos..pos + 8].copy_from_slice(&v.to_be_bytes());
                    pos += 8;
                } else {
                    out[pos..pos + 4].copy_from_slice(&(v as u32).to_be_bytes());
                    pos += 4;
                }
            }
        }
        out.put_u32(1);
        out.put_slice(b"mdat");
        out.put_u64(MDAT_HEADER_LEN + self.data_len);
        Ok(Layout { header: out.freeze(), data_len: self.data_len, samples: self.samples })
    }
}

fn sample_entry_of(t: &Track) -> Result<BytesMut, ProgressiveError> {
    let mut e = BytesMut::new();
    sample_entry(&mut e, &t.info)?;
    Ok(e)
}

/// creation and modification times (zero), then the timescale and duration, in version 0 or 1.
fn times(o: &mut BytesMut, v1: bool, timescale: u32, duration: u64) {
    if v1 {
        o.put_slice(&[0; 16]);
        o.put_u32(timescale);
        o.put_u64(duration);
    } else {
        o.put_slice(&[0; 8]);
        o.put_u32(timescale);
        o.put_u32(duration as u32);
    }
}

/// One trak; `patches` gets (offset of its first chunk offset entry, track id).
fn trak(out: &mut BytesMut, id: u32, t: &Track, entry: &[u8], co64: bool, patches: &mut Vec<(usize, u32)>) {
    let video = t.info.kind() == TrackKind::Video;
    let (w, h) = dimensions(&t.info).unwrap_or((0, 0));
    let duration = t.duration();
    let track_movie_duration = crate::rescale(duration as i64, t.timescale, MOVIE_TIMESCALE).max(0) as u64;
    bx(out, b"trak", |o| {
        let v1 = track_movie_duration > u64::from(u32::MAX);
        full(o, b"tkhd", u8::from(v1), 3, |o| {
            if v1 {
                o.put_slice(&[0; 16]);
                o.put_u32(id);
                o.put_u32(0);
                o.put_u64(track_movie_duration);
            } else {
                o.put_slice(&[0; 8]);
                o.put_u32(id);
                o.put_u32(0);
                o.put_u32(track_movie_duration as u32);
            }
            o.put_slice(&[0; 8]);
            o.put_u16(0); // layer
            o.put_u16(0); // alternate_group
            o.put_u16(if video { 0 } else { 0x0100 }); // volume
            o.put_u16(0);
            for m in MATRIX {
                o.put_u32(m);
            }
            o.put_u32(w << 16);
            o.put_u32(h << 16);
        });
        bx(o, b"mdia", |o| {
            let v1 = duration > u64::from(u32::MAX);
            full(o, b"mdhd", u8::from(v1), 0, |o| {
                times(o, v1, t.timescale, duration);
                o.put_u16(0x55c4); // language "und"
                o.put_u16(0);
            });
            full(o, b"hdlr", 0, 0, |o| {
                o.put_u32(0);
                o.put_slice(if video { b"vide" } else { b"soun" });
                o.put_slice(&[0; 12]);
                o.put_slice(if video { b"VideoHandler\0" } else { b"SoundHandler\0" });
            });
            bx(o, b"minf", |o| {
                if video {
                    full(o, b"vmhd", 0, 1, |o| o.put_slice(&[0; 8]));
                } else {
                    full(o, b"smhd", 0, 0, |o| o.put_u32(0));
                }
                bx(o, b"dinf", |o| {
                    full(o, b"dref", 0, 0, |o| {
                        o.put_u32(1);
                        full(o, b"url ", 0, 1, |_| {});
                    })
                });
                bx(o, b"stbl", |o| stbl(o, id, t, entry, co64, patches));
            });
        });
    });
}

fn stbl(o: &mut BytesMut, id: u32, t: &Track, entry: &[u8], co64: bool, patches: &mut Vec<(usize, u32)>) {
    full(o, b"stsd", 0, 0, |o| {
        o.put_u32(1);
        o.put_slice(entry);
    });
    // 8.6.1.2
    let stts = t.stts();
    full(o, b"stts", 0, 0, |o| {
        o.put_u32(stts.len() as u32);
        for (n, d) in &stts {
            o.put_u32(*n);
            o.put_u32(*d);
        }
    });
    // 8.6.1.3: version 1 when an offset is negative.
    if t.ctts.iter().any(|(_, c)| *c != 0) {
        let signed = t.ctts.iter().any(|(_, c)| *c < 0);
        full(o, b"ctts", u8::from(signed), 0, |o| {
            o.put_u32(t.ctts.len() as u32);
            for (n, c) in &t.ctts {
                o.put_u32(*n);
                o.put_i32(*c);
            }
        });
    }
    // 8.6.2: absent means every sample is a sync sample.
    if t.stss.len() < t.sizes.len() {
        full(o, b"stss", 0, 0, |o| {
            o.put_u32(t.stss.len() as u32);
            for n in &t.stss {
                o.put_u32(*n);
            }
        });
    }
    // 8.7.3.2
    full(o, b"stsz", 0, 0, |o| {
        o.put_u32(0);
        o.put_u32(t.sizes.len() as u32);
        for s in &t.sizes {
            o.put_u32(*s);
        }
    });
    // 8.7.4: runs of chunks with the same number of samples.
    let mut stsc: Vec<(u32, u32)> = Vec::new();
    for (i, (_, n)) in t.chunks.iter().enumerate() {
        if stsc.last().is_none_or(|(_, last)| last != n) {
            stsc.push((i as u32 + 1, *n));
        }
    }
    full(o, b"stsc", 0, 0, |o| {
        o.put_u32(stsc.len() as u32);
        for (first, n) in &stsc {
            o.put_u32(*first);
            o.put_u32(*n);
            o.put_u32(1); // sample_description_index
        }
    });
    // 8.7.5
    full(o, if co64 { b"co64" } else { b"stco" }, 0, 0, |o| {
        o.put_u32(t.chunks.len() as u32);
        patches.push((o.len(), id));
        let width = if co64 { 8 } else { 4 };
        o.put_bytes(0, t.chunks.len() * width);
    });
}

/// A built header and the length of the data that follows it.
#[derive(Debug, Clone)]
pub struct Layout {
    /// ftyp, moov, and mdat's header: the file's first bytes.
    pub header: Bytes,
    /// Bytes of mdat's data after the header, as the chunks were pushed.
    pub data_len: u64,
    /// Samples in the tables.
    pub samples: u64,
}

impl Layout {
    /// Bytes of the whole file.
    pub fn len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }

    /// Always false: a layout holds at least one sample.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{AudioCodec, VideoCodec, h264, mp4};

    fn tracks() -> Tracks {
        let sps = Bytes::from_static(&[
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
            0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
        ]);
        let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
        Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: h264::build_avcc(&[sps], &[pps]).unwrap(),
                clock_rate: 90_000,
            }),
            audio: Some(TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48_000,
                channels: 2,
                clock_rate: 48_000,
            }),
            metadata: None,
        }
    }

    /// Video at 25 fps with B-frames (I P B B ...) and AAC frames, interleaved a chunk per
    /// track per "part"; the data is each sample's number repeated, so the reader's frames
    /// show which bytes went where.
    #[test]
    fn reads_back_with_every_sample_in_place() {
        let mut b = Builder::new(&tracks(), Some(90_000), Some(48_000));
        let mut data = Vec::new();
        let (mut vn, mut an) = (0i64, 0i64);
        let mut expect_v = Vec::new();
        let mut expect_a = Vec::new();
        for _part in 0..4 {
            let video: Vec<ChunkSample> = (0..5)
                .map(|i| {
                    let n = vn + i;
                    let cts = [7200, 14_400, 3600, 3600, 10_800][i as usize];
                    ChunkSample { dts: n * 3600, cts, duration: 3600, size: 10 + n as u32, keyframe: n % 10 == 0 }
                })
                .collect();
            vn += 5;
            let audio: Vec<ChunkSample> = (0..9)
                .map(|i| ChunkSample { dts: (an + i) * 1024, cts: 0, duration: 1024, size: 7, keyframe: true })
                .collect();
            an += 9;
            let at = b.push(TrackKind::Video, &video).unwrap();
            assert_eq!(at, data.len() as u64);
            for s in &video {
                data.extend(std::iter::repeat_n(s.size as u8, s.size as usize));
                expect_v.push((s.dts, s.dts + s.cts, s.keyframe, s.size as usize));
            }
            let at = b.push(TrackKind::Audio, &audio).unwrap();
            assert_eq!(at, data.len() as u64);
            for s in &audio {
                data.extend(std::iter::repeat_n(0xaa, s.size as usize));
                expect_a.push((s.dts, s.dts, true, s.size as usize));
            }
        }
        let layout = b.finish().unwrap();
        assert_eq!(layout.data_len, data.len() as u64);
        assert_eq!(layout.samples, 20 + 36);
        let mut file = layout.header.to_vec();
        assert_eq!(&file[file.len() - 12..file.len() - 8], b"mdat");
        file.extend_from_slice(&data);
        assert_eq!(file.len() as u64, layout.len());
        let tracks = mp4::read_file(&Bytes::from(file)).unwrap();
        assert_eq!(tracks.len(), 2);
        for t in &tracks {
            let got: Vec<_> = t.frames.iter().map(|f| (f.dts, f.pts, f.keyframe, f.data.len())).collect();
            match t.info.kind() {
                TrackKind::Video => {
                    assert_eq!(got, expect_v);
                    for f in &t.frames {
                        assert!(f.data.iter().all(|b| *b as usize == f.data.len()), "video data in place");
                    }
                }
                TrackKind::Audio => assert_eq!(got, expect_a),
            }
        }
    }

    #[test]
    fn decode_times_that_go_back_still_advance() {
        let mut b = Builder::new(&tracks(), Some(90_000), None);
        let s = |dts| ChunkSample { dts, cts: 0, duration: 3600, size: 1, keyframe: true };
        b.push(TrackKind::Video, &[s(0), s(3600), s(3000), s(10_800)]).unwrap();
        let t = b.video.as_ref().unwrap();
        // 3600 then back to 3000: placed one tick later, the next time caught up.
        assert_eq!(t.stts(), vec![(1, 3600), (1, 1), (1, 7199), (1, 3600)]);
        assert!(matches!(b.push(TrackKind::Audio, &[s(0)]), Err(ProgressiveError::NoTrack(TrackKind::Audio))));
        assert_eq!(Builder::new(&tracks(), None, None).finish().unwrap_err(), ProgressiveError::Empty);
    }

    /// Past 4 GiB the chunk offsets are 64-bit (co64) and the durations too (version 1).
    #[test]
    fn offsets_past_four_gib_use_co64() {
        let mut b = Builder::new(&tracks(), Some(90_000), None);
        let big = |dts| ChunkSample { dts, cts: 0, duration: 90_000, size: 3_000_000_000, keyframe: true };
        b.push(TrackKind::Video, &[big(0)]).unwrap();
        let second = b.push(TrackKind::Video, &[big(50_000 * 90_000)]).unwrap();
        assert_eq!(second, 3_000_000_000);
        let layout = b.finish().unwrap();
        let h = &layout.header;
        let at = h.windows(4).position(|w| w == b"co64").expect("co64");
        assert!(!h.windows(4).any(|w| w == b"stco"));
        let entry = |i: usize| u64::from_be_bytes(h[at + 12 + i * 8..at + 20 + i * 8].try_into().unwrap());
        assert_eq!(entry(0), h.len() as u64);
        assert_eq!(entry(1), h.len() as u64 + 3_000_000_000);
        // 50 001 s at 90 kHz does not fit 32 bits: mdhd is version 1.
        let mdhd = h.windows(4).position(|w| w == b"mdhd").unwrap();
        assert_eq!(h[mdhd + 4], 1);
        assert_eq!(layout.len(), h.len() as u64 + 6_000_000_000);
    }

    #[test]
    fn too_many_samples() {
        let mut b = Builder::new(&tracks(), None, Some(48_000));
        let chunk = vec![ChunkSample { dts: 0, cts: 0, duration: 1024, size: 1, keyframe: true }; 1 << 20];
        for _ in 0..16 {
            b.push(TrackKind::Audio, &chunk).unwrap();
        }
        assert_eq!(b.push(TrackKind::Audio, &chunk[..1]), Err(ProgressiveError::TooManySamples));
    }
}

/// What a day costs: `cargo test --release -p ferrocast-media mp4_progressive::bench -- --ignored
/// --nocapture` (figures for BENCHMARKS.md; no assertion on time).
#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore]
    fn a_day_at_25_fps_with_aac() {
        let tracks = tests_tracks();
        let began = std::time::Instant::now();
        let mut b = Builder::new(&tracks, Some(90_000), Some(48_000));
        let (mut v, mut a) = (0i64, 0i64);
        // One-second parts: 25 video frames (I P B B ...) and 47 AAC frames each.
        for second in 0..86_400i64 {
            let video: Vec<ChunkSample> = (0..25)
                .map(|i| ChunkSample {
                    dts: (v + i) * 3600,
                    cts: [7200, 14_400, 3600, 3600, 10_800][(i % 5) as usize],
                    duration: 3600,
                    size: 4000 + (i as u32 * 37) % 900,
                    keyframe: i == 0,
                })
                .collect();
            v += 25;
            let n = (second + 1) * 48_000 / 1024 - a;
            let audio: Vec<ChunkSample> = (0..n)
                .map(|i| ChunkSample { dts: (a + i) * 1024, cts: 0, duration: 1024, size: 300, keyframe: true })
                .collect();
            a += n;
            b.push(TrackKind::Video, &video).unwrap();
            b.push(TrackKind::Audio, &audio).unwrap();
        }
        let pushed = began.elapsed();
        let samples = b.samples();
        let layout = b.finish().unwrap();
        eprintln!(
            "a day: {samples} samples, header {} bytes ({:.1} bytes a sample), mdat {} bytes; push {:?}, finish {:?}",
            layout.header.len(),
            layout.header.len() as f64 / samples as f64,
            layout.data_len,
            pushed,
            began.elapsed() - pushed
        );
    }

    fn tests_tracks() -> Tracks {
        use crate::{AudioCodec, VideoCodec, h264};
        let sps = Bytes::from_static(&[
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
            0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
        ]);
        let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
        Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: h264::build_avcc(&[sps], &[pps]).unwrap(),
                clock_rate: 90_000,
            }),
            audio: Some(TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48_000,
                channels: 2,
                clock_rate: 48_000,
            }),
            metadata: None,
        }
    }
}
