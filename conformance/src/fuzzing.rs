//! The body of the `conformance_case` fuzz target: parsing and schema validation of a
//! case file never panic, and an accepted case has steps. The target panics when a
//! property breaks (that is how libFuzzer sees a finding).
#![allow(clippy::panic, clippy::expect_used)]

use std::sync::OnceLock;

use creditgate::fuzzing::Target;

/// This crate's targets, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME` call them.
pub const TARGETS: &[(&str, Target)] = &[("conformance_case", conformance_case)];

/// A conformance case file, as `creditgate check --cases` reads it.
pub fn conformance_case(data: &[u8]) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator =
        VALIDATOR.get_or_init(|| crate::case::validator().expect("the built-in schema compiles"));
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the file is read as UTF-8 first: refused before the parser
    };
    if let Ok(case) = crate::case::parse(text, validator) {
        assert!(!case.steps.is_empty(), "a case without steps was accepted");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_committed_fuzz_input_passes_its_target() {
        creditgate::fuzzing::replay_committed(super::TARGETS);
    }
}
