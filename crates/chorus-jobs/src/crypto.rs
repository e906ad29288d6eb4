//! Credentials: sealed with AES-256-GCM under a key only the server (and the operator's
//! `chorus jobs encrypt`) holds, bound to the user they belong to and to what they are
//! for.
//!
//! Format, version 1: `v1.` followed by `base64(nonce(12) || ciphertext || tag(16))`,
//! standard alphabet with padding. The associated data is the purpose (for jobs,
//! [`JOB_CREDENTIALS`]) followed by the owner's user id (its 16 bytes): a value opens
//! only for the user it was sealed for and only for its purpose, so a user who copies
//! another's value into their own job gets an error, not the plaintext. Values without
//! the `v1.` prefix come from before owners were bound (plain base64) and are refused.
//! The key is 32 bytes, written as base64 or as 64 hex digits.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chorus_core::UserId;

/// The purpose of jobs' credentials, bound into every value sealed for a job.
pub const JOB_CREDENTIALS: &str = "chorus job credentials v1";

/// Largest plaintext sealed. Sealed, it is about 4/3 as long, and travels in the
/// `POST /jobs` body and on the requests topic with every job that uses it.
pub const MAX_PLAINTEXT_BYTES: usize = 16 * 1024;

/// What starts every value of the current format.
const PREFIX: &str = "v1.";

/// Bytes of the nonce that starts every sealed value.
const NONCE: usize = 12;

/// Bytes of the tag that ends it.
const TAG: usize = 16;

/// Why a key or a value could not be used. The messages are shown to the job's owner:
/// they say what to do, never whose a value is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The key is not 32 bytes of base64 or hex.
    #[error("the key must be 32 bytes, as base64 or 64 hex digits")]
    BadKey,
    /// The plaintext is over [`MAX_PLAINTEXT_BYTES`].
    #[error("credentials are at most {MAX_PLAINTEXT_BYTES} bytes")]
    TooLarge,
    /// Plain base64 without a version: sealed before values were bound to their owner.
    #[error(
        "the credentials are in the old unversioned format, which is no longer accepted: seal them again (POST /api/v1/jobs/credentials)"
    )]
    OldFormat,
    /// Not `v1.` followed by base64 long enough to hold a nonce and a tag.
    #[error("the credentials are not a sealed value (v1.<base64>)")]
    Malformed,
    /// Sealed with another key, for another user or purpose, or altered.
    #[error(
        "the credentials were not sealed for this job's owner by this server: seal them with POST /api/v1/jobs/credentials"
    )]
    DoesNotOpen,
}

/// The server's credentials key. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Key(Aes256Gcm);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// Parses a key written as 64 hex digits or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| CryptoError::BadKey)?
        } else {
            STANDARD.decode(text).map_err(|_| CryptoError::BadKey)?
        };
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self(cipher))
    }

    /// Seals `plaintext` for `owner` and `purpose`, with a random nonce.
    pub fn seal(
        &self,
        purpose: &str,
        owner: UserId,
        plaintext: &[u8],
    ) -> Result<String, CryptoError> {
        if plaintext.len() > MAX_PLAINTEXT_BYTES {
            return Err(CryptoError::TooLarge);
        }
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(purpose, owner);
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM seals any plaintext under 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Opens a value [`Key::seal`] made for `owner` and `purpose`.
    pub fn open(&self, purpose: &str, owner: UserId, value: &str) -> Result<Vec<u8>, CryptoError> {
        let bytes = decode(value)?;
        let (nonce, sealed) = bytes.split_at(NONCE);
        let aad = associated_data(purpose, owner);
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::DoesNotOpen)
    }
}

/// Checks that `value` has the shape of a sealed value of the current format, without
/// the key: what the gateway can check before queueing a job.
pub fn check_sealed(value: &str) -> Result<(), CryptoError> {
    decode(value).map(|_| ())
}

/// The bytes of a value of the current format: nonce, ciphertext, tag.
fn decode(value: &str) -> Result<Vec<u8>, CryptoError> {
    let value = value.trim();
    let Some(body) = value.strip_prefix(PREFIX) else {
        // `.` is not in the base64 alphabet: an unprefixed value that decodes to enough
        // bytes is one of the old format.
        let old = STANDARD.decode(value).is_ok_and(|b| b.len() >= NONCE + TAG);
        return Err(if old {
            CryptoError::OldFormat
        } else {
            CryptoError::Malformed
        });
    };
    match STANDARD.decode(body) {
        // No longer than a sealed plaintext of the largest size: the gateway refuses
        // what could never open rather than queue it.
        Ok(bytes) if (NONCE + TAG..=NONCE + MAX_PLAINTEXT_BYTES + TAG).contains(&bytes.len()) => {
            Ok(bytes)
        }
        _ => Err(CryptoError::Malformed),
    }
}

/// The purpose, then the owner's id: the id has a fixed length, so no two (purpose,
/// owner) pairs give the same bytes.
fn associated_data(purpose: &str, owner: UserId) -> Vec<u8> {
    let mut aad = purpose.as_bytes().to_vec();
    aad.extend_from_slice(owner.0.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn key() -> Key {
        Key::parse(HEX).unwrap()
    }

    #[test]
    fn a_value_opens_for_its_owner_and_purpose() {
        let ada = UserId::new();
        let sealed = key().seal(JOB_CREDENTIALS, ada, b"s3cret").unwrap();
        assert!(sealed.starts_with("v1."));
        assert_eq!(check_sealed(&sealed), Ok(()));
        assert_eq!(
            key().open(JOB_CREDENTIALS, ada, &sealed).unwrap(),
            b"s3cret"
        );
        assert_ne!(
            key().seal(JOB_CREDENTIALS, ada, b"s3cret").unwrap(),
            sealed,
            "fresh nonce every time"
        );
    }

    #[test]
    fn a_value_sealed_for_one_user_or_purpose_opens_for_no_other() {
        let (ada, bob) = (UserId::new(), UserId::new());
        let for_ada = key().seal(JOB_CREDENTIALS, ada, b"s3cret").unwrap();
        let for_else = key()
            .seal("chorus something else v1", ada, b"s3cret")
            .unwrap();
        for (owner, sealed) in [(bob, &for_ada), (ada, &for_else)] {
            let opened = key().open(JOB_CREDENTIALS, owner, sealed);
            assert_eq!(opened, Err(CryptoError::DoesNotOpen));
        }
    }

    #[test]
    fn altered_values_and_other_keys_do_not_open() {
        let ada = UserId::new();
        let sealed = key().seal(JOB_CREDENTIALS, ada, b"s3cret").unwrap();
        let mut bytes = STANDARD.decode(&sealed[PREFIX.len()..]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = format!("{PREFIX}{}", STANDARD.encode(bytes));
        let other = Key::parse(&STANDARD.encode([7u8; 32])).unwrap();
        for (key, value) in [(key(), &altered), (other, &sealed)] {
            let opened = key.open(JOB_CREDENTIALS, ada, value);
            assert_eq!(opened, Err(CryptoError::DoesNotOpen));
        }
    }

    #[test]
    fn old_unversioned_and_malformed_values_are_refused_by_name() {
        let ada = UserId::new();
        // The old format: base64(nonce || ciphertext || tag), no associated data.
        let old = STANDARD.encode([0u8; NONCE + TAG + 6]);
        assert_eq!(check_sealed(&old), Err(CryptoError::OldFormat));
        assert_eq!(
            key().open(JOB_CREDENTIALS, ada, &old),
            Err(CryptoError::OldFormat)
        );
        let too_long = format!(
            "{PREFIX}{}",
            STANDARD.encode(vec![0u8; NONCE + MAX_PLAINTEXT_BYTES + TAG + 1])
        );
        for bad in [
            "not base64!",
            "v1.not base64!",
            "v1.AAAA",
            "v2.AAAA",
            "",
            &too_long,
        ] {
            assert_eq!(check_sealed(bad), Err(CryptoError::Malformed), "{bad:.20}");
        }
    }

    #[test]
    fn plaintexts_over_the_limit_are_not_sealed() {
        let ada = UserId::new();
        let most = vec![b'x'; MAX_PLAINTEXT_BYTES];
        assert!(key().seal(JOB_CREDENTIALS, ada, &most).is_ok());
        let over = vec![b'x'; MAX_PLAINTEXT_BYTES + 1];
        assert_eq!(
            key().seal(JOB_CREDENTIALS, ada, &over),
            Err(CryptoError::TooLarge)
        );
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        let ada = UserId::new();
        let b64 = STANDARD.encode((0u8..32).collect::<Vec<_>>());
        let a = Key::parse(HEX).unwrap();
        let b = Key::parse(&b64).unwrap();
        let sealed = a.seal(JOB_CREDENTIALS, ada, b"x").unwrap();
        assert_eq!(b.open(JOB_CREDENTIALS, ada, &sealed).unwrap(), b"x");
        assert_eq!(Key::parse("abcd").unwrap_err(), CryptoError::BadKey);
        assert_eq!(
            Key::parse(&STANDARD.encode([1u8; 16])).unwrap_err(),
            CryptoError::BadKey
        );
        assert!(!format!("{a:?}").contains("00"));
    }
}
