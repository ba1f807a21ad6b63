//! Sending the RTP packets of a frame to one UDP reader in as few syscalls as the kernel
//! allows. The packets of a frame are mostly of one size (fragments of the MTU) and go to one
//! address, which is what UDP generic segmentation offload (Linux 4.18+) is for: one
//! `sendmsg` carries a run of equal-sized packets (the last may be shorter), gathered from the
//! shared packet buffers without a copy, and the kernel cuts it into datagrams. One `sendto`
//! per packet made RTSP over UDP saturate a core at about 300 readers.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(doc)]
use ferrocast_rtsp::codec;
use ferrocast_rtsp::rtp::{GSO_MAX_SEGMENTS as MAX_SEGMENTS, gso_run_len as run_len};
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::warn;

/// Set when the kernel refused a segmented send: every send is per packet from then on.
static GSO_OFF: AtomicBool = AtomicBool::new(false);

/// Sends the packets of a packetized frame (slices of the `[u16 length][packet]` records the
/// stream built, [`codec::packet_slices`]), in order, to `dest`. A full socket buffer drops
/// what does not fit, as the network would. The packets are gathered from the shared buffer
/// where they are: nothing is copied or reference-counted per packet before the kernel's copy.
pub fn send_packets<'a>(socket: &UdpSocket, dest: SocketAddr, packets: impl IntoIterator<Item = &'a [u8]>) {
    let mut batch: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
    let mut n = 0;
    for p in packets {
        batch[n] = p;
        n += 1;
        if n == MAX_SEGMENTS {
            n = send_runs(socket, dest, &mut batch, n, false);
        }
    }
    send_runs(socket, dest, &mut batch, n, true);
}

/// Sends the runs of `batch[..n]`. Unless it is the frame's `last` batch, a run that reaches
/// the batch's end may go on in packets not in it yet: it is kept, moved to the front.
/// Returns how many packets were kept.
fn send_runs(socket: &UdpSocket, dest: SocketAddr, batch: &mut [&[u8]; MAX_SEGMENTS], n: usize, last: bool) -> usize {
    let mut first = 0;
    while first < n {
        let k = if GSO_OFF.load(Ordering::Relaxed) { 1 } else { run_len(&batch[first..n]) };
        if !last && first + k == n && k < MAX_SEGMENTS {
            break;
        }
        send_run(socket, dest, &batch[first..first + k]);
        first += k;
    }
    batch.copy_within(first..n, 0);
    n - first
}

/// One run: one packet by itself, more with one segmented send.
fn send_run(socket: &UdpSocket, dest: SocketAddr, run: &[&[u8]]) {
    if let [p] = run {
        let _ = socket.try_send_to(p, dest);
        return;
    }
    // Otherwise sent, or dropped on a full buffer.
    let refused = send_segmented(socket, dest, run);
    if let Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) = refused {
        // No GSO here (an old kernel, a device without checksum offload).
        if !GSO_OFF.swap(true, Ordering::Relaxed) {
            warn!("UDP segmentation offload refused by the kernel: sending RTP packet by packet");
        }
        for p in run {
            let _ = socket.try_send_to(p, dest);
        }
    }
}

fn send_segmented(socket: &UdpSocket, dest: SocketAddr, run: &[&[u8]]) -> Result<(), Errno> {
    let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
    for (s, p) in slices.iter_mut().zip(run) {
        *s = IoSlice::new(p);
    }
    let segment = run[0].len() as u16;
    let addr = SockaddrStorage::from(dest);
    let r = socket.try_io(Interest::WRITABLE, || {
        sendmsg(
            socket.as_raw_fd(),
            &slices[..run.len()],
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
            Some(&addr),
        )
        .map_err(std::io::Error::from)
    });
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(e.raw_os_error().map_or(Errno::EAGAIN, Errno::from_raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn sizes(s: &[usize]) -> Vec<Bytes> {
        s.iter().map(|&n| Bytes::from(vec![0u8; n])).collect()
    }

    #[test]
    fn runs_are_equal_sizes_with_a_shorter_last() {
        assert_eq!(run_len(&sizes(&[1400, 1400, 1400, 700, 1400])), 4);
        assert_eq!(run_len(&sizes(&[20, 8, 1400, 1400])), 2);
        assert_eq!(run_len(&sizes(&[8, 20])), 1);
        assert_eq!(run_len(&sizes(&[1400])), 1);
        assert_eq!(run_len(&sizes(&[1400; 100])), 46, "one IP datagram's payload at most");
        assert_eq!(run_len(&sizes(&[100; 100])), MAX_SEGMENTS);
    }

    /// `[u16 length][packet]` records, as a stream's packetizer builds them.
    fn records(packets: &[Bytes]) -> Vec<u8> {
        let mut r = Vec::new();
        for p in packets {
            r.extend_from_slice(&(p.len() as u16).to_be_bytes());
            r.extend_from_slice(p);
        }
        r
    }

    #[tokio::test]
    async fn segmented_sends_arrive_as_separate_datagrams_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // As a serving socket is: known writable (tokio sends nothing on a socket it has not
        // seen ready).
        tx.writable().await.unwrap();
        // Frames whose runs are cut by size, by the segment cap (100 small packets: past a
        // batch of 64), by the datagram's size (50 at the MTU), with a packet alone at the
        // end, and one whose run goes on past the batch's end (10 + 54 in the first batch:
        // the 54 are kept for the next). One frame at a time: the receive buffer holds one.
        let frames = [
            vec![1400, 1400, 1400, 500, 30],
            vec![200; 100],
            [vec![1400; 50], vec![700, 30]].concat(),
            [vec![1000; 10], vec![300; 90]].concat(),
        ];
        for (f, sizes) in frames.iter().enumerate() {
            let packets: Vec<Bytes> =
                sizes.iter().enumerate().map(|(i, &n)| Bytes::from(vec![(f * 100 + i) as u8; n])).collect();
            let records = records(&packets);
            send_packets(&tx, rx.local_addr().unwrap(), ferrocast_rtsp::codec::packet_slices(&records));
            let mut buf = [0u8; 2000];
            for p in &packets {
                let n =
                    tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut buf)).await.unwrap().unwrap();
                assert_eq!(&buf[..n], &p[..], "datagrams arrive whole and in order");
            }
        }
        assert!(!GSO_OFF.load(Ordering::Relaxed), "the segmented path was taken (Linux 4.18+ on loopback)");
    }
}
