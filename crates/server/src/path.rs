//! Stream paths: `APP/STREAM`, the one name a stream has in every protocol.

/// Longest stream path we accept, in bytes.
pub const MAX_PATH_LEN: usize = 256;

/// First segments nobody may publish under: the HTTP listener serves the API, recordings
/// (VOD) and metrics there, so a stream's HLS and FLV URLs would collide with them.
pub const RESERVED_FIRST_SEGMENTS: [&str; 3] = ["api", "vod", "metrics"];

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Empty app or stream name.
    #[error("empty app or stream name")]
    Empty,
    /// Longer than [`MAX_PATH_LEN`].
    #[error("stream path longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// A character outside `A-Z a-z 0-9 - _ . ~ /`, or a `.`/`..` segment.
    #[error("stream path {0:?} has characters or segments that are not allowed")]
    BadCharacters(String),
    /// Publishing under a first segment of [`RESERVED_FIRST_SEGMENTS`].
    #[error("stream path {0:?} is reserved: nothing may be published under api/, vod/ or metrics/")]
    Reserved(String),
}

impl PathError {
    /// The RTSP status refusing an ANNOUNCE of such a path: 403 Forbidden for a reserved
    /// path (well formed, not allowed), else 400 Bad Request.
    pub fn rtsp_status(&self) -> u16 {
        match self {
            PathError::Reserved(_) => 403,
            _ => 400,
        }
    }
}

/// Validates a path: segments of `[A-Za-z0-9._~-]`, no empty, `.` or `..` segment.
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.~".contains(c);
    let ok = path.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.chars().all(ok_char));
    if !ok {
        return Err(PathError::BadCharacters(path.chars().take(64).collect()));
    }
    Ok(())
}

/// Validates a path someone publishes to: [`validate`], and a first segment outside
/// [`RESERVED_FIRST_SEGMENTS`] (compared exactly: `API/x` and `apix/y` are ordinary paths).
pub fn validate_publish(path: &str) -> Result<(), PathError> {
    validate(path)?;
    let first = path.split('/').next().unwrap_or_default();
    if RESERVED_FIRST_SEGMENTS.contains(&first) {
        return Err(PathError::Reserved(path.chars().take(64).collect()));
    }
    Ok(())
}

/// The path of `rtmp://host/APP/STREAM`: `APP/STREAM`.
pub fn stream_path(app: &str, name: &str) -> Result<String, PathError> {
    let app = app.trim_matches('/');
    let name = name.trim_matches('/');
    if app.is_empty() || name.is_empty() {
        return Err(PathError::Empty);
    }
    let path = format!("{app}/{name}");
    validate(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(stream_path("live", "cam1"), Ok("live/cam1".into()));
        assert_eq!(stream_path("live/", "/a/b"), Ok("live/a/b".into()));
        assert_eq!(stream_path("", "x"), Err(PathError::Empty));
        assert!(matches!(stream_path("live", "../etc"), Err(PathError::BadCharacters(_))));
        assert!(matches!(stream_path("live", "a\r\nX-Injected: 1"), Err(PathError::BadCharacters(_))));
        assert_eq!(stream_path("live", &"x".repeat(300)), Err(PathError::TooLong));
    }

    #[test]
    fn reserved_first_segments_refuse_publish() {
        for path in ["api/x", "vod/cams/a", "metrics/m", "api"] {
            assert_eq!(validate_publish(path), Err(PathError::Reserved(path.into())), "{path}");
            assert_eq!(validate_publish(path).unwrap_err().rtsp_status(), 403);
            assert_eq!(validate(path), Ok(()), "{path}: only publishing is refused");
        }
        for path in ["live/api", "apix/y", "API/x", "cams/vod/metrics"] {
            assert_eq!(validate_publish(path), Ok(()), "{path}");
        }
        assert_eq!(validate_publish("api/../x").unwrap_err().rtsp_status(), 400);
        assert!(validate_publish("api/x").unwrap_err().to_string().contains("reserved"));
    }
}
