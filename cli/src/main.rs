//! The `ccq` command line: parses flags, calls the `ccq` library, picks an exit code.
//!
//! Exit codes: 0 success; 1 a check failed (reserved for verification thresholds);
//! 2 bad input or any other error, printed once as `ccq: error: ...` with its causes.

/// `println!` that never panics: a closed stdout (`ccq ... | head`) drops the rest of the
/// output, never the work (the command still finishes and writes its files).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`say!`]).
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics: a closed stderr costs the message, never the work.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod bench;
mod calibrate;
mod dequant;
mod eval;
mod generate;
mod inspect;
mod progress;
mod quantize;
mod synth;
mod tokens;
mod values;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Quantize Mixture-of-Experts checkpoints with CCQ (convolutional code quantization).
#[derive(Parser)]
#[command(name = "ccq", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a checkpoint holds: model, layers, experts, tensors by role and dtype
    /// (reads headers only).
    Inspect(inspect::InspectArgs),
    /// Quantize a checkpoint: ERNIE 4.5 to FastDeploy's 2-bit layout, or any MoE model to
    /// ccq's native layout.
    Quantize(Box<quantize::QuantizeArgs>),
    /// Write a quantized checkpoint back as bf16, in the source model's names and orientation
    /// when ccq-provenance.json is present.
    Dequant(dequant::DequantArgs),
    /// Write a deterministic synthetic ERNIE 4.5 MoE checkpoint (for tests and benchmarks).
    Synth(synth::SynthArgs),
    /// Measure the quality and speed of ccq's schemes and readers.
    Bench(bench::BenchArgs),
    /// Measure how far a quantized checkpoint is from its original (per tensor and on
    /// activations); exit 1 when a threshold is exceeded.
    Verify(verify::VerifyArgs),
    /// Run two checkpoints of one model (e.g. original and quantized) on the same tokens or
    /// text: perplexity of each, KL divergence of the next-token distributions, top-1 agreement.
    Eval(eval::EvalArgs),
    /// Gather per-expert activation statistics on real tokens for `quantize --calib`.
    Calibrate(calibrate::CalibrateArgs),
    /// Run a checkpoint (original or quantized) on the CPU, token by token, and stream what it
    /// writes; figures on stderr.
    Generate(generate::GenerateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Dequant(args) => dequant::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Prints an error once, with its chain of causes, and returns exit code 2. A closed pipe
/// (e.g. `ccq inspect ... | head`) is not an error.
fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
    }
    let mut message = format!("ccq: error: {err}");
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!("\n  caused by: {text}"));
        }
    }
    note!("{message}");
    ExitCode::from(2)
}
