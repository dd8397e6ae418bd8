//! Bad input and attacks against a real coordinator over real TLS: wrong, expired or missing
//! certificates, the wrong kind of certificate, identity claims that disagree with the
//! certificate, bad tokens, malformed and oversize requests, bad config files. Each test fails
//! if the protection it names is removed.

use std::path::Path;
use std::sync::Arc;

use pitcrew_coordinator::ca::{Ca, make_csr};
use pitcrew_coordinator::store::{Store, TokenRecord};
use pitcrew_proto::tls;
use pitcrew_proto::v1::{
    self, admin_client::AdminClient, agent_session_client::AgentSessionClient,
    enrollment_client::EnrollmentClient,
};
use pitcrew_tests::{Agent, Coordinator, bin, wait_connected};
use tonic::transport::Channel;

fn runtime() -> tokio::runtime::Runtime {
    tls::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A channel to the coordinator trusting its CA, presenting `identity` (PEM cert and key) if any.
async fn channel(c: &Coordinator, identity: Option<(&str, &str)>) -> Channel {
    let ca = tls::load_certs(&c.dir.join("ca.crt")).unwrap();
    let identity = identity.map(|(cert, key)| {
        (
            tls::certs_from_pem(cert, "cert").unwrap(),
            tls::key_from_pem(key, "key").unwrap(),
        )
    });
    let config = tls::client_config(&ca, identity).unwrap();
    tls::connect(&c.address(), Arc::new(config)).await.unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn hello(host_id: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            facts: Some(v1::Facts {
                host_id: host_id.into(),
                hostname: "x".into(),
                ..Default::default()
            }),
            agent_version: "test".into(),
            ..Default::default()
        })),
    }
}

/// Opens a session with `identity` and a hello naming `claimed`; returns the first error, if any.
async fn open_session(
    c: &Coordinator,
    identity: (&str, &str),
    claimed: &str,
) -> Result<(), tonic::Status> {
    let mut client = AgentSessionClient::new(channel(c, Some(identity)).await);
    let outbound = tokio_stream::iter(vec![hello(claimed)]).chain(tokio_stream::pending());
    let mut inbound = client.connect(outbound).await?.into_inner();
    // A session is only accepted once the coordinator answers (its welcome).
    inbound
        .message()
        .await?
        .map(|_| ())
        .ok_or_else(|| tonic::Status::unknown("no welcome"))
}

use tokio_stream::StreamExt;

/// A coordinator with one enrolled, connected agent.
fn fleet_with_one_agent() -> (Coordinator, Agent) {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    let token = coordinator.token("worker", &[], 1);
    let mut agent = Agent::new(&coordinator, "w1", &token, "").unwrap();
    agent.start().unwrap();
    wait_connected(&coordinator, &agent.machine_id);
    (coordinator, agent)
}

fn agent_identity(agent: &Agent) -> (String, String) {
    (
        read(&agent.state_dir().join("host.crt")),
        read(&agent.state_dir().join("host.key")),
    )
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_logged() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    let other = Coordinator::init().unwrap();
    let out = std::process::Command::new(bin("pitcrew"))
        .arg("hosts")
        .envs(coordinator.operator_env())
        .env("PITCREW_CERT", other.dir.join("operator/admin.crt"))
        .env("PITCREW_KEY", other.dir.join("operator/admin.key"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a foreign operator certificate was accepted"
    );
    // And the real one works, so the refusal is about the certificate.
    assert!(coordinator.cli(&["hosts"]).status.success());
    pitcrew_tests::wait_for("the refusal to be logged", || {
        coordinator
            .log()
            .contains("refused a TLS connection")
            .then_some(())
    });
}

#[test]
fn an_expired_host_certificate_is_refused() {
    let (coordinator, agent) = fleet_with_one_agent();
    let ca = Ca::load(&coordinator.dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (expired, key) = ca
        .issue_host_between(
            &agent.machine_id,
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let rt = runtime();
    let result = rt.block_on(open_session(
        &coordinator,
        (&expired.cert_pem, &key),
        &agent.machine_id,
    ));
    assert!(result.is_err(), "an expired certificate opened a session");
    // A valid certificate of the same host still works.
    let (cert, key) = agent_identity(&agent);
    rt.block_on(async {
        let mut session = AgentSessionClient::new(channel(&coordinator, Some((&cert, &key))).await);
        let renewed = session
            .renew(v1::RenewRequest {
                csr_der: make_csr().unwrap().0,
            })
            .await;
        assert!(renewed.is_ok(), "{renewed:?}");
    });
}

#[test]
fn no_certificate_is_refused_by_admin_and_sessions() {
    let (coordinator, _agent) = fleet_with_one_agent();
    let rt = runtime();
    rt.block_on(async {
        let mut admin = AdminClient::new(channel(&coordinator, None).await);
        let error = admin
            .list_hosts(v1::ListHostsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated, "{error:?}");
        let mut session = AgentSessionClient::new(channel(&coordinator, None).await);
        let error = session
            .renew(v1::RenewRequest { csr_der: vec![] })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated, "{error:?}");
    });
}

#[test]
fn an_agent_certificate_cannot_use_admin_and_an_operator_cannot_open_a_session() {
    let (coordinator, agent) = fleet_with_one_agent();
    let out = std::process::Command::new(bin("pitcrew"))
        .arg("hosts")
        .envs(coordinator.operator_env())
        .env("PITCREW_CERT", agent.state_dir().join("host.crt"))
        .env("PITCREW_KEY", agent.state_dir().join("host.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an operator"), "{stderr}");

    let operator = (
        read(&coordinator.dir.join("operator/admin.crt")),
        read(&coordinator.dir.join("operator/admin.key")),
    );
    let rt = runtime();
    let error = rt
        .block_on(open_session(
            &coordinator,
            (&operator.0, &operator.1),
            "admin",
        ))
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    assert!(error.message().contains("not a host"), "{error:?}");
}

#[test]
fn a_hello_claiming_another_hosts_id_is_refused_and_logged() {
    let (coordinator, agent) = fleet_with_one_agent();
    let (cert, key) = agent_identity(&agent);
    let rt = runtime();
    let error = rt
        .block_on(open_session(
            &coordinator,
            (&cert, &key),
            "ffffffffffffffffffffffffffffffff",
        ))
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    assert!(error.message().contains("claims host ffff"), "{error:?}");
    let events = coordinator.cli_json(&["events", "--host", &agent.machine_id]);
    let audit = events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "audit" && e["message"].as_str().unwrap().contains("claims"));
    assert!(audit, "the refusal is in the audit trail: {events}");
    assert!(
        coordinator
            .log()
            .contains("refused a hello claiming another host's id")
    );
}

#[test]
fn expired_revoked_and_used_up_tokens_are_refused_saying_which() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    // An expired token, written straight into the coordinator's store (it is SQLite in WAL mode,
    // so a second writer is safe): expiry is checked against the clock, not trusted to cleanup.
    let expired_secret = "pcj_deadbeef_expired";
    let store = Store::open(&coordinator.dir.join("pitcrew.db")).unwrap();
    let record = TokenRecord {
        id: "deadbeef".into(),
        hash: pitcrew_coordinator::tokens::hash(expired_secret),
        role: "worker".into(),
        labels: Default::default(),
        uses_left: 1,
        uses_total: 1,
        expires_at_ms: pitcrew_proto::now_ms() - 1000,
        revoked: false,
        created_at_ms: 0,
        created_by: "test".into(),
        replace_host: String::new(),
    };
    futures::executor::block_on(store.create_token(record)).unwrap();
    let revoked = coordinator.token("worker", &[], 1);
    let id = coordinator
        .cli_json(&["token", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] != "deadbeef")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(coordinator.cli(&["token", "revoke", &id]).status.success());
    let used = coordinator.token("worker", &[], 1);
    let first = Agent::new(&coordinator, "first", &used, "").unwrap();
    assert!(enroll(&first, &used).0, "a fresh token works once");

    for (token, word) in [
        (expired_secret, "expired"),
        (revoked.as_str(), "revoked"),
        (used.as_str(), "used up"),
        ("pcj_nonsense", "not known"),
    ] {
        let agent = Agent::new(&coordinator, "x", token, "").unwrap();
        let (ok, stderr) = enroll(&agent, token);
        assert!(!ok, "token {word} was accepted");
        assert!(
            stderr.contains(word),
            "refusal for a {word} token says so: {stderr}"
        );
        assert!(!agent.state_dir().join("host.crt").exists());
    }
}

fn enroll(agent: &Agent, token: &str) -> (bool, String) {
    let out = std::process::Command::new(bin("pitcrew-agent"))
        .args(["enroll", "--config"])
        .arg(&agent.config)
        .env("PITCREW_JOIN_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_and_oversize_enrollments_get_clear_errors_and_the_coordinator_keeps_serving() {
    let (coordinator, agent) = fleet_with_one_agent();
    let token = coordinator.token("worker", &[], 1);
    let rt = runtime();
    rt.block_on(async {
        let pinned = Arc::new(tls::pinned_client_config(&coordinator.fingerprint).unwrap());
        let mut enrollment = EnrollmentClient::new(
            tls::connect(&coordinator.address(), pinned.clone())
                .await
                .unwrap(),
        );
        let error = enrollment
            .enroll(v1::EnrollRequest {
                token: token.clone(),
                csr_der: b"garbage".to_vec(),
                host_id: "abc".into(),
                hostname: "h".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("certificate signing request"),
            "{error:?}"
        );

        let huge = vec![0u8; pitcrew_proto::MAX_MESSAGE_BYTES + 1024];
        let mut enrollment =
            EnrollmentClient::new(tls::connect(&coordinator.address(), pinned).await.unwrap());
        let error = enrollment
            .enroll(v1::EnrollRequest {
                token: token.clone(),
                csr_der: huge,
                host_id: "abc".into(),
                hostname: "h".into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                error.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
            ),
            "{error:?}"
        );
        assert!(
            error.message().to_lowercase().contains("message"),
            "{error:?}"
        );
    });
    // The token was not spent on the bad requests, the connected agent is still there, and
    // the coordinator answers.
    let tokens = coordinator.cli_json(&["token", "ls"]);
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["uses_left"] == 1)
    );
    let host = coordinator.host(&agent.machine_id).unwrap();
    assert_eq!(host["connected"], true);
}

#[test]
fn a_join_token_cannot_take_over_an_enrolled_host() {
    let (coordinator, agent) = fleet_with_one_agent();
    let before = coordinator.host(&agent.machine_id).unwrap();
    // Someone who knows the host's machine id (it is not secret) and holds a token for another
    // cluster and role tries to enroll under it.
    let token = coordinator.token("manager", &[("cluster", "elsewhere")], 1);
    let impostor = Agent::new(&coordinator, "impostor", &token, "").unwrap();
    std::fs::write(
        impostor.dir.join("machine-id"),
        format!("{}\n", agent.machine_id),
    )
    .unwrap();
    let (ok, stderr) = enroll(&impostor, &token);
    assert!(!ok, "the impostor enrolled");
    assert!(
        stderr.contains("already enrolled") && stderr.contains("--replace"),
        "{stderr}"
    );
    // The host is untouched: same certificate, role and labels, its session still up.
    let after = coordinator.host(&agent.machine_id).unwrap();
    assert_eq!(after["cert_serial"], before["cert_serial"]);
    assert_eq!(after["role"], before["role"]);
    assert_eq!(after["labels"], before["labels"]);
    assert_eq!(after["hostname"], before["hostname"]);
    assert_eq!(after["connected"], true);
    // The token is not spent, and the refusal is audited.
    let tokens = coordinator.cli_json(&["token", "ls"]);
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["role"] == "manager" && t["uses_left"] == 1),
        "{tokens}"
    );
    let audit = coordinator.cli_json(&["events", "--limit", "0"]);
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already enrolled")),
        "{audit}"
    );
}

#[test]
fn a_rebuilt_host_reenrolls_and_its_old_certificate_stops_working() {
    let (coordinator, mut agent) = fleet_with_one_agent();
    let (old_cert, old_key) = agent_identity(&agent);
    agent.kill();
    // The host is rebuilt: same machine id, empty state, a token made to re-enroll it.
    std::fs::remove_dir_all(agent.state_dir()).unwrap();
    let token = coordinator.cli_json(&["token", "create", "--replace", &agent.machine_id])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, stderr) = enroll(&agent, &token);
    assert!(ok, "{stderr}");
    agent.start().unwrap();
    wait_connected(&coordinator, &agent.machine_id);
    let rt = runtime();
    let error = rt
        .block_on(open_session(
            &coordinator,
            (&old_cert, &old_key),
            &agent.machine_id,
        ))
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    assert!(error.message().contains("replaced"), "{error:?}");
    assert_eq!(coordinator.hosts().len(), 1, "still one host");
}

#[test]
fn a_wrong_ca_fingerprint_is_refused_at_enrollment() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    let token = coordinator.token("worker", &[], 1);
    let agent = Agent::new(&coordinator, "w1", &token, "").unwrap();
    let text = read(&agent.config).replace(&coordinator.fingerprint, &"ab".repeat(32));
    std::fs::write(&agent.config, text).unwrap();
    let (ok, stderr) = enroll(&agent, &token);
    assert!(!ok);
    assert!(
        stderr.contains("pinned fingerprint") || stderr.contains("cannot reach"),
        "{stderr}"
    );
    // No trust on first use: nothing was stored, and the token is still unused.
    assert!(!agent.state_dir().join("ca.crt").exists());
    let tokens = coordinator.cli_json(&["token", "ls"]);
    assert_eq!(tokens[0]["uses_left"], 1);
}

#[test]
fn corrupt_or_missing_agent_config_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "coordinators = [\"https://127.0.0.1:1\"]\nheartbeat_seconds = \"soon\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin("pitcrew-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent.toml") && stderr.contains("heartbeat_seconds"),
        "{stderr}"
    );
    let out = std::process::Command::new(bin("pitcrew-agent"))
        .args(["run", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
