//! Agents and their enrolment tokens; every test runs on SQLite and on PostgreSQL.

#[allow(dead_code)]
mod common;

use cairn_configdb::{
    AgentRole, AgentStatus, EnrolRefusal, Error, IssuedCertificate, NewAgent, NewEnrolmentToken, Role, roles_from_text,
    roles_to_text,
};
use common::Fixture;
use jiff::{SignedDuration, Timestamp};

fn agent(name: &str) -> NewAgent {
    NewAgent {
        name: name.into(),
        roles: None,
        version: "0.1.0".into(),
        max_tasks: 4,
        free_bytes: 1 << 40,
        address: Some("10.0.0.7".into()),
    }
}

/// A signer that names the id it was given in the fingerprint and hands back a marker.
fn signer(tag: &str) -> impl FnOnce(i64) -> Result<IssuedCertificate<String>, String> + use<> {
    let tag = tag.to_owned();
    move |id| {
        Ok(IssuedCertificate {
            fingerprint: format!("{:0>64}", format!("{id}{}", tag.len())),
            not_after: Timestamp::now() + SignedDuration::from_hours(24 * 365),
            extra: format!("cert of {id} ({tag})"),
        })
    }
}

async fn token(f: &Fixture, hash: &str, roles: &[AgentRole], expires_in: SignedDuration) {
    f.db.create_enrolment_token(&NewEnrolmentToken {
        token_hash: hash.into(),
        roles: roles.to_vec(),
        created_by: None,
        expires_at: Timestamp::now() + expires_in,
    })
    .await
    .expect("create enrolment token");
}

#[test]
fn roles_round_trip_in_a_fixed_order() {
    let roles = roles_from_text("repository, proxy,proxy").unwrap();
    assert_eq!(roles, [AgentRole::Proxy, AgentRole::Repository]);
    assert_eq!(roles_to_text(&roles), "proxy,repository");
    assert!(roles_from_text("proxy,mount").is_err());
    assert!(roles_from_text("").unwrap().is_empty());
}

async fn a_token_enrols_exactly_one_agent(f: &Fixture) {
    let hour = SignedDuration::from_hours(1);
    token(f, "h1", &[AgentRole::Proxy, AgentRole::Repository], hour).await;
    let (agent1, issued) =
        f.db.enrol_agent("h1", Timestamp::now(), &agent("proxy01"), signer("a"))
            .await
            .unwrap()
            .expect("first use enrols");
    assert_eq!(issued.extra, format!("cert of {} (a)", agent1.id));
    assert_eq!(agent1.cert_fingerprint, issued.fingerprint);
    assert_eq!(agent1.roles, [AgentRole::Proxy, AgentRole::Repository]);
    assert_eq!((agent1.max_tasks, agent1.free_bytes), (4, 1 << 40));
    assert!(agent1.revoked_at.is_none() && agent1.last_seen_at.is_none());

    let again =
        f.db.enrol_agent("h1", Timestamp::now(), &agent("proxy02"), signer("b"))
            .await
            .unwrap();
    assert_eq!(again.unwrap_err(), EnrolRefusal::Used);
    assert_eq!(EnrolRefusal::Used.to_string(), "enrolment token already used");
    let unknown =
        f.db.enrol_agent("nope", Timestamp::now(), &agent("proxy03"), signer("c"))
            .await
            .unwrap();
    assert_eq!(unknown.unwrap_err(), EnrolRefusal::Unknown);
    assert_eq!(f.db.list_agents().await.unwrap().len(), 1, "refusals create nothing");

    let tokens = f.db.list_enrolment_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].used_at.is_some());
    assert_eq!(tokens[0].agent_id, Some(agent1.id));

    // Looked up by the pinned fingerprint only.
    let found =
        f.db.find_agent_by_fingerprint(&issued.fingerprint)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(found, agent1);
    assert!(f.db.find_agent_by_fingerprint(&"0".repeat(64)).await.unwrap().is_none());
}
both_backends!(a_token_enrols_exactly_one_agent);

async fn racing_enrolments_with_one_token_let_one_win(f: &Fixture) {
    token(f, "race", &[AgentRole::Proxy], SignedDuration::from_hours(1)).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let db = f.db.clone();
        tasks.push(tokio::spawn(async move {
            db.enrol_agent("race", Timestamp::now(), &agent(&format!("racer{i}")), signer("r"))
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(refusal) => assert_eq!(refusal, EnrolRefusal::Used),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(f.db.list_agents().await.unwrap().len(), 1);
}
both_backends!(racing_enrolments_with_one_token_let_one_win);

async fn expired_tokens_and_ungranted_roles_are_refused(f: &Fixture) {
    token(f, "old", &[AgentRole::Proxy], SignedDuration::from_secs(-1)).await;
    let r =
        f.db.enrol_agent("old", Timestamp::now(), &agent("late"), signer("x"))
            .await
            .unwrap();
    assert_eq!(r.unwrap_err(), EnrolRefusal::Expired);

    token(f, "proxy-only", &[AgentRole::Proxy], SignedDuration::from_hours(1)).await;
    let mut greedy = agent("greedy");
    greedy.roles = Some(vec![AgentRole::Proxy, AgentRole::Gateway]);
    let r =
        f.db.enrol_agent("proxy-only", Timestamp::now(), &greedy, signer("x"))
            .await
            .unwrap();
    assert_eq!(r.unwrap_err(), EnrolRefusal::RolesNotGranted);
    // The refused request did not use the token up.
    let (a, _) =
        f.db.enrol_agent("proxy-only", Timestamp::now(), &agent("modest"), signer("x"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(a.roles, [AgentRole::Proxy]);

    assert_eq!(f.db.delete_expired_enrolment_tokens(Timestamp::now()).await.unwrap(), 1);
    assert_eq!(
        f.db.list_enrolment_tokens().await.unwrap().len(),
        1,
        "the used one stays"
    );

    let err =
        f.db.create_enrolment_token(&NewEnrolmentToken {
            token_hash: "none".into(),
            roles: vec![],
            created_by: None,
            expires_at: Timestamp::now(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}
both_backends!(expired_tokens_and_ungranted_roles_are_refused);

async fn a_taken_name_or_failed_signing_keeps_the_token(f: &Fixture) {
    let hour = SignedDuration::from_hours(1);
    token(f, "t1", &[AgentRole::Repository], hour).await;
    token(f, "t2", &[AgentRole::Repository], hour).await;
    f.db.enrol_agent("t1", Timestamp::now(), &agent("repo01"), signer("1"))
        .await
        .unwrap()
        .unwrap();
    let err =
        f.db.enrol_agent("t2", Timestamp::now(), &agent("repo01"), signer("2"))
            .await
            .unwrap_err();
    assert!(matches!(err, Error::Duplicate { .. }), "{err}");
    let err =
        f.db.enrol_agent("t2", Timestamp::now(), &agent("repo02"), |_| {
            Err::<IssuedCertificate<()>, _>("the CA key is unreadable".to_string())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the CA key is unreadable"), "{err}");
    let (a, _) =
        f.db.enrol_agent("t2", Timestamp::now(), &agent("repo02"), signer("2"))
            .await
            .unwrap()
            .expect("t2 is still usable");
    assert_eq!(a.name, "repo02");
    assert_eq!(f.db.list_agents().await.unwrap().len(), 2);
}
both_backends!(a_taken_name_or_failed_signing_keeps_the_token);

async fn heartbeats_and_revocation(f: &Fixture) {
    let admin = f.db.create_user("admin", "x", Role::Administrator).await.unwrap();
    f.db.create_enrolment_token(&NewEnrolmentToken {
        token_hash: "hb".into(),
        roles: vec![AgentRole::Proxy],
        created_by: Some(admin.id),
        expires_at: Timestamp::now() + SignedDuration::from_hours(1),
    })
    .await
    .unwrap();
    let (a, issued) =
        f.db.enrol_agent("hb", Timestamp::now(), &agent("p1"), signer("p"))
            .await
            .unwrap()
            .unwrap();
    let seen = Timestamp::now();
    let status = AgentStatus {
        version: "0.2.0".into(),
        max_tasks: 8,
        free_bytes: 12345,
        address: None,
    };
    let after = f.db.record_heartbeat(a.id, &status, seen).await.unwrap();
    assert_eq!(after.version, "0.2.0");
    assert_eq!((after.max_tasks, after.free_bytes), (8, 12345));
    assert_eq!(
        after.address.as_deref(),
        Some("10.0.0.7"),
        "an absent address keeps the old one"
    );
    assert_eq!(
        after.last_seen_at.map(|t| t.as_microsecond()),
        Some(seen.as_microsecond())
    );
    let bad = AgentStatus {
        max_tasks: 0,
        ..status.clone()
    };
    assert!(matches!(
        f.db.record_heartbeat(a.id, &bad, seen).await.unwrap_err(),
        Error::Invalid { .. }
    ));

    let revoked_at = Timestamp::now();
    let revoked = f.db.revoke_agent(a.id, revoked_at).await.unwrap();
    assert_eq!(
        revoked.revoked_at.map(|t| t.as_microsecond()),
        Some(revoked_at.as_microsecond())
    );
    let again =
        f.db.revoke_agent(a.id, revoked_at + SignedDuration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at, "the first revocation time stays");
    let err =
        f.db.record_heartbeat(a.id, &status, Timestamp::now())
            .await
            .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { what } if what.contains("revoked")),
        "{err}"
    );
    // The row stays, found by its fingerprint, so the server can say why it refuses.
    let found =
        f.db.find_agent_by_fingerprint(&issued.fingerprint)
            .await
            .unwrap()
            .unwrap();
    assert!(found.revoked_at.is_some());
    assert_eq!(f.db.list_agents().await.unwrap().len(), 1);
    assert!(matches!(
        f.db.revoke_agent(a.id + 100, revoked_at).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    assert!(matches!(
        f.db.record_heartbeat(a.id + 100, &status, seen).await.unwrap_err(),
        Error::NotFound { .. }
    ));

    // Deleting the creator keeps the token (created_by becomes NULL).
    f.db.delete_user(admin.id).await.unwrap();
    assert_eq!(f.db.list_enrolment_tokens().await.unwrap()[0].created_by, None);
}
both_backends!(heartbeats_and_revocation);

async fn a_renewal_is_staged_then_promoted_by_its_first_use(f: &Fixture) {
    token(f, "h9", &[AgentRole::Proxy], SignedDuration::from_hours(1)).await;
    let (a, _) =
        f.db.enrol_agent("h9", Timestamp::now(), &agent("proxy09"), signer("r"))
            .await
            .unwrap()
            .unwrap();
    let old = a.cert_fingerprint.clone();
    assert!(a.next_cert_fingerprint.is_none() && a.renew_requested_at.is_none());

    // An administrator asks; asking again keeps the first time.
    let asked_at = Timestamp::now();
    let asked = f.db.request_agent_renewal(a.id, asked_at).await.unwrap();
    assert!(asked.renew_requested_at.is_some());
    let again =
        f.db.request_agent_renewal(a.id, asked_at + SignedDuration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(again.renew_requested_at, asked.renew_requested_at);

    // Staged: both certificates find the agent; the current one is unchanged.
    let until = Timestamp::now() + SignedDuration::from_hours(24 * 365);
    let first = "a".repeat(64);
    f.db.stage_agent_certificate(a.id, &first, until).await.unwrap();
    // An answer that never arrived: a second renewal replaces the staged certificate.
    let new = "b".repeat(64);
    let staged = f.db.stage_agent_certificate(a.id, &new, until).await.unwrap();
    assert_eq!(staged.cert_fingerprint, old);
    assert_eq!(staged.next_cert_fingerprint.as_deref(), Some(new.as_str()));
    assert!(f.db.find_agent_by_fingerprint(&first).await.unwrap().is_none());
    for fp in [&old, &new] {
        let found = f.db.find_agent_by_fingerprint(fp).await.unwrap().expect("found");
        assert_eq!(found.id, a.id, "{fp}");
    }
    // Promoting a certificate that is not staged does nothing.
    assert!(f.db.promote_agent_certificate(a.id, &first).await.unwrap().is_none());

    // The first use makes it current; the old one is forgotten and the request is done.
    let promoted =
        f.db.promote_agent_certificate(a.id, &new)
            .await
            .unwrap()
            .expect("promoted");
    assert_eq!(promoted.cert_fingerprint, new);
    assert!(promoted.next_cert_fingerprint.is_none() && promoted.next_cert_not_after.is_none());
    assert!(promoted.renew_requested_at.is_none());
    assert_eq!(promoted.cert_not_after.as_second(), until.as_second());
    assert!(f.db.find_agent_by_fingerprint(&old).await.unwrap().is_none());
    assert!(
        f.db.promote_agent_certificate(a.id, &new).await.unwrap().is_none(),
        "only once"
    );

    // A revoked agent can neither stage nor be asked.
    f.db.revoke_agent(a.id, Timestamp::now()).await.unwrap();
    let err =
        f.db.stage_agent_certificate(a.id, &"c".repeat(64), until)
            .await
            .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { what } if what.contains("proxy09")),
        "{err}"
    );
    let err = f.db.request_agent_renewal(a.id, Timestamp::now()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    let err = f.db.request_agent_renewal(9999, Timestamp::now()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}
both_backends!(a_renewal_is_staged_then_promoted_by_its_first_use);
