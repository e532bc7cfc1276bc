//! `ccq dequant`: write a quantized checkpoint back as a bf16 one, in the source's naming.

use anyhow::Result;
use ccq::quantized::{write_dequantized, DequantOptions, QuantizedCheckpoint};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq dequant`.
#[derive(clap::Args)]
pub struct DequantArgs {
    /// Quantized checkpoint (FastDeploy or native layout).
    quant: PathBuf,
    /// Output directory (written as OUT.ccq-partial, renamed into place when complete).
    #[arg(short, long)]
    output: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    /// No summary.
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `ccq dequant`.
pub fn run(args: &DequantArgs) -> Result<ExitCode> {
    let q = QuantizedCheckpoint::open(&args.quant)?;
    if q.provenance().is_none() {
        note!(
            "ccq: note: {} has no {}: tensors keep their stored names{}",
            args.quant.display(),
            ccq::format::provenance::PROVENANCE_FILE,
            match q.layout() {
                ccq::convert::OutputLayout::FastDeploy => " (packed NAME written as NAME.weight) and the logical [in, out] orientation",
                ccq::convert::OutputLayout::Native => " and the orientation the native metadata records",
            }
        );
    }
    let summary = write_dequantized(&q, &args.output, &DequantOptions { force: args.force })?;
    if !args.quiet {
        note!(
            "wrote {}: {} tensors ({} dequantized) in {} shard(s), {} bytes, {}",
            args.output.display(),
            summary.tensors,
            summary.dequantized,
            summary.shards,
            summary.bytes,
            if summary.restored_source { "source names and orientation" } else { "stored names" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
