//! A header-only summary of a checkpoint: what `ccq inspect` shows.
//!
//! [`Inspection::of`] classifies every tensor with the checkpoint's [`ModelLayout`] and
//! totals parameters and bytes by role, dtype and file. It never touches tensor data, so it
//! stays fast on a checkpoint of any size. The JSON schema is documented in `docs/inspect.md`.

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::layout::{Family, ModelLayout, Naming, Part, Role};
use crate::Dtype;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The most decoder layers a summary lists.
pub const MAX_LAYERS: usize = 1 << 20;

/// Parameter and byte totals of a group of tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Number of tensors.
    pub tensors: u64,
    /// Number of elements.
    pub params: u64,
    /// Number of stored bytes.
    pub bytes: u64,
}

impl Totals {
    fn add(&mut self, params: u64, bytes: u64) {
        self.tensors += 1;
        self.params += params;
        self.bytes += bytes;
    }
}

/// One tensor's row in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorRow {
    /// Tensor name.
    pub name: String,
    /// File name of the shard holding it.
    pub file: String,
    /// Stored dtype.
    pub dtype: String,
    /// Stored shape.
    pub shape: Vec<usize>,
    /// Role.
    pub role: Role,
    /// Decoder layer, if any.
    pub layer: Option<usize>,
    /// Routed expert index, if any.
    pub expert: Option<usize>,
    /// Which projection, when known.
    pub part: Option<Part>,
}

/// What a quantized checkpoint (either layout ccq writes, or Baidu's) holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantizedSummary {
    /// `fastdeploy` or `native`.
    pub layout: crate::format::OutputLayout,
    /// Packed tensors.
    pub packed_tensors: usize,
    /// Parameters of the model: every packed tensor's logical `k * n` plus the elements of the
    /// unquantized tensors.
    pub logical_params: u64,
    /// Logical weights per scheme (`none` for unquantized tensors).
    pub params_by_scheme: BTreeMap<String, u64>,
    /// Stored bits per logical weight over the whole checkpoint.
    pub bits_per_weight: f64,
}

impl QuantizedSummary {
    /// The summary of a checkpoint that holds quantized tensors; `Ok(None)` for one that does
    /// not. A checkpoint that looks quantized but does not open as one is an error.
    pub fn of(ckpt: &Checkpoint) -> Result<Option<QuantizedSummary>> {
        if !crate::quantized::holds_quantized(ckpt) {
            return Ok(None);
        }
        let q = crate::quantized::QuantizedCheckpoint::open(ckpt.path())?;
        let mut by_scheme = BTreeMap::new();
        for t in q.tensors() {
            *by_scheme.entry(t.scheme.map_or("none", crate::SchemeKind::name).to_string()).or_insert(0u64) += (t.k * t.n) as u64;
        }
        let logical: u64 = by_scheme.values().sum();
        let bytes: u64 = ckpt.tensors().iter().map(|t| t.nbytes()).sum();
        Ok(Some(QuantizedSummary {
            layout: q.layout(),
            packed_tensors: q.tensors().iter().filter(|t| t.is_quantized()).count(),
            logical_params: logical,
            params_by_scheme: by_scheme,
            bits_per_weight: bytes as f64 * 8.0 / logical.max(1) as f64,
        }))
    }
}

/// The summary of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// `model_type` from the config, if any.
    pub model_type: Option<String>,
    /// Detected family.
    pub family: Family,
    /// Naming (and so weight orientation).
    pub naming: Naming,
    /// Decoder layers: from the config, else one past the highest layer index seen.
    pub num_layers: usize,
    /// Layers that hold routed-expert tensors.
    pub moe_layers: Vec<usize>,
    /// Layers the config says are MoE (null without MoE keys or layer count).
    pub config_moe_layers: Option<Vec<usize>>,
    /// Routed experts per MoE layer: from the config, else from the names.
    pub num_experts: usize,
    /// Distinct routed experts found, per MoE layer.
    pub experts_per_layer: BTreeMap<usize, usize>,
    /// Experts chosen per token, from the config.
    pub experts_per_token: Option<usize>,
    /// Shared experts per MoE layer, from the config.
    pub num_shared_experts: usize,
    /// Whether the config ties lm_head to the embedding.
    pub tie_word_embeddings: bool,
    /// Whether multi-token-prediction tensors are present.
    pub has_mtp: bool,
    /// Total number of stored elements (of a quantized checkpoint: packed bytes and scales
    /// counted as stored, see [`Inspection::quantized`] for the logical weights).
    pub total_params: u64,
    /// What a quantized checkpoint holds (`None` for an original or dequantized one).
    pub quantized: Option<QuantizedSummary>,
    /// Total stored bytes of tensor data.
    pub total_bytes: u64,
    /// Totals per role.
    pub by_role: BTreeMap<Role, Totals>,
    /// Totals per dtype.
    pub by_dtype: BTreeMap<String, Totals>,
    /// Totals per file.
    pub by_file: BTreeMap<String, Totals>,
    /// What a reader of this checkpoint needs to know.
    pub notes: Vec<String>,
    /// Every tensor.
    pub tensors: Vec<TensorRow>,
}

impl Inspection {
    /// Summarises an opened checkpoint (headers only).
    pub fn of(ckpt: &Checkpoint) -> Result<Inspection> {
        let layout = ModelLayout::of(ckpt)?;
        let file_names: Vec<String> = ckpt.shards().iter().map(|s| file_name(&s.path)).collect();
        let tensors: Vec<TensorRow> = ckpt
            .tensors()
            .iter()
            .map(|t| {
                let class = layout.classify(&t.name);
                TensorRow {
                    name: t.name.clone(),
                    file: file_names[t.shard].clone(),
                    dtype: t.dtype.name().to_string(),
                    shape: t.shape.clone(),
                    role: class.role,
                    layer: class.layer,
                    expert: class.expert,
                    part: class.part,
                }
            })
            .collect();
        let mut inspection = Inspection::from_rows(&layout, tensors, ckpt);
        inspection.quantized = QuantizedSummary::of(ckpt)?;
        inspection.notes = notes(&inspection, &layout, ckpt);
        Ok(inspection)
    }

    fn from_rows(layout: &ModelLayout, tensors: Vec<TensorRow>, ckpt: &Checkpoint) -> Inspection {
        let cfg = &layout.config;
        let mut by_role = BTreeMap::new();
        let mut by_dtype = BTreeMap::new();
        let mut by_file = BTreeMap::new();
        let mut experts: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut max_layer = None;
        for (row, entry) in tensors.iter().zip(ckpt.tensors()) {
            let (params, bytes) = (entry.numel() as u64, entry.nbytes());
            by_role.entry(row.role).or_insert_with(Totals::default).add(params, bytes);
            by_dtype.entry(row.dtype.clone()).or_insert_with(Totals::default).add(params, bytes);
            by_file.entry(row.file.clone()).or_insert_with(Totals::default).add(params, bytes);
            if row.role != Role::Mtp {
                max_layer = max_layer.max(row.layer);
            }
            if let (true, Some(layer), Some(expert)) = (row.role.is_routed_expert(), row.layer, row.expert) {
                experts.entry(layer).or_default().insert(expert);
            }
        }
        // A config can claim any number of layers; listing MoE layers is capped so that a
        // corrupt value cannot make a header-only command run for ever.
        let num_layers = cfg.num_hidden_layers.unwrap_or(max_layer.map_or(0, |l| l + 1)).min(MAX_LAYERS);
        let config_moe_layers = cfg
            .moe
            .as_ref()
            .filter(|_| cfg.num_hidden_layers.is_some())
            .map(|moe| (0..num_layers).filter(|&i| moe.is_moe_layer(i, num_layers)).collect());
        let experts_per_layer: BTreeMap<usize, usize> = experts.iter().map(|(&l, e)| (l, e.len())).collect();
        let found_experts = experts.values().flat_map(|e| e.iter().max()).max().map_or(0, |m| m + 1);
        Inspection {
            model_type: cfg.model_type.clone(),
            family: layout.family,
            naming: layout.naming,
            num_layers,
            moe_layers: experts_per_layer.keys().copied().collect(),
            config_moe_layers,
            num_experts: cfg.moe.as_ref().map_or(found_experts, |m| m.total_experts()),
            experts_per_layer,
            experts_per_token: cfg.moe.as_ref().and_then(|m| m.top_k),
            num_shared_experts: cfg.moe.as_ref().map_or(0, |m| m.num_shared_experts),
            tie_word_embeddings: cfg.tie_word_embeddings,
            has_mtp: by_role.contains_key(&Role::Mtp),
            total_params: ckpt.total_params(),
            quantized: None,
            total_bytes: by_file.values().map(|t: &Totals| t.bytes).sum(),
            by_role,
            by_dtype,
            by_file,
            notes: Vec::new(),
            tensors,
        }
    }
}

/// Facts a reader of the checkpoint needs, in plain sentences.
fn notes(s: &Inspection, layout: &ModelLayout, ckpt: &Checkpoint) -> Vec<String> {
    let mut notes = Vec::new();
    if ckpt.config().is_none() {
        notes.push("no config.json: roles come from tensor names alone".to_string());
    }
    let has_linear = s.by_role.keys().any(|r| r.is_routed_expert() || matches!(r, Role::Attention | Role::DenseMlp | Role::SharedExpert));
    match layout.naming {
        _ if !has_linear => {}
        Naming::Pytorch => notes.push("linear weights are stored [out, in] (PyTorch orientation)".to_string()),
        Naming::Paddle => notes.push("linear weights are stored [in, out] (Paddle orientation)".to_string()),
    }
    let has_lm_head = s.by_role.contains_key(&Role::LmHead);
    match (s.tie_word_embeddings, has_lm_head) {
        (true, false) => notes.push("tied embeddings: the output projection reuses embed_tokens".to_string()),
        (true, true) => notes.push("config ties embeddings but an lm_head tensor is present".to_string()),
        (false, false) if s.by_role.contains_key(&Role::Embedding) => {
            notes.push("no lm_head tensor although embeddings are not tied".to_string())
        }
        _ => {}
    }
    if s.has_mtp {
        let n = s.by_role[&Role::Mtp].tensors;
        notes.push(format!("multi-token-prediction block present ({n} tensors): carry it unquantized"));
    }
    if let Some(config_layers) = &s.config_moe_layers {
        if !s.moe_layers.is_empty() && *config_layers != s.moe_layers {
            notes.push(format!(
                "config says MoE layers are {} but expert tensors are in layers {}",
                ranges(config_layers),
                ranges(&s.moe_layers)
            ));
        }
    }
    let partial: Vec<String> =
        s.experts_per_layer.iter().filter(|(_, &n)| n != s.num_experts).map(|(l, n)| format!("layer {l} has {n}")).collect();
    if !partial.is_empty() && s.num_experts > 0 {
        notes.push(format!("expected {} experts per MoE layer, but {}", s.num_experts, partial.join(", ")));
    }
    if s.by_dtype.contains_key(Dtype::U16.name()) {
        notes.push("U16 tensors present: if they hold bf16 payload (Paddle's converter), read U16 as bf16".to_string());
    }
    if !ckpt.unindexed().is_empty() {
        notes.push(format!(
            "{} tensors are in shard files but not in the index; loaders ignore them (first: {})",
            ckpt.unindexed().len(),
            ckpt.unindexed()[0]
        ));
    }
    notes
}

/// `[1, 2, 3, 5]` as `1-3, 5`.
pub fn ranges(values: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        out.push(if i == j { values[i].to_string() } else { format!("{}-{}", values[i], values[j]) });
        i = j + 1;
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out.join(", ")
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[]), "none");
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
    }
}
