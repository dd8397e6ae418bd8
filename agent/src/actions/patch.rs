//! `patch`: a non-interactive upgrade with apt or dnf, reporting which packages changed and
//! whether the host now needs a reboot.
//!
//! The installed versions are listed before and after (`dpkg-query` / `rpm -qa`) and compared,
//! rather than parsing the package manager's chatter.
//!
//! Named packages are only ever upgraded. apt reads `name-` as "remove name" and `name+` as
//! "install name", and falls back to a regex for a name it does not know, so `allow_patch`
//! alone would also let a request remove or install packages. Names are therefore checked
//! strictly by the package manager's own naming rules (no trailing `-` or `+` for apt, no
//! leading `-`, no version or release suffix, no glob), and each must be a package that is
//! installed on the host, judged from the same listing, before the package manager runs. A dpkg/apt lock held by someone else is
//! waited for up to `lock_timeout_seconds` (0: the catalogue's default; apt's `DPkg::Lock::Timeout`), then reported as
//! such. dnf has no lock-wait option: it waits for the other process itself, bounded by the
//! action timeout.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pitcrew_proto::policy::Refusal;
use pitcrew_proto::v1;

use super::command::{self, CommandSpec, OUTPUT_CAP, RunError};
use super::{Ctx, Report};
use crate::facts;

/// Which package manager and which programs to run. The host's own by default; tests point
/// the paths at stand-ins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchTools {
    /// "apt", "dnf", or "" when the host has neither.
    pub manager: String,
    pub apt_get: PathBuf,
    pub dpkg_query: PathBuf,
    pub dnf: PathBuf,
    pub rpm: PathBuf,
}

impl PatchTools {
    /// The host's package manager, as the facts report it.
    pub fn host() -> PatchTools {
        PatchTools {
            manager: facts::package_manager(),
            apt_get: "apt-get".into(),
            dpkg_query: "dpkg-query".into(),
            dnf: "dnf".into(),
            rpm: "rpm".into(),
        }
    }
}

fn refuse_package(message: String) -> Refusal {
    Refusal {
        rule: "patch.packages".into(),
        message,
    }
}

/// Checks one name by Debian's rules: `[a-z0-9][a-z0-9+.-]+`, optionally `:arch`, and not
/// ending in `-` or `+` (apt's remove and install markers).
fn debian_name(name: &str) -> Result<(), Refusal> {
    if name.ends_with('-') {
        return Err(refuse_package(format!(
            "{name:?} ends in '-', which apt reads as \"remove {}\"; patch only upgrades",
            name.trim_end_matches('-')
        )));
    }
    if name.ends_with('+') {
        return Err(refuse_package(format!(
            "{name:?} ends in '+', which apt reads as \"install\"; to name a package whose name \
             ends in '+', add its architecture (e.g. g++:amd64)"
        )));
    }
    let (package, arch) = match name.split_once(':') {
        Some((package, arch)) => (package, Some(arch)),
        None => (name, None),
    };
    let package_ok = package.len() >= 2
        && package
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && package
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    let arch_ok = arch.is_none_or(|a| {
        a.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    if package_ok && arch_ok {
        Ok(())
    } else {
        Err(refuse_package(format!(
            "{name:?} is not a Debian package name ([a-z0-9][a-z0-9+.-]+, optionally :arch)"
        )))
    }
}

/// Checks one name by RPM's rules: `[A-Za-z0-9_][A-Za-z0-9_.+-]*` (a `.arch` suffix is part
/// of that), not ending in `-` or `.`: no epoch, version or glob.
fn rpm_name(name: &str) -> Result<(), Refusal> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(refuse_package(format!(
            "{name:?} is not an RPM package name ([A-Za-z0-9_][A-Za-z0-9_.+-]*, optionally .arch)"
        )))
    }
}

/// Checks package names by the rules of `manager` ("apt", "dnf"; Debian's rules otherwise,
/// the stricter). A name that starts with '-' would be read as an option (apt's `-o` can run
/// arbitrary commands), and apt reads a trailing `-`/`+` as remove/install.
pub fn validate_packages(manager: &str, packages: &[String]) -> Result<(), Refusal> {
    for name in packages {
        if name.is_empty() || name.len() > 200 {
            return Err(refuse_package(format!(
                "{name:?} is not a package name (1 to 200 characters)"
            )));
        }
        match manager {
            "dnf" => rpm_name(name)?,
            _ => debian_name(name)?,
        }
    }
    Ok(())
}

/// Whether the requested name `name` is the installed package `listed`: the same name, or
/// `listed` is that name qualified by an architecture (`libc6:amd64` for apt, `bash.x86_64`
/// as rpm lists it).
fn names_package(manager: &str, name: &str, listed: &str) -> bool {
    if listed == name {
        return true;
    }
    match manager {
        "dnf" => listed
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|arch| !arch.is_empty() && !arch.contains('.')),
        _ => {
            !name.contains(':')
                && listed
                    .split_once(':')
                    .is_some_and(|(package, _)| package == name)
        }
    }
}

/// The requested names that are not installed, judged from the installed list.
pub fn not_installed<'a>(
    manager: &str,
    packages: &'a [String],
    installed: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    packages
        .iter()
        .filter(|name| {
            !installed
                .keys()
                .any(|listed| names_package(manager, name, listed))
        })
        .map(String::as_str)
        .collect()
}

/// Parses `dpkg-query -W -f '${db:Status-Status} ${binary:Package} ${Version}\n'` into the
/// packages present on the host. dpkg also lists packages it only remembers ("not-installed",
/// or removed with their "config-files" kept): those are not installed.
pub fn parse_dpkg_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let status = parts.next()?;
            let name = parts.next()?;
            let version = parts.next()?;
            (status != "not-installed" && status != "config-files")
                .then(|| (name.to_owned(), version.to_owned()))
        })
        .collect()
}

/// Parses "name version" lines into a map (later lines win; blank lines are skipped).
pub fn parse_versions(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// "name old -> new" for every package whose version changed, appeared or disappeared.
pub fn changed_packages(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut changed = Vec::new();
    for (name, new) in after {
        match before.get(name) {
            Some(old) if old == new => {}
            Some(old) => changed.push(format!("{name} {old} -> {new}")),
            None => changed.push(format!("{name} (none) -> {new}")),
        }
    }
    for (name, old) in before {
        if !after.contains_key(name) {
            changed.push(format!("{name} {old} -> (removed)"));
        }
    }
    changed
}

/// Whether apt's output says the dpkg/apt lock was held by someone else.
pub fn lock_held(output: &str) -> Option<String> {
    output
        .lines()
        .find(|l| {
            l.contains("Could not get lock")
                || l.contains("Unable to acquire the dpkg frontend lock")
                || l.contains("Unable to lock directory")
                || l.contains("is held by process")
        })
        .map(|l| l.trim().to_owned())
}

/// Keeps the last `OUTPUT_CAP` bytes of `text`, on a character boundary.
fn tail(text: &str) -> String {
    if text.len() <= OUTPUT_CAP {
        return text.to_owned();
    }
    let mut start = text.len() - OUTPUT_CAP;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[... earlier output dropped ...]\n{}", &text[start..])
}

enum Step {
    Done(String),
    Failed(Report),
}

/// Runs one step, appending its output to `log`; a failure becomes the action's report.
async fn step(ctx: &Ctx, spec: CommandSpec, log: &mut String, what: &str) -> Step {
    log.push_str(&format!("$ {}\n", spec.argv.join(" ")));
    match command::run(ctx, &spec).await {
        Ok(out) => {
            log.push_str(&out.output);
            if out.status.success() {
                Step::Done(out.output)
            } else if let Some(line) = lock_held(&out.output) {
                Step::Failed(
                    Report::failed(format!(
                        "package manager lock held by another process (gave up waiting): {line}"
                    ))
                    .with_output(tail(log)),
                )
            } else {
                Step::Failed(
                    Report::failed(format!("{what} failed with {}", out.describe_status()))
                        .with_output(tail(log)),
                )
            }
        }
        Err(RunError::Spawn { program, source }) => {
            Step::Failed(Report::failed(format!("cannot start {program}: {source}")))
        }
        Err(RunError::Stopped { stop, output }) => {
            log.push_str(&output);
            Step::Failed(
                Report::stopped(
                    stop,
                    ctx.timeout,
                    "the package manager was killed; check the host with `dpkg --audit` or `dnf check`",
                )
                .with_output(tail(log)),
            )
        }
    }
}

fn spec(program: &std::path::Path, args: &[&str], extra: &[String]) -> CommandSpec {
    let mut argv = vec![program.display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.extend(extra.iter().cloned());
    let mut env = std::collections::HashMap::new();
    env.insert("DEBIAN_FRONTEND".to_owned(), "noninteractive".to_owned());
    CommandSpec {
        argv,
        env,
        workdir: None,
    }
}

/// The action.
pub async fn run(ctx: &Ctx, tools: &PatchTools, request: &v1::Patch) -> Report {
    if let Err(refusal) = validate_packages(&tools.manager, &request.packages) {
        return Report::refused(refusal);
    }
    let mut log = String::new();
    let (list, steps): (CommandSpec, Vec<(CommandSpec, &str)>) = match tools.manager.as_str() {
        "apt" => {
            let lock = format!("DPkg::Lock::Timeout={}", request.lock_timeout().as_secs());
            let update = spec(&tools.apt_get, &["-o", &lock, "update"], &[]);
            let common = [
                "-y",
                "-o",
                lock.as_str(),
                "-o",
                "Dpkg::Options::=--force-confold",
                "-o",
                "Dpkg::Options::=--force-confdef",
            ];
            let upgrade = if request.packages.is_empty() {
                let mut args = common.to_vec();
                args.push("upgrade");
                spec(&tools.apt_get, &args, &[])
            } else {
                let mut args = common.to_vec();
                args.extend(["install", "--only-upgrade", "--"]);
                spec(&tools.apt_get, &args, &request.packages)
            };
            (
                spec(
                    &tools.dpkg_query,
                    &[
                        "-W",
                        "-f",
                        "${db:Status-Status} ${binary:Package} ${Version}\\n",
                    ],
                    &[],
                ),
                vec![(update, "apt-get update"), (upgrade, "apt-get upgrade")],
            )
        }
        "dnf" => {
            let upgrade = if request.packages.is_empty() {
                spec(&tools.dnf, &["-y", "upgrade"], &[])
            } else {
                spec(&tools.dnf, &["-y", "upgrade", "--"], &request.packages)
            };
            (
                spec(
                    &tools.rpm,
                    &[
                        "-qa",
                        "--qf",
                        "%{NAME}.%{ARCH} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n",
                    ],
                    &[],
                ),
                vec![(upgrade, "dnf upgrade")],
            )
        }
        _ => {
            return Report::failed(
                "no supported package manager (apt or dnf) was found on this host",
            );
        }
    };
    let parse = |text: &str| match tools.manager.as_str() {
        "apt" => parse_dpkg_list(text),
        _ => parse_versions(text),
    };
    ctx.progress(5, "listing installed packages");
    let before = match step(ctx, list.clone(), &mut String::new(), "listing packages").await {
        Step::Done(text) => parse(&text),
        Step::Failed(report) => return report,
    };
    // Upgrade only: a name that is not installed would make apt or dnf install it (or read it
    // as a pattern), so it is refused before the package manager runs.
    let missing = not_installed(&tools.manager, &request.packages, &before);
    if !missing.is_empty() {
        return Report::refused(refuse_package(format!(
            "{} {} not installed on this host; patch only upgrades installed packages (name them as {} lists them)",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            if tools.manager == "dnf" {
                "rpm -qa"
            } else {
                "dpkg-query -W"
            }
        )));
    }
    let total = steps.len() as i32;
    for (i, (command, what)) in steps.into_iter().enumerate() {
        ctx.progress(10 + 80 * i as i32 / total.max(1), what);
        if let Step::Failed(report) = step(ctx, command, &mut log, what).await {
            return report;
        }
    }
    ctx.progress(95, "comparing installed packages");
    let after = match step(ctx, list, &mut String::new(), "listing packages").await {
        Step::Done(text) => parse(&text),
        Step::Failed(report) => return report,
    };
    let changed = changed_packages(&before, &after);
    let reboot = facts::reboot_required(&tools.manager);
    let message = format!(
        "{} package(s) changed{}",
        changed.len(),
        if reboot { "; a reboot is required" } else { "" }
    );
    Report::succeeded(message)
        .with_output(tail(&log))
        .with_detail("changed_packages", changed.join("\n"))
        .with_detail("changed_count", changed.len().to_string())
        .with_detail("reboot_required", reboot.to_string())
        .with_detail("package_manager", tools.manager.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_changes_are_listed_as_old_to_new() {
        let before = parse_versions("libc6 2.36-9\nopenssl 3.0.11-1\ncurl 7.88\n\n");
        let after = parse_versions("libc6 2.36-9+deb12u4\nopenssl 3.0.11-1\nnewpkg 1.0\n");
        assert_eq!(
            changed_packages(&before, &after),
            vec![
                "libc6 2.36-9 -> 2.36-9+deb12u4",
                "newpkg (none) -> 1.0",
                "curl 7.88 -> (removed)"
            ]
        );
        assert!(changed_packages(&before, &before).is_empty());
    }

    #[test]
    fn package_names_follow_the_package_manager_s_rules() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            validate_packages(
                "apt",
                &names(&["openssl", "libc6:amd64", "g++:amd64", "0ad"])
            )
            .is_ok()
        );
        for bad in [
            "-oAPT::Update::Pre-Invoke::=sh",
            "",
            "a",
            "a b",
            "pkg;x",
            "--reinstall",
            "nginx-",
            "nginx+",
            "g++",
            "OpenSSL",
            "openssl=3.0.11-1",
            "openssl/bookworm",
            "lib*",
            "libc6:",
            "libc6:amd64-",
        ] {
            assert_eq!(
                validate_packages("apt", &names(&[bad])).unwrap_err().rule,
                "patch.packages",
                "{bad}"
            );
        }
        let removal = validate_packages("apt", &names(&["nginx-"])).unwrap_err();
        assert!(
            removal.message.contains("remove nginx"),
            "{}",
            removal.message
        );
        assert!(
            validate_packages(
                "dnf",
                &names(&["NetworkManager", "gcc-c++", "bash.x86_64", "python3.11"])
            )
            .is_ok()
        );
        for bad in ["-x", "bash-", "bash*", "bash-0:5.1-1", "bash.", "a b"] {
            assert!(validate_packages("dnf", &names(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_installed_packages_may_be_named() {
        let dpkg = parse_dpkg_list(
            "installed libc6:amd64 2.36-9\ninstalled openssl 3.0.11-1\n\
             config-files oldpkg 1.0\nnot-installed neverpkg \nhalf-configured broken 2\n",
        );
        assert_eq!(
            dpkg.keys().collect::<Vec<_>>(),
            vec!["broken", "libc6:amd64", "openssl"]
        );
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let requested = names(&[
            "libc6",
            "libc6:amd64",
            "openssl",
            "oldpkg",
            "neverpkg",
            "libc6:i386",
        ]);
        assert_eq!(
            not_installed("apt", &requested, &dpkg),
            vec!["oldpkg", "neverpkg", "libc6:i386"]
        );
        let rpm = parse_versions("bash.x86_64 0:5.1-1\npython3.11.x86_64 0:3.11-1\n");
        let requested = names(&["bash", "bash.x86_64", "python3.11", "python3", "bash.i686"]);
        assert_eq!(
            not_installed("dnf", &requested, &rpm),
            vec!["python3", "bash.i686"]
        );
    }

    #[test]
    fn apt_lock_messages_are_recognised() {
        let out = "Reading package lists...\nE: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)\nE: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?\n";
        assert!(lock_held(out).unwrap().contains("Could not get lock"));
        assert!(lock_held("E: Unable to locate package nope\n").is_none());
    }

    #[test]
    fn output_tails_keep_the_end_on_a_char_boundary() {
        let text = "é".repeat(OUTPUT_CAP);
        let t = tail(&text);
        assert!(t.starts_with("[... earlier output dropped ...]\n"));
        assert!(t.ends_with('é'));
        assert_eq!(tail("short"), "short");
    }
}
