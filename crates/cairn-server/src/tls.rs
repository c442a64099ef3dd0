//! The server's own certificate authority and serving certificate.
//!
//! On first start the server creates a small CA of its own (ECDSA P-256, valid 10 years, common
//! name `cairn CA <host name>`) and a serving certificate signed by it (valid 2 years) that names
//! `localhost`, `127.0.0.1`, `::1`, the machine's host name, the listen address and any extra names
//! given. Files in the data folder:
//!
//! | file | content |
//! |------|---------|
//! | `ca.pem` | the CA certificate: public, clients trust it (`cairn login --ca ca.pem`) |
//! | `ca-key.pem` | the CA private key |
//! | `server.pem` | the serving certificate followed by the CA certificate |
//! | `server-key.pem` | the serving key |
//!
//! Like everything in the data folder they have mode 0600 (the folder 0700).
//!
//! Later starts reuse them. When the existing serving certificate does not cover every name the
//! server must answer to now (another listen address, new extra names), expires within 30 days,
//! or was not signed by this CA, a new one is issued from the same CA — clients that trust
//! `ca.pem` keep working. The CA itself is never replaced automatically.
//!
//! Only rustls with the aws-lc-rs provider is used.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the CA certificate (public).
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA key (secret).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the serving certificate chain.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// File name of the serving key (secret).
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Years the CA certificate is valid.
const CA_YEARS: i16 = 10;
/// Years a serving certificate is valid.
const SERVER_YEARS: i16 = 2;
/// A serving certificate that expires sooner than this is replaced at start.
const RENEW_BEFORE_DAYS: i64 = 30;

/// Why the TLS material could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Making a key or certificate failed.
    #[error("{what}: {source}")]
    Generate {
        /// What was being made.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A stored key or certificate cannot be read.
    #[error("{}: {reason}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate material of a server, ready to serve.
#[derive(Clone)]
pub struct TlsMaterial {
    /// `DATA/ca.pem`: what clients trust.
    pub ca_path: PathBuf,
    /// `DATA/server.pem`.
    pub cert_path: PathBuf,
    /// `DATA/server-key.pem`.
    pub key_path: PathBuf,
    /// The names (DNS names and IP addresses) the serving certificate covers.
    pub names: Vec<String>,
    /// Whether the CA was created by this call (first start).
    pub created_ca: bool,
    /// Whether a serving certificate was issued by this call.
    pub issued_server_cert: bool,
    /// rustls configuration for the HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN).
    pub server_config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_path", &self.ca_path)
            .field("names", &self.names)
            .field("created_ca", &self.created_ca)
            .field("issued_server_cert", &self.issued_server_cert)
            .finish_non_exhaustive()
    }
}

/// Installs aws-lc-rs as the process-wide rustls crypto provider. Safe to call many times: a
/// provider that is already installed (by us or by the embedding program) is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The machine's host name (`None` if it cannot be read or is empty).
pub fn host_name() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().trim().to_owned();
    (!name.is_empty() && name != "(none)").then_some(name)
}

/// The names the serving certificate must cover for a server listening on `listen`:
/// `localhost`, `127.0.0.1`, `::1`, the host name, the listen IP (unless it is the unspecified
/// address) and `extra`. Sorted, without duplicates (DNS names compared in lower case).
pub fn required_names(listen: SocketAddr, host: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut names: BTreeSet<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(host) = host {
        names.insert(normalise_name(host));
    }
    if !listen.ip().is_unspecified() {
        names.insert(listen.ip().to_string());
    }
    for name in extra {
        let name = name.trim();
        if !name.is_empty() {
            names.insert(normalise_name(name));
        }
    }
    names.into_iter().collect()
}

/// An IP address in its canonical text form; a DNS name in lower case.
fn normalise_name(name: &str) -> String {
    match name.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// Loads (creating on first start, renewing when needed) the CA and serving certificate in
/// `data_dir` so that the serving certificate covers `names`.
pub fn prepare(data_dir: &Path, names: &[String]) -> Result<TlsMaterial, TlsError> {
    install_crypto_provider();
    let ca_path = data_dir.join(CA_CERT_FILE);
    let ca_key_path = data_dir.join(CA_KEY_FILE);
    let cert_path = data_dir.join(SERVER_CERT_FILE);
    let key_path = data_dir.join(SERVER_KEY_FILE);
    let host = host_name();

    let created_ca = !ca_path.exists() || !ca_key_path.exists();
    if created_ca {
        if ca_path.exists() != ca_key_path.exists() {
            let (present, missing) = if ca_path.exists() {
                (&ca_path, &ca_key_path)
            } else {
                (&ca_key_path, &ca_path)
            };
            return Err(TlsError::Bad {
                path: missing.clone(),
                reason: format!(
                    "missing while {} exists: restore it from a backup of the data folder, or move both away to \
                     create a new CA (clients must then trust the new ca.pem)",
                    present.display()
                ),
            });
        }
        create_ca(&ca_path, &ca_key_path, host.as_deref())?;
    }
    let ca_pem = read_text(&ca_path)?;
    let ca_key = KeyPair::from_pem(&read_text(&ca_key_path)?).map_err(|e| TlsError::Bad {
        path: ca_key_path.clone(),
        reason: format!("not a usable private key: {e}"),
    })?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::Bad {
        path: ca_path.clone(),
        reason: format!("not a PEM certificate: {e}"),
    })?;

    let existing = if cert_path.exists() && key_path.exists() {
        existing_names(&cert_path, &ca_der)?
    } else {
        None
    };
    let wanted: BTreeSet<String> = names.iter().map(|n| normalise_name(n)).collect();
    let (covered, issued_server_cert) = match existing {
        Some(have) if wanted.is_subset(&have) => (have, false),
        // Keep the names the old certificate had, so alternating configurations do not keep
        // replacing it.
        Some(have) => {
            let all: BTreeSet<String> = have.union(&wanted).cloned().collect();
            issue_server_cert(&ca_pem, ca_key, &cert_path, &key_path, &all, host.as_deref())?;
            (all, true)
        }
        None => {
            issue_server_cert(&ca_pem, ca_key, &cert_path, &key_path, &wanted, host.as_deref())?;
            (wanted, true)
        }
    };

    let server_config = server_config(&cert_path, &key_path)?;
    Ok(TlsMaterial {
        ca_path,
        cert_path,
        key_path,
        names: covered.into_iter().collect(),
        created_ca,
        issued_server_cert,
        server_config,
    })
}

/// Builds the rustls server configuration from the stored chain and key.
fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(read_text(cert_path)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad {
            path: cert_path.to_path_buf(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    let key = PrivateKeyDer::from_pem_slice(read_text(key_path)?.as_bytes()).map_err(|e| TlsError::Bad {
        path: key_path.to_path_buf(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The names the stored serving certificate covers, or `None` when it must be replaced (not
/// signed by this CA, expiring soon, unreadable).
fn existing_names(cert_path: &Path, ca_der: &CertificateDer<'_>) -> Result<Option<BTreeSet<String>>, TlsError> {
    let text = read_text(cert_path)?;
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(text.as_bytes()).next() else {
        tracing::warn!("{}: unreadable; issuing a new serving certificate", cert_path.display());
        return Ok(None);
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&der),
        x509_parser::parse_x509_certificate(ca_der),
    ) else {
        tracing::warn!("{}: unparsable; issuing a new serving certificate", cert_path.display());
        return Ok(None);
    };
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        tracing::warn!(
            "{}: not signed by the CA in ca.pem; issuing a new serving certificate",
            cert_path.display()
        );
        return Ok(None);
    }
    let renew_after = jiff::Timestamp::now().as_second() + RENEW_BEFORE_DAYS * 86_400;
    if cert.validity().not_after.timestamp() < renew_after {
        tracing::info!(
            "{}: expires soon; issuing a new serving certificate",
            cert_path.display()
        );
        return Ok(None);
    }
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    names.insert(dns.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Some(names))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Validity from yesterday (tolerates clocks a little behind) until `years` from today.
fn validity(params: &mut CertificateParams, years: i16) {
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
    let yesterday = today.yesterday().unwrap_or(today);
    let until = today.checked_add(jiff::Span::new().years(years)).unwrap_or(today);
    params.not_before = rcgen::date_time_ymd(
        i32::from(yesterday.year()),
        yesterday.month() as u8,
        yesterday.day() as u8,
    );
    params.not_after = rcgen::date_time_ymd(i32::from(until.year()), until.month() as u8, until.day() as u8);
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive, non-zero INTEGER of at most 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn generate_key(what: &'static str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate { what, source })
}

fn ca_params(host: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("cairn CA {}", host.unwrap_or("server")));
    dn.push(DnType::OrganizationName, "cairn");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, CA_YEARS);
    params
}

fn create_ca(ca_path: &Path, ca_key_path: &Path, host: Option<&str>) -> Result<(), TlsError> {
    let key = generate_key("CA key")?;
    let cert = ca_params(host).self_signed(&key).map_err(|source| TlsError::Generate {
        what: "CA certificate",
        source,
    })?;
    // The key first: a CA certificate without its key would be useless.
    write_atomic(ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(ca_path, cert.pem().as_bytes(), 0o600)?;
    tracing::info!("created the server's certificate authority {}", ca_path.display());
    Ok(())
}

fn issue_server_cert(
    ca_pem: &str,
    ca_key: KeyPair,
    cert_path: &Path,
    key_path: &Path,
    names: &BTreeSet<String>,
    host: Option<&str>,
) -> Result<(), TlsError> {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|source| TlsError::Generate {
        what: "reading the CA certificate",
        source,
    })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("cairn server {}", host.unwrap_or("localhost")),
    );
    dn.push(DnType::OrganizationName, "cairn");
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| TlsError::Generate {
                    what: "a certificate name",
                    source,
                }),
        })
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, SERVER_YEARS);
    let key = generate_key("server key")?;
    let cert = params.signed_by(&key, &issuer).map_err(|source| TlsError::Generate {
        what: "server certificate",
        source,
    })?;
    write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    let chain = format!("{}{}", cert.pem(), ca_pem);
    write_atomic(cert_path, chain.as_bytes(), 0o600)?;
    tracing::info!(
        "issued a serving certificate for {}",
        names.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    })
}

/// Writes `bytes` to `path` with `mode` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| TlsError::Io { path: p, op, source }
    };
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync folder", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn required_names_cover_loopback_host_listen_and_extra() {
        let names = required_names(
            listen("192.0.2.7:8520"),
            Some("Backup-01"),
            &["backup.example.org".into(), " [2001:db8::1] ".into(), String::new()],
        );
        assert_eq!(
            names,
            [
                "127.0.0.1",
                "192.0.2.7",
                "2001:db8::1",
                "::1",
                "backup-01",
                "backup.example.org",
                "localhost"
            ]
        );
        let unspecified = required_names(listen("0.0.0.0:8520"), None, &[]);
        assert_eq!(unspecified, ["127.0.0.1", "::1", "localhost"]);
    }

    #[test]
    fn first_start_creates_then_reuses_then_extends() {
        let dir = tempfile::tempdir().unwrap();
        let names = required_names(listen("127.0.0.1:0"), Some("h1"), &[]);
        let first = prepare(dir.path(), &names).unwrap();
        assert!(first.created_ca && first.issued_server_cert);
        for (file, mode) in [
            (CA_CERT_FILE, 0o600),
            (CA_KEY_FILE, 0o600),
            (SERVER_CERT_FILE, 0o600),
            (SERVER_KEY_FILE, 0o600),
        ] {
            let meta = fs::metadata(dir.path().join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        let ca_before = fs::read(&first.ca_path).unwrap();
        let cert_before = fs::read(&first.cert_path).unwrap();

        let second = prepare(dir.path(), &names).unwrap();
        assert!(!second.created_ca && !second.issued_server_cert);
        assert_eq!(fs::read(&second.cert_path).unwrap(), cert_before);

        let more = required_names(listen("127.0.0.1:0"), Some("h1"), &["backup.example.org".into()]);
        let third = prepare(dir.path(), &more).unwrap();
        assert!(!third.created_ca && third.issued_server_cert);
        assert_eq!(fs::read(&third.ca_path).unwrap(), ca_before, "the CA stays");
        assert!(third.names.contains(&"backup.example.org".to_string()));
        assert!(third.names.contains(&"h1".to_string()));

        // The new certificate is signed by the same CA and carries the new name.
        let text = fs::read_to_string(&third.cert_path).unwrap();
        let der = CertificateDer::pem_slice_iter(text.as_bytes()).next().unwrap().unwrap();
        let ca_der = CertificateDer::from_pem_slice(&ca_before).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
        let cn = format!("cairn CA {}", host_name().unwrap_or_else(|| "server".into()));
        assert!(ca.subject().to_string().contains(&cn), "{}", ca.subject());
        let ca_years = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
        assert!(ca_years > 9 * 365 * 86_400, "CA valid about 10 years");
        let years = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(
            (700 * 86_400..=740 * 86_400).contains(&years),
            "serving cert valid about 2 years"
        );
    }

    #[test]
    fn a_lone_ca_key_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let names = required_names(listen("127.0.0.1:0"), None, &[]);
        prepare(dir.path(), &names).unwrap();
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let err = prepare(dir.path(), &names).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("missing"), "{err}");
    }
}
