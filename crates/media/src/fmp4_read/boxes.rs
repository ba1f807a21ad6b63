//! Box headers and child boxes (ISO/IEC 14496-12 4.2), every size checked against its parent.

use super::{ReadError, malformed};

pub(crate) fn be16(d: &[u8], i: usize) -> Option<u16> {
    d.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

pub(crate) fn be32(d: &[u8], i: usize) -> Option<u32> {
    d.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) fn be64(d: &[u8], i: usize) -> Option<u64> {
    d.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// A box header at the start of `data` (at file offset `at`, for errors): type, header
/// length (8, or 16 with a 64-bit size) and box size; `None` when `data` is too short to
/// hold it. Size 0 ("to the end of the file") is an error here: a caller that allows it
/// (a last mdat) checks for it first. The size is not checked against anything but the
/// header: the caller checks it against the file or the parent box.
pub fn box_header(data: &[u8], at: u64) -> Result<Option<([u8; 4], u64, u64)>, ReadError> {
    let (Some(size), Some(kind)) = (be32(data, 0), data.get(4..8)) else { return Ok(None) };
    let kind: [u8; 4] = [kind[0], kind[1], kind[2], kind[3]];
    let (header, size) = match size {
        // A box "to the end of the file" has no end to check a cut file against.
        0 => return Err(malformed(at, "box size 0 (to the end of the file)")),
        1 => match be64(data, 8) {
            Some(large) => (16, large),
            None => return Ok(None),
        },
        s => (8, u64::from(s)),
    };
    if size < header {
        return Err(malformed(at, "box size smaller than its header"));
    }
    Ok(Some((kind, header, size)))
}

/// The child boxes of a box body at file offset `origin`: (type, body, body's offset).
pub(crate) fn children(data: &[u8], origin: u64) -> impl Iterator<Item = Result<([u8; 4], &[u8], u64), ReadError>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        let at = origin + pos as u64;
        let rest = &data[pos..];
        let r = match box_header(rest, at) {
            Err(_) if be32(rest, 0) == Some(0) => {
                // Inside a box, size 0 runs to the end of the parent.
                rest.get(4..8).map(|k| ([k[0], k[1], k[2], k[3]], 8u64, rest.len() as u64))
            }
            Err(e) => {
                pos = data.len();
                return Some(Err(e));
            }
            Ok(h) => h,
        };
        let Some((kind, header, size)) = r.filter(|(_, _, size)| *size <= rest.len() as u64) else {
            pos = data.len();
            return Some(Err(malformed(at, "box past the end of its parent")));
        };
        pos += size as usize;
        Some(Ok((kind, &rest[header as usize..size as usize], at + header)))
    })
}

/// The first child box of this type: (body, body's offset).
pub(crate) fn child<'a>(data: &'a [u8], origin: u64, kind: &[u8; 4]) -> Result<Option<(&'a [u8], u64)>, ReadError> {
    for c in children(data, origin) {
        let (k, body, at) = c?;
        if &k == kind {
            return Ok(Some((body, at)));
        }
    }
    Ok(None)
}

pub(crate) fn need<'a>(
    data: &'a [u8],
    origin: u64,
    kind: &[u8; 4],
    rule: &'static str,
) -> Result<(&'a [u8], u64), ReadError> {
    child(data, origin, kind)?.ok_or(malformed(origin, rule))
}
