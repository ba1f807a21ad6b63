//! UDP multicast: each stream read over multicast gets a group from the configured range and
//! one sender task, shared by all its multicast readers (RFC 2326 12.39 `destination`/`port`).
//! Each track has its own port pair in the group: video on the configured port (RTCP on the
//! next), audio on the pair after it. Players bind one socket per track's port and take every
//! packet that arrives there as that track's, so two tracks on one port mix their packets.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context;
use ferrocast_media::{TrackKind, Tracks};
use ferrocast_rtsp::codec;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::{Shared, StreamRtp, lock, slot, unix_micros};
use crate::config::ms;
use crate::reader::{Reader, ReaderItem};

/// A stream's multicast group and its sender.
pub struct MulticastGroup {
    path: String,
    group: Ipv4Addr,
    port: u16,
    socket: Arc<UdpSocket>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl MulticastGroup {
    /// The group address.
    pub fn group(&self) -> Ipv4Addr {
        self.group
    }

    /// The RTP port of a track (by [`slot`]; RTCP is the next).
    pub fn rtp_port(&self, slot: usize) -> u16 {
        track_port(self.port, slot)
    }

    /// Starts sending, once.
    pub fn start(self: &Arc<Self>, shared: &Arc<Shared>) {
        let mut task = lock(&self.task);
        if task.is_some() {
            return;
        }
        // Packets in order from here on (see `Shared::stream_rtp`), before the subscription.
        let stream = shared.stream_rtp(&self.path);
        let Some(sub) = shared.hub.subscribe(&self.path) else {
            return;
        };
        info!(path = self.path, group = %self.group, port = self.port, "rtsp multicast: sending");
        let me = Arc::downgrade(self);
        let shared = shared.clone();
        let reader = Reader::new(shared.hub.clone(), sub);
        *task = Some(tokio::spawn(send_loop(me, shared, stream, reader)));
    }
}

impl Drop for MulticastGroup {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        debug!(path = self.path, "rtsp multicast: last reader left");
    }
}

async fn send_loop(group: Weak<MulticastGroup>, shared: Arc<Shared>, stream: Arc<StreamRtp>, mut reader: Reader) {
    let Some(g) = group.upgrade() else { return };
    let socket = g.socket.clone();
    // RTP and RTCP destinations per track.
    let rtp = [0, 1].map(|i| SocketAddr::from((g.group, g.rtp_port(i))));
    let rtcp = [0, 1].map(|i| SocketAddr::from((g.group, g.rtp_port(i) + 1)));
    drop(g);
    let mut tracks = Tracks::default();
    let mut counts = [(0u32, 0u32); 2];
    let mut interval = tokio::time::interval(ms(shared.config.rtcp_interval_ms));
    loop {
        tokio::select! {
            item = reader.next() => match item {
                ReaderItem::Tracks(t) => tracks = (*t).clone(),
                ReaderItem::Frame(f) => {
                    let known = match f.kind {
                        TrackKind::Video => tracks.video.is_some(),
                        TrackKind::Audio => tracks.audio.is_some(),
                    };
                    if !known {
                        continue;
                    }
                    let i = slot(f.kind);
                    let first = counts[i].0 == 0;
                    let packets = stream.packets(&f);
                    if first && let Some((_, sr)) = stream.sender_report(f.kind, unix_micros(), 0, 0) {
                        let _ = socket.send_to(&sr, rtcp[i]).await;
                    }
                    for p in codec::packets(&packets) {
                        let c = &mut counts[i];
                        c.0 = c.0.wrapping_add(1);
                        c.1 = c.1.wrapping_add(p.len().saturating_sub(12) as u32);
                        let _ = socket.send_to(&p, rtp[i]).await;
                    }
                }
                ReaderItem::Ended | ReaderItem::TooSlow => return,
                _ => {}
            },
            _ = interval.tick() => {
                for kind in [TrackKind::Video, TrackKind::Audio] {
                    let (p, o) = counts[slot(kind)];
                    if p > 0 && let Some((_, sr)) = stream.sender_report(kind, unix_micros(), p, o) {
                        let _ = socket.send_to(&sr, rtcp[slot(kind)]).await;
                    }
                }
            }
        }
        if group.strong_count() == 0 {
            return;
        }
    }
}

/// The RTP port of a track (by [`slot`]) in a group whose first RTP port is `base`.
fn track_port(base: u16, slot: usize) -> u16 {
    base + 2 * slot as u16
}

/// The group of a path: a stable hash of the path into the configured range.
fn group_for(path: &str, net: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host_bits = 32 - u32::from(prefix);
    let mut h: u32 = 2_166_136_261;
    for b in path.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    let mask = if host_bits == 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
    // Avoid .0 and .255 style host parts.
    let host = (h & mask).max(1).min(mask.saturating_sub(1).max(1));
    Ipv4Addr::from((u32::from(net) & !mask) | host)
}

impl Shared {
    /// The multicast group of a stream, created on first use.
    pub fn multicast_group(&self, path: &str) -> anyhow::Result<Arc<MulticastGroup>> {
        let mut groups = lock(&self.groups);
        groups.retain(|_, w| w.strong_count() > 0);
        if let Some(g) = groups.get(path).and_then(Weak::upgrade) {
            return Ok(g);
        }
        let (net, prefix) = self.config.multicast_net()?;
        let group = group_for(path, net, prefix);
        let std_socket = std::net::UdpSocket::bind(SocketAddrV4::new(self.config.multicast_interface, 0))
            .context("multicast socket")?;
        std_socket.set_multicast_ttl_v4(self.config.multicast_ttl).context("multicast TTL")?;
        std_socket.set_multicast_loop_v4(true).context("multicast loop")?;
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let g = Arc::new(MulticastGroup {
            path: path.to_owned(),
            group,
            port: self.config.multicast_port,
            socket,
            task: Mutex::new(None),
        });
        groups.insert(path.to_owned(), Arc::downgrade(&g));
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_stay_in_range() {
        let net = Ipv4Addr::new(239, 255, 0, 0);
        for p in ["live/a", "live/b", "x"] {
            let g = group_for(p, net, 16);
            assert_eq!(&g.octets()[..2], &[239, 255]);
            assert_eq!(group_for(p, net, 16), g, "stable");
        }
        assert_ne!(group_for("live/a", net, 16), group_for("live/b", net, 16));
        assert_eq!(group_for("live/a", Ipv4Addr::new(239, 1, 2, 3), 32), Ipv4Addr::new(239, 1, 2, 3));
    }

    #[test]
    fn each_track_has_its_own_port_pair() {
        assert_eq!([0, 1].map(|i| track_port(8002, i)), [8002, 8004]);
    }
}
