//! Calibration throughput: tokens per second through `ccq::calibrate::calibrate` on synthetic
//! ERNIE 4.5 checkpoints, and the process's peak resident memory after each run.
//!
//! Each case writes a synthetic checkpoint (random weights, deterministic) to a temporary
//! directory, calibrates it on random token sequences and times that alone (the write is not
//! timed). Peak memory is the process's high-water mark (`VmHWM` on Linux), so it only grows
//! from row to row: run a single case (`--experts`, `--seq-len`) to read one case's peak.

use crate::calibrate::{calibrate, CalibOptions};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::rng::Rng;
use crate::synth::{write_checkpoint, SynthModel, SynthOptions};
use std::path::Path;
use std::time::Instant;

/// One measured case.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationTiming {
    /// Preset the checkpoint was made from.
    pub preset: String,
    /// Decoder layers.
    pub layers: usize,
    /// Routed experts per MoE layer.
    pub experts: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences.
    pub sequences: usize,
    /// Seconds calibrating.
    pub seconds: f64,
    /// Peak resident memory of the process so far, in MiB (`None` where unknown).
    pub peak_rss_mib: Option<f64>,
}

impl CalibrationTiming {
    /// Tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        (self.seq_len * self.sequences) as f64 / self.seconds.max(1e-9)
    }
}

/// Writes a `preset` checkpoint with `layers` layers and `experts` routed experts per MoE
/// layer into `dir` (untimed).
pub fn prepare(dir: &Path, preset: &str, layers: usize, experts: usize) -> Result<SynthModel> {
    let mut model = SynthModel::preset(preset).ok_or_else(|| crate::Error::BadTensor {
        file: None,
        tensor: preset.to_string(),
        problem: "unknown synthetic preset".to_string(),
    })?;
    model.num_layers = layers;
    model.num_experts = experts;
    model.moe_k = model.moe_k.min(experts);
    write_checkpoint(&model, &SynthOptions::default(), dir)?;
    Ok(model)
}

/// Times the calibration of the checkpoint in `dir` (made by [`prepare`] from `model`) on
/// `sequences` random sequences of `seq_len` tokens.
pub fn time_calibration(dir: &Path, preset: &str, model: &SynthModel, seq_len: usize, sequences: usize) -> Result<CalibrationTiming> {
    let ckpt = Checkpoint::open(dir)?;
    let mut rng = Rng::new(seq_len as u64 * 7919 + model.num_experts as u64);
    let seqs: Vec<Vec<u32>> =
        (0..sequences).map(|_| (0..seq_len).map(|_| (rng.next_u64() % model.vocab_size as u64) as u32).collect()).collect();
    let options = CalibOptions { min_tokens: 16, ..CalibOptions::default() };
    let start = Instant::now();
    calibrate(&ckpt, &seqs, options, 4096, &mut |_| {})?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(CalibrationTiming {
        preset: preset.to_string(),
        layers: model.num_layers,
        experts: model.num_experts,
        seq_len,
        sequences,
        seconds,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The process's peak resident set size in MiB, from `/proc/self/status` (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
