//! Incremental decoding: every layer's weights resident, one [`KvCache`] per layer, tokens fed
//! a step at a time (a prompt at once, then one token per step), and next-token sampling.
//!
//! A step runs the same layers as [`super::forward`] ([`super::layer_step`] with a cached
//! context): the new tokens' keys and values are appended to each layer's cache and their
//! queries attend to every cached position, so feeding a sequence in pieces gives the logits
//! of feeding it whole. Quantized weights stay packed (the kernels read them at every step);
//! memory is the weights plus `2 * layers * positions * kv_heads * head_dim * 4` bytes of cache.
//!
//! # Sampling
//! With temperature `T = 0` the next token is the most likely one (ties: the lowest id).
//! Otherwise, in f64:
//!
//! ```text
//! p = softmax(logits / T)
//! keep the top_k most likely tokens (ties: lower id first), when top_k is set
//! keep the smallest prefix of them, most likely first, whose probabilities sum to >= top_p
//! renormalise; draw u uniform in [0, 1) from the seeded generator; pick the first token
//! whose cumulative probability exceeds u
//! ```

use super::{layer_step, rms_norm, Context, ForwardConfig, KvCache, LayerWeights, Linear, NoObserver, WeightSource};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// A model held in memory for incremental decoding.
pub struct Decoder<'a> {
    source: &'a dyn WeightSource,
    layers: Vec<LayerWeights>,
    final_norm: Vec<f32>,
    lm_head: Box<dyn Linear>,
    caches: Vec<KvCache>,
    positions: usize,
}

impl<'a> Decoder<'a> {
    /// Loads every layer of `source` (checked complete first) and starts with empty caches.
    pub fn new(source: &'a dyn WeightSource) -> Result<Decoder<'a>> {
        source.check_complete()?;
        let cfg = source.config();
        let layers = (0..cfg.layers).map(|l| source.layer(l)).collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            source,
            layers,
            final_norm: source.final_norm()?,
            lm_head: source.lm_head()?,
            caches: vec![KvCache::default(); cfg.layers],
            positions: 0,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ForwardConfig {
        self.source.config()
    }

    /// Positions fed so far.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Bytes of weights one decoded token reads: its embedding row, every layer's attention,
    /// dense MLP or router, shared expert and `top_k` routed experts (experts of a layer are
    /// the same size), and the output head. Norms and the cache are left out.
    pub fn weight_bytes_per_token(&self) -> usize {
        let cfg = self.source.config();
        let embed_row = cfg.hidden * 4;
        let layers: usize = self
            .layers
            .iter()
            .map(|w| {
                let mlp = match &w.mlp {
                    super::Mlp::Dense(d) => d.bytes(),
                    super::Mlp::Moe(m) => {
                        let expert = m.experts.first().map_or(0, super::SwiGlu::bytes);
                        4 * m.router.len() + m.shared.as_ref().map_or(0, super::SwiGlu::bytes) + cfg.top_k * expert
                    }
                };
                w.qkv.bytes() + w.o.bytes() + mlp
            })
            .sum();
        embed_row + layers + self.lm_head.bytes()
    }

    /// Bytes held by the key/value caches.
    pub fn cache_bytes(&self) -> usize {
        self.caches.iter().map(KvCache::bytes).sum()
    }

    /// Feeds `tokens` after the positions fed so far and returns the logits of each of them
    /// (`[tokens.len(), vocab]`) when `all`, else of the last one only (`[vocab]`).
    pub fn feed(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        let cfg = self.source.config();
        if tokens.is_empty() {
            return Err(Error::BadInput { problem: "no tokens to feed".to_string() });
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(Error::BadInput { problem: format!("token id {t} is outside the vocabulary (vocab_size {})", cfg.vocab) });
        }
        let end = self.positions + tokens.len();
        if let Some(max) = cfg.max_sequence().filter(|&m| end > m) {
            return Err(Error::BadInput { problem: format!("{end} positions are more than the model takes ({max})") });
        }
        let mut h = self.source.embed(tokens)?;
        for (l, (w, cache)) in self.layers.iter().zip(&mut self.caches).enumerate() {
            layer_step(cfg, w, l, &mut h, Context::Cached(cache), &mut NoObserver)?;
        }
        self.positions = end;
        let rows = match all {
            true => &h[..],
            false => &h[(tokens.len() - 1) * cfg.hidden..],
        };
        let x = rms_norm(rows, &self.final_norm, cfg.rms_norm_eps);
        self.lm_head.forward(&x, x.len() / cfg.hidden)
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// `0`: greedy.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this cumulative probability (`1`: all).
    pub top_p: f64,
}

impl Sampling {
    /// Checks the parameters: temperature finite and non-negative, top_k positive, top_p in
    /// (0, 1].
    pub fn check(&self) -> Result<()> {
        let bad = |problem: String| Err(Error::BadInput { problem });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("--temperature {} must be a finite number >= 0", self.temperature));
        }
        if self.top_k == Some(0) {
            return bad("--top-k must be positive".to_string());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("--top-p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }

    /// The next token from `logits` (see the module documentation).
    pub fn pick(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits) as u32;
        }
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let mut order: Vec<(usize, f64)> = logits.iter().map(|&v| ((v as f64 - max) / self.temperature).exp()).enumerate().collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        order.truncate(self.top_k.unwrap_or(order.len()).max(1));
        let total: f64 = order.iter().map(|o| o.1).sum();
        let mut cumulative = 0.0;
        let keep = order
            .iter()
            .position(|o| {
                cumulative += o.1 / total;
                cumulative >= self.top_p
            })
            .map_or(order.len(), |i| i + 1);
        order.truncate(keep);
        let kept: f64 = order.iter().map(|o| o.1).sum();
        let u = rng.uniform() * kept;
        let mut acc = 0.0;
        for &(id, p) in &order {
            acc += p;
            if acc > u {
                return id as u32;
            }
        }
        order.last().map_or(0, |o| o.0 as u32)
    }
}

/// The index of the largest value (the lowest on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_filters_and_is_seeded() {
        let logits = [0.0f32, 3.0, 2.9, -1.0, 3.0];
        let greedy = Sampling { temperature: 0.0, top_k: None, top_p: 1.0 };
        assert_eq!(greedy.pick(&logits, &mut Rng::new(1)), 1, "ties go to the lower id");
        let top1 = Sampling { temperature: 1.0, top_k: Some(1), top_p: 1.0 };
        assert!((0..20).all(|s| top1.pick(&logits, &mut Rng::new(s)) == 1));
        let top2 = Sampling { temperature: 1.0, top_k: Some(2), top_p: 1.0 };
        let picks: std::collections::BTreeSet<u32> = (0..200).map(|s| top2.pick(&logits, &mut Rng::new(s))).collect();
        assert_eq!(picks, [1, 4].into_iter().collect());
        let nucleus = Sampling { temperature: 1.0, top_k: None, top_p: 0.3 };
        assert!((0..50).all(|s| nucleus.pick(&logits, &mut Rng::new(s)) == 1), "p(1) alone exceeds 0.3");
        let any = Sampling { temperature: 1.0, top_k: None, top_p: 1.0 };
        let picks: Vec<u32> = (0..50).map(|s| any.pick(&logits, &mut Rng::new(s))).collect();
        assert_eq!(picks, (0..50).map(|s| any.pick(&logits, &mut Rng::new(s))).collect::<Vec<_>>());
        assert!(picks.contains(&2));
        for bad in [
            Sampling { temperature: -1.0, ..any },
            Sampling { temperature: f64::NAN, ..any },
            Sampling { top_k: Some(0), ..any },
            Sampling { top_p: 0.0, ..any },
            Sampling { top_p: 1.5, ..any },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
