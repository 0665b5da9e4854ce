#![no_main]
//! See `creditgate::fuzzing::ledger_snapshot` for what this target feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditgate::fuzzing::ledger_snapshot(data));
