//! The built packages as a Debian or RPM administrator meets them: lintian and rpmlint find
//! nothing (`packaging/lint-packages.sh`), and manual pages, shell completions, the changelog,
//! the copyright notice and the example campaigns are where `man`, the shells and
//! `/usr/share/doc` look for them.
//!
//! They need the packages built (`packaging/build-packages.sh`). Without them these tests say
//! they are skipped, except with `PITCREW_LAB=1` (CI as root), where the packages are built
//! first and their absence fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use pitcrew_tests::lab::{default_packages_dir, lab_enabled};

/// The packages directory, or None (after saying so) when nothing is built and that is allowed.
fn packages(test: &str) -> Option<PathBuf> {
    let dir = default_packages_dir();
    let built = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        })
        .unwrap_or(false);
    if built {
        return Some(dir);
    }
    assert!(
        !lab_enabled(),
        "{test}: no packages in {} (packaging/build-packages.sh runs before the tests with PITCREW_LAB=1)",
        dir.display()
    );
    eprintln!(
        "{test}: skipped: no packages in {} (run packaging/build-packages.sh)",
        dir.display()
    );
    None
}

/// The one package in `dir` whose file name starts with `prefix` and ends with `suffix`.
fn package(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{prefix}*{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn output(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lintian_and_rpmlint_find_nothing_in_the_packages() {
    let Some(dir) = packages("lint") else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/lint-packages.sh");
    let out = Command::new(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "lint findings:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manual_pages_completions_changelog_and_examples_are_where_the_tools_look() {
    let Some(dir) = packages("contents") else {
        return;
    };
    let listing = |prefix: &str| -> Vec<String> {
        let deb = package(&dir, prefix, ".deb");
        let out = Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .map(|p| p.trim_start_matches('.').to_owned())
            .collect()
    };
    let expect = |files: &[String], wanted: &[&str]| {
        for path in wanted {
            assert!(
                files.iter().any(|f| f == path),
                "{path} missing: {files:#?}"
            );
        }
    };
    for (package, page) in [
        ("pitcrew-cli_", "pitcrew"),
        ("pitcrew-agent_", "pitcrew-agent"),
        ("pitcrew-coordinator_", "pitcrew-coordinator"),
    ] {
        let name = package.trim_end_matches('_');
        expect(
            &listing(package),
            &[
                &format!("/usr/share/man/man1/{page}.1.gz"),
                &format!("/usr/share/doc/{name}/changelog.Debian.gz"),
                &format!("/usr/share/doc/{name}/copyright"),
            ],
        );
    }
    let cli = listing("pitcrew-cli_");
    expect(
        &cli,
        &[
            "/usr/share/man/man1/pitcrew-campaign-run.1.gz",
            "/usr/share/man/man1/pitcrew-events.1.gz",
            "/usr/share/bash-completion/completions/pitcrew",
            "/usr/share/zsh/vendor-completions/_pitcrew",
            "/usr/share/fish/vendor_completions.d/pitcrew.fish",
            "/usr/share/doc/pitcrew-cli/examples/README.md",
            "/usr/share/doc/pitcrew-cli/examples/swarm-patch.toml",
            "/usr/share/doc/pitcrew-cli/examples/dcos-agent-update.toml",
        ],
    );
    // The rpm carries the same pages and completions.
    let rpm = package(&dir, "pitcrew-cli-", ".rpm");
    let files = output(Command::new("rpm").arg("-qlp").arg(&rpm));
    for path in [
        "/usr/share/man/man1/pitcrew.1.gz",
        "/usr/share/man/man1/pitcrew-campaign-run.1.gz",
        "/usr/share/bash-completion/completions/pitcrew",
        "/usr/share/doc/pitcrew-cli/examples/swarm-patch.toml",
    ] {
        assert!(
            files.lines().any(|f| f == path),
            "{path} not in the rpm: {files}"
        );
    }
}
