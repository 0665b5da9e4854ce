//! Signed policy modules (docs/policy-authors.md, section 6).
//!
//! A signature is ed25519 over the 32 bytes of the module's sha256 ([`PolicyDigest`]).
//! Keys and signatures are written as text, one line of lowercase hex of the raw bytes:
//! a secret key is its 32-byte seed (64 hex digits), a public key its 32 bytes (64), a
//! signature its 64 bytes (128). Reading ignores surrounding whitespace and case.
//!
//! [`TrustedKeys::verify`] is the one check: a meter with trusted keys makes a module
//! active (or its shadow) only once it passed, before anything compiles the module.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::PolicyDigest;
use crate::error::MeterError;

/// A key file or signature that does not read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The public keys whose signatures a meter accepts; none: modules need no signature.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Reads public keys from their text (64 hex digits each).
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        texts
            .into_iter()
            .map(|text| {
                let bytes = unhex::<32>(text).ok_or_else(|| {
                    KeyError("a public key is 64 hex digits (32 bytes) on one line".to_owned())
                })?;
                VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| KeyError("not an ed25519 public key".to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether no key is trusted (every module activates unsigned).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Accepts `module` when no key is trusted, or when `signature` (text) is a valid
    /// signature of its sha256 by one of the trusted keys. Refuses with
    /// [`MeterError::SignatureRequired`] when none is given, and with
    /// [`MeterError::SignatureInvalid`] when it does not read as one, does not match
    /// the bytes, or is by a key not trusted.
    pub fn verify(&self, module: &[u8], signature: Option<&str>) -> Result<(), MeterError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let digest = PolicyDigest::of(module);
        let Some(text) = signature else {
            return Err(MeterError::SignatureRequired(digest.to_string()));
        };
        let invalid = |why: &str| MeterError::SignatureInvalid {
            digest: digest.to_string(),
            why: why.to_owned(),
        };
        let signature = unhex::<64>(text)
            .map(|bytes| Signature::from_bytes(&bytes))
            .ok_or_else(|| invalid("a signature is 128 hex digits (64 bytes)"))?;
        let message = digest.bytes();
        if self
            .0
            .iter()
            .any(|key| key.verify_strict(&message, &signature).is_ok())
        {
            Ok(())
        } else {
            Err(invalid(
                "it is not a signature of these bytes by a trusted key",
            ))
        }
    }
}

/// A secret key that signs modules (`creditgate policy keygen`, `policy sign`).
pub struct ModuleSigner(SigningKey);

impl ModuleSigner {
    /// A new key from the operating system's random bytes.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|error| KeyError(format!("no random bytes from the OS: {error}")))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Reads a secret key from its text (64 hex digits).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        unhex::<32>(text)
            .map(|seed| Self(SigningKey::from_bytes(&seed)))
            .ok_or_else(|| KeyError("a secret key is 64 hex digits (32 bytes) on one line".into()))
    }

    /// The secret key's text.
    pub fn secret_text(&self) -> String {
        hex(self.0.as_bytes())
    }

    /// The public key's text, for `serve --trusted-key`.
    pub fn public_text(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }

    /// The signature's text of `module` (of its sha256).
    pub fn sign(&self, module: &[u8]) -> String {
        hex(&self.0.sign(&PolicyDigest::of(module).bytes()).to_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `N` bytes from `2 * N` hex digits (either case), whitespace around them ignored.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * index..2 * index + 2)?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_bytes_and_a_trusted_key() {
        let signer = ModuleSigner::generate().unwrap();
        let other = ModuleSigner::generate().unwrap();
        let trusted = TrustedKeys::parse([signer.public_text().as_str()]).unwrap();
        let module = b"\0asm module".to_vec();
        let signature = signer.sign(&module);
        assert_eq!(signature.len(), 128);
        assert_eq!(trusted.verify(&module, Some(&signature)), Ok(()));
        assert_eq!(
            trusted.verify(&module, Some(&format!(" {}\n", signature.to_uppercase()))),
            Ok(())
        );
        let code = |result: Result<(), MeterError>| result.unwrap_err().code();
        assert_eq!(code(trusted.verify(&module, None)), "signature_required");
        let mut tampered = module.clone();
        tampered[0] ^= 1;
        for refused in [
            trusted.verify(&tampered, Some(&signature)),
            trusted.verify(&module, Some(&other.sign(&module))),
            trusted.verify(&module, Some("zz")),
            trusted.verify(&module, Some(&signature[2..])),
        ] {
            assert_eq!(code(refused), "signature_invalid");
        }
        assert_eq!(TrustedKeys::default().verify(&module, None), Ok(()));
        let reread = ModuleSigner::parse(&format!("{}\n", signer.secret_text())).unwrap();
        assert_eq!(reread.public_text(), signer.public_text());
        assert!(TrustedKeys::parse(["00"]).is_err());
    }
}
