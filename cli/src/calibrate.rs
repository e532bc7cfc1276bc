//! `ccq calibrate`: per-expert activation statistics from the forward pass on real tokens.

use anyhow::{bail, Context, Result};
use ccq::calibrate::{calibrate, fnv_hex, CalibOptions, Hessian, Weighting};
use ccq::model::eval::parse_tokens;
use ccq::Checkpoint;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq calibrate`.
#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// Original checkpoint (PyTorch or Paddle naming).
    checkpoint: PathBuf,
    /// Token ids: a JSON array of sequences, or with --seq-len raw little-endian u32 ids.
    #[arg(long)]
    tokens: PathBuf,
    /// Read --tokens as raw little-endian u32 ids cut into sequences of this length.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Statistics file to write (safetensors; layout in docs/calibration.md).
    #[arg(short, long)]
    output: PathBuf,
    /// Experts that receive fewer tokens are blended with their layer's statistics.
    #[arg(long, default_value_t = 16)]
    min_tokens: usize,
    /// diag: per-channel sums of squares; full: also X^T X.
    #[arg(long, default_value = "diag", value_parser = ["diag", "full"])]
    hessian: String,
    /// uniform: every token counts 1; gate: an expert's token counts its routing weight.
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "gate"])]
    weighting: String,
    /// Tokens run through the model at a time (at least one sequence).
    #[arg(long, default_value_t = 2048)]
    batch_tokens: usize,
    /// With --hessian full: refuse up front when the X^T X sums of the whole model would take
    /// more bytes than this (e.g. 8GiB); `ccq quantize --calib-tokens` needs one layer at a time.
    #[arg(long, default_value = "8GiB")]
    hessian_budget: String,
    /// Print a JSON summary (per MoE layer: expert_tokens, fallbacks).
    #[arg(long)]
    json: bool,
}

/// Runs `ccq calibrate`.
pub fn run(args: &CalibrateArgs) -> Result<ExitCode> {
    // Read once: the same bytes are parsed and fingerprinted in the statistics' metadata.
    let token_bytes = std::fs::read(&args.tokens).with_context(|| format!("reading {}", args.tokens.display()))?;
    let sequences = parse_tokens(&token_bytes, args.seq_len, &args.tokens)?;
    if args.min_tokens == 0 {
        bail!("--min-tokens must be positive");
    }
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let options = CalibOptions {
        min_tokens: args.min_tokens,
        hessian: if args.hessian == "full" { Hessian::Full } else { Hessian::Diag },
        weighting: if args.weighting == "gate" { Weighting::Gate } else { Weighting::Uniform },
    };
    if options.hessian == Hessian::Full {
        let budget = crate::quantize::parse_size(&args.hessian_budget)?;
        let source = ccq::model::source::OriginalWeights::new(&ckpt)?;
        let need = ccq::calibrate::layerwise::model_hessian_bytes(ccq::model::WeightSource::config(&source));
        if need > budget {
            bail!(
                "--hessian full needs {need} bytes of X^T X sums for this model, more than --hessian-budget {budget}; raise the budget, or let `ccq quantize --calib-tokens` calibrate layer by layer"
            );
        }
    }
    let start = std::time::Instant::now();
    let mut stats = calibrate(&ckpt, &sequences, options, args.batch_tokens.max(1))?;
    stats.meta["tokens_file"] = serde_json::json!(args.tokens.display().to_string());
    stats.meta["tokens_fnv64"] = serde_json::json!(fnv_hex(&token_bytes));
    stats.meta["seconds"] = serde_json::json!(start.elapsed().as_secs_f64());
    stats.write(&args.output)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats.summary())?);
    } else {
        let fell: usize = stats.fallbacks.values().map(Vec::len).sum();
        println!(
            "wrote {}: statistics of {} linear inputs from {} tokens in {:.1} s; {} expert(s) below {} tokens blended with their layer",
            args.output.display(),
            stats.inputs.len(),
            stats.meta["tokens"],
            start.elapsed().as_secs_f64(),
            fell,
            args.min_tokens
        );
        for (l, f) in &stats.fallbacks {
            if !f.is_empty() {
                println!("  layer {l}: experts {f:?} fell back");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
