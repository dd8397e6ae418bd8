//! Log set-up shared by the daemons: structured logs on stderr (journald picks them up under
//! systemd), filtered by `PITCREW_LOG` (default `info`), coloured only on a terminal so the
//! journal never stores escape codes.

/// Installs the global tracing subscriber. Call once, at the top of `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PITCREW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
