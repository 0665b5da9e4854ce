//! Webhooks of a PostgreSQL ledger: tables `webhooks` and `webhook_dead` of its schema,
//! shared by the replicas. One replica delivers at a time: the one holding the
//! session-level advisory lock of [`webhooks_lock`] on a connection of its own (a
//! replica that dies drops its connection, and with it the lock).

use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;

use super::{LOCK_SPACE, connect, lock_key, to_u64};
use crate::error::MeterError;
use crate::store::StoreResult;
use crate::webhooks::{DeadRow, WEBHOOKS_MAX, Webhook, WebhookStore};

/// Connections for webhook calls and deliveries, at most.
const CONNECTIONS_MAX: u32 = 2;

fn webhooks_lock(space: &str) -> i64 {
    lock_key(space, "webhooks", "")
}

pub struct PostgresWebhooks {
    config: Config,
    pool: r2d2::Pool<PostgresConnectionManager<NoTls>>,
}

pub(super) fn open(config: Config) -> PostgresWebhooks {
    let pool = r2d2::Pool::builder()
        .max_size(CONNECTIONS_MAX)
        .min_idle(Some(0))
        .connection_timeout(std::time::Duration::from_secs(3))
        .build_unchecked(PostgresConnectionManager::new(config.clone(), NoTls));
    PostgresWebhooks { config, pool }
}

impl PostgresWebhooks {
    fn client(&self) -> StoreResult<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.pool.get().map_err(|error| {
            MeterError::StoreUnavailable(format!("no connection to PostgreSQL: {error}"))
        })
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        Ok(self.client()?.query(sql, params)?)
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        Ok(self.client()?.execute(sql, params)?)
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn attempts(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn from_attempts(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

impl WebhookStore for PostgresWebhooks {
    fn put(&self, hook: &Webhook, after: Option<u64>) -> StoreResult<()> {
        let mut client = self.client()?;
        let mut transaction = client.transaction()?;
        // One writer of the list at a time, so the bound holds across replicas.
        let space: String = transaction.query_one(LOCK_SPACE, &[])?.try_get(0)?;
        transaction.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key(&space, "webhook-list", "")],
        )?;
        let known = transaction
            .query_opt("SELECT after FROM webhooks WHERE id = $1", &[&hook.id])?
            .map(|row| row.try_get::<_, i64>(0))
            .transpose()?;
        if known.is_none() {
            let count: i64 = transaction
                .query_one("SELECT COUNT(*) FROM webhooks", &[])?
                .try_get(0)?;
            if count >= WEBHOOKS_MAX as i64 {
                return Err(MeterError::InvalidRequest(format!(
                    "a ledger has at most {WEBHOOKS_MAX} webhooks; remove one first"
                )));
            }
        }
        let after = after.map_or_else(|| known.unwrap_or(to_i64(hook.after)), to_i64);
        let kinds = serde_json::to_string(&hook.kinds).unwrap_or_else(|_| "[]".to_owned());
        transaction.execute(
            "INSERT INTO webhooks (id, url, secret, tenant, kinds_json, attempts_max, after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
             url = excluded.url, secret = excluded.secret, tenant = excluded.tenant, \
             kinds_json = excluded.kinds_json, attempts_max = excluded.attempts_max, \
             after = excluded.after, attempts = 0, next_attempt_at_ms = NULL",
            &[
                &hook.id,
                &hook.url,
                &hook.secret,
                &hook.tenant,
                &kinds,
                &attempts(hook.attempts_max),
                &after,
            ],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn remove(&self, id: &str) -> StoreResult<bool> {
        let mut client = self.client()?;
        let mut transaction = client.transaction()?;
        transaction.execute("DELETE FROM webhook_dead WHERE webhook_id = $1", &[&id])?;
        let removed = transaction.execute("DELETE FROM webhooks WHERE id = $1", &[&id])?;
        transaction.commit()?;
        Ok(removed > 0)
    }

    fn list(&self) -> StoreResult<Vec<Webhook>> {
        self.query(
            "SELECT id, url, secret, tenant, kinds_json, attempts_max, after, attempts, \
             next_attempt_at_ms, last_error, \
             (SELECT COUNT(*) FROM webhook_dead d WHERE d.webhook_id = w.id), \
             ARRAY(SELECT event_id FROM webhook_dead d WHERE d.webhook_id = w.id \
                   AND d.requeued ORDER BY event_id) \
             FROM webhooks w ORDER BY id",
            &[],
        )?
        .iter()
        .map(|row| {
            let kinds: String = row.try_get(4)?;
            let requeued: Vec<i64> = row.try_get(11)?;
            Ok(Webhook {
                id: row.try_get(0)?,
                url: row.try_get(1)?,
                secret: row.try_get(2)?,
                tenant: row.try_get(3)?,
                kinds: serde_json::from_str(&kinds).unwrap_or_default(),
                attempts_max: from_attempts(row.try_get(5)?),
                after: to_u64(row.try_get(6)?),
                attempts: from_attempts(row.try_get(7)?),
                next_attempt_at_ms: row.try_get::<_, Option<i64>>(8)?.map(to_u64),
                last_error: row.try_get(9)?,
                dead_letters: to_u64(row.try_get(10)?),
                requeued: requeued.into_iter().map(to_u64).collect(),
            })
        })
        .collect()
    }

    fn delivered(&self, id: &str, after: u64) -> StoreResult<()> {
        self.execute(
            "UPDATE webhooks SET after = $2, attempts = 0, next_attempt_at_ms = NULL, \
             last_error = NULL WHERE id = $1 AND after < $2",
            &[&id, &to_i64(after)],
        )?;
        Ok(())
    }

    fn failed(
        &self,
        id: &str,
        attempts_so_far: u32,
        next_attempt_at_ms: u64,
        error: &str,
    ) -> StoreResult<()> {
        self.execute(
            "UPDATE webhooks SET attempts = $2, next_attempt_at_ms = $3, last_error = $4 \
             WHERE id = $1",
            &[
                &id,
                &attempts(attempts_so_far),
                &to_i64(next_attempt_at_ms),
                &error,
            ],
        )?;
        Ok(())
    }

    fn dead(&self, id: &str, dead: &DeadRow) -> StoreResult<()> {
        let mut client = self.client()?;
        let mut transaction = client.transaction()?;
        transaction.execute(
            "INSERT INTO webhook_dead (webhook_id, event_id, attempts, last_error, dead_at_ms, \
             requeued) VALUES ($1, $2, $3, $4, $5, false) ON CONFLICT (webhook_id, event_id) \
             DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error, \
             dead_at_ms = excluded.dead_at_ms, requeued = false",
            &[
                &id,
                &to_i64(dead.event_id),
                &attempts(dead.attempts),
                &dead.last_error,
                &to_i64(dead.dead_at_ms),
            ],
        )?;
        transaction.execute(
            "UPDATE webhooks SET after = GREATEST(after, $2), attempts = 0, \
             next_attempt_at_ms = NULL, last_error = $3 WHERE id = $1",
            &[&id, &to_i64(dead.event_id), &dead.last_error],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn dead_letters(&self, id: &str, limit: usize) -> StoreResult<Vec<DeadRow>> {
        self.query(
            "SELECT event_id, attempts, last_error, dead_at_ms, requeued FROM webhook_dead \
             WHERE webhook_id = $1 ORDER BY event_id LIMIT $2",
            &[&id, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )?
        .iter()
        .map(|row| {
            Ok(DeadRow {
                event_id: to_u64(row.try_get(0)?),
                attempts: from_attempts(row.try_get(1)?),
                last_error: row.try_get(2)?,
                dead_at_ms: to_u64(row.try_get(3)?),
                requeued: row.try_get(4)?,
            })
        })
        .collect()
    }

    fn requeue(&self, id: &str, event_id: u64) -> StoreResult<bool> {
        Ok(self.execute(
            "UPDATE webhook_dead SET requeued = true WHERE webhook_id = $1 AND event_id = $2",
            &[&id, &to_i64(event_id)],
        )? > 0)
    }

    fn redelivered(&self, id: &str, event_id: u64, failure: Option<&str>) -> StoreResult<()> {
        match failure {
            None => self.execute(
                "DELETE FROM webhook_dead WHERE webhook_id = $1 AND event_id = $2",
                &[&id, &to_i64(event_id)],
            )?,
            Some(error) => self.execute(
                "UPDATE webhook_dead SET requeued = false, attempts = attempts + 1, \
                 last_error = $3 WHERE webhook_id = $1 AND event_id = $2",
                &[&id, &to_i64(event_id), &error],
            )?,
        };
        Ok(())
    }

    /// A connection of its own holding the replicas' delivery lock, if free.
    fn lead(&self) -> StoreResult<Option<Box<dyn Send>>> {
        let mut client: Client = connect(&self.config)?;
        let space: String = client.query_one(LOCK_SPACE, &[])?.try_get(0)?;
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&webhooks_lock(&space)])?
            .try_get(0)?;
        Ok(held.then(|| Box::new(client) as Box<dyn Send>))
    }
}
