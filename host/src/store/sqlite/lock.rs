//! One meter owns a SQLite ledger: its live state is the truth, so a second writer would
//! decide on stale balances. `PATH.lock` is held (an OS file lock, released when the
//! process dies) while a meter has the ledger open, and names the owner so that
//! operator commands can go through it instead.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::MeterError;
use crate::store::StoreResult;

/// Who holds a ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Where its HTTP API listens, when it serves one.
    pub url: Option<String>,
}

pub struct LedgerLock {
    file: File,
    path: PathBuf,
}

pub fn lock_path(ledger: &Path) -> PathBuf {
    super::beside(ledger, ".lock")
}

impl LedgerLock {
    /// Takes the ledger's lock, or says who has it.
    pub fn acquire(ledger: &Path) -> StoreResult<Self> {
        let path = lock_path(ledger);
        let unavailable = |error: std::io::Error| {
            MeterError::StoreUnavailable(format!("cannot open {}: {error}", path.display()))
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(unavailable)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let owner = owner_of(&path);
                return Err(MeterError::LedgerInUse(match owner {
                    Some(Owner {
                        pid,
                        url: Some(url),
                    }) => format!(
                        "{} is open in creditgate process {pid}, serving {url}; use its API or stop it first",
                        ledger.display()
                    ),
                    Some(Owner { pid, url: None }) => format!(
                        "{} is open in creditgate process {pid}; stop it first",
                        ledger.display()
                    ),
                    None => format!("{} is open in another meter", ledger.display()),
                }));
            }
            Err(TryLockError::Error(error)) => return Err(unavailable(error)),
        }
        let lock = Self { file, path };
        lock.write(&Owner {
            pid: std::process::id(),
            url: None,
        })?;
        Ok(lock)
    }

    /// Records where the owner's API listens.
    pub fn announce(&self, url: &str) -> StoreResult<()> {
        self.write(&Owner {
            pid: std::process::id(),
            url: Some(url.to_owned()),
        })
    }

    fn write(&self, owner: &Owner) -> StoreResult<()> {
        let text = serde_json::to_vec(owner).unwrap_or_default();
        let mut file = &self.file;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| file.write_all(&text))
            .map_err(|error| {
                MeterError::StoreUnavailable(format!(
                    "cannot write {}: {error}",
                    self.path.display()
                ))
            })
    }
}

fn owner_of(path: &Path) -> Option<Owner> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Who holds the ledger at `ledger` now, if anyone.
pub fn owner(ledger: &Path) -> Option<Owner> {
    let path = lock_path(ledger);
    let file = File::open(&path).ok()?;
    match file.try_lock() {
        Ok(()) => None,
        Err(_) => owner_of(&path),
    }
}
