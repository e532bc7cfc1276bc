//! `ccq eval`: perplexity, KL divergence and top-1 agreement of one model against another, on
//! the same tokens.

use crate::progress::LayerReporter;
use crate::tokens::TokenArgs;
use anyhow::{Context, Result};
use ccq::model::eval::{check_models, evaluate};
use ccq::model::source::ModelFiles;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The reference checkpoint, e.g. the original (any checkpoint ccq reads).
    original: PathBuf,
    /// The checkpoint compared with it: quantized (either layout), dequantized, or another
    /// original of the same architecture (e.g. a fine-tune).
    quant: PathBuf,
    #[command(flatten)]
    tokens: TokenArgs,
    /// Tokens run through the models at a time (at least one sequence); bounds the memory
    /// of hidden states and logits.
    #[arg(long, default_value_t = 2048)]
    batch_tokens: usize,
    /// Print {tokens, ppl_original, ppl_quantized, kld_mean, top1_agreement, kld_p50, kld_p90,
    /// kld_p99} as JSON (the first checkpoint is "original", the second "quantized").
    #[arg(long)]
    json: bool,
    /// No progress.
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `ccq eval`.
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    let a_files = ModelFiles::open(&args.original).with_context(|| format!("first checkpoint {}", args.original.display()))?;
    let b_files = ModelFiles::open(&args.quant).with_context(|| format!("second checkpoint {}", args.quant.display()))?;
    let a = a_files.weights().with_context(|| format!("first checkpoint {}", args.original.display()))?;
    let b = b_files.weights().with_context(|| format!("second checkpoint {}", args.quant.display()))?;
    check_models(a.as_ref(), b.as_ref())?;
    let source = args.tokens.source(&args.original)?;
    let tokens = source.load(a.config()).with_context(|| source.describe())?;
    let sequences = &tokens.sequences;
    let mut reporter = LayerReporter::new(args.quiet);
    let start = std::time::Instant::now();
    let report = evaluate(a.as_ref(), b.as_ref(), sequences, args.batch_tokens, &mut |p| reporter.update(p))?;
    reporter.finish();
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let n: usize = sequences.iter().map(Vec::len).sum();
        say!("A               {} ({})", args.original.display(), a_files.kind());
        say!("B               {} ({})", args.quant.display(), b_files.kind());
        say!(
            "tokens          {} predicted positions in {} sequences; {seconds:.1} s, {:.0} tokens/s through both models",
            report.tokens,
            sequences.len(),
            n as f64 / seconds
        );
        say!("ppl original    {:.4} (A)", report.ppl_original);
        say!("ppl quantized   {:.4} (B)", report.ppl_quantized);
        say!("KL mean         {:.6} nats (A || B)", report.kld_mean);
        say!("KL p50/p90/p99  {:.6} / {:.6} / {:.6}", report.kld_p50, report.kld_p90, report.kld_p99);
        say!("top-1 agreement {:.4}", report.top1_agreement);
    }
    Ok(ExitCode::SUCCESS)
}
