//! Start: the live state from the latest snapshot and the log after it.
//!
//! A snapshot is fuzzy (its tenants were copied between batches, at or after its
//! `start_seq`); every record carries absolute account states and idempotent set
//! operations, so replaying the log from `min(start_seq, applied) + 1` gives exactly the
//! state after the last record. Records the views have not applied stay in memory
//! (recent transactions, marks, grants, policies) until the view thread applies them.

use rusqlite::{Connection, OptionalExtension, params};

use super::{records, to_i64, to_u64, views};
use crate::error::MeterError;
use crate::ledger::codec;
use crate::ledger::record::Decision;
use crate::ledger::state::{self, Coverage, LiveState, StateLimits};
use crate::store::StoreResult;

pub struct Recovered {
    pub state: LiveState,
    /// The last batch the views applied.
    pub applied_seq: u64,
}

pub fn recover(
    log: &Connection,
    views: &Connection,
    limits: StateLimits,
) -> StoreResult<Recovered> {
    let started = std::time::Instant::now();
    let applied_seq = views::applied_seq(views)?;
    let mut state = LiveState::new(Coverage::Whole, limits);
    let start_seq: Option<i64> = views
        .query_row(
            "SELECT start_seq FROM snapshot_meta WHERE one = 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let snapshot_seq = match start_seq {
        Some(start_seq) => {
            let parts: Vec<Vec<u8>> = views
                .prepare("SELECT bytes FROM snapshot ORDER BY part")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if let Some((tail, tenants)) = parts.split_last() {
                for part in tenants {
                    state.restore_part(part)?;
                }
                state.restore_tail(state::decode_tail(tail)?);
            }
            to_u64(start_seq)
        }
        None => 0,
    };
    let from = snapshot_seq.min(applied_seq);
    let mut replayed = 0u64;
    let mut rows = log.prepare("SELECT seq, record FROM log WHERE seq > ?1 ORDER BY seq")?;
    let mut rows = rows.query(params![to_i64(from)])?;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let bytes: Vec<u8> = row.get(1)?;
        let batch = codec::decode(&bytes).map_err(|error| match MeterError::from(error) {
            MeterError::StoreCorrupt(why) => {
                MeterError::StoreCorrupt(format!("log record {seq}: {why}"))
            }
            other => other,
        })?;
        // A settle may close a transaction memory let go of (admitted without a hold,
        // before the replay's start): the views have it.
        for decision in &batch.decisions {
            let id = match decision {
                Decision::Settle(settled) => &settled.id,
                Decision::Expire(expired) => &expired.id,
                _ => continue,
            };
            if state.transaction(id).is_none()
                && let Some((record, _)) = records::transaction(views, log, id, false)?
            {
                state.load_transaction(record, 0);
            }
        }
        state.apply_batch(&batch)?;
        replayed += batch.decisions.len() as u64;
    }
    // Replay sets absolute states, so the lots and the accounts agree only once it is
    // done (L1 of `docs/credits.md`).
    state.check_lots()?;
    // The views and the snapshot are written only from records the log had made durable:
    // a log that ends before them lost synced records (SQLite's recovery drops a damaged
    // WAL frame as if it were torn). Deciding on would reuse their seqs and answer other
    // transactions under the lost ones' ids.
    let seen_elsewhere = applied_seq.max(snapshot_seq);
    if seen_elsewhere > state.last_seq {
        return Err(MeterError::StoreCorrupt(format!(
            "the log ends at record {}, but the views or the snapshot were built from record \
             {seen_elsewhere}: the log lost records it had made durable (a damaged write-ahead \
             log?); restore the ledger from a backup",
            state.last_seq
        )));
    }
    state.evict_through(applied_seq);
    tracing::info!(
        snapshot_seq,
        applied_seq,
        last_seq = state.last_seq,
        replayed,
        tenants = state.tenant_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ledger recovered"
    );
    Ok(Recovered { state, applied_seq })
}
