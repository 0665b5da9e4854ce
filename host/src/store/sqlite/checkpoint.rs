//! Copies the write-ahead log into the database file on a thread of its own, so that a
//! commit on the writer's thread only appends to the log and fsyncs it.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::StoreResult;

/// How often the log is copied back.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Stops (after a last checkpoint) when dropped.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(path: &Path) -> StoreResult<Self> {
        let connection = super::open_connection(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("creditgate-checkpoint".to_owned())
            .spawn(move || {
                loop {
                    let last = match stopped.recv_timeout(CHECKPOINT_EVERY) {
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                    };
                    if let Err(error) = checkpoint(&connection) {
                        tracing::warn!(%error, "WAL checkpoint failed; the writer's own checkpoints still bound the log");
                    }
                    if last {
                        return;
                    }
                }
            })
            .map_err(|error| {
                crate::error::MeterError::StoreUnavailable(format!(
                    "cannot start the checkpoint thread: {error}"
                ))
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Copies what it can without waiting for the writer or readers (PASSIVE). A busy
/// writer keeps appending, so the log does not drain by itself: the writer's own
/// checkpoint at `WAL_PAGES_MAX` then finds most frames copied and restarts the log.
fn checkpoint(connection: &rusqlite::Connection) -> rusqlite::Result<()> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
