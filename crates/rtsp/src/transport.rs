//! The Transport header (RFC 2326 section 12.39).

use std::fmt::Write;

/// Where RTP goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lower {
    /// RTP/AVP or RTP/AVP/UDP.
    Udp,
    /// RTP/AVP/TCP, interleaved in the RTSP connection.
    Tcp,
}

/// One transport specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// UDP or TCP.
    pub lower: Lower,
    /// `multicast` (else unicast).
    pub multicast: bool,
    /// `client_port=a-b`.
    pub client_port: Option<(u16, u16)>,
    /// `server_port=a-b`.
    pub server_port: Option<(u16, u16)>,
    /// `interleaved=a-b`.
    pub interleaved: Option<(u8, u8)>,
    /// `destination=`.
    pub destination: Option<String>,
    /// `source=`.
    pub source: Option<String>,
    /// `port=a-b` (multicast).
    pub port: Option<(u16, u16)>,
    /// `ttl=`.
    pub ttl: Option<u8>,
    /// `ssrc=` (hex).
    pub ssrc: Option<u32>,
    /// `mode=record` (or `mode="RECORD"`).
    pub record: bool,
}

/// Why a Transport header was refused (answered 461).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported transport {0:?}")]
pub struct UnsupportedTransport(pub String);

fn pair<T: std::str::FromStr + Copy + std::ops::Add<Output = T> + From<u8>>(v: &str) -> Option<(T, T)> {
    match v.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => {
            let a: T = v.trim().parse().ok()?;
            Some((a, a + T::from(1)))
        }
    }
}

impl Transport {
    /// A unicast specification with nothing else set.
    pub fn new(lower: Lower) -> Transport {
        Transport {
            lower,
            multicast: false,
            client_port: None,
            server_port: None,
            interleaved: None,
            destination: None,
            source: None,
            port: None,
            ttl: None,
            ssrc: None,
            record: false,
        }
    }

    /// Parses one specification.
    pub fn parse(spec: &str) -> Result<Transport, UnsupportedTransport> {
        let bad = || UnsupportedTransport(spec.chars().take(128).collect());
        let mut parts = spec.split(';').map(str::trim);
        let proto = parts.next().ok_or_else(bad)?;
        let lower = match proto.to_ascii_uppercase().as_str() {
            "RTP/AVP" | "RTP/AVP/UDP" => Lower::Udp,
            "RTP/AVP/TCP" => Lower::Tcp,
            _ => return Err(bad()),
        };
        let mut t = Transport::new(lower);
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_lowercase().as_str() {
                "unicast" => t.multicast = false,
                "multicast" => t.multicast = true,
                "client_port" => t.client_port = Some(pair::<u16>(v).ok_or_else(bad)?),
                "server_port" => t.server_port = Some(pair::<u16>(v).ok_or_else(bad)?),
                "interleaved" => t.interleaved = Some(pair::<u8>(v).ok_or_else(bad)?),
                "port" => t.port = Some(pair::<u16>(v).ok_or_else(bad)?),
                "destination" => t.destination = Some(v.to_owned()),
                "source" => t.source = Some(v.to_owned()),
                "ttl" => t.ttl = v.parse().ok(),
                "ssrc" => t.ssrc = u32::from_str_radix(v.trim(), 16).ok(),
                "mode" => t.record = v.trim_matches('"').eq_ignore_ascii_case("record"),
                _ => {}
            }
        }
        Ok(t)
    }

    /// The first acceptable alternative of a header (alternatives are comma-separated).
    pub fn parse_header(
        header: &str,
        acceptable: impl Fn(&Transport) -> bool,
    ) -> Result<Transport, UnsupportedTransport> {
        let mut last = UnsupportedTransport(header.chars().take(128).collect());
        for spec in header.split(',') {
            match Transport::parse(spec) {
                Ok(t) if acceptable(&t) => return Ok(t),
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Encodes the specification.
    pub fn encode(&self) -> String {
        let mut s = String::from(match self.lower {
            Lower::Udp => "RTP/AVP",
            Lower::Tcp => "RTP/AVP/TCP",
        });
        s.push_str(if self.multicast { ";multicast" } else { ";unicast" });
        if let Some(d) = &self.destination {
            let _ = write!(s, ";destination={d}");
        }
        if let Some(d) = &self.source {
            let _ = write!(s, ";source={d}");
        }
        for (name, v) in [("client_port", self.client_port), ("server_port", self.server_port), ("port", self.port)] {
            if let Some((a, b)) = v {
                let _ = write!(s, ";{name}={a}-{b}");
            }
        }
        if let Some((a, b)) = self.interleaved {
            let _ = write!(s, ";interleaved={a}-{b}");
        }
        if let Some(t) = self.ttl {
            let _ = write!(s, ";ttl={t}");
        }
        if let Some(x) = self.ssrc {
            let _ = write!(s, ";ssrc={x:08X}");
        }
        if self.record {
            s.push_str(";mode=record");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_ffmpeg_and_gstreamer_send() {
        let t = Transport::parse("RTP/AVP/UDP;unicast;client_port=41234-41235;mode=record").unwrap();
        assert_eq!((t.lower, t.client_port, t.record), (Lower::Udp, Some((41234, 41235)), true));
        let t = Transport::parse("RTP/AVP/TCP;unicast;interleaved=4-5").unwrap();
        assert_eq!(t.interleaved, Some((4, 5)));
        let t = Transport::parse("RTP/AVP;multicast;destination=239.255.0.1;port=5000-5001;ttl=1").unwrap();
        assert!(t.multicast && t.port == Some((5000, 5001)) && t.ttl == Some(1));
        let t = Transport::parse_header("RTP/SAVP;unicast;client_port=1-2,RTP/AVP;unicast;client_port=3-4", |_| true)
            .unwrap();
        assert_eq!(t.client_port, Some((3, 4)));
        assert!(Transport::parse("RAW/RAW/UDP;unicast").is_err());
        assert!(Transport::parse("RTP/AVP;client_port=x-y").is_err());
        let enc = Transport::parse(&t.encode()).unwrap();
        assert_eq!(enc, t);
    }
}
