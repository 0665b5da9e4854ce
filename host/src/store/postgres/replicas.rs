//! One activation for every replica, the PostgreSQL side (docs/policy-authors.md, part
//! 5): each replica keeps a listener connection, woken by the notice an activation's
//! transaction sends (`writer.rs`, delivered only if it commits), and writes a heartbeat
//! row saying what it runs. A shadow candidate is shared the same way: setting or
//! clearing it through any replica appends a row to `shadows` and sends the same
//! notice, and each replica's heartbeat carries its own shadow report, which any replica
//! sums for `GET /v1/policy/shadow`. The meter's side is `meter/follower.rs`.

use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::{config, connect};
use crate::error::MeterError;
use crate::model::ShadowReport;
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

/// The ledger's latest shadow setting: its id, and the candidate it names (none: the
/// shadow was cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowSetting {
    pub id: i64,
    pub digest: Option<PolicyDigest>,
}

/// Records in the ledger at `url` that the shadow is now `candidate` (its digest and
/// bytes; none: cleared), and tells every replica. The bytes of the settings before
/// are dropped: only the latest is ever loaded. Answers the new setting's id.
pub fn record_shadow(
    url: &str,
    candidate: Option<(&PolicyDigest, &[u8])>,
    via: &str,
    now_ms: i64,
) -> StoreResult<i64> {
    let mut client = connect(&config(url)?)?;
    let mut transaction = client.transaction()?;
    let (digest, component) = match candidate {
        Some((digest, component)) => (Some(digest.to_string()), Some(component)),
        None => (None, None),
    };
    let id: i64 = transaction
        .query_one(
            "INSERT INTO shadows (digest, component, via, set_at_ms) VALUES ($1, $2, $3, $4) \
             RETURNING id",
            &[&digest, &component, &via, &now_ms],
        )?
        .try_get(0)?;
    transaction.execute(
        "UPDATE shadows SET component = NULL WHERE id < $1 AND component IS NOT NULL",
        &[&id],
    )?;
    transaction.execute(
        "SELECT pg_notify($1, current_schema())",
        &[&ACTIVATION_CHANNEL],
    )?;
    transaction.commit()?;
    Ok(id)
}

fn digest_of(text: &str) -> StoreResult<PolicyDigest> {
    PolicyDigest::parse(text)
        .ok_or_else(|| MeterError::StoreCorrupt(format!("policy digest '{text}' is not a sha256")))
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
            .map(|row| digest_of(&row.try_get::<_, String>(0)?))
            .transpose()
    }

    /// The ledger's latest shadow setting (none: no shadow was ever set).
    pub fn latest_shadow(&mut self) -> StoreResult<Option<ShadowSetting>> {
        let rows = self.client.query(
            "SELECT id, digest FROM shadows ORDER BY id DESC LIMIT 1",
            &[],
        )?;
        rows.first()
            .map(|row| {
                Ok(ShadowSetting {
                    id: row.try_get(0)?,
                    digest: row
                        .try_get::<_, Option<String>>(1)?
                        .map(|digest| digest_of(&digest))
                        .transpose()?,
                })
            })
            .transpose()
    }

    /// The candidate's bytes of the shadow setting `id` (none once a later one dropped
    /// them).
    pub fn shadow_component(&mut self, id: i64) -> StoreResult<Option<Vec<u8>>> {
        let rows = self
            .client
            .query("SELECT component FROM shadows WHERE id = $1", &[&id])?;
        Ok(rows
            .first()
            .map(|row| row.try_get::<_, Option<Vec<u8>>>(0))
            .transpose()?
            .flatten())
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

    /// Writes, in this replica's heartbeat row, the shadow setting it runs (the
    /// `shadows` row's id) and what its candidate would have done differently here so
    /// far (none: it shadows nothing). Written when it changed, after a [`Self::beat`].
    pub fn beat_shadow(
        &mut self,
        replica: &str,
        shadow: Option<(i64, &ShadowReport)>,
    ) -> StoreResult<()> {
        let (setting, json) = match shadow {
            Some((setting, report)) => (
                Some(setting),
                Some(serde_json::to_string(report).map_err(|error| {
                    MeterError::StoreUnavailable(format!("cannot encode a shadow report: {error}"))
                })?),
            ),
            None => (None, None),
        };
        self.client.execute(
            "UPDATE replicas SET shadow = $2, shadow_json = $3 WHERE replica = $1",
            &[&replica, &setting, &json],
        )?;
        Ok(())
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
