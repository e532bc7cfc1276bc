//! End-to-end evaluation: how far a quantized model's predictions move from the original's.
//!
//! Both models run on the same token sequences ([`super::forward`], batch by batch). At every
//! position `t` of a sequence but its last, each model gives a next-token distribution
//! `P = softmax(logits_t)` (computed in f64) and the figures are, over all such positions:
//!
//! ```text
//! ppl            = exp( mean( -ln P(token_{t+1}) ) )           one per model
//! kld_mean       = mean( sum_v P_orig(v) (ln P_orig(v) - ln P_quant(v)) )
//! top1_agreement = mean( argmax P_orig == argmax P_quant )     ties: the lowest id
//! kld_pQ         = the Q-th percentile of the per-position KL divergences (nearest rank:
//!                  the value at index ceil(Q/100 * n) - 1 of the sorted list)
//! ```
//!
//! Token sequences come from [`crate::tokens`].

use super::decode::argmax;
use super::{forward, Counting, NoObserver, Progress, WeightSource};
use crate::error::{Error, Result};
use serde::Serialize;

/// The figures `ccq eval` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Positions scored (every token but the last of each sequence).
    pub tokens: usize,
    /// Perplexity of the original model.
    pub ppl_original: f64,
    /// Perplexity of the quantized model.
    pub ppl_quantized: f64,
    /// Mean KL(P_orig || P_quant) of the next-token distributions, in nats.
    pub kld_mean: f64,
    /// Fraction of positions where both models' most likely next token agree.
    pub top1_agreement: f64,
    /// Median per-position KL divergence.
    pub kld_p50: f64,
    /// 90th percentile of the per-position KL divergence.
    pub kld_p90: f64,
    /// 99th percentile of the per-position KL divergence.
    pub kld_p99: f64,
}

/// Checks that two models can be compared, before any token is read and any weight loaded:
/// the same architecture (the config keys that shape the forward pass, the vocabulary) and
/// every tensor the forward pass reads present in both with that shape.
pub fn check_models(original: &dyn WeightSource, quantized: &dyn WeightSource) -> Result<()> {
    let differences = original.config().differences(quantized.config());
    if !differences.is_empty() {
        return Err(Error::BadInput {
            problem: format!(
                "{} and {} are not the same model: {} (first vs second)",
                original.path().display(),
                quantized.path().display(),
                differences.join("; ")
            ),
        });
    }
    original.check_complete()?;
    quantized.check_complete()
}

/// Checks that two models can be compared on `sequences` ([`check_models`], valid tokens, at
/// least one position to score), before any weight is read.
pub fn check(original: &dyn WeightSource, quantized: &dyn WeightSource, sequences: &[Vec<u32>]) -> Result<()> {
    check_models(original, quantized)?;
    for model in [original, quantized] {
        model.config().check_tokens(sequences).map_err(|e| Error::BadInput { problem: format!("for {}: {e}", model.path().display()) })?;
    }
    if sequences.iter().all(|s| s.len() < 2) {
        return Err(Error::BadInput { problem: "every sequence has a single token: nothing to predict".to_string() });
    }
    Ok(())
}

/// Runs both models on `sequences`, `batch_tokens` tokens at a time (at least one sequence
/// per batch), and returns the figures; `progress` hears of every layer run.
pub fn evaluate(
    original: &dyn WeightSource,
    quantized: &dyn WeightSource,
    sequences: &[Vec<u32>],
    batch_tokens: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<EvalReport> {
    check(original, quantized, sequences)?;
    let vocab = original.config().vocab;
    let mut acc = Accumulator::default();
    let batches: Vec<&[Vec<u32>]> = super::batches(sequences, batch_tokens).collect();
    let start = Progress::start(&batches, original.config().layers, 2);
    let mut counting = Counting { inner: &mut NoObserver, progress: start, report: progress };
    for batch in batches {
        let lo = forward(original, batch, &mut counting)?;
        let lq = forward(quantized, batch, &mut counting)?;
        counting.tokens_done(batch.iter().map(Vec::len).sum());
        let mut row = 0;
        for seq in batch {
            for t in 0..seq.len() {
                if t + 1 < seq.len() {
                    let r = row + t;
                    acc.add(&lo[r * vocab..(r + 1) * vocab], &lq[r * vocab..(r + 1) * vocab], seq[t + 1] as usize);
                }
            }
            row += seq.len();
        }
    }
    let report = acc.report();
    let figures = [report.ppl_original, report.ppl_quantized, report.kld_mean, report.kld_p99, report.top1_agreement];
    if figures.iter().any(|f| !f.is_finite()) {
        return Err(Error::BadInput {
            problem: format!(
                "evaluating {} against {} gave non-finite figures (ppl {} / {}, KL {}): an activation overflowed; check both checkpoints with ccq verify",
                original.path().display(),
                quantized.path().display(),
                report.ppl_original,
                report.ppl_quantized,
                report.kld_mean
            ),
        });
    }
    Ok(report)
}

#[derive(Default)]
struct Accumulator {
    n: usize,
    nll_original: f64,
    nll_quantized: f64,
    kld: f64,
    agree: usize,
    /// Every position's KL divergence.
    per_position: Vec<f64>,
}

/// The nearest-rank `q`-th percentile of `sorted` (ascending); 0 when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `ln softmax(logits)` in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&v| v as f64 - lse).collect()
}

impl Accumulator {
    fn add(&mut self, original: &[f32], quantized: &[f32], next: usize) {
        let (po, pq) = (log_softmax(original), log_softmax(quantized));
        self.nll_original -= po[next];
        self.nll_quantized -= pq[next];
        let kld = po.iter().zip(&pq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
        self.kld += kld;
        self.per_position.push(kld);
        self.agree += usize::from(argmax(original) == argmax(quantized));
        self.n += 1;
    }

    fn report(&self) -> EvalReport {
        let n = self.n.max(1) as f64;
        let mut sorted = self.per_position.clone();
        sorted.sort_by(f64::total_cmp);
        EvalReport {
            kld_p50: percentile(&sorted, 50.0),
            kld_p90: percentile(&sorted, 90.0),
            kld_p99: percentile(&sorted, 99.0),
            tokens: self.n,
            ppl_original: (self.nll_original / n).exp(),
            ppl_quantized: (self.nll_quantized / n).exp(),
            kld_mean: self.kld / n,
            top1_agreement: self.agree as f64 / n,
        }
    }
}

#[cfg(test)]
mod percentile_tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert_eq!(percentile(&[], 90.0), 0.0);
    }
}
