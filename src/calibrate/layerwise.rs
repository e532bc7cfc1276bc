//! Calibrated conversion, layer by layer: `ccq quantize SRC -o OUT --calib-tokens FILE`.
//!
//! The calibration tokens' hidden states enter layer `L`; the layer runs once with a
//! [`Calibrator`] watching every linear input (experts: only their routed tokens), which gives
//! each input's full `X^T X / W` (experts below `min_tokens` blended with their layer, as
//! `ccq calibrate` does); every planned tensor of the layer is encoded with error feedback under
//! its input's Hessian and written to `ccq-encoded/layer-NNNNN.safetensors` in the work
//! directory; then the hidden states move on to `L + 1`: through the original layer, or with
//! `sequential` through the layer as quantized (GPTQ's sequential mode, at layer granularity:
//! the inputs of layer `L + 1` are computed from quantized layers `0..=L`, those of layer `L`'s
//! own linears from the original layer `L`). The conversion then writes its shards in plan
//! order, copying these encoded tensors.
//!
//! # Memory
//!
//! One layer's weights (f32), the hidden states of all calibration tokens (`tokens x hidden`
//! f32, plus one copy), and the layer's Hessian sums (f64) at a time. When the layer's Hessians
//! would exceed `hessian_budget` bytes, its routed experts are taken in chunks: the layer runs
//! again for every chunk, keeping the sums of that chunk's experts only (the layer-level sums
//! a fallback expert is blended with are recomputed each time, identically).
//!
//! # Resume
//!
//! A layer's file is recorded in `ccq-encoded/record.json` with its checksum once complete; a
//! resumed run (same fingerprint: `convert` wipes the work directory otherwise) re-uses it and
//! only moves the hidden states through that layer (decoding it, when sequential), so it
//! produces the same bytes as an uninterrupted run.

use super::{CalibOptions, Calibrator, Hessian as HessianKind, Weighting};
use crate::checkpoint::write::{SafetensorsWriter, TensorSpec};
use crate::checkpoint::Checkpoint;
use crate::convert::run::{encode_planned, pre_encoded_name, FactorCache, FeedbackRecord, LayerwiseEncoder, PreEncoded, TensorImportance};
use crate::convert::{Plan, PlannedTensor};
use crate::error::{Error, Result};
use crate::model::source::OriginalWeights;
use crate::model::{layer_forward, ForwardConfig, NoObserver, WeightSource};
use crate::scheme::{Effort, Packed};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The default `--hessian-budget`: 8 GiB of Hessian sums, a third of a 24 GB machine.
pub const DEFAULT_HESSIAN_BUDGET: u64 = 8 << 30;

/// Options of a calibrated, layer-by-layer conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerwiseOptions {
    /// The calibration sequences.
    pub sequences: Arc<Vec<Vec<u32>>>,
    /// Tokens run through a layer at a time (at least one sequence).
    pub batch_tokens: usize,
    /// Experts with fewer tokens are blended with their layer's statistics.
    pub min_tokens: usize,
    /// Token weighting of the expert Hessians.
    pub weighting: Weighting,
    /// Relative damping of every Hessian.
    pub damp: f32,
    /// Feed layer `L + 1` with the outputs of the quantized layer `L`.
    pub sequential: bool,
    /// Most bytes of Hessian sums held at once.
    pub hessian_budget: u64,
    /// What to record about the tokens (file, fingerprint) in the provenance.
    pub tokens_label: Value,
}

/// The [`LayerwiseEncoder`] of `ccq quantize --calib-tokens`.
#[derive(Debug)]
pub struct Layerwise {
    options: LayerwiseOptions,
    /// Per layer: tokens per expert and the experts that fell back (filled by `encode`).
    layers: Mutex<BTreeMap<usize, LayerExperts>>,
}

impl Layerwise {
    /// A layerwise encoder with `options`.
    pub fn new(options: LayerwiseOptions) -> Layerwise {
        Layerwise { options, layers: Mutex::new(BTreeMap::new()) }
    }

    /// Checks, before any work, that the model can run on the tokens (config, ids, lengths)
    /// and that every layer's Hessians fit the budget (at least one expert at a time).
    pub fn check(&self, ckpt: &Checkpoint) -> Result<ForwardConfig> {
        let source = OriginalWeights::new(ckpt)?;
        let cfg = source.config().clone();
        source.check_complete()?;
        cfg.check_tokens(&self.options.sequences)?;
        for l in 0..cfg.layers {
            expert_chunks(&cfg, l, self.options.hessian_budget)?;
        }
        Ok(cfg)
    }
}

/// File holding the encoded tensors of layer `l`.
fn layer_file(l: usize) -> String {
    format!("layer-{l:05}.safetensors")
}

/// The decoder layer a tensor name belongs to (`...layers.L....`).
fn layer_of(name: &str) -> Option<usize> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    rest.split('.').next()?.parse().ok()
}

/// Bytes of f64 Hessian sums for inputs of widths `ks`.
fn sums_bytes(ks: &[usize]) -> u64 {
    ks.iter().map(|&k| (k * k * 8) as u64).sum()
}

/// The routed experts of layer `l` in chunks whose Hessian sums fit `budget` beside the
/// layer's other inputs; an error when even one expert does not fit.
fn expert_chunks(cfg: &ForwardConfig, l: usize, budget: u64) -> Result<Vec<Range<usize>>> {
    let (h, qw) = (cfg.hidden, cfg.heads * cfg.head_dim);
    let attention = sums_bytes(&[h, qw]);
    if !cfg.is_moe_layer(l) {
        let need = attention + sums_bytes(&[h, cfg.intermediate]);
        // One pass, no routed experts.
        let no_experts: Range<usize> = 0..0;
        return if need <= budget { Ok(vec![no_experts]) } else { Err(too_small(budget, need, l)) };
    }
    let shared = if cfg.shared_intermediate > 0 { sums_bytes(&[h, cfg.shared_intermediate]) } else { 0 };
    // moe_input and the pooled down input are kept for every chunk.
    let layer_level = sums_bytes(&[h, cfg.moe_intermediate]);
    let per_expert = sums_bytes(&[h, cfg.moe_intermediate]);
    let fixed = attention + shared + layer_level;
    if fixed + per_expert > budget {
        return Err(too_small(budget, fixed + per_expert, l));
    }
    let per_chunk = (((budget - fixed) / per_expert) as usize).clamp(1, cfg.experts.max(1));
    Ok((0..cfg.experts).step_by(per_chunk).map(|s| s..(s + per_chunk).min(cfg.experts)).collect())
}

/// Bytes of the Hessian sums of every linear input of the model at once (what
/// `ccq calibrate --hessian full` holds): per layer its attention, MLP or experts (each with
/// its own sums), plus the layer-level sums, plus the lm_head input.
pub fn model_hessian_bytes(cfg: &ForwardConfig) -> u64 {
    let (h, qw) = (cfg.hidden, cfg.heads * cfg.head_dim);
    let layers: u64 = (0..cfg.layers)
        .map(|l| {
            let attention = sums_bytes(&[h, qw]);
            if !cfg.is_moe_layer(l) {
                return attention + sums_bytes(&[h, cfg.intermediate]);
            }
            let shared = if cfg.shared_intermediate > 0 { sums_bytes(&[h, cfg.shared_intermediate]) } else { 0 };
            attention + shared + (cfg.experts as u64 + 1) * sums_bytes(&[h, cfg.moe_intermediate])
        })
        .sum();
    layers + sums_bytes(&[h])
}

fn too_small(budget: u64, need: u64, l: usize) -> Error {
    Error::BadInput {
        problem: format!(
            "--hessian-budget {budget} bytes is too small: layer {l} needs at least {need} bytes of Hessian sums (one expert at a time); raise it"
        ),
    }
}

/// Token ranges of the batches of `lengths` (sequences back to back), at most `batch_tokens`
/// tokens each (a longer sequence alone), with the lengths of their sequences.
fn batches(lengths: &[usize], batch_tokens: usize) -> Vec<(Range<usize>, Vec<usize>)> {
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < lengths.len() {
        let mut end = i + 1;
        let mut n = lengths[i];
        while end < lengths.len() && n + lengths[end] <= batch_tokens {
            n += lengths[end];
            end += 1;
        }
        out.push((start..start + n, lengths[i..end].to_vec()));
        start += n;
        i = end;
    }
    out
}

/// Runs layer `l` on every batch of `h`, in place.
fn run_layer(
    cfg: &ForwardConfig,
    source: &dyn WeightSource,
    l: usize,
    h: &mut [f32],
    batches: &[(Range<usize>, Vec<usize>)],
    observer: &mut dyn crate::model::Observer,
) -> Result<()> {
    let w = source.layer(l)?;
    for (range, lengths) in batches {
        layer_forward(cfg, &w, l, &mut h[range.start * cfg.hidden..range.end * cfg.hidden], lengths, observer)?;
    }
    Ok(())
}

/// `ccq-encoded/record.json`: the completed layers, `{"layers": {L: {"checksum", "tensors",
/// "feedback", "experts"}}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// By layer index (written as a string key).
    layers: BTreeMap<usize, LayerEntry>,
}

/// One completed layer of a [`Record`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerEntry {
    /// [`crate::convert::run::file_checksum`] of its layer file.
    checksum: String,
    /// The output tensors encoded in the file.
    tensors: Vec<String>,
    /// How they were encoded.
    feedback: Vec<FeedbackRecord>,
    /// Its experts' tokens and fallbacks.
    experts: LayerExperts,
}

/// What a layer's experts saw: for an MoE layer the tokens of every routed expert and the
/// experts blended with the layer's statistics, for a dense layer nothing (`{}`). Recorded in
/// the provenance (`describe`) as well as in the [`Record`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerExperts {
    /// Expert index (a string key) -> tokens routed to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<BTreeMap<usize, usize>>,
    /// The experts below `min_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    fallbacks: Option<Vec<usize>>,
}

/// The record of completed layers in `dir`; empty (every layer is encoded afresh, its file
/// rewritten) when there is none or it does not parse.
fn read_record(dir: &Path) -> Record {
    std::fs::read_to_string(dir.join("record.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// Writes the record of completed layers into `dir`.
fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let path = dir.join("record.json");
    // Through a `Value`, as ever: the same bytes (an f32 is written as its f64 value).
    let value = serde_json::to_value(record).map_err(|e| Error::Json { file: path.clone(), problem: e.to_string() })?;
    crate::checkpoint::output::write_json(&path, &value)
}

impl LayerwiseEncoder for Layerwise {
    fn encode(&self, ckpt: &Checkpoint, plan: &Plan, effort: Effort, dir: &Path) -> Result<(PreEncoded, Vec<FeedbackRecord>)> {
        let o = &self.options;
        let cfg = self.check(ckpt)?;
        let source = OriginalWeights::new(ckpt)?;
        let chunks: Vec<Vec<Range<usize>>> = (0..cfg.layers).map(|l| expert_chunks(&cfg, l, o.hessian_budget)).collect::<Result<_>>()?;
        let mut by_layer: BTreeMap<usize, Vec<&PlannedTensor>> = BTreeMap::new();
        for t in plan.tensors.iter().filter(|t| t.choice.is_some()) {
            if let Some(l) = layer_of(&t.sources[0]).filter(|&l| l < cfg.layers) {
                by_layer.entry(l).or_default().push(t);
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut record = read_record(dir);
        let flat: Vec<u32> = o.sequences.iter().flatten().copied().collect();
        let lengths: Vec<usize> = o.sequences.iter().map(Vec::len).collect();
        let batches = batches(&lengths, o.batch_tokens.max(1));
        let mut h = source.embed(&flat)?;
        let mut pre = PreEncoded::new();
        let mut records = Vec::new();
        for (l, layer_chunks) in chunks.iter().enumerate() {
            let tensors = by_layer.get(&l).map(Vec::as_slice).unwrap_or(&[]);
            let path = dir.join(layer_file(l));
            let done = match record.layers.get(&l) {
                Some(entry) => path.exists() && entry.checksum == crate::convert::run::file_checksum(&path)?,
                None => false,
            };
            let encoded: Vec<(&PlannedTensor, Packed)> = if done {
                let entry = &record.layers[&l];
                records.extend(entry.feedback.iter().cloned());
                self.layers.lock().map_err(|_| poisoned())?.insert(l, entry.experts.clone());
                let kept: Vec<&PlannedTensor> = tensors.iter().copied().filter(|t| entry.tensors.contains(&t.name)).collect();
                for t in &kept {
                    pre.insert(t.name.clone(), path.clone());
                }
                if !o.sequential {
                    run_layer(&cfg, &source, l, &mut h, &batches, &mut NoObserver)?;
                    continue;
                }
                read_layer(&path, &kept, effort)?
            } else {
                let mut next = None;
                let mut encoded = Vec::new();
                let mut layer_records = Vec::new();
                let mut experts = LayerExperts::default();
                for (ci, range) in layer_chunks.iter().enumerate() {
                    let options = CalibOptions { min_tokens: o.min_tokens, hessian: HessianKind::Full, weighting: o.weighting };
                    let mut cal = Calibrator::new(&cfg, source.names(), options).restricted(range.clone(), ci == 0);
                    let mut hn = h.clone();
                    run_layer(&cfg, &source, l, &mut hn, &batches, &mut cal)?;
                    if ci == 0 {
                        next = Some(hn);
                    }
                    let counts = cal.expert_tokens(l);
                    let mut stats = cal.finish(ckpt);
                    if cfg.is_moe_layer(l) {
                        let fell = stats.fallbacks.get(&l).cloned().unwrap_or_default();
                        let tokens = experts.tokens.get_or_insert_with(BTreeMap::new);
                        for e in range.clone() {
                            tokens.insert(e, counts[e]);
                        }
                        experts.fallbacks.get_or_insert_with(Vec::new).extend(fell);
                    }
                    // One shared X^T X (moved out of the statistics, not copied), and so one
                    // factorisation, per input.
                    let shared: BTreeMap<String, Arc<Vec<f32>>> =
                        stats.inputs.iter_mut().filter_map(|(id, s)| Some((id.clone(), Arc::new(s.xtx.take()?)))).collect();
                    let mut factors = FactorCache::default();
                    for t in tensors {
                        let Some(xtx) = stats.weights.get(&t.sources[0]).and_then(|id| shared.get(id)) else { continue };
                        if encoded.iter().any(|(e, _): &(&PlannedTensor, Packed)| e.name == t.name) {
                            continue;
                        }
                        let w = ckpt.logical_matrix(&t.sources, t.k, t.n, t.transpose)?;
                        for name in &t.sources {
                            ckpt.release(ckpt.get(name)?);
                        }
                        let kind = t.choice.ok_or_else(|| Error::BadTensor {
                            file: Some(t.source_file.clone()),
                            tensor: t.name.clone(),
                            problem: "not quantized".to_string(),
                        })?;
                        let importance = TensorImportance::Hessian(xtx.clone());
                        let (packed, fed) = encode_planned(t, kind, effort, &w, Some(&importance), o.damp, &mut factors)?;
                        layer_records.extend(fed);
                        encoded.push((*t, packed));
                    }
                }
                write_layer(&path, &encoded)?;
                let entry = LayerEntry {
                    checksum: crate::convert::run::file_checksum(&path)?,
                    tensors: encoded.iter().map(|(t, _)| t.name.clone()).collect(),
                    feedback: layer_records.clone(),
                    experts: experts.clone(),
                };
                record.layers.insert(l, entry);
                write_record(dir, &record)?;
                self.layers.lock().map_err(|_| poisoned())?.insert(l, experts);
                records.extend(layer_records);
                for (t, _) in &encoded {
                    pre.insert(t.name.clone(), path.clone());
                }
                if !o.sequential {
                    h = next.unwrap_or(h);
                    continue;
                }
                encoded
            };
            // Sequential: the hidden states move on through the quantized layer.
            let replaced = decoded_sources(ckpt, &encoded, effort)?;
            let quantized = OriginalWeights::with_replaced(ckpt, &replaced)?;
            run_layer(&cfg, &quantized, l, &mut h, &batches, &mut NoObserver)?;
        }
        Ok((pre, records))
    }

    fn describe(&self) -> Value {
        let o = &self.options;
        let layers = self.layers.lock().map(|m| m.clone()).unwrap_or_default();
        json!({
            "tokens": o.tokens_label,
            "sequences": o.sequences.len(),
            "token_count": o.sequences.iter().map(Vec::len).sum::<usize>(),
            "min_tokens": o.min_tokens,
            "weighting": match o.weighting { Weighting::Uniform => "uniform", Weighting::Gate => "gate" },
            "sequential": o.sequential,
            "hessian_budget": o.hessian_budget,
            "experts": layers,
        })
    }
}

fn poisoned() -> Error {
    Error::BadInput { problem: "a calibration thread panicked".to_string() }
}

/// Writes the encoded tensors of one layer, components named [`pre_encoded_name`].
fn write_layer(path: &Path, encoded: &[(&PlannedTensor, Packed)]) -> Result<()> {
    let specs: Vec<TensorSpec> = encoded
        .iter()
        .flat_map(|(t, p)| p.components.iter().map(move |c| TensorSpec::new(pre_encoded_name(&t.name, c.name), c.dtype, c.shape.clone())))
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut writer = SafetensorsWriter::create(path, &specs, &metadata)?;
    for (_, p) in encoded {
        for c in &p.components {
            writer.write(&c.bytes)?;
        }
    }
    writer.finish().map(|_| ())
}

/// Reads back the packed tensors of a completed layer file.
fn read_layer<'a>(path: &Path, tensors: &[&'a PlannedTensor], effort: Effort) -> Result<Vec<(&'a PlannedTensor, Packed)>> {
    let file = Checkpoint::open(path)?;
    tensors
        .iter()
        .map(|t| {
            let kind = t.choice.ok_or_else(|| Error::BadTensor {
                file: Some(t.source_file.clone()),
                tensor: t.name.clone(),
                problem: "not quantized".to_string(),
            })?;
            let scheme = kind.scheme(effort);
            let components = scheme
                .component_layout(t.k, t.n)
                .into_iter()
                .map(|(name, dtype, shape)| {
                    let entry = file.get(&pre_encoded_name(&t.name, name))?;
                    Ok(crate::scheme::Component { name, dtype, shape, bytes: file.raw_bytes(entry)?.to_vec() })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((*t, Packed { kind, k: t.k, n: t.n, components }))
        })
        .collect()
}

/// The decoded weights of `encoded`, per source tensor, as logical `[k, width]` matrices (a
/// fused tensor's columns split back into its sources).
fn decoded_sources(ckpt: &Checkpoint, encoded: &[(&PlannedTensor, Packed)], effort: Effort) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut out = BTreeMap::new();
    for (t, packed) in encoded {
        let scheme = packed.kind.scheme(effort);
        let w = scheme.decode(packed).map_err(|source| Error::Packed { file: t.source_file.clone(), tensor: t.name.clone(), source })?;
        let mut offset = 0;
        for name in &t.sources {
            let shape = &ckpt.get(name)?.shape;
            let width = match shape.as_slice() {
                [a, b] => {
                    if t.transpose {
                        *a
                    } else {
                        *b
                    }
                }
                s => {
                    return Err(Error::BadTensor {
                        file: Some(ckpt.file_of(name)),
                        tensor: name.clone(),
                        problem: format!("shape {s:?} is not a matrix"),
                    })
                }
            };
            let m: Vec<f32> = (0..t.k).flat_map(|r| w[r * t.n + offset..r * t.n + offset + width].iter().copied()).collect();
            out.insert(name.clone(), m);
            offset += width;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_numbers_come_from_names() {
        assert_eq!(layer_of("model.layers.12.mlp.experts.3.up_proj.weight"), Some(12));
        assert_eq!(layer_of("ernie.layers.0.self_attn.qkv_proj.weight"), Some(0));
        assert_eq!(layer_of("lm_head.weight"), None);
    }

    #[test]
    fn batches_cover_every_token_once() {
        let b = batches(&[3, 4, 10, 2], 8);
        assert_eq!(b, vec![(0..7, vec![3, 4]), (7..17, vec![10]), (17..19, vec![2])]);
    }

    fn temp(name: &str) -> crate::test_support::Scratch {
        crate::test_support::scratch(&format!("layerwise-{name}"), true)
    }

    const ENTRY: &str =
        r#"{"checksum":"00ff","tensors":["t"],"feedback":[{"tensor":"t","damp":0.01,"retries":0,"empty":false}],"experts":{}}"#;

    #[test]
    fn a_record_round_trips_and_an_unusable_one_is_empty() {
        let dir = temp("record");
        assert_eq!(read_record(&dir), Record::default(), "no record");
        let moe = LayerExperts { tokens: Some(BTreeMap::from([(0, 5), (1, 0), (10, 2)])), fallbacks: Some(vec![1]) };
        let entry = |experts: &LayerExperts| LayerEntry {
            checksum: "00ff".to_string(),
            tensors: vec!["t".to_string()],
            feedback: vec![FeedbackRecord { tensor: "t".to_string(), damp: 0.01, retries: 0, empty: false }],
            experts: experts.clone(),
        };
        let record = Record { layers: BTreeMap::from([(0, entry(&LayerExperts::default())), (1, entry(&moe)), (10, entry(&moe))]) };
        write_record(&dir, &record).unwrap();
        assert_eq!(read_record(&dir), record);
        let text = std::fs::read_to_string(dir.join("record.json")).unwrap();
        // Layers and experts in numeric order, a dense layer's experts `{}`, `tokens` first.
        let compact = serde_json::to_string(&serde_json::from_str::<Value>(&text).unwrap()).unwrap();
        assert!(
            compact
                .starts_with(r#"{"layers":{"0":{"checksum":"00ff","tensors":["t"],"feedback":[{"tensor":"t","damp":0.009999999776482582,"#),
            "{compact}"
        );
        assert!(compact.contains(r#""experts":{}},"1":"#), "{compact}");
        assert!(compact.contains(r#""experts":{"tokens":{"0":5,"1":0,"10":2},"fallbacks":[1]}}"#), "{compact}");
        assert!(compact.find(r#""1":{"checksum""#) < compact.find(r#""10":{"checksum""#), "{compact}");
        assert_eq!(
            serde_json::from_str::<Record>(&format!(r#"{{"layers":{{"0":{ENTRY}}}}}"#)).unwrap().layers[&0],
            entry(&LayerExperts::default())
        );
        for bad in [
            "".to_string(),
            "{\"layers\": {\"0\": ".to_string(),
            text[..text.len() / 2].to_string(),
            "[]".to_string(),
            "null".to_string(),
            r#"{"layers":[]}"#.to_string(),
            r#"{}"#.to_string(),
            r#"{"layers":{"0":{"checksum":1}}}"#.to_string(),
            format!(r#"{{"layers":{{"x":{ENTRY}}}}}"#),
            format!(r#"{{"layers":{{"0":{ENTRY}}},"fingerprint":"x"}}"#),
            format!(r#"{{"layers":{{"0":{}}}}}"#, ENTRY.replace(r#""tensors":["t"],"#, "")),
            format!(
                r#"{{"layers":{{"0":{}}}}}"#,
                ENTRY.replace(r#""feedback":[{"#, r#""feedback":[{"extra":1,"#).replace(r#""retries":0,"#, "")
            ),
            format!(r#"{{"layers":{{"0":{}}}}}"#, ENTRY.replace(r#""checksum""#, r#""checksun""#)),
            format!(r#"{{"layers":{{"0":{}}}}}"#, ENTRY.replace(r#""experts":{}"#, r#""experts":{"token":{}}"#)),
        ] {
            std::fs::write(dir.join("record.json"), &bad).unwrap();
            assert_eq!(read_record(&dir), Record::default(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What a layerwise run into `dir` gives: its feedback records, its description, and the
    /// bytes of every file it leaves.
    type RunOutput = (Vec<FeedbackRecord>, Value, BTreeMap<String, Vec<u8>>);

    fn run(ckpt: &Checkpoint, plan: &Plan, dir: &Path) -> RunOutput {
        let mut rng = crate::rng::Rng::new(5);
        let sequences: Vec<Vec<u32>> = (0..4).map(|_| (0..16).map(|_| (rng.next_u64() % 256) as u32).collect()).collect();
        let layerwise = Layerwise::new(LayerwiseOptions {
            sequences: Arc::new(sequences),
            batch_tokens: 32,
            min_tokens: 20,
            weighting: Weighting::Uniform,
            damp: crate::scheme::importance::DEFAULT_DAMP,
            sequential: true,
            hessian_budget: DEFAULT_HESSIAN_BUDGET,
            tokens_label: Value::Null,
        });
        let (pre, records) = layerwise.encode(ckpt, plan, Effort::Default, dir).unwrap();
        assert!(!pre.is_empty());
        let files = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        (records, layerwise.describe(), files)
    }

    #[test]
    fn a_corrupted_record_starts_afresh_to_the_same_bytes() {
        use crate::convert::{OutputLayout, PlanOptions, Policy, Preset};
        let ckpt = Checkpoint::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ernie45-tiny-pt")).unwrap();
        let layout = crate::layout::ModelLayout::of(&ckpt).unwrap();
        let policy = Policy { preset: Preset::parse("wint2-experts", 0).unwrap(), rules: Vec::new() };
        let options = PlanOptions { layout: OutputLayout::Native, policy: &policy, fallback: None, shard_size: 4 << 30 };
        let plan = Plan::build(&ckpt, &layout, &options).unwrap();
        let dir = temp("resume");
        let fresh = run(&ckpt, &plan, &dir);
        assert!(fresh.2.contains_key("record.json") && fresh.2.contains_key("layer-00001.safetensors"), "{:?}", fresh.2.keys());
        assert!(!fresh.0.is_empty());
        assert!(fresh.1["experts"]["1"]["tokens"].is_object(), "{}", fresh.1);
        assert_eq!(fresh.1["experts"]["0"], serde_json::json!({}), "{}", fresh.1);
        // Resumed from an intact record, then from unusable ones (`[]` once panicked).
        let record = fresh.2["record.json"].clone();
        for bad in [record.clone(), b"[]".to_vec(), record[..record.len() / 2].to_vec(), b"{\"layers\":{\"0\":{}}}".to_vec()] {
            std::fs::write(dir.join("record.json"), &bad).unwrap();
            assert!(run(&ckpt, &plan, &dir) == fresh, "after a record of {}", String::from_utf8_lossy(&bad));
        }
        // A layer file that does not match its checksum is encoded again.
        std::fs::write(dir.join("layer-00001.safetensors"), b"garbage").unwrap();
        assert!(run(&ckpt, &plan, &dir) == fresh);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
