//! `ccq synth`: writes a deterministic synthetic ERNIE 4.5 MoE checkpoint.

use crate::values::NamingArg;
use anyhow::{bail, Result};
use ccq::layout::Naming;
use ccq::synth::{write_checkpoint, SynthModel, SynthOptions};
use clap::builder::PossibleValuesParser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq synth`.
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output directory (created; an existing non-empty one is refused unless --force).
    #[arg(short, long)]
    output: PathBuf,
    /// Model shape.
    #[arg(long, default_value = "tiny", value_parser = PossibleValuesParser::new(SynthModel::PRESETS))]
    preset: String,
    /// Tensor naming.
    #[arg(long, value_enum, default_value = "pytorch")]
    naming: NamingArg,
    /// Number of shard files (1 writes model.safetensors without an index).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Seed of the value streams.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override the number of decoder layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Override the number of routed experts per MoE layer.
    #[arg(long)]
    experts: Option<usize>,
    /// Add a multi-token-prediction block (the 300b-a47b preset has one already).
    #[arg(long)]
    mtp: bool,
    /// Write headers only, leaving the data as holes (header-only benchmarks of big shapes).
    #[arg(long)]
    sparse: bool,
    /// Paddle naming only: store bf16 weights as U16, as Paddle's converter does.
    #[arg(long)]
    u16: bool,
    /// Write into an existing non-empty directory.
    #[arg(long)]
    force: bool,
}

/// Runs `ccq synth`.
pub fn run(args: &SynthArgs) -> Result<ExitCode> {
    let Some(mut model) = SynthModel::preset(&args.preset) else {
        bail!("unknown preset '{}'; choose one of {}", args.preset, SynthModel::PRESETS.join(", "));
    };
    if let Some(layers) = args.layers {
        model.num_layers = layers;
    }
    if let Some(experts) = args.experts {
        model.num_experts = experts;
    }
    model.mtp |= args.mtp;
    if model.num_layers == 0 || model.num_experts == 0 || args.shards == 0 {
        bail!("--layers, --experts and --shards must be at least 1");
    }
    let naming = Naming::from(args.naming);
    if args.u16 && naming != Naming::Paddle {
        bail!("--u16 applies to --naming paddle only");
    }
    let non_empty = std::fs::read_dir(&args.output).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && !args.force {
        bail!("{} exists and is not empty; pass --force to write into it", args.output.display());
    }
    let options = SynthOptions { naming, shards: args.shards, seed: args.seed, sparse: args.sparse, bf16_as_u16: args.u16 };
    let summary = write_checkpoint(&model, &options, &args.output)?;
    note!(
        "wrote {} tensors ({} bytes of data) in {} file(s) to {}",
        summary.tensors,
        summary.data_bytes,
        summary.files.len(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
