//! The patch action with stand-in `apt-get` and `dpkg-query` programs (scripts in a temp dir):
//! what the agent asks of apt, how it reads the versions before and after, and how it reports
//! a lock held by someone else. The real package managers run in the lab tests.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pitcrew_agent::actions::patch::PatchTools;
use pitcrew_proto::policy::Policy;
use pitcrew_proto::v1::{self, Outcome, action::Kind};
use support::*;

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An agent whose apt-get and dpkg-query are stand-ins. `upgrade_body(versions_file)` is what
/// apt-get does for anything but `update`; dpkg-query prints the versions file.
fn agent_with_apt(upgrade_body: impl Fn(&Path) -> String) -> Agent {
    let mut agent = Agent::new(Policy {
        allow_patch: true,
        ..Default::default()
    });
    let versions = agent.path("versions");
    let calls = agent.path("calls");
    // As dpkg-query lists them: status, name, version. nginx was removed, its conffiles kept.
    std::fs::write(
        &versions,
        "installed libc6 2.36-9\ninstalled openssl 3.0.11-1\nconfig-files nginx 1.22.1-9\n",
    )
    .unwrap();
    let dpkg_query = agent.path("dpkg-query");
    script(&dpkg_query, &format!("cat {}\n", versions.display()));
    let apt_get = agent.path("apt-get");
    script(
        &apt_get,
        &format!(
            "echo \"$DEBIAN_FRONTEND $*\" >> {calls}\n\
             case \"$*\" in *update*) echo 'Hit:1 http://deb.debian.org/debian bookworm InRelease'; exit 0;; esac\n\
             {upgrade}\n",
            calls = calls.display(),
            upgrade = upgrade_body(&versions)
        ),
    );
    agent.options.patch_tools = Some(PatchTools {
        manager: "apt".into(),
        apt_get,
        dpkg_query,
        dnf: "/nonexistent/dnf".into(),
        rpm: "/nonexistent/rpm".into(),
    });
    agent
}

/// The stand-in upgrade: says what it unpacks and changes libc6's version.
fn upgrade_libc6(versions: &Path) -> String {
    format!(
        "echo 'Unpacking libc6 (2.36-9+deb12u4) over (2.36-9) ...'\n\
         printf 'installed libc6 2.36-9+deb12u4\\ninstalled openssl 3.0.11-1\\n' > {}",
        versions.display()
    )
}

fn patch(packages: &[&str], lock_timeout_seconds: u32) -> Kind {
    Kind::Patch(v1::Patch {
        packages: packages.iter().map(|s| s.to_string()).collect(),
        lock_timeout_seconds,
    })
}

#[tokio::test]
async fn patch_reports_the_packages_that_changed_and_whether_a_reboot_is_required() {
    let agent = agent_with_apt(upgrade_libc6);
    let executor = agent.open();
    let (result, events) = run(&executor, request("p1", patch(&[], 7), 0)).await;
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    let calls = std::fs::read_to_string(agent.path("calls")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("noninteractive "), "{}", calls[0]);
    assert!(
        calls[0].ends_with("-o DPkg::Lock::Timeout=7 update"),
        "{}",
        calls[0]
    );
    assert!(
        calls[1].ends_with(
            "-y -o DPkg::Lock::Timeout=7 -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef upgrade"
        ),
        "{}",
        calls[1]
    );
    assert!(result.details.contains_key("reboot_required"));
    assert!(
        events.iter().any(|e| matches!(&e.event,
            Some(v1::action_event::Event::Log(l)) if l.contains("Hit:1"))),
        "apt's output is streamed"
    );
    assert!(
        result.output.contains("Unpacking libc6"),
        "{}",
        result.output
    );
}

#[tokio::test]
async fn changed_versions_are_listed_old_to_new() {
    let agent = agent_with_apt(upgrade_libc6);
    let calls = agent.path("calls");
    let executor = agent.open();
    let (result, _) = run(&executor, request("p2", patch(&["libc6", "openssl"], 0), 0)).await;
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    assert_eq!(
        result.details["changed_packages"],
        "libc6 2.36-9 -> 2.36-9+deb12u4"
    );
    assert_eq!(result.details["changed_count"], "1");
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert!(
        calls
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("install --only-upgrade -- libc6 openssl"),
        "{calls}"
    );
}

#[tokio::test]
async fn a_lock_held_by_another_process_is_reported_as_such() {
    let agent = agent_with_apt(|_| {
        "echo 'E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)' >&2\nexit 100".to_owned()
    });
    let executor = agent.open();
    let (result, _) = run(&executor, request("p3", patch(&[], 2), 0)).await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(
        result
            .message
            .starts_with("package manager lock held by another process"),
        "{}",
        result.message
    );
    assert!(
        result.message.contains("process 4242"),
        "{}",
        result.message
    );
}

#[tokio::test]
async fn package_names_that_look_like_options_are_refused_before_apt_runs() {
    let agent = agent_with_apt(upgrade_libc6);
    let executor = agent.open();
    let (result, _) = run(
        &executor,
        request(
            "p4",
            patch(&["-oAPT::Update::Pre-Invoke::=touch /tmp/x"], 0),
            0,
        ),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Refused);
    assert_eq!(result.refused_by, "patch.packages");
    assert!(!agent.path("calls").exists(), "apt-get must not have run");
}

#[tokio::test]
async fn allow_patch_only_upgrades_installed_packages_it_never_removes_or_installs() {
    // The stand-in apt-get does what apt would: "name-" removes, an unknown name installs.
    let agent = agent_with_apt(|versions| {
        format!(
            "for p in \"$@\"; do case \"$p\" in\n\
               *-) grep -v \" ${{p%-}} \" {v} > {v}.new; mv {v}.new {v};;\n\
               nginx|*+) echo \"installed ${{p%+}} 9.9\" >> {v};;\n\
             esac; done",
            v = versions.display()
        )
    });
    let versions_before = std::fs::read_to_string(agent.path("versions")).unwrap();
    let executor = agent.open();
    for (i, (packages, says)) in [
        (&["openssl-"][..], "remove openssl"),
        (&["libc6", "nginx+"], "install"),
        (&["nginx"], "nginx is not installed"),
        (&["libc6:i386", "openssl"], "libc6:i386 is not installed"),
    ]
    .into_iter()
    .enumerate()
    {
        let (result, _) = run(&executor, request(&format!("r{i}"), patch(packages, 0), 0)).await;
        assert_eq!(
            outcome(&result),
            Outcome::Refused,
            "{packages:?}: {}",
            result.message
        );
        assert_eq!(result.refused_by, "patch.packages");
        assert!(result.message.contains(says), "{}", result.message);
        assert!(
            !agent.path("calls").exists(),
            "{packages:?}: apt-get must not have run"
        );
    }
    assert_eq!(
        std::fs::read_to_string(agent.path("versions")).unwrap(),
        versions_before
    );
    // An installed package, with or without its architecture, is upgraded as before.
    let (result, _) = run(&executor, request("ok", patch(&["openssl", "libc6"], 0), 0)).await;
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
}
