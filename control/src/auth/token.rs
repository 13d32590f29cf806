//! Token authentication (spec §5.1) and visitor signatures (§5.3).
//!
//! frp proves knowledge of a shared secret with `md5_hex(secret ‖ decimal(timestamp))`, where the
//! timestamp is the one carried in the same message. There is no freshness window (frp accepts
//! any timestamp), so this module only computes and compares keys.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// `privilege_key` for Login / Ping / NewWorkConn: lowercase hex MD5 of `token ‖ timestamp`
/// (timestamp in ASCII decimal, as Go's `strconv.FormatInt(ts, 10)` writes it).
pub fn privilege_key(token: &str, timestamp: i64) -> String {
    let mut md5 = Md5::new();
    md5.update(token.as_bytes());
    md5.update(timestamp.to_string().as_bytes());
    hex::encode(md5.finalize())
}

/// Checks a received `privilege_key` against `token` and the message's own `timestamp`.
///
/// The comparison runs in constant time over the 32 hex characters, so a peer cannot learn
/// the key byte by byte from response timing. A key of any other length is rejected (the
/// length itself is not secret).
pub fn verify_privilege_key(token: &str, timestamp: i64, key: &str) -> bool {
    let expected = privilege_key(token, timestamp);
    expected.as_bytes().ct_eq(key.as_bytes()).into()
}

/// `sign_key` for NewVisitorConn / NatHoleVisitor: the same function as [`privilege_key`], keyed
/// with the proxy's `secretKey` (`sk`) instead of the auth token.
pub fn sign_key(secret_key: &str, timestamp: i64) -> String {
    privilege_key(secret_key, timestamp)
}

/// Constant-time check of a visitor `sign_key` (see [`verify_privilege_key`]).
pub fn verify_sign_key(secret_key: &str, timestamp: i64, key: &str) -> bool {
    verify_privilege_key(secret_key, timestamp, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: i64 = 1_700_000_000;

    #[test]
    fn privilege_key_vector() {
        assert_eq!(
            privilege_key("12345678", TS),
            "3d8aac6cc09d79da303be74c311e5808"
        );
    }

    #[test]
    fn sign_key_vector() {
        assert_eq!(sign_key("abcdefg", TS), "9e507a77ffcf3f14de1b478e8012f4fd");
    }

    #[test]
    fn verify_accepts_only_the_exact_key() {
        let key = "3d8aac6cc09d79da303be74c311e5808";
        assert!(verify_privilege_key("12345678", TS, key));
        // Other timestamp, other token, one flipped character, wrong length, uppercase hex.
        assert!(!verify_privilege_key("12345678", TS + 1, key));
        assert!(!verify_privilege_key("1234567", TS, key));
        assert!(!verify_privilege_key(
            "12345678",
            TS,
            "3d8aac6cc09d79da303be74c311e5809"
        ));
        assert!(!verify_privilege_key("12345678", TS, &key[..31]));
        assert!(!verify_privilege_key("12345678", TS, ""));
        assert!(!verify_privilege_key(
            "12345678",
            TS,
            &key.to_ascii_uppercase()
        ));
        assert!(verify_sign_key(
            "abcdefg",
            TS,
            "9e507a77ffcf3f14de1b478e8012f4fd"
        ));
    }

    #[test]
    fn empty_token_and_negative_timestamp() {
        // md5("0") and md5("-5"): the decimal form is Go's FormatInt, sign included.
        assert_eq!(privilege_key("", 0), "cfcd208495d565ef66e7dff9f98764da");
        assert_eq!(privilege_key("", -5), "47c1b025fa18ea96c33fbb6718688c0f");
    }
}
