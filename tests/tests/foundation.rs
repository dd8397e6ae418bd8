//! Enrollment, sessions and the host inventory over real processes and real mTLS on loopback:
//! a real coordinator, three real agents, the real `pitcrew` CLI.

use std::time::Instant;

use pitcrew_tests::{Agent, Coordinator, wait_connected, wait_for};

#[test]
fn three_agents_enroll_report_facts_survive_a_coordinator_restart_and_show_disconnects() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();

    let worker_token = coordinator.token("worker", &[("cluster", "swarm-a")], 2);
    let manager_token =
        coordinator.token("manager", &[("cluster", "swarm-a"), ("leader", "true")], 1);
    let mut agents = vec![
        Agent::new(&coordinator, "w1", &worker_token, "").unwrap(),
        Agent::new(&coordinator, "w2", &worker_token, "").unwrap(),
        Agent::new(&coordinator, "m1", &manager_token, "").unwrap(),
    ];
    for agent in &mut agents {
        agent.start().unwrap();
    }
    for agent in &agents {
        let host = wait_connected(&coordinator, &agent.machine_id);
        let facts = &host["facts"];
        assert_eq!(facts["host_id"], agent.machine_id.as_str());
        assert!(!facts["hostname"].as_str().unwrap().is_empty());
        assert!(!facts["kernel"].as_str().unwrap().is_empty());
        assert!(facts["cpus"].as_u64().unwrap() >= 1);
        assert!(facts["memory_bytes"].as_u64().unwrap() > 0);
        assert!(facts["uptime_seconds"].as_u64().is_some());
        assert!(facts["reboot_required"].is_boolean());
        assert!(facts["shm_tmpfs_mounts"].as_u64().is_some());
        assert_eq!(facts["agent_version"], env!("CARGO_PKG_VERSION"));
        let expected_role = if agent.name.starts_with('m') {
            "manager"
        } else {
            "worker"
        };
        assert_eq!(host["role"], expected_role);
        assert_eq!(host["labels"]["cluster"], "swarm-a");
    }
    // The key was made on the host and is private to it.
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(agents[0].state_dir().join("host.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);

    // The tokens are used up: a fourth host cannot join with them.
    let extra = Agent::new(&coordinator, "w3", &worker_token, "").unwrap();
    let out = std::process::Command::new(pitcrew_tests::bin("pitcrew-agent"))
        .args(["enroll", "--config"])
        .arg(&extra.config)
        .env("PITCREW_JOIN_TOKEN", &worker_token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("used up"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A killed agent shows as disconnected within the heartbeat timeout (3 s here; the TCP
    // reset usually tells sooner).
    let killed = agents.remove(0);
    let mut killed = killed;
    let started = Instant::now();
    killed.kill();
    wait_for("the killed agent to show disconnected", || {
        coordinator
            .host(&killed.machine_id)
            .filter(|h| h["connected"] == false)
    });
    assert!(
        started.elapsed().as_secs() < 3 + 10,
        "took {:?}",
        started.elapsed()
    );

    // Restart the coordinator: the store is kept and every running agent reconnects by itself
    // (their tokens are used up, so this proves no new token was needed).
    assert_eq!(
        coordinator.stop(),
        Some(0),
        "graceful stop exits 0: {}",
        coordinator.log()
    );
    coordinator.start().unwrap();
    let hosts = coordinator.hosts();
    assert_eq!(hosts.len(), 3, "the store kept every host: {hosts:?}");
    for agent in &agents {
        wait_connected(&coordinator, &agent.machine_id);
    }
    let killed_host = coordinator.host(&killed.machine_id).unwrap();
    assert_eq!(killed_host["connected"], false);

    // The table form names every host with its state.
    let table = coordinator.cli(&["hosts"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("disconnected") && text.contains("connected") && text.contains("manager"),
        "{text}"
    );

    // `hosts show` finds a host by id and shows its facts.
    let shown = coordinator.cli_json(&["hosts", "show", &agents[0].machine_id]);
    assert_eq!(shown["host_id"], agents[0].machine_id.as_str());
    assert!(
        shown["facts"]["boot_id"]
            .as_str()
            .is_some_and(|b| !b.is_empty())
    );
}

#[test]
fn tokens_are_listed_without_secrets_and_can_be_revoked() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    let token = coordinator.token("worker", &[], 3);
    let listed = coordinator.cli_json(&["token", "ls"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["uses_left"], 3);
    let text = serde_json::to_string(listed).unwrap();
    assert!(
        !text.contains(&token),
        "a listing must never show the token"
    );
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let revoked = coordinator.cli_json(&["token", "revoke", &id]);
    assert_eq!(revoked["revoked"], true);

    let agent = Agent::new(&coordinator, "w1", &token, "").unwrap();
    let out = std::process::Command::new(pitcrew_tests::bin("pitcrew-agent"))
        .args(["enroll", "--config"])
        .arg(&agent.config)
        .env("PITCREW_JOIN_TOKEN", &token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("revoked"), "{stderr}");
    // The secret is stored only hashed: it appears nowhere in the store file.
    let db = std::fs::read(coordinator.dir.join("pitcrew.db")).unwrap();
    let secret = token.as_bytes();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret),
        "the token was stored in clear"
    );
    assert!(!coordinator.log().contains(&token), "the token was logged");
}

#[test]
fn agents_renew_their_certificate_before_it_expires() {
    let mut coordinator = Coordinator::init().unwrap();
    // Short-lived host certificates: renewal is due after 28 s.
    coordinator.configure("host_cert_lifetime = \"40s\"");
    coordinator.start().unwrap();
    let token = coordinator.token("worker", &[], 1);
    let mut agent = Agent::new(&coordinator, "w1", &token, "").unwrap();
    agent.start().unwrap();
    let first = wait_connected(&coordinator, &agent.machine_id)["cert_serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let cert_before = std::fs::read(agent.state_dir().join("host.crt")).unwrap();
    let renewed = wait_for("the certificate to be renewed", || {
        coordinator
            .host(&agent.machine_id)
            .filter(|h| h["cert_serial"] != first.as_str() && h["connected"] == true)
    });
    assert_ne!(renewed["cert_serial"], first.as_str());
    assert_ne!(
        std::fs::read(agent.state_dir().join("host.crt")).unwrap(),
        cert_before
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.state_dir().join("host.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let audit = coordinator.cli_json(&["events", "--host", &agent.machine_id]);
    assert!(audit.as_array().unwrap().iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap()
            .contains("certificate renewed")
    }));
    agent.kill();
}
