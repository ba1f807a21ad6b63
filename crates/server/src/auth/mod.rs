//! Authentication and authorization (issue 18): who may publish, read, play back recordings,
//! use the API and read the metrics, per path pattern.
//!
//! Decisions, in order: an address that failed too often is refused outright (RTSP 403,
//! HTTP 403, RTMP refusal) until its block ends; a `[[auth.users]]` entry that matches the
//! credentials (or is the `any` user), allows the client's address and has a permission for
//! the action and path allows; else `auth.http_url`, when set, decides (2xx allows, cached
//! briefly, a timeout denies). With no users and no `http_url` everything is allowed, and the
//! API keeps its own rule: operations that change anything answer loopback clients only.
//!
//! Credentials are compared in constant time and never logged, shown by the API or used as
//! metrics labels. RTSP Digest needs the plain password: users with a hashed one can use
//! RTSP Basic only, and with `http_url` RTSP offers Basic only.

mod callback;
pub mod http;
pub mod jwt;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ferrocast_rtsp::auth::DigestAnswer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use users::{Action, IpNet, Password, PermissionConfig, UserConfig};
use users::{User, allowed};

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `[[auth.users]]`.
    pub users: Vec<UserConfig>,
    /// An external decision: POST JSON `{action, path, protocol, ip, user, pass, query, id}`
    /// to this `http://` URL; a 2xx answer allows. "" leaves it off.
    pub http_url: String,
    /// How long `http_url` may take to answer; no answer in time denies.
    pub http_timeout_ms: u64,
    /// How long an answer of `http_url` is reused for the same request.
    pub http_cache_ms: u64,
    /// Refusals of requests with credentials (wrong, or without the permission) from one
    /// address this many times within `fail_window_ms` block it.
    pub fail_limit: u32,
    /// The window over which failures are counted.
    pub fail_window_ms: u64,
    /// How long a blocked address is refused without a check.
    pub block_ms: u64,
    /// Offer RTSP Digest (MD5 and SHA-256) beside Basic. Digest needs the plain password.
    pub rtsp_digest: bool,
    /// JWTs signed by a key of this JWK Set (`http://` URL) carry their permissions in
    /// `jwt_claim`. "" leaves it off.
    pub jwt_jwks_url: String,
    /// The claim holding a token's permissions, shaped as a user's `permissions`.
    pub jwt_claim: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: Vec::new(),
            http_url: String::new(),
            http_timeout_ms: 3000,
            http_cache_ms: 5000,
            fail_limit: 10,
            fail_window_ms: 60_000,
            block_ms: 60_000,
            rtsp_digest: true,
            jwt_jwks_url: String::new(),
            jwt_claim: "ferrocast_permissions".into(),
        }
    }
}

impl AuthConfig {
    /// Checks the settings; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        Compiled::new(self.clone()).map(|_| ())
    }
}

/// Counters (metrics).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Requests refused: no or wrong credentials, or no permission.
    pub denied: AtomicU64,
    /// Requests refused without a check because their address failed too often.
    pub blocked: AtomicU64,
    /// Of `denied`, per protocol: RTMP.
    pub denied_rtmp: AtomicU64,
    /// Of `denied`, per protocol: RTSP.
    pub denied_rtsp: AtomicU64,
    /// Of `denied`, per protocol: HTTP (HLS, HTTP-FLV, playback, API, metrics).
    pub denied_http: AtomicU64,
    /// Calls to `http_url` that failed (no answer in time, no connection): each denied.
    pub http_errors: AtomicU64,
}

/// The protocol a request came by (the `protocol` of the `http_url` body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// RTMP.
    Rtmp,
    /// RTSP.
    Rtsp,
    /// HLS.
    Hls,
    /// HTTP-FLV.
    HttpFlv,
    /// Other HTTP: playback, API, metrics, the console.
    Http,
}

impl Via {
    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Rtmp => "rtmp",
            Via::Rtsp => "rtsp",
            Via::Hls => "hls",
            Via::HttpFlv => "http-flv",
            Via::Http => "http",
        }
    }
}

/// Credentials a client presented.
#[derive(Clone, Default)]
pub enum Presented {
    /// None.
    #[default]
    None,
    /// A user and password (RTMP query, RTSP or HTTP Basic, HTTP `?user=&pass=`).
    Password {
        /// The user.
        user: String,
        /// The password.
        pass: String,
    },
    /// A bearer token (`?token=`, `?jwt=`, `Authorization: Bearer`).
    Token(String),
    /// An RTSP Digest answer (its nonce checked by the RTSP session) and the request URI.
    Digest(Box<DigestAnswer>, String),
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::None => f.write_str("None"),
            Presented::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Presented::Token(_) => f.write_str("Token(..)"),
            Presented::Digest(d, _) => write!(f, "Digest {{ user: {:?}, .. }}", d.username),
        }
    }
}

impl Presented {
    fn is_some(&self) -> bool {
        !matches!(self, Presented::None)
    }

    /// The user name presented, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Presented::Password { user, .. } => Some(user),
            Presented::Digest(d, _) => Some(&d.username),
            _ => None,
        }
    }
}

/// One request to decide.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// What it would do.
    pub action: Action,
    /// The stream path ("" for the API and metrics).
    pub path: String,
    /// How it came.
    pub via: Via,
    /// The client's address.
    pub ip: IpAddr,
    /// Its credentials.
    pub presented: Presented,
    /// The query of its URL (for `http_url`), as sent.
    pub query: String,
    /// The session id, where known.
    pub id: Option<String>,
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the user name that was proven, if any.
    Allow(Option<String>),
    /// Refused: no credentials, wrong ones, or no permission (RTSP and HTTP: 401 with a
    /// challenge).
    Unauthorized,
    /// Refused without a check: the address failed too often (RTSP and HTTP: 403).
    Blocked,
}

impl Verdict {
    /// True for [`Verdict::Allow`].
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

/// Most addresses whose failures are tracked; past it expired entries are forgotten, then the
/// oldest windows of addresses not blocked; an address blocked now is never forgotten (when
/// every entry is one, new addresses are not tracked). Bounds the memory a scan from many
/// addresses can take.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;
/// Most password checks remembered as good (argon2 is slow by design: an HLS player sends
/// its credentials with every request).
const MAX_VERIFIED: usize = 4096;
/// How long a password check waits for one of the argon2 slots before it is refused.
const ARGON2_WAIT: Duration = Duration::from_secs(2);

/// Most argon2 verifications at once (each takes about 19 MiB and a core for a while): twice
/// the cores, at least 2.
fn argon2_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2).max(2)
}

/// The key an address's failures are counted under: IPv4 addresses (and IPv4-mapped IPv6
/// ones) alone, IPv6 addresses by their /64 (one host usually holds a whole /64).
fn failure_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    first: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// The settings, compiled.
#[derive(Debug)]
struct Compiled {
    config: Arc<AuthConfig>,
    users: Vec<User>,
}

impl Compiled {
    fn new(config: AuthConfig) -> anyhow::Result<Compiled> {
        anyhow::ensure!(config.users.len() <= users::MAX_USERS, "auth.users: more than {} users", users::MAX_USERS);
        let users = config
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| User::compile(i, u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        if !config.http_url.is_empty() {
            crate::http_client::check_url(&config.http_url).map_err(|e| anyhow::anyhow!("auth.http_url: {e}"))?;
        }
        if !config.jwt_jwks_url.is_empty() {
            crate::http_client::check_url(&config.jwt_jwks_url)
                .map_err(|e| anyhow::anyhow!("auth.jwt_jwks_url: {e}"))?;
            anyhow::ensure!(!config.jwt_claim.is_empty(), "auth.jwt_claim: empty");
        }
        for (key, v) in [
            ("auth.http_timeout_ms", config.http_timeout_ms),
            ("auth.fail_window_ms", config.fail_window_ms),
            ("auth.block_ms", config.block_ms),
        ] {
            anyhow::ensure!(v > 0, "{key} must be positive");
        }
        anyhow::ensure!(config.fail_limit > 0, "auth.fail_limit must be positive");
        Ok(Compiled { config: Arc::new(config), users })
    }

    fn enabled(&self) -> bool {
        !self.users.is_empty() || !self.config.http_url.is_empty() || !self.config.jwt_jwks_url.is_empty()
    }
}

/// The server's authorization, on the hub; replaced whole on a config reload.
#[derive(Debug)]
pub struct Auth {
    compiled: RwLock<Arc<Compiled>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Password checks that succeeded: SHA-256 of (user, stored form, password).
    verified: Mutex<HashMap<[u8; 32], ()>>,
    callback: callback::Cache,
    jwks: jwt::Jwks,
    /// Slots for argon2 verifications (see [`argon2_slots`]).
    argon2: tokio::sync::Semaphore,
    /// How long a check waits for an argon2 slot.
    argon2_wait: Duration,
    /// argon2 verifications run (tests).
    argon2_runs: AtomicU64,
    /// Counters.
    pub stats: AuthStats,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            compiled: RwLock::new(Arc::new(Compiled { config: Arc::default(), users: Vec::new() })),
            failures: Mutex::default(),
            verified: Mutex::default(),
            callback: callback::Cache::default(),
            jwks: jwt::Jwks::default(),
            argon2: tokio::sync::Semaphore::new(argon2_slots()),
            argon2_wait: ARGON2_WAIT,
            argon2_runs: AtomicU64::new(0),
            stats: AuthStats::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Auth {
    /// Authorization by `config` (checked: a bad one gives the defaults; run
    /// [`AuthConfig::validate`] first, as [`crate::config::Config::parse`] does).
    pub fn new(config: AuthConfig) -> Arc<Auth> {
        let auth = Auth::default();
        let _ = auth.replace(config);
        Arc::new(auth)
    }

    fn compiled(&self) -> Arc<Compiled> {
        self.compiled.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The settings now.
    pub fn config(&self) -> Arc<AuthConfig> {
        self.compiled().config.clone()
    }

    /// Applies new settings (a reload): checked first; on an error the old ones stay.
    pub fn replace(&self, config: AuthConfig) -> anyhow::Result<()> {
        let compiled = Compiled::new(config)?;
        *self.compiled.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(compiled);
        lock(&self.verified).clear();
        self.callback.clear();
        self.jwks.clear();
        Ok(())
    }

    /// Whether anything is checked (users or `http_url` configured).
    pub fn enabled(&self) -> bool {
        self.compiled().enabled()
    }

    /// How the RTSP server asks for credentials, or None when nothing is checked.
    pub fn rtsp_schemes(&self) -> Option<ferrocast_rtsp::auth::Schemes> {
        let c = self.compiled();
        c.enabled().then(|| ferrocast_rtsp::auth::Schemes {
            digest: c.config.rtsp_digest
                && c.config.http_url.is_empty()
                && c.config.jwt_jwks_url.is_empty()
                && c.users.iter().any(|u| u.pass.plain().is_some()),
            basic: true,
        })
    }

    /// Decides `req`, counting refusals and failures.
    pub async fn check(&self, req: &AuthRequest) -> Verdict {
        let c = self.compiled();
        if !c.enabled() {
            return Verdict::Allow(None);
        }
        let now = Instant::now();
        if self.is_blocked(req.ip, now) {
            self.stats.blocked.fetch_add(1, Ordering::Relaxed);
            self.count_denied(req.via);
            return Verdict::Blocked;
        }
        // A password check that needed argon2 counted a failure before it ran (so concurrent
        // ones from one address meet the block); a later allow takes it back.
        let mut counted = false;
        let verdict = self.check_users(&c, req, &mut counted).await;
        if let Some(v) = verdict {
            if counted {
                self.unfail(&c.config, req.ip);
            }
            return v;
        }
        let allow = |v: Verdict| {
            if counted {
                self.unfail(&c.config, req.ip);
            }
            v
        };
        if let Some(token) = self.token(&c, req) {
            let (url, timeout) = (&c.config.jwt_jwks_url, Duration::from_millis(c.config.http_timeout_ms));
            match self.jwks.permissions(url, timeout, &c.config.jwt_claim, token).await {
                Ok((perms, sub)) if allowed(&perms, req.action, &req.path) => return allow(Verdict::Allow(sub)),
                Ok(_) => tracing::debug!(path = req.path, action = req.action.as_str(), "auth: JWT without permission"),
                Err(e) => tracing::debug!("auth: JWT refused: {e}"),
            }
        }
        if !c.config.http_url.is_empty()
            && !matches!(req.presented, Presented::Digest(..))
            && self.callback.ask(&c.config, req, &self.stats).await
        {
            return allow(Verdict::Allow(req.presented.user().map(str::to_owned)));
        }
        self.count_denied(req.via);
        if req.presented.is_some() && !counted {
            self.failed(&c.config, req.ip, now);
        }
        Verdict::Unauthorized
    }

    /// A JWT to check, when JWTs are on: a token, or a password that is one (RTSP and RTMP
    /// clients put it in the password field).
    fn token<'a>(&self, c: &Compiled, req: &'a AuthRequest) -> Option<&'a str> {
        if c.config.jwt_jwks_url.is_empty() {
            return None;
        }
        match &req.presented {
            Presented::Token(t) => Some(t),
            Presented::Password { pass, .. } if jwt::looks_like_jwt(pass) => Some(pass),
            _ => None,
        }
    }

    /// The users' decision: Some(Allow) when an entry allows, None otherwise.
    /// A named user that proves who it is comes before the `any` user, whatever their order
    /// (a proven user may do more: the API's loopback-only operations).
    async fn check_users(&self, c: &Compiled, req: &AuthRequest, counted: &mut bool) -> Option<Verdict> {
        let mut anyone = false;
        for u in &c.users {
            if !u.ip_allowed(req.ip) || !allowed(&u.permissions, req.action, &req.path) {
                continue;
            }
            if u.is_anyone() {
                if !req.presented.is_some() {
                    return Some(Verdict::Allow(None));
                }
                anyone = true;
                continue;
            }
            let proven = match &req.presented {
                Presented::Password { user, pass } => {
                    users::constant_time_eq(user.as_bytes(), u.name.as_bytes())
                        && self.verify(c, u, pass, req.ip, counted).await
                }
                Presented::Digest(d, uri) => {
                    users::constant_time_eq(d.username.as_bytes(), u.name.as_bytes())
                        && u.pass.plain().is_some_and(|p| d.verify(p, uri))
                }
                _ => false,
            };
            if proven {
                return Some(Verdict::Allow(Some(u.name.clone())));
            }
        }
        anyone.then_some(Verdict::Allow(None))
    }

    /// Checks a password, remembering successes. argon2 runs off the async workers, in one of
    /// a few slots (waiting at most `argon2_wait`, else refused), and only after a failure was
    /// counted against `ip` (once per request: `counted`), so an address that is blocked, or
    /// becomes blocked by its concurrent attempts, runs no more of them.
    async fn verify(&self, c: &Compiled, u: &User, pass: &str, ip: IpAddr, counted: &mut bool) -> bool {
        let Password::Argon2(phc) = &u.pass else { return u.pass.verify(pass) };
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            for part in [u.name.as_bytes(), phc.as_bytes(), pass.as_bytes()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            h.finalize().into()
        };
        if lock(&self.verified).contains_key(&key) {
            return true;
        }
        let now = Instant::now();
        if self.is_blocked(ip, now) {
            return false;
        }
        if !*counted {
            self.failed(&c.config, ip, now);
            *counted = true;
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(self.argon2_wait, self.argon2.acquire()).await else {
            tracing::warn!(%ip, "auth: too many password checks at once; refused");
            return false;
        };
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let (stored, given) = (u.pass.clone(), pass.to_owned());
        let ok = tokio::task::spawn_blocking(move || stored.verify(&given)).await.unwrap_or(false);
        if ok {
            let mut v = lock(&self.verified);
            if v.len() >= MAX_VERIFIED {
                v.clear();
            }
            v.insert(key, ());
        }
        ok
    }

    fn count_denied(&self, via: Via) {
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        let per = match via {
            Via::Rtmp => &self.stats.denied_rtmp,
            Via::Rtsp => &self.stats.denied_rtsp,
            _ => &self.stats.denied_http,
        };
        per.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes back a failure counted before a check that then allowed (and the block it set).
    fn unfail(&self, config: &AuthConfig, ip: IpAddr) {
        if let Some(f) = lock(&self.failures).get_mut(&failure_key(ip)) {
            f.count = f.count.saturating_sub(1);
            if f.count < config.fail_limit {
                f.blocked_until = None;
            }
        }
    }

    fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        lock(&self.failures).get(&failure_key(ip)).and_then(|f| f.blocked_until).is_some_and(|until| now < until)
    }

    /// Counts wrong credentials from `ip`; the `fail_limit`th within the window blocks it.
    fn failed(&self, config: &AuthConfig, ip: IpAddr, now: Instant) {
        let window = Duration::from_millis(config.fail_window_ms);
        let key = failure_key(ip);
        let mut map = lock(&self.failures);
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&key) {
            let blocked = |f: &Failures| f.blocked_until.is_some_and(|u| now < u);
            map.retain(|_, f| blocked(f) || now.duration_since(f.first) < window);
            if map.len() >= MAX_TRACKED_ADDRESSES {
                // Still full of fresh entries: forget the older half of the windows of
                // addresses not blocked; a block is never lifted to make room.
                let mut firsts: Vec<Instant> = map.values().filter(|f| !blocked(f)).map(|f| f.first).collect();
                if firsts.is_empty() {
                    tracing::warn!(%ip, "auth: failure table full of blocked addresses; not tracked");
                    return;
                }
                firsts.sort_unstable();
                let cut = firsts[firsts.len() / 2];
                map.retain(|_, f| blocked(f) || f.first > cut);
            }
        }
        let f = map.entry(key).or_insert(Failures { first: now, count: 0, blocked_until: None });
        if f.blocked_until.is_some_and(|u| now >= u) || now.duration_since(f.first) >= window {
            *f = Failures { first: now, count: 0, blocked_until: None };
        }
        f.count += 1;
        if f.count >= config.fail_limit {
            f.blocked_until = Some(now + Duration::from_millis(config.block_ms));
            tracing::warn!(%ip, failures = f.count, "auth: address blocked after repeated failures");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, pass: &str, perms: &[(Action, Option<&str>)], ips: &[&str]) -> UserConfig {
        UserConfig {
            user: name.into(),
            pass: pass.into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            permissions: perms
                .iter()
                .map(|(a, p)| PermissionConfig { action: *a, path: p.map(str::to_owned) })
                .collect(),
        }
    }

    fn req(action: Action, path: &str, ip: &str, presented: Presented) -> AuthRequest {
        AuthRequest {
            action,
            path: path.into(),
            via: Via::Rtmp,
            ip: ip.parse().unwrap(),
            presented,
            query: String::new(),
            id: None,
        }
    }

    fn pw(user: &str, pass: &str) -> Presented {
        Presented::Password { user: user.into(), pass: pass.into() }
    }

    #[tokio::test]
    async fn users_permissions_ips_and_anyone() {
        let auth = Auth::new(AuthConfig {
            users: vec![
                user("cam", "s3cret", &[(Action::Publish, Some("cams/*"))], &["10.0.0.0/8"]),
                user("any", "", &[(Action::Read, Some("open/**"))], &[]),
            ],
            ..AuthConfig::default()
        });
        let ok = |v: Verdict| v.allowed();
        assert!(ok(auth.check(&req(Action::Publish, "cams/a", "10.1.1.1", pw("cam", "s3cret"))).await));
        assert!(!ok(auth.check(&req(Action::Publish, "cams/a", "192.168.1.1", pw("cam", "s3cret"))).await));
        assert!(!ok(auth.check(&req(Action::Publish, "other/a", "10.1.1.1", pw("cam", "s3cret"))).await));
        assert!(!ok(auth.check(&req(Action::Read, "cams/a", "10.1.1.1", pw("cam", "s3cret"))).await));
        assert!(!ok(auth.check(&req(Action::Publish, "cams/a", "10.1.1.1", pw("cam", "wrong"))).await));
        assert!(!ok(auth.check(&req(Action::Publish, "cams/a", "10.1.1.1", Presented::None)).await));
        assert!(ok(auth.check(&req(Action::Read, "open/x/y", "8.8.8.8", Presented::None)).await));
        assert!(!ok(auth.check(&req(Action::Publish, "open/x", "8.8.8.8", Presented::None)).await));
        assert!(auth.stats.denied.load(Ordering::Relaxed) >= 5);
        // No users: everything allowed.
        let open = Auth::new(AuthConfig::default());
        assert!(!open.enabled());
        assert!(ok(open.check(&req(Action::Api, "", "8.8.8.8", Presented::None)).await));
    }

    #[tokio::test]
    async fn repeated_failures_block_the_address_only() {
        let auth = Auth::new(AuthConfig {
            users: vec![user("u", "p", &[(Action::Read, None)], &[])],
            fail_limit: 3,
            ..AuthConfig::default()
        });
        for _ in 0..3 {
            assert_eq!(auth.check(&req(Action::Read, "a", "10.0.0.1", pw("u", "bad"))).await, Verdict::Unauthorized);
        }
        // Blocked: even the right password is refused without a check.
        assert_eq!(auth.check(&req(Action::Read, "a", "10.0.0.1", pw("u", "p"))).await, Verdict::Blocked);
        assert_eq!(auth.stats.blocked.load(Ordering::Relaxed), 1);
        // Another address is not.
        assert!(auth.check(&req(Action::Read, "a", "10.0.0.2", pw("u", "p"))).await.allowed());
        // Asking without credentials is not a failure.
        for _ in 0..5 {
            auth.check(&req(Action::Read, "a", "10.0.0.3", Presented::None)).await;
        }
        assert!(auth.check(&req(Action::Read, "a", "10.0.0.3", pw("u", "p"))).await.allowed());
    }

    fn argon2_phc(pass: &str) -> String {
        use argon2::password_hash::PasswordHasher;
        let h: argon2::password_hash::phc::PasswordHash =
            argon2::Argon2::default().hash_password_with_salt(pass.as_bytes(), b"0123456789abcdef").unwrap();
        h.to_string()
    }

    /// argon2 runs in a few slots: with none free a check waits a bounded time, then is
    /// refused; an address's concurrent wrong attempts run no more verifications than its
    /// `fail_limit` (each is counted before it runs), and a right password is not counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_is_capped_and_counted_first() {
        assert!(argon2_slots() >= 2);
        let config = AuthConfig {
            users: vec![user("u", &argon2_phc("pw"), &[(Action::Read, None)], &[])],
            fail_limit: 3,
            ..AuthConfig::default()
        };
        let mut auth = Auth::default();
        auth.replace(config).unwrap();
        auth.argon2_wait = Duration::from_millis(50);
        let auth = Arc::new(auth);
        // Every slot taken: refused after the wait, without running argon2.
        let all = auth.argon2.acquire_many(argon2_slots() as u32).await.unwrap();
        let t = Instant::now();
        assert_eq!(auth.check(&req(Action::Read, "a", "10.0.0.9", pw("u", "pw"))).await, Verdict::Unauthorized);
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(auth.argon2_runs.load(Ordering::Relaxed), 0);
        drop(all);
        // A right password: allowed, and its counted attempt taken back.
        for _ in 0..4 {
            lock(&auth.verified).clear();
            assert!(auth.check(&req(Action::Read, "a", "10.0.0.8", pw("u", "pw"))).await.allowed());
        }
        assert_eq!(lock(&auth.failures)[&"10.0.0.8".parse::<IpAddr>().unwrap()].count, 0);
        let runs = auth.argon2_runs.load(Ordering::Relaxed);
        // 20 wrong ones at once from one address: at most fail_limit verifications.
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.check(&req(Action::Read, "a", "10.0.0.1", pw("u", "bad"))).await })
            })
            .collect();
        for t in tasks {
            assert!(!t.await.unwrap().allowed());
        }
        assert!(auth.argon2_runs.load(Ordering::Relaxed) - runs <= 3);
        assert!(auth.is_blocked("10.0.0.1".parse().unwrap(), Instant::now()));
    }

    #[test]
    fn auth_failure_keys_group_ipv6_by_64() {
        let k = |s: &str| failure_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
    }

    /// A full failure table forgets expired and unblocked entries, never a blocked one; full
    /// of blocked ones, it tracks no new address rather than lift a block. An IPv6 /64 is
    /// blocked as one.
    #[test]
    fn auth_full_failure_table_keeps_blocks() {
        let config = AuthConfig { fail_limit: 2, ..AuthConfig::default() };
        let auth = Auth::default();
        let now = Instant::now();
        let until = Some(now + Duration::from_secs(600));
        let ip = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        {
            let mut map = lock(&auth.failures);
            for i in 0..MAX_TRACKED_ADDRESSES as u32 {
                map.insert(ip(i), Failures { first: now, count: 2, blocked_until: until });
            }
        }
        auth.failed(&config, ip(1 << 20), now);
        assert_eq!(lock(&auth.failures).len(), MAX_TRACKED_ADDRESSES);
        assert!(!lock(&auth.failures).contains_key(&ip(1 << 20)));
        assert!((0..MAX_TRACKED_ADDRESSES as u32).all(|i| auth.is_blocked(ip(i), now)));
        // Half blocked, half counting (fresh): the counting ones make room.
        {
            let mut map = lock(&auth.failures);
            for i in 0..MAX_TRACKED_ADDRESSES as u32 / 2 {
                map.insert(ip(i), Failures { first: now, count: 1, blocked_until: None });
            }
        }
        auth.failed(&config, ip(1 << 20), now);
        assert!(lock(&auth.failures).contains_key(&ip(1 << 20)));
        assert!((MAX_TRACKED_ADDRESSES as u32 / 2..MAX_TRACKED_ADDRESSES as u32).all(|i| auth.is_blocked(ip(i), now)));
        // IPv6: failures from one /64 add up.
        let auth = Auth::default();
        auth.failed(&config, "2001:db8::1".parse().unwrap(), now);
        auth.failed(&config, "2001:db8::2".parse().unwrap(), now);
        assert!(auth.is_blocked("2001:db8::ffff".parse().unwrap(), now));
        assert!(!auth.is_blocked("2001:db8:0:1::1".parse().unwrap(), now));
    }

    #[test]
    fn bad_config_is_refused_and_the_old_one_stays() {
        let auth = Auth::new(AuthConfig { users: vec![user("u", "p", &[], &[])], ..AuthConfig::default() });
        let bad = AuthConfig { users: vec![user("u", "p", &[], &["nope"])], ..AuthConfig::default() };
        let err = auth.replace(bad).unwrap_err().to_string();
        assert!(err.contains("auth.users[0].ips[0]"), "{err}");
        assert_eq!(auth.config().users[0].ips.len(), 0);
        let err = AuthConfig { http_url: "https://x/".into(), ..AuthConfig::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("auth.http_url"), "{err}");
    }
}
