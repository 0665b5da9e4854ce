//! The event feed: pages of the events the ledger recorded, in the ledger's order of
//! events, and the long-poll that waits for the next ones.
//!
//! A reader asks for the events after the last id it saw. When there are none yet it
//! may wait: it wakes when this process makes a batch with events durable, and polls
//! the store every [`EVENTS_POLL_MS`] for what other replicas (PostgreSQL) wrote.

use std::time::Duration;

use tokio::sync::watch;

use crate::model::{EventPage, EventView};

/// The events one page holds, at most.
pub const EVENTS_PAGE_MAX: usize = 1_000;
/// The longest a reader may wait for the next event, in ms.
pub const EVENTS_WAIT_MS_MAX: u64 = 30_000;
/// How often a waiting reader looks at the store for other replicas' events.
pub const EVENTS_POLL_MS: u64 = 250;

/// Tells waiting readers that events became durable: a counter that moves on.
pub struct EventSignal {
    sender: watch::Sender<u64>,
}

impl Default for EventSignal {
    fn default() -> Self {
        Self {
            sender: watch::Sender::new(0),
        }
    }
}

impl EventSignal {
    /// Called by the log thread once batches holding events are durable.
    pub fn raised(&self) {
        self.sender
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A receiver whose `changed()` wakes at the next durable events. Subscribe before
    /// reading the store, so that events made durable in between are not missed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
}

/// How long a reader waits before it looks again: the time left, at most one poll.
pub fn next_look(left: Duration) -> Duration {
    left.min(Duration::from_millis(EVENTS_POLL_MS))
}

/// A page of events read after `after`.
pub fn page(after: u64, events: Vec<EventView>) -> EventPage {
    EventPage {
        next_after: events.last().map_or(after, |event| event.id),
        events,
    }
}
