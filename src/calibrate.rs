//! Per-expert calibration statistics gathered from the forward pass ([`crate::model`]).
//!
//! A [`Calibrator`] is an [`Observer`]: for every linear *input* (tensors that share an input,
//! such as q|k|v or gate|up, share its statistics) it accumulates, over the tokens that really
//! reach it (for a routed expert: only the tokens routed to it), the per-input-channel sum of
//! squares `sum_sq[k] = sum_t w_t x_t[k]^2`, the token count `n` and the weight sum
//! `W = sum_t w_t` (`w_t = 1`, or the token's routing weight with [`Weighting::Gate`]), and
//! with [`Hessian::Full`] also `X^T X = sum_t w_t x_t x_t^T`. Per MoE layer it also records
//! the statistics of every token entering the layer (`moe_input`).
//!
//! The importance an encoder gets is the mean square activation per input channel,
//! `h[k] = sum_sq[k] / W`. An expert that saw `n_e < min_tokens` tokens is blended with its
//! layer's all-token mean `m_layer` (for a down projection: with the mean of the layer's
//! experts' down inputs, pooled):
//!
//! ```text
//! h_e = (n_e * (sum_sq_e / W_e) + (min_tokens - n_e) * m_layer) / min_tokens
//! ```
//!
//! (with uniform weighting `n_e * sum_sq_e / W_e = sum_sq_e`), the same for `X^T X / W`. Such
//! experts are listed as fallbacks. The layout of the statistics file is in
//! `docs/calibration.md`.

pub mod layerwise;

use crate::checkpoint::write::{SafetensorsWriter, TensorSpec};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::{Block, Counting, ForwardConfig, LinearInput, LinearRows, Observer, Progress, Routing, TensorNames, WeightSource};
use crate::Dtype;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Metadata key of the statistics file holding the JSON description.
pub const METADATA_KEY: &str = "ccq.calibration";

/// The `format` of the description under [`METADATA_KEY`].
const DESCRIPTION_FORMAT: &str = "ccq-calibration";

/// The `version` of the description under [`METADATA_KEY`].
const DESCRIPTION_VERSION: u64 = 1;

/// The JSON description of a statistics file, under [`METADATA_KEY`] (`docs/calibration.md`),
/// fields in the order they are written. Every field is required; an unknown one (a typo) is
/// refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    /// [`DESCRIPTION_FORMAT`].
    format: String,
    /// [`DESCRIPTION_VERSION`].
    version: u64,
    /// Free-form provenance ([`Stats::meta`]).
    meta: Value,
    /// By input id: its width, tokens and whether it fell back; its tensors are
    /// `ID.sum_sq`, `ID.mean_sq` and (full Hessian) `ID.xtx`.
    inputs: BTreeMap<String, InputDescription>,
    /// Source weight tensor name -> input id.
    weights: BTreeMap<String, String>,
    /// Per MoE layer (keys: the layer index as a string), the tokens of every expert.
    expert_tokens: BTreeMap<usize, Vec<usize>>,
    /// Per MoE layer, the experts blended with the layer's statistics.
    fallbacks: BTreeMap<usize, Vec<usize>>,
}

/// One input of a [`Description`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputDescription {
    /// Input width.
    k: usize,
    /// Tokens seen.
    tokens: u64,
    /// Blended with its layer's statistics.
    fell_back: bool,
}

impl Description {
    /// Parses and checks the metadata text; the problem, naming the field, otherwise.
    fn parse(text: &str) -> std::result::Result<Description, String> {
        let what = format!("the '{METADATA_KEY}' metadata");
        let d: Description = crate::json::parse(text).map_err(|e| format!("{what} is not a calibration description: {e}"))?;
        if d.format != DESCRIPTION_FORMAT {
            return Err(format!("{what} has \"format\" '{}', not '{DESCRIPTION_FORMAT}'", d.format));
        }
        if d.version != DESCRIPTION_VERSION {
            return Err(format!("{what} has \"version\" {}; this ccq reads version {DESCRIPTION_VERSION}", d.version));
        }
        Ok(d)
    }
}

/// Which second moments are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hessian {
    /// Per-channel sums of squares only.
    Diag,
    /// Also the full `X^T X`.
    Full,
}

/// How tokens are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// Every token counts 1.
    Uniform,
    /// A routed expert's token counts its routing weight (other linears: 1).
    Gate,
}

/// Options of a calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibOptions {
    /// Experts with fewer tokens are blended with their layer's statistics.
    pub min_tokens: usize,
    /// Which second moments.
    pub hessian: Hessian,
    /// Token weighting.
    pub weighting: Weighting,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions { min_tokens: 16, hessian: Hessian::Diag, weighting: Weighting::Uniform }
    }
}

/// Raw sums of one linear input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSums {
    /// Input width.
    pub k: usize,
    /// Tokens seen.
    pub tokens: f64,
    /// Sum of token weights.
    pub weight_sum: f64,
    /// `sum_t w_t x_t[k]^2`.
    pub sum_sq: Vec<f64>,
    /// `sum_t w_t x_t x_t^T`, row-major `[k, k]`, with [`Hessian::Full`].
    pub xtx: Option<Vec<f64>>,
}

impl InputSums {
    fn new(k: usize, full: bool) -> InputSums {
        InputSums { k, tokens: 0.0, weight_sum: 0.0, sum_sq: vec![0.0; k], xtx: full.then(|| vec![0.0; k * k]) }
    }

    /// Adds `rows` (`[m, k]`), token `i` weighted `weights[i] * scale`. `X^T X` is one matrix
    /// product per call, `(D X)^T (D X)` with `D = diag(sqrt(w_i))`, in f32 (sums of at most
    /// one batch of tokens), added to the f64 total.
    fn add(&mut self, rows: &[f32], weights: Option<&[f32]>, scale: f64) {
        let k = self.k;
        let m = rows.len() / k.max(1);
        for (i, row) in rows.chunks_exact(k).enumerate() {
            let w = weights.map_or(1.0, |g| g[i] as f64) * scale;
            self.tokens += scale;
            self.weight_sum += w;
            for (s, &x) in self.sum_sq.iter_mut().zip(row) {
                *s += w * (x as f64) * (x as f64);
            }
        }
        if let Some(xtx) = &mut self.xtx {
            let scaled: Vec<f32> = rows
                .chunks_exact(k)
                .enumerate()
                .flat_map(|(i, row)| {
                    let r = (weights.map_or(1.0, |g| g[i] as f64) * scale).sqrt() as f32;
                    row.iter().map(move |&x| x * r)
                })
                .collect();
            let mut batch = vec![0.0f32; k * k];
            // Row blocks of XTX_BLOCK rows, each only from its diagonal on (the rest is the
            // mirror), in parallel: the blocks are fixed, so the sums do not depend on threads.
            batch.par_chunks_mut(XTX_BLOCK * k).enumerate().for_each(|(bi, block)| {
                let r0 = bi * XTX_BLOCK;
                let rows = block.len() / k;
                // SAFETY: A = the columns r0..r0 + rows of `scaled` (m x k row-major) read as
                // their transpose (rows x m: strides 1 and k); B = its columns r0.. (m x
                // (k - r0): strides k and 1); C = this block's columns r0.. (rows x (k - r0),
                // row stride k), inside `block` and not aliased.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        m,
                        k - r0,
                        1.0,
                        scaled.as_ptr().add(r0),
                        1,
                        k as isize,
                        scaled.as_ptr().add(r0),
                        k as isize,
                        1,
                        0.0,
                        block.as_mut_ptr().add(r0),
                        k as isize,
                        1,
                    );
                }
            });
            for r in 0..k {
                for c in 0..r {
                    batch[r * k + c] = batch[c * k + r];
                }
            }
            for (o, &b) in xtx.iter_mut().zip(&batch) {
                *o += b as f64;
            }
        }
    }

    /// `sum / weight_sum` (zeros when nothing was seen).
    fn mean(&self, sum: &[f64]) -> Vec<f64> {
        let w = self.weight_sum;
        sum.iter().map(|s| if w > 0.0 { s / w } else { 0.0 }).collect()
    }
}

/// Rows per parallel block of the `X^T X` product.
const XTX_BLOCK: usize = 64;

/// Gathers statistics while [`crate::model::forward`] runs.
pub struct Calibrator {
    cfg: ForwardConfig,
    names: TensorNames,
    options: CalibOptions,
    /// Raw sums by input id.
    pub sums: BTreeMap<String, InputSums>,
    /// Input id -> the weight tensors that read it (candidates; those in the checkpoint are kept).
    readers: BTreeMap<String, Vec<String>>,
    /// Routed experts whose own sums are kept (all when `None`); the layer-level sums
    /// (`moe_input`, the pooled down input) always see every expert.
    experts: Option<std::ops::Range<usize>>,
    /// Whether the inputs of blocks other than routed experts are kept.
    others: bool,
}

/// The id of a layer's pooled down-projection input: every routed expert's down input, summed
/// (the layer statistics a down projection with too few tokens is blended with). Internal: not
/// written to the statistics file.
fn pooled_down_id(names: &TensorNames, layer: usize) -> String {
    format!("{}.pooled_down", names.moe_block(layer))
}

/// The id of an input: its block's module and a leaf naming the input (`qkv`, `o_proj`,
/// `gate_up`, `down_proj`), or `lm_head`.
fn input_id(names: &TensorNames, layers: usize, layer: usize, block: Block, input: LinearInput) -> String {
    if block == Block::LmHead || layer >= layers {
        return "lm_head".to_string();
    }
    let leaf = match input {
        LinearInput::Qkv => "qkv",
        LinearInput::O => "o_proj",
        LinearInput::GateUp => "gate_up",
        LinearInput::Down => "down_proj",
        LinearInput::LmHead => "lm_head",
    };
    format!("{}.{leaf}", names.module(layer, block))
}

fn moe_input_id(names: &TensorNames, layer: usize) -> String {
    format!("{}.moe_input", names.moe_block(layer))
}

/// The weight tensors (`*.weight`) that read the input of `block` at `layer`.
fn weight_candidates(names: &TensorNames, layer: usize, block: Block, input: LinearInput) -> Vec<String> {
    if block == Block::LmHead {
        return vec!["lm_head.weight".to_string()];
    }
    let module = names.module(layer, block);
    names.readers(block, input).into_iter().map(|leaf| format!("{module}.{leaf}.weight")).collect()
}

impl Calibrator {
    /// A calibrator for a model of `cfg` whose tensors are called `names`.
    pub fn new(cfg: &ForwardConfig, names: &TensorNames, options: CalibOptions) -> Calibrator {
        Calibrator {
            cfg: cfg.clone(),
            names: names.clone(),
            readers: BTreeMap::new(),
            options,
            sums: BTreeMap::new(),
            experts: None,
            others: true,
        }
    }

    /// Keeps the own sums of routed experts `experts` only, and of the other blocks only when
    /// `others`: one chunk of a layer whose Hessians do not fit in memory at once.
    pub fn restricted(mut self, experts: std::ops::Range<usize>, others: bool) -> Calibrator {
        self.experts = Some(experts);
        self.others = others;
        self
    }

    fn keeps(&self, block: Block) -> bool {
        match (block, &self.experts) {
            (Block::Expert(e), Some(r)) => r.contains(&e),
            (Block::Expert(_), None) => true,
            _ => self.others,
        }
    }

    fn sums(&mut self, id: String, k: usize) -> &mut InputSums {
        let full = self.options.hessian == Hessian::Full;
        self.sums.entry(id).or_insert_with(|| InputSums::new(k, full))
    }

    /// Tokens each expert of MoE layer `l` received.
    pub fn expert_tokens(&self, l: usize) -> Vec<usize> {
        (0..self.cfg.experts)
            .map(|e| {
                let id = input_id(&self.names, self.cfg.layers, l, Block::Expert(e), LinearInput::GateUp);
                self.sums.get(&id).map_or(0, |s| s.tokens.round() as usize)
            })
            .collect()
    }

    /// Finishes: blends the experts below `min_tokens` and names the weights of each input.
    pub fn finish(self, ckpt: &Checkpoint) -> Stats {
        let mut inputs = BTreeMap::new();
        let mut expert_tokens = BTreeMap::new();
        let mut fallbacks = BTreeMap::new();
        let moe_layers: Vec<usize> = (0..self.cfg.layers).filter(|&l| self.cfg.is_moe_layer(l)).collect();
        let kept = self.experts.clone().unwrap_or(0..self.cfg.experts);
        for &l in &moe_layers {
            let counts = self.expert_tokens(l);
            let min = self.options.min_tokens;
            let fell: Vec<usize> = kept.clone().filter(|&e| counts[e] < min).collect();
            // Layer-level means: gate_up from the MoE input, down pooled over the experts.
            let pooled_down = self.sums.get(&pooled_down_id(&self.names, l));
            let moe_in = self.sums.get(&moe_input_id(&self.names, l));
            for &e in &fell {
                for (input, layer_sums, k) in
                    [(LinearInput::GateUp, moe_in, self.cfg.hidden), (LinearInput::Down, pooled_down, self.cfg.moe_intermediate)]
                {
                    let id = input_id(&self.names, self.cfg.layers, l, Block::Expert(e), input);
                    let own = self.sums.get(&id).cloned().unwrap_or_else(|| InputSums::new(k, self.options.hessian == Hessian::Full));
                    inputs.insert(id, blend(&own, layer_sums, min));
                }
            }
            expert_tokens.insert(l, counts);
            fallbacks.insert(l, fell);
        }
        let pooled: Vec<String> = moe_layers.iter().map(|&l| pooled_down_id(&self.names, l)).collect();
        for (id, s) in &self.sums {
            if !inputs.contains_key(id) && !pooled.contains(id) {
                inputs.insert(id.clone(), InputStats::from_sums(s, false));
            }
        }
        let mut weights = BTreeMap::new();
        for id in inputs.keys() {
            for name in self.readers.get(id).into_iter().flatten() {
                if ckpt.get(name).is_ok() {
                    weights.insert(name.clone(), id.clone());
                }
            }
        }
        Stats { inputs, weights, expert_tokens, fallbacks, meta: json!({}) }
    }
}

fn blend(own: &InputSums, layer: Option<&InputSums>, min: usize) -> InputStats {
    let n = own.tokens;
    let min_f = min as f64;
    let own_mean = own.mean(&own.sum_sq);
    let layer_mean = layer.map_or_else(|| vec![0.0; own.k], |l| l.mean(&l.sum_sq));
    let mix = |a: &[f64], b: &[f64]| -> Vec<f32> { a.iter().zip(b).map(|(a, b)| ((n * a + (min_f - n) * b) / min_f) as f32).collect() };
    let mean_sq = mix(&own_mean, &layer_mean);
    let xtx = own.xtx.as_ref().map(|x| {
        let own_x = own.mean(x);
        let layer_x = layer.and_then(|l| l.xtx.as_ref().map(|lx| l.mean(lx))).unwrap_or_else(|| vec![0.0; x.len()]);
        mix(&own_x, &layer_x)
    });
    InputStats { k: own.k, tokens: n.round() as u64, sum_sq: own.sum_sq.iter().map(|&v| v as f32).collect(), mean_sq, xtx, fell_back: true }
}

impl Observer for Calibrator {
    /// Calibration needs the inputs of every linear, lm_head's included, but not the logits.
    fn needs_logits(&self) -> bool {
        false
    }

    fn on_linear_input(&mut self, r: &LinearRows<'_>) {
        let id = input_id(&self.names, self.cfg.layers, r.layer, r.block, r.input);
        let gates = match (self.options.weighting, r.block) {
            (Weighting::Gate, Block::Expert(_)) => r.gate_weights,
            _ => None,
        };
        if self.keeps(r.block) {
            if !self.readers.contains_key(&id) {
                self.readers.insert(id.clone(), weight_candidates(&self.names, r.layer, r.block, r.input));
            }
            self.sums(id, r.k).add(r.rows, gates, 1.0);
        }
        // Every token is routed to exactly top_k experts, so the experts' gate_up inputs, each
        // counted 1/top_k, are the MoE layer's input; their down inputs together are the
        // pooled down input.
        match (r.block, r.input) {
            (Block::Expert(_), LinearInput::GateUp) => {
                let top_k = self.cfg.top_k as f64;
                let id = moe_input_id(&self.names, r.layer);
                if !self.readers.contains_key(&id) {
                    self.readers.insert(id.clone(), vec![self.names.router(r.layer)]);
                }
                self.sums(id, r.k).add(r.rows, None, 1.0 / top_k);
            }
            (Block::Expert(_), LinearInput::Down) => {
                let id = pooled_down_id(&self.names, r.layer);
                self.sums(id, r.k).add(r.rows, gates, 1.0);
            }
            _ => {}
        }
    }

    fn on_routing(&mut self, _routing: &Routing) {}
}

/// The statistics of one linear input, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InputStats {
    /// Input width.
    pub k: usize,
    /// Tokens seen.
    pub tokens: u64,
    /// Raw `sum_t w_t x_t[k]^2`.
    pub sum_sq: Vec<f32>,
    /// The importance `h`: mean square per channel, blended for fallback experts.
    pub mean_sq: Vec<f32>,
    /// `X^T X / W` (blended likewise), `[k, k]`, with [`Hessian::Full`].
    pub xtx: Option<Vec<f32>>,
    /// Whether blended with the layer's statistics.
    pub fell_back: bool,
}

impl InputStats {
    fn from_sums(s: &InputSums, fell_back: bool) -> InputStats {
        InputStats {
            k: s.k,
            tokens: s.tokens.round() as u64,
            sum_sq: s.sum_sq.iter().map(|&v| v as f32).collect(),
            mean_sq: s.mean(&s.sum_sq).into_iter().map(|v| v as f32).collect(),
            xtx: s.xtx.as_ref().map(|x| s.mean(x).into_iter().map(|v| v as f32).collect()),
            fell_back,
        }
    }
}

/// A statistics file's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// By input id.
    pub inputs: BTreeMap<String, InputStats>,
    /// Source weight tensor name -> input id.
    pub weights: BTreeMap<String, String>,
    /// Per MoE layer, the tokens of every expert.
    pub expert_tokens: BTreeMap<usize, Vec<usize>>,
    /// Per MoE layer, the experts blended with the layer's statistics.
    pub fallbacks: BTreeMap<usize, Vec<usize>>,
    /// Free-form provenance (token file, checkpoint fingerprint, options).
    pub meta: Value,
}

/// The `--json` summary of `ccq calibrate`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Token file, checkpoint and options.
    pub meta: Value,
    /// Linear inputs with statistics.
    pub inputs: usize,
    /// Per MoE layer (by index): the token count of every expert.
    pub expert_tokens: BTreeMap<String, Vec<usize>>,
    /// Per MoE layer: experts below `min_tokens`, blended with the layer's statistics.
    pub fallbacks: BTreeMap<String, Vec<usize>>,
}

/// A fingerprint of a checkpoint's tensor names, dtypes and shapes (FNV-1a 64, hex).
pub fn checkpoint_fingerprint(ckpt: &Checkpoint) -> String {
    let mut names: Vec<String> = ckpt.tensors().iter().map(|t| format!("{}|{:?}|{:?}", t.name, t.dtype, t.shape)).collect();
    names.sort();
    fnv_hex(names.join("\n").as_bytes())
}

/// FNV-1a 64 of `bytes` ([`crate::rng::fnv1a64`]), hex.
pub use crate::rng::fnv_hex;

impl Stats {
    /// The `--json` summary.
    pub fn summary(&self) -> Summary {
        Summary {
            meta: self.meta.clone(),
            inputs: self.inputs.len(),
            expert_tokens: self.expert_tokens.iter().map(|(l, v)| (l.to_string(), v.clone())).collect(),
            fallbacks: self.fallbacks.iter().map(|(l, v)| (l.to_string(), v.clone())).collect(),
        }
    }

    /// The statistics of the input weight tensor `name` reads.
    pub fn for_weight(&self, name: &str) -> Option<&InputStats> {
        self.inputs.get(self.weights.get(name)?)
    }

    /// The JSON description [`Stats::write`] puts under [`METADATA_KEY`].
    fn description(&self) -> Description {
        Description {
            format: DESCRIPTION_FORMAT.to_string(),
            version: DESCRIPTION_VERSION,
            meta: self.meta.clone(),
            inputs: self
                .inputs
                .iter()
                .map(|(id, s)| (id.clone(), InputDescription { k: s.k, tokens: s.tokens, fell_back: s.fell_back }))
                .collect(),
            weights: self.weights.clone(),
            expert_tokens: self.expert_tokens.clone(),
            fallbacks: self.fallbacks.clone(),
        }
    }

    /// Writes the statistics file atomically (layout: `docs/calibration.md`).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut specs = Vec::new();
        for (id, s) in &self.inputs {
            specs.push(TensorSpec::new(format!("{id}.sum_sq"), Dtype::F32, vec![s.k]));
            specs.push(TensorSpec::new(format!("{id}.mean_sq"), Dtype::F32, vec![s.k]));
            if s.xtx.is_some() {
                specs.push(TensorSpec::new(format!("{id}.xtx"), Dtype::F32, vec![s.k, s.k]));
            }
        }
        let description =
            serde_json::to_string(&self.description()).map_err(|e| Error::Json { file: path.to_path_buf(), problem: e.to_string() })?;
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string()), (METADATA_KEY.to_string(), description)]);
        let mut writer = SafetensorsWriter::create(path, &specs, &metadata)?;
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for s in self.inputs.values() {
            writer.write(&bytes(&s.sum_sq))?;
            writer.write(&bytes(&s.mean_sq))?;
            if let Some(x) = &s.xtx {
                writer.write(&bytes(x))?;
            }
        }
        writer.finish()?;
        Ok(())
    }

    /// Reads a statistics file written by [`Stats::write`], through the checkpoint reader (so
    /// every byte of the safetensors container is validated first). The description must have
    /// every field the writer writes, and no other.
    pub fn read(path: &Path) -> Result<Stats> {
        let bad = |problem: String| Error::BadInput { problem: format!("{}: {problem}", path.display()) };
        let ckpt = Checkpoint::open(path)?;
        let text = ckpt
            .shards()
            .first()
            .and_then(|shard| shard.metadata.get(METADATA_KEY))
            .ok_or_else(|| bad(format!("no '{METADATA_KEY}' metadata: not a statistics file written by ccq calibrate")))?;
        let description = Description::parse(text).map_err(|problem| Error::Json { file: path.to_path_buf(), problem })?;
        let tensor = |name: &str, len: usize| -> Result<Vec<f32>> {
            let entry = ckpt.get(name).map_err(|_| bad(format!("tensor '{name}' is missing")))?;
            if entry.dtype != Dtype::F32 || entry.numel() != len {
                return Err(bad(format!("tensor '{name}' is not F32 with {len} values")));
            }
            ckpt.read_f32(name)
        };
        let header_has = |name: &str| ckpt.get(name).is_ok();
        let mut inputs = BTreeMap::new();
        for (id, m) in description.inputs {
            let k = m.k;
            let k_squared = k.checked_mul(k).ok_or_else(|| bad(format!("input '{id}' has k = {k}, too large")))?;
            let xtx = if header_has(&format!("{id}.xtx")) { Some(tensor(&format!("{id}.xtx"), k_squared)?) } else { None };
            let stats = InputStats {
                k,
                tokens: m.tokens,
                sum_sq: tensor(&format!("{id}.sum_sq"), k)?,
                mean_sq: tensor(&format!("{id}.mean_sq"), k)?,
                xtx,
                fell_back: m.fell_back,
            };
            inputs.insert(id, stats);
        }
        Ok(Stats {
            inputs,
            weights: description.weights,
            expert_tokens: description.expert_tokens,
            fallbacks: description.fallbacks,
            meta: description.meta,
        })
    }

    /// What each quantized tensor of `plan` minimises: the full `X^T X` of its input when the
    /// file has it (error feedback), its mean square per channel otherwise. Checked first with
    /// [`Stats::check_covers`] (`path` names the file in errors).
    pub fn importance_for_plan(
        &self,
        path: &Path,
        plan: &crate::convert::Plan,
    ) -> Result<BTreeMap<String, crate::convert::run::TensorImportance>> {
        use crate::convert::run::TensorImportance;
        let quantized: Vec<&crate::convert::PlannedTensor> = plan.tensors.iter().filter(|t| t.choice.is_some()).collect();
        self.check_covers(path, quantized.iter().map(|t| (t.name.as_str(), t.sources.as_slice(), t.k)))?;
        let mut shared: BTreeMap<&str, std::sync::Arc<Vec<f32>>> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for t in quantized {
            let Some(id) = self.weights.get(&t.sources[0]) else { continue };
            let stats = &self.inputs[id];
            let importance = match &stats.xtx {
                Some(xtx) => {
                    TensorImportance::Hessian(shared.entry(id.as_str()).or_insert_with(|| std::sync::Arc::new(xtx.clone())).clone())
                }
                None => TensorImportance::Diagonal(stats.mean_sq.clone()),
            };
            out.insert(t.name.clone(), importance);
        }
        Ok(out)
    }

    /// Checks that every quantized weight (`tensors`: (output name, source names, K)) has
    /// statistics of width K; all problems are listed at once.
    pub fn check_covers<'a>(&self, path: &Path, tensors: impl Iterator<Item = (&'a str, &'a [String], usize)>) -> Result<()> {
        let mut problems = Vec::new();
        for (name, sources, k) in tensors {
            for s in sources {
                match self.for_weight(s) {
                    None => problems.push(format!("no statistics for '{s}' (of '{name}')")),
                    Some(st) if st.k != k => problems.push(format!("'{s}' has {k} inputs but its statistics have {}", st.k)),
                    Some(_) => {}
                }
            }
        }
        Error::refuse_all(&format!("{}: the calibration statistics do not match the checkpoint", path.display()), problems, 10)
    }
}

/// Runs the forward pass over `sequences`, `batch_tokens` tokens at a time, and gathers the
/// statistics of `ckpt`; `progress` hears of every layer run.
pub fn calibrate(
    ckpt: &Checkpoint,
    sequences: &[Vec<u32>],
    options: CalibOptions,
    batch_tokens: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Stats> {
    let source = crate::model::source::OriginalWeights::new(ckpt)?;
    let cfg = source.config().clone();
    source.check_complete()?;
    cfg.check_tokens(sequences)?;
    let mut cal = Calibrator::new(&cfg, source.names(), options);
    let batches: Vec<&[Vec<u32>]> = crate::model::batches(sequences, batch_tokens).collect();
    let mut counting = Counting { inner: &mut cal, progress: Progress::start(&batches, cfg.layers, 1), report: progress };
    for batch in batches {
        crate::model::forward(&source, batch, &mut counting)?;
        counting.tokens_done(batch.iter().map(Vec::len).sum());
    }
    let mut stats = cal.finish(ckpt);
    stats.meta = json!({
        "checkpoint": ckpt.path().display().to_string(),
        "checkpoint_fingerprint": checkpoint_fingerprint(ckpt),
        "sequences": sequences.len(),
        "tokens": sequences.iter().map(Vec::len).sum::<usize>(),
        "min_tokens": options.min_tokens,
        "hessian": match options.hessian { Hessian::Diag => "diag", Hessian::Full => "full" },
        "weighting": match options.weighting { Weighting::Uniform => "uniform", Weighting::Gate => "gate" },
    });
    Ok(stats)
}

#[cfg(test)]
mod tests;
