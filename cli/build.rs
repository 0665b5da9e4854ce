//! Embeds the policy fixtures that conformance cases name in `swap_policy` steps, so
//! that `creditgate check` needs nothing beside the module under check (docs/
//! policy-authors.md, part 3). They are components of this repository's
//! `tests/fixtures/`, built by `cargo policies`, which the README's commands run before
//! the host.

use std::path::{Path, PathBuf};

/// The modules a case may swap to, by name.
const FIXTURES: [&str; 1] = ["misbehaving"];

fn main() -> Result<(), String> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let components = target.join("wasm32-wasip2/release");
    let mut code = String::from(
        "/// The fixtures a `swap_policy` step may name, with their component bytes.\n\
         pub const FIXTURES: &[(&str, &[u8])] = &[\n",
    );
    for name in FIXTURES {
        let path = components.join(format!("{name}.wasm"));
        println!("cargo::rerun-if-changed={}", path.display());
        let path = path.canonicalize().map_err(|_| {
            format!(
                "{} is missing: build the policy components first with `cargo policies` \
                 (the README's commands do)",
                path.display()
            )
        })?;
        code.push_str(&format!("    ({name:?}, include_bytes!({path:?})),\n"));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets no OUT_DIR")?);
    std::fs::write(out.join("fixtures.rs"), code)
        .map_err(|error| format!("cannot write fixtures.rs: {error}"))
}
