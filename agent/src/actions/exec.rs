//! `exec`: an allow-listed argv (never a shell string) with env and workdir, bounded by the
//! timeout, output streamed and captured. Used for backups and orchestrator drain hooks.

use std::path::{Path, PathBuf};

use pitcrew_proto::policy::Refusal;
use pitcrew_proto::v1;

use super::command::{self, CommandSpec, RunError};
use super::{Ctx, Report};

/// Environment names a request may not set: they change what code the allowed program loads
/// or runs, which would step around the argv allow-list (e.g. `LD_PRELOAD`).
const FORBIDDEN_ENV_PREFIXES: &[&str] = &["LD_", "GCONV_PATH", "BASH_ENV", "ENV", "IFS"];

/// Checks the request's environment and workdir (the policy has already allowed its argv).
pub fn validate(exec: &v1::Exec) -> Result<(), Refusal> {
    for name in exec.env.keys() {
        let well_formed = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !well_formed {
            return Err(Refusal {
                rule: "exec.env".into(),
                message: format!("environment name {name:?} is not [A-Za-z_][A-Za-z0-9_]*"),
            });
        }
        let forbidden = FORBIDDEN_ENV_PREFIXES.iter().any(|p| {
            if p.ends_with('_') {
                name.starts_with(p)
            } else {
                name == p
            }
        });
        if forbidden {
            return Err(Refusal {
                rule: "exec.env".into(),
                message: format!(
                    "environment variable {name} may not be set by a request (it changes what code runs)"
                ),
            });
        }
    }
    if !exec.workdir.is_empty() && !Path::new(&exec.workdir).is_absolute() {
        return Err(Refusal {
            rule: "exec.workdir".into(),
            message: format!("workdir {:?} is not an absolute path", exec.workdir),
        });
    }
    Ok(())
}

/// Runs the program and reports its exit.
pub async fn run(ctx: &Ctx, exec: &v1::Exec) -> Report {
    if let Err(refusal) = validate(exec) {
        return Report::refused(refusal);
    }
    let spec = CommandSpec {
        argv: exec.argv.clone(),
        env: exec.env.clone(),
        workdir: (!exec.workdir.is_empty()).then(|| PathBuf::from(&exec.workdir)),
    };
    let program = exec.argv.first().cloned().unwrap_or_default();
    match command::run(ctx, &spec).await {
        Ok(out) if out.status.success() => {
            Report::succeeded(format!("{program} exited 0")).with_output(out.output)
        }
        Ok(out) => {
            let status = out.describe_status();
            Report::failed(format!("{program} failed with {status}"))
                .with_output(out.output)
                .with_detail("exit", status)
        }
        Err(RunError::Spawn { program, source }) => {
            Report::failed(format!("cannot start {program}: {source}"))
        }
        Err(RunError::Stopped { stop, output }) => {
            Report::stopped(stop, ctx.timeout, "its process group was killed").with_output(output)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(env: &[(&str, &str)], workdir: &str) -> v1::Exec {
        v1::Exec {
            argv: vec!["/bin/true".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workdir: workdir.into(),
        }
    }

    #[test]
    fn env_that_changes_what_code_runs_is_refused() {
        assert!(validate(&exec(&[("BACKUP_DIR", "/srv")], "/srv")).is_ok());
        for bad in ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "1X", "A-B", ""] {
            let refusal = validate(&exec(&[(bad, "x")], "")).unwrap_err();
            assert_eq!(refusal.rule, "exec.env", "{bad}");
        }
        assert_eq!(
            validate(&exec(&[], "relative")).unwrap_err().rule,
            "exec.workdir"
        );
    }
}
