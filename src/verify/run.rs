//! Running a verification: pair each quantized tensor with its original sources, then
//! measure it.
//!
//! Pairing uses the quantized checkpoint's provenance record (`ccq-provenance.json`) when it
//! has one, and otherwise regroups the original checkpoint the way `ccq quantize` would for
//! the quantized checkpoint's layout (so a FastDeploy checkpoint made elsewhere can still be
//! checked against an ERNIE 4.5 original). Everything that does not match, in either
//! direction, is reported at once before any tensor is measured.

use super::metrics::ErrorSums;
use super::{TensorRow, Thresholds, VerifyReport};
use crate::checkpoint::Checkpoint;
use crate::convert::plan::group_sources;
use crate::error::{Error, Result};
use crate::kernel::{self, Input, Weights};
use crate::layout::ModelLayout;
use crate::quantized::{QuantizedCheckpoint, QuantizedTensor};
use crate::rng::Rng;
use std::collections::{HashMap, HashSet};

/// Mismatches listed in full before the rest are counted.
const MAX_LISTED: usize = 20;

/// Options of [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyOptions {
    /// Rows of the Gaussian probe X used for the output error.
    pub probe_rows: usize,
    /// Seed of the probe.
    pub seed: u64,
    /// Pass/fail limits.
    pub thresholds: Thresholds,
    /// Calibration statistics (`ccq calibrate`) and their file: when given, the output error
    /// is weighted by them instead of measured on the Gaussian probe.
    pub calibration: Option<(std::sync::Arc<crate::calibrate::Stats>, std::path::PathBuf)>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { probe_rows: 32, seed: 0x5EED, thresholds: Thresholds::default(), calibration: None }
    }
}

/// A quantized tensor with the original tensors whose columns it holds.
struct Pairing<'a> {
    tensor: &'a QuantizedTensor,
    sources: Vec<(String, usize)>,
    transposed: bool,
}

/// Measures every quantized tensor of `quant` against `original`, one tensor at a time, and
/// calls `progress(done, total)` after each.
pub fn verify(
    original: &Checkpoint,
    quant: &QuantizedCheckpoint,
    options: &VerifyOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<VerifyReport> {
    let model = ModelLayout::of(original)?;
    let pairings = pair(original, &model, quant)?;
    if let Some((stats, path)) = &options.calibration {
        let names: Vec<(String, Vec<String>, usize)> =
            pairings.iter().map(|p| (p.tensor.name.clone(), p.sources.iter().map(|s| s.0.clone()).collect(), p.tensor.k)).collect();
        stats.check_covers(path, names.iter().map(|(n, s, k)| (n.as_str(), s.as_slice(), *k)))?;
    }
    let mut rows = Vec::new();
    for (i, p) in pairings.iter().enumerate() {
        rows.extend(measure(original, &model, quant, p, options)?);
        progress(i + 1, pairings.len());
    }
    let probe = match &options.calibration {
        Some((stats, path)) if stats.inputs.values().all(|s| s.xtx.is_some()) => format!(
            "output error from the calibration statistics {} (full X^T X): sqrt(tr(E^T H E) / tr(W^T H W)), H = X^T X / tokens, E = W - What",
            path.display()
        ),
        Some((_, path)) => format!(
            "output error from the calibration statistics {} (diagonal): sqrt(sum_k h_k sum_n (W - What)^2 / sum_k h_k sum_n W^2), h_k = mean square activation of input k",
            path.display()
        ),
        None => format!(
            "output error on a fixed-seed Gaussian probe X of {} rows per tensor (seed {:#x}; no calibration activations given)",
            options.probe_rows, options.seed
        ),
    };
    Ok(VerifyReport::build(
        original.path().display().to_string(),
        quant.checkpoint().path().display().to_string(),
        probe,
        rows,
        &options.thresholds,
    ))
}

/// Pairs each packed tensor with its sources and checks the two checkpoints belong together.
fn pair<'a>(original: &Checkpoint, model: &ModelLayout, quant: &'a QuantizedCheckpoint) -> Result<Vec<Pairing<'a>>> {
    let regrouped: HashMap<String, (Vec<String>, bool)> = if quant.provenance().is_some() {
        HashMap::new()
    } else {
        group_sources(original, model, quant.layout())
            .into_iter()
            .map(|g| (g.name, (g.sources.into_iter().map(|(_, s)| s).collect(), g.transpose)))
            .collect()
    };
    let mut problems = Vec::new();
    let mut pairings = Vec::new();
    let mut covered = HashSet::new();
    for t in quant.tensors() {
        let (names, transposed) = match &t.sources {
            Some(sources) => (sources.iter().map(|s| s.name.clone()).collect(), t.transposed),
            None => match regrouped.get(&if t.is_quantized() { quant.layout().weight_name(&t.name) } else { t.name.clone() }) {
                Some((names, transposed)) => (names.clone(), *transposed),
                None => {
                    problems.push(format!("'{}' has no counterpart in the original", t.name));
                    continue;
                }
            },
        };
        match source_widths(original, t, &names, transposed) {
            Ok(sources) => {
                covered.extend(names.iter().cloned());
                if t.is_quantized() {
                    pairings.push(Pairing { tensor: t, sources, transposed });
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    let missing: Vec<&str> = original.tensors().iter().map(|t| t.name.as_str()).filter(|n| !covered.contains(*n)).collect();
    if let Some(first) = missing.first() {
        problems.push(format!("{} original tensor(s) are not in the quantized checkpoint (first: '{first}')", missing.len()));
    }
    if problems.len() > MAX_LISTED {
        let more = problems.len() - MAX_LISTED;
        problems.truncate(MAX_LISTED);
        problems.push(format!("... and {more} more"));
    }
    if !problems.is_empty() {
        return Err(Error::Mismatch {
            original: original.path().to_path_buf(),
            quantized: quant.checkpoint().path().to_path_buf(),
            problems,
        });
    }
    Ok(pairings)
}

/// Each source's column count in `t`'s logical matrix, checking that the shapes agree.
fn source_widths(
    original: &Checkpoint,
    t: &QuantizedTensor,
    names: &[String],
    transposed: bool,
) -> std::result::Result<Vec<(String, usize)>, String> {
    let mut out = Vec::new();
    let mut total = 0;
    for name in names {
        let e = original.get(name).map_err(|_| format!("'{}' comes from '{name}', which the original does not have", t.name))?;
        let (k, width) = match (e.shape.as_slice(), transposed) {
            ([rows, cols], true) => (*cols, *rows),
            ([rows, cols], false) => (*rows, *cols),
            _ => (e.numel(), 1),
        };
        if k != t.k {
            return Err(format!("'{}' has {} inputs but its source '{name}' {:?} has {k}", t.name, t.k, e.shape));
        }
        total += width;
        out.push((name.clone(), width));
    }
    if total != t.n {
        return Err(format!("'{}' has {} outputs but its sources give {total}", t.name, t.n));
    }
    Ok(out)
}

/// The figures of one packed tensor, one row per source.
fn measure(
    original: &Checkpoint,
    model: &ModelLayout,
    quant: &QuantizedCheckpoint,
    p: &Pairing,
    options: &VerifyOptions,
) -> Result<Vec<TensorRow>> {
    let t = p.tensor;
    let names: Vec<String> = p.sources.iter().map(|(n, _)| n.clone()).collect();
    let w = original.logical_matrix(&names, t.k, t.n, p.transposed)?;
    let owned = quant.weights(t)?;
    let packed = owned.as_kernel();
    let kernel_error = |source: kernel::KernelError| quant.kernel_error(t, source);
    let w_hat = kernel::dequantize(&packed).map_err(kernel_error)?;
    // The Gaussian probe is only run when no calibration statistics weight the error.
    let outputs = match &options.calibration {
        Some((stats, _)) => OutputReference::Calibration(stats),
        None => {
            let m = options.probe_rows.max(1);
            let x = Rng::for_stream(options.seed, "probe", t.k as u64).normals(m * t.k);
            let w_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let reference = Weights::Dense { dtype: crate::Dtype::F32, bytes: &w_bytes, k: t.k, n: t.n };
            let y = kernel::matmul(Input::F32(&x), m, &reference).map_err(kernel_error)?;
            let y_hat = kernel::matmul(Input::F32(&x), m, &packed).map_err(kernel_error)?;
            OutputReference::Probe { y, y_hat }
        }
    };
    quant.release(t);
    for name in &names {
        original.release(original.get(name)?);
    }
    let scheme = t.scheme.map_or("none", |s| s.name()).to_string();
    let mut rows = Vec::new();
    let mut offset = 0;
    for (name, width) in &p.sources {
        let weights = column_sums(&w, &w_hat, t.n, offset, *width);
        let output_rel_err = match &outputs {
            OutputReference::Calibration(stats) => {
                let st =
                    stats.for_weight(name).ok_or_else(|| Error::BadInput { problem: format!("no calibration statistics for '{name}'") })?;
                weighted_error(&w, &w_hat, t.k, t.n, offset, *width, st)
            }
            OutputReference::Probe { y, y_hat } => column_sums(y, y_hat, t.n, offset, *width).relative_l2(),
        };
        let class = model.classify(name);
        rows.push(TensorRow {
            name: name.clone(),
            quantized: t.name.clone(),
            scheme: scheme.clone(),
            role: class.role.name().to_string(),
            layer: class.layer,
            expert: class.expert,
            k: t.k,
            n: *width,
            nmse: weights.nmse(),
            sqnr_db: weights.sqnr_db(),
            cosine: weights.cosine(),
            max_abs_err: weights.max_abs,
            output_rel_err,
        });
        offset += width;
    }
    Ok(rows)
}

/// What the output error of a tensor is measured against.
enum OutputReference<'a> {
    /// Calibration statistics: the activation-weighted error.
    Calibration(&'a crate::calibrate::Stats),
    /// `X W` and `X What` on the Gaussian probe.
    Probe { y: Vec<f32>, y_hat: Vec<f32> },
}

/// Error sums over columns `offset..offset + width` of two row-major matrices `n` wide.
fn column_sums(reference: &[f32], quantized: &[f32], n: usize, offset: usize, width: usize) -> ErrorSums {
    let mut total = ErrorSums::default();
    for (r, q) in reference.chunks_exact(n).zip(quantized.chunks_exact(n)) {
        total.merge(&ErrorSums::of(&r[offset..offset + width], &q[offset..offset + width]));
    }
    total
}

/// The calibration-weighted relative output error of columns `offset..offset + width`:
/// with `X^T X` (`H`), `sqrt(tr(E^T H E) / tr(W^T H W))`; otherwise, with the per-channel mean
/// squares `h`, `sqrt(sum_k h_k sum_n E_kn^2 / sum_k h_k sum_n W_kn^2)`. `E = W - What`.
pub fn weighted_error(w: &[f32], w_hat: &[f32], k: usize, n: usize, offset: usize, width: usize, st: &crate::calibrate::InputStats) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    match &st.xtx {
        Some(h) => {
            // sum_n e_n^T H e_n over the columns, accumulated row pair by row pair.
            let e: Vec<f64> = (0..k * width)
                .map(|i| (w[(i / width) * n + offset + i % width] - w_hat[(i / width) * n + offset + i % width]) as f64)
                .collect();
            let x: Vec<f64> = (0..k * width).map(|i| w[(i / width) * n + offset + i % width] as f64).collect();
            for a in 0..k {
                for b in 0..k {
                    let hab = h[a * k + b] as f64;
                    if hab == 0.0 {
                        continue;
                    }
                    let (ea, eb) = (&e[a * width..(a + 1) * width], &e[b * width..(b + 1) * width]);
                    let (xa, xb) = (&x[a * width..(a + 1) * width], &x[b * width..(b + 1) * width]);
                    num += hab * ea.iter().zip(eb).map(|(p, q)| p * q).sum::<f64>();
                    den += hab * xa.iter().zip(xb).map(|(p, q)| p * q).sum::<f64>();
                }
            }
        }
        None => {
            for r in 0..k {
                let h = st.mean_sq[r] as f64;
                let row = &w[r * n + offset..r * n + offset + width];
                let row_hat = &w_hat[r * n + offset..r * n + offset + width];
                num += h * row.iter().zip(row_hat).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
                den += h * row.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
            }
        }
    }
    if den > 0.0 {
        (num.max(0.0) / den).sqrt()
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::{calibrate, CalibOptions};
    use crate::convert::run::TensorImportance;
    use crate::convert::{self, ConvertOptions, OutputLayout, Plan, PlanOptions, Policy, Preset};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    fn tiny() -> Checkpoint {
        Checkpoint::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ernie45-tiny-pt")).unwrap()
    }

    fn sequences() -> Vec<Vec<u32>> {
        let mut rng = Rng::new(3);
        (0..3).map(|_| (0..12).map(|_| (rng.next_u64() % 256) as u32).collect()).collect()
    }

    fn quantize(
        ckpt: &Checkpoint,
        tag: &str,
        importance: Option<Arc<BTreeMap<String, TensorImportance>>>,
    ) -> (crate::test_support::Scratch, Plan) {
        let model = ModelLayout::of(ckpt).unwrap();
        let policy = Policy { preset: Preset::parse("wint2-experts", 0).unwrap(), rules: Vec::new() };
        let plan =
            Plan::build(ckpt, &model, &PlanOptions { layout: OutputLayout::Native, policy: &policy, fallback: None, shard_size: u64::MAX })
                .unwrap();
        let dir = crate::test_support::scratch(&format!("calib-q-{tag}"), true);
        let opts = ConvertOptions { force: true, fingerprint_extra: tag.to_string(), importance, ..ConvertOptions::default() };
        convert::convert(ckpt, &plan, &dir, &opts, &mut |_| {}).unwrap();
        (dir, plan)
    }

    #[test]
    fn calibrated_quantization_lowers_the_weighted_error() {
        let ckpt = tiny();
        let stats = calibrate(&ckpt, &sequences(), CalibOptions::default(), 1 << 20, &mut |_| {}).unwrap();
        let (plain, plan) = quantize(&ckpt, "plain", None);
        let importance = stats.importance_for_plan(Path::new("stats"), &plan).unwrap();
        assert!(importance.values().all(|i| matches!(i, TensorImportance::Diagonal(_))));
        let (calib, _) = quantize(&ckpt, "calib", Some(Arc::new(importance)));
        assert_ne!(std::fs::read(plain.join("model.safetensors")).unwrap(), std::fs::read(calib.join("model.safetensors")).unwrap());
        let stats = Arc::new(stats);
        let options = VerifyOptions { calibration: Some((stats, PathBuf::from("stats"))), ..VerifyOptions::default() };
        let mean = |dir: &Path| {
            let r = verify(&ckpt, &QuantizedCheckpoint::open(dir).unwrap(), &options, &mut |_, _| {}).unwrap();
            assert!(r.probe.contains("calibration statistics"));
            r.tensors.iter().map(|t| t.output_rel_err).sum::<f64>() / r.tensors.len() as f64
        };
        let (e_plain, e_calib) = (mean(&plain), mean(&calib));
        assert!(e_calib < e_plain, "calibrated {e_calib} vs plain {e_plain}");
        std::fs::remove_dir_all(plain).unwrap();
        std::fs::remove_dir_all(calib).unwrap();
    }
}
