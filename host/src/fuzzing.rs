//! The bodies of the fuzz targets: every decoder that reads bytes a client, an operator
//! or a damaged disk can hand the host, fed through the same functions the server and
//! recovery call. `fuzz/run` runs them under libFuzzer (in `.ci/run`, briefly); the replay
//! test at the end of this file runs every committed corpus file and crash reproducer
//! through them on stable, in `cargo test --release --workspace`.
//!
//! Each target panics when a property breaks (that is how libFuzzer sees a finding)
//! and returns quietly otherwise. The properties:
//!
//! - **Log records** (`ledger_record`): decoding never panics, whether the bytes are raw
//!   or a payload behind a valid frame (so that the fuzzer gets past the checksum); a
//!   decoded batch encodes and decodes to itself, each of its decisions reads alone as
//!   it reads in the batch, and replaying it into a live state (what recovery does)
//!   answers an error or a state, never a panic. A batch that does not decode does not
//!   read alone either: damage to its frame, header or layout fails the read of every
//!   decision, damage inside one decision the read of that one (the others are not
//!   decoded by design). A batch built from the fuzz bytes decodes to itself.
//! - **Snapshots** (`ledger_snapshot`): the same for a snapshot's tenant slices and its
//!   tail; a tail that decodes is restored into a live state whose filters are then
//!   queried and grown, as the sequencer would.
//! - **Legacy rows** (`ledger_legacy`): the JSON rows of schema v4 read by migration:
//!   an error or an imported transaction, whose import record round-trips and replays.
//!
//! The other crates' targets are theirs: the HTTP bodies in `creditgate_http::fuzzing`,
//! case files in `creditgate_conformance::fuzzing`, the gateway's reading of a request in
//! `creditgate_tower::fuzzing`.
//!
//! Property failures panic on purpose: this module is a test harness that ships in
//! the library only so that the fuzz crate and the stable replay test share it.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use crate::ledger::codec;
use crate::ledger::legacy::{self, TransactionRowV0};
use crate::ledger::lots::{Closure, LEGACY_LOT, Lot};
use crate::ledger::record::*;
use crate::ledger::state::{self, Coverage, LiveState, StateLimits, TenantSlice};
use crate::ledger::{AccountState, EntryKind};

/// A fuzz target: takes any bytes, panics only on a broken property.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME` call it.
pub const TARGETS: &[(&str, Target)] = &[
    ("ledger_record", ledger_record),
    ("ledger_snapshot", ledger_snapshot),
    ("ledger_legacy", ledger_legacy),
];

/// A log record: raw, and as the payload of a valid frame; and a batch built from the
/// bytes, through encode and decode.
pub fn ledger_record(data: &[u8]) {
    check_record(data);
    check_record(&codec::frame_version(
        codec::MAGIC,
        codec::FORMAT_VERSION,
        data,
    ));
    let built = Source::new(data).batch();
    let decoded = codec::decode(&codec::encode(&built)).expect("an encoded batch decodes");
    assert_eq!(decoded, built, "a batch changed through encode and decode");
}

fn check_record(bytes: &[u8]) {
    let Ok(batch) = codec::decode(bytes) else {
        // A batch that does not decode does not read one decision at a time either:
        // damage to its frame, header or layout fails every decision's read; damage
        // inside one decision fails that decision's read.
        match codec::decision_count(bytes) {
            Err(_) => assert!(codec::decode_decision(bytes, 0).is_err()),
            Ok(count) => assert!(
                (0..count).any(|index| codec::decode_decision(bytes, index).is_err()),
                "a batch that does not decode has every one of its {count} decisions read alone"
            ),
        }
        return;
    };
    let encoded = codec::encode(&batch);
    assert_eq!(codec::decode(&encoded).as_ref(), Ok(&batch));
    for (index, decision) in batch.decisions.iter().enumerate().take(64) {
        let (header, alone) = codec::decode_decision(bytes, index)
            .unwrap_or_else(|error| panic!("decision {index} does not read alone: {error}"));
        assert_eq!(&alone, decision, "decision {index} reads differently alone");
        assert_eq!(
            (header.seq, header.first_entry_id),
            (batch.seq, batch.first_entry_id)
        );
    }
    replay(&batch);
}

/// What recovery does with a record: apply it to the live state (an error is a
/// refusal to start, which is fine; a panic is not).
fn replay(batch: &Batch) -> LiveState {
    let mut state = LiveState::new(Coverage::Whole, StateLimits::default());
    let _ = state.apply_batch(batch);
    state
}

/// A snapshot's parts: raw and framed, tenants and tail; a tail that decodes is
/// restored, then its filters are used as the sequencer uses them.
pub fn ledger_snapshot(data: &[u8]) {
    for bytes in [
        data.to_vec(),
        codec::frame_version(state::SNAPSHOT_TENANTS, codec::FORMAT_VERSION, data),
    ] {
        if let Ok(slice) = state::decode_tenants(&bytes) {
            let again = state::decode_tenants(&state::encode_tenants(&slice));
            assert_eq!(
                again.as_ref(),
                Ok(&slice),
                "a tenant slice changed on a round trip"
            );
            let mut live = LiveState::new(Coverage::Whole, StateLimits::default());
            let _ = live.restore_tenants(slice);
        }
    }
    for bytes in [
        data.to_vec(),
        codec::frame_version(state::SNAPSHOT_TAIL, codec::FORMAT_VERSION, data),
    ] {
        if let Ok(tail) = state::decode_tail(&bytes) {
            let encoded = state::encode_tail(&tail);
            let again = state::decode_tail(&encoded).expect("an encoded tail decodes");
            assert_eq!(
                state::encode_tail(&again),
                encoded,
                "a tail changed on a round trip"
            );
            let mut live = LiveState::new(Coverage::Whole, StateLimits::default());
            live.restore_tail(tail);
            use_filters(&mut live);
        }
    }
    let slice = Source::new(data).tenant_slice();
    let again = state::decode_tenants(&state::encode_tenants(&slice));
    assert_eq!(
        again.as_ref(),
        Ok(&slice),
        "a built tenant slice changed on a round trip"
    );
}

/// Queries the restored filters and grows them: what the first batches after a
/// restart do.
fn use_filters(live: &mut LiveState) {
    let _ = live.may_know_transaction("t-1");
    let _ = live.may_know_grant("g-1");
    let _ = live.marks().borrow().lookup("acme\0scope\0key");
    let policy = live.active_policy().unwrap_or([0; 32]);
    for index in 0..4u64 {
        let batch = Batch {
            seq: live.last_seq.saturating_add(1),
            at_ms: 1,
            first_entry_id: 0,
            policies: vec![policy],
            decisions: vec![Decision::Grant(Granted {
                grant_id: format!("g-{index}"),
                tenant: "acme".to_owned(),
                balance: "default".to_owned(),
                amount: 1,
                policy: 0,
                posting: PostingRecord {
                    entries: vec![EntryRecord {
                        balance: "default".to_owned(),
                        kind: EntryKind::Grant,
                        amount: 1,
                        lot: LEGACY_LOT,
                    }],
                    accounts: vec![(
                        "default".to_owned(),
                        AccountState {
                            available: 1,
                            held: 0,
                        },
                    )],
                    lots: Vec::new(),
                },
                terms: LotTerms::default(),
            })],
        };
        let _ = live.apply_batch(&batch);
    }
}

/// A row of the old `transactions` table, one field a line: state, fingerprint,
/// request, authorization, held, receipt (absent or empty: none).
pub fn ledger_legacy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut field = || lines.next().unwrap_or_default().to_owned();
    let (state, fingerprint) = (field(), field());
    let (request_json, authorization_json, held_json) = (field(), field(), field());
    let receipt_json = Some(field()).filter(|receipt| !receipt.is_empty());
    let row = TransactionRowV0 {
        id: "t-1".to_owned(),
        tenant: "acme".to_owned(),
        state,
        fingerprint,
        created_at_ms: 1,
        expires_at_ms: Some(2),
        request_json,
        authorization_json,
        held_json,
        receipt_json,
    };
    let Ok(imported) = legacy::transaction(&row, 0) else {
        return;
    };
    let batch = Batch {
        seq: 1,
        at_ms: 1,
        first_entry_id: 0,
        policies: vec![[7; 32]],
        decisions: vec![Decision::Import(Imported {
            transactions: vec![imported],
            ..Imported::default()
        })],
    };
    let decoded = codec::decode(&codec::encode(&batch)).expect("an import record decodes");
    assert_eq!(
        decoded, batch,
        "an import record changed through encode and decode"
    );
    replay(&batch);
}

/// Builds ledger records from fuzz bytes: every field is taken from the front of the
/// input (zeros once it runs out), lists are short.
struct Source<'a> {
    bytes: &'a [u8],
}

impl<'a> Source<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&byte, rest)) => {
                self.bytes = rest;
                byte
            }
            None => 0,
        }
    }

    /// 0 to 8 bytes, little-endian: small numbers are common, extremes reachable.
    fn u64(&mut self) -> u64 {
        let width = self.byte() % 9;
        (0..width).fold(0u64, |value, index| {
            value | (u64::from(self.byte()) << (8 * u32::from(index)))
        })
    }

    fn i64(&mut self) -> i64 {
        self.u64() as i64
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn len(&mut self, max: u8) -> usize {
        usize::from(self.byte() % (max + 1))
    }

    fn bytes(&mut self) -> Vec<u8> {
        let length = self.len(24).min(self.bytes.len());
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        taken.to_vec()
    }

    fn string(&mut self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    fn option<T>(&mut self, make: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.bool().then(|| make(self))
    }

    fn list<T>(&mut self, max: u8, mut make: impl FnMut(&mut Self) -> T) -> Vec<T> {
        (0..self.len(max)).map(|_| make(self)).collect()
    }

    fn digest(&mut self) -> Digest {
        let mut digest = [0; 32];
        digest[0] = self.byte();
        digest[31] = self.byte();
        digest
    }

    fn amounts(&mut self) -> AmountList {
        self.list(3, |source| (source.string(), source.i64()))
    }

    fn pairs(&mut self) -> Vec<(String, String)> {
        self.list(3, |source| (source.string(), source.string()))
    }

    fn account(&mut self) -> AccountState {
        AccountState {
            available: self.i64(),
            held: self.i64(),
        }
    }

    fn kind(&mut self) -> EntryKind {
        EntryKind::ALL[usize::from(self.byte()) % EntryKind::ALL.len()]
    }

    fn posting(&mut self) -> PostingRecord {
        PostingRecord {
            entries: self.list(3, |source| EntryRecord {
                balance: source.string(),
                kind: source.kind(),
                amount: source.i64(),
                lot: source.u64(),
            }),
            accounts: self.list(3, |source| (source.string(), source.account())),
            lots: self.list(2, |source| (source.string(), source.lot())),
        }
    }

    fn lot(&mut self) -> Lot {
        Lot {
            id: self.u64(),
            amount: self.i64(),
            remaining: self.i64(),
            expires_at_ms: self.option(Self::i64),
            priority: self.i64() as i32,
            closed: self.option(Self::closure),
        }
    }

    fn closure(&mut self) -> Closure {
        if self.byte().is_multiple_of(2) {
            Closure::Expired
        } else {
            Closure::Voided
        }
    }

    fn terms(&mut self) -> LotTerms {
        LotTerms {
            expires_at_ms: self.option(Self::i64),
            priority: self.i64() as i32,
            category: self.string(),
            metadata: self.list(2, |source| (source.string(), source.string())),
        }
    }

    fn marks(&mut self) -> Vec<MarkRecord> {
        self.list(3, |source| MarkRecord {
            scope: source.string(),
            key: source.string(),
        })
    }

    fn request(&mut self) -> RequestRecord {
        RequestRecord {
            items: self.list(3, Self::string),
            attributes: self.pairs(),
            body: self.option(Self::bytes),
        }
    }

    fn authorization(&mut self) -> AuthorizationRecord {
        AuthorizationRecord {
            admitted: self.bool(),
            status: self.option(|source| source.u64() as u16),
            error: self.option(|source| (source.string(), source.string())),
            admitted_items: self.u32(),
            held: self.amounts(),
            charged: self.amounts(),
            headers: self.pairs(),
            meta_json: self.string(),
            balances: self.amounts(),
        }
    }

    fn receipt(&mut self) -> ReceiptRecord {
        ReceiptRecord {
            charged: self.amounts(),
            released: self.amounts(),
            uncollected: self.amounts(),
            headers: self.pairs(),
            meta_json: self.string(),
            balances: self.amounts(),
        }
    }

    fn transaction_state(&mut self) -> TransactionState {
        TransactionState::ALL[usize::from(self.byte() % 4)]
    }

    fn imported(&mut self) -> Imported {
        Imported {
            accounts: self.list(2, |source| {
                (source.string(), source.string(), source.account())
            }),
            transactions: self.list(2, |source| ImportedTransaction {
                id: source.string(),
                tenant: source.string(),
                state: source.transaction_state(),
                fingerprint: source.digest(),
                policy: source.u32(),
                created_at_ms: source.u64(),
                expires_at_ms: source.option(Self::u64),
                operation: source.string(),
                request: source.request(),
                authorization: source.authorization(),
                receipt: source.option(Self::receipt),
                held: source.amounts(),
            }),
            journal: self.list(2, |source| ImportedEntry {
                id: source.u64(),
                transaction_id: source.string(),
                tenant: source.string(),
                balance: source.string(),
                kind: source.kind(),
                amount: source.i64(),
                policy: source.u32(),
                at_ms: source.u64(),
            }),
            marks: self.list(2, |source| {
                (
                    source.string(),
                    source.string(),
                    source.string(),
                    source.string(),
                )
            }),
            grants: self.list(2, |source| ImportedGrant {
                grant_id: source.string(),
                tenant: source.string(),
                balance: source.string(),
                amount: source.i64(),
                at_ms: source.u64(),
            }),
            activations: self.list(2, |source| ImportedActivation {
                policy: source.u32(),
                via: source.string(),
                at_ms: source.u64(),
            }),
        }
    }

    fn decision(&mut self) -> Decision {
        match self.byte() % 15 {
            0 => Decision::Authorize(Authorized {
                id: self.string(),
                tenant: self.string(),
                fingerprint: self.digest(),
                policy: self.u32(),
                operation: self.string(),
                request: self.option(Self::request),
                answer: self.authorization(),
                expires_at_ms: self.option(Self::u64),
                posting: self.posting(),
                marks: self.marks(),
            }),
            1 => Decision::Settle(Settled {
                id: self.string(),
                tenant: self.string(),
                policy: self.u32(),
                status: self.u64() as u16,
                answer: self.receipt(),
                posting: self.posting(),
                marks: self.marks(),
                outcome: self.option(|source| OutcomeRecord {
                    attributes: source.pairs(),
                    body: source.option(Self::bytes),
                }),
            }),
            2 => Decision::Expire(Expired {
                id: self.string(),
                tenant: self.string(),
                policy: self.u32(),
                posting: self.posting(),
            }),
            3 => Decision::Grant(Granted {
                grant_id: self.string(),
                tenant: self.string(),
                balance: self.string(),
                amount: self.i64(),
                policy: self.u32(),
                posting: self.posting(),
                terms: self.terms(),
            }),
            4 => Decision::Policy(PolicyRecord {
                policy: self.u32(),
                name: self.string(),
                version: self.string(),
                balances: self.list(3, Self::string),
                hold_ttl_ms: self.u64(),
                component: self.option(Self::bytes),
            }),
            5 => Decision::Activate(Activation {
                policy: self.u32(),
                via: self.string(),
            }),
            6 => Decision::CloseLot(LotClosed {
                tenant: self.string(),
                balance: self.string(),
                lot: self.u64(),
                grant_id: self.string(),
                closure: self.closure(),
                policy: self.u32(),
                posting: self.posting(),
            }),
            7 => Decision::Overdraft(OverdraftSet {
                tenant: self.string(),
                balance: self.string(),
                limit: self.i64(),
            }),
            8 => Decision::Cap(CapSet {
                tenant: self.string(),
                balance: self.string(),
                cap: self.option(|source| crate::ledger::caps::CapTerms {
                    cap: source.i64(),
                    window: crate::ledger::calendar::Window::ALL
                        [usize::from(source.byte()) % crate::ledger::calendar::Window::ALL.len()],
                    time_zone: source.string(),
                }),
                window: self.cap_window(),
            }),
            9 => Decision::Spend(Spent {
                tenant: self.string(),
                windows: self.list(3, |source| (source.string(), source.cap_window())),
            }),
            10 => Decision::Refill(RefillSet {
                tenant: self.string(),
                refill_id: self.string(),
                refill: self.option(Self::refill_terms),
                last_start_ms: self.option(Self::i64),
            }),
            11 => Decision::Watch(crate::ledger::record::WatchSet {
                tenant: self.string(),
                balance: self.string(),
                watch: self.option(|source| crate::ledger::events::Watch {
                    thresholds: crate::ledger::events::Thresholds {
                        levels: source.list(3, |source| {
                            if source.byte() % 2 == 0 {
                                crate::ledger::events::Level::Credits(source.i64())
                            } else {
                                crate::ledger::events::Level::Percent(source.byte())
                            }
                        }),
                        lot_expiring_lead_ms: source.option(Self::i64),
                    },
                    cap_reached_window_ms: source.option(Self::i64),
                    warned_lots: source.list(3, Self::u64),
                }),
            }),
            12 => Decision::Event(crate::ledger::record::EventRecord {
                tenant: self.string(),
                balance: self.string(),
                kind: crate::ledger::events::EventKind::LotExpired {
                    lot: self.u64(),
                    grant_id: self.string(),
                    amount: self.i64(),
                },
            }),
            13 => Decision::Schedule(crate::ledger::scheduled::ScheduledGrant {
                grant_id: self.string(),
                tenant: self.string(),
                balance: self.string(),
                amount: self.i64(),
                terms: self.terms(),
                effective_at_ms: self.i64(),
                state: [
                    crate::ledger::scheduled::ScheduledState::Pending,
                    crate::ledger::scheduled::ScheduledState::Granted,
                    crate::ledger::scheduled::ScheduledState::Voided,
                    crate::ledger::scheduled::ScheduledState::Refused,
                ][usize::from(self.byte() % 4)],
            }),
            _ => Decision::Import(self.imported()),
        }
    }

    fn refill_terms(&mut self) -> crate::ledger::refills::RefillTerms {
        use crate::ledger::calendar::Cadence;
        use crate::ledger::refills::{RefillMode, RefillTerms};
        RefillTerms {
            balance: self.string(),
            amount: self.i64(),
            every: match self.byte() % 3 {
                0 => Cadence::Hours(self.u32()),
                1 => Cadence::Days(self.u32()),
                _ => Cadence::Months(self.u32()),
            },
            time_zone: self.string(),
            anchor_ms: self.i64(),
            mode: if self.bool() {
                RefillMode::Rollover { cap: self.i64() }
            } else {
                RefillMode::Reset
            },
            priority: self.i64() as i32,
            category: self.string(),
        }
    }

    fn cap_window(&mut self) -> crate::ledger::caps::CapWindow {
        crate::ledger::caps::CapWindow {
            window: self.option(|source| crate::ledger::calendar::Interval {
                start_ms: source.i64(),
                end_ms: source.i64(),
            }),
            since_ms: self.i64(),
            spent: self.i64(),
        }
    }

    fn batch(&mut self) -> Batch {
        Batch {
            seq: self.u64(),
            at_ms: self.u64(),
            first_entry_id: self.u64(),
            policies: self.list(3, Self::digest),
            decisions: self.list(6, Self::decision),
        }
    }

    fn tenant_slice(&mut self) -> TenantSlice {
        self.list(6, |source| {
            (
                source.string(),
                source.list(3, |source| (source.string(), source.account())),
            )
        })
    }
}

/// Replays every committed corpus file and crash reproducer of `targets` on stable
/// (`fuzz/corpus/TARGET/*`, `fuzz/regressions/TARGET/*`); panics naming the first input
/// a target fails, or when fewer inputs than targets were found. Each crate's tests run
/// it on the targets it owns.
pub fn replay_committed(targets: &[(&str, Target)]) {
    let fuzz_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0usize;
    for (name, target) in targets {
        for kind in ["corpus", "regressions"] {
            let dir = fuzz_dir.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                let bytes = std::fs::read(&path).expect("a fuzz input reads");
                if let Err(panic) = std::panic::catch_unwind(|| target(&bytes)) {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|why| (*why).to_owned()))
                        .unwrap_or_default();
                    panic!("{} fails {name}: {why}", path.display());
                }
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= targets.len(),
        "only {replayed} fuzz inputs found"
    );
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file and crash reproducer through its target on
    //! stable: `fuzz/corpus/TARGET/*` and `fuzz/regressions/TARGET/*`.
    use std::path::PathBuf;

    use super::TARGETS;

    fn fuzz_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// Writes the seeds of the ledger targets that only code can make (a snapshot of a
    /// live state with its filters, built records); run with `--ignored` when a stored
    /// format changes, then commit `fuzz/corpus`.
    #[test]
    #[ignore]
    fn write_ledger_seeds() {
        use crate::ledger::codec;
        use crate::ledger::state::{self, Coverage, LiveState, StateLimits};
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = fuzz_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir).expect("corpus directory");
            std::fs::write(dir.join(name), bytes).expect("seed written");
        };
        let mut live = LiveState::new(Coverage::Whole, StateLimits::default());
        super::use_filters(&mut live);
        let tail = state::encode_tail(&live.snapshot_tail());
        write("ledger_snapshot", "tail", &tail);
        write("ledger_snapshot", "tail-payload", &tail[13..]);
        let tenants = state::encode_tenants(&live.tenant_slice(0, live.tenant_count()));
        write("ledger_snapshot", "tenants", &tenants);
        write("ledger_snapshot", "tenants-payload", &tenants[13..]);
        for (name, seed) in [
            ("built-a", &[7u8; 64][..]),
            ("built-b", b"\x05\x01\x02authorize-me"),
        ] {
            let batch = super::Source::new(seed).batch();
            let bytes = codec::encode(&batch);
            write("ledger_record", name, &bytes);
            write("ledger_record", &format!("{name}-payload"), &bytes[13..]);
        }
    }

    #[test]
    fn every_committed_fuzz_input_passes_its_target() {
        super::replay_committed(TARGETS);
    }
}
