//! `ccq inspect`: a header-only summary of a checkpoint, for people or (with `--json`) tools.

use anyhow::Result;
use ccq::inspect::{ranges, Inspection, Totals};
use ccq::{Checkpoint, ReadOptions};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// A checkpoint directory (config.json plus model.safetensors or sharded files with
    /// model.safetensors.index.json) or a single .safetensors file.
    path: PathBuf,
    /// Print one JSON object (schema in docs/inspect.md) instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Treat U16 tensors as bf16 payload (Paddle's converter stores bf16 weights as U16).
    #[arg(long)]
    u16_as_bf16: bool,
}

/// Runs `ccq inspect`.
pub fn run(args: &InspectArgs) -> Result<ExitCode> {
    let options = ReadOptions { u16_as_bf16: args.u16_as_bf16 };
    let ckpt = Checkpoint::open_with(&args.path, options)?;
    let inspection = Inspection::of(&ckpt)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&inspection)?;
        s.push('\n');
        s
    } else {
        human(&inspection, &args.path)
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn human(s: &Inspection, path: &std::path::Path) -> String {
    let mut out = String::new();
    let files = s.by_file.len();
    let _ = writeln!(out, "checkpoint  {} ({files} file{}, {} of tensor data)", path.display(), plural(files), bytes(s.total_bytes));
    let model = s.model_type.as_deref().unwrap_or("unknown model type");
    let _ = writeln!(out, "model       {model} (family {}, {} naming)", s.family.name(), s.naming.name());
    let _ =
        writeln!(out, "layers      {}, MoE layers {} ({} of {})", s.num_layers, ranges(&s.moe_layers), s.moe_layers.len(), s.num_layers);
    if s.num_experts > 0 {
        let top_k = s.experts_per_token.map(|k| format!(" (top-{k})")).unwrap_or_default();
        let _ = writeln!(out, "experts     {} routed per MoE layer{top_k}, {} shared", s.num_experts, s.num_shared_experts);
    }
    match &s.quantized {
        Some(q) => {
            let schemes: Vec<String> = q.params_by_scheme.iter().map(|(k, v)| format!("{k} {}", thousands(*v))).collect();
            let _ = writeln!(
                out,
                "quantized   {} layout, {} packed tensors, {:.3} bits per weight",
                q.layout.name(),
                q.packed_tensors,
                q.bits_per_weight
            );
            let _ = writeln!(
                out,
                "parameters  {} logical ({}); {} stored elements in {} tensors",
                thousands(q.logical_params),
                schemes.join(", "),
                thousands(s.total_params),
                s.tensors.len()
            );
        }
        None => {
            let _ = writeln!(out, "parameters  {} in {} tensors", thousands(s.total_params), s.tensors.len());
        }
    }
    table(&mut out, "role", s.by_role.iter().map(|(r, t)| (r.name().to_string(), *t)));
    table(&mut out, "dtype", s.by_dtype.iter().map(|(d, t)| (d.clone(), *t)));
    if !s.notes.is_empty() {
        let _ = writeln!(out, "\nnotes");
        for note in &s.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

fn table(out: &mut String, what: &str, rows: impl Iterator<Item = (String, Totals)>) {
    let _ = writeln!(out, "\n{:<16} {:>8} {:>16} {:>12}", format!("by {what}"), "tensors", "params", "bytes");
    for (name, t) in rows {
        let _ = writeln!(out, "{name:<16} {:>8} {:>16} {:>12}", t.tensors, thousands(t.params), bytes(t.bytes));
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with one decimal.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
