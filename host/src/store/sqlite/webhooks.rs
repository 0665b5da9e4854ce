//! Webhooks of a SQLite ledger, in `PATH.webhooks`: a file of their own, so that a
//! delivery's write never waits on the log's or the views' writer. Operational state
//! (see [`crate::webhooks`]): the events are in the log.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{beside, open_connection, to_i64, to_u64};
use crate::error::MeterError;
use crate::store::StoreResult;
use crate::webhooks::{DeadRow, WEBHOOKS_MAX, Webhook, WebhookStore};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS webhooks (
    id                 TEXT PRIMARY KEY,
    url                TEXT NOT NULL,
    secret             TEXT NOT NULL,
    tenant             TEXT,
    kinds_json         TEXT NOT NULL,
    attempts_max       INTEGER NOT NULL,
    after              INTEGER NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER,
    last_error         TEXT
);
CREATE TABLE IF NOT EXISTS webhook_dead (
    webhook_id TEXT NOT NULL,
    event_id   INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at_ms INTEGER NOT NULL,
    requeued   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (webhook_id, event_id)
);
"#;

pub struct SqliteWebhooks {
    connection: Mutex<Connection>,
}

/// Opens (creating if needed) the webhooks of the ledger at `path`.
pub fn open(path: &Path) -> StoreResult<SqliteWebhooks> {
    let connection = open_connection(&beside(path, ".webhooks"))?;
    connection.execute_batch(SCHEMA)?;
    Ok(SqliteWebhooks {
        connection: Mutex::new(connection),
    })
}

impl SqliteWebhooks {
    fn with<T>(&self, work: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let connection = self.connection.lock().map_err(|_| {
            MeterError::StoreUnavailable("the webhooks' connection is poisoned".to_owned())
        })?;
        work(&connection)
    }
}

fn kinds_json(kinds: &[String]) -> String {
    serde_json::to_string(kinds).unwrap_or_else(|_| "[]".to_owned())
}

impl WebhookStore for SqliteWebhooks {
    fn put(&self, hook: &Webhook, after: Option<u64>) -> StoreResult<()> {
        self.with(|connection| {
            let known: Option<i64> = connection
                .query_row(
                    "SELECT after FROM webhooks WHERE id = ?1",
                    [&hook.id],
                    |row| row.get(0),
                )
                .optional()?;
            if known.is_none() {
                let count: i64 =
                    connection.query_row("SELECT COUNT(*) FROM webhooks", [], |row| row.get(0))?;
                if count >= WEBHOOKS_MAX as i64 {
                    return Err(MeterError::InvalidRequest(format!(
                        "a ledger has at most {WEBHOOKS_MAX} webhooks; remove one first"
                    )));
                }
            }
            let after = after.map_or_else(|| known.unwrap_or(to_i64(hook.after)), to_i64);
            connection.execute(
                "INSERT INTO webhooks (id, url, secret, tenant, kinds_json, attempts_max, after) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO UPDATE SET \
                 url = excluded.url, secret = excluded.secret, tenant = excluded.tenant, \
                 kinds_json = excluded.kinds_json, attempts_max = excluded.attempts_max, \
                 after = excluded.after, attempts = 0, next_attempt_at_ms = NULL",
                params![
                    hook.id,
                    hook.url,
                    hook.secret,
                    hook.tenant,
                    kinds_json(&hook.kinds),
                    hook.attempts_max,
                    after
                ],
            )?;
            Ok(())
        })
    }

    fn remove(&self, id: &str) -> StoreResult<bool> {
        self.with(|connection| {
            connection.execute("DELETE FROM webhook_dead WHERE webhook_id = ?1", [id])?;
            Ok(connection.execute("DELETE FROM webhooks WHERE id = ?1", [id])? > 0)
        })
    }

    fn list(&self) -> StoreResult<Vec<Webhook>> {
        self.with(|connection| {
            let mut hooks = connection
                .prepare_cached(
                    "SELECT id, url, secret, tenant, kinds_json, attempts_max, after, attempts, \
                     next_attempt_at_ms, last_error, \
                     (SELECT COUNT(*) FROM webhook_dead d WHERE d.webhook_id = w.id) \
                     FROM webhooks w ORDER BY id",
                )?
                .query_map([], |row| {
                    let kinds: String = row.get(4)?;
                    Ok(Webhook {
                        id: row.get(0)?,
                        url: row.get(1)?,
                        secret: row.get(2)?,
                        tenant: row.get(3)?,
                        kinds: serde_json::from_str(&kinds).unwrap_or_default(),
                        attempts_max: row.get(5)?,
                        after: to_u64(row.get(6)?),
                        attempts: row.get(7)?,
                        next_attempt_at_ms: row.get::<_, Option<i64>>(8)?.map(to_u64),
                        last_error: row.get(9)?,
                        dead_letters: to_u64(row.get(10)?),
                        requeued: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for hook in &mut hooks {
                hook.requeued = connection
                    .prepare_cached(
                        "SELECT event_id FROM webhook_dead WHERE webhook_id = ?1 AND requeued = 1 \
                         ORDER BY event_id",
                    )?
                    .query_map([&hook.id], |row| row.get::<_, i64>(0).map(to_u64))?
                    .collect::<rusqlite::Result<_>>()?;
            }
            Ok(hooks)
        })
    }

    fn delivered(&self, id: &str, after: u64) -> StoreResult<()> {
        self.with(|connection| {
            connection.execute(
                "UPDATE webhooks SET after = ?2, attempts = 0, next_attempt_at_ms = NULL, \
                 last_error = NULL WHERE id = ?1 AND after < ?2",
                params![id, to_i64(after)],
            )?;
            Ok(())
        })
    }

    fn failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at_ms: u64,
        error: &str,
    ) -> StoreResult<()> {
        self.with(|connection| {
            connection.execute(
                "UPDATE webhooks SET attempts = ?2, next_attempt_at_ms = ?3, last_error = ?4 \
                 WHERE id = ?1",
                params![id, attempts, to_i64(next_attempt_at_ms), error],
            )?;
            Ok(())
        })
    }

    fn dead(&self, id: &str, dead: &DeadRow) -> StoreResult<()> {
        self.with(|connection| {
            connection.execute_batch("BEGIN IMMEDIATE")?;
            let written = (|| -> StoreResult<()> {
                connection.execute(
                    "INSERT OR REPLACE INTO webhook_dead (webhook_id, event_id, attempts, \
                     last_error, dead_at_ms, requeued) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                    params![
                        id,
                        to_i64(dead.event_id),
                        dead.attempts,
                        dead.last_error,
                        to_i64(dead.dead_at_ms)
                    ],
                )?;
                connection.execute(
                    "UPDATE webhooks SET after = MAX(after, ?2), attempts = 0, \
                     next_attempt_at_ms = NULL, last_error = ?3 WHERE id = ?1",
                    params![id, to_i64(dead.event_id), dead.last_error],
                )?;
                Ok(())
            })();
            match written {
                Ok(()) => Ok(connection.execute_batch("COMMIT")?),
                Err(error) => {
                    let _ = connection.execute_batch("ROLLBACK");
                    Err(error)
                }
            }
        })
    }

    fn dead_letters(&self, id: &str, limit: usize) -> StoreResult<Vec<DeadRow>> {
        self.with(|connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT event_id, attempts, last_error, dead_at_ms, requeued \
                     FROM webhook_dead WHERE webhook_id = ?1 ORDER BY event_id LIMIT ?2",
                )?
                .query_map(
                    params![id, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |row| {
                        Ok(DeadRow {
                            event_id: to_u64(row.get(0)?),
                            attempts: row.get(1)?,
                            last_error: row.get(2)?,
                            dead_at_ms: to_u64(row.get(3)?),
                            requeued: row.get(4)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?)
        })
    }

    fn requeue(&self, id: &str, event_id: u64) -> StoreResult<bool> {
        self.with(|connection| {
            Ok(connection.execute(
                "UPDATE webhook_dead SET requeued = 1 WHERE webhook_id = ?1 AND event_id = ?2",
                params![id, to_i64(event_id)],
            )? > 0)
        })
    }

    fn redelivered(&self, id: &str, event_id: u64, failure: Option<&str>) -> StoreResult<()> {
        self.with(|connection| {
            match failure {
                None => connection.execute(
                    "DELETE FROM webhook_dead WHERE webhook_id = ?1 AND event_id = ?2",
                    params![id, to_i64(event_id)],
                )?,
                Some(error) => connection.execute(
                    "UPDATE webhook_dead SET requeued = 0, attempts = attempts + 1, \
                     last_error = ?3 WHERE webhook_id = ?1 AND event_id = ?2",
                    params![id, to_i64(event_id), error],
                )?,
            };
            Ok(())
        })
    }

    /// The ledger has one owner, which delivers.
    fn lead(&self) -> StoreResult<Option<Box<dyn Send>>> {
        Ok(Some(Box::new(())))
    }
}
