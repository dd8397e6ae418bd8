//! `exec`: an allow-listed argv (never a shell string) with env and workdir, bounded by the
//! timeout, output streamed and captured. Used for backups and orchestrator drain hooks.
//!
//! The environment is allow-listed as well as the argv: a request may set only the variable
//! names its `policy.exec` entry lists, and never `PATH` (see [`LocalPolicy::exec_allowed`]).
//! Otherwise `PERL5OPT`, `PYTHONPATH` or `NODE_OPTIONS` would turn any allowed interpreter
//! into arbitrary code run as root.

use std::path::PathBuf;

use pitcrew_proto::policy::LocalPolicy;
use pitcrew_proto::v1;

use super::command::{self, CommandSpec, RunError};
use super::{Ctx, Report};

/// Runs the program and reports its exit. The executor has checked the policy already; the
/// check is repeated so that this function is safe to call on its own.
pub async fn run(ctx: &Ctx, policy: &LocalPolicy, exec: &v1::Exec) -> Report {
    if let Err(refusal) = policy.exec_allowed(exec) {
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
