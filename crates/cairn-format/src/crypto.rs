//! Repository keys: the master key, its Argon2id-wrapped form, and AEAD helpers.
//!
//! A repository has one random 64-byte master secret: 32 bytes of AES-256-GCM
//! data key and 32 bytes of BLAKE3 hash key. Block hashes are keyed, so an
//! encrypted repository reveals nothing about block contents through its
//! hashes. The master secret is stored wrapped (AES-256-GCM) under a key
//! derived from the password with Argon2id.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::error::{FormatError, Result};

/// Bytes added by [`Keys::seal`]: nonce plus tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// Argon2id parameters stored in the repository config.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
    /// Random salt, hex encoded.
    pub salt: String,
}

impl KdfParams {
    /// Fresh parameters with a random salt: 64 MiB, 3 passes, 2 lanes.
    pub fn generate() -> Result<Self> {
        Ok(KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 2,
            salt: hex::encode(random_bytes::<16>()?),
        })
    }

    fn derive(&self, password: &[u8]) -> Result<[u8; 32]> {
        let salt = hex::decode(&self.salt).map_err(|e| FormatError::InvalidField {
            what: "repository config",
            field: "kdf.salt",
            reason: e.to_string(),
        })?;
        // Bound the cost a hostile config could impose (4 GiB, 64 passes).
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 64 || self.parallelism > 64 {
            return Err(FormatError::InvalidField {
                what: "repository config",
                field: "kdf",
                reason: "Argon2id parameters out of range".into(),
            });
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32)).map_err(|e| {
                FormatError::InvalidField {
                    what: "repository config",
                    field: "kdf",
                    reason: e.to_string(),
                }
            })?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(password, &salt, &mut out)
            .map_err(|_| FormatError::Crypto("argon2id derivation failed"))?;
        Ok(out)
    }
}

/// Fills an array from the system's secure random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| FormatError::Crypto("random source failed"))?;
    Ok(b)
}

/// The keys a repository's data is protected with.
pub struct Keys {
    hash_key: [u8; 32],
    aead: Option<LessSafeKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("encrypted", &self.is_encrypted())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys for an unencrypted repository: only a hash key.
    pub fn plain(hash_key: [u8; 32]) -> Self {
        Keys { hash_key, aead: None }
    }

    /// Keys from a 64-byte master secret (data key ‖ hash key).
    pub fn from_master(master: &[u8; 64]) -> Result<Self> {
        let mut hash_key = [0u8; 32];
        hash_key.copy_from_slice(&master[32..]);
        let unbound = UnboundKey::new(&AES_256_GCM, &master[..32])
            .map_err(|_| FormatError::Crypto("AES-256-GCM key setup failed"))?;
        Ok(Keys {
            hash_key,
            aead: Some(LessSafeKey::new(unbound)),
        })
    }

    /// Whether block and metadata bodies are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.aead.is_some()
    }

    /// The keyed BLAKE3 hash that identifies a block's plaintext.
    pub fn hash(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.hash_key, data).as_bytes()
    }

    /// The hash key (needed to derive names from VM identifiers).
    pub fn hash_key(&self) -> &[u8; 32] {
        &self.hash_key
    }

    /// Encrypts the plaintext `buf` into `nonce ‖ ciphertext ‖ tag` (used for
    /// small metadata bodies; blocks use [`Keys::seal_framed`]).
    pub fn seal(&self, aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        buf.splice(0..0, [0u8; NONCE_LEN]);
        self.seal_framed(aad, buf, 0)
    }

    /// Encrypts in place a plaintext that `buf` holds from `start + 12` on,
    /// writing a fresh nonce into `buf[start..start + 12]` (which the caller
    /// reserved) and appending the tag: `buf[start..]` becomes
    /// `nonce ‖ ciphertext ‖ tag` without moving the data.
    pub fn seal_framed(&self, aad: &[u8], buf: &mut Vec<u8>, start: usize) -> Result<()> {
        let key = self
            .aead
            .as_ref()
            .ok_or(FormatError::Crypto("sealing without a data key"))?;
        if buf.len() < start + NONCE_LEN {
            return Err(FormatError::Crypto("no room reserved for the nonce"));
        }
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        buf[start..start + NONCE_LEN].copy_from_slice(&nonce_bytes);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut buf[start + NONCE_LEN..],
            )
            .map_err(|_| FormatError::Crypto("AES-256-GCM seal failed"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts `nonce ‖ ciphertext ‖ tag` in place and returns the plaintext slice.
    pub fn open<'a>(&self, what: &'static str, aad: &[u8], buf: &'a mut [u8]) -> Result<&'a mut [u8]> {
        let key = self.aead.as_ref().ok_or(FormatError::KeyRequired { what })?;
        if buf.len() < SEAL_OVERHEAD {
            return Err(FormatError::Truncated {
                what,
                needed: SEAL_OVERHEAD as u64,
                have: buf.len() as u64,
            });
        }
        let (nonce, rest) = buf.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| FormatError::Decrypt { what })?;
        key.open_in_place(nonce, Aad::from(aad), rest)
            .map_err(|_| FormatError::Decrypt { what })
    }
}

/// Generates a new random master secret.
pub fn generate_master() -> Result<[u8; 64]> {
    random_bytes::<64>()
}

/// Wraps a master secret under a password; returns `nonce ‖ ciphertext ‖ tag`.
pub fn wrap_master(master: &[u8; 64], password: &[u8], kdf: &KdfParams) -> Result<Vec<u8>> {
    let kek = Keys::from_master(&kek_material(kdf.derive(password)?))?;
    let mut buf = master.to_vec();
    kek.seal(b"cairn master key v1", &mut buf)?;
    Ok(buf)
}

/// Unwraps a master secret; a wrong password yields [`FormatError::WrongPassword`].
pub fn unwrap_master(wrapped: &[u8], password: &[u8], kdf: &KdfParams) -> Result<[u8; 64]> {
    let kek = Keys::from_master(&kek_material(kdf.derive(password)?))?;
    let mut buf = wrapped.to_vec();
    let plain = kek
        .open("repository key", b"cairn master key v1", &mut buf)
        .map_err(|_| FormatError::WrongPassword)?;
    let master: [u8; 64] = (&*plain).try_into().map_err(|_| FormatError::InvalidField {
        what: "repository config",
        field: "key",
        reason: "wrapped key has the wrong length".into(),
    })?;
    Ok(master)
}

fn kek_material(kek: [u8; 32]) -> [u8; 64] {
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(&kek);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_kdf() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: "00112233445566778899aabbccddeeff".into(),
        }
    }

    #[test]
    fn wrap_unwrap_and_wrong_password() {
        let master = generate_master().unwrap();
        let wrapped = wrap_master(&master, b"secret", &cheap_kdf()).unwrap();
        assert_eq!(unwrap_master(&wrapped, b"secret", &cheap_kdf()).unwrap(), master);
        assert!(matches!(
            unwrap_master(&wrapped, b"wrong", &cheap_kdf()),
            Err(FormatError::WrongPassword)
        ));
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let keys = Keys::from_master(&generate_master().unwrap()).unwrap();
        let mut buf = b"guest data".to_vec();
        keys.seal(b"aad", &mut buf).unwrap();
        assert!(!buf.windows(10).any(|w| w == b"guest data"));
        let mut copy = buf.clone();
        assert_eq!(keys.open("t", b"aad", &mut copy).unwrap(), b"guest data");
        let mut copy = buf.clone();
        assert!(keys.open("t", b"other", &mut copy).is_err());
        buf[14] ^= 1;
        assert!(keys.open("t", b"aad", &mut buf).is_err());
    }
}
