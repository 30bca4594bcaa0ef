//! Provider signatures: HMAC-SHA1 and HMAC-SHA256 in hex or base64, always compared in
//! constant time (`Mac::verify_slice`), so a forged signature learns nothing from timing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// HMAC-SHA1 of `message` under `key`.
pub fn hmac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `signature_hex` (case-insensitive, optionally `sha256=`-prefixed by the caller's
/// choice) is the HMAC-SHA256 of the message parts.
pub fn verify_sha256_hex(key: &[u8], parts: &[&[u8]], signature_hex: &str) -> bool {
    let Ok(expected) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    verify(Hmac::<Sha256>::new_from_slice(key), parts, &expected)
}

/// Whether `signature_base64` is the HMAC-SHA256 of the message parts.
pub fn verify_sha256_base64(key: &[u8], parts: &[&[u8]], signature_base64: &str) -> bool {
    let Ok(expected) = STANDARD.decode(signature_base64.trim()) else {
        return false;
    };
    verify(Hmac::<Sha256>::new_from_slice(key), parts, &expected)
}

/// Whether `signature_base64` is the HMAC-SHA1 of the message parts.
pub fn verify_sha1_base64(key: &[u8], parts: &[&[u8]], signature_base64: &str) -> bool {
    let Ok(expected) = STANDARD.decode(signature_base64.trim()) else {
        return false;
    };
    verify(Hmac::<Sha1>::new_from_slice(key), parts, &expected)
}

/// Whether `signature_hex` is the HMAC-SHA1 of the message parts.
pub fn verify_sha1_hex(key: &[u8], parts: &[&[u8]], signature_hex: &str) -> bool {
    let Ok(expected) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    verify(Hmac::<Sha1>::new_from_slice(key), parts, &expected)
}

fn verify<M: Mac>(
    mac: Result<M, hmac::digest::InvalidLength>,
    parts: &[&[u8]],
    expected: &[u8],
) -> bool {
    let Ok(mut mac) = mac else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(expected).is_ok()
}

/// Whether a shared token the provider sent (a verify token, a secret header) is `expected`,
/// compared in constant time: a forged token learns nothing from how long the refusal took,
/// not even its length: both sides are first MACed to 32 bytes, and the MACs compared by
/// `Mac::verify_slice`.
pub fn verify_token(expected: &str, provided: &str) -> bool {
    const KEY: &[u8] = b"switchboard verify_token";
    let expected = hmac_sha256(KEY, expected.as_bytes());
    verify(
        Hmac::<Sha256>::new_from_slice(KEY),
        &[provided.as_bytes()],
        &expected,
    )
}

/// Base64 (standard alphabet, padded).
pub fn base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(verify_token("s3cret", "s3cret"));
        assert!(!verify_token("s3cret", "s3creT"));
        assert!(!verify_token("s3cret", "s3cret "));
        assert!(!verify_token("s3cret", ""));
        assert!(verify_token("", ""));
    }

    // RFC 4231 test case 2 (HMAC-SHA256) and RFC 2202 test case 2 (HMAC-SHA1).
    #[test]
    fn rfc_vectors() {
        let sha256 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            sha256
        );
        assert!(verify_sha256_hex(
            b"Jefe",
            &[b"what do ya ", b"want for nothing?"],
            sha256
        ));
        assert!(!verify_sha256_hex(
            b"Jefe",
            &[b"what do ya want for nothing!"],
            sha256
        ));
        assert!(!verify_sha256_hex(b"Jefe", &[b"x"], "not hex"));
        let sha1 = "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79";
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            sha1
        );
        assert!(verify_sha1_hex(
            b"Jefe",
            &[b"what do ya want for nothing?"],
            sha1
        ));
        let b64 = base64(&hmac_sha1(b"Jefe", b"what do ya want for nothing?"));
        assert!(verify_sha1_base64(
            b"Jefe",
            &[b"what do ya want for nothing?"],
            &b64
        ));
        assert!(!verify_sha1_base64(
            b"jefe",
            &[b"what do ya want for nothing?"],
            &b64
        ));
    }
}
