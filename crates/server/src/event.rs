//! What a stream tells its readers, in order: the events of the stream's ring, shared by the
//! hub (which sends them) and the fan-out (which hands them to readers).

use std::sync::Arc;

use ferrocast_media::{Frame, Tracks};

/// What readers of a stream receive, in order.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// Codec parameters or metadata changed (or a new publisher sent its own).
    Tracks(Arc<Tracks>),
    /// One frame.
    Frame(Arc<Frame>),
    /// The publisher left; the path waits for a republish during the grace period.
    Unpublished,
    /// A new publisher took the path over within the grace period.
    Republished,
    /// The stream is over: no publisher came back in time.
    Ended,
}

/// An event of a stream with its number in the stream (numbers follow the ring's order).
pub type Sequenced = (u64, HubEvent);
