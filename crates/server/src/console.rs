//! The web console at `/` (issue 18): one page, built into the binary, that shows the live
//! paths (codec, resolution, bitrate, viewers, with charts of the last minutes), plays each
//! (HLS with hls.js, HTTP-FLV with mpegts.js), lists the sessions with a kick button and
//! plays recordings from a timeline. Everything it shows comes from `/api/v1`.
//!
//! The page, its script and its style are ours and embedded ([`INDEX_HTML`], [`APP_JS`],
//! [`APP_CSS`]), so `/` always answers. The player and chart libraries come from npm
//! (`console/package.json`, installed by `scripts/run` or `cd console && npm ci`) and are
//! served from `[console] dir` (default `console`, relative to the working directory): only
//! the dist files named in [`LIBRARIES`], each at a fixed URL, so no part of a request's URL
//! ever becomes a file name (no traversal), and a file whose real path leaves the directory
//! (a symlink) is refused. When they are missing the page says how to get them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// `[console]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at `/` (and its files under `/console/`).
    pub enabled: bool,
    /// Where `npm ci` installed the console's libraries (`DIR/node_modules/...`); relative
    /// paths are taken from the working directory.
    pub dir: PathBuf,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { enabled: true, dir: PathBuf::from("console") }
    }
}

/// The page at `/`.
pub const INDEX_HTML: &str = include_str!("../../../console/index.html");
/// The page's script, at `/console/app.js`.
pub const APP_JS: &str = include_str!("../../../console/app.js");
/// The page's style, at `/console/app.css`.
pub const APP_CSS: &str = include_str!("../../../console/app.css");

/// One library file the console may serve from `[console] dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Library {
    /// The npm package it comes from.
    pub package: &'static str,
    /// The URL path it is served at.
    pub url: &'static str,
    /// The file, relative to `[console] dir`.
    pub file: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
}

/// Every file served from `[console] dir`; nothing else there is.
pub const LIBRARIES: &[Library] = &[
    Library {
        package: "hls.js",
        url: "/console/lib/hls.min.js",
        file: "node_modules/hls.js/dist/hls.min.js",
        content_type: "text/javascript; charset=utf-8",
    },
    Library {
        package: "mpegts.js",
        url: "/console/lib/mpegts.js",
        file: "node_modules/mpegts.js/dist/mpegts.js",
        content_type: "text/javascript; charset=utf-8",
    },
    Library {
        package: "uplot",
        url: "/console/lib/uPlot.iife.min.js",
        file: "node_modules/uplot/dist/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
    },
    Library {
        package: "uplot",
        url: "/console/lib/uPlot.min.css",
        file: "node_modules/uplot/dist/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
    },
];

/// The largest library file served (read whole into memory per request). The largest today
/// is hls.min.js at about 400 KB; a file past this is not ours.
pub const MAX_LIBRARY_BYTES: u64 = 4 << 20;

/// What to tell an operator whose console has no libraries.
pub const INSTALL_HINT: &str = "the console's player and chart libraries are missing: run ./scripts/run \
     (installs them, then starts the server) or `cd console && npm ci`, or point [console] dir at \
     a directory where `npm ci` was run";

/// Why a library file was not served.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The file is not there (npm ci not run in `[console] dir`).
    #[error("{0} is missing")]
    Missing(PathBuf),
    /// The file's real path is outside `[console] dir` (a symlink out of it).
    #[error("{0} leads outside the console directory")]
    Outside(PathBuf),
    /// The file is larger than [`MAX_LIBRARY_BYTES`].
    #[error("{0} is larger than {MAX_LIBRARY_BYTES} bytes")]
    TooLarge(PathBuf),
    /// Reading it failed.
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The console: its config and the routes it answers.
#[derive(Debug)]
pub struct Console {
    config: ConsoleConfig,
}

/// Security headers of the console's own files: the page may not be framed (a kick button
/// under someone else's page), and loads scripts only from this server. `blob:` workers and
/// media are the players' (hls.js and mpegts.js feed Media Source buffers from workers).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
     media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'";

impl Console {
    /// A console serving libraries from `config.dir`.
    pub fn new(config: ConsoleConfig) -> Arc<Console> {
        Arc::new(Console { config })
    }

    /// Its config.
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// The npm packages whose files are missing from `[console] dir` (logged once at start by
    /// [`Console::warn_if_missing`]).
    pub fn missing_packages(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> =
            LIBRARIES.iter().filter(|l| !self.config.dir.join(l.file).is_file()).map(|l| l.package).collect();
        out.dedup();
        out
    }

    /// Logs one warning when the libraries are missing.
    pub fn warn_if_missing(&self) {
        if !self.config.enabled {
            return;
        }
        let missing = self.missing_packages();
        if !missing.is_empty() {
            warn!(dir = %self.config.dir.display(), missing = ?missing, "console: {INSTALL_HINT}");
        }
    }

    /// Whether `uri_path` is one of the console's URLs (when it is enabled).
    pub fn answers(&self, uri_path: &str) -> bool {
        self.config.enabled && route(uri_path).is_some()
    }

    /// Answers a GET or HEAD of one of the console's URLs; None for any other URL.
    pub async fn respond(&self, method: &Method, uri_path: &str) -> Option<Response> {
        if !self.config.enabled {
            return None;
        }
        let route = route(uri_path)?;
        if method != Method::GET && method != Method::HEAD {
            return Some(secured((StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response()));
        }
        let (content_type, body): (&str, axum::body::Body) = match route {
            Route::Embedded(content_type, text) => (content_type, text.into()),
            Route::Library(lib) => match read_library_blocking(self.config.dir.clone(), lib).await {
                Ok(bytes) => (lib.content_type, bytes.into()),
                Err(e) => {
                    let status = match e {
                        LibraryError::Missing(_) => StatusCode::NOT_FOUND,
                        LibraryError::Outside(_) => StatusCode::FORBIDDEN,
                        LibraryError::TooLarge(_) | LibraryError::Io(..) => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    if !matches!(e, LibraryError::Missing(_)) {
                        warn!("console: {e}");
                    }
                    let text = format!("{} is not available: {INSTALL_HINT}\n", lib.package);
                    return Some(secured((status, text).into_response()));
                }
            },
        };
        let body = if method == Method::HEAD { axum::body::Body::empty() } else { body };
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Some(secured(r))
    }
}

/// What a console URL is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// One of our files, built in.
    Embedded(&'static str, &'static str),
    /// A library file from `[console] dir`.
    Library(&'static Library),
}

/// The route of `uri_path`: an exact match or nothing.
fn route(uri_path: &str) -> Option<Route> {
    match uri_path {
        "/" | "/console" | "/console/" => Some(Route::Embedded("text/html; charset=utf-8", INDEX_HTML)),
        "/console/app.js" => Some(Route::Embedded("text/javascript; charset=utf-8", APP_JS)),
        "/console/app.css" => Some(Route::Embedded("text/css; charset=utf-8", APP_CSS)),
        _ => LIBRARIES.iter().find(|l| l.url == uri_path).map(Route::Library),
    }
}

/// [`read_library`] off the workers that carry live media.
async fn read_library_blocking(dir: PathBuf, lib: &'static Library) -> Result<Vec<u8>, LibraryError> {
    let path = dir.join(lib.file);
    tokio::task::spawn_blocking(move || read_library(&dir, lib))
        .await
        .unwrap_or_else(|e| Err(LibraryError::Io(path, std::io::Error::other(e))))
}

/// Reads `lib` from `dir`, refusing files whose real path leaves `dir` or that are too large.
fn read_library(dir: &Path, lib: &Library) -> Result<Vec<u8>, LibraryError> {
    let path = dir.join(lib.file);
    let (real, root) = match (std::fs::canonicalize(&path), std::fs::canonicalize(dir)) {
        (Ok(real), Ok(root)) => (real, root),
        _ => return Err(LibraryError::Missing(path)),
    };
    if !real.starts_with(&root) {
        return Err(LibraryError::Outside(path));
    }
    let meta = std::fs::metadata(&real).map_err(|e| LibraryError::Io(path.clone(), e))?;
    if !meta.is_file() {
        return Err(LibraryError::Missing(path));
    }
    if meta.len() > MAX_LIBRARY_BYTES {
        return Err(LibraryError::TooLarge(path));
    }
    let bytes = std::fs::read(&real).map_err(|e| LibraryError::Io(path.clone(), e))?;
    // Grown between the check and the read: still capped.
    if bytes.len() as u64 > MAX_LIBRARY_BYTES {
        return Err(LibraryError::TooLarge(path));
    }
    Ok(bytes)
}

/// Adds the console's headers: no caching of a page that changes with the binary or with
/// `npm ci`, no MIME sniffing, the [`CSP`].
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrocast-console-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn with_libraries(tag: &str) -> PathBuf {
        let d = temp_dir(tag);
        for l in LIBRARIES {
            let p = d.join(l.file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("/* {} */", l.package)).unwrap();
        }
        d
    }

    async fn get(console: &Console, path: &str) -> Option<(StatusCode, String)> {
        let r = console.respond(&Method::GET, path).await?;
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    #[test]
    fn only_exact_urls_are_routes() {
        assert!(matches!(route("/"), Some(Route::Embedded(..))));
        assert!(matches!(route("/console/app.js"), Some(Route::Embedded(..))));
        for l in LIBRARIES {
            assert_eq!(route(l.url), Some(Route::Library(l)));
        }
        for bad in [
            "/console/lib/../../Cargo.toml",
            "/console/lib/%2e%2e/%2e%2e/Cargo.toml",
            "/console/lib/",
            "/console/lib/hls.min.js/",
            "/console/lib//hls.min.js",
            "/console/node_modules/hls.js/dist/hls.min.js",
            "/console/package.json",
            "/index.html",
            "/live/cam.flv",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn serves_the_page_and_the_libraries_from_dir() {
        let dir = with_libraries("serves");
        let console = Console::new(ConsoleConfig { enabled: true, dir: dir.clone() });
        assert!(console.missing_packages().is_empty());
        let (status, page) = get(&console, "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("/console/app.js"), "{page}");
        let (status, js) = get(&console, "/console/lib/hls.min.js").await.unwrap();
        assert_eq!((status, js.as_str()), (StatusCode::OK, "/* hls.js */"));
        let r = console.respond(&Method::GET, "/console/lib/uPlot.min.css").await.unwrap();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/css; charset=utf-8");
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(get(&console, "/console/lib/../../etc/passwd").await.is_none());
        let r = console.respond(&Method::POST, "/").await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn missing_libraries_answer_how_to_get_them() {
        let dir = temp_dir("missing");
        let console = Console::new(ConsoleConfig { enabled: true, dir: dir.clone() });
        assert_eq!(console.missing_packages(), ["hls.js", "mpegts.js", "uplot"]);
        let (status, text) = get(&console, "/console/lib/mpegts.js").await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(text.contains("npm ci") && text.contains("scripts/run"), "{text}");
        // The page itself is built in and still answers.
        assert_eq!(get(&console, "/").await.unwrap().0, StatusCode::OK);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_directory_is_refused() {
        let dir = with_libraries("symlink");
        let outside = temp_dir("symlink-outside");
        std::fs::write(outside.join("secret.js"), "secret").unwrap();
        let lib = dir.join(LIBRARIES[0].file);
        std::fs::remove_file(&lib).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.js"), &lib).unwrap();
        let console = Console::new(ConsoleConfig { enabled: true, dir: dir.clone() });
        let (status, text) = get(&console, LIBRARIES[0].url).await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!text.contains("secret"));
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(outside);
    }

    #[tokio::test]
    async fn library_too_large() {
        let dir = with_libraries("large");
        let lib = dir.join(LIBRARIES[1].file);
        std::fs::File::create(&lib).unwrap().set_len(MAX_LIBRARY_BYTES + 1).unwrap();
        let console = Console::new(ConsoleConfig { enabled: true, dir: dir.clone() });
        assert!(matches!(read_library(&dir, &LIBRARIES[1]), Err(LibraryError::TooLarge(_))));
        assert_eq!(get(&console, LIBRARIES[1].url).await.unwrap().0, StatusCode::INTERNAL_SERVER_ERROR);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn disabled_answers_nothing() {
        let console = Console::new(ConsoleConfig { enabled: false, dir: PathBuf::from("console") });
        assert!(!console.answers("/"));
        assert!(get(&console, "/").await.is_none());
    }
}
