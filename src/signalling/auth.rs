//! The optional bearer token of `docs/contract.md` section 3:
//! `Bearer <expiry>.<hex HMAC-SHA256(secret, "<conf_id>|<src_userid>|<expiry>")>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    Expired,
    BadSignature,
}

impl TokenError {
    pub fn message(&self) -> &'static str {
        match self {
            Self::Missing => "missing Authorization: Bearer token",
            Self::Malformed => "malformed bearer token (want <expiry>.<hmac>)",
            Self::Expired => "the token has expired",
            Self::BadSignature => "the token's signature is wrong",
        }
    }
}

/// Checks `header` (the whole `Authorization` value), and its expiry
/// against unix time `now_secs` when given. Returns the token in one
/// canonical spelling (lowercase hex, no padding), so that one token
/// written two ways still counts as one.
pub fn verify(
    secret: &str,
    header: Option<&str>,
    conf_id: &str,
    userid: &str,
    now_secs: Option<u64>,
) -> Result<String, TokenError> {
    let token = header.ok_or(TokenError::Missing)?.strip_prefix("Bearer ").ok_or(TokenError::Malformed)?.trim();
    let (expiry, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let expiry_secs: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    let signature = hex::decode(signature).map_err(|_| TokenError::Malformed)?;
    let mut mac = mac(secret);
    mac.update(format!("{conf_id}|{userid}|{expiry}").as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    if now_secs.is_some_and(|now| expiry_secs <= now) {
        return Err(TokenError::Expired);
    }
    Ok(format!("{expiry_secs}.{}", hex::encode(signature)))
}

/// Makes a token; used by operators' tooling, the demo page's docs and tests.
pub fn sign(secret: &str, conf_id: &str, userid: &str, expiry_secs: u64) -> String {
    let mut mac = mac(secret);
    mac.update(format!("{conf_id}|{userid}|{expiry_secs}").as_bytes());
    format!("{expiry_secs}.{}", hex::encode(mac.finalize().into_bytes()))
}

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_valid_token_and_rejects_tampering() {
        let token = format!("Bearer {}", sign("s3cret", "conf1", "alice", 2000));
        let canonical = verify("s3cret", Some(&token), "conf1", "alice", Some(1000)).unwrap();
        assert_eq!(verify("other", Some(&token), "conf1", "alice", Some(1000)), Err(TokenError::BadSignature));
        assert_eq!(verify("s3cret", Some(&token), "conf2", "alice", Some(1000)), Err(TokenError::BadSignature));
        assert_eq!(verify("s3cret", Some(&token), "conf1", "bob", Some(1000)), Err(TokenError::BadSignature));
        assert_eq!(verify("s3cret", Some(&token), "conf1", "alice", Some(2000)), Err(TokenError::Expired));
        assert!(verify("s3cret", Some(&token), "conf1", "alice", None).is_ok(), "expiry not asked about");
        // Written another way (upper-case hex, extra space), the same token.
        let (expiry, signature) = token.trim_start_matches("Bearer ").split_once('.').unwrap();
        let respelt = format!("Bearer  {expiry}.{}", signature.to_uppercase());
        assert_eq!(verify("s3cret", Some(&respelt), "conf1", "alice", Some(1000)), Ok(canonical));
    }

    #[test]
    fn known_answer() {
        // hmac.new(b"key", b"c|u|10", hashlib.sha256).hexdigest() in Python.
        assert_eq!(sign("key", "c", "u", 10), "10.56c61ec1129e85c426ee326bce42868b4a8e6c2dde0fd654306456ddc9c71ca8");
    }

    #[test]
    fn malformed_tokens() {
        for header in [None, Some("Basic abc"), Some("Bearer abc"), Some("Bearer x.00"), Some("Bearer 10.zz")] {
            assert!(verify("k", header, "c", "u", Some(0)).is_err(), "{header:?}");
        }
    }
}
