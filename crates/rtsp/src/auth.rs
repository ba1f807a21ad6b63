//! RTSP authentication (RFC 2326 section 16 refers to HTTP's): Basic (RFC 7617) and Digest
//! (RFC 2069 / 2617 / 7616). The server side verifies Basic and Digest without qop, which is
//! what cameras, ffmpeg, GStreamer and VLC speak; the client side answers whatever a camera
//! challenges with ([`Authenticator`]): Digest with SHA-256 or MD5, with or without `qop`, or
//! Basic. Passwords are compared in constant time and never logged.

use md5::{Digest, Md5};
use sha2::Sha256;

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

/// The lower-case hex hash of `parts` joined with `:` (RFC 7616 section 3.4.1's `H(a:b)`).
fn hex_hash<D: Digest>(parts: &[&str]) -> String {
    let mut h = D::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(parts: &[&str]) -> String {
    hex_hash::<Md5>(parts)
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

/// The schemes a server offers in a 401 (RFC 7235 section 4.1), in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schemes {
    /// Digest with SHA-256 and with MD5 (RFC 7616). Needs the plain password on the server.
    pub digest: bool,
    /// Basic (RFC 7617).
    pub basic: bool,
}

/// The `WWW-Authenticate` values of a 401 offering `schemes`: Digest SHA-256, then Digest MD5
/// (without an `algorithm`, as RFC 2069 servers write it), then Basic. RFC 7616 section 3.7
/// has the most preferred first; clients that know only MD5 (ffmpeg 5, GStreamer 1.22) take
/// the last Digest challenge they can read, so MD5 comes after SHA-256. `stale` says the
/// credentials may have been right and only the nonce expired (RFC 7616 section 3.3).
pub fn server_challenges(nonce: &str, stale: bool, schemes: Schemes) -> Vec<String> {
    let stale = if stale { ", stale=true" } else { "" };
    let mut out = Vec::with_capacity(3);
    if schemes.digest {
        out.push(format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=SHA-256{stale}"));
        out.push(format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\"{stale}"));
    }
    if schemes.basic {
        out.push(format!("Basic realm=\"{REALM}\""));
    }
    out
}

/// A Digest answer (`Authorization: Digest ...`, RFC 7616 section 3.4) as a client sent it,
/// for the application to check against the password it keeps ([`DigestAnswer::verify`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DigestAnswer {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri`.
    pub uri: String,
    /// `response`.
    pub response: String,
    /// `algorithm` (MD5 when absent).
    pub algorithm: DigestAlgorithm,
    /// `qop` (only `auth` is verified; we never offer `auth-int`).
    pub qop: Qop,
    /// `nc`, as sent (8 hex digits).
    pub nc: String,
    /// `cnonce`.
    pub cnonce: String,
    /// The request's method.
    pub method: String,
}

impl std::fmt::Debug for DigestAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DigestAnswer {{ username: {:?}, algorithm: {:?}, .. }}", self.username, self.algorithm)
    }
}

impl DigestAnswer {
    /// Reads the parameters after `Digest `; None when a required one is missing or the
    /// algorithm or qop is one we do not compute.
    pub fn parse(params: &str, method: &str) -> Option<DigestAnswer> {
        let params = digest_params(params)?;
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let algorithm = match param("algorithm") {
            Some(a) => DigestAlgorithm::parse(&a)?,
            None => DigestAlgorithm::Md5,
        };
        let qop = match param("qop").as_deref() {
            None => Qop::None,
            Some(q) if q.eq_ignore_ascii_case("auth") => Qop::Auth,
            Some(_) => return None,
        };
        Some(DigestAnswer {
            username: param("username")?,
            realm: param("realm")?,
            nonce: param("nonce")?,
            uri: param("uri")?,
            response: param("response")?,
            algorithm,
            qop,
            nc: param("nc").unwrap_or_default(),
            cnonce: param("cnonce").unwrap_or_default(),
            method: method.to_owned(),
        })
    }

    /// Whether the answer proves `password` for its user, our realm and `request_uri`
    /// (the nonce is the session's to check). Constant time in the comparison.
    pub fn verify(&self, password: &str, request_uri: &str) -> bool {
        if self.realm != REALM || !same_uri(&self.uri, request_uri) {
            return false;
        }
        if self.qop == Qop::Auth && (self.nc.len() != 8 || u32::from_str_radix(&self.nc, 16).is_err()) {
            return false;
        }
        let alg = self.algorithm;
        let mut ha1 = alg.hash(&[&self.username, REALM, password]);
        if alg.is_sess() {
            ha1 = alg.hash(&[&ha1, &self.nonce, &self.cnonce]);
        }
        let ha2 = alg.hash(&[&self.method, &self.uri]);
        let want = match self.qop {
            Qop::Auth => alg.hash(&[&ha1, &self.nonce, &self.nc, &self.cnonce, "auth", &ha2]),
            _ => alg.hash(&[&ha1, &self.nonce, &ha2]),
        };
        constant_time_eq(self.response.to_ascii_lowercase().as_bytes(), want.as_bytes())
    }
}

/// Credentials offered in an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Basic: the user and password themselves.
    Basic(Credentials),
    /// Digest: a proof of the password.
    Digest(DigestAnswer),
}

impl Offered {
    /// Reads an `Authorization` header of a request with `method`; None for a scheme we do
    /// not know or a header that does not parse.
    pub fn parse(header: &str, method: &str) -> Option<Offered> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::decode(rest.trim())?;
            let text = String::from_utf8(raw).ok()?;
            return Credentials::parse(&text).map(Offered::Basic);
        }
        if scheme.eq_ignore_ascii_case("digest") {
            return DigestAnswer::parse(rest, method).map(Offered::Digest);
        }
        None
    }

    /// The user name offered.
    pub fn user(&self) -> &str {
        match self {
            Offered::Basic(c) => &c.user,
            Offered::Digest(d) => &d.username,
        }
    }
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

/// Most `WWW-Authenticate` headers read from one 401; cameras send one to three (Digest
/// MD5, Digest SHA-256, Basic). Bounds the work a hostile answer can cause.
pub const MAX_CHALLENGE_HEADERS: usize = 8;

/// Most challenges taken from one `WWW-Authenticate` header (several may share one header,
/// RFC 7235 section 4.1).
pub const MAX_CHALLENGES: usize = 8;

/// One challenge of a `WWW-Authenticate` header (RFC 7235 section 2.1): a scheme and its
/// `name=value` parameters (names lower-cased, quoted values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme (`Digest`, `Basic`, ...), as sent.
    pub scheme: String,
    /// Its parameters.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Splits `s` at the commas outside quoted strings (RFC 7230 section 3.2.6).
fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, ch) in s.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The challenges of one `WWW-Authenticate` header (RFC 7235 section 4.1): one header may hold
/// several (`Digest realm="a", nonce="n", Basic realm="a"`). A challenge whose parameters do
/// not parse (a token68 form, say) is kept with the ones that do; at most
/// [`MAX_CHALLENGES`].
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for item in split_list(header) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        // A new challenge starts with `scheme SP`, unless what follows the space is `=`
        // (a parameter written `name = value`).
        let space = item.find(char::is_whitespace);
        let eq = item.find('=');
        let starts_challenge = match (space, eq) {
            (_, None) => true,
            (Some(sp), Some(eq)) => sp < eq && !item[sp..].trim_start().starts_with('='),
            (None, Some(_)) => false,
        };
        let param_text = if starts_challenge {
            if out.len() == MAX_CHALLENGES {
                break;
            }
            let (scheme, rest) = item.split_at(space.unwrap_or(item.len()));
            out.push(Challenge { scheme: scheme.to_owned(), params: Vec::new() });
            rest.trim()
        } else {
            item
        };
        if param_text.is_empty() {
            continue;
        }
        if let (Some(c), Some(mut p)) = (out.last_mut(), digest_params(param_text))
            && c.params.len() < MAX_DIGEST_PARAMS
        {
            c.params.append(&mut p);
        }
    }
    out
}

/// A Digest hash algorithm (RFC 7616 section 3.3); `-sess` variants hash the nonce and
/// cnonce into HA1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// MD5 (RFC 2617; the default when `algorithm` is absent).
    Md5,
    /// MD5-sess.
    Md5Sess,
    /// SHA-256 (RFC 7616).
    Sha256,
    /// SHA-256-sess.
    Sha256Sess,
}

impl DigestAlgorithm {
    /// Parses an `algorithm=` value; `None` for one we cannot compute (SHA-512-256).
    pub fn parse(s: &str) -> Option<DigestAlgorithm> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(DigestAlgorithm::Md5),
            "MD5-SESS" => Some(DigestAlgorithm::Md5Sess),
            "SHA-256" => Some(DigestAlgorithm::Sha256),
            "SHA-256-SESS" => Some(DigestAlgorithm::Sha256Sess),
            _ => None,
        }
    }

    /// The token as sent in `algorithm=`.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Md5Sess => "MD5-sess",
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, DigestAlgorithm::Md5Sess | DigestAlgorithm::Sha256Sess)
    }

    fn is_sha256(self) -> bool {
        matches!(self, DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess)
    }

    fn hash(self, parts: &[&str]) -> String {
        if self.is_sha256() { hex_hash::<Sha256>(parts) } else { hex_hash::<Md5>(parts) }
    }
}

/// The quality of protection a Digest answer uses (RFC 7616 section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// None offered: RFC 2069 style, `response = H(HA1:nonce:HA2)`.
    None,
    /// `qop=auth`.
    Auth,
    /// `qop=auth-int` (only when `auth` is not offered): HA2 covers the body's hash.
    AuthInt,
}

/// A Digest challenge as the client uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `opaque`, echoed unchanged.
    pub opaque: Option<String>,
    /// `algorithm` (MD5 when absent).
    pub algorithm: DigestAlgorithm,
    /// The qop we answer with.
    pub qop: Qop,
    /// `stale=true`: the credentials were right, only the nonce expired (RFC 7616 3.3).
    pub stale: bool,
}

impl DigestChallenge {
    /// Reads a Digest challenge; `None` when it lacks a nonce, names an algorithm we cannot
    /// compute, or offers only qops we do not know.
    pub fn from_challenge(c: &Challenge) -> Option<DigestChallenge> {
        if !c.scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let algorithm = match c.param("algorithm") {
            Some(a) => DigestAlgorithm::parse(a)?,
            None => DigestAlgorithm::Md5,
        };
        let qop = match c.param("qop") {
            None => Qop::None,
            Some(q) => {
                let offered: Vec<&str> = q.split(',').map(str::trim).collect();
                if offered.iter().any(|o| o.eq_ignore_ascii_case("auth")) {
                    Qop::Auth
                } else if offered.iter().any(|o| o.eq_ignore_ascii_case("auth-int")) {
                    Qop::AuthInt
                } else {
                    return None;
                }
            }
        };
        Some(DigestChallenge {
            realm: c.param("realm").unwrap_or_default().to_owned(),
            nonce: c.param("nonce")?.to_owned(),
            opaque: c.param("opaque").map(str::to_owned),
            algorithm,
            qop,
            stale: c.param("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

/// The inputs of one Digest response (RFC 7616 section 3.4.1).
#[derive(Debug, Clone, Copy)]
pub struct DigestInput<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The request URI, exactly as on the request line.
    pub uri: &'a str,
    /// The request's body (for `auth-int`).
    pub body: &'a [u8],
    /// The nonce count, `1` for the first request with this nonce.
    pub nc: u32,
    /// The client nonce (ignored without qop, unless the algorithm is `-sess`).
    pub cnonce: &'a str,
}

/// The `response` value of a Digest answer (RFC 7616 section 3.4.1; RFC 2069 without qop).
pub fn digest_response(creds: &Credentials, ch: &DigestChallenge, input: &DigestInput<'_>) -> String {
    let alg = ch.algorithm;
    let mut ha1 = alg.hash(&[&creds.user, &ch.realm, &creds.password]);
    if alg.is_sess() {
        ha1 = alg.hash(&[&ha1, &ch.nonce, input.cnonce]);
    }
    let ha2 = match ch.qop {
        Qop::AuthInt => {
            let body = if alg.is_sha256() {
                Sha256::digest(input.body).iter().map(|b| format!("{b:02x}")).collect::<String>()
            } else {
                Md5::digest(input.body).iter().map(|b| format!("{b:02x}")).collect::<String>()
            };
            alg.hash(&[input.method, input.uri, &body])
        }
        _ => alg.hash(&[input.method, input.uri]),
    };
    let nc = format!("{:08x}", input.nc);
    match ch.qop {
        Qop::None => alg.hash(&[&ha1, &ch.nonce, &ha2]),
        Qop::Auth => alg.hash(&[&ha1, &ch.nonce, &nc, input.cnonce, "auth", &ha2]),
        Qop::AuthInt => alg.hash(&[&ha1, &ch.nonce, &nc, input.cnonce, "auth-int", &ha2]),
    }
}

/// A quoted string (RFC 7230 section 3.2.6): `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// The scheme a client answers challenges with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientScheme {
    /// Basic (RFC 7617), with the challenge's realm.
    Basic {
        /// `realm`.
        realm: String,
    },
    /// Digest (RFC 7616).
    Digest(DigestChallenge),
}

/// The client side of RTSP authentication: picks the best challenge of a 401 (Digest with
/// SHA-256, then Digest with MD5, then Basic) and writes an `Authorization` for every later
/// request, counting `nc` up per nonce.
#[derive(Debug, Clone)]
pub struct Authenticator {
    scheme: ClientScheme,
    nc: u32,
}

impl Authenticator {
    /// The best supported challenge among the `WWW-Authenticate` header values (at most
    /// [`MAX_CHALLENGE_HEADERS`] are read); `None` when none is usable.
    pub fn choose<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Authenticator> {
        let mut best: Option<(u8, ClientScheme)> = None;
        for h in headers.into_iter().take(MAX_CHALLENGE_HEADERS) {
            for c in parse_challenges(h) {
                let candidate = if c.scheme.eq_ignore_ascii_case("basic") {
                    (1, ClientScheme::Basic { realm: c.param("realm").unwrap_or_default().to_owned() })
                } else if let Some(d) = DigestChallenge::from_challenge(&c) {
                    (if d.algorithm.is_sha256() { 3 } else { 2 }, ClientScheme::Digest(d))
                } else {
                    continue;
                };
                if best.as_ref().is_none_or(|(rank, _)| candidate.0 > *rank) {
                    best = Some(candidate);
                }
            }
        }
        best.map(|(_, scheme)| Authenticator { scheme, nc: 0 })
    }

    /// The scheme in use.
    pub fn scheme(&self) -> &ClientScheme {
        &self.scheme
    }

    /// `"basic"`, `"digest-md5"` or `"digest-sha256"`.
    pub fn name(&self) -> &'static str {
        match &self.scheme {
            ClientScheme::Basic { .. } => "basic",
            ClientScheme::Digest(d) if d.algorithm.is_sha256() => "digest-sha256",
            ClientScheme::Digest(_) => "digest-md5",
        }
    }

    /// The realm of the challenge.
    pub fn realm(&self) -> &str {
        match &self.scheme {
            ClientScheme::Basic { realm } => realm,
            ClientScheme::Digest(d) => &d.realm,
        }
    }

    /// The `Authorization` value for a request. `cnonce` is fresh randomness for `qop`
    /// and `-sess` answers (unused otherwise).
    pub fn authorization(&mut self, creds: &Credentials, method: &str, uri: &str, body: &[u8], cnonce: &str) -> String {
        match &self.scheme {
            ClientScheme::Basic { .. } => {
                format!("Basic {}", base64::encode(format!("{}:{}", creds.user, creds.password).as_bytes()))
            }
            ClientScheme::Digest(d) => {
                self.nc = self.nc.wrapping_add(1);
                let input = DigestInput { method, uri, body, nc: self.nc, cnonce };
                let response = digest_response(creds, d, &input);
                let mut h = format!(
                    "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\"",
                    quote(&creds.user),
                    quote(&d.realm),
                    quote(&d.nonce),
                    quote(uri)
                );
                // An RFC 2069 answer (MD5 without qop) has no `algorithm`: such servers do
                // not know the parameter.
                if d.algorithm != DigestAlgorithm::Md5 || d.qop != Qop::None {
                    h.push_str(", algorithm=");
                    h.push_str(d.algorithm.as_str());
                }
                match d.qop {
                    // No qop, so no nc; but a `-sess` HA1 hashes the cnonce in (RFC 2617
                    // section 3.2.2.2), and the server cannot compute it without ours.
                    Qop::None if d.algorithm.is_sess() => {
                        h.push_str(&format!(", cnonce={}", quote(cnonce)));
                    }
                    Qop::None => {}
                    Qop::Auth | Qop::AuthInt => {
                        let qop = if d.qop == Qop::Auth { "auth" } else { "auth-int" };
                        h.push_str(&format!(", qop={qop}, nc={:08x}, cnonce={}", self.nc, quote(cnonce)));
                    }
                }
                if let Some(o) = &d.opaque {
                    h.push_str(", opaque=");
                    h.push_str(&quote(o));
                }
                h
            }
        }
    }
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

    /// RFC 7616 section 3.9.1: user "Mufasa", password "Circle of Life", GET of
    /// /dir/index.html with qop=auth, nc=1 and the RFC's cnonce.
    #[test]
    fn rfc7616_example_md5_and_sha256() {
        let creds = Credentials { user: "Mufasa".into(), password: "Circle of Life".into() };
        let header = |alg: &str| {
            format!(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={alg}, \
                 nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            )
        };
        let input = DigestInput {
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
            nc: 1,
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        };
        let md5 = DigestChallenge::from_challenge(&parse_challenges(&header("MD5"))[0]).unwrap();
        assert_eq!(md5.qop, Qop::Auth);
        assert_eq!(digest_response(&creds, &md5, &input), "8ca523f5e9506fed4657c9700eebdbec");
        let sha = DigestChallenge::from_challenge(&parse_challenges(&header("SHA-256"))[0]).unwrap();
        assert_eq!(
            digest_response(&creds, &sha, &input),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        // Offered both (in two headers, SHA-256 second): SHA-256 wins, nc counts from 1.
        let mut a = Authenticator::choose([header("MD5").as_str(), header("SHA-256").as_str()]).unwrap();
        assert_eq!(a.name(), "digest-sha256");
        let h = a.authorization(&creds, "GET", "/dir/index.html", b"", input.cnonce);
        assert!(h.contains("response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""), "{h}");
        assert!(h.contains("qop=auth, nc=00000001, cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\""), "{h}");
        assert!(
            h.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"") && h.contains("algorithm=SHA-256")
        );
        assert!(a.authorization(&creds, "GET", "/", b"", "c").contains("nc=00000002"));
    }

    /// Our own verifier accepts what the client writes for an RFC 2069 challenge (no qop).
    #[test]
    fn client_answer_verifies_without_qop() {
        let creds = Credentials::parse("cam:p@ss\"w").unwrap();
        let [digest, basic] = challenges("n0nce");
        let mut a = Authenticator::choose([digest.as_str(), basic.as_str()]).unwrap();
        assert_eq!(a.name(), "digest-md5");
        let h = a.authorization(&creds, "DESCRIBE", "rtsp://h/live/a", b"", "unused");
        assert!(!h.contains("qop") && !h.contains("algorithm"), "{h}");
        assert!(verify(&creds, Some(&h), "DESCRIBE", "rtsp://h/live/a", "n0nce"), "{h}");
        let mut b = Authenticator::choose([basic.as_str()]).unwrap();
        assert_eq!(b.name(), "basic");
        let h = b.authorization(&creds, "DESCRIBE", "rtsp://h/live/a", b"", "");
        assert!(verify(&creds, Some(&h), "DESCRIBE", "rtsp://h/live/a", "n0nce"));
    }

    /// Several challenges in one header, `name = value` spacing, a token68 scheme, and
    /// things we cannot answer.
    #[test]
    fn challenge_lists() {
        let cs = parse_challenges(
            "Negotiate abc==, Digest realm=\"IP Camera(23057)\", nonce=\"a,b\", stale = FALSE, Basic realm=\"x\"",
        );
        assert_eq!(cs.len(), 3, "{cs:?}");
        assert_eq!(cs[1].scheme, "Digest");
        assert_eq!(cs[1].param("nonce"), Some("a,b"));
        assert_eq!(cs[1].param("stale"), Some("FALSE"));
        assert_eq!(cs[2].param("realm"), Some("x"));
        let a = Authenticator::choose(["Negotiate abc==, Digest realm=\"r\", nonce=\"n\", Basic realm=\"r\""]).unwrap();
        assert_eq!(a.name(), "digest-md5");
        assert!(Authenticator::choose(["Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256"]).is_none());
        assert!(Authenticator::choose(["Digest realm=\"r\", nonce=\"n\", qop=\"auth-conf\""]).is_none());
        assert!(Authenticator::choose(["Digest realm=\"r\""]).is_none(), "no nonce");
        // Only the first MAX_CHALLENGE_HEADERS headers are read.
        let junk = vec!["Bogus x=1"; MAX_CHALLENGE_HEADERS];
        assert!(Authenticator::choose(junk.into_iter().chain(["Basic realm=\"r\""])).is_none());
        assert!(parse_challenges(&"X a=1, ".repeat(100)).len() == MAX_CHALLENGES);
    }

    /// C6: `-sess` without qop: the header carries the cnonce HA1 was computed with (RFC 2617
    /// section 3.2.2.2), and no qop or nc; plain MD5 without qop still sends no cnonce.
    #[test]
    fn sess_without_qop_sends_its_cnonce() {
        let creds = Credentials { user: "u".into(), password: "p".into() };
        for alg in ["MD5-sess", "SHA-256-sess"] {
            let mut a =
                Authenticator::choose([format!("Digest realm=\"r\", nonce=\"n\", algorithm={alg}").as_str()]).unwrap();
            let h = a.authorization(&creds, "DESCRIBE", "rtsp://h/a", b"", "c0ffee");
            let params = digest_params(h.strip_prefix("Digest ").unwrap()).unwrap();
            let p = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
            assert_eq!(p("cnonce"), Some("c0ffee"), "{h}");
            assert_eq!(p("algorithm"), Some(alg), "{h}");
            assert!(p("qop").is_none() && p("nc").is_none(), "{h}");
            let ClientScheme::Digest(d) = a.scheme() else { panic!() };
            let input = DigestInput { method: "DESCRIBE", uri: "rtsp://h/a", body: b"", nc: 1, cnonce: "c0ffee" };
            assert_eq!(p("response"), Some(digest_response(&creds, d, &input).as_str()), "{h}");
        }
        let ha1 = md5_hex(&[&md5_hex(&["u", "r", "p"]), "n", "c0ffee"]);
        let mut a = Authenticator::choose(["Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess"]).unwrap();
        let h = a.authorization(&creds, "DESCRIBE", "rtsp://h/a", b"", "c0ffee");
        let want = md5_hex(&[&ha1, "n", &md5_hex(&["DESCRIBE", "rtsp://h/a"])]);
        assert!(h.contains(&format!("response=\"{want}\"")), "{h}");
        let mut a = Authenticator::choose(["Digest realm=\"r\", nonce=\"n\", algorithm=MD5"]).unwrap();
        assert!(!a.authorization(&creds, "DESCRIBE", "rtsp://h/a", b"", "c0ffee").contains("cnonce"));
    }

    /// `auth-int` when it is the only qop offered, `-sess` algorithms: the response changes
    /// with the body and the cnonce.
    #[test]
    fn auth_int_and_sess() {
        let creds = Credentials { user: "u".into(), password: "p".into() };
        let c = &parse_challenges("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\", algorithm=MD5-sess")[0];
        let d = DigestChallenge::from_challenge(c).unwrap();
        assert_eq!((d.qop, d.algorithm), (Qop::AuthInt, DigestAlgorithm::Md5Sess));
        let input = DigestInput { method: "ANNOUNCE", uri: "rtsp://h/a", body: b"v=0", nc: 1, cnonce: "c1" };
        let r1 = digest_response(&creds, &d, &input);
        assert_ne!(r1, digest_response(&creds, &d, &DigestInput { body: b"v=1", ..input }));
        assert_ne!(r1, digest_response(&creds, &d, &DigestInput { cnonce: "c2", ..input }));
        let ha1 = md5_hex(&[&md5_hex(&["u", "r", "p"]), "n", "c1"]);
        let ha2 = md5_hex(&["ANNOUNCE", "rtsp://h/a", &md5_hex(&["v=0"])]);
        assert_eq!(r1, md5_hex(&[&ha1, "n", "00000001", "c1", "auth-int", &ha2]));
    }
}
