//! A store that holds nothing: what a whole live state lacks does not exist. A replay's
//! decisions run on it (everything they read is in the scratch state, and it refuses
//! every write), and so do the decisions' unit tests (their marks all set or all unset,
//! the keys asked about counted).

use std::cell::Cell;

use super::{BatchClaims, ColdStore, Durability, Store, StoreResult, StoredPolicy};
use crate::error::MeterError;
use crate::ledger::record::Batch;
use crate::ledger::state::{GrantRecord, LiveState, TransactionRecord};
use crate::policy::PolicyDigest;

#[derive(Default)]
pub struct EmptyStore {
    /// What every `marked` key answers.
    pub every_key_marked: bool,
    /// Keys `marked` was asked about so far.
    pub keys_read: Cell<usize>,
    /// Why a commit is refused (none: a commit is taken, and goes nowhere).
    pub writes_refused: Option<&'static str>,
}

impl EmptyStore {
    /// The store of a decision that must write nothing, saying `why` when one tries.
    pub fn refusing_writes(why: &'static str) -> Self {
        Self {
            writes_refused: Some(why),
            ..Self::default()
        }
    }

    fn refused(&self, or_else: &str) -> MeterError {
        MeterError::StoreUnavailable(self.writes_refused.unwrap_or(or_else).to_owned())
    }
}

impl ColdStore for EmptyStore {
    fn transaction(&self, _id: &str) -> StoreResult<Option<TransactionRecord>> {
        Ok(None)
    }
    fn grant(&self, _grant_id: &str) -> StoreResult<Option<GrantRecord>> {
        Ok(None)
    }
    fn marked(&self, _tenant: &str, _scope: &str, keys: &[&str]) -> StoreResult<Vec<bool>> {
        self.keys_read.set(self.keys_read.get() + keys.len());
        Ok(vec![self.every_key_marked; keys.len()])
    }
    fn policy(&self, _digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
        Ok(None)
    }
    fn latest_activation(&self) -> StoreResult<Option<PolicyDigest>> {
        Ok(None)
    }
    fn load_tenant(&self, _tenant: &str, _state: &mut LiveState) -> StoreResult<()> {
        Ok(())
    }
}

impl Store for EmptyStore {
    fn load(&self, _: &BatchClaims, _: &mut LiveState, _: u64) -> StoreResult<()> {
        Ok(())
    }
    fn commit(&self, _: &Batch, _: &LiveState) -> StoreResult<()> {
        match self.writes_refused {
            Some(_) => Err(self.refused("")),
            None => Ok(()),
        }
    }
    fn abort(&self) {}
    fn durability(&self) -> StoreResult<Box<dyn Durability>> {
        Err(self.refused("no disk here"))
    }
}
