//! Fresh, empty ledgers that vanish when dropped: each conformance case and each test
//! runs on one. On SQLite, a file in a temporary directory; on PostgreSQL, a schema of
//! its own in the given database (so runs side by side never meet).

use super::{StoreLocation, StoreResult, postgres};
use crate::error::MeterError;

/// Where scratch ledgers are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScratchStore {
    Sqlite,
    /// The URL of a database in which a schema may be created per ledger. It must not
    /// set `search_path` itself.
    Postgres(String),
}

impl ScratchStore {
    /// Parses `--db` style text: `postgres://...` or `sqlite`.
    pub fn parse(text: &str) -> Self {
        match StoreLocation::parse(text) {
            StoreLocation::Postgres(url) => ScratchStore::Postgres(url),
            StoreLocation::Sqlite(_) => ScratchStore::Sqlite,
        }
    }

    pub fn create(&self) -> StoreResult<ScratchLedger> {
        match self {
            ScratchStore::Sqlite => {
                let dir = tempfile::tempdir().map_err(|error| {
                    MeterError::StoreUnavailable(format!("cannot make a temporary ledger: {error}"))
                })?;
                Ok(ScratchLedger {
                    location: StoreLocation::Sqlite(dir.path().join("ledger.db")),
                    _directory: Some(dir),
                    schema: None,
                })
            }
            ScratchStore::Postgres(url) => {
                let schema = format!("creditgate_scratch_{}", uuid::Uuid::now_v7().simple());
                postgres::create_schema(url, &schema)?;
                Ok(ScratchLedger {
                    location: StoreLocation::Postgres(postgres::with_search_path(url, &schema)),
                    _directory: None,
                    schema: Some((url.clone(), schema)),
                })
            }
        }
    }
}

/// One fresh ledger; dropping it deletes it.
pub struct ScratchLedger {
    location: StoreLocation,
    /// Removed with its file when dropped.
    _directory: Option<tempfile::TempDir>,
    /// The database URL and the schema to drop.
    schema: Option<(String, String)>,
}

impl ScratchLedger {
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }
}

impl Drop for ScratchLedger {
    fn drop(&mut self) {
        if let Some((url, schema)) = &self.schema
            && let Err(error) = postgres::drop_schema(url, schema)
        {
            tracing::warn!(%error, schema, "cannot drop a scratch ledger's schema");
        }
    }
}
