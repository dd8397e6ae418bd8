//! The executor as the session uses it: policy refusals, exec, at-most-once ids, timeouts and
//! cancels that really stop the work, remove_path's symlink rules, and recovery of actions a
//! crash or reboot left in flight.

mod support;

use std::os::unix::fs::symlink;

use pitcrew_agent::journal::Journal;
use pitcrew_proto::policy::{ExecRule, LocalPolicy, Policy};
use pitcrew_proto::v1::{self, Outcome, action::Kind};
use support::*;
use tokio::sync::mpsc;

#[tokio::test]
async fn an_action_outside_the_policy_is_refused_naming_the_rule() {
    let agent = Agent::new(Policy::default());
    let executor = agent.open();
    let marker = agent.path("ran");
    let (result, _) = run(
        &executor,
        request(
            "r1",
            exec(&["/bin/sh", "-c", &format!("touch {}", marker.display())]),
            0,
        ),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Refused);
    assert_eq!(result.refused_by, "policy.exec");
    assert!(result.message.contains("policy.exec"), "{}", result.message);
    assert!(!marker.exists(), "a refused action must not run");

    for (kind, rule) in [
        (Kind::Reboot(v1::Reboot::default()), "policy.allow_reboot"),
        (Kind::Patch(v1::Patch::default()), "policy.allow_patch"),
        (Kind::DedupeShm(v1::DedupeShm {}), "policy.allow_dedupe_shm"),
        (
            Kind::Unit(v1::UnitAction {
                unit: "sshd.service".into(),
                operation: v1::UnitOperation::Stop as i32,
                ..Default::default()
            }),
            "policy.units",
        ),
    ] {
        let (result, _) = run(&executor, request(&format!("r-{rule}"), kind, 0)).await;
        assert_eq!(outcome(&result), Outcome::Refused);
        assert_eq!(result.refused_by, rule);
    }
}

#[tokio::test]
async fn exec_argv_that_no_prefix_allows_is_refused() {
    let agent = Agent::new(Policy {
        exec: vec![vec!["/bin/echo".into(), "backup".into()]],
        ..Default::default()
    });
    let executor = agent.open();
    let (ok, _) = run(
        &executor,
        request("e1", exec(&["/bin/echo", "backup", "now"]), 0),
    )
    .await;
    assert_eq!(outcome(&ok), Outcome::Succeeded, "{}", ok.message);
    assert_eq!(ok.output, "backup now\n");
    let (refused, _) = run(&executor, request("e2", exec(&["/bin/echo", "restore"]), 0)).await;
    assert_eq!(outcome(&refused), Outcome::Refused);
    assert_eq!(refused.refused_by, "policy.exec");
}

#[tokio::test]
async fn exec_streams_output_captures_it_and_reports_the_exit_code() {
    let mut policy = LocalPolicy::from(sh_policy());
    policy.exec[0].env.push("PITCREW_T".into());
    let agent = Agent::new(policy);
    let executor = agent.open();
    let mut req = request(
        "x1",
        exec(&[
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; echo $PITCREW_T; pwd; exit 3",
        ]),
        0,
    );
    if let Some(v1::Action {
        kind: Some(Kind::Exec(e)),
    }) = req.action.as_mut()
    {
        e.env.insert("PITCREW_T".into(), "from-env".into());
        e.workdir = "/tmp".into();
    }
    let (result, events) = run(&executor, req).await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(result.message.contains("exit code 3"), "{}", result.message);
    for line in ["out", "err", "from-env", "/tmp"] {
        assert!(
            result.output.lines().any(|l| l == line),
            "{}",
            result.output
        );
    }
    let logged: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(v1::action_event::Event::Log(l)) => Some(l.clone()),
            _ => None,
        })
        .collect();
    assert!(logged.contains(&"out".to_owned()) && logged.contains(&"err".to_owned()));
    assert!(events.iter().all(|e| e.action_id == "x1"));
}

#[tokio::test]
async fn exec_env_that_would_change_the_program_is_refused() {
    let agent = Agent::new(sh_policy());
    let executor = agent.open();
    let mut req = request("env1", exec(&["/bin/sh", "-c", "true"]), 0);
    if let Some(v1::Action {
        kind: Some(Kind::Exec(e)),
    }) = req.action.as_mut()
    {
        e.env.insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
    }
    let (result, _) = run(&executor, req).await;
    assert_eq!(outcome(&result), Outcome::Refused);
    assert_eq!(result.refused_by, "exec.env");
}

/// An interpreter that runs code named by its environment: its argv prefix, the argv of a
/// harmless run, and the variables that make it touch `marker` first.
struct Hooked {
    prefix: [&'static str; 2],
    argv: [&'static str; 3],
    hook: fn(&std::path::Path) -> Vec<(String, String)>,
}

const HOOKED: [Hooked; 2] = [
    Hooked {
        prefix: ["/usr/bin/perl", "-e"],
        argv: ["/usr/bin/perl", "-e", "print qq(ran\n)"],
        // perl reads switches from PERL5OPT; -M runs `use ...;` and what follows it.
        hook: |marker| {
            vec![(
                "PERL5OPT".into(),
                format!("-Mstrict;system(q(touch),q({}))", marker.display()),
            )]
        },
    },
    Hooked {
        prefix: ["/usr/bin/python3", "-c"],
        argv: ["/usr/bin/python3", "-c", "print('ran')"],
        // A warnings filter naming a module imports it; antigravity opens $BROWSER.
        hook: |marker| {
            vec![
                ("PYTHONWARNINGS".into(), "all:0:antigravity.x:0:0".into()),
                (
                    "BROWSER".into(),
                    format!("/bin/sh -c \"touch {}\" #%s", marker.display()),
                ),
            ]
        },
    },
];

#[tokio::test]
async fn exec_env_with_a_real_interpreter_that_honours_an_environment_hook() {
    let mut tried = 0;
    for (i, case) in HOOKED.iter().enumerate() {
        if !std::path::Path::new(case.prefix[0]).exists() {
            eprintln!("{} is not installed; not tried", case.prefix[0]);
            continue;
        }
        tried += 1;
        let prefix: Vec<String> = case.prefix.iter().map(|s| s.to_string()).collect();
        let agent = Agent::new(LocalPolicy {
            exec: vec![ExecRule::from(prefix.clone())],
            ..Default::default()
        });
        let marker = agent.path("hooked");
        let hook = (case.hook)(&marker);
        let hostile = || {
            let mut req = request(&format!("hook-{i}"), exec(&case.argv), 0);
            if let Some(v1::Action {
                kind: Some(Kind::Exec(e)),
            }) = req.action.as_mut()
            {
                e.env.extend(hook.iter().cloned());
            }
            req
        };

        // The argv is allowed, its environment is not: refused before anything runs.
        let executor = agent.open();
        let (result, _) = run(&executor, hostile()).await;
        assert_eq!(
            outcome(&result),
            Outcome::Refused,
            "{}: {}",
            case.prefix[0],
            result.message
        );
        assert_eq!(result.refused_by, "policy.exec.env");
        assert!(
            result.message.contains(&hook[0].0),
            "the refusal names the variable: {}",
            result.message
        );
        assert!(
            !marker.exists(),
            "{}: the environment hook ran as root",
            case.prefix[0]
        );
        drop(executor);

        // With the names allow-listed on that entry the same request runs, hook and all: the
        // refusal above is the policy's doing, not a hook that never worked.
        let mut agent = agent;
        agent.config.policy.exec[0].env = hook.iter().map(|(k, _)| k.clone()).collect();
        let executor = agent.open();
        let mut allowed = hostile();
        allowed.action_id = format!("hook-allowed-{i}");
        let (result, _) = run(&executor, allowed).await;
        assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
        assert!(result.output.contains("ran"), "{}", result.output);
        assert!(marker.exists(), "{}: the hook did not run", case.prefix[0]);
    }
    assert!(tried > 0, "neither perl nor python3 is installed");
}

#[tokio::test]
async fn exec_may_not_set_path_even_when_its_entry_lists_it() {
    let agent = Agent::new(LocalPolicy {
        exec: vec![ExecRule {
            argv: vec!["/bin/sh".into(), "-c".into()],
            env: vec!["PATH".into()],
        }],
        ..Default::default()
    });
    assert!(
        agent.config.policy.validate().unwrap_err().contains("PATH"),
        "such a policy is refused when the agent starts"
    );
    let executor = agent.open();
    let mut req = request("path-1", exec(&["/bin/sh", "-c", "echo $PATH"]), 0);
    if let Some(v1::Action {
        kind: Some(Kind::Exec(e)),
    }) = req.action.as_mut()
    {
        e.env.insert("PATH".into(), "/tmp/evil:/usr/bin".into());
    }
    let (result, _) = run(&executor, req).await;
    assert_eq!(outcome(&result), Outcome::Refused, "{}", result.message);
    assert_eq!(result.refused_by, "exec.env");
    assert!(result.message.contains("PATH"), "{}", result.message);
}

#[tokio::test]
async fn a_repeated_id_gets_the_first_result_and_never_runs_twice() {
    let agent = Agent::new(sh_policy());
    let side_effect = agent.path("appended");
    let script = format!("echo run >> {}; echo ran", side_effect.display());
    let executor = agent.open();
    let (first, _) = run(
        &executor,
        request("dup-1", exec(&["/bin/sh", "-c", &script]), 0),
    )
    .await;
    assert_eq!(outcome(&first), Outcome::Succeeded);
    let (second, _) = run(
        &executor,
        request("dup-1", exec(&["/bin/sh", "-c", &script]), 0),
    )
    .await;
    assert_eq!(second, first);
    // Also after a restart of the agent, and after the coordinator acknowledged it.
    executor.acknowledge(&["dup-1".into()]);
    drop(executor);
    let executor = agent.open();
    let (third, _) = run(
        &executor,
        request("dup-1", exec(&["/bin/sh", "-c", &script]), 0),
    )
    .await;
    assert_eq!(third, first);
    assert_eq!(std::fs::read_to_string(&side_effect).unwrap(), "run\n");
    assert!(executor.unacknowledged().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_while_running_waits_for_the_same_run() {
    let agent = Agent::new(sh_policy());
    let side_effect = agent.path("appended");
    let script = format!(
        "echo run >> {}; echo started; exec sleep 1000",
        side_effect.display()
    );
    let executor = agent.open();
    let (tx, mut rx) = mpsc::channel(64);
    let first = tokio::spawn(
        executor
            .clone()
            .execute(request("dup-2", exec(&["/bin/sh", "-c", &script]), 0), tx),
    );
    wait_for_log(&mut rx, "started").await;
    assert_eq!(executor.running(), vec!["dup-2".to_owned()]);
    let (tx2, _rx2) = mpsc::channel(64);
    let second = tokio::spawn(
        executor
            .clone()
            .execute(request("dup-2", exec(&["/bin/sh", "-c", &script]), 0), tx2),
    );
    assert!(executor.cancel("dup-2"));
    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert_eq!(outcome(&first), Outcome::Cancelled);
    assert_eq!(second, first);
    assert_eq!(std::fs::read_to_string(&side_effect).unwrap(), "run\n");
    assert!(executor.running().is_empty());
    assert!(
        !executor.cancel("dup-2"),
        "nothing runs under that id any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group() {
    let agent = Agent::new(sh_policy());
    let leader = agent.path("leader.pid");
    let grandchild = agent.path("grandchild.pid");
    // The shell starts a background child (same process group) and waits forever.
    let script = format!(
        "echo $$ > {}; sleep 1000 & echo $! > {}; wait",
        leader.display(),
        grandchild.display()
    );
    let executor = agent.open();
    let (result, _) = run(
        &executor,
        request("slow", exec(&["/bin/sh", "-c", &script]), 1),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::TimedOut, "{}", result.message);
    assert!(
        result.message.contains("process group was killed"),
        "{}",
        result.message
    );
    let (leader, grandchild) = (read_pid(&leader), read_pid(&grandchild));
    assert!(!alive(leader), "the program is still running");
    assert!(!alive(grandchild), "its background child is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_exec() {
    let agent = Agent::new(sh_policy());
    let pid_file = agent.path("pid");
    let script = format!(
        "echo $$ > {}; echo started; exec sleep 1000",
        pid_file.display()
    );
    let executor = agent.open();
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(
        executor
            .clone()
            .execute(request("c1", exec(&["/bin/sh", "-c", &script]), 0), tx),
    );
    wait_for_log(&mut rx, "started").await;
    assert!(executor.cancel("c1"));
    let result = task.await.unwrap();
    assert_eq!(outcome(&result), Outcome::Cancelled);
    assert!(!alive(read_pid(&pid_file)));
    assert_eq!(executor.unacknowledged(), vec![result]);
}

#[tokio::test]
async fn a_dropped_event_receiver_does_not_block_the_action() {
    let agent = Agent::new(sh_policy());
    let executor = agent.open();
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let result = executor
        .clone()
        .execute(
            request("noisy", exec(&["/bin/sh", "-c", "seq 1 5000"]), 0),
            tx,
        )
        .await;
    assert_eq!(outcome(&result), Outcome::Succeeded);
    assert!(result.output.ends_with("5000\n"));
}

#[tokio::test]
async fn unsafe_action_ids_are_refused_and_not_journaled() {
    let agent = Agent::new(sh_policy());
    let executor = agent.open();
    for id in ["", "../../etc/x", "a/b", &"x".repeat(129)] {
        let (result, _) = run(&executor, request(id, exec(&["/bin/sh", "-c", "true"]), 0)).await;
        assert_eq!(outcome(&result), Outcome::Refused, "{id}");
        assert_eq!(result.refused_by, "action-id");
    }
    let journal = std::fs::read_dir(agent.config.state_dir.join("journal")).unwrap();
    assert_eq!(journal.count(), 0);
}

#[tokio::test]
async fn results_stay_unacknowledged_until_the_coordinator_acknowledges_them() {
    let agent = Agent::new(sh_policy());
    let executor = agent.open();
    let (a, _) = run(&executor, request("a", exec(&["/bin/sh", "-c", "true"]), 0)).await;
    let (b, _) = run(
        &executor,
        request("b", exec(&["/bin/sh", "-c", "false"]), 0),
    )
    .await;
    assert_eq!(executor.unacknowledged(), vec![a.clone(), b.clone()]);
    drop(executor);
    let executor = agent.open();
    assert_eq!(
        executor.unacknowledged(),
        vec![a, b.clone()],
        "kept across restarts"
    );
    executor.acknowledge(&["a".into()]);
    assert_eq!(executor.unacknowledged(), vec![b]);
}

#[tokio::test]
async fn actions_left_in_flight_are_interrupted_at_the_next_start() {
    let agent = Agent::new(sh_policy());
    let journal_dir = agent.config.state_dir.join("journal");
    {
        // What a crash leaves behind: records written before acting, no result.
        let mut journal = Journal::open(&journal_dir, 0).unwrap();
        journal
            .begin(&request("crashed", exec(&["/bin/true"]), 0), "boot-one", 10)
            .unwrap();
        journal
            .begin(
                &request("reboot-same", Kind::Reboot(v1::Reboot::default()), 0),
                "boot-one",
                11,
            )
            .unwrap();
        journal
            .begin(
                &request("reboot-new", Kind::Reboot(v1::Reboot::default()), 0),
                "boot-zero",
                12,
            )
            .unwrap();
    }
    let executor = agent.open();
    let results = executor.unacknowledged();
    let by_id = |id: &str| results.iter().find(|r| r.action_id == id).unwrap().clone();

    let crashed = by_id("crashed");
    assert_eq!(outcome(&crashed), Outcome::Interrupted);
    assert!(
        crashed.message.contains("stopped while it ran"),
        "{}",
        crashed.message
    );

    let same = by_id("reboot-same");
    assert_eq!(outcome(&same), Outcome::Interrupted);
    assert_eq!(same.message, "the agent stopped before the host rebooted");

    let rebooted = by_id("reboot-new");
    assert_eq!(
        outcome(&rebooted),
        Outcome::Succeeded,
        "{}",
        rebooted.message
    );
    assert_eq!(rebooted.details["boot_id_before"], "boot-zero");
    assert_eq!(rebooted.details["boot_id_after"], "boot-one");

    // A repeat of an interrupted id gets the recorded answer; nothing reruns.
    let (again, _) = run(&executor, request("crashed", exec(&["/bin/true"]), 0)).await;
    assert_eq!(again, crashed);
}

// ----- remove_path -----------------------------------------------------------------------

fn removal_policy(root: &std::path::Path) -> Policy {
    Policy {
        remove_paths: vec![root.to_path_buf()],
        ..Default::default()
    }
}

fn remove(path: &std::path::Path, recursive: bool) -> Kind {
    Kind::RemovePath(v1::RemovePath {
        path: path.display().to_string(),
        recursive,
    })
}

#[tokio::test]
async fn remove_path_removes_files_and_trees_and_is_idempotent() {
    let agent = Agent::new(Policy::default());
    let root = agent.path("root");
    std::fs::create_dir_all(root.join("slaves/latest/a/b")).unwrap();
    std::fs::write(root.join("slaves/latest/a/b/f"), "x").unwrap();
    std::fs::write(root.join("file"), "x").unwrap();
    let mut agent = agent;
    agent.config.policy = removal_policy(&root).into();
    let executor = agent.open();

    let (file, _) = run(
        &executor,
        request("f", remove(&root.join("file"), false), 0),
    )
    .await;
    assert_eq!(outcome(&file), Outcome::Succeeded, "{}", file.message);
    assert!(!root.join("file").exists());

    let (not_recursive, _) = run(
        &executor,
        request("d1", remove(&root.join("slaves/latest"), false), 0),
    )
    .await;
    assert_eq!(outcome(&not_recursive), Outcome::Failed);
    assert!(
        not_recursive.message.contains("set recursive"),
        "{}",
        not_recursive.message
    );
    assert!(root.join("slaves/latest").exists());

    let (tree, _) = run(
        &executor,
        request("d2", remove(&root.join("slaves/latest"), true), 0),
    )
    .await;
    assert_eq!(outcome(&tree), Outcome::Succeeded, "{}", tree.message);
    assert!(!root.join("slaves/latest").exists());
    assert!(root.join("slaves").exists(), "only the target goes");

    let (absent, _) = run(
        &executor,
        request("d3", remove(&root.join("slaves/latest"), true), 0),
    )
    .await;
    assert_eq!(outcome(&absent), Outcome::Succeeded);
    assert!(
        absent.message.contains("already absent"),
        "{}",
        absent.message
    );
}

#[tokio::test]
async fn remove_path_refuses_dotdot_roots_and_paths_outside() {
    let agent = Agent::new(Policy::default());
    let root = agent.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let outside = agent.path("outside");
    std::fs::write(&outside, "keep").unwrap();
    let mut agent = agent;
    agent.config.policy = removal_policy(&root).into();
    let executor = agent.open();
    let cases = [
        (format!("{}/../outside", root.display()), "remove-path"),
        (root.display().to_string(), "policy.remove_paths"),
        (format!("{}/", root.display()), "policy.remove_paths"),
        (outside.display().to_string(), "policy.remove_paths"),
        ("relative/x".to_owned(), "remove-path"),
    ];
    for (i, (path, rule)) in cases.iter().enumerate() {
        let kind = Kind::RemovePath(v1::RemovePath {
            path: path.clone(),
            recursive: true,
        });
        let (result, _) = run(&executor, request(&format!("bad{i}"), kind, 0)).await;
        assert_eq!(outcome(&result), Outcome::Refused, "{path}");
        assert_eq!(&result.refused_by, rule, "{path}");
    }
    assert!(root.exists() && outside.exists());
}

#[tokio::test]
async fn remove_path_never_follows_a_symlink_out_of_the_root() {
    let agent = Agent::new(Policy::default());
    let root = agent.path("root");
    let outside = agent.path("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("dir/precious"), "keep").unwrap();
    std::fs::write(outside.join("target-file"), "keep").unwrap();
    // A symlinked directory in the middle of the path...
    symlink(&outside, root.join("escape")).unwrap();
    // ...and final components that are symlinks to things outside.
    symlink(outside.join("target-file"), root.join("link-to-file")).unwrap();
    symlink(outside.join("dir"), root.join("link-to-dir")).unwrap();
    let mut agent = agent;
    agent.config.policy = removal_policy(&root).into();
    let executor = agent.open();

    let (middle, _) = run(
        &executor,
        request("s1", remove(&root.join("escape/dir/precious"), true), 0),
    )
    .await;
    assert_eq!(outcome(&middle), Outcome::Refused, "{}", middle.message);
    assert_eq!(middle.refused_by, "remove-path");
    assert!(middle.message.contains("symlink"), "{}", middle.message);
    assert!(outside.join("dir/precious").exists());

    for (i, link) in ["link-to-file", "link-to-dir"].iter().enumerate() {
        let (result, _) = run(
            &executor,
            request(&format!("s{}", i + 2), remove(&root.join(link), true), 0),
        )
        .await;
        assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
        assert!(result.message.contains("symlink"), "{}", result.message);
        assert!(
            std::fs::symlink_metadata(root.join(link)).is_err(),
            "the link is gone"
        );
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("target-file")).unwrap(),
        "keep"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("dir/precious")).unwrap(),
        "keep"
    );
}

#[tokio::test]
async fn a_tree_with_a_symlink_inside_is_removed_without_following_it() {
    let agent = Agent::new(Policy::default());
    let root = agent.path("root");
    let outside = agent.path("outside");
    std::fs::create_dir_all(root.join("tree/sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), "keep").unwrap();
    symlink(&outside, root.join("tree/sub/out")).unwrap();
    let mut agent = agent;
    agent.config.policy = removal_policy(&root).into();
    let executor = agent.open();
    let (result, _) = run(&executor, request("t", remove(&root.join("tree"), true), 0)).await;
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    assert!(!root.join("tree").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("precious")).unwrap(),
        "keep"
    );
}
