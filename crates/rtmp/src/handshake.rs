//! The RTMP handshake (RTMP spec 1.0 section 5.2) and the HMAC-SHA256 "digest" variant that
//! Flash Player 9+, ffmpeg and OBS send, without which some clients refuse to play.
//!
//! The digest scheme: C1 carries a 32-byte HMAC at a position derived from four bytes at offset
//! 8 (scheme 0) or 772 (scheme 1). A server that finds a valid client digest answers S1 with its
//! own digest in the same scheme, and S2 with an HMAC keyed by the client's digest.

use bytes::{Buf, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Size of C1/S1/C2/S2.
pub const HANDSHAKE_SIZE: usize = 1536;
/// The only RTMP version byte we accept in C0/S0 (3 = plain RTMP; 6 and 8 are RTMPE).
pub const RTMP_VERSION: u8 = 3;
const DIGEST_LEN: usize = 32;

const KEY_TAIL: [u8; 32] = [
    0xf0, 0xee, 0xc2, 0x4a, 0x80, 0x68, 0xbe, 0xe8, 0x2e, 0x00, 0xd0, 0xd1, 0x02, 0x9e, 0x7e, 0x57, 0x6e, 0xec, 0x5d,
    0x2d, 0x29, 0x80, 0x6f, 0xab, 0x93, 0xb8, 0xe6, 0x36, 0xcf, 0xeb, 0x31, 0xae,
];
const PLAYER_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Player 001";
const SERVER_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Media Server 001";

fn key(text: &[u8]) -> Vec<u8> {
    [text, &KEY_TAIL[..]].concat()
}

/// Why a handshake failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// C0/S0 is not version 3: not RTMP, or RTMPE which we do not speak.
    #[error("handshake: version byte {0} is not 3 (not RTMP, or encrypted RTMPE)")]
    BadVersion(u8),
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Position of the digest in a C1/S1 for a scheme whose offset field is at `base`.
fn digest_pos(packet: &[u8], base: usize) -> usize {
    let sum: usize = packet[base..base + 4].iter().map(|b| usize::from(*b)).sum();
    sum % 728 + base + 4
}

/// HMAC over the packet without its 32 digest bytes.
fn packet_digest(packet: &[u8], pos: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    hmac(key, &[&packet[..pos], &packet[pos + DIGEST_LEN..]])
}

/// Finds a valid digest made with `key` in either scheme; returns its position.
fn find_digest(packet: &[u8], key: &[u8]) -> Option<usize> {
    [772, 8].into_iter().find_map(|base| {
        let pos = digest_pos(packet, base);
        (packet_digest(packet, pos, key)[..] == packet[pos..pos + DIGEST_LEN]).then_some(pos)
    })
}

fn random_packet() -> Vec<u8> {
    let mut p = vec![0u8; HANDSHAKE_SIZE];
    // A failure of the OS RNG leaves zeros: the handshake stays valid, only less unique.
    let _ = getrandom::fill(&mut p[8..]);
    p
}

/// Writes a digest with `key` into `packet` using the scheme at `base`.
fn sign(packet: &mut [u8], base: usize, key: &[u8]) -> usize {
    let pos = digest_pos(packet, base);
    let d = packet_digest(packet, pos, key);
    packet[pos..pos + DIGEST_LEN].copy_from_slice(&d);
    pos
}

/// Builds a digest-answer C2/S2: random bytes whose last 32 are an HMAC keyed by the peer's
/// digest.
fn answer_packet(peer_digest: &[u8], full_key: &[u8]) -> Vec<u8> {
    let mut p = random_packet();
    let k = hmac(full_key, &[peer_digest]);
    let sig = hmac(&k, &[&p[..HANDSHAKE_SIZE - DIGEST_LEN]]);
    p[HANDSHAKE_SIZE - DIGEST_LEN..].copy_from_slice(&sig);
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    WaitC0C1,
    WaitC2,
    Done,
}

/// Which handshake the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    /// The plain handshake of the RTMP 1.0 spec (S2 echoes C1).
    Simple,
    /// The HMAC-SHA256 digest handshake.
    Digest,
}

/// Server side of the handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    state: ServerState,
    kind: Option<HandshakeKind>,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// A handshake waiting for C0+C1.
    pub fn new() -> Self {
        ServerHandshake { state: ServerState::WaitC0C1, kind: None }
    }

    /// True once C2 has been received.
    pub fn is_done(&self) -> bool {
        self.state == ServerState::Done
    }

    /// The handshake the client chose, once C1 has been read.
    pub fn kind(&self) -> Option<HandshakeKind> {
        self.kind
    }

    /// Consumes handshake bytes from the front of `input`; S0+S1+S2 are returned when C0+C1
    /// is complete. Bytes after C2 are left in `input`.
    pub fn process(&mut self, input: &mut BytesMut) -> Result<Option<Bytes>, HandshakeError> {
        match self.state {
            ServerState::WaitC0C1 => {
                if let Some(&v) = input.first()
                    && v != RTMP_VERSION
                {
                    return Err(HandshakeError::BadVersion(v));
                }
                if input.len() < 1 + HANDSHAKE_SIZE {
                    return Ok(None);
                }
                input.advance(1);
                let c1 = input.split_to(HANDSHAKE_SIZE);
                self.state = ServerState::WaitC2;
                let mut out = Vec::with_capacity(1 + 2 * HANDSHAKE_SIZE);
                out.push(RTMP_VERSION);
                let client_key = &key(PLAYER_KEY_TEXT)[..PLAYER_KEY_TEXT.len()];
                match find_digest(&c1, client_key) {
                    Some(pos) => {
                        self.kind = Some(HandshakeKind::Digest);
                        let mut s1 = random_packet();
                        s1[..4].fill(0);
                        s1[4..8].copy_from_slice(&[0x04, 0x05, 0x00, 0x01]);
                        let base = if pos >= 776 { 772 } else { 8 };
                        sign(&mut s1, base, SERVER_KEY_TEXT);
                        out.extend_from_slice(&s1);
                        out.extend_from_slice(&answer_packet(&c1[pos..pos + DIGEST_LEN], &key(SERVER_KEY_TEXT)));
                    }
                    None => {
                        self.kind = Some(HandshakeKind::Simple);
                        let mut s1 = random_packet();
                        s1[..8].fill(0);
                        out.extend_from_slice(&s1);
                        out.extend_from_slice(&c1);
                    }
                }
                Ok(Some(Bytes::from(out)))
            }
            ServerState::WaitC2 => {
                if input.len() >= HANDSHAKE_SIZE {
                    // C2 is not checked: many clients send garbage there.
                    input.advance(HANDSHAKE_SIZE);
                    self.state = ServerState::Done;
                }
                Ok(None)
            }
            ServerState::Done => Ok(None),
        }
    }
}

/// Client side of the handshake. Sends a digest C1, answers the server's S1 per its kind.
#[derive(Debug)]
pub struct ClientHandshake {
    c0c1_sent: bool,
    done: bool,
}

impl Default for ClientHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientHandshake {
    /// A handshake that has sent nothing yet.
    pub fn new() -> Self {
        ClientHandshake { c0c1_sent: false, done: false }
    }

    /// True once C2 has been produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// C0+C1, with a digest in scheme 0 (as ffmpeg sends).
    pub fn start(&mut self) -> Bytes {
        self.c0c1_sent = true;
        let mut c1 = random_packet();
        c1[..4].fill(0);
        c1[4..8].copy_from_slice(&[0x80, 0x00, 0x07, 0x02]);
        sign(&mut c1, 8, PLAYER_KEY_TEXT);
        let mut out = Vec::with_capacity(1 + HANDSHAKE_SIZE);
        out.push(RTMP_VERSION);
        out.extend_from_slice(&c1);
        Bytes::from(out)
    }

    /// Consumes S0+S1+S2 and returns C2 once they are complete.
    pub fn process(&mut self, input: &mut BytesMut) -> Result<Option<Bytes>, HandshakeError> {
        if self.done {
            return Ok(None);
        }
        if let Some(&v) = input.first()
            && v != RTMP_VERSION
        {
            return Err(HandshakeError::BadVersion(v));
        }
        if input.len() < 1 + 2 * HANDSHAKE_SIZE {
            return Ok(None);
        }
        input.advance(1);
        let s1 = input.split_to(HANDSHAKE_SIZE);
        input.advance(HANDSHAKE_SIZE);
        self.done = true;
        let c2 = match find_digest(&s1, SERVER_KEY_TEXT) {
            Some(pos) if s1[4..8] != [0; 4] => answer_packet(&s1[pos..pos + DIGEST_LEN], &key(PLAYER_KEY_TEXT)),
            _ => s1.to_vec(),
        };
        Ok(Some(Bytes::from(c2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_client_gets_digest_answer() {
        let mut client = ClientHandshake::new();
        let mut server = ServerHandshake::new();
        let mut to_server = BytesMut::from(&client.start()[..]);
        let s012 = server.process(&mut to_server).unwrap().unwrap();
        assert_eq!(server.kind(), Some(HandshakeKind::Digest));
        // The S1 digest verifies with the server key, as ffmpeg checks when playing.
        assert!(find_digest(&s012[1..1 + HANDSHAKE_SIZE], SERVER_KEY_TEXT).is_some());
        let mut to_client = BytesMut::from(&s012[..]);
        to_client.extend_from_slice(b"after");
        let c2 = client.process(&mut to_client).unwrap().unwrap();
        assert_eq!(&to_client[..], b"after");
        let mut to_server = BytesMut::from(&c2[..]);
        to_server.extend_from_slice(b"chunks");
        assert!(server.process(&mut to_server).unwrap().is_none());
        assert!(server.is_done());
        assert_eq!(&to_server[..], b"chunks");
    }

    #[test]
    fn simple_client_gets_echo() {
        let mut server = ServerHandshake::new();
        let mut c0c1 = BytesMut::from(&[3u8][..]);
        c0c1.extend_from_slice(&[7u8; HANDSHAKE_SIZE]);
        let out = server.process(&mut c0c1).unwrap().unwrap();
        assert_eq!(server.kind(), Some(HandshakeKind::Simple));
        assert_eq!(&out[1 + HANDSHAKE_SIZE..], &[7u8; HANDSHAKE_SIZE][..]);
    }

    #[test]
    fn garbage_version_is_rejected_at_once() {
        let mut server = ServerHandshake::new();
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(server.process(&mut http), Err(HandshakeError::BadVersion(b'G')));
    }
}
