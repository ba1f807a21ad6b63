//! RTSP authentication (RFC 2326 section 16 refers to HTTP's): Basic (RFC 7617) and Digest
//! without qop (RFC 2069 / 2617), which is what cameras, ffmpeg, GStreamer and VLC speak.
//! Passwords are compared in constant time and never logged.

use md5::{Digest, Md5};

use crate::base64;

/// The realm we announce.
pub const REALM: &str = "ferrocast";

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ user: {:?}, password: <redacted> }}", self.user)
    }
}

impl Credentials {
    /// Parses `user:password`.
    pub fn parse(s: &str) -> Option<Credentials> {
        let (user, password) = s.split_once(':')?;
        Some(Credentials { user: user.to_owned(), password: password.to_owned() })
    }
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time whatever the position of the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `WWW-Authenticate` values of a 401: Digest first (preferred), then Basic.
pub fn challenges(nonce: &str) -> [String; 2] {
    [format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\""), format!("Basic realm=\"{REALM}\"")]
}

fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(',').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"'))
    })
}

/// Whether an `Authorization` header proves `creds` for a request with `method`, given the
/// nonce we issued.
pub fn verify(creds: &Credentials, authorization: Option<&str>, method: &str, nonce: &str) -> bool {
    let Some(h) = authorization else { return false };
    if let Some(b) = h.strip_prefix("Basic ") {
        let want = format!("{}:{}", creds.user, creds.password);
        return base64::decode(b.trim()).is_some_and(|got| constant_time_eq(&got, want.as_bytes()));
    }
    let Some(d) = h.strip_prefix("Digest ") else { return false };
    let (Some(user), Some(realm), Some(n), Some(uri), Some(response)) =
        (param(d, "username"), param(d, "realm"), param(d, "nonce"), param(d, "uri"), param(d, "response"))
    else {
        return false;
    };
    if !constant_time_eq(n.as_bytes(), nonce.as_bytes()) || realm != REALM {
        return false;
    }
    let ha1 = md5_hex(&[&creds.user, REALM, &creds.password]);
    let ha2 = md5_hex(&[method, uri]);
    let want = md5_hex(&[&ha1, nonce, &ha2]);
    constant_time_eq(user.as_bytes(), creds.user.as_bytes()) & constant_time_eq(response.as_bytes(), want.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_digest() {
        let c = Credentials::parse("cam:s3cret").unwrap();
        assert!(verify(&c, Some(&format!("Basic {}", base64::encode(b"cam:s3cret"))), "DESCRIBE", "n"));
        assert!(!verify(&c, Some(&format!("Basic {}", base64::encode(b"cam:wrong"))), "DESCRIBE", "n"));
        let ha1 = md5_hex(&["cam", REALM, "s3cret"]);
        let ha2 = md5_hex(&["ANNOUNCE", "rtsp://h/live/a"]);
        let resp = md5_hex(&[&ha1, "abc", &ha2]);
        let header = format!(
            "Digest username=\"cam\", realm=\"{REALM}\", nonce=\"abc\", uri=\"rtsp://h/live/a\", response=\"{resp}\""
        );
        assert!(verify(&c, Some(&header), "ANNOUNCE", "abc"));
        assert!(!verify(&c, Some(&header), "ANNOUNCE", "other-nonce"));
        assert!(!verify(&c, Some(&header), "DESCRIBE", "abc"), "the method is part of the digest");
        assert!(!verify(&c, None, "DESCRIBE", "abc"));
        assert!(!format!("{c:?}").contains("s3cret"), "never printed");
    }
}
