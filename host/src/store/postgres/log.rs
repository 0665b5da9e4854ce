//! The log of a PostgreSQL ledger, read: `log(seq, at_ms, record)`, one row per batch,
//! appended by each batch's transaction as its last statement (`writer.rs`,
//! `append_log`). What `creditgate replay` reads (`meter/replay/log.rs`).
//!
//! A reader is one `REPEATABLE READ, READ ONLY` transaction: one snapshot for the whole
//! read, and nothing written. A batch that drew a lower seq but had not committed when
//! the snapshot was taken is missing from it while higher seqs are there; that is sound
//! for a replay, which splits by tenant: a batch of the same tenant could only draw its
//! seq after that one committed (the tenant's lock), so every tenant's batches in the
//! snapshot are a prefix of its history, in its commit order. Several readers (a
//! replay's threads) share the first one's snapshot (`pg_export_snapshot`), so they all
//! read the same log.
//!
//! Rows come in keyset pages of [`LOG_PAGE_ROWS`]: never the whole log in memory, and
//! each page one index range scan from where the last ended.

use postgres::{Client, NoTls};

use super::{config, redact, to_i64, to_u64};
use crate::error::MeterError;
use crate::ledger::codec;
use crate::ledger::record::Batch;
use crate::store::StoreResult;

/// Log records (rows) fetched per round trip: at most this many records are in memory
/// at once (a batch's record is a few hundred bytes to a few hundred KiB).
pub const LOG_PAGE_ROWS: i64 = 512;

const PAGE: &str = "SELECT seq, record FROM log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3";
/// Tenants with rows before the log began, of those given (none given: any at all).
const UNLOGGED_OF: &str =
    "SELECT tenant FROM log_unlogged WHERE tenant = ANY($1) ORDER BY tenant LIMIT $2";
const UNLOGGED_ANY: &str = "SELECT tenant FROM log_unlogged ORDER BY tenant LIMIT $1";
/// Tenants named in an error, at most.
const NAMED_MAX: i64 = 5;

/// When the log began and the tenants it holds nothing of before that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlogged {
    /// When the migration that made the log ran (ms since the Unix epoch, the
    /// database's clock).
    pub began_at_ms: u64,
    /// Some of the tenants asked about that had rows before (at most a few, sorted).
    pub tenants: Vec<String>,
}

/// One snapshot of a ledger's log, read in seq order.
pub struct PostgresLog {
    client: Client,
    /// The database, as errors name it (no password).
    name: String,
}

impl PostgresLog {
    /// Opens the log of the ledger at `url` in a read-only transaction of its own
    /// snapshot (`snapshot`: one exported by another reader, to read the same log).
    /// The schema is not migrated: a ledger without a log is an error that says so.
    pub fn open(url: &str, snapshot: Option<&str>) -> StoreResult<Self> {
        let name = redact(url);
        let mut config = config(url)?;
        config.application_name("creditgate replay");
        let mut client = config.connect(NoTls).map_err(|error| {
            MeterError::StoreUnavailable(format!("cannot reach {name}: {error}"))
        })?;
        client
            .batch_execute("BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        if let Some(snapshot) = snapshot {
            // The snapshot's id is PostgreSQL's own text (`pg_export_snapshot`).
            let quoted = snapshot.replace('\'', "''");
            client.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{quoted}'"))?;
        }
        let tables: (bool, bool) = {
            let row = client.query_one(
                "SELECT to_regclass('log') IS NOT NULL, to_regclass('creditgate_schema') IS NOT NULL",
                &[],
            )?;
            (row.try_get(0)?, row.try_get(1)?)
        };
        match tables {
            (true, _) => {}
            (false, true) => {
                return Err(MeterError::StoreIncompatible(format!(
                    "the ledger at {name} keeps no log of batches yet: its schema is older than \
                     this build's; a meter of this build (creditgate serve) migrates it when it \
                     connects, and the log holds the batches from then on"
                )));
            }
            (false, false) => {
                return Err(MeterError::StoreUnavailable(format!(
                    "no ledger at {name} (no creditgate tables in its search_path)"
                )));
            }
        }
        Ok(Self { client, name })
    }

    /// The snapshot's id, for other readers to read the same log: valid while this
    /// reader's transaction is open.
    pub fn export_snapshot(&mut self) -> StoreResult<String> {
        Ok(self
            .client
            .query_one("SELECT pg_export_snapshot()", &[])?
            .try_get(0)?)
    }

    /// The last record's seq in the snapshot (0: an empty log).
    pub fn last_seq(&mut self) -> StoreResult<u64> {
        let last: Option<i64> = self
            .client
            .query_one("SELECT max(seq) FROM log", &[])?
            .try_get(0)?;
        Ok(last.map_or(0, to_u64))
    }

    /// Whether any of `tenants` (none: any tenant at all) had rows before the log began:
    /// their balances at any time are not in the log.
    pub fn unlogged(&mut self, tenants: &[String]) -> StoreResult<Option<Unlogged>> {
        let rows = if tenants.is_empty() {
            self.client.query(UNLOGGED_ANY, &[&NAMED_MAX])?
        } else {
            self.client.query(UNLOGGED_OF, &[&tenants, &NAMED_MAX])?
        };
        if rows.is_empty() {
            return Ok(None);
        }
        let began: Option<i64> = self
            .client
            .query_one("SELECT max(began_at_ms) FROM log_start", &[])?
            .try_get(0)?;
        Ok(Some(Unlogged {
            began_at_ms: began.map_or(0, to_u64),
            tenants: rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?,
        }))
    }

    /// Every batch in seq order up to `up_to`, decoded, its `seq` the log's, to `each`
    /// (which may stop the read by answering false).
    pub fn for_each(
        &mut self,
        up_to: u64,
        each: &mut dyn FnMut(Batch) -> Result<bool, MeterError>,
    ) -> StoreResult<()> {
        let statement = self.client.prepare(PAGE)?;
        let up_to = to_i64(up_to);
        let mut after: i64 = 0;
        loop {
            let rows = self
                .client
                .query(&statement, &[&after, &up_to, &LOG_PAGE_ROWS])?;
            let full = rows.len() as i64 == LOG_PAGE_ROWS;
            for row in rows {
                let seq: i64 = row.try_get(0)?;
                let bytes: &[u8] = row.try_get(1)?;
                let mut batch =
                    codec::decode(bytes).map_err(|error| match MeterError::from(error) {
                        MeterError::StoreCorrupt(why) => MeterError::StoreCorrupt(format!(
                            "log record {seq} of {}: {why}",
                            self.name
                        )),
                        other => other,
                    })?;
                // The record was encoded before its seq was drawn.
                batch.seq = to_u64(seq);
                after = seq;
                if !each(batch)? {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}
