#![no_main]
//! See `creditgate_conformance::fuzzing::conformance_case` for what this target feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditgate_conformance::fuzzing::conformance_case(data));
