use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Config, NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;

use super::{closure_from_text, decode_event, policy_from_row, to_u64, transaction_from_row};
use crate::error::MeterError;
use crate::ledger::AccountState;
use crate::ledger::events::event_view;
use crate::ledger::lots::Lot;
use crate::model::{
    Amounts, EventView, JournalEntry, PolicyActivation, PolicyRef, ReplicaView, ShadowReport,
    TenantBalances, TransactionView,
};
use crate::policy::PolicyDigest;
use crate::store::{
    AuditPoint, JournalSum, LedgerReader, StoreResult, StoredPolicy, ViewsLag,
    invariant_violations, transaction_view,
};

/// Reading connections at most.
const READERS_MAX: u32 = 8;
/// How long a read waits for a connection before it fails `store_unavailable`.
const READ_WAIT: Duration = Duration::from_secs(3);

/// Pooled connections, opened on demand (none is needed to start) and replaced when
/// the database comes back.
pub struct PostgresReader {
    pool: r2d2::Pool<PostgresConnectionManager<NoTls>>,
}

impl PostgresReader {
    pub(super) fn new(config: Config) -> Self {
        let pool = r2d2::Pool::builder()
            .max_size(READERS_MAX)
            .min_idle(Some(0))
            .connection_timeout(READ_WAIT)
            .build_unchecked(PostgresConnectionManager::new(config, NoTls));
        Self { pool }
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        let mut client = self.pool.get().map_err(|error| {
            MeterError::StoreUnavailable(format!("no connection to PostgreSQL: {error}"))
        })?;
        Ok(client.query(sql, params)?)
    }
}

fn journal_from_row(row: &Row) -> StoreResult<JournalEntry> {
    Ok(JournalEntry {
        id: row.try_get(0)?,
        transaction_id: row.try_get(1)?,
        tenant: row.try_get(2)?,
        balance: row.try_get(3)?,
        kind: row.try_get(4)?,
        amount: row.try_get(5)?,
        policy_digest: row.try_get(6)?,
        at_ms: to_u64(row.try_get(7)?),
        lot: row.try_get::<_, Option<i64>>(8)?.map(to_u64),
    })
}

macro_rules! journal_columns {
    () => {
        "id, transaction_id, tenant, balance, kind, amount, policy_digest, at_ms, lot"
    };
}

fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl LedgerReader for PostgresReader {
    fn balances(&self, tenant: &str, balances: &[String]) -> StoreResult<Option<TenantBalances>> {
        let mut answer = TenantBalances {
            lots: None,
            scheduled: None,
            tenant: tenant.to_owned(),
            balances: balances.iter().map(|name| (name.clone(), 0)).collect(),
            held: balances.iter().map(|name| (name.clone(), 0)).collect(),
            overdraft_limits: Amounts::new(),
            spend_caps: Default::default(),
            thresholds: Default::default(),
        };
        let rows = self.query(
            "SELECT balance, available, held, overdraft_limit, \
             spend_cap IS NOT NULL OR watch_json IS NOT NULL FROM accounts WHERE tenant = $1",
            &[&tenant],
        )?;
        // A spend window is shown as of the ledger's clock, and thresholds as the live
        // state reads them: the sequencer's to answer.
        for row in &rows {
            if row.try_get::<_, bool>(4)? {
                return Ok(None);
            }
        }
        for row in rows {
            let balance: String = row.try_get(0)?;
            let limit: i64 = row.try_get(3)?;
            if limit > 0 {
                answer.overdraft_limits.insert(balance.clone(), limit);
            }
            answer.balances.insert(balance.clone(), row.try_get(1)?);
            answer.held.insert(balance, row.try_get(2)?);
        }
        Ok(Some(answer))
    }

    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionView>> {
        let rows = self.query(
            "SELECT t.record, p.name, p.version, p.digest FROM transactions t \
             LEFT JOIN policies p ON p.digest = t.policy_digest WHERE t.id = $1",
            &[&id],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let record = transaction_from_row(row, 0)?;
        let policy = PolicyRef {
            name: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
            version: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
            digest: PolicyDigest::from_bytes(record.policy).to_string(),
        };
        let entries = self
            .query(
                concat!(
                    "SELECT ",
                    journal_columns!(),
                    " FROM journal WHERE transaction_id = $1 ORDER BY id"
                ),
                &[&id],
            )?
            .iter()
            .map(journal_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(transaction_view(&record, policy, entries)))
    }

    fn journal(&self, tenant: &str, count: usize) -> StoreResult<Vec<JournalEntry>> {
        self.query(
            concat!(
                "SELECT ",
                journal_columns!(),
                " FROM journal WHERE tenant = $1 ORDER BY id LIMIT $2"
            ),
            &[&tenant, &limit(count)],
        )?
        .iter()
        .map(journal_from_row)
        .collect()
    }

    fn journal_after(&self, after_id: i64, count: usize) -> StoreResult<Vec<JournalEntry>> {
        self.query(
            concat!(
                "SELECT ",
                journal_columns!(),
                " FROM journal WHERE id > $1 ORDER BY id LIMIT $2"
            ),
            &[&after_id, &limit(count)],
        )?
        .iter()
        .map(journal_from_row)
        .collect()
    }

    fn last_event_id(&self) -> StoreResult<u64> {
        let rows = self.query("SELECT COALESCE(MAX(id), 0) FROM events", &[])?;
        let last: i64 = rows.first().map_or(Ok(0), |row| row.try_get(0))?;
        Ok(to_u64(last))
    }

    fn events_after(
        &self,
        after: u64,
        count: usize,
        tenant: Option<&str>,
    ) -> StoreResult<Vec<EventView>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = match tenant {
            Some(tenant) => self.query(
                "SELECT id, at_ms, record FROM events WHERE tenant = $1 AND id > $2 \
                 ORDER BY id LIMIT $3",
                &[&tenant, &after, &limit(count)],
            )?,
            None => self.query(
                "SELECT id, at_ms, record FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &limit(count)],
            )?,
        };
        rows.iter()
            .map(|row| {
                let record: Vec<u8> = row.try_get(2)?;
                Ok(event_view(
                    to_u64(row.try_get(0)?),
                    to_u64(row.try_get(1)?),
                    &decode_event(&record)?,
                ))
            })
            .collect()
    }

    fn activations(&self, count: usize) -> StoreResult<Vec<PolicyActivation>> {
        self.query(
            "SELECT a.id, a.digest, p.name, p.version, a.via, a.activated_at_ms \
             FROM policy_activations a JOIN policies p ON p.digest = a.digest \
             ORDER BY a.id DESC LIMIT $1",
            &[&limit(count)],
        )?
        .iter()
        .map(|row| {
            Ok(PolicyActivation {
                id: row.try_get(0)?,
                digest: row.try_get(1)?,
                name: row.try_get(2)?,
                version: row.try_get(3)?,
                via: row.try_get(4)?,
                activated_at_ms: to_u64(row.try_get(5)?),
            })
        })
        .collect()
    }

    fn stored_policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
        self.query(
            "SELECT digest, name, version, component FROM policies WHERE digest = $1",
            &[&digest.to_string()],
        )?
        .first()
        .map(policy_from_row)
        .transpose()
    }

    /// The tables are current at every commit: the live state adds nothing.
    fn views_lag(&self) -> Option<ViewsLag> {
        None
    }

    fn replicas(&self, seen_since_ms: i64) -> StoreResult<Option<Vec<ReplicaView>>> {
        self.query(
            "SELECT replica, digest, behind, error, seen_at_ms FROM replicas \
             WHERE seen_at_ms >= $1 ORDER BY replica",
            &[&seen_since_ms],
        )?
        .iter()
        .map(|row| {
            Ok(ReplicaView {
                replica: row.try_get(0)?,
                digest: row.try_get(1)?,
                behind: row.try_get(2)?,
                error: row.try_get(3)?,
                seen_at_ms: row.try_get(4)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()
        .map(Some)
    }

    fn shadow_reports(
        &self,
        setting: i64,
        except: &str,
        seen_since_ms: i64,
    ) -> StoreResult<Vec<(String, ShadowReport)>> {
        self.query(
            "SELECT replica, shadow_json FROM replicas \
             WHERE shadow = $1 AND replica <> $2 AND seen_at_ms >= $3 \
             AND shadow_json IS NOT NULL ORDER BY replica",
            &[&setting, &except, &seen_since_ms],
        )?
        .iter()
        .map(|row| {
            let replica: String = row.try_get(0)?;
            let json: String = row.try_get(1)?;
            let report = serde_json::from_str(&json).map_err(|error| {
                MeterError::StoreCorrupt(format!(
                    "the shadow report of replica '{replica}' does not read: {error}"
                ))
            })?;
            Ok((replica, report))
        })
        .collect()
    }

    fn invariant_violations(&self, _live: Option<AuditPoint>) -> StoreResult<Vec<String>> {
        let journal_sums = self
            .query(
                "SELECT tenant, balance, kind, SUM(amount)::TEXT, lot FROM journal \
                 GROUP BY tenant, balance, kind, lot",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(JournalSum {
                    tenant: row.try_get(0)?,
                    balance: row.try_get(1)?,
                    kind: row.try_get(2)?,
                    amount: row.try_get::<_, String>(3)?.parse().map_err(|_| {
                        MeterError::StoreCorrupt("a journal sum is not an integer".to_owned())
                    })?,
                    lot: row.try_get::<_, Option<i64>>(4)?.map(to_u64),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let accounts = self
            .query("SELECT tenant, balance, available, held FROM accounts", &[])?
            .iter()
            .map(|row| {
                Ok((
                    (row.try_get(0)?, row.try_get(1)?),
                    AccountState {
                        available: row.try_get(2)?,
                        held: row.try_get(3)?,
                    },
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let lots = self
            .query(
                "SELECT tenant, balance, lot, amount, remaining, expires_at_ms, priority, \
                 closed FROM lots",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok((
                    (row.try_get(0)?, row.try_get(1)?),
                    Lot {
                        id: to_u64(row.try_get(2)?),
                        amount: row.try_get(3)?,
                        remaining: row.try_get(4)?,
                        expires_at_ms: row.try_get(5)?,
                        priority: row.try_get(6)?,
                        closed: closure_from_text(row.try_get(7)?)?,
                    },
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(invariant_violations(journal_sums, accounts, lots))
    }
}
