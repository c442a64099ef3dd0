//! Mutual TLS and pinning: certificates from another CA, expired, revoked or not pinned are
//! refused (on both sides), and nothing reaches the consumer.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_transfer::{
    Error, Fingerprint, PeerPolicy, Sender, SenderConfig, TlsIdentity, TransferId, sender_tls_config,
};
use common::{Collected, Peers, Pki, Validity, bind_local, random_blocks, sender_config};
use rustls::{AlertDescription, CertificateError};

/// Tries a short transfer and returns the sender's error, checking that the receiver's
/// consumer got nothing.
async fn refused(peers: &Peers, receiver_policy: PeerPolicy, sender: &TlsIdentity, sender_policy: PeerPolicy) -> Error {
    let receiver = bind_local(peers.receiver_config(receiver_policy)).await;
    let id = TransferId::random();
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    let mut config = sender_config(sender, receiver.local_addr(), "localhost", id);
    config.tls = sender_tls_config(sender, sender_policy).unwrap();
    config.streams = 2;
    let err = match Sender::connect(config).await {
        Ok(s) => {
            let _ = s.send(random_blocks(1, 1).remove(0)).await;
            s.finish().await.expect_err("transfer should have been refused")
        }
        Err(e) => e,
    };
    assert!(!err.is_retryable(), "a refused identity must not be retried: {err}");
    assert!(collected.blocks.lock().unwrap().is_empty());
    assert_eq!(incoming.stats().connections, 0, "no stream was attached");
    err
}

fn alert(err: &Error) -> AlertDescription {
    match err {
        Error::Tls {
            source: rustls::Error::AlertReceived(a),
            ..
        } => *a,
        other => panic!("expected a TLS alert from the peer, got {other}"),
    }
}

fn local_error(err: &Error) -> CertificateError {
    match err {
        Error::Tls {
            source: rustls::Error::InvalidCertificate(e),
            ..
        } => e.clone(),
        other => panic!("expected a refused certificate, got {other}"),
    }
}

#[tokio::test]
async fn a_sender_certificate_from_another_ca_is_refused() {
    let peers = Peers::localhost();
    // A forger whose CA has another name: no issuer found.
    let mut forged = Pki::new("forger CA").identity(&["proxy01"], Validity::Now);
    forged.ca = peers.pki.ca_der(); // it trusts the real CA, but its own cert is not signed by it
    let err = refused(&peers, PeerPolicy::default(), &forged, PeerPolicy::default()).await;
    assert_eq!(alert(&err), AlertDescription::UnknownCA, "{err}");
    // A forger who copied the CA's name: the issuer is found, its signature does not verify.
    let mut forged = Pki::new("cairn test CA").identity(&["proxy01"], Validity::Now);
    forged.ca = peers.pki.ca_der();
    let err = refused(&peers, PeerPolicy::default(), &forged, PeerPolicy::default()).await;
    assert_eq!(alert(&err), AlertDescription::DecryptError, "{err}");
}

#[tokio::test]
async fn an_expired_sender_certificate_is_refused() {
    let peers = Peers::localhost();
    let expired = peers.pki.identity(&["proxy01"], Validity::Expired);
    let err = refused(&peers, PeerPolicy::default(), &expired, PeerPolicy::default()).await;
    assert_eq!(alert(&err), AlertDescription::CertificateExpired, "{err}");
}

#[tokio::test]
async fn a_revoked_sender_certificate_is_refused() {
    let peers = Peers::localhost();
    let policy = PeerPolicy {
        allowed: None,
        revoked: HashSet::from([peers.sender.fingerprint()]),
    };
    let err = refused(&peers, policy, &peers.sender, PeerPolicy::default()).await;
    assert_eq!(alert(&err), AlertDescription::CertificateRevoked, "{err}");
}

#[tokio::test]
async fn a_sender_that_is_not_pinned_is_refused_and_a_pinned_one_is_accepted() {
    let peers = Peers::localhost();
    let other = peers.pki.identity(&["proxy02"], Validity::Now);
    let err = refused(
        &peers,
        PeerPolicy::pinned(other.fingerprint()),
        &peers.sender,
        PeerPolicy::default(),
    )
    .await;
    assert_eq!(alert(&err), AlertDescription::AccessDenied, "{err}");

    // Pinned on both sides: the transfer goes through.
    let receiver = bind_local(peers.receiver_config(PeerPolicy::pinned(peers.sender.fingerprint()))).await;
    let id = TransferId::random();
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    let mut config = sender_config(&peers.sender, receiver.local_addr(), "localhost", id);
    config.tls = sender_tls_config(&peers.sender, PeerPolicy::pinned(peers.receiver.fingerprint())).unwrap();
    let blocks = random_blocks(3, 2);
    let sender = Sender::connect(config).await.unwrap();
    for b in &blocks {
        sender.send(b.clone()).await.unwrap();
    }
    sender.finish().await.unwrap();
    incoming.wait().await.unwrap();
    collected.assert_exactly(&blocks);
}

#[tokio::test]
async fn the_sender_refuses_a_forged_expired_revoked_or_unpinned_receiver() {
    let peers = Peers::localhost();
    // Receiver certificate from another CA.
    for (ca_name, expected) in [
        ("forger CA", CertificateError::UnknownIssuer),
        ("cairn test CA", CertificateError::BadSignature),
    ] {
        let mut forged = Peers::localhost();
        forged.receiver = Pki::new(ca_name).identity(&["localhost"], Validity::Now);
        forged.receiver.ca = peers.pki.ca_der();
        let err = refused(&forged, PeerPolicy::default(), &peers.sender, PeerPolicy::default()).await;
        assert_eq!(local_error(&err), expected, "{err}");
    }
    // Expired receiver certificate (from the right CA).
    let mut expired = Peers::localhost();
    expired.receiver = peers.pki.identity(&["localhost"], Validity::Expired);
    let err = refused(&expired, PeerPolicy::default(), &peers.sender, PeerPolicy::default()).await;
    assert!(
        matches!(
            local_error(&err),
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err}"
    );
    // Revoked and not pinned receivers.
    let revoked = PeerPolicy {
        allowed: None,
        revoked: HashSet::from([peers.receiver.fingerprint()]),
    };
    let err = refused(&peers, PeerPolicy::default(), &peers.sender, revoked).await;
    assert_eq!(local_error(&err), CertificateError::Revoked, "{err}");
    let wrong_pin = PeerPolicy::pinned(Fingerprint([0xab; 32]));
    let err = refused(&peers, PeerPolicy::default(), &peers.sender, wrong_pin).await;
    assert_eq!(
        local_error(&err),
        CertificateError::ApplicationVerificationFailure,
        "{err}"
    );
}

#[tokio::test]
async fn the_receiver_name_must_match_its_certificate() {
    let peers = Peers::new(&["repo01"]);
    let receiver = bind_local(peers.receiver_config(PeerPolicy::default())).await;
    let id = TransferId::random();
    let _incoming = receiver.expect(id, |_b| async { Ok(()) }).unwrap();
    let config: SenderConfig = sender_config(&peers.sender, receiver.local_addr(), "repo02", id);
    let err = tokio::time::timeout(Duration::from_secs(10), Sender::connect(config))
        .await
        .unwrap()
        .err()
        .expect("name mismatch refused");
    assert!(
        matches!(
            local_error(&err),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{err}"
    );
}

#[test]
fn identities_load_from_pem() {
    let pki = Pki::new("pem CA");
    let id = pki.identity(&["repo01"], Validity::Now);
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64_encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    };
    let ca = pem("CERTIFICATE", id.ca.as_ref());
    let cert = pem("CERTIFICATE", id.chain[0].as_ref());
    let key = pem("PRIVATE KEY", id.key.secret_der());
    let loaded = TlsIdentity::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    assert_eq!(loaded.fingerprint(), id.fingerprint());
    assert_eq!(loaded.ca, id.ca);
    let err = TlsIdentity::from_pem(ca.as_bytes(), b"", key.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("certificate chain"), "{err}");
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
