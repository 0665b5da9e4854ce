//! `creditgate policy`: manage the active policy of a running sidecar.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
    /// The sidecar's base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8787")]
    server: String,
    /// The sidecar's admin token.
    #[arg(
        long,
        global = true,
        env = "CREDITGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Upload a component; the sidecar checks it and, if it passes, switches to it.
    Activate {
        file: PathBuf,
        /// Activate only if the bytes the sidecar receives have this sha256 (64 hex
        /// digits), the digest of the module you reviewed: sent as `If-Match`.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
    /// Return to the policy that was active before the current one.
    Rollback,
    /// Show the active policy and the history.
    Show,
}

pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    let url = format!("{}/v1/policy", args.server.trim_end_matches('/'));
    let authorize = |request: ureq::Request| match &args.admin_token {
        Some(token) => request.set("authorization", &format!("Bearer {token}")),
        None => request,
    };
    let result = match &args.command {
        PolicyCommand::Activate { file, sha256 } => {
            let component = super::read_policy(file)?;
            let request = authorize(ureq::put(&url));
            match sha256 {
                Some(hex) => request.set("if-match", &format!("\"sha256:{hex}\"")),
                None => request,
            }
            .send_bytes(&component)
        }
        PolicyCommand::Rollback => authorize(ureq::post(&format!("{url}/rollback"))).call(),
        PolicyCommand::Show => ureq::get(&url).call(),
    };
    match result {
        Ok(response) => {
            let body: serde_json::Value = response
                .into_json()
                .context("the sidecar answered something that is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(())
        }
        Err(ureq::Error::Status(status, response)) => {
            let body: serde_json::Value = response.into_json().unwrap_or_default();
            anyhow::bail!(
                "the sidecar refused ({status} {}): {}",
                body["error"]["code"].as_str().unwrap_or("?"),
                body["error"]["message"].as_str().unwrap_or("")
            )
        }
        Err(error) => Err(error).with_context(|| format!("cannot reach {url}")),
    }
}
