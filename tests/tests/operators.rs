//! Operator identities over real processes: certificates issued by `pitcrew operator add` with
//! a role, roles enforced on the Admin API, revocation in force at the next call (and ending
//! open streams), renewal, and an audit trail that names each operator.
//!
//! Each operator runs the real `pitcrew` CLI with their own certificate and key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pitcrew_tests::{Coordinator, DEADLINE, bin, start_fleet, wait_for};
use serde_json::Value;

/// An operator's certificate and key files.
struct Operator {
    cert: PathBuf,
    key: PathBuf,
}

impl Operator {
    fn in_dir(dir: &Path, name: &str) -> Operator {
        Operator {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn command(&self, c: &Coordinator, args: &[&str]) -> Command {
        let mut command = Command::new(bin("pitcrew"));
        command
            .args(args)
            .envs(c.operator_env())
            .env("PITCREW_CERT", &self.cert)
            .env("PITCREW_KEY", &self.key);
        command
    }

    fn cli(&self, c: &Coordinator, args: &[&str]) -> Output {
        self.command(c, args).output().expect("running pitcrew")
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a refusal: non-zero, PermissionDenied (the CLI says "refused:") and `needle`.
fn refused(out: &Output, what: &str, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} was allowed");
    assert!(
        stderr.contains("refused:") && stderr.contains(needle),
        "{what}: expected a refusal saying {needle:?}, got: {stderr}"
    );
}

/// `pitcrew operator add NAME --role ROLE --out DIR` as the harness's admin.
fn add(c: &Coordinator, dir: &Path, name: &str, role: &str) -> Operator {
    let out = c.cli(&[
        "operator",
        "add",
        name,
        "--role",
        role,
        "--out",
        dir.to_str().unwrap(),
    ]);
    ok(&out, &format!("operator add {name}"));
    let operator = Operator::in_dir(dir, name);
    let mode = std::fs::metadata(&operator.key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private from the start");
    assert!(operator.cert.exists());
    operator
}

/// The audit records of the event log.
fn audit(c: &Coordinator) -> Vec<Value> {
    c.cli_json(&["events", "--limit", "0"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == "audit")
        .collect()
}

fn audited(events: &[Value], actor: &str, words: &str) -> bool {
    events
        .iter()
        .any(|e| e["actor"] == actor && e["message"].as_str().unwrap_or("").contains(words))
}

fn campaign_file(dir: &Path) -> PathBuf {
    let path = dir.join("echo.toml");
    std::fs::write(
        &path,
        "name = \"echo\"\n\n[[steps]]\nname = \"hello\"\naction = \"exec\"\nargv = [\"/bin/echo\", \"hello\"]\n",
    )
    .unwrap();
    path
}

#[test]
fn viewers_read_operators_act_and_only_admins_grant_access() {
    let (c, agents) = start_fleet(&[("w1", "worker")], "[policy]\nexec = [[\"/bin/echo\"]]\n");
    let host = agents[0].machine_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let spec = campaign_file(dir.path());
    let spec = spec.to_str().unwrap();
    let vera = add(&c, dir.path(), "vera", "viewer");
    let otto = add(&c, dir.path(), "otto", "operator");

    // The viewer reads.
    let hosts = ok(&vera.cli(&c, &["hosts", "-o", "json"]), "viewer: hosts");
    assert!(hosts.contains(&host), "{hosts}");
    ok(
        &vera.cli(&c, &["hosts", "show", &host]),
        "viewer: hosts show",
    );
    ok(&vera.cli(&c, &["token", "ls"]), "viewer: token ls");
    ok(&vera.cli(&c, &["campaign", "plan", spec]), "viewer: plan");
    ok(&vera.cli(&c, &["events"]), "viewer: events");
    // ... and is refused every change, told which role it needs.
    refused(
        &vera.cli(&c, &["campaign", "run", spec]),
        "viewer: campaign run",
        "needs role operator",
    );
    refused(
        &vera.cli(&c, &["do", &host, "exec", "--", "/bin/echo", "no"]),
        "viewer: do",
        "needs role operator",
    );
    refused(
        &vera.cli(&c, &["maintenance", "enable", &host]),
        "viewer: maintenance",
        "needs role operator",
    );
    refused(
        &vera.cli(&c, &["token", "create", "--role", "worker"]),
        "viewer: token create",
        "needs role admin",
    );
    refused(
        &vera.cli(&c, &["operator", "ls"]),
        "viewer: operator ls",
        "needs role admin",
    );

    // The operator acts.
    let ran = ok(
        &otto.cli(&c, &["do", &host, "exec", "--", "/bin/echo", "from-otto"]),
        "operator: do",
    );
    assert!(ran.contains("from-otto"), "{ran}");
    let campaign = ok(
        &otto.cli(&c, &["campaign", "run", spec, "-o", "json"]),
        "operator: campaign run",
    );
    let campaign: Value = serde_json::from_str(&campaign).unwrap();
    let id = campaign["id"].as_str().unwrap().to_owned();
    wait_for("the campaign to complete", || {
        let shown = vera.cli(&c, &["campaign", "show", &id, "-o", "json"]);
        let shown: Value = serde_json::from_slice(&shown.stdout).ok()?;
        (shown["state"] == "completed").then_some(())
    });
    // ... but grants nothing.
    refused(
        &otto.cli(&c, &["token", "create", "--role", "worker"]),
        "operator: token create",
        "needs role admin",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    refused(
        &otto.cli(
            &c,
            &[
                "operator",
                "add",
                "mallory",
                "--role",
                "admin",
                "--out",
                elsewhere.path().to_str().unwrap(),
            ],
        ),
        "operator: operator add",
        "needs role admin",
    );
    assert!(
        !elsewhere.path().join("mallory.key").exists(),
        "no key is kept for a refused certificate"
    );

    // The admin sees every operator with their role.
    let listed = c.cli_json(&["operator", "ls"]);
    let role_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .map(|o| o["role"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(role_of("admin").as_deref(), Some("admin"));
    assert_eq!(role_of("vera").as_deref(), Some("viewer"));
    assert_eq!(role_of("otto").as_deref(), Some("operator"));

    // The audit trail names who did each change.
    let events = audit(&c);
    assert!(
        audited(&events, "admin", "added operator vera with role viewer"),
        "{events:#?}"
    );
    assert!(
        audited(&events, "admin", "added operator otto with role operator"),
        "{events:#?}"
    );
    assert!(audited(&events, "otto", "from-otto"), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["actor"] == "otto" && e["campaign_id"] == id.as_str()),
        "the campaign's creation is otto's: {events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["actor"] == "vera"),
        "the viewer changed nothing: {events:#?}"
    );
}

#[test]
fn a_revoked_operator_is_refused_at_once_and_their_open_stream_ends() {
    let (mut c, agents) = start_fleet(&[("w1", "worker")], "");
    let host = agents[0].machine_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let otto = add(&c, dir.path(), "otto", "operator");
    ok(&otto.cli(&c, &["hosts"]), "otto before revocation");

    // otto follows the host's log; only events of that host match, so nothing the revocation
    // logs reaches this stream: it must end because of the revocation itself.
    let mut follower = otto
        .command(
            &c,
            &[
                "events", "--follow", "--limit", "1", "--host", &host, "-o", "json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    lines_rx
        .recv_timeout(DEADLINE)
        .expect("the follower's backlog: its stream is open");

    let out = c.cli(&["operator", "revoke", "otto"]);
    ok(&out, "operator revoke otto");

    // The very next call is refused, saying why.
    refused(
        &otto.cli(&c, &["hosts"]),
        "otto after revocation",
        "revoked",
    );
    // The open stream ended with the reason.
    let status = wait_for("otto's follower to end", || {
        follower.try_wait().ok().flatten()
    });
    assert!(!status.success());
    let mut stderr = String::new();
    use std::io::Read;
    follower
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("revoked"), "{stderr}");

    // The list shows it revoked, and the revocation survives a restart.
    let listed = c.cli_json(&["operator", "ls"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "otto" && o["revoked"] == true),
        "{listed}"
    );
    c.stop();
    c.start().unwrap();
    refused(&otto.cli(&c, &["hosts"]), "otto after a restart", "revoked");

    // The last admin cannot revoke themselves: nobody could manage access any more.
    refused_with(
        &c.cli(&["operator", "revoke", "admin"]),
        "revoking the last admin",
        "last admin",
    );
    ok(&c.cli(&["hosts"]), "the admin still works");
    let events = audit(&c);
    assert!(
        audited(&events, "admin", "revoked operator otto"),
        "{events:#?}"
    );
}

/// Asserts a non-zero exit whose message says `needle` (any code).
fn refused_with(out: &Output, what: &str, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} was allowed");
    assert!(stderr.contains(needle), "{what}: {stderr}");
}

#[test]
fn renewal_replaces_the_files_with_a_working_certificate_for_the_same_role() {
    let mut c = Coordinator::init().unwrap();
    c.start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vera = add(&c, dir.path(), "vera", "viewer");
    let before = std::fs::read_to_string(&vera.cert).unwrap();
    let old_key = std::fs::read_to_string(&vera.key).unwrap();

    let renewed = ok(&vera.cli(&c, &["operator", "renew", "-o", "json"]), "renew");
    let renewed: Value = serde_json::from_str(&renewed).unwrap();
    assert_eq!(renewed["name"], "vera");
    assert_eq!(renewed["role"], "viewer", "a renewal keeps the role");
    let after = std::fs::read_to_string(&vera.cert).unwrap();
    assert_ne!(before, after, "the certificate file was replaced");
    assert_ne!(
        old_key,
        std::fs::read_to_string(&vera.key).unwrap(),
        "with a new key made here"
    );
    let mode = std::fs::metadata(&vera.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The new pair works, with the same role.
    ok(
        &vera.cli(&c, &["hosts"]),
        "viewer with the renewed certificate",
    );
    refused(
        &vera.cli(&c, &["token", "create", "--role", "worker"]),
        "renewed viewer: token create",
        "needs role admin",
    );
    let listed = c.cli_json(&["operator", "ls"]);
    let serials: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["name"] == "vera")
        .collect();
    assert_eq!(serials.len(), 2, "renewal adds a certificate: {listed}");
    assert!(serials.iter().any(|o| o["serial"] == renewed["serial"]));

    // The first admin, made by init, renews the same way.
    ok(&c.cli(&["operator", "renew"]), "admin renew");
    ok(
        &c.cli(&["token", "ls"]),
        "admin with the renewed certificate",
    );

    let events = audit(&c);
    assert!(
        audited(&events, "vera", "renewed the certificate of operator vera"),
        "{events:#?}"
    );
    assert!(
        audited(
            &events,
            "admin",
            "renewed the certificate of operator admin"
        ),
        "{events:#?}"
    );
}

#[test]
fn a_fleet_made_before_operator_roles_keeps_its_admin_after_the_upgrade() {
    let mut c = Coordinator::init().unwrap();
    // What a fleet made by an older init looks like: an operator certificate on disk and
    // none registered in the store.
    {
        // The SQLite file, behind the store's back (the coordinator is not running).
        let conn = rusqlite::Connection::open(c.dir.join("pitcrew.db")).unwrap();
        conn.execute("DELETE FROM operator_certs", []).unwrap();
    }
    c.start().unwrap();
    ok(
        &c.cli(&["hosts"]),
        "the old admin certificate after the upgrade",
    );
    ok(
        &c.cli(&["token", "create", "--role", "worker"]),
        "still an admin",
    );
    let listed = c.cli_json(&["operator", "ls"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "admin" && o["role"] == "admin" && o["created_by"] == "upgrade"),
        "{listed}"
    );
    assert!(
        c.log()
            .contains("registered an operator certificate found in the data dir as admin"),
        "the upgrade is logged"
    );
}
