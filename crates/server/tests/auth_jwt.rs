//! JWT auth (issue 18) against the real binary: the test makes an Ed25519 and a P-256 key
//! with openssl, serves their JWK Set from a loopback server, signs tokens with openssl, and
//! publishes and reads with ffmpeg/ffprobe (RTMP `?jwt=`, RTSP password), HTTP-FLV `?token=`
//! and HLS `Authorization: Bearer`; expired, forged, HS256 and out-of-scope tokens are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn b64url(data: &[u8]) -> String {
    ferrocast_rtsp::base64::encode(data).replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned()
}

/// openssl makes the keys and signs (`openssl version`: it has no `-version`). Never skipped.
fn openssl(args: &[&str]) -> Vec<u8> {
    let present = Command::new("openssl").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(
        present,
        "openssl is required for the JWT tests: run ./scripts/test (it installs it) or apt-get install -y openssl"
    );
    let out = Command::new("openssl").args(args).stderr(Stdio::inherit()).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ferrocast-jwt-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A signing key made by openssl.
struct Key {
    pem: PathBuf,
    kind: &'static str,
}

impl Key {
    fn new(dir: &Path, kind: &'static str) -> Key {
        let pem = dir.join(format!("{kind}-{}.pem", rand_id()));
        let p = pem.to_str().unwrap();
        match kind {
            "ed25519" => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
            _ => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p]),
        };
        Key { pem, kind }
    }

    /// The public key as a JWK with key id `kid`.
    fn jwk(&self, kid: &str) -> serde_json::Value {
        let der = openssl(&["pkey", "-in", self.pem.to_str().unwrap(), "-pubout", "-outform", "DER"]);
        match self.kind {
            // SubjectPublicKeyInfo ends with the raw 32-byte key (RFC 8410).
            "ed25519" => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(&der[der.len() - 32..]), "kid": kid, "use": "sig"})
            }
            // ... with the uncompressed point 04 || X || Y (RFC 5480).
            _ => {
                let p = &der[der.len() - 64..];
                json!({"kty": "EC", "crv": "P-256", "x": b64url(&p[..32]), "y": b64url(&p[32..]), "kid": kid, "use": "sig"})
            }
        }
    }

    /// A compact JWS of `claims` with key id `kid`.
    fn sign(&self, kid: &str, claims: &serde_json::Value) -> String {
        let alg = if self.kind == "ed25519" { "EdDSA" } else { "ES256" };
        let input = format!(
            "{}.{}",
            b64url(json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let file = self.pem.with_extension(format!("in{}", rand_id()));
        std::fs::write(&file, &input).unwrap();
        let (pem, f) = (self.pem.to_str().unwrap(), file.to_str().unwrap());
        let sig = if self.kind == "ed25519" {
            openssl(&["pkeyutl", "-sign", "-inkey", pem, "-rawin", "-in", f])
        } else {
            der_to_raw(&openssl(&["dgst", "-sha256", "-sign", pem, f]))
        };
        format!("{input}.{}", b64url(&sig))
    }
}

fn rand_id() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

/// An ECDSA signature from DER (SEQUENCE of two INTEGERs) to JWS's r || s (RFC 7518 3.4).
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    let mut i = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let mut int = &der[i + 2..i + 2 + len];
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

/// Serves `body` to every request; counts them.
async fn jwks_server(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            n.fetch_add(1, Ordering::Relaxed);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    (url, count)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn publish_once(url: &str) -> bool {
    Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-t", "1", "-i"])
        .arg(test_flv())
        .args(["-c", "copy", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_from_a_jwks_allows_by_its_claim() {
    let d = dir();
    let (ed, ec, other) = (Key::new(&d, "ed25519"), Key::new(&d, "p256"), Key::new(&d, "ed25519"));
    let jwks = json!({"keys": [ed.jwk("ed1"), ec.jwk("ec1")]}).to_string();
    let (url, fetches) = jwks_server(jwks).await;
    let server = Server::with_config(&format!("[auth]\njwt_jwks_url = \"{url}\"\n"));
    let claims = |perms: serde_json::Value, exp: u64| json!({"sub": "t", "exp": exp, "ferrocast_permissions": perms});
    let all = json!([{"action": "publish", "path": "jwt/*"}, {"action": "read", "path": "jwt/*"}]);
    let good_ed = ed.sign("ed1", &claims(all.clone(), now() + 3600));
    let good_ec = ec.sign("ec1", &claims(json!([{"action": "read", "path": "jwt/*"}]), now() + 3600));

    // RTMP publish: no token, a token of a key not in the set, then EdDSA in `?jwt=`.
    let rtmp = |path: &str, q: &str| format!("rtmp://{}/{path}{q}", server.rtmp);
    assert!(!publish_once(&rtmp("jwt/a", "")), "published without a token");
    let forged = other.sign("ed1", &claims(all.clone(), now() + 3600));
    assert!(!publish_once(&rtmp("jwt/a", &format!("?jwt={forged}"))), "a forged signature was accepted");
    let _publisher = publish(test_flv(), &rtmp("jwt/a", &format!("?jwt={good_ed}")));
    let flv = format!("http://{}/jwt/a.flv?token={good_ec}", server.http);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http_status(&flv).await != Some(200) {
        assert!(std::time::Instant::now() < deadline, "never readable with the ES256 token");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Keys are kept: one fetch so far (plus at most one for the forged key's refetch guard).
    assert!(fetches.load(Ordering::Relaxed) <= 2, "{} fetches", fetches.load(Ordering::Relaxed));

    // Refused: none, expired, out of scope, HS256 signed with the public key as a secret.
    assert_eq!(http_status(&server.flv_url("jwt/a")).await, Some(401));
    let expired = ec.sign("ec1", &claims(all.clone(), now() - 3600));
    assert_eq!(http_status(&format!("{}?token={expired}", server.flv_url("jwt/a"))).await, Some(401));
    let elsewhere = ec.sign("ec1", &claims(json!([{"action": "read", "path": "other/*"}]), now() + 3600));
    assert_eq!(http_status(&format!("{}?token={elsewhere}", server.flv_url("jwt/a"))).await, Some(401));
    let hs_input = format!(
        "{}.{}",
        b64url(br#"{"alg":"HS256","kid":"ed1","typ":"JWT"}"#),
        b64url(claims(all.clone(), now() + 3600).to_string().as_bytes())
    );
    let hs = format!("{hs_input}.{}", b64url(b"not-a-real-mac-but-never-checked-anyway"));
    assert_eq!(http_status(&format!("{}?jwt={hs}", server.flv_url("jwt/a"))).await, Some(401));

    // HLS with a Bearer token; RTMP and RTSP reads with the token as the password.
    let r =
        http_get(&format!("http://{}/jwt/a/index.m3u8", server.http), &format!("Authorization: Bearer {good_ec}\r\n"))
            .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = rtmp("jwt/a", &format!("?user=x&pass={good_ec}"));
    tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap().assert_h264_aac(320, 240, 20);
    // ffmpeg keeps at most 127 bytes of a URL's user info, too few for a JWT: RTSP players
    // send it in the query; a client that can put it in the Basic password may.
    let url = format!("rtsp://{}/jwt/a?jwt={good_ed}", server.rtsp);
    tokio::task::spawn_blocking(move || probe_with(&url, 2, &["-rtsp_transport", "tcp"]))
        .await
        .unwrap()
        .assert_rtsp("h264", 320, 240, 20);
    let url = format!("rtsp://{}/jwt/a?jwt={expired}", server.rtsp);
    let p = tokio::task::spawn_blocking(move || probe_with(&url, 1, &["-rtsp_transport", "tcp"])).await.unwrap();
    assert!(p.streams.is_empty(), "an expired token played");
    for (token, want) in [(&good_ed, "200"), (&expired, "401")] {
        let basic = ferrocast_rtsp::base64::encode(format!("jwt:{token}").as_bytes());
        let mut s = tokio::net::TcpStream::connect(server.rtsp).await.unwrap();
        let req = format!(
            "DESCRIBE rtsp://{}/jwt/a RTSP/1.0\r\nCSeq: 1\r\nAuthorization: Basic {basic}\r\n\r\n",
            server.rtsp
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(head.split(' ').nth(1), Some(want), "{head}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
