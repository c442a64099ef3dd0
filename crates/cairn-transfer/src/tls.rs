//! Mutual TLS for the data channel: both data movers present a certificate signed by the
//! backup server's CA, and each may additionally pin the other's certificate by its SHA-256
//! fingerprint and refuse revoked ones.
//!
//! The checks, in order, on both sides: the chain must lead to the CA and be valid now
//! (rustls' WebPKI verifier: signature, validity period, key usage; the receiver's certificate
//! must also name the host the sender dialled); then the end-entity certificate's fingerprint
//! must not be in [`PeerPolicy::revoked`] and, when [`PeerPolicy::allowed`] is set, must be in it.
//! Only TLS 1.3 is offered.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// SHA-256 of a certificate's DER encoding: what pinning and revocation lists hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    /// Lower-case hex without separators (64 characters).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsSetupError;

    /// Parses 64 hex digits; `:` separators (as `openssl x509 -fingerprint` prints) are allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
        let bad = || TlsSetupError::Fingerprint(s.chars().take(100).collect());
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// A data mover's TLS identity: the CA both sides trust, and its own certificate and key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The CA certificate (the backup server's CA).
    pub ca: CertificateDer<'static>,
    /// This side's certificate chain, end-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// This side's private key.
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Reads an identity from PEM text: the CA certificate, this side's certificate chain
    /// (end-entity first) and its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(ca_pem: &[u8], chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsSetupError> {
        let ca = CertificateDer::from_pem_slice(ca_pem).map_err(|e| TlsSetupError::Pem("CA certificate", e))?;
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::Pem("certificate chain", e))?;
        if chain.is_empty() {
            return Err(TlsSetupError::Pem(
                "certificate chain",
                rustls::pki_types::pem::Error::NoItemsFound,
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsSetupError::Pem("private key", e))?;
        Ok(Self { ca, chain, key })
    }

    /// The fingerprint of this side's own (end-entity) certificate, for the peer to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        // `from_pem` and the struct's contract guarantee a non-empty chain; an empty one
        // fingerprints as the empty certificate.
        self.chain
            .first()
            .map(Fingerprint::of)
            .unwrap_or_else(|| Fingerprint::of(&CertificateDer::from(Vec::new())))
    }
}

/// Which peer certificates (already valid under the CA) are accepted.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// When set, only certificates with one of these fingerprints are accepted (pinning).
    pub allowed: Option<HashSet<Fingerprint>>,
    /// Certificates with these fingerprints are refused (revoked agents).
    pub revoked: HashSet<Fingerprint>,
}

impl PeerPolicy {
    /// Accepts exactly one certificate.
    pub fn pinned(fingerprint: Fingerprint) -> Self {
        Self {
            allowed: Some(HashSet::from([fingerprint])),
            revoked: HashSet::new(),
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let fp = Fingerprint::of(cert);
        if self.revoked.contains(&fp) {
            tracing::warn!(fingerprint = %fp, "refused a revoked data mover certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        if let Some(allowed) = &self.allowed
            && !allowed.contains(&fp)
        {
            tracing::warn!(fingerprint = %fp, "refused a data mover certificate that is not pinned");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(())
    }
}

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// PEM text could not be read.
    #[error("cannot read the {0} PEM: {1}")]
    Pem(&'static str, rustls::pki_types::pem::Error),
    /// rustls refused the certificate, key or CA.
    #[error("cannot use the {0}: {1}")]
    Rustls(&'static str, rustls::Error),
    /// The verifier could not be built from the CA.
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
    /// Not a SHA-256 fingerprint.
    #[error("not a SHA-256 fingerprint (64 hex digits): {0:?}")]
    Fingerprint(String),
}

/// aws-lc with AES-128-GCM preferred: bulk data is what this channel carries, and AES-128 costs
/// about a third less CPU per byte than AES-256 while its security margin stays far beyond any
/// backup's lifetime. Both ends accept every TLS 1.3 suite; the receiver's order decides.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| TlsSetupError::Rustls("CA certificate", e))?;
    Ok(Arc::new(roots))
}

/// The receiver's (TLS server's) configuration: presents `identity`, requires a client
/// certificate signed by its CA that `policy` accepts.
pub fn receiver_tls_config(identity: &TlsIdentity, policy: PeerPolicy) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(&identity.ca)?, provider.clone())
        .build()
        .map_err(TlsSetupError::Verifier)?;
    let verifier = Arc::new(PolicyClientVerifier { inner, policy });
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError::Rustls("TLS 1.3 protocol", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsSetupError::Rustls("receiver certificate and key", e))?;
    Ok(Arc::new(config))
}

/// The sender's (TLS client's) configuration: presents `identity`, requires a server
/// certificate signed by its CA, valid for the name dialled, that `policy` accepts.
pub fn sender_tls_config(identity: &TlsIdentity, policy: PeerPolicy) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(&identity.ca)?, provider.clone())
        .build()
        .map_err(TlsSetupError::Verifier)?;
    let verifier = Arc::new(PolicyServerVerifier { inner, policy });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError::Rustls("TLS 1.3 protocol", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsSetupError::Rustls("sender certificate and key", e))?;
    Ok(Arc::new(config))
}

/// The handshake signature checks of a verifier, left to its `inner` WebPKI verifier.
macro_rules! signature_checks_by_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// WebPKI client verification, then the fingerprint policy.
#[derive(Debug)]
struct PolicyClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: PeerPolicy,
}

impl ClientCertVerifier for PolicyClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        self.policy.check(end_entity)?;
        Ok(verified)
    }

    signature_checks_by_inner!();
}

/// WebPKI server verification (chain, validity, name), then the fingerprint policy.
#[derive(Debug)]
struct PolicyServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    policy: PeerPolicy,
}

impl ServerCertVerifier for PolicyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        self.policy.check(end_entity)?;
        Ok(verified)
    }

    signature_checks_by_inner!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parses_with_and_without_colons() {
        let fp = Fingerprint::of(&CertificateDer::from(b"not really a certificate".to_vec()));
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<Fingerprint>().unwrap(), fp);
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), fp);
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }
}
