//! What operators expect of any command line, checked on the real `pitcrew` against a real
//! coordinator: output piped into a reader that stops early ends quietly, and a certificate
//! from another fleet (or an expired one) is named as the reason a connection fails.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use pitcrew_coordinator::ca::Ca;
use pitcrew_tests::{Coordinator, bin, wait_for};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `pitcrew ARGS` as the admin with its stdout a pipe whose reader has already gone.
fn into_closed_pipe(coordinator: &Coordinator, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(bin("pitcrew"))
        .args(args)
        .envs(coordinator.operator_env())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running pitcrew")
}

#[test]
fn output_into_a_pipe_whose_reader_has_gone_ends_quietly() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    // Something in every listing: a token, and its creation in the audit trail.
    coordinator.token("worker", &[], 1);
    for args in [
        &["events"][..],
        &["events", "-o", "json"],
        &["hosts"],
        &["hosts", "-o", "json"],
        &["token", "ls"],
        &["operator", "ls"],
        &["--help"],
        &["completions", "bash"],
    ] {
        let out = into_closed_pipe(&coordinator, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "pitcrew {args:?} into a closed pipe: {:?}, stderr: {}",
            out.status,
            text(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "pitcrew {args:?} into a closed pipe said: {}",
            text(&out.stderr)
        );
    }
}

/// `pitcrew events --follow | head -1`: the follower ends at the first event after `head` left,
/// not on the next Ctrl-C, and without a word.
#[test]
fn a_follower_ends_quietly_at_the_first_event_after_its_reader_left() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    coordinator.token("worker", &[], 1);
    let mut follower = Command::new(bin("pitcrew"))
        .args(["events", "--follow"])
        .envs(coordinator.operator_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap());
    // The backlog comes first, once the follower has subscribed to new events.
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert!(line.contains(" audit by "), "{line}");
    // `head -1` exits: the pipe's reader is gone.
    drop(lines);
    coordinator.token("worker", &[], 1);
    let status = wait_for("the follower to end", || follower.try_wait().unwrap());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}, stderr: {stderr}");
    assert!(stderr.is_empty(), "the follower said: {stderr}");
}

/// `pitcrew hosts` as the admin of `coordinator`, with some connection settings replaced.
fn hosts_with(coordinator: &Coordinator, replaced: &[(&str, &std::path::Path)]) -> Output {
    Command::new(bin("pitcrew"))
        .arg("hosts")
        .envs(coordinator.operator_env())
        .envs(replaced.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("running pitcrew")
}

#[test]
fn a_certificate_of_another_fleet_or_an_expired_one_is_named_as_the_reason() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    let other = Coordinator::init().unwrap();
    let ca = coordinator.dir.join("ca.crt");

    // An operator certificate of another fleet: the coordinator refuses it at the handshake.
    let foreign_cert = other.dir.join("operator/admin.crt");
    let out = hosts_with(
        &coordinator,
        &[
            ("PITCREW_CERT", &foreign_cert),
            ("PITCREW_KEY", &other.dir.join("operator/admin.key")),
        ],
    );
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "the coordinator refused the operator certificate {}: it was not issued by this fleet's CA (the one in {})",
            foreign_cert.display(),
            ca.display()
        )),
        "{said}"
    );
    assert!(!said.contains("operation was canceled"), "{said}");

    // An expired certificate of this fleet.
    let now = time::OffsetDateTime::now_utc();
    let (expired, key) = Ca::load(&coordinator.dir)
        .unwrap()
        .issue_host_between(
            "expired",
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("old.crt"), dir.path().join("old.key"));
    std::fs::write(&cert_path, &expired.cert_pem).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let out = hosts_with(
        &coordinator,
        &[("PITCREW_CERT", &cert_path), ("PITCREW_KEY", &key_path)],
    );
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "the coordinator refused the operator certificate {}: it has expired",
            cert_path.display()
        )),
        "{said}"
    );

    // This side refuses the coordinator: the CA given is another fleet's.
    let foreign_ca = other.dir.join("ca.crt");
    let out = hosts_with(&coordinator, &[("PITCREW_CA", &foreign_ca)]);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "the coordinator's certificate is not signed by the CA in {}",
            foreign_ca.display()
        )),
        "{said}"
    );

    // And with this fleet's own files all is well, so each refusal was about its certificate.
    let out = hosts_with(&coordinator, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Runs `bash -c SCRIPT` and returns its stdout, requiring success.
fn bash(script: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn bash_completes_the_commands_of_the_command_line_itself() {
    let load = format!("source <({} completions bash)", bin("pitcrew").display());
    let registered = bash(&format!("{load}; complete -p pitcrew"));
    assert!(registered.contains("-F _pitcrew"), "{registered}");
    // What bash offers after `pitcrew camp<TAB>` and `pitcrew campaign <TAB>`.
    let offered = bash(&format!(
        "{load}; COMP_WORDS=(pitcrew camp); COMP_CWORD=1; _pitcrew pitcrew camp pitcrew; echo \"${{COMPREPLY[@]}}\""
    ));
    assert_eq!(offered.trim(), "campaign");
    let offered = bash(&format!(
        "{load}; COMP_WORDS=(pitcrew campaign ''); COMP_CWORD=2; _pitcrew pitcrew '' campaign; echo \"${{COMPREPLY[@]}}\""
    ));
    for word in ["plan", "run", "watch", "pause", "resume", "cancel", "host"] {
        assert!(
            offered.split_whitespace().any(|w| w == word),
            "{word}: {offered}"
        );
    }
    // The other shells get scripts naming the same commands.
    for shell in ["zsh", "fish"] {
        let out = Command::new(bin("pitcrew"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["campaign", "maintenance", "operator", "events"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
}

/// Each binary writes its manual pages from its own command-line definition; every page
/// renders with `man` (or at least has a title and the usual sections) without warnings.
#[test]
fn manual_pages_are_written_for_every_command_and_render() {
    let dir = tempfile::tempdir().unwrap();
    for program in ["pitcrew", "pitcrew-agent", "pitcrew-coordinator"] {
        let out = Command::new(bin(program))
            .args(["man", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} man: {}", text(&out.stderr));
    }
    let pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for page in [
        "pitcrew.1",
        "pitcrew-campaign-run.1",
        "pitcrew-events.1",
        "pitcrew-operator-add.1",
        "pitcrew-completions.1",
        "pitcrew-agent.1",
        "pitcrew-agent-run.1",
        "pitcrew-coordinator.1",
        "pitcrew-coordinator-init.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
    }
    // The hidden command that writes them has no page.
    assert!(!pages.iter().any(|p| p.contains("-man")), "{pages:?}");
    let man = Command::new("man").arg("--version").output().is_ok();
    for page in &pages {
        let path = dir.path().join(page);
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            source.starts_with(".ie") || source.contains("\n.TH "),
            "{page}"
        );
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION"] {
            assert!(
                source.contains(&format!(".SH {section}")),
                "{page}: no {section}"
            );
        }
        // What `man -k` (whatis) indexes: "name \- description".
        let name = source
            .split(".SH NAME\n")
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .unwrap_or_default();
        assert!(
            name.contains(" \\- "),
            "{page}: NAME line {name:?} has no description"
        );
        if man {
            // As lintian checks pages: man's own warnings on.
            let out = Command::new("man")
                .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
                .arg(&path)
                .env("MANWIDTH", "80")
                .output()
                .unwrap();
            assert!(out.status.success(), "{page}: {}", text(&out.stderr));
            assert!(out.stderr.is_empty(), "{page}: {}", text(&out.stderr));
        }
    }
    let out = Command::new("man")
        .args(["-l"])
        .arg(dir.path().join("pitcrew.1"))
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .output();
    if let Ok(out) = out {
        let shown = text(&out.stdout);
        assert!(shown.contains("PITCREW_COORDINATOR"), "{shown}");
        assert!(shown.contains("pitcrew-campaign(1)"), "{shown}");
    }
}

/// Starts an agent for `coordinator` whose machine id (its host id) is `id`.
fn agent_with_id(coordinator: &Coordinator, name: &str, id: &str) -> pitcrew_tests::Agent {
    let token = coordinator.token("worker", &[("cluster", "c1"), ("name", name)], 1);
    let mut agent = pitcrew_tests::Agent::new(coordinator, name, &token, "").unwrap();
    std::fs::write(agent.dir.join("machine-id"), format!("{id}\n")).unwrap();
    agent.machine_id = id.to_owned();
    agent.start().unwrap();
    pitcrew_tests::wait_connected(coordinator, id);
    agent
}

/// A host is named by its id, its hostname, or a unique prefix of its id (what the `hosts`
/// table shows); an ambiguous prefix is refused listing the candidates. The table shows labels.
#[test]
fn hosts_are_named_by_a_unique_id_prefix_and_listed_with_their_labels() {
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    let one = "c0ffee01aaaaaaaaaaaaaaaaaaaaaaaa";
    let two = "c0ffee02bbbbbbbbbbbbbbbbbbbbbbbb";
    let _agents = [
        agent_with_id(&coordinator, "w1", one),
        agent_with_id(&coordinator, "w2", two),
    ];

    let shown = coordinator.cli_json(&["hosts", "show", "c0ffee01"]);
    assert_eq!(shown["host_id"], one, "{shown}");
    // Every command that takes a host resolves it the same way.
    let out = coordinator.cli(&["maintenance", "enable", &two[..12]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("w2 is"), "{}", text(&out.stdout));

    let out = coordinator.cli(&["hosts", "show", "c0ffee"]);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("is ambiguous")
            && said.contains(&format!("{one} (w1)"))
            && said.contains(&format!("{two} (w2)")),
        "{said}"
    );
    let out = coordinator.cli(&["hosts", "show", "c0ffee03"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    let table = text(&coordinator.cli(&["hosts"]).stdout);
    let row = table.lines().find(|l| l.contains(" w1 ")).unwrap();
    assert!(row.contains("cluster=c1,name=w1"), "{table}");
}

/// A process killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `init` ends with the `export` lines `pitcrew` needs; pasted into a shell, they work.
#[test]
fn init_prints_the_exports_that_point_pitcrew_at_the_new_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet with space");
    let port = pitcrew_tests::free_port();
    let init = Command::new(bin("pitcrew-coordinator"))
        .args(["init", "--san", "127.0.0.1", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init.stderr));
    let exports: Vec<String> = text(&init.stdout)
        .lines()
        .filter(|l| l.starts_with("export PITCREW_"))
        .map(str::to_owned)
        .collect();
    assert_eq!(exports.len(), 4, "{}", text(&init.stdout));
    let _serve = Running(
        Command::new(bin("pitcrew-coordinator"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the coordinator to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // In a shell with none of the PITCREW_* variables of this test's environment.
    let script = format!("{}\n\"$0\" hosts -o json", exports.join("\n"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(bin("pitcrew"))
        .env_remove("PITCREW_COORDINATOR")
        .env_remove("PITCREW_CA")
        .env_remove("PITCREW_CERT")
        .env_remove("PITCREW_KEY")
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");
}

/// `pitcrew` with `env` and none of the test's own `PITCREW_*` variables.
fn pitcrew_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(bin("pitcrew"));
    for name in [
        "PITCREW_COORDINATOR",
        "PITCREW_CA",
        "PITCREW_CERT",
        "PITCREW_KEY",
        "PITCREW_CONTEXT",
        "PITCREW_CONFIG",
    ] {
        command.env_remove(name);
    }
    command
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

/// The number of join tokens the fleet `pitcrew` reaches lists.
fn tokens(out: Output) -> usize {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .map(Vec::len)
        .unwrap()
}

/// Contexts of the client config name fleets: `context add` saves the connection given, the
/// first is current, `--context`, PITCREW_CONTEXT and `context use` switch, flags and
/// PITCREW_* still win, and relative paths in the file are relative to it.
#[test]
fn contexts_switch_between_fleets() {
    let mut a = Coordinator::init().unwrap();
    a.start().unwrap();
    let mut b = Coordinator::init().unwrap();
    b.start().unwrap();
    b.token("worker", &[], 1); // b lists one token, a none
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let config = config.to_str().unwrap();
    let env_of = |c: &Coordinator| -> Vec<(String, String)> {
        let mut env = c.operator_env();
        env.push(("PITCREW_CONFIG".into(), config.into()));
        env
    };
    for (name, fleet) in [("a", &a), ("b", &b)] {
        let env = env_of(fleet);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = pitcrew_with(&env, &["context", "add", name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let only_config = [("PITCREW_CONFIG", config)];
    let json = ["token", "ls", "-o", "json"];
    assert_eq!(tokens(pitcrew_with(&only_config, &json)), 0, "a is current");
    let mut args = vec!["--context", "b"];
    args.extend(json);
    assert_eq!(tokens(pitcrew_with(&only_config, &args)), 1);
    let out = pitcrew_with(&only_config, &["context", "use", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(tokens(pitcrew_with(&only_config, &json)), 1);
    let listed = text(&pitcrew_with(&only_config, &["context", "ls"]).stdout);
    assert!(
        listed.lines().any(|l| l.contains('*') && l.contains(" b ")),
        "{listed}"
    );
    assert_eq!(
        tokens(pitcrew_with(
            &[("PITCREW_CONFIG", config), ("PITCREW_CONTEXT", "a")],
            &json
        )),
        0
    );
    // PITCREW_* (here all of a's) win over the current context (b).
    let env = env_of(&a);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(tokens(pitcrew_with(&env, &json)), 0);

    let out = pitcrew_with(&only_config, &["--context", "nope", "hosts"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no context \"nope\"")
            && text(&out.stderr).contains("contexts: a, b"),
        "{}",
        text(&out.stderr)
    );

    // A file beside its certificates, as an operator copies them: relative paths.
    let copied = dir.path().join("copied");
    std::fs::create_dir(&copied).unwrap();
    for (from, to) in [
        ("ca.crt", "ca.crt"),
        ("operator/admin.crt", "me.crt"),
        ("operator/admin.key", "me.key"),
    ] {
        std::fs::copy(b.dir.join(from), copied.join(to)).unwrap();
    }
    std::fs::write(
        copied.join("config.toml"),
        format!(
            "current = \"b\"\n[contexts.b]\ncoordinator = \"{}\"\nca = \"ca.crt\"\ncert = \"me.crt\"\nkey = \"me.key\"\n",
            b.address()
        ),
    )
    .unwrap();
    let copied_config = copied.join("config.toml");
    let out = pitcrew_with(
        &[("PITCREW_CONFIG", copied_config.to_str().unwrap())],
        &json,
    );
    assert_eq!(tokens(out), 1);
}
