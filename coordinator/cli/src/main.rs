//! `pitcrew`: the operator's command line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    pitcrew_proto::tls::install_crypto_provider();
    let cli = pitcrew_cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pitcrew: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pitcrew_cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Errors may quote what an agent said: shown as safely as everything else.
            pitcrew_cli::say_err!("pitcrew: {error:#}");
            match error.downcast_ref::<pitcrew_cli::Exit>() {
                Some(exit) => std::process::ExitCode::from(exit.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
