//! The guest SDKs' own tests pass: `policy/sdk-js` under Node's test runner and
//! `policy/sdk-python` under CPython's unittest, against the contract's Python bindings
//! that `policy/build-guests` writes (run it first). A runner that finds no test fails.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::target_dir;

fn policy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy")
}

/// Runs `command`; asserts it succeeded and that `count` finds a number of tests > 0 in
/// its output (stdout then stderr).
fn assert_tests_ran(mut command: Command, count: impl Fn(&str) -> Option<usize>) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    assert!(status.success(), "{command:?} failed ({status}):\n{output}");
    let ran = count(&output).unwrap_or(0);
    assert!(ran > 0, "{command:?} ran no tests:\n{output}");
}

/// The number after `prefix` at the start of a line of `output`.
fn number_after(output: &str, prefix: &str) -> Option<usize> {
    output.lines().find_map(|line| {
        let rest = line.strip_prefix(prefix)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[test]
fn the_javascript_sdk_passes_its_tests() {
    let mut node = Command::new("node");
    node.args(["--test", "--test-reporter=tap"])
        .arg(policy_dir().join("sdk-js"));
    assert_tests_ran(node, |output| number_after(output, "# tests "));
}

#[test]
fn the_python_sdk_passes_its_tests_against_the_generated_bindings() {
    let sdk = policy_dir().join("sdk-python");
    let bindings = target_dir().join("guest-tools/python-bindings");
    let found = bindings.display();
    assert!(
        bindings.is_dir(),
        "no {found}: run `policy/build-guests` first"
    );
    let path = std::env::join_paths([&sdk, &bindings]).unwrap();
    let mut python = Command::new("python3");
    python
        .args(["-m", "unittest", "test_creditgate_policy"])
        .current_dir(&sdk)
        .env("PYTHONPATH", path)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    assert_tests_ran(python, |output| number_after(output, "Ran "));
}
