#![no_main]
//! See `creditgate_http::fuzzing::api_authorize` for what this target feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditgate_http::fuzzing::api_authorize(data));
