//! (Tests only.) A store that holds nothing, for the decisions' unit tests: what a whole
//! live state lacks does not exist. Its marks are all set or all unset, and it counts
//! the keys it was asked about.

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
        Ok(())
    }
    fn abort(&self) {}
    fn durability(&self) -> StoreResult<Box<dyn Durability>> {
        Err(MeterError::StoreUnavailable("no disk here".to_owned()))
    }
}
