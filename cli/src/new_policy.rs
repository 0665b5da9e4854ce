//! `creditgate new-policy NAME [--lang rust|python|javascript]`: a new policy project
//! with one case, ready to build and check. The rules are the same in every language
//! (a `call` costs one credit, charged at authorize), and so is the case.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct NewPolicyArgs {
    /// The policy's name: lowercase letters, digits and dashes, starting with a letter.
    name: String,
    /// The language the rules are written in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Where to create the project (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The policy SDK to use: the Rust crate, the Python module's or the JavaScript
    /// module's folder (default: the repository's, `policy/sdk*`).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    /// A crate built for wasm32-wasip2 by cargo.
    Rust,
    /// A module `app.py` built by componentize-py (`policy/build-guests DIR`).
    Python,
    /// A module `policy.js` built by componentize-qjs (`policy/build-guests DIR`).
    Javascript,
}

impl Lang {
    /// The SDK's folder in this repository.
    fn sdk_dir(self) -> &'static str {
        match self {
            Lang::Rust => "policy/sdk",
            Lang::Python => "policy/sdk-python",
            Lang::Javascript => "policy/sdk-js",
        }
    }
}

pub fn run(args: NewPolicyArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        valid,
        "'{name}' is not a valid policy name: use lowercase letters, digits and dashes, starting with a letter"
    );
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let sdk = match args.sdk {
        Some(sdk) => sdk,
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(args.lang.sdk_dir()),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "cannot find the policy SDK at {}; pass --sdk PATH",
            sdk.display()
        )
    })?;
    let module_name = name.replace('-', "_");
    let case = (
        format!("cases/{name}/one-credit-per-call.json"),
        case_json(name),
    );
    let (files, module, build) = match args.lang {
        Lang::Rust => (
            vec![
                ("Cargo.toml".to_owned(), cargo_toml(name, &sdk)),
                ("src/lib.rs".to_owned(), lib_rs(name, &type_name(name))),
                case,
            ],
            format!(
                "{}/target/wasm32-wasip2/release/{module_name}.wasm",
                dir.display()
            ),
            format!(
                "cargo build --release --target wasm32-wasip2 --manifest-path {}/Cargo.toml",
                dir.display()
            ),
        ),
        Lang::Python => (
            vec![("app.py".to_owned(), app_py(name)), case],
            format!("{}/{module_name}.wasm", dir.display()),
            format!("policy/build-guests {}", dir.display()),
        ),
        Lang::Javascript => (
            vec![("policy.js".to_owned(), policy_js(name, &sdk)), case],
            format!("{}/{module_name}.wasm", dir.display()),
            format!("policy/build-guests {}", dir.display()),
        ),
    };
    for (path, contents) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created the policy {}", dir.display());
    println!("build and check it (from the repository's root):");
    println!("  {build}");
    println!(
        "  creditgate check {module} --cases {}/cases",
        dir.display()
    );
    Ok(())
}

/// `my-policy` → `MyPolicy`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the policy component (wasm32-wasip2); rlib: native unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
creditgate-policy-sdk = {{ path = "{sdk}" }}

[profile.release]
overflow-checks = true
strip = "debuginfo"

# A workspace of its own, wherever it is created.
[workspace]
"#,
        sdk = sdk.display().to_string().replace('\\', "/")
    )
}

fn lib_rs(name: &str, type_name: &str) -> String {
    format!(
        r#"//! {name}: a creditgate billing policy. Change the rules below, rebuild, check.

use creditgate_policy_sdk::{{
    Admission, Admitted, BalanceAmount, BalanceState, Description, JsonObject, Ledger, Outcome,
    Policy, Request, Settlement, Verdict, spendable_of,
}};

/// The balance this policy spends.
pub const BALANCE: &str = "default";
/// The price of one call, in credits.
pub const CREDITS_PER_CALL: i64 = 1;

pub struct {type_name};

creditgate_policy_sdk::export_policy!({type_name});

impl Policy for {type_name} {{
    fn describe() -> Description {{
        Description {{
            name: "{name}".to_owned(),
            version: "0.1.0".to_owned(),
            balances: vec![BALANCE.to_owned()],
            hold_ttl_ms: 60_000,
        }}
    }}

    /// `call` costs one credit, charged when it is accepted; anything else is refused.
    fn authorize(request: &Request, balances: &[BalanceState], _ledger: &dyn Ledger) -> Verdict {{
        if request.operation != "call" {{
            return Verdict::reject(400, "unknown_operation", format!("Operation '{{}}' is not metered.", request.operation));
        }}
        // What the tenant may spend: its credits, its overdraft, within its spend cap.
        let available = spendable_of(balances, BALANCE);
        if available < CREDITS_PER_CALL {{
            return Verdict::reject(402, "insufficient_credits", "No credits remaining.");
        }}
        Verdict::Admit(Admission {{
            admitted_items: u32::try_from(request.items.len()).unwrap_or(u32::MAX),
            charge: vec![BalanceAmount::new(BALANCE, CREDITS_PER_CALL)],
            meta_json: JsonObject::new()
                .int("credits_used", CREDITS_PER_CALL)
                .int("credits_remaining", available - CREDITS_PER_CALL)
                .finish(),
            ..Admission::default()
        }})
    }}

    /// Everything was charged at authorize.
    fn settle(_admitted: &Admitted, _outcome: &Outcome, _balances: &[BalanceState], _ledger: &dyn Ledger) -> Settlement {{
        Settlement::default()
    }}
}}
"#
    )
}

fn app_py(name: &str) -> String {
    format!(
        r#""""{name}: a creditgate billing policy. Change the rules below, rebuild, check.

Built with componentize-py against the contract (`wit/policy.wit`); the SDK
(`policy/sdk-python`) checks every amount before it reaches the host."""

from creditgate_policy import admit, meta, reject, settlement, spendable
from wit_world import exports
from wit_world.imports import types

BALANCE = "default"
"""The balance this policy spends."""
CREDITS_PER_CALL = 1
"""The price of one call, in credits."""


class Pricing(exports.Pricing):
    def describe(self) -> types.Description:
        return types.Description("{name}", "0.1.0", [BALANCE], 60_000)

    def authorize(self, request: types.Request, balances) -> types.Verdict:
        """`call` costs one credit, charged when it is accepted; anything else is refused."""
        if request.operation != "call":
            return reject(400, "unknown_operation", f"Operation '{{request.operation}}' is not metered.")
        # What the tenant may spend: its credits, its overdraft, within its spend cap.
        available = spendable(balances, BALANCE)
        if available < CREDITS_PER_CALL:
            return reject(402, "insufficient_credits", "No credits remaining.")
        return admit(
            len(request.items),
            charge=[(BALANCE, CREDITS_PER_CALL)],
            meta_json=meta(credits_used=CREDITS_PER_CALL, credits_remaining=available - CREDITS_PER_CALL),
        )

    def settle(self, admitted: types.Admitted, outcome: types.Outcome, balances) -> types.Settlement:
        """Everything was charged at authorize."""
        return settlement()
"#
    )
}

fn policy_js(name: &str, sdk: &Path) -> String {
    let sdk = sdk.join("creditgate-policy.js");
    let sdk = sdk.display().to_string().replace('\\', "/");
    format!(
        r#"/**
 * {name}: a creditgate billing policy. Change the rules below, rebuild, check.
 *
 * Built with componentize-qjs against the contract (`wit/policy.wit`); the SDK
 * (`policy/sdk-js`) checks every amount before it reaches the host: a JS number is exact
 * only to 2^53, and an amount it cannot carry exactly throws (the call fails closed).
 */

import {{ admit, meta, reject, settlement, spendable }} from "{sdk}";

/** The balance this policy spends. */
const BALANCE = "default";
/** The price of one call, in credits. */
const CREDITS_PER_CALL = 1;

export const pricing = {{
  describe() {{
    return {{ name: "{name}", version: "0.1.0", balances: [BALANCE], holdTtlMs: 60000 }};
  }},

  /** `call` costs one credit, charged when it is accepted; anything else is refused. */
  authorize(request, balances) {{
    if (request.operation !== "call") {{
      return reject(400, "unknown_operation", `Operation '${{request.operation}}' is not metered.`);
    }}
    // What the tenant may spend: its credits, its overdraft, within its spend cap.
    const available = spendable(balances, BALANCE);
    if (available < CREDITS_PER_CALL) {{
      return reject(402, "insufficient_credits", "No credits remaining.");
    }}
    return admit(request.items.length, {{
      charge: [[BALANCE, CREDITS_PER_CALL]],
      meta: meta({{ credits_used: CREDITS_PER_CALL, credits_remaining: available - CREDITS_PER_CALL }}),
    }});
  }},

  /** Everything was charged at authorize. */
  settle(admitted, outcome, balances) {{
    return settlement();
  }},
}};
"#
    )
}

fn case_json(name: &str) -> String {
    format!(
        r#"{{
  "description": "A call costs one credit, charged at authorize; with no credits left the next call is refused with 402.",
  "profile": "{name}",
  "rule": "a call costs one credit; none left: 402",
  "steps": [
    {{
      "grant": {{ "tenant": "acme", "balance": "default", "amount": 1 }},
      "expect": {{
        "balances": {{ "acme": {{ "default": 1 }} }},
        "journal": [{{ "tenant": "acme", "balance": "default", "kind": "grant", "amount": 1 }}]
      }}
    }},
    {{
      "authorize": {{ "transaction_id": "t1", "tenant": "acme", "operation": "call" }},
      "expect": {{
        "admitted": true,
        "charged": {{ "default": 1 }},
        "meta": {{ "credits_used": 1, "credits_remaining": 0 }},
        "balances": {{ "acme": {{ "default": 0 }} }},
        "journal": [{{ "tenant": "acme", "balance": "default", "kind": "charge", "amount": 1 }}]
      }}
    }},
    {{
      "authorize": {{ "transaction_id": "t2", "tenant": "acme", "operation": "call" }},
      "expect": {{
        "admitted": false,
        "status": 402,
        "code": "insufficient_credits",
        "balances": {{ "acme": {{ "default": 0 }} }},
        "journal": []
      }}
    }}
  ]
}}
"#
    )
}
