//! Running a program for an action: argv only (never a shell), its own process group, output
//! streamed line by line and captured with a size cap, and the whole group killed on timeout
//! or cancel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{Ctx, Stop};

/// How much output an action keeps: the tail, since errors come last.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// A line longer than this is cut into pieces, so a program that never prints a newline cannot
/// make the agent buffer without bound.
const MAX_LINE: usize = 8 * 1024;

/// The PATH programs run with: the agent's own environment is not passed on, so what a
/// program sees does not depend on how the agent was started.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    /// Added to a minimal environment (LANG, which it may override, and PATH, which it may
    /// not: PATH is always [`DEFAULT_PATH`]).
    pub env: HashMap<String, String>,
    pub workdir: Option<PathBuf>,
}

/// What a finished program left.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    /// stdout and stderr interleaved by line, capped to the last [`OUTPUT_CAP`] bytes.
    pub output: String,
}

impl CommandOutput {
    /// "exit code 3" or "killed by signal 9", for messages.
    pub fn describe_status(&self) -> String {
        describe_status(&self.status)
    }
}

/// "exit code 3" or "killed by signal 9".
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| signal.to_string());
            format!("killed by signal {name}")
        }
        _ => "an unknown status".to_owned(),
    }
}

/// Why a program did not finish on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("stopped")]
    Stopped { stop: Stop, output: String },
}

/// Keeps the tail of a stream of lines within a byte budget.
#[derive(Debug, Default)]
pub struct TailBuffer {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
    dropped: usize,
}

impl TailBuffer {
    /// Adds one line (without its newline).
    pub fn push(&mut self, line: String) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > OUTPUT_CAP {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.len() + 1;
                    self.dropped += old.len() + 1;
                }
                None => break,
            }
        }
    }

    /// The kept text; when bytes were dropped it starts with a line saying how many.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.dropped > 0 {
            out.push_str(&format!(
                "[... {} earlier bytes of output dropped ...]\n",
                self.dropped
            ));
        }
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes (lossy UTF-8) and hands each
/// to `sink`.
async fn read_lines(mut reader: impl AsyncRead + Unpin, mut sink: impl FnMut(String)) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            sink(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        while pending.len() >= MAX_LINE {
            let line: Vec<u8> = pending.drain(..MAX_LINE).collect();
            sink(String::from_utf8_lossy(&line).into_owned());
        }
    }
    if !pending.is_empty() {
        sink(String::from_utf8_lossy(&pending).into_owned());
    }
}

/// Kills the program's whole process group when dropped, so no path out of [`run`] (including
/// the action's future being dropped) leaves the program or its children running.
struct GroupGuard {
    pgid: Option<Pid>,
    /// The on-disk record of this group (see `leftovers`), removed once the group is gone.
    record: Option<(PathBuf, String)>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH means the group is already gone, which is what we want.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        if let Some((dir, action_id)) = self.record.take() {
            super::leftovers::forget(&dir, &action_id);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a program to completion, or until the action times out or is cancelled; in that case
/// the whole process group is killed and reaped before this returns.
///
/// When the program exits by itself, what is left of its process group (daemons it forked
/// that kept our pipes open) is killed too: the action is over, and the pipes would otherwise
/// never reach end-of-file. Residual race: the group id is the program's pid, reaped just
/// before; a new, unrelated group could only take that number if the kernel reused the pid in
/// between, which it does only after cycling through the whole pid space.
pub async fn run(ctx: &Ctx, spec: &CommandSpec) -> Result<CommandOutput, RunError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut command = Command::new(&program);
    command
        .args(spec.argv.iter().skip(1))
        .env_clear()
        .env("LANG", "C.UTF-8")
        .envs(&spec.env)
        // Last, so that nothing in the request's environment can change it: which program a
        // name runs must not depend on the request.
        .env("PATH", DEFAULT_PATH)
        .current_dir(spec.workdir.clone().unwrap_or_else(|| PathBuf::from("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout can kill everything it started.
        .process_group(0);
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
    let record = match (&ctx.groups_dir, pgid) {
        (Some(dir), Some(pgid)) => {
            super::leftovers::record(dir, &ctx.action_id, pgid);
            Some((dir.clone(), ctx.action_id.clone()))
        }
        _ => None,
    };
    let mut guard = GroupGuard {
        pgid: pgid.map(Pid::from_raw),
        record,
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let buffer = std::sync::Mutex::new(TailBuffer::default());
    let sink = |line: String| {
        ctx.log(line.clone());
        if let Ok(mut b) = buffer.lock() {
            b.push(line);
        }
    };
    let readers = async {
        let out = async {
            if let Some(s) = stdout {
                read_lines(s, sink).await;
            }
        };
        let err = async {
            if let Some(s) = stderr {
                read_lines(s, sink).await;
            }
        };
        tokio::join!(out, err);
    };
    let finished = async {
        let status = child.wait().await;
        // The leader is gone: stop what it left behind so the readers reach end-of-file.
        guard.kill();
        status
    };
    let work = async { tokio::join!(finished, readers).0 };
    let outcome = tokio::select! {
        status = work => Ok(status),
        stop = ctx.stopped() => Err(stop),
    };
    let text = || buffer.lock().map(|b| b.text()).unwrap_or_default();
    match outcome {
        Ok(Ok(status)) => Ok(CommandOutput {
            status,
            output: text(),
        }),
        Ok(Err(source)) => Err(RunError::Spawn { program, source }),
        Err(stop) => {
            guard.kill();
            // Reap the leader so it is gone, not a zombie, when the result is reported.
            let _ = child.wait().await;
            Err(RunError::Stopped {
                stop,
                output: text(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_kept_and_truncation_is_marked() {
        let mut b = TailBuffer::default();
        for i in 0..20_000 {
            b.push(format!("line {i}"));
        }
        let text = b.text();
        assert!(text.len() <= OUTPUT_CAP + 100);
        assert!(text.starts_with("[... "), "{}", &text[..60]);
        assert!(text.ends_with("line 19999\n"));
        let mut small = TailBuffer::default();
        small.push("only".into());
        assert_eq!(small.text(), "only\n");
    }

    #[tokio::test]
    async fn path_is_the_agent_s_whatever_the_spec_says() {
        let (events, _rx) = tokio::sync::mpsc::channel(64);
        let (ctx, _cancel) = Ctx::new("path", std::time::Duration::from_secs(10), events);
        let spec = CommandSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo \"$PATH\"".into()],
            env: [("PATH".to_owned(), "/tmp/evil".to_owned())].into(),
            workdir: None,
        };
        let out = run(&ctx, &spec).await.unwrap();
        assert_eq!(out.output, format!("{DEFAULT_PATH}\n"));
    }

    #[tokio::test]
    async fn long_lines_are_split_and_invalid_utf8_is_kept_lossily() {
        let mut input = vec![b'a'; MAX_LINE + 10];
        input.extend_from_slice(b"\n\xffok\nlast");
        let mut lines = Vec::new();
        read_lines(input.as_slice(), |l| lines.push(l)).await;
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], "a".repeat(10));
        assert_eq!(lines[2], "\u{fffd}ok");
        assert_eq!(lines[3], "last");
    }
}
