//! Connection admission: a cap on connections overall and per client address, shared by
//! every listener that keeps connections open (RTMP, RTSP, HTTP-FLV). Past a cap the connection is
//! closed at once, before anything is read from it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::LimitsConfig;

/// Counts open connections.
#[derive(Debug)]
pub struct Limiter {
    config: LimitsConfig,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admission {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

/// Why a connection was turned away.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` reached.
    #[error("server at its limit of {0} connections")]
    Total(usize),
    /// `limits.max_connections_per_ip` reached for this address.
    #[error("{0} connections from this address already")]
    PerIp(usize),
}

impl Limiter {
    /// A limiter with these caps.
    pub fn new(config: LimitsConfig) -> Arc<Limiter> {
        Arc::new(Limiter { config, open: Mutex::new((0, HashMap::new())) })
    }

    /// Admits a connection from `ip`, or says which cap it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.config.max_connections {
            return Err(Refused::Total(self.config.max_connections));
        }
        let per = open.1.entry(ip).or_insert(0);
        if *per >= self.config.max_connections_per_ip {
            return Err(Refused::PerIp(self.config.max_connections_per_ip));
        }
        *per += 1;
        open.0 += 1;
        Ok(Admission { limiter: self.clone(), ip })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_ip() {
        let l = Limiter::new(LimitsConfig { max_connections: 3, max_connections_per_ip: 2, ..LimitsConfig::default() });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refused::PerIp(2));
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refused::Total(3));
        drop(a1);
        assert!(l.admit(b).is_ok(), "a freed place is reused");
    }
}
