//! One activation for every replica, the PostgreSQL side (docs/policy-authors.md, part
//! 5): each replica keeps a listener connection, woken by the notice an activation's
//! transaction sends (`writer.rs`, delivered only if it commits), and writes a heartbeat
//! row saying what it runs. The meter's side is `meter/follower.rs`.

use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::{config, connect};
use crate::error::MeterError;
use crate::policy::PolicyDigest;
use crate::store::StoreResult;

/// The channel activations are announced on; the payload is the ledger's schema, so
/// that ledgers sharing a database wake only their own replicas.
pub const ACTIVATION_CHANNEL: &str = "creditgate_policy";

/// Heartbeat rows not refreshed for this long are deleted (a replica long gone).
const REPLICA_ROW_KEPT_MS: i64 = 24 * 3_600_000;

/// A replica's connection for following activations.
pub struct ActivationListener {
    client: Client,
    schema: String,
}

/// What a replica says of itself in its heartbeat.
pub struct ReplicaBeat<'a> {
    pub replica: &'a str,
    /// The policy it runs.
    pub digest: &'a PolicyDigest,
    /// The ledger's latest activation, when it cannot load it, and why.
    pub behind: Option<(&'a PolicyDigest, &'a str)>,
    pub now_ms: i64,
}

impl ActivationListener {
    pub fn open(url: &str) -> StoreResult<Self> {
        let mut client = connect(&config(url)?)?;
        client.batch_execute(&format!("LISTEN {ACTIVATION_CHANNEL}"))?;
        let schema: String = client
            .query_one("SELECT current_schema()", &[])?
            .try_get(0)?;
        Ok(Self { client, schema })
    }

    /// Waits up to `timeout` for the notice of an activation on this ledger: true when
    /// one came.
    pub fn wait(&mut self, timeout: Duration) -> StoreResult<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.client.notifications().timeout_iter(left).next()? {
                Some(notice) if notice.payload() == self.schema => return Ok(true),
                Some(_) => {}
                None => return Ok(false),
            }
        }
    }

    /// The digest of the ledger's latest activation.
    pub fn latest_activation(&mut self) -> StoreResult<Option<PolicyDigest>> {
        let rows = self.client.query(
            "SELECT digest FROM policy_activations ORDER BY id DESC LIMIT 1",
            &[],
        )?;
        rows.first()
            .map(|row| {
                let digest: String = row.try_get(0)?;
                PolicyDigest::parse(&digest).ok_or_else(|| {
                    MeterError::StoreCorrupt(format!("policy digest '{digest}' is not a sha256"))
                })
            })
            .transpose()
    }

    /// The component bytes the ledger keeps for `digest`.
    pub fn component(&mut self, digest: &PolicyDigest) -> StoreResult<Option<Vec<u8>>> {
        let rows = self.client.query(
            "SELECT component FROM policies WHERE digest = $1",
            &[&digest.to_string()],
        )?;
        Ok(rows
            .first()
            .map(|row| row.try_get::<_, Option<Vec<u8>>>(0))
            .transpose()?
            .flatten())
    }

    /// Writes this replica's heartbeat row, and deletes the rows of replicas gone for a
    /// day.
    pub fn beat(&mut self, beat: &ReplicaBeat<'_>) -> StoreResult<()> {
        let (behind, error) = match beat.behind {
            Some((digest, error)) => (Some(digest.to_string()), Some(error)),
            None => (None, None),
        };
        self.client.execute(
            "INSERT INTO replicas (replica, digest, behind, error, seen_at_ms) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (replica) DO UPDATE SET digest = excluded.digest, \
             behind = excluded.behind, error = excluded.error, seen_at_ms = excluded.seen_at_ms",
            &[
                &beat.replica,
                &beat.digest.to_string(),
                &behind,
                &error,
                &beat.now_ms,
            ],
        )?;
        self.client.execute(
            "DELETE FROM replicas WHERE seen_at_ms < $1",
            &[&(beat.now_ms - REPLICA_ROW_KEPT_MS)],
        )?;
        Ok(())
    }
}
