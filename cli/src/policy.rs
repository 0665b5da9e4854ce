//! `creditgate policy`: manage the active policy of a running sidecar, and sign modules
//! for a sidecar that trusts signing keys.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use creditgate::policy::PolicyDigest;
use creditgate::policy::signing::ModuleSigner;

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
    /// Upload a component; the sidecar checks it and, if it passes, switches to it. A
    /// `FILE.sig` beside it (`policy sign`) is sent as its `creditgate-signature`.
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
    /// Write a new signing key: PREFIX.key (secret, mode 0600) and PREFIX.pub (for
    /// `serve --trusted-key`), each one line of hex. Refuses to overwrite either.
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Sign a component with a secret key (`policy keygen`): writes FILE.sig beside it,
    /// the ed25519 signature of the module's sha256 as one line of hex.
    Sign {
        file: PathBuf,
        #[arg(long, value_name = "KEY_FILE")]
        key: PathBuf,
    },
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
            let mut request = authorize(ureq::put(&url));
            if let Some(hex) = sha256 {
                request = request.set("if-match", &format!("\"sha256:{hex}\""));
            }
            if let Some(signature) = read_signature(file)? {
                request = request.set("creditgate-signature", &signature);
            }
            request.send_bytes(&component)
        }
        PolicyCommand::Rollback => authorize(ureq::post(&format!("{url}/rollback"))).call(),
        PolicyCommand::Show => ureq::get(&url).call(),
        PolicyCommand::Keygen { out } => return keygen(out),
        PolicyCommand::Sign { file, key } => return sign(file, key),
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

/// Where a module's signature lives: `FILE.sig` beside `FILE`.
pub fn signature_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The signature beside a module (`FILE.sig`, its first line), if there is one.
pub fn read_signature(module: &Path) -> anyhow::Result<Option<String>> {
    let path = signature_path(module);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => {
            Err(error).with_context(|| format!("cannot read the signature {}", path.display()))
        }
    }
}

/// `policy keygen --out PREFIX`: PREFIX.key (secret, 0600) and PREFIX.pub.
fn keygen(prefix: &Path) -> anyhow::Result<()> {
    let signer = ModuleSigner::generate()?;
    let with = |extension: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(extension);
        PathBuf::from(name)
    };
    let (secret, public) = (with(".key"), with(".pub"));
    for path in [&secret, &public] {
        anyhow::ensure!(
            !path.exists(),
            "{} exists already; choose another --out",
            path.display()
        );
    }
    write_new(&secret, &signer.secret_text(), 0o600)?;
    write_new(&public, &signer.public_text(), 0o644)?;
    println!(
        "wrote {} (secret: keep it private) and {} (public: serve --trusted-key {}): {}",
        secret.display(),
        public.display(),
        public.display(),
        signer.public_text()
    );
    Ok(())
}

/// Creates `path` (never overwriting) with `line` and a newline, with this file mode.
fn write_new(path: &Path, line: &str, mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{line}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `policy sign FILE --key KEY_FILE`: writes FILE.sig.
fn sign(file: &Path, key: &Path) -> anyhow::Result<()> {
    let component = super::read_policy(file)?;
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("cannot read the secret key {}", key.display()))?;
    let signer = ModuleSigner::parse(&text)
        .with_context(|| format!("{} is not a secret key", key.display()))?;
    let path = signature_path(file);
    std::fs::write(&path, format!("{}\n", signer.sign(&component)))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {}: sha256 {} signed by {}",
        path.display(),
        PolicyDigest::of(&component),
        signer.public_text()
    );
    Ok(())
}
