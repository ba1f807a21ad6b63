//! `[[auth.users]]`: users, their password forms (plain, `sha256:HEX`, argon2 PHC strings),
//! the address ranges they may come from, and their permissions over path patterns.

use std::net::IpAddr;

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::paths::PathPattern;

/// What a request would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Publish a stream (RTMP publish, RTSP ANNOUNCE/RECORD).
    Publish,
    /// Read a live stream (RTMP play, RTSP DESCRIBE/SETUP/PLAY, HLS, HTTP-FLV).
    Read,
    /// Play recordings back (RTSP and HTTP playback, VOD files).
    Playback,
    /// Use the HTTP API (`/api/v1/...`).
    Api,
    /// Read the metrics (`/metrics`).
    Metrics,
}

impl Action {
    /// The name used in the config and the `http_url` body.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Read => "read",
            Action::Playback => "playback",
            Action::Api => "api",
            Action::Metrics => "metrics",
        }
    }
}

/// One permission: an action, on paths matching `path` (every path when absent; API and
/// metrics have no path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    /// The action.
    pub action: Action,
    /// A path pattern (`[paths]` rules: exact, `*` within a segment, `**` across segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The user name that stands for everyone when its password is empty.
pub const ANY_USER: &str = "any";

/// Most users in `[auth]`.
pub const MAX_USERS: usize = 1024;
/// Most permissions or address ranges of one user.
pub const MAX_PER_USER: usize = 256;

/// One `[[auth.users]]` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserConfig {
    /// The user name; `any` with an empty `pass` grants its permissions to everyone.
    pub user: String,
    /// The password: plain text, `sha256:HEX` (SHA-256 of the password, 64 hex digits) or an
    /// argon2 PHC string (`$argon2id$v=19$...`). Never shown: serialized redacted.
    #[serde(serialize_with = "redacted")]
    pub pass: String,
    /// Address ranges the user may come from (`10.0.0.0/8`, `::1`, `192.168.1.7`); empty: any.
    pub ips: Vec<String>,
    /// What the user may do.
    pub permissions: Vec<PermissionConfig>,
}

fn redacted<S: Serializer>(pass: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if pass.is_empty() { "" } else { "<redacted>" })
}

/// A stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// None: only for the `any` user.
    Empty,
    /// Plain text (the only form RTSP Digest can check).
    Plain(String),
    /// SHA-256 of the password.
    Sha256([u8; 32]),
    /// An argon2 PHC string, checked by [`argon2`].
    Argon2(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Password::Empty => "Empty",
            Password::Plain(_) => "Plain(..)",
            Password::Sha256(_) => "Sha256(..)",
            Password::Argon2(_) => "Argon2(..)",
        })
    }
}

/// Equality that takes the same time whatever the position of the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    ferrocast_rtsp::auth::constant_time_eq(a, b)
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Password {
    /// Reads a `pass` value.
    pub fn parse(s: &str) -> Result<Password, String> {
        if s.is_empty() {
            return Ok(Password::Empty);
        }
        if let Some(hex) = s.strip_prefix("sha256:") {
            return hex32(hex).map(Password::Sha256).ok_or_else(|| "sha256: needs 64 hex digits".to_owned());
        }
        if s.starts_with("$argon2") {
            argon2::password_hash::phc::PasswordHash::new(s).map_err(|e| format!("not an argon2 PHC string: {e}"))?;
            return Ok(Password::Argon2(s.to_owned()));
        }
        Ok(Password::Plain(s.to_owned()))
    }

    /// Whether `given` is the password. Argon2 is slow by design: call it off the async
    /// workers ([`tokio::task::spawn_blocking`]).
    pub fn verify(&self, given: &str) -> bool {
        match self {
            Password::Empty => false,
            Password::Plain(p) => constant_time_eq(p.as_bytes(), given.as_bytes()),
            Password::Sha256(h) => constant_time_eq(&Sha256::digest(given.as_bytes()), h),
            Password::Argon2(phc) => {
                use argon2::password_hash::PasswordVerifier;
                argon2::password_hash::phc::PasswordHash::new(phc)
                    .is_ok_and(|h| argon2::Argon2::default().verify_password(given.as_bytes(), &h).is_ok())
            }
        }
    }

    /// The plain password, when stored so (RTSP Digest needs it).
    pub fn plain(&self) -> Option<&str> {
        match self {
            Password::Plain(p) => Some(p),
            _ => None,
        }
    }
}

/// An address range: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Reads `10.0.0.0/8`, `fd00::/8`, or one address. Bits set beyond the prefix are
    /// refused (`10.0.0.1/8` is most likely a typo).
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: bad prefix length"))?
            }
        };
        let net = IpNet { addr, prefix };
        if net.masked(addr) != bits(addr) {
            return Err(format!("{s:?}: bits set after the prefix"));
        }
        Ok(net)
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let keep = u32::from(self.prefix);
        let mask = if keep == 0 { 0 } else { u128::MAX << (width - keep) };
        let mask = if width == 32 { mask & 0xffff_ffff } else { mask };
        bits(ip) & mask
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits(self.addr)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// A permission, compiled.
#[derive(Debug, Clone)]
pub struct Permission {
    /// The action.
    pub action: Action,
    /// The paths; None: all.
    pub path: Option<PathPattern>,
}

impl Permission {
    /// Compiles one.
    pub fn compile(p: &PermissionConfig) -> Result<Permission, String> {
        let path = match &p.path {
            None => None,
            Some(s) => Some(PathPattern::parse(s).map_err(|e| e.to_string())?),
        };
        Ok(Permission { action: p.action, path })
    }

    /// Whether it allows `action` on `path`.
    pub fn allows(&self, action: Action, path: &str) -> bool {
        self.action == action && self.path.as_ref().is_none_or(|p| p.matches(path))
    }
}

/// Whether any of `perms` allows `action` on `path`.
pub fn allowed(perms: &[Permission], action: Action, path: &str) -> bool {
    perms.iter().any(|p| p.allows(action, path))
}

/// A user, compiled.
#[derive(Debug, Clone)]
pub struct User {
    /// The name.
    pub name: String,
    /// The password.
    pub pass: Password,
    /// Address ranges; empty: any.
    pub ips: Vec<IpNet>,
    /// Permissions.
    pub permissions: Vec<Permission>,
}

impl User {
    /// Compiles `[[auth.users]]` entry `i`; errors name the key.
    pub fn compile(i: usize, u: &UserConfig) -> Result<User, String> {
        let key = format!("auth.users[{i}]");
        if u.user.is_empty() {
            return Err(format!("{key}.user: empty"));
        }
        let pass = Password::parse(&u.pass).map_err(|e| format!("{key}.pass: {e}"))?;
        if pass == Password::Empty && u.user != ANY_USER {
            return Err(format!("{key}.pass: empty (only user \"{ANY_USER}\" may have no password)"));
        }
        if u.ips.len() > MAX_PER_USER || u.permissions.len() > MAX_PER_USER {
            return Err(format!("{key}: more than {MAX_PER_USER} ips or permissions"));
        }
        let ips = u
            .ips
            .iter()
            .enumerate()
            .map(|(j, s)| IpNet::parse(s).map_err(|e| format!("{key}.ips[{j}]: {e}")))
            .collect::<Result<_, _>>()?;
        let permissions = u
            .permissions
            .iter()
            .enumerate()
            .map(|(j, p)| Permission::compile(p).map_err(|e| format!("{key}.permissions[{j}].path: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(User { name: u.user.clone(), pass, ips, permissions })
    }

    /// The `any` user: everyone gets its permissions.
    pub fn is_anyone(&self) -> bool {
        self.name == ANY_USER && self.pass == Password::Empty
    }

    /// Whether a request from `ip` may use this entry.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.ips.is_empty() || self.ips.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_forms() {
        let p = Password::parse("s3cret").unwrap();
        assert!(p.verify("s3cret") && !p.verify("s3cre") && !p.verify("s3cret!"));
        assert_eq!(p.plain(), Some("s3cret"));
        // echo -n s3cret | sha256sum
        let hex: String = Sha256::digest(b"s3cret").iter().map(|b| format!("{b:02x}")).collect();
        let p = Password::parse(&format!("sha256:{hex}")).unwrap();
        assert!(p.verify("s3cret") && !p.verify("S3cret"));
        assert_eq!(p.plain(), None);
        assert!(Password::parse("sha256:abc").is_err());
        assert!(Password::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(Password::parse("$argon2id$garbage").is_err());
        assert!(!format!("{:?}", Password::parse("s3cret").unwrap()).contains("s3cret"));
    }

    /// A PHC string made with the argon2 reference parameters (argon2id, m=19456, t=2, p=1).
    #[test]
    fn argon2_phc() {
        use argon2::password_hash::PasswordHasher;
        let hash: argon2::password_hash::phc::PasswordHash =
            argon2::Argon2::default().hash_password_with_salt(b"s3cret", b"0123456789abcdef").unwrap();
        let phc = hash.to_string();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        let p = Password::parse(&phc).unwrap();
        assert!(p.verify("s3cret") && !p.verify("wrong"));
    }

    #[test]
    fn cidrs() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.9.9.9".parse().unwrap()), "IPv4-mapped");
        assert!(!n.contains("::1".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!(IpNet::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "fd00::/129", "nope", "10.0.0.0/x"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn users_compile_with_keys_in_errors() {
        let u = |user: &str, pass: &str, ips: &[&str], path: Option<&str>| UserConfig {
            user: user.into(),
            pass: pass.into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            permissions: vec![PermissionConfig { action: Action::Publish, path: path.map(str::to_owned) }],
        };
        let ok = User::compile(0, &u("cam", "pw", &["10.0.0.0/8"], Some("cams/*"))).unwrap();
        assert!(allowed(&ok.permissions, Action::Publish, "cams/a"));
        assert!(!allowed(&ok.permissions, Action::Publish, "cams/a/b"));
        assert!(!allowed(&ok.permissions, Action::Read, "cams/a"));
        assert!(User::compile(0, &u("any", "", &[], None)).unwrap().is_anyone());
        assert!(User::compile(2, &u("cam", "", &[], None)).unwrap_err().contains("auth.users[2].pass"));
        assert!(User::compile(1, &u("cam", "x", &["300.0.0.1"], None)).unwrap_err().contains("auth.users[1].ips[0]"));
        assert!(User::compile(0, &u("cam", "x", &[], Some("a//b"))).unwrap_err().contains("permissions[0].path"));
        // Serialized, the password is hidden.
        let text = toml::to_string(&u("cam", "s3cret", &[], None)).unwrap();
        assert!(!text.contains("s3cret") && text.contains("<redacted>"), "{text}");
    }
}
