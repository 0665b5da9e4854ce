//! The policy's `marked` lookups: marks of this batch and of batches the views have not
//! applied yet are in memory; a filter of every mark rules out never-seen keys without
//! a read; only the rest is asked of the store.

use std::cell::RefCell;
use std::rc::Rc;

use crate::error::MeterError;
use crate::ledger::state::{RecentMarks, mark_key};
use crate::policy::{MarkAnswers, MarkLookup};
use crate::store::Store;

pub struct LedgerMarks {
    pub recent: Rc<RefCell<RecentMarks>>,
    pub store: Rc<dyn Store>,
}

impl MarkLookup for LedgerMarks {
    fn marked(
        &self,
        tenant: &str,
        scope: &str,
        keys: &[String],
        stored_keys_max: usize,
    ) -> Result<Option<MarkAnswers>, MeterError> {
        let mut answers = Vec::with_capacity(keys.len());
        let mut unknown: Vec<(usize, &str)> = Vec::new();
        {
            let recent = self.recent.borrow();
            for (index, key) in keys.iter().enumerate() {
                // No mark holds a NUL (the contract refuses them): such a key is not marked.
                if key.contains('\0') || scope.contains('\0') {
                    answers.push(false);
                    continue;
                }
                match recent.lookup(&mark_key(tenant, scope, key)) {
                    Some(marked) => answers.push(marked),
                    None => {
                        answers.push(false);
                        unknown.push((index, key));
                    }
                }
            }
        }
        if unknown.len() > stored_keys_max {
            return Ok(None);
        }
        let stored_keys = unknown.len();
        if !unknown.is_empty() {
            let asked: Vec<&str> = unknown.iter().map(|(_, key)| *key).collect();
            let stored = self.store.marked(tenant, scope, &asked)?;
            for ((index, _), marked) in unknown.into_iter().zip(stored) {
                answers[index] = marked;
            }
        }
        Ok(Some(MarkAnswers {
            marked: answers,
            stored_keys,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeSet;

    use super::*;
    use crate::ledger::record::Batch;
    use crate::ledger::state::{GrantRecord, LiveState, TransactionRecord};
    use crate::policy::PolicyDigest;
    use crate::store::{BatchClaims, ColdStore, Durability, StoreResult, StoredPolicy};

    /// A store where every key is marked, counting the keys it was asked about.
    #[derive(Default)]
    struct CountingMarks {
        keys_read: Cell<usize>,
    }

    impl ColdStore for CountingMarks {
        fn transaction(&self, _id: &str) -> StoreResult<Option<TransactionRecord>> {
            Ok(None)
        }
        fn grant(&self, _grant_id: &str) -> StoreResult<Option<GrantRecord>> {
            Ok(None)
        }
        fn marked(&self, _tenant: &str, _scope: &str, keys: &[&str]) -> StoreResult<Vec<bool>> {
            self.keys_read.set(self.keys_read.get() + keys.len());
            Ok(vec![true; keys.len()])
        }
        fn policy(&self, _digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
            Ok(None)
        }
        fn latest_activation(&self) -> StoreResult<Option<PolicyDigest>> {
            Ok(None)
        }
        fn open_policies(&self) -> StoreResult<Option<BTreeSet<[u8; 32]>>> {
            Ok(None)
        }
        fn load_tenant(&self, _tenant: &str, _state: &mut LiveState) -> StoreResult<()> {
            Ok(())
        }
    }

    impl Store for CountingMarks {
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

    /// The budget for store reads is checked before the store is read: a lookup that
    /// would cost more reads than the call can pay reads nothing.
    #[test]
    fn keys_only_the_store_can_answer_are_read_only_when_the_budget_pays_for_all() {
        let store = Rc::new(CountingMarks::default());
        // No filter (as on PostgreSQL): only the store knows any key.
        let marks = LedgerMarks {
            recent: Rc::new(RefCell::new(RecentMarks::default())),
            store: Rc::clone(&store) as Rc<dyn Store>,
        };
        let keys: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
        assert_eq!(marks.marked("t", "s", &keys, 2).unwrap(), None);
        assert_eq!(store.keys_read.get(), 0, "refused before reading");
        let answers = marks.marked("t", "s", &keys, 3).unwrap().unwrap();
        assert_eq!(answers.marked, vec![true; 3]);
        assert_eq!(answers.stored_keys, 3);
        assert_eq!(store.keys_read.get(), 3);
    }
}
