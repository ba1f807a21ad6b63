//! Stream paths: `APP/STREAM`, the one name a stream has in every protocol.

/// Longest stream path we accept, in bytes.
pub const MAX_PATH_LEN: usize = 256;

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
}
