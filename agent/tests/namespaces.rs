//! Root-only tests of the actions that change the machine, each confined to a namespace of its
//! own so the real machine is never touched: `dedupe_shm` and `remove_path` across mounts in a
//! private mount namespace, and the reboot path as PID 1 of a new PID namespace. They run when `PITCREW_ROOT_TESTS=1` (CI sets
//! it) and print why they skip otherwise.

mod support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::mount::{MsFlags, mount, umount};
use nix::sched::{CloneFlags, unshare};
use pitcrew_agent::actions::dedupe_shm::{self, Deduped};
use pitcrew_agent::actions::remove_path::{self, RemoveError, Removed};
use pitcrew_agent::actions::{Ctx, Executor, ExecutorOptions, StopFlag};
use pitcrew_agent::config::AgentConfig;
use pitcrew_agent::journal::Journal;
use pitcrew_agent::mounts::{self, THREAD_MOUNTINFO};
use pitcrew_proto::policy::{LocalPolicy, Policy};
use pitcrew_proto::v1::{self, Outcome, action::Kind};
use support::*;

/// The tmpfs stack on the machine's own `/dev/shm`, as the main thread (still in the machine's
/// mount namespace) sees it: mount ids and options.
fn machine_shm_stack() -> Vec<(i32, String)> {
    let table = mounts::read_mountinfo(Path::new("/proc/self/mountinfo")).unwrap();
    mounts::shm_tmpfs_mounts(&table)
        .iter()
        .map(|m| {
            let options: std::collections::BTreeMap<_, _> = m.super_options.iter().collect();
            (m.mnt_id, format!("{options:?}"))
        })
        .collect()
}

/// Runs `f` on a thread of its own in a private mount namespace where `/` is recursively
/// private, so no mount or unmount there propagates to the machine. Proves the isolation
/// before running `f`: the thread's namespace must differ from the process's.
fn in_private_mount_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS) needs root");
                let mine = std::fs::read_link("/proc/thread-self/ns/mnt").unwrap();
                let process = std::fs::read_link("/proc/self/ns/mnt").unwrap();
                assert_ne!(
                    mine, process,
                    "not in a private mount namespace; refusing to go on"
                );
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("make / private");
                f()
            })
            .join()
            .unwrap()
    })
}

fn tmpfs(point: &Path, flags: MsFlags, data: &str) {
    mount(Some("shm"), point, Some("tmpfs"), flags, Some(data)).unwrap();
}

fn stack_at(point: &Path) -> Vec<procfs::process::MountInfo> {
    let table = mounts::read_mountinfo(Path::new(THREAD_MOUNTINFO)).unwrap();
    mounts::tmpfs_mounts_at(&table, point)
        .into_iter()
        .cloned()
        .collect()
}

#[test]
fn dedupe_collapses_1_2_and_3_stacked_tmpfs_to_the_first_one() {
    if !root_tests_enabled("dedupe_collapses_1_2_and_3_stacked_tmpfs_to_the_first_one") {
        return;
    }
    let before = machine_shm_stack();
    let dir = tempfile::tempdir().unwrap();
    for n in 1..=3usize {
        let point = dir.path().join(format!("shm{n}"));
        std::fs::create_dir_all(&point).unwrap();
        let (outcome, after) = in_private_mount_namespace(|| {
            tmpfs(
                &point,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                "size=1024k,mode=1770",
            );
            for i in 1..n {
                tmpfs(
                    &point,
                    MsFlags::MS_NOEXEC,
                    &format!("size={}k,mode=700", 2048 * i),
                );
            }
            let first_id = stack_at(&point)[0].mnt_id;
            assert_eq!(stack_at(&point).len(), n);
            let outcome = dedupe_shm::dedupe(Path::new(THREAD_MOUNTINFO), &point).unwrap();
            let after = stack_at(&point);
            assert_eq!(after.len(), 1, "exactly one tmpfs is left");
            assert_eq!(after[0].mnt_id, first_id, "the first (bottom) one is kept");
            (outcome, after)
        });
        assert_eq!(
            outcome,
            Deduped {
                found: n,
                unmounted: n - 1,
                remounted: false
            }
        );
        let kept = &after[0];
        assert_eq!(kept.super_options.get("size"), Some(&Some("1024k".into())));
        assert_eq!(kept.super_options.get("mode"), Some(&Some("1770".into())));
        assert!(
            kept.mount_options.contains_key("nosuid") && kept.mount_options.contains_key("nodev")
        );
        assert!(!kept.mount_options.contains_key("noexec"));
    }
    assert_eq!(
        machine_shm_stack(),
        before,
        "the machine's /dev/shm must be untouched"
    );
}

#[test]
fn dedupe_on_dev_shm_itself_stays_in_the_private_namespace() {
    if !root_tests_enabled("dedupe_on_dev_shm_itself_stays_in_the_private_namespace") {
        return;
    }
    let before = machine_shm_stack();
    if before.is_empty() {
        eprintln!("skipping: this machine has no tmpfs on /dev/shm");
        return;
    }
    let (outcome, left) = in_private_mount_namespace(|| {
        let outcome =
            dedupe_shm::dedupe(Path::new(THREAD_MOUNTINFO), Path::new(mounts::SHM)).unwrap();
        (outcome, stack_at(Path::new(mounts::SHM)).len())
    });
    assert_eq!(outcome.found, before.len());
    assert_eq!(outcome.unmounted, before.len() - 1);
    assert_eq!(left, 1);
    assert_eq!(
        machine_shm_stack(),
        before,
        "the machine's /dev/shm must be untouched"
    );
}

#[test]
fn a_tmpfs_is_mounted_back_with_the_first_one_s_options() {
    if !root_tests_enabled("a_tmpfs_is_mounted_back_with_the_first_one_s_options") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("shm");
    std::fs::create_dir_all(&point).unwrap();
    let kept = in_private_mount_namespace(|| {
        tmpfs(
            &point,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "size=3072k,mode=1770",
        );
        let first = stack_at(&point)[0].clone();
        umount(&point).unwrap();
        assert!(stack_at(&point).is_empty());
        dedupe_shm::remount_like(&first, &point).unwrap();
        let stack = stack_at(&point);
        assert_eq!(stack.len(), 1);
        stack[0].clone()
    });
    assert_eq!(kept.mount_source.as_deref(), Some("shm"));
    assert_eq!(kept.super_options.get("size"), Some(&Some("3072k".into())));
    assert_eq!(kept.super_options.get("mode"), Some(&Some("1770".into())));
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(kept.mount_options.contains_key(flag), "{flag}");
    }
}

// ----- remove_path across mounts ---------------------------------------------------------

fn removal_policy(root: &Path) -> LocalPolicy {
    Policy {
        remove_paths: vec![root.to_path_buf()],
        ..Default::default()
    }
    .into()
}

fn never_stopped() -> StopFlag {
    let (events, _rx) = tokio::sync::mpsc::channel(1);
    let (ctx, _cancel) = Ctx::new("rm", Duration::from_secs(600), events);
    ctx.stop_flag()
}

/// Removes `path` as the agent would, on the calling thread (so in its mount namespace).
fn remove(policy: &LocalPolicy, path: &Path) -> Result<Removed, RemoveError> {
    remove_path::remove(policy, &path.display().to_string(), true, &never_stopped())
}

fn assert_refused_for_mounts(result: Result<Removed, RemoveError>, what: &str) {
    match result {
        Err(RemoveError::Refused(refusal)) => {
            assert_eq!(refusal.rule, "remove-path", "{what}: {refusal}");
            assert!(refusal.message.contains("mount"), "{what}: {refusal}");
        }
        other => panic!("{what}: expected a refusal before anything was removed, got {other:?}"),
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn all_there(paths: &[PathBuf]) {
    for path in paths {
        assert_eq!(
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            "keep",
            "{}",
            path.display()
        );
    }
}

#[test]
fn remove_path_never_crosses_a_bind_mount_inside_the_target() {
    if !root_tests_enabled("remove_path_never_crosses_a_bind_mount_inside_the_target") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    let target = root.join("target");
    // Files on both sides, in several places, so that a walk in any order would reach some.
    let outside_files = [outside.join("precious"), outside.join("sub/deep")];
    let target_files = [
        target.join("a-file"),
        target.join("z-file"),
        target.join("sub/b-file"),
    ];
    for f in outside_files.iter().chain(&target_files) {
        write(f, "keep");
    }
    std::fs::create_dir_all(target.join("mnt")).unwrap();
    let policy = removal_policy(&root);
    in_private_mount_namespace(|| {
        mount(
            Some(&outside),
            &target.join("mnt"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        // The case st_dev cannot see: the bind mount is on the same filesystem.
        assert_eq!(
            std::fs::metadata(target.join("mnt")).unwrap().dev(),
            std::fs::metadata(&target).unwrap().dev()
        );

        assert_refused_for_mounts(remove(&policy, &target), "a tree with a bind mount inside");
        all_there(&outside_files);
        all_there(&target_files);
        assert_eq!(
            std::fs::read_to_string(target.join("mnt/precious")).unwrap(),
            "keep"
        );
        // The bind mount itself is a mount point.
        assert_refused_for_mounts(
            remove(&policy, &target.join("mnt")),
            "the bind mount's own mount point",
        );
        all_there(&outside_files);

        // What held still holds with mounts about: `..`, the root itself, a symlink on the way.
        let dotdot = remove_path::remove(
            &policy,
            &format!("{}/../outside", root.display()),
            true,
            &never_stopped(),
        );
        assert!(
            matches!(&dotdot, Err(RemoveError::Refused(r)) if r.rule == "remove-path"),
            "{dotdot:?}"
        );
        let itself = remove(&policy, &root);
        assert!(
            matches!(&itself, Err(RemoveError::Refused(r)) if r.rule == "policy.remove_paths"),
            "{itself:?}"
        );
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let through = remove(&policy, &root.join("link/precious"));
        assert!(
            matches!(&through, Err(RemoveError::Refused(r)) if r.message.contains("symlink")),
            "{through:?}"
        );
        all_there(&outside_files);

        // Once unmounted, the same tree is removed and the other side is untouched.
        umount(&target.join("mnt")).unwrap();
        assert!(matches!(remove(&policy, &target), Ok(Removed::Tree(_))));
        assert!(!target.exists());
        all_there(&outside_files);
    });
}

#[test]
fn remove_path_refuses_a_mounted_target_and_a_tree_with_a_filesystem_below() {
    if !root_tests_enabled(
        "remove_path_refuses_a_mounted_target_and_a_tree_with_a_filesystem_below",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mounted = root.join("mounted");
    let tree = root.join("tree");
    let file_target = root.join("file-target");
    let outside_file = dir.path().join("outside-file");
    std::fs::create_dir_all(&mounted).unwrap();
    std::fs::create_dir_all(tree.join("fs")).unwrap();
    write(&tree.join("sibling"), "keep");
    write(&file_target, "under");
    write(&outside_file, "keep");
    let policy = removal_policy(&root);
    in_private_mount_namespace(|| {
        // A tmpfs on the target itself: it must not be emptied.
        tmpfs(&mounted, MsFlags::empty(), "size=1024k");
        write(&mounted.join("inside"), "keep");
        write(&mounted.join("dir/inside"), "keep");
        assert_refused_for_mounts(remove(&policy, &mounted), "a tmpfs on the target");
        all_there(&[mounted.join("inside"), mounted.join("dir/inside")]);

        // Another filesystem below the target: refused before the siblings are touched.
        tmpfs(&tree.join("fs"), MsFlags::empty(), "size=1024k");
        write(&tree.join("fs/inside"), "keep");
        assert_refused_for_mounts(remove(&policy, &tree), "a tmpfs below the target");
        all_there(&[tree.join("sibling"), tree.join("fs/inside")]);

        // A file bind-mounted over a file: the target is a mount point too.
        mount(
            Some(&outside_file),
            &file_target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        assert_refused_for_mounts(remove(&policy, &file_target), "a bind-mounted file");
        all_there(std::slice::from_ref(&outside_file));
    });
}

// ----- reboot ----------------------------------------------------------------------------

const CHILD_STATE: &str = "PITCREW_TEST_REBOOT_CHILD_STATE";
const CHILD_BOOT_ID: &str = "PITCREW_TEST_REBOOT_CHILD_BOOT_ID";

fn reboot_config(state_dir: PathBuf, boot_id_file: PathBuf) -> AgentConfig {
    let mut config = AgentConfig::for_tests(&state_dir);
    config.host.boot_id_file = boot_id_file;
    config.policy = Policy {
        allow_reboot: true,
        ..Default::default()
    }
    .into();
    config
}

/// Not a test of its own: the body the next test runs as PID 1 of a new PID namespace (the
/// test binary re-executed under `unshare -p -f --mount-proc`). Without its environment
/// variables it does nothing.
#[test]
fn reboot_child_entry() {
    let (Ok(state), Ok(boot_id)) = (std::env::var(CHILD_STATE), std::env::var(CHILD_BOOT_ID))
    else {
        return;
    };
    let config = reboot_config(state.into(), boot_id.into());
    let options = ExecutorOptions {
        // No logind here: the namespace path is the only one left.
        system_bus_address: Some("unix:path=/nonexistent/system_bus_socket".into()),
        patch_tools: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let executor = Executor::open_with(&config, options).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        executor
            .execute(
                request("reboot-1", Kind::Reboot(v1::Reboot::default()), 0),
                tx,
            )
            .await
    });
    panic!("the reboot returned instead of ending the namespace: {result:?}");
}

#[test]
fn reboot_as_pid_namespace_init_ends_the_namespace_and_is_proven_by_boot_id() {
    if !root_tests_enabled(
        "reboot_as_pid_namespace_init_ends_the_namespace_and_is_proven_by_boot_id",
    ) {
        return;
    }
    let agent = Agent::new(Policy {
        allow_reboot: true,
        ..Default::default()
    });
    let status = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reboot_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STATE, &agent.config.state_dir)
        .env(CHILD_BOOT_ID, &agent.config.host.boot_id_file)
        .status()
        .expect("unshare (util-linux) must be installed");
    // The namespace's init was killed by SIGHUP, the kernel's sign of a namespace "reboot";
    // unshare passes that on by killing itself with the same signal.
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGHUP as i32),
        "expected the namespace to end by SIGHUP, got {status:?}"
    );

    // Before acting, the journal recorded the intent and the boot id.
    let journal = Journal::open(&agent.config.state_dir.join("journal"), 0).unwrap();
    let in_flight = journal.in_flight();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].kind, "reboot");
    assert_eq!(in_flight[0].boot_id, "boot-one");
    drop(journal);

    // Back "after the reboot" with a new boot id: the reboot succeeded.
    agent.set_boot_id("boot-two");
    let executor = agent.open();
    let results = executor.unacknowledged();
    assert_eq!(results.len(), 1);
    assert_eq!(
        outcome(&results[0]),
        Outcome::Succeeded,
        "{}",
        results[0].message
    );
    assert_eq!(results[0].details["boot_id_before"], "boot-one");
    assert_eq!(results[0].details["boot_id_after"], "boot-two");
}

#[tokio::test]
async fn without_logind_and_not_a_namespace_init_reboot_fails_clearly() {
    // Safe anywhere: this process is not PID 1, so the only way left is refused.
    let mut agent = Agent::new(Policy {
        allow_reboot: true,
        ..Default::default()
    });
    agent.options.system_bus_address = Some("unix:path=/nonexistent/bus".into());
    let executor = agent.open();
    let (result, _) = run(
        &executor,
        request("rb", Kind::Reboot(v1::Reboot::default()), 0),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(
        result
            .message
            .starts_with("no systemd-logind reachable on this host"),
        "{}",
        result.message
    );
    assert!(result.message.contains("not PID 1"), "{}", result.message);
}
