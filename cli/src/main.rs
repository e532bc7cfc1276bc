//! The `ccq` command line (minimal dispatcher for `ccq bench`; the full CLI replaces it).

mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Convolutional code quantization for Mixture-of-Experts checkpoints.
#[derive(Parser)]
#[command(name = "ccq", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the quality and speed of a weight scheme.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccq: {e:#}");
            ExitCode::from(2)
        }
    }
}
