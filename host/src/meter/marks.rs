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
    use super::*;
    use crate::store::empty::EmptyStore;

    /// The budget for store reads is checked before the store is read: a lookup that
    /// would cost more reads than the call can pay reads nothing.
    #[test]
    fn keys_only_the_store_can_answer_are_read_only_when_the_budget_pays_for_all() {
        let store = Rc::new(EmptyStore {
            every_key_marked: true,
            ..EmptyStore::default()
        });
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
