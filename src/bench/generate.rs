//! `ccq bench generate`: prefill and decode speed of incremental decoding, against the memory
//! bandwidth limit measured in the same run.
//!
//! Decoding one token reads every weight it uses once ([`Decoder::weight_bytes_per_token`]),
//! so a machine that streams `B` bytes/s cannot decode faster than `B / bytes_per_token`
//! tokens/s. `B` is measured here by summing a buffer of that many bytes (at least 256 MiB, so
//! that it comes from memory, not cache) on the same threads; the figure reported is the
//! ratio of the decode rate to that limit.

use crate::error::Result;
use crate::model::decode::{Decoder, Sampling};
use crate::model::WeightSource;
use crate::rng::Rng;
use std::time::Instant;

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateTiming {
    /// Worker threads.
    pub threads: usize,
    /// Prompt tokens fed at once.
    pub prompt_tokens: usize,
    /// Prefill tokens/s.
    pub prefill_tokens_per_s: f64,
    /// Tokens decoded one at a time (greedy).
    pub decode_tokens: usize,
    /// Decode tokens/s.
    pub decode_tokens_per_s: f64,
    /// Weight bytes read per decoded token.
    pub bytes_per_token: usize,
    /// Memory read bandwidth measured in the same run, bytes/s.
    pub bandwidth: f64,
}

impl GenerateTiming {
    /// `bandwidth / bytes_per_token`: the decode rate the memory allows.
    pub fn limit_tokens_per_s(&self) -> f64 {
        self.bandwidth / self.bytes_per_token.max(1) as f64
    }

    /// Measured decode rate over the limit.
    pub fn ratio(&self) -> f64 {
        self.decode_tokens_per_s / self.limit_tokens_per_s().max(1e-12)
    }
}

/// Read bandwidth of summing `bytes` bytes (at least 256 MiB) in parallel, best of 3.
fn read_bandwidth(bytes: usize) -> f64 {
    use rayon::prelude::*;
    let words = bytes.max(256 << 20) / 8;
    let buffer: Vec<u64> = (0..words as u64).collect();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let sum: u64 = buffer.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).reduce(|| 0, u64::wrapping_add);
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max((words * 8) as f64 / seconds.max(1e-9));
    }
    best
}

/// Decodes `decode_tokens` greedy tokens after a prompt of `prompt_tokens` seeded random ids,
/// on `threads` threads.
pub fn time_generate(source: &dyn WeightSource, prompt_tokens: usize, decode_tokens: usize, threads: usize) -> Result<GenerateTiming> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| crate::Error::BadInput { problem: format!("cannot start {threads} threads: {e}") })?;
    pool.install(|| {
        let mut decoder = Decoder::new(source)?;
        let vocab = source.config().vocab as u64;
        let mut rng = Rng::new(11);
        let prompt: Vec<u32> = (0..prompt_tokens).map(|_| (rng.next_u64() % vocab) as u32).collect();
        let start = Instant::now();
        let mut logits = decoder.feed(&prompt, false)?;
        let prefill = start.elapsed().as_secs_f64();
        let greedy = Sampling { temperature: 0.0, top_k: None, top_p: 1.0 };
        let start = Instant::now();
        for _ in 0..decode_tokens {
            let next = greedy.pick(&logits, &mut rng);
            logits = decoder.feed(&[next], false)?;
        }
        let decode = start.elapsed().as_secs_f64();
        let bytes_per_token = decoder.weight_bytes_per_token();
        Ok(GenerateTiming {
            threads,
            prompt_tokens,
            prefill_tokens_per_s: prompt_tokens as f64 / prefill.max(1e-9),
            decode_tokens,
            decode_tokens_per_s: decode_tokens as f64 / decode.max(1e-9),
            bytes_per_token,
            bandwidth: read_bandwidth(bytes_per_token),
        })
    })
}

/// Writes a 21B-A3B-shaped checkpoint of a dense and an MoE layer with `experts` routed
/// experts (per-token bytes depend on `moe_k`, not on the expert count) into `dir/source`, and
/// its `wint2-experts` conversion (native layout, uncalibrated) into `dir/wint2`.
pub fn prepare_synthetic(dir: &std::path::Path, experts: usize) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    use crate::convert::{self, ConvertOptions};
    let src = dir.join("source");
    let (_, ckpt, plan) = super::feedback::synthetic_wint2_plan(&src, experts)?;
    let out = dir.join("wint2");
    convert::convert(&ckpt, &plan, &out, &ConvertOptions { force: true, ..ConvertOptions::default() }, &mut |_| {})?;
    Ok((src, out))
}
