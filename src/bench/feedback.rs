//! Error-feedback encoding speed and quality on the expert shapes of ERNIE-4.5-21B-A3B
//! (hidden 2560, expert width 1536): `up_gate` halves `[2560, 1536]`, `down` `[1536, 2560]`.
//!
//! Per shape and scheme, one synthetic matrix (Gaussian weights with per-row scales spread
//! over two decades, like trained experts' outlier channels) and the Hessian of `2K` synthetic
//! activation rows that mix every channel with every other (correlated, as real activations
//! are) are encoded twice: with the Hessian's diagonal only, and with error feedback under the
//! full Hessian (its damping and factorisation timed apart). Reported: seconds, weights/s, the
//! feedback/diagonal time ratio, the relative output error `tr(E^T H E) / tr(W^T H W)` of both,
//! and the process's peak memory. One 21B-A3B MoE layer holds 64 experts x 3 such matrices;
//! its f64 Hessian sums take `64 x (2560^2 + 1536^2) x 8` bytes ([`layer_hessian_bytes`]).

use crate::rng::Rng;
use crate::scheme::{Hessian, Importance, Scheme, SchemeKind};
use std::time::Instant;

/// One measured row.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackTiming {
    /// Scheme.
    pub scheme: SchemeKind,
    /// Rows (inputs).
    pub k: usize,
    /// Columns (outputs).
    pub n: usize,
    /// Seconds of the diagonal encode.
    pub diagonal_seconds: f64,
    /// Seconds damping and factorising the Hessian.
    pub factor_seconds: f64,
    /// Seconds of the feedback encode (factorisation excluded).
    pub feedback_seconds: f64,
    /// `tr(E^T H E) / tr(W^T H W)` of the diagonal encode.
    pub diagonal_error: f64,
    /// The same of the feedback encode.
    pub feedback_error: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Synthetic `[k, n]` weights: row `r` is Gaussian times `10^(2 u_r - 1)`, `u_r` uniform.
pub fn weights(k: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let scales: Vec<f32> = (0..k).map(|_| 10f32.powf(2.0 * (rng.next_u64() % 1000) as f32 / 1000.0 - 1.0)).collect();
    let z = rng.normals(k * n);
    z.iter().enumerate().map(|(i, v)| v * scales[i / n]).collect()
}

/// `X^T X / T` of `t` rows `x = z A + 0.3 z'`, `A` a random `[k, k]` mixing with `1/sqrt(k)`
/// entries: every channel correlated with every other.
pub fn hessian(k: usize, t: usize, seed: u64) -> Vec<f32> {
    let a: Vec<f32> = Rng::new(seed).normals(k * k).iter().map(|v| v / (k as f32).sqrt()).collect();
    let z = Rng::new(seed + 1).normals(t * k);
    let noise = Rng::new(seed + 2).normals(t * k);
    let mut x = vec![0.0f32; t * k];
    // SAFETY: z is t x k, a is k x k, x is t x k, row-major, not aliased.
    unsafe {
        matrixmultiply::sgemm(t, k, k, 1.0, z.as_ptr(), k as isize, 1, a.as_ptr(), k as isize, 1, 0.0, x.as_mut_ptr(), k as isize, 1);
    }
    x.iter_mut().zip(&noise).for_each(|(v, e)| *v += 0.3 * e);
    let mut h = vec![0.0f32; k * k];
    // SAFETY: x^T is k x t (strides 1, k), x is t x k, h is k x k; h is not aliased.
    unsafe {
        matrixmultiply::sgemm(
            k,
            t,
            k,
            1.0 / t as f32,
            x.as_ptr(),
            1,
            k as isize,
            x.as_ptr(),
            k as isize,
            1,
            0.0,
            h.as_mut_ptr(),
            k as isize,
            1,
        );
    }
    h
}

/// Bytes of the f64 Hessian sums of one MoE layer's experts (gate/up input and down input
/// each): what `--hessian-budget` is compared with.
pub fn layer_hessian_bytes(experts: usize, hidden: usize, width: usize) -> u64 {
    (experts * (hidden * hidden + width * width) * 8) as u64
}

fn relative_error(w: &[f32], d: &[f32], n: usize, h: &Hessian) -> f64 {
    let num: f64 = h.output_errors(w, d, n).iter().sum();
    let den: f64 = h.column_errors(w, n).iter().sum();
    num / den.max(f64::MIN_POSITIVE)
}

/// Measures `scheme` on a `[k, n]` matrix (see the module docs).
pub fn time_feedback(scheme: &dyn Scheme, k: usize, n: usize, seed: u64) -> crate::Result<FeedbackTiming> {
    let bad = |e: crate::SchemeError| crate::Error::BadInput { problem: e.to_string() };
    let w = weights(k, n, seed);
    let xtx = hessian(k, 2 * k, seed + 10);
    let start = Instant::now();
    let h = Hessian::new(k, &xtx, crate::scheme::importance::DEFAULT_DAMP).map_err(bad)?;
    let factor_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let diagonal = scheme.encode(&w, k, n, Importance::Diagonal(h.diag())).map_err(bad)?;
    let diagonal_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let fed = scheme.encode(&w, k, n, Importance::Hessian(&h)).map_err(bad)?;
    let feedback_seconds = start.elapsed().as_secs_f64();
    let decode = |p| scheme.decode(p).map_err(bad);
    Ok(FeedbackTiming {
        scheme: scheme.kind(),
        k,
        n,
        diagonal_seconds,
        factor_seconds,
        feedback_seconds,
        diagonal_error: relative_error(&w, &decode(&diagonal)?, n, &h),
        feedback_error: relative_error(&w, &decode(&fed)?, n, &h),
        peak_rss_mib: super::calibrate::peak_rss_mib(),
    })
}

/// One calibrated, layer-by-layer conversion of a synthetic 21B-A3B-shaped checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTiming {
    /// Routed experts of its MoE layer.
    pub experts: usize,
    /// Calibration tokens.
    pub tokens: usize,
    /// Seconds of the conversion (calibration, feedback encoding and writing).
    pub seconds: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Writes a 21B-A3B-shaped checkpoint of a dense and an MoE layer with `experts` routed
/// experts into `src` and plans its `wint2-experts` conversion to the native layout.
pub(crate) fn synthetic_wint2_plan(
    src: &std::path::Path,
    experts: usize,
) -> crate::Result<(crate::synth::SynthModel, crate::Checkpoint, crate::convert::Plan)> {
    use crate::convert::{OutputLayout, Plan, PlanOptions, Policy, Preset};
    let model = super::calibrate::prepare(src, "21b-a3b", 2, experts)?;
    let ckpt = crate::Checkpoint::open(src)?;
    let layout = crate::layout::ModelLayout::of(&ckpt)?;
    let preset = Preset::Wint2Experts;
    let policy = Policy { preset, rules: Vec::new() };
    let plan =
        Plan::build(&ckpt, &layout, &PlanOptions { layout: OutputLayout::Native, policy: &policy, fallback: None, shard_size: 4 << 30 })
            .map_err(|r| crate::Error::BadInput { problem: format!("{} tensor(s) cannot be planned", r.len()) })?;
    Ok((model, ckpt, plan))
}

/// Writes a 21B-A3B-shaped checkpoint of two layers (a dense one, then one MoE layer of
/// `experts` routed experts) into `dir` (untimed), then converts it with `--preset
/// wint2-experts --layout native --calib-tokens` on `sequences` random sequences of `seq_len`
/// tokens (timed), and removes both.
pub fn time_layer(dir: &std::path::Path, experts: usize, sequences: usize, seq_len: usize) -> crate::Result<LayerTiming> {
    use crate::calibrate::layerwise::{Layerwise, LayerwiseOptions, DEFAULT_HESSIAN_BUDGET};
    use crate::convert::{self, ConvertOptions};
    let (model, ckpt, plan) = synthetic_wint2_plan(&dir.join("source"), experts)?;
    let mut rng = Rng::new(7);
    let seqs: Vec<Vec<u32>> =
        (0..sequences).map(|_| (0..seq_len).map(|_| (rng.next_u64() % model.vocab_size as u64) as u32).collect()).collect();
    let options = LayerwiseOptions {
        sequences: std::sync::Arc::new(seqs),
        batch_tokens: 2048,
        min_tokens: 16,
        weighting: crate::calibrate::Weighting::Uniform,
        damp: crate::scheme::importance::DEFAULT_DAMP,
        sequential: false,
        hessian_budget: DEFAULT_HESSIAN_BUDGET,
        tokens_label: serde_json::Value::Null,
    };
    let opts = ConvertOptions { force: true, layerwise: Some(std::sync::Arc::new(Layerwise::new(options))), ..ConvertOptions::default() };
    let out = dir.join("out");
    let start = Instant::now();
    convert::convert(&ckpt, &plan, &out, &opts, &mut |_| {})?;
    let seconds = start.elapsed().as_secs_f64();
    let timing = LayerTiming { experts, tokens: sequences * seq_len, seconds, peak_rss_mib: super::calibrate::peak_rss_mib() };
    std::fs::remove_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    Ok(timing)
}
