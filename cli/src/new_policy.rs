//! `creditgate new-policy NAME`: a new policy crate, ready to build and check.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct NewPolicyArgs {
    /// The policy's name: lowercase letters, digits and dashes, starting with a letter.
    name: String,
    /// Where to create the crate (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The creditgate-policy-sdk crate to depend on (default: the one this binary was built with).
    #[arg(long)]
    sdk: Option<PathBuf>,
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
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/sdk"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "cannot find the policy SDK at {}; pass --sdk PATH",
            sdk.display()
        )
    })?;
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", lib_rs(name, &type_name)),
        (
            &format!("cases/{name}/one-credit-per-call.json") as &str,
            case_json(name),
        ),
    ];
    for (path, contents) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let module = format!(
        "{}/target/wasm32-wasip2/release/{}.wasm",
        dir.display(),
        name.replace('-', "_")
    );
    println!("created the policy crate {}", dir.display());
    println!("build and check it:");
    println!(
        "  cargo build --release --target wasm32-wasip2 --manifest-path {}/Cargo.toml",
        dir.display()
    );
    println!(
        "  creditgate check {module} --cases {}/cases",
        dir.display()
    );
    Ok(())
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
