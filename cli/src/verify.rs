//! `ccq verify`: how far a quantized checkpoint is from its original, with thresholds.
//!
//! Exit codes: 0 every threshold met; 1 a threshold exceeded (the offenders are listed), or
//! nothing verified (no quantized tensor) without `--allow-empty`; 2 bad input (thresholds that do not parse are rejected before any work).

use anyhow::{Context, Result};
use ccq::quantized::QuantizedCheckpoint;
use ccq::verify::thresholds::Limits;
use ccq::verify::{report, verify, Thresholds, VerifyOptions, VerifyReport};
use ccq::{Checkpoint, ReadOptions};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ccq verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The original checkpoint.
    original: PathBuf,
    /// The quantized checkpoint (made by `ccq quantize`, either layout).
    quantized: PathBuf,
    /// Fail (exit 1) when a tensor's NMSE exceeds X; `SCHEME=X` limits one scheme
    /// (e.g. wint2=0.12). Repeatable.
    #[arg(long, value_name = "[SCHEME=]X")]
    max_nmse: Vec<String>,
    /// Fail (exit 1) when a tensor's output relative error ||XW - XWhat|| / ||XW|| exceeds Y;
    /// `SCHEME=Y` limits one scheme. Repeatable.
    #[arg(long, value_name = "[SCHEME=]Y")]
    max_output_err: Vec<String>,
    /// Print one JSON object (documented in docs/verify.md) instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report (heatmap, histograms, worst tensors).
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Rows of the Gaussian probe used for the output error.
    #[arg(long, default_value_t = 32)]
    probe_rows: usize,
    /// Calibration statistics (`ccq calibrate`): the output error is weighted by the real
    /// activations' second moments (diagonal, or the full X^T X when recorded) instead of a
    /// Gaussian probe.
    #[arg(long, value_name = "STATS")]
    calib: Option<PathBuf>,
    /// Read U16 tensors of the original as bf16 payload.
    #[arg(long)]
    u16_as_bf16: bool,
    /// Pass (exit 0) when the quantized checkpoint holds no quantized tensor; otherwise
    /// verifying nothing fails (exit 1).
    #[arg(long)]
    allow_empty: bool,
    /// No progress lines.
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `ccq verify`.
pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    let thresholds = Thresholds {
        nmse: Limits::parse("--max-nmse", &args.max_nmse)?,
        output_err: Limits::parse("--max-output-err", &args.max_output_err)?,
    };
    let original = Checkpoint::open_with(&args.original, ReadOptions { u16_as_bf16: args.u16_as_bf16 })?;
    let quantized = QuantizedCheckpoint::open(&args.quantized)?;
    let calibration = match &args.calib {
        Some(path) => Some((std::sync::Arc::new(ccq::calibrate::Stats::read(path)?), path.clone())),
        None => None,
    };
    let options = VerifyOptions { probe_rows: args.probe_rows.max(1), thresholds, calibration, ..VerifyOptions::default() };
    let quiet = args.quiet;
    let mut last = std::time::Instant::now();
    let verdict = verify(&original, &quantized, &options, &mut |done, total| {
        if !quiet && (last.elapsed().as_secs() >= 10 || done == total) {
            last = std::time::Instant::now();
            note!("ccq: verified {done}/{total} tensors");
        }
    })?;
    if let Some(path) = &args.report {
        write_atomically(path, &report::html(&verdict)).with_context(|| format!("writing {}", path.display()))?;
    }
    let text = if args.json { serde_json::to_string_pretty(&verdict)? + "\n" } else { summary(&verdict) };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    if verdict.tensors.is_empty() && !args.allow_empty {
        note!("ccq: nothing was verified: {} holds no quantized tensor (pass --allow-empty to accept that)", args.quantized.display());
        return Ok(ExitCode::from(1));
    }
    Ok(if verdict.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let partial = ccq::checkpoint::write::partial_name(path);
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

fn summary(r: &VerifyReport) -> String {
    let mut out = format!(
        "{}\n\n{:<8} {:>8} {:>11} {:>11} {:>13} {:>13}\n",
        r.probe, "scheme", "tensors", "NMSE mean", "NMSE max", "out-err mean", "out-err max"
    );
    for g in &r.by_scheme {
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>11.4e} {:>11.4e} {:>13.4e} {:>13.4e}",
            g.key, g.nmse.count, g.nmse.mean, g.nmse.max, g.output_rel_err.mean, g.output_rel_err.max
        );
    }
    let mut worst: Vec<_> = r.tensors.iter().collect();
    worst.sort_by(|a, b| b.nmse.total_cmp(&a.nmse));
    let _ = writeln!(
        out,
        "\nworst tensors\n{:<60} {:<6} {:>10} {:>8} {:>9} {:>10} {:>10}",
        "tensor", "scheme", "NMSE", "SQNR dB", "cosine", "max abs", "out err"
    );
    for t in worst.iter().take(10) {
        let _ = writeln!(
            out,
            "{:<60} {:<6} {:>10.4e} {:>8.2} {:>9.6} {:>10.3e} {:>10.4e}",
            t.name, t.scheme, t.nmse, t.sqnr_db, t.cosine, t.max_abs_err, t.output_rel_err
        );
    }
    if r.passed {
        out.push_str("\nall thresholds met\n");
    } else {
        let _ = writeln!(out, "\n{} threshold(s) exceeded:", r.offenders.len());
        for o in &r.offenders {
            let _ = writeln!(out, "  {}: {} {:.4e} > {:.4e}", o.name, o.figure, o.value, o.limit);
        }
    }
    out
}
