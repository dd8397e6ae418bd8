//! What pitcrew's fuzz targets share: the fixed fleet campaigns are planned over, the policies
//! its hosts report, a scratch directory for the targets that need files, and how one fuzz
//! input is cut into parts.
//!
//! The targets themselves are in `fuzz_targets/`; `run.sh` builds and runs them (see the
//! README beside this crate).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use pitcrew_proto::policy::LocalPolicy;
use pitcrew_scheduler::{HostView, Role};

/// 2026-01-01T00:00:00Z: the "now" of every plan and run (the scheduler reads no clock, so a
/// fixed one keeps every input reproducible).
pub const NOW_MS: i64 = 1_767_225_600_000;

/// A policy that allows what the example campaigns ask for, as a lab host would have it.
pub fn permissive_policy() -> LocalPolicy {
    let exec: &[&[&str]] = &[
        &["/usr/local/bin/ucp-backup"],
        &["/usr/local/bin/swarm-node", "update"],
        &["/usr/local/bin/lab-health"],
        &["/usr/local/bin/lb-pool"],
        &["/usr/bin/docker", "pull"],
        &["/usr/bin/docker", "run", "--rm", "--name", "ucp"],
        &["/bin/true"],
    ];
    LocalPolicy {
        units: vec!["*.service".into()],
        remove_paths: vec!["/var/lib/mesos".into()],
        allow_patch: true,
        allow_reboot: true,
        allow_dedupe_shm: true,
        exec: exec
            .iter()
            .map(|argv| {
                argv.iter()
                    .map(|s| (*s).to_owned())
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect(),
        ..LocalPolicy::default()
    }
}

/// One host of [`fleet`].
fn host(id: &str, hostname: &str, role: Role, cluster: &str) -> HostView {
    HostView {
        id: id.to_owned(),
        hostname: hostname.to_owned(),
        role,
        labels: BTreeMap::from([("cluster".to_owned(), cluster.to_owned())]),
        connected: true,
        healthy: true,
        boot_id: format!("{id}-boot-1"),
        policy: Some(permissive_policy()),
        facts: None,
    }
}

/// The fleet campaigns are planned over: the clusters the examples select (`swarm-a` with three
/// managers and three workers, the first manager its leader; `dcos-a` with three workers and
/// one manager), plus hosts that make plans predict refusals and warnings: a worker reporting
/// the default policy, one reporting none (an old agent), and a disconnected one.
pub fn fleet() -> Vec<HostView> {
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let mut m = host(
            &format!("m{i}"),
            &format!("manager-{i}"),
            Role::Manager,
            "swarm-a",
        );
        if i == 1 {
            m.labels.insert("leader".into(), "true".into());
        }
        hosts.push(m);
        hosts.push(host(
            &format!("w{i}"),
            &format!("worker-{i}"),
            Role::Worker,
            "swarm-a",
        ));
        hosts.push(host(
            &format!("d{i}"),
            &format!("dcos-worker-{i}"),
            Role::Worker,
            "dcos-a",
        ));
    }
    hosts.push(host("dm1", "dcos-master-1", Role::Manager, "dcos-a"));
    let mut strict = host("w4", "worker-4", Role::Worker, "swarm-a");
    strict.policy = Some(LocalPolicy::default());
    hosts.push(strict);
    let mut old = host("w5", "worker-5", Role::Worker, "swarm-a");
    old.policy = None;
    hosts.push(old);
    let mut away = host("d4", "dcos-worker-4", Role::Worker, "dcos-a");
    away.connected = false;
    away.healthy = false;
    hosts.push(away);
    hosts
}

/// A scratch directory for one fuzzing process, removed when dropped. It is made under
/// `TMPDIR` (`run.sh` points that at memory, so the journal's fsyncs cost nothing).
pub fn scratch_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pitcrew-fuzz-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot make a scratch directory for the {what} target: {e}"))
}

/// Cuts `data` at NUL bytes into at most `max` parts (the last part keeps any further NULs).
/// TOML and mountinfo text hold no NUL, so a seed is its parts joined with `\0`.
pub fn split_nul(data: &[u8], max: usize) -> Vec<&[u8]> {
    data.splitn(max.max(1), |b| *b == 0).collect()
}
