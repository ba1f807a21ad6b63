//! Config reload (issue 18): SIGHUP re-reads the file, and `PATCH /api/v1/config/paths/...`
//! edits it; either way the new configuration is checked whole first, and a bad one is
//! refused with the file, line and key ([`crate::config_file::ConfigError`]) while the old
//! settings stay.
//!
//! # What a reload changes
//! - `[paths]`: swapped at once ([`SharedPaths`]). Services read a path's settings when its
//!   stream starts (recording, HLS segmenting, push relays), so a new or changed entry applies
//!   to the next publish of the paths it matches, and a stream whose settings did not change
//!   is untouched: its publisher and readers stay connected. A path given a `source` starts
//!   pulling, a removed source stops, a changed one starts again
//!   ([`crate::source::Sources::apply`]). A live path that now records, or lists a new push
//!   URL, starts its recorder or relay at once; a recorder or relay that a reload no longer
//!   asks for ends with its stream.
//! - `[auth]`: users and permissions ([`crate::auth::Auth::replace`]), for the next request.
//! - `[hooks]`: targets and their settings ([`crate::hooks::Hooks::replace`]), from the next
//!   event.
//!
//! Everything else (listen addresses and ports, `[rtmp]`, `[rtsp]`, `[http]`, `[hub]`,
//! `[hls]`, `[record]`, `[limits]`, `[source]`, `[edge]`, `[api]`, `[console]`, `log_level`,
//! `log_format`) needs a restart: a reload that changes them applies the rest and logs each
//! such key as not applied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config_file::{self, ConfigError, PatchError};
use crate::hooks::Hooks;
use crate::hub::Hub;
use crate::paths::SharedPaths;

/// Top-level sections a reload applies; every other key needs a restart.
pub const RELOADABLE: [&str; 3] = ["paths", "auth", "hooks"];

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Reloadable sections that changed (`paths`, `auth`, `hooks`).
    pub changed: Vec<String>,
    /// Keys that changed but need a restart (dotted), not applied.
    pub need_restart: Vec<String>,
}

/// Why a reload or a patch failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server was started without a config file: nothing to re-read or write back to.
    #[error("the server runs without a config file (start it with --config FILE)")]
    NoFile,
    /// The new configuration was refused; the old settings stay.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// A patch's body was not usable.
    #[error("{0}")]
    Body(String),
    /// Applying failed (the auth settings were refused); the old settings stay.
    #[error("{0}")]
    Apply(String),
    /// The file could not be written; nothing was applied.
    #[error("writing {0}: {1}")]
    Write(PathBuf, String),
}

/// The configuration in force and what a reload swaps.
pub struct Reloader {
    file: Option<PathBuf>,
    /// In force: the file plus the command line's overrides, with reloaded sections swapped.
    current: Mutex<Config>,
    /// As the file said at the last successful load: what a new file is compared with (a
    /// command-line override is no change).
    loaded: Mutex<Config>,
    paths: SharedPaths,
    hub: Arc<Hub>,
    hooks: Arc<Hooks>,
    sources: std::sync::OnceLock<Arc<crate::source::Sources>>,
    /// Called after `[paths]` changed (recordings and push relays of live paths).
    on_paths: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// One reload or patch at a time (a patch reads, edits and writes the file).
    busy: tokio::sync::Mutex<()>,
    /// Counters (metrics).
    pub stats: ReloadStats,
}

/// Counters of reloads (SIGHUP) and API patches.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads and patches applied.
    pub applied: std::sync::atomic::AtomicU64,
    /// Reloads and patches refused (a bad file or body); the old settings stayed.
    pub refused: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("file", &self.file).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reloader {
    /// The reloader of a server started with `config` (read from `file`, if any, then given
    /// the command line's overrides), whose services read `paths`.
    pub fn new(
        config: Config,
        file: Option<PathBuf>,
        paths: SharedPaths,
        hub: Arc<Hub>,
        hooks: Arc<Hooks>,
    ) -> Arc<Reloader> {
        let loaded = file.as_deref().and_then(|f| Config::load(f).ok()).unwrap_or_else(|| config.clone());
        Arc::new(Reloader {
            file,
            current: Mutex::new(config),
            loaded: Mutex::new(loaded),
            paths,
            hub,
            hooks,
            sources: std::sync::OnceLock::new(),
            on_paths: Mutex::new(Vec::new()),
            busy: tokio::sync::Mutex::new(()),
            stats: ReloadStats::default(),
        })
    }

    /// The hooks a reload replaces (their counters are metrics).
    pub fn hooks(&self) -> &Arc<Hooks> {
        &self.hooks
    }

    fn count<T, E>(&self, r: &Result<T, E>) {
        let c = if r.is_ok() { &self.stats.applied } else { &self.stats.refused };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Calls `f` after each reload that changed `[paths]`, once the new table is in force.
    pub fn on_paths_changed(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.on_paths).push(Box::new(f));
    }

    /// The pulled sources a reload of `[paths]` starts and stops (once).
    pub fn set_sources(&self, sources: Arc<crate::source::Sources>) {
        let _ = self.sources.set(sources);
    }

    /// The config file, if the server has one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The configuration in force.
    pub fn current(&self) -> Config {
        lock(&self.current).clone()
    }

    /// Re-reads the file and applies it (SIGHUP). Logs what it did or why not.
    pub async fn reload(&self) -> Result<Applied, ReloadError> {
        let _busy = self.busy.lock().await;
        let file = self.file.as_deref().ok_or(ReloadError::NoFile)?;
        let r = match config_file::load(file) {
            Ok((new, _)) => self.apply(new),
            Err(e) => Err(ReloadError::Invalid(e)),
        };
        self.count(&r);
        match &r {
            Ok(a) => info!(changed = ?a.changed, "config reloaded from {}", file.display()),
            Err(e) => error!("config reload refused, the old settings stay: {e}"),
        }
        r
    }

    /// Sets the keys of `patch` (a JSON object) on `[paths."PATTERN"]`, checked like the
    /// file, applied at once and written back to the file with its comments kept. Gives the
    /// entry's settings as they now are.
    pub async fn patch_path(&self, pattern: &str, patch: &Value) -> Result<Value, ReloadError> {
        let _busy = self.busy.lock().await;
        let r = self.patch_locked(pattern, patch);
        self.count(&r);
        r
    }

    fn patch_locked(&self, pattern: &str, patch: &Value) -> Result<Value, ReloadError> {
        let file = self.file.as_deref().ok_or(ReloadError::NoFile)?;
        let text = std::fs::read_to_string(file).map_err(|e| ReloadError::Write(file.to_owned(), e.to_string()))?;
        let (out, new) = config_file::patch_path(&text, pattern, patch).map_err(|e| match e {
            PatchError::Invalid(mut c) => {
                c.at = None;
                ReloadError::Invalid(c)
            }
            PatchError::Body(b) => ReloadError::Body(b),
            PatchError::File(f) => ReloadError::Apply(format!("{}: {f}", file.display())),
        })?;
        write_atomically(file, &out).map_err(|e| ReloadError::Write(file.to_owned(), e.to_string()))?;
        let applied = self.apply(new)?;
        info!(pattern, changed = ?applied.changed, "config: paths entry set through the API and written to {}", file.display());
        let settings = self.paths.load().entries().find(|(k, _)| *k == pattern).map(|(_, s)| s.clone());
        Ok(
            serde_json::json!({ "pattern": pattern, "settings": redacted(&serde_json::to_value(settings).unwrap_or_default()) }),
        )
    }

    /// Applies what a reload may change from `new` (as the file says); the rest is compared
    /// and logged as needing a restart.
    fn apply(&self, new: Config) -> Result<Applied, ReloadError> {
        let loaded = lock(&self.loaded).clone();
        let mut applied = Applied::default();
        let mut restart = Vec::new();
        diff_keys(&to_json(&loaded), &to_json(&new), "", &mut restart);
        restart.retain(|k| !RELOADABLE.iter().any(|r| k == r || k.starts_with(&format!("{r}."))));
        if new.auth != loaded.auth {
            self.hub.auth.replace(new.auth.clone()).map_err(|e| ReloadError::Apply(format!("auth: {e:#}")))?;
            applied.changed.push("auth".into());
        }
        if new.hooks != loaded.hooks {
            self.hooks.replace(new.hooks.clone()).map_err(|e| ReloadError::Apply(e.to_string()))?;
            applied.changed.push("hooks".into());
        }
        if new.paths != loaded.paths {
            self.paths.replace(new.paths.clone());
            applied.changed.push("paths".into());
            if let Some(sources) = self.sources.get() {
                sources.apply(&new);
            }
            for f in lock(&self.on_paths).iter() {
                f();
            }
        }
        for k in &restart {
            warn!(key = k, "config: changed, but needs a restart: not applied");
        }
        applied.need_restart = restart;
        {
            let mut cur = lock(&self.current);
            cur.paths = new.paths.clone();
            cur.auth = new.auth.clone();
            cur.hooks = new.hooks.clone();
        }
        *lock(&self.loaded) = new;
        Ok(applied)
    }

    /// Reloads on every signal `hup` receives (SIGHUP, installed by the caller as early as
    /// possible: the default action of SIGHUP ends the process).
    #[cfg(unix)]
    pub fn reload_on(self: &Arc<Self>, mut hup: tokio::signal::unix::Signal) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if this.file.is_none() {
                    warn!("SIGHUP: the server runs without a config file; nothing to reload");
                    continue;
                }
                info!("SIGHUP: reloading the config");
                let _ = this.reload().await;
            }
        })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Dotted keys whose values differ between `a` and `b` (objects compared key by key).
fn diff_keys(a: &Value, b: &Value, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                diff_keys(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &p, out);
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// Writes `text` to `file` through a temporary file beside it and a rename: a crash leaves
/// the old file or the new one, never half of one. The file's permissions are kept.
fn write_atomically(file: &Path, text: &str) -> std::io::Result<()> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = file.with_file_name(format!(".{name}.ferrocast-tmp"));
    std::fs::write(&tmp, text)?;
    if let Ok(meta) = std::fs::metadata(file) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Whether a key names a secret: its value is hidden whole.
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "pass" || k.contains("password") || k.contains("secret") || k.contains("token") || k.ends_with("_credentials")
}

/// `v` with passwords and URL credentials hidden (`GET /api/v1/config`, answers, logs):
/// values of secret keys become `"***"` (empty ones stay empty), and every string that holds
/// a URL has its `user:password@` and query values hidden ([`crate::relay::redact`]).
pub fn redacted(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let hidden = match x {
                        Value::String(s) if secret_key(k) && !s.is_empty() => Value::String("***".into()),
                        Value::Null | Value::Bool(_) | Value::Number(_) => x.clone(),
                        _ if secret_key(k) && !x.is_string() => Value::String("***".into()),
                        // A push target's last path segment is its stream key (YouTube,
                        // Twitch): hidden as everywhere else push URLs are shown.
                        Value::Array(a) if k == "push" => Value::Array(
                            a.iter()
                                .map(|u| match u {
                                    Value::String(u) => Value::String(crate::relay::redact_key(u)),
                                    other => redacted(other),
                                })
                                .collect(),
                        ),
                        _ => redacted(x),
                    };
                    (k.clone(), hidden)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redacted).collect()),
        Value::String(s) if s.contains("://") => Value::String(crate::relay::redact(s)),
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_credentials_are_hidden() {
        let v = serde_json::json!({
            "rtsp": {"read_credentials": "u:hunter2", "publish_credentials": ""},
            "users": [{"user": "a", "pass": "hunter2"}],
            "paths": {"cams/a": {"source": "rtsp://admin:hunter2@cam/x", "push": ["rtmp://h/app/k?key=hunter2", "rtmp://a.rtmp.youtube.com/live2/hunter2"]}},
            "hooks": {"targets": [{"url": "http://u:hunter2@h/x"}]},
        });
        let r = redacted(&v).to_string();
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("\"publish_credentials\":\"\"") && r.contains("cam/x"), "{r}");
        assert!(r.contains("rtmp://a.rtmp.youtube.com/live2/***"), "{r}");
    }

    #[test]
    fn diffs_name_leaf_keys() {
        let a = serde_json::json!({"rtmp": {"listen": "0.0.0.0:1935", "chunk_size": 4096}, "paths": {}});
        let b = serde_json::json!({"rtmp": {"listen": "0.0.0.0:1936", "chunk_size": 4096}, "paths": {"x": {}}});
        let mut out = Vec::new();
        diff_keys(&a, &b, "", &mut out);
        assert_eq!(out, ["paths.x", "rtmp.listen"]);
    }

    async fn reloader(text: &str) -> (Arc<Reloader>, PathBuf, SharedPaths) {
        let dir = std::env::temp_dir().join(format!("ferrocast-reload-{:016x}", crate::rtsp::random_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.toml");
        std::fs::write(&file, text).unwrap();
        let config = Config::load(&file).unwrap();
        let paths = SharedPaths::new(config.paths.clone());
        let hub = Hub::new(config.hub.clone());
        let hooks = Hooks::new(config.hooks.clone()).unwrap();
        (Reloader::new(config, Some(file.clone()), paths.clone(), hub, hooks), file, paths)
    }

    #[tokio::test]
    async fn reload_applies_paths_and_refuses_a_bad_file() {
        let (r, file, paths) = reloader("# mine\n[paths.\"a\"]\nrecord = false\n").await;
        std::fs::write(&file, "[paths.\"a\"]\nrecord = true\n[rtmp]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let applied = r.reload().await.unwrap();
        assert_eq!(applied.changed, ["paths"]);
        assert_eq!(applied.need_restart, ["rtmp.listen"]);
        assert!(paths.get("a").record);
        std::fs::write(&file, "[paths.\"a\"]\nrecord = false\n\n[paths.\"b\"]\nrecrod = true\n").unwrap();
        let e = r.reload().await.unwrap_err().to_string();
        assert!(e.contains(":5:1") && e.contains("paths.b.recrod") && e.contains("f.toml"), "{e}");
        assert!(paths.get("a").record, "the old settings stay");
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[tokio::test]
    async fn patch_writes_back_and_applies() {
        let (r, file, paths) = reloader("# keep\n[rtmp]\nchunk_size = 4096 # mine\n").await;
        let v = r.patch_path("cams/*", &serde_json::json!({"record": true})).await.unwrap();
        assert_eq!(v["settings"]["record"], true);
        assert!(paths.get("cams/x").record);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# keep\n[rtmp]\nchunk_size = 4096 # mine\n") && text.contains("[paths.\"cams/*\"]"),
            "{text}"
        );
        let e = r.patch_path("cams/*", &serde_json::json!({"record": 3})).await.unwrap_err();
        assert!(matches!(e, ReloadError::Invalid(_)) && e.to_string().contains("paths.\"cams/*\".record"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "a refused patch writes nothing");
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}
