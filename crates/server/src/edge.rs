//! Origin-edge pulls: `[edge] origin = [...]` makes this server pull any path that is neither
//! published here nor has a `source` from the first origin that has it.
//!
//! # Loops and hops
//! Each server has an id, random at start. A pull to an origin carries the chain of servers
//! it passed through as a query on the stream URL (`ORIGIN/PATH?ferrocast_via=ID1.ID2`; RTMP
//! and RTSP alike, so any origin, ferrocast or not, can be named), the puller's own id last. A
//! reader whose chain holds this server's id would close a loop (edges pointing at each other)
//! and is refused; so is one whose chain is `edge.max_hops` long. An edge that then pulls for
//! such a reader passes the chain on with its own id added, so the refusal happens at the first
//! server that sees itself again, with a clear error, instead of pulls waiting on each other
//! until their start timeouts.

/// The query key of the chain of servers a pull passed through.
pub const VIA_KEY: &str = "ferrocast_via";

/// Most ids read from a chain (the `max_hops` check refuses long ones first; this bounds the
/// work a hostile query can cause).
pub const MAX_VIA_IDS: usize = 64;

/// A new server id: 16 hex digits, random (each server's pulled sources hold theirs, so
/// servers in one process, as in tests, are told apart too).
pub fn new_server_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness (per process, then stepped per instance);
    // the time and pid are mixed in for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The chain of servers a reader's request passed through, from its URL query: the ids, in
/// order (the nearest last). Empty for a request that names none (a player).
pub fn via_from_query(query: Option<&str>) -> Vec<String> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter_map(|kv| kv.strip_prefix(VIA_KEY)?.strip_prefix('='))
        .flat_map(|v| v.split('.'))
        .filter(|id| !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .take(MAX_VIA_IDS)
        .map(str::to_owned)
        .collect()
}

/// Why a pull request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The chain holds this server: the pull would come back to itself.
    #[error("pull loop: this server ({0}) is already in the chain of servers this request came through")]
    Loop(String),
    /// The chain is `max_hops` long.
    #[error("pull passed through {0} servers, the most edge.max_hops allows")]
    TooManyHops(usize),
}

/// Checks a reader's chain: refused when it would loop back here or is `max_hops` long.
pub fn check_via(via: &[String], own_id: &str, max_hops: u32) -> Result<(), Refused> {
    if via.iter().any(|id| id == own_id) {
        return Err(Refused::Loop(own_id.to_owned()));
    }
    if via.len() >= max_hops as usize {
        return Err(Refused::TooManyHops(via.len()));
    }
    Ok(())
}

/// The URL an edge pulls `path` from at `origin` (`rtmp://host:1935` or `rtsp://host:8554`,
/// a trailing `/` or a base path allowed), carrying the chain: the reader's, then this server.
pub fn origin_url(origin: &str, path: &str, via: &[String], own_id: &str) -> String {
    let mut chain: Vec<&str> = via.iter().map(String::as_str).collect();
    chain.push(own_id);
    format!("{}/{}?{VIA_KEY}={}", origin.trim_end_matches('/'), path, chain.join("."))
}

/// The URLs to try for `path`, in order: one per origin.
pub fn origin_urls(origins: &[String], path: &str, via: &[String], own_id: &str) -> Vec<String> {
    origins.iter().map(|o| origin_url(o, path, via, own_id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_parses_from_any_place_in_the_query_and_ignores_junk() {
        assert!(via_from_query(None).is_empty());
        assert!(via_from_query(Some("token=x")).is_empty());
        assert_eq!(via_from_query(Some("token=x&ferrocast_via=ab12.cd34")), ["ab12", "cd34"]);
        assert_eq!(via_from_query(Some("ferrocast_via=ab..c%20d.ef&ferrocast_via=99")), ["ab", "ef", "99"]);
        assert_eq!(via_from_query(Some("ferrocast_viax=1")), Vec::<String>::new());
        let long = format!("ferrocast_via={}", vec!["a"; 1000].join("."));
        assert_eq!(via_from_query(Some(&long)).len(), MAX_VIA_IDS);
    }

    #[test]
    fn loops_and_long_chains_are_refused() {
        let own = "00000000000000aa";
        assert_eq!(check_via(&[], own, 8), Ok(()));
        assert_eq!(check_via(&["b".into(), own.into()], own, 8), Err(Refused::Loop(own.into())));
        let chain: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        assert_eq!(check_via(&chain[..7], own, 8), Ok(()));
        assert_eq!(check_via(&chain, own, 8), Err(Refused::TooManyHops(8)));
        assert!(Refused::Loop(own.into()).to_string().contains("loop"));
    }

    #[test]
    fn origin_urls_carry_the_chain_with_this_server_last() {
        let own = "ff";
        assert_eq!(
            origin_urls(&["rtmp://o1:1935/".into(), "rtsp://o2:8554".into()], "live/a", &["e1".into()], own),
            ["rtmp://o1:1935/live/a?ferrocast_via=e1.ff", "rtsp://o2:8554/live/a?ferrocast_via=e1.ff"]
        );
        assert_eq!(origin_url("rtmp://o", "x/y", &[], own), "rtmp://o/x/y?ferrocast_via=ff");
    }

    #[test]
    fn server_ids_are_hex_and_differ() {
        let (a, b) = (new_server_id(), new_server_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(via_from_query(Some(&format!("{VIA_KEY}={a}"))), [a]);
    }
}
