//! The stored form of a [`Batch`]: versioned, checksummed, compact.
//!
//! ```text
//! magic "CGB1" | format version u8 | payload length u32 LE | CRC-32 u32 LE | payload
//! payload = header (length-prefixed postcard) | decision count | each decision, length-prefixed postcard
//! ```
//!
//! Lengths and the count are LEB128 varints. Each decision is prefixed with its length
//! so that one can be read without decoding the others ([`decode_decision`]: a cold read
//! of one transaction). Postcard is serde's compact, non-self-describing format: field
//! order is the format, so a change of any stored type is a new version here, and every
//! earlier version keeps its decoder (version 1 is the first).
//!
//! Version 2 added a variant at the end of an enum (the `open` entry kind): the bytes of
//! every version-1 record mean the same in version 2, so both read with one decoder,
//! and a build that knows only version 1 refuses a version-2 record as newer rather
//! than misreading it as damage.
//!
//! Version 3 added lots (`docs/credits.md`): a lot on each entry, lot states on each
//! posting, terms on each grant. Versions 1 and 2 read through their frozen types
//! ([`v2`]).
//!
//! Version 4 added a decision at the end of the enum (an account's overdraft limit):
//! version-3 bytes mean the same in it, and both read with one decoder.
//!
//! Version 5 added decisions at the end of the enum (an account's spend cap, the spend
//! windows a decision moved, a refill): versions 3 and 4 read with the same decoder.
//!
//! Version 6 added decisions at the end of the enum (an account's watch, an event), and
//! version 7 one more (a grant that takes effect later): versions 3 to 6 read with the
//! same decoder.
//!
//! Version 8 added the outcome (attributes and body) to each settle, and a refusal
//! records its request, for `creditgate replay`: versions 3 to 7 read through their
//! frozen settle ([`v7`]), whose outcome is none.

mod v2;
mod v7;

use serde::{Deserialize, Serialize};

use super::record::{Batch, Decision, Digest};

pub(crate) const MAGIC: &[u8; 4] = b"CGB1";
/// The version this build writes.
pub const FORMAT_VERSION: u8 = 8;
const HEADER_BYTES: usize = 4 + 1 + 4 + 4;
/// The largest record this build writes or reads: bounds what a damaged length could
/// make a reader allocate.
pub const RECORD_BYTES_MAX: usize = 1 << 30;

/// Why stored bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The bytes are not a record, or were damaged (checksum, length, content).
    Damaged(String),
    /// The record was written by a newer build.
    NewerVersion(u8),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Damaged(why) => write!(f, "a stored record is damaged: {why}"),
            CodecError::NewerVersion(version) => write!(
                f,
                "a stored record has format version {version}, newer than this build's {FORMAT_VERSION}; upgrade creditgate"
            ),
        }
    }
}

impl From<CodecError> for crate::error::MeterError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::Damaged(_) => crate::error::MeterError::StoreCorrupt(error.to_string()),
            CodecError::NewerVersion(_) => {
                crate::error::MeterError::StoreIncompatible(error.to_string())
            }
        }
    }
}

/// The batch without its decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub seq: u64,
    pub at_ms: u64,
    pub first_entry_id: u64,
    pub policies: Vec<Digest>,
}

fn damaged(why: impl std::fmt::Display) -> CodecError {
    CodecError::Damaged(why.to_string())
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, CodecError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| damaged("a length runs past the end"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(damaged("a length is longer than 64 bits"))
}

fn take<'a>(bytes: &mut &'a [u8], length: u64) -> Result<&'a [u8], CodecError> {
    let length = usize::try_from(length).map_err(damaged)?;
    if length > bytes.len() {
        return Err(damaged(format!(
            "a part of {length} bytes runs past the end ({} left)",
            bytes.len()
        )));
    }
    let (part, rest) = bytes.split_at(length);
    *bytes = rest;
    Ok(part)
}

fn put_value<T: Serialize>(out: &mut Vec<u8>, scratch: &mut Vec<u8>, value: &T) {
    scratch.clear();
    // Serializing plain data to a Vec cannot fail.
    if let Ok(bytes) = postcard::to_extend(value, std::mem::take(scratch)) {
        *scratch = bytes;
    }
    put_varint(out, scratch.len() as u64);
    out.extend_from_slice(scratch);
}

fn take_value<T: for<'de> Deserialize<'de>>(bytes: &mut &[u8]) -> Result<T, CodecError> {
    let length = take_varint(bytes)?;
    let part = take(bytes, length)?;
    postcard::from_bytes(part).map_err(damaged)
}

/// Frames a payload: magic, version, length, checksum.
fn frame(magic: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    frame_version(magic, FORMAT_VERSION, payload)
}

pub(crate) fn frame_version(magic: &[u8; 4], version: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(magic);
    out.push(version);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = checksum(version, payload.len() as u32, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Covers the version and the length too: a damaged version byte reads as damage, not
/// as a record of a newer build.
fn checksum(version: u8, length: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[version]);
    hasher.update(&length.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Checks a frame and answers its version and payload.
fn unframe<'a>(magic: &[u8; 4], bytes: &'a [u8]) -> Result<(u8, &'a [u8]), CodecError> {
    if bytes.len() < HEADER_BYTES || &bytes[..4] != magic {
        return Err(damaged("it does not start with the record's magic bytes"));
    }
    let version = bytes[4];
    let length = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    let crc = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]);
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() != length {
        return Err(damaged(format!(
            "its length says {length} bytes but {} follow",
            payload.len()
        )));
    }
    if checksum(version, length as u32, payload) != crc {
        return Err(damaged("its checksum does not match its bytes"));
    }
    if version > FORMAT_VERSION {
        return Err(CodecError::NewerVersion(version));
    }
    Ok((version, payload))
}

/// The stored bytes of a batch.
pub fn encode(batch: &Batch) -> Vec<u8> {
    let mut payload = Vec::with_capacity(256 * (batch.decisions.len() + 1));
    let mut scratch = Vec::with_capacity(1024);
    let header = Header {
        seq: batch.seq,
        at_ms: batch.at_ms,
        first_entry_id: batch.first_entry_id,
        policies: batch.policies.clone(),
    };
    put_value(&mut payload, &mut scratch, &header);
    put_varint(&mut payload, batch.decisions.len() as u64);
    for decision in &batch.decisions {
        put_value(&mut payload, &mut scratch, decision);
    }
    frame(MAGIC, &payload)
}

/// The header of a stored batch and each decision's bytes, undecoded. The frame, the
/// header and the layout (the count, every length, no byte after the last decision)
/// are checked here, for the full read and the read of one decision alike: a record
/// one of them refuses for its layout, the other refuses too.
fn layout(bytes: &[u8]) -> Result<(Header, u8, Vec<&[u8]>), CodecError> {
    let (version, mut payload) = unframe(MAGIC, bytes)?;
    match version {
        1..=FORMAT_VERSION => {
            let header: Header = take_value(&mut payload)?;
            let count = take_varint(&mut payload)?;
            // Each decision takes at least one byte: a damaged count cannot over-allocate.
            let mut parts = Vec::with_capacity((count as usize).min(payload.len()));
            for _ in 0..count {
                let length = take_varint(&mut payload)?;
                parts.push(take(&mut payload, length)?);
            }
            if !payload.is_empty() {
                return Err(damaged("bytes follow the last decision"));
            }
            Ok((header, version, parts))
        }
        other => Err(damaged(format!("unknown format version {other}"))),
    }
}

fn decode_part(version: u8, part: &[u8]) -> Result<Decision, CodecError> {
    if version <= 2 {
        postcard::from_bytes::<v2::DecisionV2>(part)
            .map(Decision::from)
            .map_err(damaged)
    } else if version <= 7 {
        postcard::from_bytes::<v7::DecisionV7>(part)
            .map(Decision::from)
            .map_err(damaged)
    } else {
        postcard::from_bytes(part).map_err(damaged)
    }
}

/// A batch from its stored bytes.
pub fn decode(bytes: &[u8]) -> Result<Batch, CodecError> {
    let (header, version, parts) = layout(bytes)?;
    let decisions = parts
        .into_iter()
        .map(|part| decode_part(version, part))
        .collect::<Result<_, _>>()?;
    Ok(Batch {
        seq: header.seq,
        at_ms: header.at_ms,
        first_entry_id: header.first_entry_id,
        policies: header.policies,
        decisions,
    })
}

/// How many decisions a stored batch has (its layout checked, no decision decoded).
pub fn decision_count(bytes: &[u8]) -> Result<usize, CodecError> {
    layout(bytes).map(|(_, _, parts)| parts.len())
}

/// The header of a stored batch and its decision number `index`, without decoding the
/// other decisions (their layout is checked, as [`decode`] checks it).
pub fn decode_decision(bytes: &[u8], index: usize) -> Result<(Header, Decision), CodecError> {
    let (header, version, parts) = layout(bytes)?;
    let part = parts.get(index).ok_or_else(|| {
        damaged(format!(
            "decision {index} asked of a batch of {}",
            parts.len()
        ))
    })?;
    Ok((header, decode_part(version, part)?))
}

/// Frames any stored value of the ledger (a snapshot's parts) the way batches are.
pub fn encode_value<T: Serialize>(magic: &[u8; 4], value: &T) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut scratch = Vec::new();
    put_value(&mut payload, &mut scratch, value);
    frame(magic, &payload)
}

pub fn decode_value<T: for<'de> Deserialize<'de>>(
    magic: &[u8; 4],
    bytes: &[u8],
) -> Result<T, CodecError> {
    decode_value_versioned(magic, bytes).map(|(_, value)| value)
}

/// A snapshot's tail: those of formats 1 and 2 read through their frozen types.
pub fn decode_tail(bytes: &[u8]) -> Result<super::state::SnapshotTail, CodecError> {
    let magic = super::state::SNAPSHOT_TAIL;
    if value_version(magic, bytes)? <= 2 {
        decode_value::<v2::SnapshotTailV2>(magic, bytes).map(Into::into)
    } else {
        decode_value(magic, bytes)
    }
}

/// A transaction record stored alone (PostgreSQL's `record` column): those of formats 1
/// and 2 read through their frozen type.
pub fn decode_transaction(
    magic: &[u8; 4],
    bytes: &[u8],
) -> Result<super::state::TransactionRecord, CodecError> {
    if value_version(magic, bytes)? <= 2 {
        decode_value::<v2::TransactionV2>(magic, bytes).map(Into::into)
    } else {
        decode_value(magic, bytes)
    }
}

/// A stored value and the format version it was written in, for a value whose layout
/// changed with the version: decode it as `T` of that version.
pub fn value_version(magic: &[u8; 4], bytes: &[u8]) -> Result<u8, CodecError> {
    unframe(magic, bytes).map(|(version, _)| version)
}

fn decode_value_versioned<T: for<'de> Deserialize<'de>>(
    magic: &[u8; 4],
    bytes: &[u8],
) -> Result<(u8, T), CodecError> {
    let (version, mut payload) = unframe(magic, bytes)?;
    match version {
        1..=FORMAT_VERSION => {
            let value = take_value(&mut payload)?;
            if payload.is_empty() {
                Ok((version, value))
            } else {
                Err(damaged("bytes follow the value"))
            }
        }
        other => Err(damaged(format!("unknown format version {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::*;
    use crate::ledger::{AccountState, EntryKind};

    fn batch() -> Batch {
        Batch {
            seq: 7,
            at_ms: 1_700_000_000_000,
            first_entry_id: 41,
            policies: vec![[3; 32]],
            decisions: vec![
                Decision::Authorize(Authorized {
                    id: "t1".into(),
                    tenant: "acme".into(),
                    fingerprint: [9; 32],
                    policy: 0,
                    operation: "person.enrich".into(),
                    request: Some(RequestRecord {
                        items: vec!["a".into(), "b".into()],
                        attributes: vec![("mode".into(), "AUD".into())],
                        body: Some(vec![0, 1, 2, 255]),
                    }),
                    answer: AuthorizationRecord {
                        admitted: true,
                        admitted_items: 2,
                        held: vec![("default".into(), 2)],
                        meta_json: "{}".into(),
                        balances: vec![("default".into(), 8)],
                        ..AuthorizationRecord::default()
                    },
                    expires_at_ms: Some(1_700_000_300_000),
                    posting: PostingRecord {
                        entries: vec![EntryRecord {
                            balance: "default".into(),
                            kind: EntryKind::Hold,
                            amount: 2,
                            lot: 40,
                        }],
                        accounts: vec![(
                            "default".into(),
                            AccountState {
                                available: 8,
                                held: 2,
                            },
                        )],
                        lots: vec![(
                            "default".into(),
                            crate::ledger::lots::Lot {
                                remaining: 8,
                                ..crate::ledger::lots::Lot::new(40, 10, 0, Some(1_800_000_000_000))
                            },
                        )],
                    },
                    marks: vec![MarkRecord {
                        scope: "exported".into(),
                        key: "d1".into(),
                    }],
                }),
                Decision::Settle(Settled {
                    id: "t1".into(),
                    tenant: "acme".into(),
                    policy: 0,
                    status: 200,
                    answer: ReceiptRecord {
                        charged: vec![("default".into(), 1)],
                        ..ReceiptRecord::default()
                    },
                    posting: PostingRecord::default(),
                    marks: Vec::new(),
                    outcome: Some(OutcomeRecord {
                        attributes: vec![("records".into(), "1".into())],
                        body: Some(vec![7]),
                    }),
                }),
                Decision::Activate(Activation {
                    policy: 0,
                    via: "start".into(),
                }),
                Decision::Cap(CapSet {
                    tenant: "acme".into(),
                    balance: "default".into(),
                    cap: Some(crate::ledger::caps::CapTerms {
                        cap: 100,
                        window: crate::ledger::calendar::Window::Day,
                        time_zone: "Europe/Paris".into(),
                    }),
                    window: crate::ledger::caps::CapWindow::default(),
                }),
                Decision::Spend(Spent {
                    tenant: "acme".into(),
                    windows: vec![(
                        "default".into(),
                        crate::ledger::caps::CapWindow {
                            window: Some(crate::ledger::calendar::Interval {
                                start_ms: 1_699_999_200_000,
                                end_ms: 1_700_085_600_000,
                            }),
                            since_ms: 1_699_999_900_000,
                            spent: 2,
                        },
                    )],
                }),
                Decision::Watch(crate::ledger::record::WatchSet {
                    tenant: "acme".into(),
                    balance: "default".into(),
                    watch: Some(crate::ledger::events::Watch::new(
                        crate::ledger::events::Thresholds {
                            levels: vec![crate::ledger::events::Level::Percent(20)],
                            lot_expiring_lead_ms: Some(86_400_000),
                        },
                    )),
                }),
                Decision::Event(crate::ledger::record::EventRecord {
                    tenant: "acme".into(),
                    balance: "default".into(),
                    kind: crate::ledger::events::EventKind::BalanceExhausted {
                        before: 3,
                        after: 0,
                    },
                }),
            ],
        }
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let batch = batch();
        assert_eq!(decode(&encode(&batch)), Ok(batch));
    }

    #[test]
    fn one_decision_reads_without_the_others() {
        let batch = batch();
        let (header, decision) = decode_decision(&encode(&batch), 1).unwrap();
        assert_eq!((header.seq, header.first_entry_id), (7, 41));
        assert_eq!(decision, batch.decisions[1]);
        assert!(decode_decision(&encode(&batch), batch.decisions.len()).is_err());
    }

    /// Found by the `ledger_record` fuzz target: the read of one decision skipped the
    /// check that nothing follows the last one, so it answered a decision of a record
    /// the full read refuses.
    #[test]
    fn a_record_with_bytes_after_its_last_decision_is_refused_by_every_read() {
        let mut payload = encode(&batch())[HEADER_BYTES..].to_vec();
        payload.push(0);
        let bytes = frame(MAGIC, &payload);
        assert!(decode(&bytes).is_err());
        assert!(decision_count(&bytes).is_err());
        assert!(decode_decision(&bytes, 0).is_err());
        assert!(decode_decision(&bytes, 1).is_err());
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        let bytes = encode(&batch());
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[index] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "byte {index} bit {bit}");
            }
        }
        for length in 0..bytes.len() {
            assert!(decode(&bytes[..length]).is_err(), "truncated to {length}");
        }
    }

    /// A grant as builds before lots wrote it, framed as version 1 and as version 2:
    /// it reads as a grant of the legacy lot with the default terms.
    #[test]
    fn records_of_versions_1_and_2_read_as_grants_of_the_legacy_lot() {
        use v2::written::*;
        let old = Decision2::Grant(Granted2 {
            grant_id: "welcome".into(),
            tenant: "acme".into(),
            balance: "default".into(),
            amount: 10,
            policy: 0,
            posting: Posting2 {
                entries: vec![("default".into(), EntryKind::Grant, 10)],
                accounts: vec![(
                    "default".into(),
                    AccountState {
                        available: 10,
                        held: 0,
                    },
                )],
            },
        });
        let header = Header {
            seq: 3,
            at_ms: 5,
            first_entry_id: 9,
            policies: vec![[1; 32]],
        };
        let mut payload = Vec::new();
        let mut scratch = Vec::new();
        put_value(&mut payload, &mut scratch, &header);
        put_varint(&mut payload, 1);
        put_value(&mut payload, &mut scratch, &old);
        let expected = Decision::Grant(Granted {
            grant_id: "welcome".into(),
            tenant: "acme".into(),
            balance: "default".into(),
            amount: 10,
            policy: 0,
            posting: PostingRecord {
                entries: vec![EntryRecord {
                    balance: "default".into(),
                    kind: EntryKind::Grant,
                    amount: 10,
                    lot: crate::ledger::lots::LEGACY_LOT,
                }],
                accounts: vec![(
                    "default".into(),
                    AccountState {
                        available: 10,
                        held: 0,
                    },
                )],
                lots: Vec::new(),
            },
            terms: LotTerms::default(),
        });
        for version in [1, 2] {
            let bytes = frame_version(MAGIC, version, &payload);
            let batch = decode(&bytes).unwrap();
            assert_eq!((batch.seq, batch.first_entry_id), (3, 9));
            assert_eq!(batch.decisions, std::slice::from_ref(&expected));
            assert_eq!(
                decode_decision(&bytes, 0).map(|(_, decision)| decision),
                Ok(expected.clone())
            );
            // Read as today's layout, the same bytes do not make that grant.
            let misread = frame_version(MAGIC, FORMAT_VERSION, &payload);
            assert_ne!(
                decode(&misread).map(|batch| batch.decisions),
                Ok(vec![expected.clone()])
            );
        }
    }

    /// A settle as builds of formats 3 to 7 wrote it (no outcome) reads with no
    /// outcome; read as today's layout, the same bytes are refused.
    #[test]
    fn a_settle_of_versions_3_to_7_reads_without_an_outcome() {
        use v7::written::*;
        let answer = ReceiptRecord {
            charged: vec![("default".into(), 2)],
            ..ReceiptRecord::default()
        };
        let old = Decision7::Settle(Settled7 {
            id: "t1".into(),
            tenant: "acme".into(),
            policy: 0,
            status: 200,
            answer: answer.clone(),
            posting: PostingRecord::default(),
            marks: Vec::new(),
        });
        let header = Header {
            seq: 3,
            at_ms: 5,
            first_entry_id: 9,
            policies: vec![[1; 32]],
        };
        let mut payload = Vec::new();
        let mut scratch = Vec::new();
        put_value(&mut payload, &mut scratch, &header);
        put_varint(&mut payload, 1);
        put_value(&mut payload, &mut scratch, &old);
        let expected = Decision::Settle(Settled {
            id: "t1".into(),
            tenant: "acme".into(),
            policy: 0,
            status: 200,
            answer,
            posting: PostingRecord::default(),
            marks: Vec::new(),
            outcome: None,
        });
        for version in 3..=7 {
            let bytes = frame_version(MAGIC, version, &payload);
            assert_eq!(
                decode(&bytes).map(|batch| batch.decisions),
                Ok(vec![expected.clone()])
            );
        }
        assert!(decode(&frame_version(MAGIC, 8, &payload)).is_err());
    }

    #[test]
    fn a_record_of_a_newer_format_is_refused_as_incompatible() {
        let bytes = encode(&batch());
        let bytes = frame_version(MAGIC, FORMAT_VERSION + 1, &bytes[HEADER_BYTES..]);
        assert_eq!(
            decode(&bytes),
            Err(CodecError::NewerVersion(FORMAT_VERSION + 1))
        );
    }
}
