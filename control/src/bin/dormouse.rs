//! The `dormouse` binary: parse the command line, start tracing, run.

use std::process::ExitCode;

use clap::Parser;
use dormouse_control::cli::{Cli, run};
use dormouse_control::up::server_runtime;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match server_runtime(cli.threads) {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
