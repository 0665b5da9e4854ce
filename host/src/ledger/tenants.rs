//! Every tenant's accounts, compact: a million tenants is the common case, so a tenant
//! costs its name's bytes in one shared buffer, one 64-byte entry (two accounts
//! inline), and a 4-byte slot of a hash table: about 85 bytes by layout. Resident, with
//! the id filter and the allocator, `creditgate bench` measures ~125 bytes a tenant (its
//! "live state" line), against ~131 measured the same way for the map of boxed names to
//! vectors this table replaced.
//!
//! Tenants are never removed and keep the index they first got: a snapshot copies them
//! in index slices while the sequencer goes on.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::AccountState;
use crate::error::MeterError;

/// The bytes of all tenants' names together, at most: a name's start is a `u32`.
pub const TENANT_NAME_BYTES_TOTAL_MAX: usize = u32::MAX as usize;
/// Distinct balance names the accounts can be on (a policy lists at most 16).
pub const BALANCE_NAMES_MAX: usize = u16::MAX as usize;

struct Tenant {
    name_start: u32,
    name_len: u16,
    /// (balance id, state), in the order the balances first appeared for this tenant.
    accounts: SmallVec<[(u16, AccountState); 2]>,
}

#[derive(Default)]
pub struct Tenants {
    names: Vec<u8>,
    tenants: Vec<Tenant>,
    /// Indices into `tenants`, by the hash of the name.
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    balance_names: Vec<Box<str>>,
    balance_ids: hashbrown::HashMap<Box<str>, u16>,
}

impl Tenants {
    fn name_of(&self, tenant: &Tenant) -> &str {
        let start = tenant.name_start as usize;
        // Names are whole `&str`s appended by `insert`; never split.
        std::str::from_utf8(&self.names[start..start + usize::from(tenant.name_len)])
            .unwrap_or_default()
    }

    fn find(&self, name: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        self.index
            .find(hash, |&index| {
                self.tenants
                    .get(index as usize)
                    .is_some_and(|tenant| self.name_of(tenant) == name)
            })
            .map(|&index| index as usize)
    }

    fn find_or_insert(&mut self, name: &str) -> Result<usize, MeterError> {
        if let Some(index) = self.find(name) {
            return Ok(index);
        }
        let too_many = |what: &str| {
            MeterError::StoreUnavailable(format!("the ledger holds the most {what} it can"))
        };
        let name_start = u32::try_from(self.names.len())
            .ok()
            .filter(|start| (*start as usize) + name.len() <= TENANT_NAME_BYTES_TOTAL_MAX)
            .ok_or_else(|| too_many("tenant names"))?;
        let name_len = u16::try_from(name.len()).map_err(|_| too_many("bytes in a tenant name"))?;
        let index = u32::try_from(self.tenants.len()).map_err(|_| too_many("tenants"))?;
        self.names.extend_from_slice(name.as_bytes());
        self.tenants.push(Tenant {
            name_start,
            name_len,
            accounts: SmallVec::new(),
        });
        let hash = self.hasher.hash_one(name);
        let (names, tenants, hasher) = (&self.names, &self.tenants, &self.hasher);
        self.index.insert_unique(hash, index, |&index| {
            let tenant = &tenants[index as usize];
            let start = tenant.name_start as usize;
            hasher.hash_one(
                std::str::from_utf8(&names[start..start + usize::from(tenant.name_len)])
                    .unwrap_or_default(),
            )
        });
        Ok(index as usize)
    }

    fn balance_id(&mut self, name: &str) -> Result<u16, MeterError> {
        if let Some(id) = self.balance_ids.get(name) {
            return Ok(*id);
        }
        let id = u16::try_from(self.balance_names.len())
            .ok()
            .filter(|id| usize::from(*id) < BALANCE_NAMES_MAX)
            .ok_or_else(|| {
                MeterError::StoreUnavailable(format!(
                    "the ledger already has {BALANCE_NAMES_MAX} balance names"
                ))
            })?;
        self.balance_names.push(name.into());
        self.balance_ids.insert(name.into(), id);
        Ok(id)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The tenant's existing accounts, by balance name.
    pub fn accounts(&self, name: &str) -> impl Iterator<Item = (&str, AccountState)> {
        self.find(name)
            .and_then(|index| self.tenants.get(index))
            .into_iter()
            .flat_map(|tenant| tenant.accounts.iter())
            .filter_map(|(id, state)| {
                Some((self.balance_names.get(usize::from(*id))?.as_ref(), *state))
            })
    }

    /// Sets account states of a tenant, adding the tenant and the accounts it lacks.
    pub fn set<'a>(
        &mut self,
        name: &str,
        states: impl IntoIterator<Item = (&'a String, &'a AccountState)>,
    ) -> Result<(), MeterError> {
        let mut updates: SmallVec<[(u16, AccountState); 4]> = SmallVec::new();
        for (balance, state) in states {
            updates.push((self.balance_id(balance)?, *state));
        }
        let index = self.find_or_insert(name)?;
        let Some(tenant) = self.tenants.get_mut(index) else {
            return Ok(());
        };
        for (id, state) in updates {
            match tenant.accounts.iter_mut().find(|(known, _)| *known == id) {
                Some((_, known)) => *known = state,
                None => tenant.accounts.push((id, state)),
            }
        }
        Ok(())
    }

    /// Adds a tenant with no accounts (a store read it and found none).
    pub fn touch(&mut self, name: &str) -> Result<(), MeterError> {
        self.find_or_insert(name).map(|_| ())
    }

    /// Tenants `start..end` in the order they appeared, with their accounts.
    pub fn slice(&self, start: usize, end: usize) -> Vec<(String, Vec<(String, AccountState)>)> {
        let end = end.min(self.tenants.len());
        self.tenants[start.min(end)..end]
            .iter()
            .map(|tenant| {
                let accounts = tenant
                    .accounts
                    .iter()
                    .filter_map(|(id, state)| {
                        Some((
                            self.balance_names.get(usize::from(*id))?.to_string(),
                            *state,
                        ))
                    })
                    .collect();
                (self.name_of(tenant).to_owned(), accounts)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_found_by_name_and_keep_their_order() {
        let mut tenants = Tenants::default();
        let default = "default".to_owned();
        for index in 0..10_000 {
            let state = AccountState {
                available: index,
                held: 0,
            };
            tenants
                .set(&format!("tenant-{index}"), [(&default, &state)])
                .unwrap();
        }
        assert_eq!(tenants.len(), 10_000);
        let found: Vec<_> = tenants.accounts("tenant-4242").collect();
        assert_eq!(
            found,
            [(
                "default",
                AccountState {
                    available: 4242,
                    held: 0
                }
            )]
        );
        assert!(!tenants.contains("tenant-10000"));
        let slice = tenants.slice(4242, 4243);
        assert_eq!(slice[0].0, "tenant-4242");
    }
}
