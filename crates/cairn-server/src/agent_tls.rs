//! Mutual TLS with agents: client certificates from the server's CA, pinned by fingerprint.
//!
//! - The HTTPS listener *asks* every client for a certificate but does not require one
//!   ([`listener_config`]): users with bearer tokens and browsers connect without one. A
//!   certificate that does not chain to the server's CA (`DATA/ca.pem`), has expired or is not
//!   meant for client authentication fails the TLS handshake.
//! - At enrolment the agent sends a certificate signing request; [`sign_agent_csr`] keeps only
//!   its public key and issues a certificate of its own making: common name = the agent's name,
//!   URI name `cairn-agent:<id>`, extended key usage clientAuth, valid [`AGENT_CERT_DAYS`] days.
//!   Whatever else the request asks for (CA rights, other names) is ignored.
//! - The server stores the SHA-256 [`fingerprint`] of that certificate. Agent routes accept a
//!   request only when the presented certificate's fingerprint is that of an enrolled,
//!   unrevoked agent ([`crate::http::extract::AgentIdentity`]): a certificate is pinned, so even another certificate
//!   the CA signed (the server's own, a lost one re-issued) does not stand in for it, and
//!   revoking the agent in the database refuses it at once, with no revocation list.
//! - Renewal ([`crate::http::agents::renew_certificate`]): the agent, authenticated by its
//!   current certificate, sends a request for a new key; the new certificate is accepted beside
//!   the current one until the agent first uses it (`AgentIdentity` then makes it current and
//!   the old one is refused).

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::tls::{CA_CERT_FILE, CA_KEY_FILE, TlsError, TlsMaterial};

/// The DNS name in agent `id`'s certificate, which a sender of the data channel checks when it
/// connects to that agent (`agent-<id>.cairn`; the agent's own name may not be a valid DNS name).
pub fn agent_dns_name(id: i64) -> String {
    format!("agent-{id}.cairn")
}

/// Days an agent certificate is valid.
pub const AGENT_CERT_DAYS: i64 = 365;
/// Days before the end of its certificate at which an agent is told to renew it.
pub const AGENT_CERT_RENEW_DAYS: i64 = 30;
/// Prefix of the URI name that carries the agent's id in its certificate.
pub const AGENT_URI_PREFIX: &str = "cairn-agent:";

/// The rustls configuration of the HTTPS listener: the serving certificate of `tls`, HTTP/2 and
/// HTTP/1.1 by ALPN, and client certificates requested (not required) and verified against the
/// server's CA.
pub fn listener_config(tls: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in read_certs(&tls.ca_path)? {
        roots.add(der).map_err(|e| TlsError::Bad {
            path: tls.ca_path.clone(),
            reason: format!("not usable as a CA certificate: {e}"),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Bad {
            path: tls.ca_path.clone(),
            reason: format!("cannot verify client certificates with it: {e}"),
        })?;
    let chain = read_certs(&tls.cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(read(&tls.key_path)?.as_bytes()).map_err(|e| TlsError::Bad {
        path: tls.key_path.clone(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// SHA-256 of a DER certificate, lower-case hex: how an agent is recognised.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The [`fingerprint`] of the first certificate in `pem`.
pub fn pem_fingerprint(pem: &str) -> Result<String, String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(fingerprint(&der))
}

/// A certificate issued to an agent.
#[derive(Debug, Clone)]
pub struct AgentCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// Its [`fingerprint`].
    pub fingerprint: String,
    /// End of its validity.
    pub not_after: jiff::Timestamp,
}

/// The server's CA, ready to sign agent certificates.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (handed to agents to pin).
    pub ca_pem: String,
}

impl AgentCa {
    /// Loads the CA from the server's data folder (`ca.pem`, `ca-key.pem`).
    pub fn load(data_dir: &Path) -> Result<AgentCa, TlsError> {
        let ca_path = data_dir.join(CA_CERT_FILE);
        let key_path = data_dir.join(CA_KEY_FILE);
        let ca_pem = read(&ca_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| TlsError::Bad {
            path: key_path.clone(),
            reason: format!("not a usable private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|source| TlsError::Generate {
            what: "reading the CA certificate",
            source,
        })?;
        Ok(AgentCa { issuer, ca_pem })
    }

    /// Issues the certificate of agent `id` named `name` for the public key of `csr`.
    pub fn sign(
        &self,
        csr: &CertificateSigningRequestParams,
        name: &str,
        id: i64,
    ) -> Result<AgentCertificate, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "cairn agent");
        params.distinguished_name = dn;
        let uri = format!("{AGENT_URI_PREFIX}{id}")
            .try_into()
            .map_err(|source| TlsError::Generate {
                what: "the agent's URI name",
                source,
            })?;
        let dns = agent_dns_name(id).try_into().map_err(|source| TlsError::Generate {
            what: "the agent's DNS name",
            source,
        })?;
        params.subject_alt_names = vec![SanType::URI(uri), SanType::DnsName(dns)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Client for the control channel and as a source data mover; server as a target data
        // mover, where senders dial it by [`agent_dns_name`].
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial: [u8; 16] = rand::random();
        // A positive, non-zero INTEGER of at most 16 bytes.
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        // Whole UTC days, from yesterday (clocks of agents may lag) to a year from today.
        let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
        let yesterday = today.yesterday().unwrap_or(today);
        let until = today
            .checked_add(jiff::Span::new().days(AGENT_CERT_DAYS))
            .unwrap_or(today);
        let ymd = |d: jiff::civil::Date| rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8);
        params.not_before = ymd(yesterday);
        params.not_after = ymd(until);
        let not_after = until
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp())
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key.clone(),
        };
        let cert = request.signed_by(&self.issuer).map_err(|source| TlsError::Generate {
            what: "the agent certificate",
            source,
        })?;
        Ok(AgentCertificate {
            pem: cert.pem(),
            fingerprint: fingerprint(cert.der()),
            not_after,
        })
    }
}

/// A new ECDSA P-256 key for an agent and a certificate signing request for it naming `name`:
/// `(key PEM (PKCS#8), CSR PEM)`. The agent keeps the key; the server signs the request.
pub fn new_key_and_csr(name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate {
        what: "the agent key",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| TlsError::Generate {
            what: "the certificate signing request",
            source,
        })?;
    Ok((key.serialize_pem(), csr))
}

/// Parses and checks (signature included) a PEM certificate signing request.
pub fn parse_csr(pem: &str) -> Result<CertificateSigningRequestParams, String> {
    CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| format!("csr_pem is not a valid PEM certificate signing request: {e}"))
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(read(path)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad {
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Bad {
            path: path.to_path_buf(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(certs)
}
