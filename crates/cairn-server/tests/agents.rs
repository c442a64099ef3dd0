//! Agent enrolment and mutual TLS against a real server in this process: real TLS handshakes
//! with client certificates, real SQLite and PostgreSQL. Every test body runs on both backends.

mod common;

use cairn_server::agent_tls::{AgentCa, fingerprint, parse_csr};
use common::{Backend, TestServer};
use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use reqwest::Method;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// A fresh ECDSA key and a PEM certificate signing request for `name`. The request also asks
/// for CA rights, which the server must ignore.
fn csr(name: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

/// A client trusting only the server's CA and presenting `cert_pem` with `key`.
fn agent_client(t: &TestServer, cert_pem: &str, key: &KeyPair) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(t.server.ca_path()).unwrap()).unwrap();
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}{}", key.serialize_pem()).as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(identity)
        .build()
        .unwrap()
}

async fn send(client: &reqwest::Client, method: Method, url: String, body: Option<&Value>) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

fn heartbeat_body() -> Value {
    json!({"version": "9.9.9", "max_tasks": 6, "free_bytes": 123_456_789, "roles": ["proxy"]})
}

async fn new_token(t: &TestServer, roles: Value) -> String {
    let (status, body) = t.post("/api/v1/agents/tokens", json!({"roles": roles})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn enroll(t: &TestServer, token: &str, name: &str, csr_pem: &str) -> (u16, Value) {
    t.call(
        Method::POST,
        "/api/v1/agents/enroll",
        None,
        Some(
            &json!({"token": token, "name": name, "csr_pem": csr_pem, "version": "1.2.3",
            "max_tasks": 4, "free_bytes": 1000}),
        ),
    )
    .await
}

async fn enrol_heartbeat_list_revoke(backend: Backend) {
    let t = TestServer::start(backend, "agents_enrol").await;
    let (status, created) = t
        .post(
            "/api/v1/agents/tokens",
            json!({"roles": ["proxy", "repository"], "expires_in_secs": 600}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let expires: Timestamp = created["expires_at"].as_str().unwrap().parse().unwrap();
    let left = expires.duration_since(Timestamp::now());
    assert!(
        left > SignedDuration::from_secs(500) && left <= SignedDuration::from_secs(600),
        "{left:?}"
    );
    assert_eq!(created["roles"], json!(["proxy", "repository"]));

    let (key, csr_pem) = csr("proxy01");
    let (status, enrolled) = enroll(&t, &token, "proxy01", &csr_pem).await;
    assert_eq!(status, 201, "{enrolled}");
    let id = enrolled["agent_id"].as_i64().unwrap();
    let cert_pem = enrolled["certificate_pem"].as_str().unwrap().to_owned();
    let ca_file = std::fs::read_to_string(t.server.ca_path()).unwrap();
    assert_eq!(
        enrolled["ca_pem"].as_str().unwrap(),
        ca_file,
        "the CA to pin is DATA/ca.pem"
    );

    // The certificate chains to DATA/ca.pem, names the agent, is for client auth only, a year.
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let ca_der = CertificateDer::from_pem_slice(ca_file.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the server's CA");
    assert!(cert.subject().to_string().contains("CN=proxy01"), "{}", cert.subject());
    assert_eq!(
        &*cert.public_key().subject_public_key.data,
        key.public_key_raw(),
        "the CSR's key"
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [format!("cairn-agent:{id}")]);
    let dns: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        dns,
        [format!("agent-{id}.cairn")],
        "the name a proxy checks when it sends data to the agent"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(
        eku.client_auth && eku.server_auth,
        "client (control channel, sending data) and server (receiving data)"
    );
    assert!(!cert.is_ca(), "the CSR's request for CA rights is ignored");
    let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert!((365..=367).contains(&days), "valid about a year: {days} days");
    assert_eq!(enrolled["cert_fingerprint"].as_str().unwrap(), fingerprint(&der));

    // The token is one-time.
    let (_, csr2) = csr("proxy02");
    let (status, body) = enroll(&t, &token, "proxy02", &csr2).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "enrolment token already used");

    // Heartbeat with the client certificate.
    let agent = agent_client(&t, &cert_pem, &key);
    let url = format!("{}/api/v1/agents/heartbeat", t.base);
    let (status, seen) = send(&agent, Method::POST, url.clone(), Some(&heartbeat_body())).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        (seen["id"].as_i64(), seen["state"].as_str()),
        (Some(id), Some("online"))
    );
    let viewer = t.user("vera", "viewer").await;
    let (status, list) = t.call(Method::GET, "/api/v1/agents", Some(&viewer), None).await;
    assert_eq!(status, 200, "{list}");
    let listed = &list[0];
    assert_eq!(listed["name"], "proxy01");
    assert_eq!(listed["version"], "9.9.9");
    assert_eq!(
        (listed["max_tasks"].as_i64(), listed["free_bytes"].as_i64()),
        (Some(6), Some(123_456_789))
    );
    assert!(listed["last_seen_at"].is_string(), "{listed}");
    assert_eq!(listed["state"], "online");
    assert_eq!(listed["roles"], json!(["proxy", "repository"]));

    // Roles beyond the granted ones are refused.
    let (status, body) = send(
        &agent,
        Method::POST,
        url.clone(),
        Some(&json!({"version": "1", "max_tasks": 1, "free_bytes": 0, "roles": ["gateway"]})),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // Without the client certificate (a bearer token does not help).
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/agents/heartbeat",
            Some(&t.admin),
            Some(&heartbeat_body()),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("client certificate"), "{body}");

    // Only an administrator revokes.
    let path = format!("/api/v1/agents/{id}");
    let (status, _) = t.call(Method::DELETE, &path, Some(&viewer), None).await;
    assert_eq!(status, 403);
    let (status, revoked) = t.delete(&path).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    let (status, body) = send(&agent, Method::POST, url, Some(&heartbeat_body())).await;
    assert_eq!(status, 403, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("proxy01") && msg.contains("revoked"), "{msg}");
    let list = t.get("/api/v1/agents").await;
    assert_eq!(list[0]["state"], "revoked", "the row stays");
    assert!(list[0]["revoked_at"].is_string());
    let (status, _) = t.delete("/api/v1/agents/9999").await;
    assert_eq!(status, 404);
    t.stop().await;
}
both_backends!(enrol_heartbeat_list_revoke);

async fn forged_unknown_and_refused_enrolments(backend: Backend) {
    let t = TestServer::start(backend, "agents_forged").await;
    let url = format!("{}/api/v1/agents/heartbeat", t.base);

    // A client certificate from a CA of its own: the TLS handshake fails.
    let forged_ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "cairn CA forged");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let forged_issuer = Issuer::new(ca_params, forged_ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "intruder");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.signed_by(&key, &forged_issuer).unwrap();
    let intruder = agent_client(&t, &forged.pem(), &key);
    let err = intruder
        .post(&url)
        .json(&heartbeat_body())
        .send()
        .await
        .expect_err("a certificate of another CA must fail the handshake");
    assert!(err.status().is_none(), "no HTTP answer: {err:?}");

    // A certificate the real CA signed but that is no agent's (not pinned): 403.
    let (key, csr_pem) = csr("stranger");
    let ca = AgentCa::load(&t.path("data")).unwrap();
    let cert = ca.sign(&parse_csr(&csr_pem).unwrap(), "stranger", 4242).unwrap();
    let stranger = agent_client(&t, &cert.pem, &key);
    let (status, body) = send(&stranger, Method::POST, url.clone(), Some(&heartbeat_body())).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(&cert.fingerprint),
        "names the fingerprint: {body}"
    );

    // Expired, unknown and malformed tokens: 401, and nothing is enrolled.
    let secret = cairn_server::auth::generate_token();
    t.server
        .state()
        .db
        .create_enrolment_token(&cairn_configdb::NewEnrolmentToken {
            token_hash: cairn_server::auth::token_hash(&secret),
            roles: vec![cairn_configdb::AgentRole::Proxy],
            created_by: None,
            expires_at: Timestamp::now() - SignedDuration::from_secs(1),
        })
        .await
        .unwrap();
    let (status, body) = enroll(&t, &secret, "late", &csr_pem).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("enrolment token expired")));
    let (status, body) = enroll(&t, &cairn_server::auth::generate_token(), "nobody", &csr_pem).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unknown enrolment token")));
    let (status, _) = enroll(&t, "not-a-token", "nobody", &csr_pem).await;
    assert_eq!(status, 401);

    // Roles beyond the token's, a bad CSR and a bad name are refused without using the token.
    let token = new_token(&t, json!(["proxy"])).await;
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/agents/enroll",
            None,
            Some(
                &json!({"token": token, "name": "greedy", "csr_pem": csr_pem, "roles": ["repository"],
                "version": "1", "max_tasks": 1, "free_bytes": 0}),
            ),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = enroll(&t, &token, "bad-csr", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = enroll(&t, &token, "no spaces", &csr_pem).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = enroll(&t, &token, "fine", &csr_pem).await;
    assert_eq!(status, 201, "the token survived the refusals: {body}");
    assert_eq!(t.get("/api/v1/agents").await.as_array().unwrap().len(), 1);

    // Tokens: administrator only, roles required, lifetime bounded.
    let viewer = t.user("vic", "viewer").await;
    let (status, _) = t
        .call(
            Method::POST,
            "/api/v1/agents/tokens",
            Some(&viewer),
            Some(&json!({"roles": ["proxy"]})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = t.post("/api/v1/agents/tokens", json!({"roles": []})).await;
    assert_eq!(status, 422);
    let (status, _) = t
        .post(
            "/api/v1/agents/tokens",
            json!({"roles": ["proxy"], "expires_in_secs": 0}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, body) = t.post("/api/v1/agents/tokens", json!({"roles": ["gateway"]})).await;
    assert_eq!(status, 201);
    let expires: Timestamp = body["expires_at"].as_str().unwrap().parse().unwrap();
    let left = expires.duration_since(Timestamp::now());
    assert!(left > SignedDuration::from_secs(3500), "one hour by default: {left:?}");

    // Users without client certificates keep working on the same listener.
    let (status, _) = t.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(status, 200);
    t.stop().await;
}
both_backends!(forged_unknown_and_refused_enrolments);

async fn a_renewed_certificate_replaces_the_old_one_at_its_first_use(backend: Backend) {
    let t = TestServer::start(backend, "agents_renew").await;
    let token = new_token(&t, json!(["proxy"])).await;
    let (key, csr_pem) = csr("proxy07");
    let (status, enrolled) = enroll(&t, &token, "proxy07", &csr_pem).await;
    assert_eq!(status, 201, "{enrolled}");
    let id = enrolled["agent_id"].as_i64().unwrap();
    let old = agent_client(&t, enrolled["certificate_pem"].as_str().unwrap(), &key);
    let heartbeat = format!("{}/api/v1/agents/heartbeat", t.base);
    let renew = format!("{}/api/v1/agents/renew", t.base);

    // A year left and nobody asked: not due.
    let (status, seen) = send(&old, Method::POST, heartbeat.clone(), Some(&heartbeat_body())).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["renew_certificate"], false, "{seen}");

    // Only an administrator asks for a renewal; the next heartbeat's answer says so.
    let viewer = t.user("vic", "viewer").await;
    let ask = format!("/api/v1/agents/{id}/renew");
    let (status, _) = t.call(Method::POST, &ask, Some(&viewer), None).await;
    assert_eq!(status, 403);
    let (status, asked) = t.call(Method::POST, &ask, Some(&t.admin), None).await;
    assert_eq!(status, 200, "{asked}");
    assert!(asked["renew_requested_at"].is_string(), "{asked}");
    let (_, seen) = send(&old, Method::POST, heartbeat.clone(), Some(&heartbeat_body())).await;
    assert_eq!(seen["renew_certificate"], true, "{seen}");

    // The renewal route needs the agent's certificate, not a user's token, and a good request.
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/agents/renew",
            Some(&t.admin),
            Some(&json!({"csr_pem": csr_pem})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = send(&old, Method::POST, renew.clone(), Some(&json!({"csr_pem": "junk"}))).await;
    assert_eq!(status, 422, "{body}");

    // Renewed: a new certificate for the new key, same name and id, from the server's CA.
    let (new_key, new_csr) = csr("proxy07");
    let (status, renewed) = send(&old, Method::POST, renew.clone(), Some(&json!({"csr_pem": new_csr}))).await;
    assert_eq!(status, 200, "{renewed}");
    let new_pem = renewed["certificate_pem"].as_str().unwrap().to_owned();
    let der = CertificateDer::from_pem_slice(new_pem.as_bytes()).unwrap();
    assert_eq!(renewed["cert_fingerprint"].as_str().unwrap(), fingerprint(&der));
    assert_ne!(renewed["cert_fingerprint"], enrolled["cert_fingerprint"]);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(cert.subject().to_string().contains("CN=proxy07"), "{}", cert.subject());
    assert_eq!(&*cert.public_key().subject_public_key.data, new_key.public_key_raw());
    let ca_file = std::fs::read_to_string(t.server.ca_path()).unwrap();
    let ca_der = CertificateDer::from_pem_slice(ca_file.as_bytes()).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the server's CA");

    // Until it is used, the old certificate still works (an agent that lost the answer is not
    // locked out) and the list still pins the old one.
    let (status, seen) = send(&old, Method::POST, heartbeat.clone(), Some(&heartbeat_body())).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["cert_fingerprint"], enrolled["cert_fingerprint"]);

    // Its first use makes it the only one.
    let new = agent_client(&t, &new_pem, &new_key);
    let (status, seen) = send(&new, Method::POST, heartbeat.clone(), Some(&heartbeat_body())).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["cert_fingerprint"], renewed["cert_fingerprint"]);
    assert_eq!(seen["renew_certificate"], false, "{seen}");
    assert!(seen["renew_requested_at"].is_null(), "{seen}");
    assert_eq!(seen["cert_not_after"], renewed["cert_not_after"]);
    // A fresh connection with the old certificate (the old client may reuse its connection,
    // which still authenticates it by the old certificate).
    let old_again = agent_client(&t, enrolled["certificate_pem"].as_str().unwrap(), &key);
    let (status, body) = send(&old_again, Method::POST, heartbeat.clone(), Some(&heartbeat_body())).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("belongs to no enrolled agent"),
        "{body}"
    );
    let list = t.get("/api/v1/agents").await;
    assert_eq!(list[0]["cert_fingerprint"], renewed["cert_fingerprint"]);

    // A revoked agent can neither renew nor be asked to.
    let (status, _) = t.delete(&format!("/api/v1/agents/{id}")).await;
    assert_eq!(status, 200);
    let (_, another) = csr("proxy07");
    let (status, body) = send(&new, Method::POST, renew, Some(&json!({"csr_pem": another}))).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = t.call(Method::POST, &ask, Some(&t.admin), None).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = t
        .call(Method::POST, "/api/v1/agents/9999/renew", Some(&t.admin), None)
        .await;
    assert_eq!(status, 404);
    t.stop().await;
}
both_backends!(a_renewed_certificate_replaces_the_old_one_at_its_first_use);
