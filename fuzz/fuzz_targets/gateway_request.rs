#![no_main]
//! See `creditgate_tower::fuzzing::gateway_request` for what this target feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditgate_tower::fuzzing::gateway_request(data));
