//! The fan-out of a stream to its readers, without a task wake-up per frame and reader.
//!
//! A stream's readers are in shards ([`FanOut`]), one fan-out task per shard. The task takes
//! every event from the stream's ring, in order, and hands it to every [`Slot`] of its shard:
//! - a reader that keeps up is in *direct* mode: the fan-out task encodes the frame with the
//!   reader's [`Encoder`] (the shared wire form, see [`ferrocast_media::Frame::wire`]) and
//!   writes it to the reader's socket itself, without waiting;
//! - otherwise the event goes into the slot's bounded queue and the reader's own task is woken
//!   to send it (a reader starting with its GOP, one whose socket was full, one that paused).
//!
//! A direct write that the socket does not take whole leaves direct mode: the rest of the frame
//! waits in the slot for the reader's task, which writes it first, with the write timeout, and
//! then works through the queue. Any event other than a frame (new tracks, unpublish, the end)
//! also leaves direct mode, so readers handle them in their own code. The reader's task goes
//! back to direct mode when its queue is empty (under the slot's lock, so no event falls
//! between the two). The per-frame wake-up of every reader's task was a quarter of the
//! fan-out's CPU; in direct mode a frame costs a reader one lock and one `writev`, and the
//! frames that arrived while the fan-out task was busy share one `writev` (no wait is added
//! for them: a loaded server makes fewer, larger writes instead of falling behind). With a
//! write-merge window (`hub.write_merge_ms`) the fan-out task waits out the window the first
//! frame opened and writes all of its frames at once: the window costs one timer per stream,
//! not one per reader. Without a window, a loaded fan-out (a pass over its readers takes 1 ms
//! or more) opens a window of its own when the stream's next frame is due within three passes
//! (`hub.load_merge_max_ms` at most; it learns when each track's frames arrive): the frames
//! that arrive in it share a write, a video frame and the audio frames around it, at 1,000
//! readers one write per reader for two or three frames. A frame that arrives during a pass
//! waits about that long for its last reader anyway. It holds only while that measurably
//! costs it less ([`Choice`]), and an idle fan-out never holds.
//!
//! The fan-out measures the server's share of a reader's latency (issue 14): the publisher
//! notes when each frame entered the hub ([`FanOut::arrived`], a table of the latest
//! [`ARRIVALS`] frames by ring number, one relaxed store per frame), and the first pass of
//! any shard that writes the frame to a reader's socket takes that note and puts the time
//! since into the hub's `ingest_to_first_write` histogram: one clock reading per pass and a
//! few relaxed atomics per frame and stream, nothing per reader. Frames only readers' own
//! tasks write (a reader catching up with its GOP, RTP over UDP) are not measured.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrocast_media::{Frame, TrackKind};
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};
use tracing::error;

use crate::event::{HubEvent, Sequenced};
use crate::metrics::Histogram;
use crate::session::OutCount;

/// Turns frames into the bytes of one reader's protocol, in the fan-out task.
pub trait Encoder: Send + std::any::Any {
    /// Appends the buffers to write for `frame` (shared wire forms; nothing to skip it). An
    /// encoder that sends by itself (RTP over UDP) appends nothing.
    fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>);
}

/// One reader's place in its stream's fan-out.
///
/// Laid out for the pass over hundreds of readers, whose slots are apart in memory: the lock
/// and what a pass needs of a reader that sends by itself (RTP over UDP) are the slot's first
/// cache line, which a pass reads ahead for several slots at once ([`touch`]).
#[repr(C, align(64))]
pub struct Slot {
    state: Mutex<SlotState>,
    /// Wakes the reader's task: an event queued, or direct mode left.
    notify: Notify,
    /// The reader's session, whose `bytes_out` direct writes add to (see [`OutCount`]).
    session: std::sync::OnceLock<Arc<crate::session::SessionInfo>>,
}

/// The fields each pass uses first (see [`Slot`]), then the others.
#[repr(C)]
struct SlotState {
    /// A pass panicked on this slot: it takes no more events.
    failed: bool,
    /// Set when direct mode ended; cleared when the reader's task takes over.
    fell_back: bool,
    /// The descriptor of `socket`, where direct writes go (None: the encoder sends by
    /// itself). Kept here, beside the lock: reaching it through the socket was a cache miss
    /// per reader and write.
    fd: Option<RawFd>,
    /// Events before this one were in the reader's start-up snapshot.
    start_seq: u64,
    /// Set in direct mode.
    direct: Option<Box<dyn Encoder>>,
    /// Bytes direct writes sent, not yet added to the session.
    sent: OutCount,
    /// The socket `fd` is of: the slot keeps it open.
    socket: Option<Arc<TcpStream>>,
    /// Events for the reader's task, in order.
    queue: VecDeque<HubEvent>,
    /// Most queued events; past it the queue is dropped and counted as a lag.
    cap: usize,
    /// Events dropped since the reader's task last looked.
    lagged: u64,
    /// The unwritten rest of the frame at which direct mode ended.
    pending: Vec<Bytes>,
    /// A socket error met by a direct write.
    error: Option<std::io::Error>,
    /// The encoder of the direct mode that ended, for the reader's task to take back.
    returned: Option<Box<dyn Encoder>>,
}

impl SlotState {
    /// Ends direct mode, if on (fan-out task): the encoder waits for the reader's task.
    fn end_direct(&mut self) {
        if let Some(e) = self.direct.take() {
            self.returned = Some(e);
            self.fell_back = true;
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    /// A slot whose direct writes go to `socket`, queueing up to `cap` events.
    pub fn new(socket: Option<Arc<TcpStream>>, start_seq: u64, cap: usize) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                failed: false,
                fell_back: false,
                fd: socket.as_ref().map(|s| s.as_raw_fd()),
                start_seq,
                direct: None,
                sent: OutCount::default(),
                socket,
                queue: VecDeque::new(),
                cap,
                lagged: 0,
                pending: Vec::new(),
                error: None,
                returned: None,
            }),
            notify: Notify::new(),
            session: std::sync::OnceLock::new(),
        })
    }

    /// Counts the bytes direct writes send in `session`'s `bytes_out` (set once).
    pub fn count_into(&self, session: Arc<crate::session::SessionInfo>) {
        let _ = self.session.set(session);
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds what direct writes sent to the session.
    fn count_sent(&self, st: &mut SlotState) {
        st.sent.flush(self.session.get().map(|s| &**s));
    }

    /// The next queued event for the reader's task: `Err(n)` when `n` events were dropped
    /// because the queue overflowed.
    pub fn pop(&self) -> Option<Result<HubEvent, u64>> {
        let mut st = self.lock();
        if st.lagged > 0 {
            return Some(Err(std::mem::take(&mut st.lagged)));
        }
        let ev = st.queue.pop_front();
        if st.queue.is_empty() && st.queue.capacity() > 64 {
            st.queue = VecDeque::new(); // after a catch-up
        }
        ev.map(Ok)
    }

    /// Waits until something may have changed (an event queued, direct mode left).
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// Hands the writing of frames to the fan-out task, if nothing is queued; otherwise the
    /// encoder is handed back. The reader's task gets it back with [`Slot::take_back`].
    pub fn go_direct(&self, encoder: Box<dyn Encoder>) -> Result<(), Box<dyn Encoder>> {
        let mut st = self.lock();
        if !st.queue.is_empty() || st.lagged > 0 || st.fell_back {
            return Err(encoder);
        }
        st.direct = Some(encoder);
        Ok(())
    }

    /// True in direct mode.
    pub fn is_direct(&self) -> bool {
        self.lock().direct.is_some()
    }

    /// True when direct mode ended and the reader's task has not taken over yet.
    pub fn fell_back(&self) -> bool {
        self.lock().fell_back
    }

    /// The reader's task takes the writing back (for its own messages, or after direct mode
    /// ended): the unwritten rest of the frame direct mode stopped at goes to the front of
    /// `out`, or the socket error it met is returned. Nothing happens if the task had it.
    pub fn take_over(&self, out: &mut Vec<Bytes>) -> std::io::Result<()> {
        self.take_back(out).map(drop)
    }

    /// [`Slot::take_over`], handing back the encoder direct mode had (None when the task had
    /// the writing already). On an error (a write that failed, a pass that panicked in the
    /// encoder) the encoder is dropped with the slot's hold on the reader.
    pub fn take_back(&self, out: &mut Vec<Bytes>) -> std::io::Result<Option<Box<dyn Encoder>>> {
        let mut st = self.lock();
        if st.direct.is_none() && !st.fell_back {
            return Ok(None);
        }
        let encoder = st.direct.take().or_else(|| st.returned.take());
        st.fell_back = false;
        self.count_sent(&mut st);
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        out.splice(0..0, std::mem::take(&mut st.pending));
        Ok(encoder)
    }

    /// [`Slot::deliver_with`] with a scratch list of its own.
    #[cfg(test)]
    fn deliver(&self, events: &[Sequenced]) -> bool {
        self.deliver_with(events, &mut Vec::new())
    }

    /// Events from the ring, in order (fan-out task only). In direct mode the frames' wire
    /// forms are gathered (in `scratch`, the pass's, reused from reader to reader) and written
    /// with one write: frames that arrived while the fan-out task was busy go out together,
    /// with no wait added. True when something was written to the socket (an encoder that
    /// sends by itself, RTP over UDP, writes nothing here).
    fn deliver_with(&self, events: &[Sequenced], scratch: &mut Vec<Bytes>) -> bool {
        let mut st = self.lock();
        let st = &mut *st;
        if st.failed {
            return false;
        }
        scratch.clear();
        let mut wrote = false;
        for (seq, ev) in events {
            if *seq < st.start_seq {
                continue;
            }
            if let Some(encoder) = st.direct.as_mut() {
                if let HubEvent::Frame(f) = ev {
                    #[cfg(debug_assertions)]
                    test_hook::before_encode(f);
                    encoder.frame(f, scratch);
                    continue;
                }
                wrote |= self.flush(st, scratch);
                st.end_direct();
            }
            if st.queue.len() >= st.cap {
                st.lagged += st.queue.len() as u64;
                st.queue.clear();
            }
            st.queue.push_back(ev.clone());
            self.notify.notify_one();
        }
        wrote | self.flush(st, scratch)
    }

    /// Writes the gathered wire forms; a write not taken whole (or failed) ends direct mode.
    /// True when there was something to write.
    fn flush(&self, st: &mut SlotState, scratch: &mut Vec<Bytes>) -> bool {
        if scratch.is_empty() || st.direct.is_none() {
            return false;
        }
        let Some(fd) = st.fd else { return false };
        let total: usize = scratch.iter().map(Bytes::len).sum();
        let session = self.session.get().map(|s| &**s);
        match crate::sockio::write_now_direct(fd, scratch) {
            Ok(true) => {
                st.sent.add(total, session);
                return true;
            }
            Ok(false) => {
                st.sent.add(total - scratch.iter().map(Bytes::len).sum::<usize>(), session);
                st.sent.flush(session);
                st.pending = std::mem::take(scratch)
            }
            Err(e) => {
                st.sent.flush(session);
                st.error = Some(e)
            }
        }
        scratch.clear();
        st.end_direct();
        self.notify.notify_one();
        true
    }

    /// A pass panicked while handing this slot an event: the reader is ended (its task gets
    /// the error at its next take-over) and the slot takes nothing more.
    fn fail(&self) {
        let mut st = self.lock();
        st.failed = true;
        st.direct = None;
        st.returned = None;
        st.fell_back = true;
        st.pending.clear();
        st.queue.clear();
        st.error = Some(std::io::Error::other("the fan-out panicked while encoding for this reader"));
        self.notify.notify_one();
    }

    /// Too far behind for the fan-out task itself (fan-out task only).
    fn lag(&self, n: u64) {
        let mut st = self.lock();
        st.end_direct();
        st.fell_back = true;
        st.lagged += n + st.queue.len() as u64;
        st.queue.clear();
        self.notify.notify_one();
    }
}

/// The readers of one stream, in shards: one fan-out task per shard, as many shards as the
/// runtime has worker threads, so a popular stream's readers are written to from every core.
/// Owns the stream's reader count.
#[derive(Debug)]
pub(crate) struct FanOut {
    shards: Vec<Shard>,
    /// Subscriptions alive (attached or not).
    readers: AtomicUsize,
    /// When the fan-out writes (`hub.write_merge_ms`, `hub.load_merge_max_ms`).
    pacing: Pacing,
    /// Readers ended by a panic in a pass (the hub's counter).
    panics: Arc<AtomicU64>,
    /// When the latest frames entered the hub, until their first write.
    arrivals: Arrivals,
    /// Ingest to first write (the hub's histogram).
    latency: Option<Arc<Histogram>>,
}

/// Frames whose arrival the fan-out remembers: the fan-out of a stream taking longer than
/// this many frames (several seconds at a camera's 25-30 frames and ~50 audio frames a
/// second) to write one loses its note, and the frame goes unmeasured.
pub const ARRIVALS: usize = 512;

/// Bits of an arrival note that hold the time (µs on the fan-out's clock, wrapping): 2^40 µs
/// is 12 days, far beyond any latency measured; the bits above hold the frame's ring number.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// When each of the latest [`ARRIVALS`] frames entered the hub, by ring number: each note
/// packs the number's low bits (which frame it is) with the arrival time; a time of 0 marks
/// a note already taken.
#[derive(Debug)]
struct Arrivals {
    epoch: Instant,
    notes: Box<[AtomicU64]>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals { epoch: Instant::now(), notes: (0..ARRIVALS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Arrivals {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn slot(&self, seq: u64) -> &AtomicU64 {
        &self.notes[seq as usize % ARRIVALS]
    }

    fn note(seq: u64, us: u64) -> u64 {
        (seq << TIME_BITS) | (us & TIME_MASK).max(1)
    }

    /// Frame `seq` entered the hub at `us`.
    fn put(&self, seq: u64, us: u64) {
        self.slot(seq).store(Self::note(seq, us), Ordering::Relaxed);
    }

    /// Takes the arrival of frame `seq` if it is still noted and no one took it yet: µs from
    /// it to `now_us`.
    fn take(&self, seq: u64, now_us: u64) -> Option<u64> {
        let slot = self.slot(seq);
        let note = slot.load(Ordering::Relaxed);
        let tag = |n: u64| n >> TIME_BITS;
        if tag(note) != tag(Self::note(seq, 0)) || note & TIME_MASK == 0 {
            return None;
        }
        slot.compare_exchange(note, note & !TIME_MASK, Ordering::Relaxed, Ordering::Relaxed).ok()?;
        Some(now_us.wrapping_sub(note) & TIME_MASK)
    }
}

/// Part of a stream's readers, served by one fan-out task.
#[derive(Debug, Default)]
struct Shard {
    list: Mutex<SlotList>,
}

/// A shard's slots as its task last took them. Replaced whole, never changed in place: a pass
/// keeps the list it began with, and attach and detach never wait for a pass.
#[derive(Debug, Default)]
struct SlotList {
    slots: Arc<Vec<Arc<Slot>>>,
    /// The shard's task runs (it holds one receiver of the ring).
    started: bool,
    /// Number of the first event that the task's next pass will hand to the list it takes
    /// then: events before it went to lists taken before.
    taken: u64,
}

impl FanOut {
    /// A fan-out with `shards` shards.
    pub(crate) fn new(shards: usize, pacing: Pacing, panics: Arc<AtomicU64>) -> FanOut {
        FanOut {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            readers: AtomicUsize::new(0),
            pacing,
            panics,
            arrivals: Arrivals::default(),
            latency: None,
        }
    }

    /// Puts the time from each frame's arrival ([`FanOut::arrived`]) to its first write to a
    /// reader's socket in `histogram`.
    pub(crate) fn with_latency(mut self, histogram: Arc<Histogram>) -> FanOut {
        self.latency = Some(histogram);
        self
    }

    /// `at` on the clock of [`FanOut::arrived`], µs.
    pub(crate) fn us_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.arrivals.epoch).as_micros() as u64
    }

    /// The frame that will be ring event `seq` entered the hub at `arrival_us` (from
    /// [`FanOut::us_at`]). One relaxed store.
    pub(crate) fn arrived(&self, seq: u64, arrival_us: u64) {
        if self.latency.is_some() {
            self.arrivals.put(seq, arrival_us);
        }
    }

    /// A pass wrote `events` to a reader's socket: the frames among them not written before
    /// by any shard go into the histogram.
    fn first_written(&self, events: &[Sequenced]) {
        let Some(h) = &self.latency else { return };
        let now = self.arrivals.now_us();
        for (seq, ev) in events {
            if matches!(ev, HubEvent::Frame(_))
                && let Some(us) = self.arrivals.take(*seq, now)
            {
                h.observe_us(us);
            }
        }
    }

    /// Counts one more reader, unless there are `max` already. No lock.
    pub(crate) fn join(&self, max: usize) -> bool {
        self.readers.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// One reader fewer.
    pub(crate) fn leave(&self) {
        self.readers.fetch_sub(1, Ordering::AcqRel);
    }

    /// Readers now.
    pub(crate) fn readers(&self) -> usize {
        self.readers.load(Ordering::Acquire)
    }

    /// Adds a slot whose reader's snapshot ends before event `start_seq`, with `rx`, the
    /// reader's ring receiver positioned at `start_seq`. The first slot of a shard starts
    /// the shard's task with `rx`. Otherwise the task may have taken events from
    /// `start_seq` on already: `rx` is handed back for the reader to take them from itself,
    /// up to [`Attachment::floor`]; None when the fan-out hands it every event from
    /// `start_seq` on.
    pub(crate) fn attach(
        self: &Arc<Self>,
        slot: Arc<Slot>,
        start_seq: u64,
        rx: broadcast::Receiver<Sequenced>,
    ) -> (Attachment, Option<broadcast::Receiver<Sequenced>>) {
        let shard = (0..self.shards.len()).min_by_key(|&i| lock(&self.shards[i].list).slots.len()).unwrap_or(0);
        let mut list = lock(&self.shards[shard].list);
        let mut rx = Some(rx);
        if !list.started {
            list.started = true;
            list.taken = start_seq;
            let rx = rx.take().expect("not taken yet");
            tokio::spawn(run(Arc::downgrade(self), shard, rx, self.pacing));
        }
        let mut slots = Vec::with_capacity(list.slots.len() + 1);
        slots.extend(list.slots.iter().cloned());
        slots.push(slot.clone());
        list.slots = Arc::new(slots);
        let floor = list.taken.max(start_seq);
        drop(list);
        let rx = rx.filter(|_| floor > start_seq);
        (Attachment { fanout: self.clone(), shard, slot, floor }, rx)
    }

    fn detach(&self, shard: usize, slot: &Arc<Slot>) {
        let mut list = lock(&self.shards[shard].list);
        let slots: Vec<Arc<Slot>> = list.slots.iter().filter(|x| !Arc::ptr_eq(x, slot)).cloned().collect();
        list.slots = Arc::new(slots);
    }

    /// The shard's slots for a pass over the events before `next`.
    fn take(&self, shard: usize, next: u64) -> Arc<Vec<Arc<Slot>>> {
        let mut list = lock(&self.shards[shard].list);
        list.taken = list.taken.max(next);
        list.slots.clone()
    }

    /// Hands `events` to each slot; a panic on one slot ends that reader only. True when
    /// something was written to a socket.
    fn pass(&self, slots: &[Arc<Slot>], events: &[Sequenced], scratch: &mut Vec<Bytes>) -> bool {
        let mut wrote = false;
        for (i, s) in slots.iter().enumerate() {
            if i % TOUCH_AHEAD == 0 {
                touch(&slots[i + 1..(i + 1 + TOUCH_AHEAD).min(slots.len())]);
            }
            match catch_unwind(AssertUnwindSafe(|| s.deliver_with(events, scratch))) {
                Ok(w) => {
                    if w && !wrote {
                        self.first_written(events);
                    }
                    wrote |= w;
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    self.panics.fetch_add(1, Ordering::Relaxed);
                    error!(panic = what, "fan-out: a panic while encoding for a reader; that reader is disconnected");
                    s.fail();
                }
            }
        }
        wrote
    }
}

/// How many slots a pass reads ahead, together.
const TOUCH_AHEAD: usize = 8;

/// Reads the first line of each of `slots` (its lock's poison flag, which shares it with
/// the lock and the fields a pass uses first): the slots are apart in memory, and a pass over
/// hundreds of readers otherwise waits for each one's line in turn when it takes its lock.
/// Read together, the lines are fetched at once, in one wait.
fn touch(slots: &[Arc<Slot>]) {
    let mut any = false;
    for s in slots {
        any |= s.state.is_poisoned();
    }
    std::hint::black_box(any);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a slot attached to its stream; dropping it detaches the slot.
#[derive(Debug)]
pub struct Attachment {
    fanout: Arc<FanOut>,
    shard: usize,
    slot: Arc<Slot>,
    floor: u64,
}

impl Attachment {
    /// The slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The first event the slot gets from the fan-out: the reader takes the events between
    /// its snapshot and this one from its own ring receiver.
    pub fn floor(&self) -> u64 {
        self.floor
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.fanout.detach(self.shard, &self.slot);
        let mut st = self.slot.lock();
        self.slot.count_sent(&mut st);
        // A pass under way may still hold the slot: it skips it from now on, so nothing is
        // sent, or counted, after the count above.
        st.failed = true;
    }
}

/// Most ring events the fan-out task hands on together.
const MAX_BATCH: usize = 64;

/// A fan-out whose passes over its readers take less than this is not loaded: it writes each
/// frame as it arrives.
const LOADED_PASS: Duration = Duration::from_millis(1);

/// A loaded fan-out's window lasts at most this many passes over its readers. At 1,000
/// readers: two passes (a window of ~20 ms) took 0.58x nginx-rtmp's CPU for eager readers
/// but 0.77x for batched ones; three (~40 ms) 0.43x and 0.58x, with p99 latency ~85 ms
/// against nginx-rtmp's 117-138 (BENCHMARKS.md, thirteenth round).
const HOLD_PASSES: u32 = 3;

/// When the fan-out task writes what it has been handed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// The write-merge window (`hub.write_merge_ms`): every event waits until the window it
    /// opened ends.
    pub merge: Duration,
    /// Without a window: the longest window a loaded fan-out opens (`hub.load_merge_max_ms`;
    /// zero: never).
    pub load_max: Duration,
}

impl Pacing {
    /// How long a window a loaded fan-out may open for the frames that follow the first:
    /// [`HOLD_PASSES`] passes over its readers (up to `load_max`). A frame that arrives
    /// during a pass already waits up to two passes for its last reader (the pass under way,
    /// then its own), so the hold is of the size of the delays that load causes anyway. An
    /// idle fan-out (passes under [`LOADED_PASS`]) holds nothing, nor does one with no
    /// reader to save a write for.
    fn hold(&self, load: &Load) -> Duration {
        if load.pass < LOADED_PASS || !load.writes {
            return Duration::ZERO;
        }
        (load.pass * HOLD_PASSES).min(self.load_max)
    }
}

/// The time the fan-out's recent passes over its readers took (moving average).
#[derive(Debug, Default)]
struct Load {
    pass: Duration,
    /// The last pass wrote to some reader's TCP socket, where frames written together cost
    /// one write (RTP over UDP sends each frame's packets by themselves).
    writes: bool,
}

impl Load {
    fn passed(&mut self, pass: Duration, writes: bool) {
        self.pass = (self.pass * 7 + pass) / 8;
        self.writes = writes;
    }
}

/// How long a loaded fan-out keeps the way of writing it chose (holding or not) before it
/// tries the other again; the last [`MEASURE`] of it is measured.
const SETTLED: Duration = Duration::from_secs(5);

/// How long each way of writing is measured for: the end of a settled spell, and a trial of
/// the other way.
const MEASURE: Duration = Duration::from_millis(500);

/// Holding is kept only when it takes at least this share less of the fan-out's time than
/// writing each frame as it arrives: otherwise the lower latency wins.
const MIN_SAVING: f64 = 0.1;

/// The weight of the newest trial in the smoothed ratio of the two ways' costs: one window in
/// four of a 2 s GOP has a keyframe, whose pass is several times a frame's, and readers come
/// and go; single trials are noisy, a few together are not.
const RATIO_WEIGHT: f64 = 0.25;

/// Whether a loaded fan-out holds frames for the next one, chosen by what it costs the
/// server: the share of the time its passes over the readers take, measured in turn with and
/// without holding (the last [`MEASURE`] of each [`SETTLED`] spell, then a trial of the other
/// way for [`MEASURE`]), and the ratio of the two smoothed over the trials.
///
/// What a write costs depends on the readers. A reader that takes each write as it lands
/// acknowledges it at once, so the next write leaves at once too: a segment sent and, on
/// loopback, received on this core. Holding a frame for the next one halves those. A reader
/// that reads in batches (a player with a buffer) leaves data unacknowledged between its
/// reads, and with Nagle on (the default) a write made meanwhile is only queued by the kernel
/// and leaves with the next acknowledgement: frames are coalesced anyway, and holding them
/// mostly adds latency (spacing writes past the reader's acknowledgements, it even makes each
/// of them leave on its own). Which kind of readers a stream has is not known, so the fan-out
/// measures. What it measures is the time of its passes: on loopback the kernel sends the
/// queued data when the reader's acknowledgement arrives, on the reader's core; on a network
/// that is softirq work on this machine, outside the passes, so there the choice leans
/// towards not holding by what those sends cost (it saves system calls only).
#[derive(Debug)]
struct Choice {
    /// The way in force.
    holding: bool,
    /// The current spell is a trial of the way not chosen.
    trial: bool,
    /// When the current spell ends, and from when it is measured.
    until: Instant,
    measure_from: Instant,
    /// The time passes took within the measured part.
    busy: Duration,
    /// The chosen way's share of busy time at the end of the last settled spell.
    settled_cost: f64,
    /// Holding's cost over writing each frame's, smoothed over the trials (None before the
    /// first).
    ratio: Option<f64>,
}

impl Choice {
    /// Holding first (a fan-out that is not loaded holds nothing anyway); the first spell
    /// lasts two [`MEASURE`]s, so the first choice comes soon after the stream starts.
    fn new(now: Instant) -> Choice {
        Choice {
            holding: true,
            trial: false,
            until: now + MEASURE * 2,
            measure_from: now + MEASURE,
            busy: Duration::ZERO,
            settled_cost: 0.0,
            ratio: None,
        }
    }

    /// A pass that took `pass` ended at `now`.
    fn passed(&mut self, now: Instant, pass: Duration) {
        if now >= self.measure_from {
            self.busy += pass;
        }
        if now < self.until {
            return;
        }
        // The share of the time measured (a stalled stream's window ends late).
        let measured = now.saturating_duration_since(self.measure_from).max(MEASURE / 2);
        let cost = self.busy.as_secs_f64() / measured.as_secs_f64();
        if self.trial {
            let (hold, each) = if self.holding { (self.settled_cost, cost) } else { (cost, self.settled_cost) };
            // Both ways idle (no pass measured): nothing learnt.
            if each > 0.0 {
                let r = hold / each;
                self.ratio = Some(self.ratio.map_or(r, |old| old + (r - old) * RATIO_WEIGHT));
            }
            self.holding = self.ratio.is_none_or(|r| r <= 1.0 - MIN_SAVING);
            self.trial = false;
            self.until = now + SETTLED;
            self.measure_from = self.until - MEASURE;
        } else {
            self.settled_cost = cost;
            self.trial = true;
            self.until = now + MEASURE;
            self.measure_from = now;
        }
        self.busy = Duration::ZERO;
    }

    /// Whether frames may be held now: the chosen way, or during a trial the other one.
    fn holds(&self) -> bool {
        self.holding != self.trial
    }
}

/// When each track's frames arrive, to tell when the stream's next frame is due.
#[derive(Debug, Default)]
struct Cadence {
    /// Video, audio: the last arrival and the moving average of the gaps between arrivals.
    tracks: [(Option<Instant>, Option<Duration>); 2],
}

impl Cadence {
    /// An event taken at `at`; `waited` when the fan-out task was waiting for it (so `at` is
    /// when it arrived; otherwise it arrived while the task was busy, at some earlier time).
    fn took(&mut self, event: &HubEvent, at: Instant, waited: bool) {
        let HubEvent::Frame(f) = event else { return };
        let (last, gap) = &mut self.tracks[(f.kind == TrackKind::Audio) as usize];
        match (*last, *gap) {
            (Some(prev), _) if waited => {
                let d = at - prev;
                if d < Duration::from_secs(1) {
                    *gap = Some(gap.map_or(d, |g| (g * 3 + d) / 4));
                }
                *last = Some(at);
            }
            // Arrived while the task was busy: when it was due, if that was not later.
            (Some(prev), Some(g)) => *last = Some((prev + g).min(at)),
            _ => *last = Some(at),
        }
    }

    /// How long from `now` until the next frame of any track is due.
    fn next_due(&self, now: Instant) -> Option<Duration> {
        self.tracks
            .iter()
            .filter_map(|(last, gap)| Some((*last)? + (*gap)?))
            .map(|due| due.saturating_duration_since(now))
            .min()
    }
}

/// The fan-out task of one shard of a stream: hands every event, in ring order, to every
/// slot of the shard, together with the events that arrived while it was busy. With a
/// write-merge window, an event waits until the window it opened ends and goes with every
/// event of the window: one write per window and reader, and one timer per stream instead of
/// one per reader. It ends with the stream.
pub(crate) async fn run(fanout: Weak<FanOut>, shard: usize, mut rx: broadcast::Receiver<Sequenced>, pacing: Pacing) {
    use broadcast::error::{RecvError, TryRecvError};
    let mut batch: Vec<Sequenced> = Vec::with_capacity(MAX_BATCH);
    // The buffers of the frames being written to one reader, reused from reader to reader.
    let mut scratch: Vec<Bytes> = Vec::new();
    let mut load = Load::default();
    let mut choice = Choice::new(Instant::now());
    let mut cadence = Cadence::default();
    loop {
        // The next event; one that is already there arrived while the task was busy.
        let (next, waited) = match rx.try_recv() {
            Ok(item) => (Ok(item), false),
            Err(TryRecvError::Empty) => (rx.recv().await, true),
            Err(TryRecvError::Lagged(n)) => (Err(RecvError::Lagged(n)), false),
            Err(TryRecvError::Closed) => (Err(RecvError::Closed), false),
        };
        let mut end = match next {
            Ok(item) => {
                batch.push(item);
                None
            }
            Err(e) => Some(e),
        };
        if end.is_none() && !pacing.merge.is_zero() {
            tokio::time::sleep(pacing.merge).await;
        } else if let Some((_, first)) = batch.last() {
            // Without a window: under load, a frame whose stream's next frame is due within
            // the hold opens a window of the hold's length, and the frames that arrive in it
            // share its write.
            let now = Instant::now();
            cadence.took(first, now, waited);
            let hold = if choice.holds() { pacing.hold(&load) } else { Duration::ZERO };
            if cadence.next_due(now).is_some_and(|due| due < hold) {
                let until = now + hold;
                while end.is_none() && batch.len() < MAX_BATCH {
                    tokio::select! {
                        r = rx.recv() => match r {
                            Ok(item) => {
                                cadence.took(&item.1, Instant::now(), true);
                                batch.push(item);
                            }
                            Err(e) => end = Some(e),
                        },
                        () = tokio::time::sleep_until(until.into()) => break,
                    }
                }
            }
        }
        // Everything ready, in batches.
        loop {
            while end.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => {
                        cadence.took(&item.1, Instant::now(), false);
                        batch.push(item);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => end = Some(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => end = Some(RecvError::Closed),
                }
            }
            let Some(fanout) = fanout.upgrade() else { return };
            let next = batch.last().map(|(seq, _)| seq + 1).unwrap_or(0);
            let slots = fanout.take(shard, next);
            let full = batch.len() == MAX_BATCH;
            if !batch.is_empty() {
                let started = Instant::now();
                let wrote = fanout.pass(&slots, &batch, &mut scratch);
                let pass = started.elapsed();
                load.passed(pass, wrote);
                choice.passed(started + pass, pass);
                batch.clear();
            }
            match end.take() {
                None if full => continue,
                None => break,
                Some(RecvError::Lagged(n)) => {
                    slots.iter().for_each(|s| s.lag(n));
                    break;
                }
                Some(RecvError::Closed) => {
                    fanout.pass(&slots, &[(u64::MAX, HubEvent::Ended)], &mut scratch);
                    return;
                }
            }
        }
    }
}

/// A way for the tests to make a pass panic, in debug builds only (the tests drive the debug
/// binary): with `FERROCAST_TEST_PANIC_MARKER` set, the first encode (in the whole process) of
/// a frame whose payload contains that text panics.
#[cfg(debug_assertions)]
mod test_hook {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ferrocast_media::Frame;

    static MARKER: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);

    pub(super) fn before_encode(frame: &Frame) {
        let marker =
            MARKER.get_or_init(|| std::env::var_os("FERROCAST_TEST_PANIC_MARKER").map(|m| m.into_encoded_bytes()));
        let Some(marker) = marker.as_deref() else { return };
        if !marker.is_empty()
            && frame.data.windows(marker.len()).any(|w| w == marker)
            && !FIRED.swap(true, Ordering::Relaxed)
        {
            panic!("test hook: FERROCAST_TEST_PANIC_MARKER");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_media::TrackKind;
    use tokio::io::AsyncReadExt;

    /// Writes each frame's payload as it is.
    struct Raw;

    impl Encoder for Raw {
        fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>) {
            out.push(frame.data.clone());
        }
    }

    fn frame(data: Vec<u8>) -> HubEvent {
        HubEvent::Frame(Frame::new(TrackKind::Video, 0, 0, false, Bytes::from(data)))
    }

    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        a.writable().await.unwrap();
        (Arc::new(a), b)
    }

    #[test]
    fn what_a_pass_uses_of_a_slot_is_its_first_cache_line() {
        use std::mem::{offset_of, size_of};
        assert_eq!(std::mem::align_of::<Slot>(), 64);
        assert_eq!(offset_of!(Slot, state), 0, "the lock first");
        // The state's fields follow the lock's word and poison flag.
        let state = size_of::<Mutex<SlotState>>() - size_of::<SlotState>();
        let end = state + offset_of!(SlotState, sent) + size_of::<OutCount>();
        assert!(end <= 64, "the lock, failed, fd, start_seq, direct and sent end at {end}");
    }

    #[tokio::test]
    async fn direct_writes_then_falls_back_with_the_rest_and_queues() {
        let (a, mut b) = pair().await;
        let slot = Slot::new(Some(a), 10, 4);
        let sessions = crate::session::Sessions::new();
        let session = sessions.open(crate::session::Protocol::Rtmp, "127.0.0.1:1".parse().unwrap());
        slot.count_into(session.info().clone());
        let sent = || session.info().bytes_out.load(Ordering::Relaxed) as usize;
        // Before the reader's snapshot: ignored.
        slot.deliver(&[(9, frame(b"old".to_vec()))]);
        assert!(slot.pop().is_none());
        // Not direct yet: queued for the reader's task.
        slot.deliver(&[(10, frame(b"q".to_vec()))]);
        assert!(slot.go_direct(Box::new(Raw)).is_err(), "an event is queued");
        assert!(matches!(slot.pop(), Some(Ok(HubEvent::Frame(_)))));
        assert!(slot.go_direct(Box::new(Raw)).is_ok());
        slot.deliver(&[(11, frame(b"direct".to_vec()))]);
        let mut buf = [0u8; 6];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"direct", "the fan-out wrote to the socket itself");
        assert_eq!(sent(), 0, "counted in the slot first");
        let every = OutCount::EVERY as u64;
        for seq in 12..11 + every {
            slot.deliver(&[(seq, frame(b"direct".to_vec()))]);
        }
        let mut buf = vec![0u8; 6 * (every as usize - 1)];
        b.read_exact(&mut buf).await.unwrap();
        let counted = 6 * every as usize;
        assert_eq!(sent(), counted, "direct writes count in the reader's session");
        // A frame the socket cannot take whole: the rest waits for the reader's task.
        let big = vec![7u8; 64 << 20];
        slot.deliver(&[(11 + every, frame(big.clone()))]);
        assert!(slot.fell_back() && !slot.is_direct());
        let mut pending = Vec::new();
        slot.take_over(&mut pending).unwrap();
        let rest: usize = pending.iter().map(Bytes::len).sum();
        assert!(rest > 0 && rest < big.len(), "partly written: {rest} left");
        assert_eq!(sent(), counted + big.len() - rest, "what the socket took is counted, not the rest");
        // Later events queue, bounded: an overflow is a lag.
        for seq in 12 + every..19 + every {
            slot.deliver(&[(seq, frame(vec![1]))]);
        }
        assert!(matches!(slot.pop(), Some(Err(4))), "the 4 queued before the overflow were dropped");
        assert!(matches!(slot.pop(), Some(Ok(_))));
    }

    /// An encoder with state of its own, which the reader's task must get back.
    struct Stateful(u32);

    impl Encoder for Stateful {
        fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>) {
            self.0 += 1;
            out.push(frame.data.clone());
        }
    }

    fn counted(encoder: Option<Box<dyn Encoder>>) -> Option<u32> {
        let any: Box<dyn std::any::Any> = encoder?;
        any.downcast::<Stateful>().ok().map(|c| c.0)
    }

    #[tokio::test]
    async fn the_reader_s_task_gets_its_encoder_back_with_what_it_counted() {
        let (a, mut b) = pair().await;
        let slot = Slot::new(Some(a), 0, 16);
        let mut out = Vec::new();
        assert_eq!(counted(slot.take_back(&mut out).unwrap()), None, "the task had the writing");
        // Taken back while direct.
        assert!(slot.go_direct(Box::new(Stateful(0))).is_ok());
        slot.deliver(&[(0, frame(b"a".to_vec())), (1, frame(b"b".to_vec()))]);
        assert_eq!(counted(slot.take_back(&mut out).unwrap()), Some(2));
        assert!(!slot.is_direct());
        // Refused: handed back at once.
        slot.deliver(&[(2, HubEvent::Unpublished)]);
        let refused = slot.go_direct(Box::new(Stateful(7))).err();
        assert_eq!(counted(refused), Some(7), "an event is queued");
        assert!(matches!(slot.pop(), Some(Ok(HubEvent::Unpublished))));
        // Direct mode ended by the fan-out (another event): kept for the task.
        assert!(slot.go_direct(Box::new(Stateful(0))).is_ok());
        slot.deliver(&[(3, frame(b"c".to_vec())), (4, HubEvent::Unpublished)]);
        assert!(slot.fell_back());
        assert_eq!(counted(slot.take_back(&mut out).unwrap()), Some(1));
        assert_eq!(counted(slot.take_back(&mut out).unwrap()), None, "handed back once");
        let mut buf = [0u8; 3];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abc");
    }

    #[tokio::test]
    async fn a_batch_is_written_together_up_to_the_first_other_event() {
        let (a, mut b) = pair().await;
        let slot = Slot::new(Some(a), 0, 16);
        assert!(slot.go_direct(Box::new(Raw)).is_ok());
        let batch = [
            (0, frame(b"one".to_vec())),
            (1, frame(b"two".to_vec())),
            (2, HubEvent::Unpublished),
            (3, frame(b"three".to_vec())),
        ];
        slot.deliver(&batch);
        let mut buf = [0u8; 6];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"onetwo", "the frames before the other event were written");
        assert!(slot.fell_back());
        assert!(matches!(slot.pop(), Some(Ok(HubEvent::Unpublished))));
        assert!(matches!(slot.pop(), Some(Ok(HubEvent::Frame(f))) if &f.data[..] == b"three"));
        assert!(slot.pop().is_none());
    }

    #[tokio::test]
    async fn a_pass_tells_whether_it_wrote_to_the_socket() {
        /// Sends by itself, as RTP over UDP does.
        struct SendsItself;
        impl Encoder for SendsItself {
            fn frame(&mut self, _: &Arc<Frame>, _: &mut Vec<Bytes>) {}
        }
        let (a, _b) = pair().await;
        let tcp = Slot::new(Some(a.clone()), 0, 16);
        assert!(tcp.go_direct(Box::new(Raw)).is_ok());
        assert!(tcp.deliver(&[(0, frame(b"x".to_vec()))]));
        let udp = Slot::new(Some(a), 0, 16);
        assert!(udp.go_direct(Box::new(SendsItself)).is_ok());
        assert!(!udp.deliver(&[(0, frame(b"x".to_vec()))]), "nothing for the TCP socket: no write to save");
    }

    #[tokio::test]
    async fn any_other_event_leaves_direct_mode() {
        let (a, _b) = pair().await;
        let slot = Slot::new(Some(a), 0, 16);
        assert!(slot.go_direct(Box::new(Raw)).is_ok());
        slot.deliver(&[(0, HubEvent::Unpublished)]);
        assert!(slot.fell_back());
        assert!(matches!(slot.pop(), Some(Ok(HubEvent::Unpublished))));
        let mut pending = Vec::new();
        slot.take_over(&mut pending).unwrap();
        assert!(pending.is_empty() && !slot.fell_back() && !slot.is_direct(), "taken over, nothing left");
    }

    /// Records the order of frames and the writes (a frame that starts a write finds the
    /// buffer list empty: its dts is noted); each write takes `pause`, as a pass over many
    /// readers would, or with `per_frame` each frame does (holding then saves nothing).
    struct Counting {
        dts: Arc<Mutex<Vec<i64>>>,
        writes: Arc<Mutex<Vec<i64>>>,
        pause: Duration,
        per_frame: bool,
    }

    impl Encoder for Counting {
        fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>) {
            if out.is_empty() {
                self.writes.lock().unwrap().push(frame.dts);
            }
            if out.is_empty() || self.per_frame {
                std::thread::sleep(self.pause);
            }
            self.dts.lock().unwrap().push(frame.dts);
            out.push(frame.data.clone());
        }
    }

    /// Publishes `pairs` video frames 30 ms apart, each followed 1 ms later by an audio frame,
    /// to one direct reader whose writes (or frames, `per_frame`) take `pause`; returns the
    /// frames' order and the dts of the first frame of each write.
    async fn paced_writes(
        load_merge_max_ms: u64,
        pause: Duration,
        per_frame: bool,
        pairs: i64,
    ) -> (Vec<i64>, Vec<i64>) {
        paced_groups(load_merge_max_ms, pause, per_frame, pairs, 1).await
    }

    /// As [`paced_writes`], with `audio` audio frames 1 ms apart after each video frame.
    async fn paced_groups(
        load_merge_max_ms: u64,
        pause: Duration,
        per_frame: bool,
        pairs: i64,
        audio: i64,
    ) -> (Vec<i64>, Vec<i64>) {
        let config = crate::config::HubConfig { load_merge_max_ms, ..Default::default() };
        let hub = crate::hub::Hub::new(config);
        let publisher = hub.publish("live/paced").unwrap();
        let mut sub = hub.subscribe("live/paced").unwrap();
        let (a, mut b) = pair().await;
        tokio::spawn(async move { while b.read(&mut [0u8; 4096]).await.is_ok_and(|n| n > 0) {} });
        let attachment = sub.attach(Some(a), 256);
        let (dts, writes) = (Arc::default(), Arc::default());
        let encoder = Counting { dts: Arc::clone(&dts), writes: Arc::clone(&writes), pause, per_frame };
        assert!(attachment.slot().go_direct(Box::new(encoder)).is_ok());
        let start = tokio::time::Instant::now();
        for i in 0..pairs {
            let t = i * 30;
            tokio::time::sleep_until(start + Duration::from_millis(t as u64)).await;
            publisher.push(TrackKind::Video, t, t, i == 0, Bytes::from_static(b"v"));
            // The fan-out takes the frame now, even if the timer below is already due.
            tokio::task::yield_now().await;
            for k in 1..=audio {
                tokio::time::sleep_until(start + Duration::from_millis((t + k) as u64)).await;
                publisher.push(TrackKind::Audio, t + k, t + k, true, Bytes::from_static(b"a"));
                tokio::task::yield_now().await;
            }
        }
        // Until the fan-out has written them all (a guard against a hang, not a time limit).
        for _ in 0..1000 {
            if dts.lock().unwrap().len() == (pairs * (1 + audio)) as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let order = dts.lock().unwrap().clone();
        let writes = writes.lock().unwrap().clone();
        (order, writes)
    }

    #[tokio::test]
    async fn a_loaded_fan_out_holds_a_frame_for_the_next_one_due() {
        let expected: Vec<i64> = (0..40).flat_map(|i| [i * 30, i * 30 + 1]).collect();
        // Idle (writes take no time): every frame is written as it arrives.
        let (order, writes) = paced_writes(20, Duration::ZERO, false, 40).await;
        assert_eq!(order, expected);
        assert_eq!(writes.len(), 80, "an idle fan-out holds nothing");
        // Loaded (each write takes 2 ms): once the fan-out has learnt the cadence, the video
        // frame waits for the audio frame due 1 ms later and they share a write.
        let (order, writes) = paced_writes(20, Duration::from_millis(2), false, 40).await;
        assert_eq!(order, expected, "every frame, in order");
        assert!(writes.len() <= 56, "{} writes for 80 frames: pairs were not merged", writes.len());
        // The same load with load_merge_max_ms = 0: no holding.
        let (order, writes) = paced_writes(0, Duration::from_millis(2), false, 40).await;
        assert_eq!(order, expected);
        assert_eq!(writes.len(), 80, "load_merge_max_ms = 0 writes every frame as it arrives");
    }

    /// A loaded fan-out's hold is a window: every frame that arrives in it shares the write,
    /// not only the next one.
    #[tokio::test]
    async fn a_loaded_fan_out_s_window_takes_every_frame_that_arrives_in_it() {
        let expected: Vec<i64> = (0..40).flat_map(|i| [i * 30, i * 30 + 1, i * 30 + 2]).collect();
        // Each write takes 2 ms: a window of three passes (6 ms) holds a video frame and the
        // two audio frames 1 and 2 ms after it.
        let (order, writes) = paced_groups(20, Duration::from_millis(2), false, 40, 2).await;
        assert_eq!(order, expected, "every frame, in order");
        assert!(writes.len() <= 56, "{} writes for 40 groups of three frames: {writes:?}", writes.len());
    }

    /// After its first trial (1.5 s in), a loaded fan-out keeps holding when a write is what
    /// costs (holding halves its passes' time), and stops when each frame costs the same
    /// whether written alone or with the next (holding saves nothing and only adds latency).
    #[tokio::test]
    async fn a_loaded_fan_out_stops_holding_when_it_saves_nothing() {
        // Writes of the 60 pairs (120 frames) from 2.1 s to 3.9 s in (the next trial comes at
        // 6.5 s).
        let late = |writes: &[i64]| writes.iter().filter(|d| (2100..3900).contains(*d)).count();
        let pairs = 130;
        let (order, writes) = paced_writes(20, Duration::from_millis(2), false, pairs).await;
        assert_eq!(order.len(), 260);
        assert!(late(&writes) <= 66, "holding kept: {} writes for the 120 late frames: {writes:?}", late(&writes));
        let (order, writes) = paced_writes(20, Duration::from_millis(2), true, pairs).await;
        assert_eq!(order, (0..pairs).flat_map(|i| [i * 30, i * 30 + 1]).collect::<Vec<_>>(), "every frame, in order");
        assert_eq!(late(&writes), 120, "each of the 120 late frames written alone: holding was dropped");
    }

    /// An arrival is taken once (by the first shard that writes the frame); a note that a
    /// later frame overwrote gives nothing; times wrap.
    #[test]
    fn arrivals_are_taken_once_and_stale_ones_never() {
        let a = Arrivals::default();
        a.put(5, 1_000);
        assert_eq!(a.take(5, 1_250), Some(250));
        assert_eq!(a.take(5, 1_300), None, "taken already");
        a.put(6, 2_000);
        a.put(6 + ARRIVALS as u64, 3_000);
        assert_eq!(a.take(6, 3_100), None, "overwritten by a frame ARRIVALS later");
        assert_eq!(a.take(6 + ARRIVALS as u64, 3_100), Some(100));
        assert_eq!(a.take(7, 3_100), None, "never noted");
        a.put(8, TIME_MASK - 10);
        assert_eq!(a.take(8, TIME_MASK + 15), Some(25), "across the wrap of the time bits");
    }

    /// A frame pushed and written to a direct reader lands in the histogram once, however
    /// many readers and shards write it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_frame_is_measured_once_at_its_first_write() {
        let hub = crate::hub::Hub::new(crate::config::HubConfig::default());
        let publisher = hub.publish("live/lat").unwrap();
        let mut keep = Vec::new();
        for _ in 0..3 {
            let mut sub = hub.subscribe("live/lat").unwrap();
            let (a, mut b) = pair().await;
            tokio::spawn(async move { while b.read(&mut [0u8; 4096]).await.is_ok_and(|n| n > 0) {} });
            let attachment = sub.attach(Some(a), 256);
            assert!(attachment.slot().go_direct(Box::new(Raw)).is_ok());
            keep.push((sub, attachment));
        }
        for i in 0..20 {
            publisher.push(TrackKind::Video, i, i, i == 0, Bytes::from_static(b"v"));
        }
        let h = &hub.stats.ingest_to_first_write;
        for _ in 0..3000 {
            if h.snapshot().count >= 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.snapshot().count, 20, "every frame once, not once per reader or shard");
    }

    /// A loaded fan-out keeps holding while that takes it 10% less time than writing each
    /// frame, and otherwise writes each frame as it arrives; it tries the other way for a
    /// MEASURE after each SETTLED spell, so it follows the readers when they change.
    #[test]
    fn a_fan_out_holds_only_while_holding_costs_less() {
        let t0 = Instant::now();
        let step = Duration::from_millis(10);
        // Samples of `holds`, two per MEASURE (in the middle of each half); spells in samples.
        let every = MEASURE / 2;
        let (trial, settled) = (2, (SETTLED.as_millis() / every.as_millis()) as usize);
        // Passes every 10 ms, each taking the share of it that the way in force costs, for
        // `n` samples from sample `from` on.
        let run = |c: &mut Choice, n: u32, hold_busy: f64, each_busy: f64, from: u32| -> Vec<bool> {
            let steps = (every.as_millis() / step.as_millis()) as u32;
            let mut seen = Vec::new();
            for i in 1..=n * steps {
                let now = t0 + step * (from * steps + i);
                let busy = if c.holds() { hold_busy } else { each_busy };
                c.passed(now, step.mul_f64(busy));
                if i % steps == steps / 2 {
                    seen.push(c.holds());
                }
            }
            seen
        };
        let spells = |spells: &[(bool, usize)]| -> Vec<bool> {
            spells.iter().flat_map(|&(h, n)| std::iter::repeat_n(h, n)).collect()
        };
        // Readers that acknowledge each write: holding costs 30% of the time, each frame 45%.
        let mut c = Choice::new(t0);
        assert!(c.holds(), "a new fan-out holds under load, as before");
        let n = 4 + trial + settled + trial;
        let seen = run(&mut c, n as u32, 0.30, 0.45, 0);
        let want = spells(&[(true, 4), (false, trial), (true, settled), (false, trial)]);
        assert_eq!(seen, want, "a first spell of two MEASUREs holding, a trial of each frame, holding again");
        assert!(c.holding);
        // One noisy trial (a keyframe in the holding window) does not undo the choice.
        let cycle = (settled + trial) as u32;
        let mut at = n as u32;
        run(&mut c, cycle, 0.60, 0.45, at);
        at += cycle;
        assert!(c.holding, "one trial against holding is smoothed away: {:?}", c.ratio);
        // The readers change for good (batched reads: each frame costs less than holding):
        // within a few trials the fan-out writes each frame as it arrives, with a trial of
        // holding after each spell.
        let mut flipped = None;
        for k in 0..6 {
            run(&mut c, cycle, 0.50, 0.45, at);
            at += cycle;
            if !c.holding {
                flipped = Some(k);
                break;
            }
        }
        assert!(flipped.is_some_and(|k| k <= 4), "{flipped:?} {:?}", c.ratio);
        let seen = run(&mut c, cycle, 0.50, 0.45, at);
        let want = spells(&[(false, settled), (true, trial)]);
        assert_eq!(seen, want, "each frame as it arrives, then a trial of holding");
        assert!(!c.holding);
        // Holding that saves less than 10% is not worth its latency.
        let mut c = Choice::new(t0);
        run(&mut c, (4 + trial) as u32, 0.42, 0.45, 0);
        assert!(!c.holding, "a saving under MIN_SAVING keeps each frame as it arrives");
    }

    #[test]
    fn cadence_tells_when_the_next_frame_is_due() {
        let video = HubEvent::Frame(Frame::new(TrackKind::Video, 0, 0, true, Bytes::new()));
        let audio = HubEvent::Frame(Frame::new(TrackKind::Audio, 0, 0, true, Bytes::new()));
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut c = Cadence::default();
        assert_eq!(c.next_due(t0), None, "nothing learnt yet");
        c.took(&video, t0, true);
        c.took(&video, t0 + ms(30), true);
        assert_eq!(c.next_due(t0 + ms(30)), Some(ms(30)));
        c.took(&audio, t0 + ms(40), true);
        c.took(&audio, t0 + ms(60), true);
        assert_eq!(c.next_due(t0 + ms(60)), Some(Duration::ZERO), "video was due at 60 ms");
        // A video frame taken late (the task was busy) counts as arriving when it was due.
        c.took(&video, t0 + ms(75), false);
        assert_eq!(c.next_due(t0 + ms(75)), Some(ms(5)), "audio due at 80 ms");
        assert_eq!(c.tracks[0], (Some(t0 + ms(60)), Some(ms(30))), "the gap is not relearnt from a late frame");
        // An idle fan-out never holds; a loaded one holds for three passes, up to its most.
        let pacing = Pacing { merge: Duration::ZERO, load_max: ms(20) };
        let load = |pass, writes| Load { pass, writes };
        assert_eq!(pacing.hold(&load(Duration::from_micros(500), true)), Duration::ZERO);
        assert_eq!(pacing.hold(&load(ms(4), true)), ms(12));
        assert_eq!(pacing.hold(&load(ms(50), true)), ms(20));
        assert_eq!(pacing.hold(&load(ms(4), false)), Duration::ZERO, "only RTP over UDP: no write to save");
    }
}
