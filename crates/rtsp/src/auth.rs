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

/// Most parameters read from one `Authorization: Digest` header; real clients send six to
/// nine. Bounds the work a hostile header (already capped by the message size) can cause.
pub const MAX_DIGEST_PARAMS: usize = 32;

/// The `name=value` parameters of a Digest credentials header (RFC 7616 section 3.4 with
/// RFC 7230 section 3.2.6): values are tokens or quoted strings, and a quoted string may hold
/// commas and backslash-escaped characters. `None` for a header that does not parse.
pub fn digest_params(header: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = header.trim_start();
    while !rest.is_empty() {
        if out.len() == MAX_DIGEST_PARAMS {
            return None;
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        if name.is_empty() || name.contains([',', '"', ' ']) {
            return None;
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &quoted[end?..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            if value.contains(char::is_whitespace) {
                return None;
            }
            rest = &rest[end..];
        }
        out.push((name.to_ascii_lowercase(), value));
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(out)
}

/// The path of a request URI (`rtsp://host:port/a/b?q` gives `/a/b?q`); the URI itself when
/// it has no scheme.
fn uri_path(uri: &str) -> &str {
    match uri.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => uri,
    }
}

/// Whether the `uri` of a Digest header names the request's URI (RFC 7616 section 3.4:
/// the server checks it, so a response computed for one URI cannot authorize another).
/// The absolute URI or its path are both accepted, with or without a trailing `/`.
fn same_uri(digest_uri: &str, request_uri: &str) -> bool {
    let norm = |u: &str| u.trim_end_matches('/').to_owned();
    norm(digest_uri) == norm(request_uri) || norm(digest_uri) == norm(uri_path(request_uri))
}

/// Whether an `Authorization` header proves `creds` for a request with `method` and
/// `request_uri`, given the nonce we issued.
pub fn verify(creds: &Credentials, authorization: Option<&str>, method: &str, request_uri: &str, nonce: &str) -> bool {
    let Some(h) = authorization else { return false };
    if let Some(b) = h.strip_prefix("Basic ") {
        let want = format!("{}:{}", creds.user, creds.password);
        return base64::decode(b.trim()).is_some_and(|got| constant_time_eq(&got, want.as_bytes()));
    }
    let Some(d) = h.strip_prefix("Digest ") else { return false };
    let Some(params) = digest_params(d) else { return false };
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let (Some(user), Some(realm), Some(n), Some(uri), Some(response)) =
        (param("username"), param("realm"), param("nonce"), param("uri"), param("response"))
    else {
        return false;
    };
    if !constant_time_eq(n.as_bytes(), nonce.as_bytes()) || realm != REALM || !same_uri(uri, request_uri) {
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

    fn digest(user: &str, password: &str, method: &str, uri: &str, nonce: &str) -> String {
        let ha1 = md5_hex(&[user, REALM, password]);
        let ha2 = md5_hex(&[method, uri]);
        md5_hex(&[&ha1, nonce, &ha2])
    }

    #[test]
    fn basic_and_digest() {
        let c = Credentials::parse("cam:s3cret").unwrap();
        let url = "rtsp://h/live/a";
        assert!(verify(&c, Some(&format!("Basic {}", base64::encode(b"cam:s3cret"))), "DESCRIBE", url, "n"));
        assert!(!verify(&c, Some(&format!("Basic {}", base64::encode(b"cam:wrong"))), "DESCRIBE", url, "n"));
        let resp = digest("cam", "s3cret", "ANNOUNCE", url, "abc");
        let header =
            format!("Digest username=\"cam\", realm=\"{REALM}\", nonce=\"abc\", uri=\"{url}\", response=\"{resp}\"");
        assert!(verify(&c, Some(&header), "ANNOUNCE", url, "abc"));
        assert!(!verify(&c, Some(&header), "ANNOUNCE", url, "other-nonce"));
        assert!(!verify(&c, Some(&header), "DESCRIBE", url, "abc"), "the method is part of the digest");
        assert!(!verify(&c, None, "DESCRIBE", url, "abc"));
        assert!(!format!("{c:?}").contains("s3cret"), "never printed");
    }

    /// A quoted value may hold commas (RFC 7230 3.2.6): the old parser split the header at
    /// every comma and lost such a `uri`, refusing good credentials.
    #[test]
    fn digest_with_commas_inside_quoted_strings() {
        let c = Credentials::parse("cam:s3cret").unwrap();
        let url = "rtsp://h/live/a?tags=x,y";
        let resp = digest("cam", "s3cret", "DESCRIBE", url, "n1");
        let header = format!(
            "Digest username=\"cam\", realm=\"{REALM}\", nonce=\"n1\", uri=\"{url}\", response=\"{resp}\", algorithm=MD5"
        );
        assert!(verify(&c, Some(&header), "DESCRIBE", url, "n1"));
        let p = digest_params(r#"a="x\"y,z", b=tok , c="""#).unwrap();
        assert_eq!(p, [("a".into(), "x\"y,z".into()), ("b".into(), "tok".into()), ("c".into(), String::new())]);
        assert_eq!(digest_params(r#"a="unterminated"#), None);
        assert_eq!(digest_params("a=1 b=2"), None);
    }

    /// A response computed for one URI must not authorize a request for another (RFC 7616
    /// 3.4); before, `uri` was taken from the header and never compared.
    #[test]
    fn digest_uri_must_name_the_request() {
        let c = Credentials::parse("cam:s3cret").unwrap();
        let resp = digest("cam", "s3cret", "DESCRIBE", "rtsp://h/open/x", "n1");
        let header = format!(
            "Digest username=\"cam\", realm=\"{REALM}\", nonce=\"n1\", uri=\"rtsp://h/open/x\", response=\"{resp}\""
        );
        assert!(verify(&c, Some(&header), "DESCRIBE", "rtsp://h/open/x", "n1"));
        assert!(!verify(&c, Some(&header), "DESCRIBE", "rtsp://h/secret/y", "n1"));
        // The path form is as good as the absolute URI (RFC 7616 allows either).
        let resp = digest("cam", "s3cret", "DESCRIBE", "/open/x", "n1");
        let header =
            format!("Digest username=\"cam\", realm=\"{REALM}\", nonce=\"n1\", uri=\"/open/x\", response=\"{resp}\"");
        assert!(verify(&c, Some(&header), "DESCRIBE", "rtsp://h:8554/open/x/", "n1"));
    }

    #[test]
    fn digest_params_too_many() {
        let many: Vec<String> = (0..=MAX_DIGEST_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(digest_params(&many.join(", ")), None);
        assert!(digest_params(&many[..MAX_DIGEST_PARAMS].join(", ")).is_some());
    }
}
