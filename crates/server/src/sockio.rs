//! Socket reads and writes every driver shares: reads that need only `&TcpStream` (the
//! socket is shared with the fan-out task), and vectored writes that first take what the
//! socket accepts at once (no timer: the common case) and only then wait, with a timeout.

use std::io::IoSlice;
use std::os::fd::RawFd;

use anyhow::Context;
use bytes::Bytes;
use tokio::net::TcpStream;

/// Reads what the socket has, waiting for it (cancel-safe: readiness, then a plain read).
pub async fn read_some(socket: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Most buffers handed to one `writev`.
const MAX_SLICES: usize = 64;

/// Writes what the socket takes now, without waiting: true when all of `bufs` went (`bufs`
/// is then empty); false with the rest left in `bufs`. A single buffer (a frame's RTMP chunks
/// or FLV tag, the fan-out's common case) goes with `write`, which costs the kernel less than
/// `writev` (no iovec to import: 6% of the fan-out in `perf`).
pub fn write_now(socket: &TcpStream, bufs: &mut Vec<Bytes>) -> std::io::Result<bool> {
    write_each(bufs, |one| socket.try_write(one), |many| socket.try_write_vectored(many))
}

/// As [`write_now`], for the fan-out's writes to readers that keep up: straight to the
/// socket's descriptor `fd`, without tokio's readiness check (`try_io`, 4% of the server's
/// core at 1,000 readers in `perf`, most of it a cache miss on the socket's tokio state; the
/// caller keeps the descriptor where it already is, see `fanout::SlotState`, and keeps the
/// socket open). The fan-out never waits on the socket: on `WouldBlock` the reader's own task
/// takes over, finds tokio's readiness stale, gets `WouldBlock` once itself and then waits
/// for the socket as usual.
pub fn write_now_direct(fd: RawFd, bufs: &mut Vec<Bytes>) -> std::io::Result<bool> {
    use nix::sys::socket::{MsgFlags, send, sendmsg};
    // MSG_NOSIGNAL: a reader that is gone gives EPIPE, never SIGPIPE.
    let flags = MsgFlags::MSG_NOSIGNAL;
    let io = |r: nix::Result<usize>| r.map_err(std::io::Error::from);
    write_each(
        bufs,
        |one| retry_eintr(|| io(send(fd, one, flags))),
        |many| retry_eintr(|| io(sendmsg::<()>(fd, many, &[], flags, None))),
    )
}

/// Runs `op` again while it is interrupted by a signal.
fn retry_eintr(mut op: impl FnMut() -> std::io::Result<usize>) -> std::io::Result<usize> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The loop of [`write_now`] over a way to write one buffer and one to write several.
fn write_each(
    bufs: &mut Vec<Bytes>,
    mut one: impl FnMut(&[u8]) -> std::io::Result<usize>,
    mut many: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
) -> std::io::Result<bool> {
    let mut first = 0;
    while first < bufs.len() {
        let rest = &bufs[first..];
        let r = if rest.len() == 1 {
            one(&rest[0])
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let k = fill_slices(&mut slices, rest);
            many(&slices[..k])
        };
        match r {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => first = advance(bufs, first, n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                bufs.drain(..first);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    bufs.clear();
    Ok(true)
}

/// Writes and empties `bufs`: first what the socket takes at once, then waiting at most
/// `timeout` for the peer to take the rest.
pub async fn write_with_timeout(
    socket: &TcpStream,
    bufs: &mut Vec<Bytes>,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    if write_now(socket, bufs).context("write")? {
        return Ok(());
    }
    let rest = std::mem::take(bufs);
    tokio::time::timeout(timeout, write_all_vectored(socket, rest))
        .await
        .map_err(|_| anyhow::anyhow!("peer took nothing for {timeout:?}: disconnected"))?
        .context("write")
}

/// Writes all buffers with vectored writes, waiting for the socket as needed.
async fn write_all_vectored(socket: &TcpStream, mut bufs: Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let k = fill_slices(&mut slices, &bufs[first..]);
        socket.writable().await?;
        let n = match socket.try_write_vectored(&slices[..k]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => r?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        first = advance(&mut bufs, first, n);
    }
    Ok(())
}

fn fill_slices<'a>(slices: &mut [IoSlice<'a>; MAX_SLICES], bufs: &'a [Bytes]) -> usize {
    let k = bufs.len().min(MAX_SLICES);
    for (s, b) in slices.iter_mut().zip(&bufs[..k]) {
        *s = IoSlice::new(b);
    }
    k
}

/// Drops `n` written bytes from `bufs[first..]`; the index of the first unwritten buffer.
fn advance(bufs: &mut [Bytes], mut first: usize, mut n: usize) -> usize {
    while n > 0 {
        let len = bufs[first].len();
        if n >= len {
            n -= len;
            first += 1;
        } else {
            bufs[first] = bufs[first].slice(n..);
            n = 0;
        }
    }
    first
}
