//! The repository config file: identity, format version and key material.

use std::path::Path;

use cairn_format::FORMAT_VERSION;
use cairn_format::crypto::{self, KdfParams, Keys};
use cairn_format::envelope::{self, Kind};
use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result, fmt};

/// Encryption of a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// Blocks and metadata are stored in clear (still checksummed).
    #[serde(rename = "none")]
    None,
    /// AES-256-GCM per block and per metadata file.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl std::str::FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Encryption::None),
            "aes-256-gcm" => Ok(Encryption::Aes256Gcm),
            _ => Err(format!("unknown encryption {s:?} (none, aes-256-gcm)")),
        }
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encryption::None => "none",
            Encryption::Aes256Gcm => "aes-256-gcm",
        })
    }
}

/// The contents of `config` (JSON inside a checksummed envelope).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Repository format version.
    pub format_version: u32,
    /// Random repository id, hex.
    pub repository_id: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Encryption of blocks and metadata.
    pub encryption: Encryption,
    /// Key derivation parameters (encrypted repositories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
    /// The wrapped master key, hex (encrypted repositories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_key: Option<String>,
    /// The block hash key, hex (unencrypted repositories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
}

impl Config {
    /// Makes a new config and the keys it protects.
    pub fn generate(encryption: Encryption, password: Option<&[u8]>, kdf: Option<KdfParams>) -> Result<(Config, Keys)> {
        let f = |e| RepoError::Format {
            path: "config".into(),
            source: e,
        };
        let id: [u8; 16] = crypto::random_bytes().map_err(f)?;
        let created = jiff::Timestamp::now().to_string();
        let master = crypto::generate_master().map_err(f)?;
        let mut config = Config {
            format_version: FORMAT_VERSION,
            repository_id: hex::encode(id),
            created,
            encryption,
            kdf: None,
            wrapped_key: None,
            hash_key: None,
        };
        let keys = match encryption {
            Encryption::None => {
                config.hash_key = Some(hex::encode(&master[32..]));
                Keys::plain(
                    master[32..]
                        .try_into()
                        .map_err(|_| RepoError::Invalid("key length".into()))?,
                )
            }
            Encryption::Aes256Gcm => {
                let password =
                    password.ok_or_else(|| RepoError::Invalid("an encrypted repository needs a password".into()))?;
                if password.is_empty() {
                    return Err(RepoError::Invalid("the password is empty".into()));
                }
                let kdf = match kdf {
                    Some(k) => k,
                    None => KdfParams::generate().map_err(f)?,
                };
                config.wrapped_key = Some(hex::encode(crypto::wrap_master(&master, password, &kdf).map_err(f)?));
                config.kdf = Some(kdf);
                Keys::from_master(&master).map_err(f)?
            }
        };
        Ok((config, keys))
    }

    /// Serialises the config into its file bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| RepoError::Invalid(e.to_string()))?;
        envelope::seal(Kind::Config, &body, false, None).map_err(fmt(Path::new("config")))
    }

    /// Parses config file bytes read from `path`.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Config> {
        let body = envelope::open(Kind::Config, bytes, None).map_err(fmt(path))?;
        let config: Config = serde_json::from_slice(&body).map_err(|e| RepoError::Damaged {
            path: path.to_path_buf(),
            reason: format!("config body: {e}"),
        })?;
        if config.format_version != FORMAT_VERSION {
            return Err(RepoError::Damaged {
                path: path.to_path_buf(),
                reason: format!(
                    "format version {} is not supported by this cairn (knows {FORMAT_VERSION})",
                    config.format_version
                ),
            });
        }
        Ok(config)
    }

    /// Unlocks the repository keys (the password is needed when encrypted).
    pub fn keys(&self, password: Option<&[u8]>, path: &Path) -> Result<Keys> {
        let damaged = |reason: &str| RepoError::Damaged {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        match self.encryption {
            Encryption::None => {
                let key = self.hash_key.as_deref().ok_or_else(|| damaged("hash_key missing"))?;
                let key: [u8; 32] = hex::decode(key)
                    .ok()
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| damaged("hash_key is not 32 hex bytes"))?;
                Ok(Keys::plain(key))
            }
            Encryption::Aes256Gcm => {
                let password = password.ok_or_else(|| RepoError::PasswordRequired {
                    path: path.to_path_buf(),
                })?;
                let kdf = self.kdf.as_ref().ok_or_else(|| damaged("kdf missing"))?;
                let wrapped = self
                    .wrapped_key
                    .as_deref()
                    .and_then(|k| hex::decode(k).ok())
                    .ok_or_else(|| damaged("wrapped_key missing or not hex"))?;
                let master = crypto::unwrap_master(&wrapped, password, kdf).map_err(|e| match e {
                    cairn_format::FormatError::WrongPassword => RepoError::WrongPassword {
                        path: path.to_path_buf(),
                    },
                    other => RepoError::Format {
                        path: path.to_path_buf(),
                        source: other,
                    },
                })?;
                Keys::from_master(&master).map_err(fmt(path))
            }
        }
    }

    /// The repository id as bytes.
    pub fn id_bytes(&self) -> [u8; 16] {
        hex::decode(&self.repository_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .unwrap_or([0; 16])
    }
}
