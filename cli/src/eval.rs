//! `ccq eval`: perplexity, KL divergence and top-1 agreement of a quantized model against
//! its original, on the same tokens.

use anyhow::{Context, Result};
use ccq::model::eval::{check, evaluate, read_tokens};
use ccq::model::source::{OriginalWeights, QuantizedWeights};
use ccq::quantized::QuantizedCheckpoint;
use ccq::Checkpoint;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Original checkpoint (PyTorch or Paddle naming).
    original: PathBuf,
    /// Quantized checkpoint (FastDeploy or native layout).
    quant: PathBuf,
    /// Token ids: a JSON array of sequences (arrays of ids), or with --seq-len raw
    /// little-endian u32 ids.
    #[arg(long)]
    tokens: PathBuf,
    /// Read --tokens as raw little-endian u32 ids cut into sequences of this length.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Tokens run through the models at a time (at least one sequence); bounds the memory
    /// of hidden states and logits.
    #[arg(long, default_value_t = 2048)]
    batch_tokens: usize,
    /// Print {tokens, ppl_original, ppl_quantized, kld_mean, top1_agreement, kld_p50, kld_p90,
    /// kld_p99} as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ccq eval`.
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    let sequences = read_tokens(&args.tokens, args.seq_len)?;
    let original = Checkpoint::open(&args.original)?;
    let original = OriginalWeights::new(&original).with_context(|| format!("original {}", args.original.display()))?;
    let quant = QuantizedCheckpoint::open(&args.quant)?;
    let quant = QuantizedWeights::new(&quant).with_context(|| format!("quantized {}", args.quant.display()))?;
    check(&original, &quant, &sequences).with_context(|| format!("tokens {}", args.tokens.display()))?;
    let report = evaluate(&original, &quant, &sequences, args.batch_tokens)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("tokens          {} predicted positions in {} sequences", report.tokens, sequences.len());
        println!("ppl original    {:.4}", report.ppl_original);
        println!("ppl quantized   {:.4}", report.ppl_quantized);
        println!("KL mean         {:.6} nats (original || quantized)", report.kld_mean);
        println!("KL p50/p90/p99  {:.6} / {:.6} / {:.6}", report.kld_p50, report.kld_p90, report.kld_p99);
        println!("top-1 agreement {:.4}", report.top1_agreement);
    }
    Ok(ExitCode::SUCCESS)
}
