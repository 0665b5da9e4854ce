#![no_main]
//! See `creditgate::fuzzing::api_authorize` for what this target feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditgate::fuzzing::api_authorize(data));
