#![no_main]
//! See `creditgate_http::fuzzing::api_grant` for what this target feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditgate_http::fuzzing::api_grant(data));
