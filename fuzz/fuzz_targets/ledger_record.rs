#![no_main]
//! See `creditgate::fuzzing::ledger_record` for what this target feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditgate::fuzzing::ledger_record(data));
