//! The `creditgate-signature` header of a delivery: `t=MS,v1=HEX`, where HEX is the
//! HMAC-SHA256 under the webhook's secret of `MS.BODY` (the send time in ms since the
//! epoch, a dot, the body's bytes). A receiver recomputes it, compares in constant
//! time, and refuses a time too far from its clock (a replayed delivery).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header naming the signature.
pub const SIGNATURE_HEADER: &str = "creditgate-signature";
/// The header naming the event's id, for deduplication.
pub const EVENT_ID_HEADER: &str = "creditgate-event-id";

fn mac(secret: &[u8], at_ms: u64, body: &[u8]) -> Result<HmacSha256, String> {
    // HMAC takes a key of any length: this refuses none.
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|error| error.to_string())?;
    mac.update(at_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// The header's value for `body` sent at `at_ms`.
pub fn signature(secret: &[u8], at_ms: u64, body: &[u8]) -> Result<String, String> {
    let digest = mac(secret, at_ms, body)?.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("t={at_ms},v1={hex}"))
}

/// Checks a header's value against `body`: a well-formed header, a time within
/// `tolerance_ms` of `now_ms`, and the right MAC.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_ms: u64,
    tolerance_ms: u64,
) -> Result<(), String> {
    let mut at_ms = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => at_ms = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(at_ms), Some(v1)) = (at_ms, v1) else {
        return Err(format!("'{header}' is not t=MS,v1=HEX"));
    };
    if now_ms.abs_diff(at_ms) > tolerance_ms {
        return Err(format!(
            "signed at {at_ms} ms, {} ms from now: more than {tolerance_ms}",
            now_ms.abs_diff(at_ms)
        ));
    }
    let bytes = (0..v1.len())
        .step_by(2)
        .map(|at| {
            v1.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|bytes| v1.len() == 2 * bytes.len())
        .ok_or_else(|| format!("v1 '{v1}' is not hex"))?;
    mac(secret, at_ms, body)?
        .verify_slice(&bytes)
        .map_err(|_| "the signature does not match the body".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_is_refused() {
        let header = signature(b"0123456789abcdef", 1_000, b"{\"id\":1}").unwrap();
        assert!(header.starts_with("t=1000,v1="), "{header}");
        assert_eq!(
            verify(b"0123456789abcdef", &header, b"{\"id\":1}", 1_500, 1_000),
            Ok(())
        );
        for (secret, body, now) in [
            (&b"0123456789abcdeX"[..], &b"{\"id\":1}"[..], 1_500),
            (&b"0123456789abcdef"[..], &b"{\"id\":2}"[..], 1_500),
            (&b"0123456789abcdef"[..], &b"{\"id\":1}"[..], 5_000),
        ] {
            assert!(verify(secret, &header, body, now, 1_000).is_err());
        }
        let forged = header.replace("t=1000", "t=1001");
        assert!(verify(b"0123456789abcdef", &forged, b"{\"id\":1}", 1_500, 1_000).is_err());
        assert!(verify(b"k", "v1=zz", b"", 0, 0).is_err());
    }
}
