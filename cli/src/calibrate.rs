//! `ccq calibrate`: per-expert activation statistics from the forward pass on real tokens.

use crate::progress::LayerReporter;
use crate::tokens::TokenArgs;
use crate::values::{HessianArg, WeightingArg};
use anyhow::{bail, Context, Result};
use ccq::calibrate::{calibrate, CalibOptions, Hessian};
use ccq::model::WeightSource;
use ccq::Checkpoint;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq calibrate`.
#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// Original checkpoint (PyTorch or Paddle naming).
    checkpoint: PathBuf,
    #[command(flatten)]
    tokens: TokenArgs,
    /// Statistics file to write (safetensors; layout in docs/calibration.md).
    #[arg(short, long)]
    output: PathBuf,
    /// Experts that receive fewer tokens are blended with their layer's statistics.
    #[arg(long, default_value_t = 16)]
    min_tokens: usize,
    /// Which second moments to record.
    #[arg(long, value_enum, default_value = "diag")]
    hessian: HessianArg,
    /// How tokens are weighted.
    #[arg(long, value_enum, default_value = "uniform")]
    weighting: WeightingArg,
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
    /// No progress.
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `ccq calibrate`.
pub fn run(args: &CalibrateArgs) -> Result<ExitCode> {
    if args.min_tokens == 0 {
        bail!("--min-tokens must be positive");
    }
    let ckpt = Checkpoint::open(&args.checkpoint)?;
    let model = ccq::model::source::OriginalWeights::new(&ckpt)?;
    model.check_complete()?;
    let source = args.tokens.source(&args.checkpoint)?;
    let tokens = source.load(model.config()).with_context(|| source.describe())?;
    let sequences = &tokens.sequences;
    let options = CalibOptions { min_tokens: args.min_tokens, hessian: args.hessian.into(), weighting: args.weighting.into() };
    if options.hessian == Hessian::Full {
        let budget = crate::quantize::parse_size(&args.hessian_budget)?;
        let need = ccq::calibrate::layerwise::model_hessian_bytes(model.config());
        if need > budget {
            bail!(
                "--hessian full needs {need} bytes of X^T X sums for this model, more than --hessian-budget {budget}; raise the budget, or let `ccq quantize --calib-tokens` calibrate layer by layer"
            );
        }
    }
    let start = std::time::Instant::now();
    let mut reporter = LayerReporter::new(args.quiet);
    let mut stats = calibrate(&ckpt, sequences, options, args.batch_tokens.max(1), &mut |p| reporter.update(p))?;
    reporter.finish();
    stats.meta["token_source"] = tokens.label.clone();
    stats.meta["seconds"] = serde_json::json!(start.elapsed().as_secs_f64());
    stats.write(&args.output)?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&stats.summary())?);
    } else {
        let fell: usize = stats.fallbacks.values().map(Vec::len).sum();
        say!(
            "wrote {}: statistics of {} linear inputs from {} tokens in {:.1} s ({:.0} tokens/s); {} expert(s) below {} tokens blended with their layer",
            args.output.display(),
            stats.inputs.len(),
            stats.meta["tokens"],
            start.elapsed().as_secs_f64(),
            stats.meta["tokens"].as_f64().unwrap_or(0.0) / start.elapsed().as_secs_f64(),
            fell,
            args.min_tokens
        );
        for (l, f) in &stats.fallbacks {
            if !f.is_empty() {
                say!("  layer {l}: experts {f:?} fell back");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
