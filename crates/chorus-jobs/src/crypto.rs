//! Credentials: AES-256-GCM with a key only the server (and `chorus jobs encrypt`)
//! holds.
//!
//! Format of an encrypted value: `base64(nonce(12) || ciphertext || tag(16))`, standard
//! alphabet with padding. The key is 32 bytes, written as base64 or as 64 hex digits.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Bytes of the nonce that starts every encrypted value.
const NONCE: usize = 12;

/// Why a key or a value could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The key is not 32 bytes of base64 or hex.
    #[error("the key must be 32 bytes, as base64 or 64 hex digits")]
    BadKey,
    /// The value is not base64, is too short, or does not decrypt with this key.
    #[error("the credentials do not decrypt with the server's key")]
    BadCiphertext,
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

    /// Encrypts `plaintext` with a random nonce.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(&nonce, plaintext)
            .expect("AES-GCM encrypts any plaintext under 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// Decrypts a value made by [`Key::encrypt`] (or any client following the format).
    pub fn decrypt(&self, value: &str) -> Result<Vec<u8>, CryptoError> {
        let bytes = STANDARD
            .decode(value.trim())
            .map_err(|_| CryptoError::BadCiphertext)?;
        if bytes.len() < NONCE + 16 {
            return Err(CryptoError::BadCiphertext);
        }
        let (nonce, sealed) = bytes.split_at(NONCE);
        self.0
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| CryptoError::BadCiphertext)
    }
}

/// Whether `value` has the shape of an encrypted value (base64, long enough), without
/// the key: what the gateway can check before queueing a job.
pub fn looks_encrypted(value: &str) -> bool {
    STANDARD
        .decode(value.trim())
        .is_ok_and(|b| b.len() >= NONCE + 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn round_trips_and_rejects_tampering() {
        let key = Key::parse(HEX).unwrap();
        let sealed = key.encrypt(b"s3cret");
        assert!(looks_encrypted(&sealed));
        assert_eq!(key.decrypt(&sealed).unwrap(), b"s3cret");
        let mut bytes = STANDARD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            key.decrypt(&STANDARD.encode(bytes)),
            Err(CryptoError::BadCiphertext)
        );
        let other = Key::parse(&STANDARD.encode([7u8; 32])).unwrap();
        assert_eq!(other.decrypt(&sealed), Err(CryptoError::BadCiphertext));
        assert_ne!(key.encrypt(b"s3cret"), sealed, "fresh nonce every time");
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        let b64 = STANDARD.encode((0u8..32).collect::<Vec<_>>());
        let a = Key::parse(HEX).unwrap();
        let b = Key::parse(&b64).unwrap();
        assert_eq!(b.decrypt(&a.encrypt(b"x")).unwrap(), b"x");
        assert_eq!(Key::parse("abcd").unwrap_err(), CryptoError::BadKey);
        assert_eq!(
            Key::parse(&STANDARD.encode([1u8; 16])).unwrap_err(),
            CryptoError::BadKey
        );
        assert!(!format!("{a:?}").contains("00"));
    }
}
