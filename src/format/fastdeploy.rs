//! The FastDeploy layout of an ERNIE 4.5 checkpoint, both directions (see
//! `docs/fastdeploy-layout.md`): what ccq writes and what it reads back.
//!
//! - **Names.** PyTorch names are renamed (`model.` -> `ernie.`); q, k and v fuse into
//!   `self_attn.qkv_proj` (columns `[q | k | v]`), gate and up into `up_gate_proj`
//!   (`[gate | up]`). A packed tensor drops `.weight`: `NAME.weight` is stored as
//!   `NAME.quant_weight`, `NAME.weight_scale`, ... Paddle names are kept as they are.
//! - **Orientation.** Every matrix is stored `[in, out]`; PyTorch linear weights are
//!   transposed.
//! - **Unquantized dtypes.** The router and its bias are f32, everything else bf16.
//! - **`config.json`.** The source config with `"dtype": "bfloat16"`, no `torch_dtype`, and a
//!   `quantization_config` naming one dense scheme and the experts' scheme (one scheme, or
//!   wint4 up to a layer and WINT2 after it: `w4w2`), which the reader checks each packed
//!   tensor against.
//! - **Reading a packed tensor.** Its scheme follows from its components: any of
//!   `super_scales`, `code_scale`, `code_zp` make it WINT2 (`quant_weight` `[K/4, N]`);
//!   otherwise an I8 `quant_weight` of `[N, K]` is wint8 and `[N/2, K]` wint4, `N` being the
//!   length of `weight_scale`.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::layout::{is_linear, Naming, Part, Role, TensorRole, PADDLE_PREFIX, PYTORCH_PREFIX, QKV_FUSED, UP_GATE_FUSED};
use crate::{Dtype, SchemeError, SchemeKind, TensorEntry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// The suffix a packed tensor drops: `NAME.weight` is stored as `NAME.quant_weight`, ...
const WEIGHT_SUFFIX: &str = ".weight";

/// PyTorch projection modules and the fused Paddle module they go into: `(parent, leaf, fused
/// leaf)`, `{parent}{leaf}.` becoming `{parent}{fused}.`.
const FUSIONS: [(&str, &str, &str); 5] = [
    ("self_attn.", "q_proj", QKV_FUSED),
    ("self_attn.", "k_proj", QKV_FUSED),
    ("self_attn.", "v_proj", QKV_FUSED),
    ("", "gate_proj", UP_GATE_FUSED),
    ("", "up_proj", UP_GATE_FUSED),
];

/// Components only WINT2 stores: their presence makes a packed tensor WINT2.
const WINT2_ONLY: [&str; 3] = ["super_scales", "code_scale", "code_zp"];

/// The schemes FastDeploy's loader reads.
pub const SCHEMES: [SchemeKind; 3] = [SchemeKind::Wint2, SchemeKind::Wint4, SchemeKind::Wint8];

/// The output name of a source tensor and whether it must be transposed.
pub(super) fn output_name(name: &str, class: &TensorRole, rank: usize, naming: Naming) -> (String, bool) {
    if naming == Naming::Paddle {
        return (name.to_string(), false);
    }
    let mut out = match name.strip_prefix(PYTORCH_PREFIX) {
        Some(rest) => format!("{PADDLE_PREFIX}{rest}"),
        None => name.to_string(),
    };
    for (parent, leaf, fused) in FUSIONS {
        let from = format!("{parent}{leaf}.");
        if let Some(pos) = out.rfind(&from) {
            out.replace_range(pos..pos + from.len(), &format!("{parent}{fused}."));
            break;
        }
    }
    (out, is_linear(name, class, rank))
}

/// `NAME` of `NAME.weight`: the prefix of a packed tensor's components.
pub(super) fn packed_prefix(output_name: &str) -> &str {
    output_name.strip_suffix(WEIGHT_SUFFIX).unwrap_or(output_name)
}

/// `NAME.weight` of a packed prefix `NAME`.
pub(super) fn weight_name(prefix: &str) -> String {
    format!("{prefix}{WEIGHT_SUFFIX}")
}

/// The part a fused output tensor carries (`Qkv`, `UpGate`), else the source's.
pub fn fused_part(part: Option<Part>, output_name: &str) -> Option<Part> {
    if output_name.contains(QKV_FUSED) {
        Some(Part::Qkv)
    } else if output_name.contains(UP_GATE_FUSED) {
        Some(Part::UpGate)
    } else {
        part
    }
}

/// Column order inside a fused tensor: `[q | k | v]`, `[gate | up]`.
pub fn fuse_order(part: Part) -> u8 {
    match part {
        Part::Q | Part::Gate => 0,
        Part::K | Part::Up => 1,
        Part::V => 2,
        _ => 3,
    }
}

/// The stored dtype of an unquantized tensor: f32 for the router and its bias, bf16 otherwise.
pub fn unquantized_dtype(role: Role) -> Dtype {
    match role {
        Role::Router | Role::RouterBias => Dtype::F32,
        _ => Dtype::BF16,
    }
}

/// A mix of schemes FastDeploy's loader cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnloadableMix {
    /// Attention, dense MLP and shared experts do not share one scheme.
    #[error("FastDeploy loads one scheme for all attention, dense MLP and shared-expert tensors, but the policy mixes several")]
    MixedDense,
    /// Some experts are WINT2 and others neither wint4 nor WINT2.
    #[error("FastDeploy loads WINT2 experts only beside wint4 ones (wint4 up to a layer, WINT2 after it); the policy gives some experts another scheme")]
    Wint2BesideOther,
    /// wint4 and WINT2 expert layers interleave.
    #[error("FastDeploy's w4w2 loader needs wint4 experts in layers up to some layer and WINT2 after it; the policy interleaves them")]
    Interleaved,
    /// The experts mix schemes in another way.
    #[error("FastDeploy loads one scheme for all MoE experts unless they are wint4 then WINT2")]
    MixedExperts,
}

/// `config.json`'s `quantization_config`, as ccq writes it and reads it back. Only
/// `quantization` is required; unknown keys are allowed (Baidu's own checkpoints carry more),
/// and of `moe_quant_config` a reader uses only `moe_w4_quant_config.quant_end_layer` of a
/// `w4w2` mix, as FastDeploy's loader does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    /// `"wint2"` for a w4w2 mix, else the experts' scheme.
    pub quantization: String,
    /// The scheme of attention, dense MLP and shared experts (`"none"`: unquantized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_quant_type: Option<String>,
    /// The experts' scheme, or `"w4w2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_quant_type: Option<String>,
    /// The layer ranges of a `w4w2` mix (a [`MoeQuantConfig`] when ccq writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_quant_config: Option<Value>,
}

/// The two halves of a `w4w2` expert mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeQuantConfig {
    /// The wint4 layers.
    pub moe_w4_quant_config: LayerRange,
    /// The WINT2 layers.
    pub moe_w2_quant_config: LayerRange,
}

/// The layers one scheme of a `w4w2` mix covers. The loader reads only the wint4 half's
/// `quant_end_layer`; ccq writes every field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRange {
    /// `"wint4"` or `"wint2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_type: Option<String>,
    /// `"per_channel"` (wint4) or `"pp_acc"` (WINT2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_granularity: Option<String>,
    /// Rows per local scale (WINT2: 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_group_size: Option<u32>,
    /// First layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_start_layer: Option<i64>,
    /// Last layer (inclusive; below the first when the range is empty).
    pub quant_end_layer: i64,
}

impl QuantizationConfig {
    /// The block for output tensors of the given roles and schemes, or why FastDeploy could
    /// not load that mix.
    pub fn for_tensors<'a>(tensors: impl IntoIterator<Item = (&'a TensorRole, Option<SchemeKind>)>) -> Result<Self, UnloadableMix> {
        let mut dense = BTreeSet::new();
        let (mut w4_layers, mut w2_layers, mut other_expert) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (class, choice) in tensors {
            match (class.role, choice) {
                (Role::Attention | Role::DenseMlp | Role::SharedExpert, c) => {
                    dense.insert(c);
                }
                (r, Some(SchemeKind::Wint4)) if r.is_routed_expert() => {
                    w4_layers.insert(class.layer.unwrap_or(0) as i64);
                }
                (r, Some(SchemeKind::Wint2)) if r.is_routed_expert() => {
                    w2_layers.insert(class.layer.unwrap_or(0) as i64);
                }
                (r, c) if r.is_routed_expert() => {
                    other_expert.insert(c);
                }
                _ => {}
            }
        }
        let dense_name = match dense.len() {
            0 => "none",
            1 => dense.first().copied().flatten().map_or("none", SchemeKind::name),
            _ => return Err(UnloadableMix::MixedDense),
        };
        if !w2_layers.is_empty() && !other_expert.is_empty() {
            return Err(UnloadableMix::Wint2BesideOther);
        }
        if let (Some(&last_w4), Some(&first_w2)) = (w4_layers.last(), w2_layers.first()) {
            if last_w4 >= first_w2 {
                return Err(UnloadableMix::Interleaved);
            }
        }
        if !w2_layers.is_empty() {
            let moe_start = w4_layers.iter().chain(&w2_layers).min().copied().unwrap_or(0);
            let moe_end = w4_layers.iter().chain(&w2_layers).max().copied().unwrap_or(0);
            let last_w4 = w4_layers.last().copied().unwrap_or(moe_start - 1);
            let range = |quant_type: &str, granularity: &str, group: Option<u32>, start, end| LayerRange {
                quant_type: Some(quant_type.into()),
                quant_granularity: Some(granularity.into()),
                quant_group_size: group,
                quant_start_layer: Some(start),
                quant_end_layer: end,
            };
            return Ok(QuantizationConfig {
                quantization: "wint2".into(),
                dense_quant_type: Some(dense_name.into()),
                moe_quant_type: Some("w4w2".into()),
                moe_quant_config: serde_json::to_value(MoeQuantConfig {
                    moe_w4_quant_config: range("wint4", "per_channel", None, moe_start, last_w4),
                    moe_w2_quant_config: range("wint2", "pp_acc", Some(64), last_w4 + 1, moe_end),
                })
                .ok(),
            });
        }
        let expert = match (w4_layers.is_empty(), other_expert.len()) {
            (false, 0) => "wint4",
            (true, 1) => other_expert.first().copied().flatten().map_or("none", SchemeKind::name),
            (true, 0) => dense_name,
            _ => return Err(UnloadableMix::MixedExperts),
        };
        Ok(QuantizationConfig {
            quantization: expert.into(),
            dense_quant_type: Some(dense_name.into()),
            moe_quant_type: Some(expert.into()),
            moe_quant_config: None,
        })
    }

    /// Reads the block of a checkpoint's `config.json`, if it has one.
    pub fn of(ckpt: &Checkpoint) -> Result<Option<QuantizationConfig>> {
        let Some(value) = ckpt.config().and_then(|c| c.get("quantization_config")).filter(|v| !v.is_null()) else { return Ok(None) };
        let file = ckpt.path().join(crate::checkpoint::CONFIG_FILE);
        crate::json::from_value(value.clone())
            .map(Some)
            .map_err(|e| Error::Json { file, problem: format!("quantization_config is not one FastDeploy reads: {e}") })
    }

    /// The scheme FastDeploy's loader reads a tensor of this role with, when the block says so
    /// explicitly.
    pub fn scheme_of(&self, class: &TensorRole) -> Option<SchemeKind> {
        let named = |v: &Option<String>| v.as_deref().and_then(SchemeKind::from_name);
        match class.role {
            Role::Attention | Role::DenseMlp | Role::SharedExpert => named(&self.dense_quant_type),
            r if r.is_routed_expert() => match self.moe_quant_type.as_deref() {
                Some("w4w2") => {
                    let end = self.moe_quant_config.as_ref()?.pointer("/moe_w4_quant_config/quant_end_layer")?.as_i64()?;
                    Some(if class.layer? as i64 <= end { SchemeKind::Wint4 } else { SchemeKind::Wint2 })
                }
                Some(other) => SchemeKind::from_name(other),
                None => SchemeKind::from_name(&self.quantization),
            },
            _ => None,
        }
    }
}

/// The scheme and logical `[k, n]` of the packed tensor whose `quant_weight` is `entry`
/// (components named `{prefix}.*`), inferred from its components (see the module
/// documentation).
pub fn packed_scheme(ckpt: &Checkpoint, names: &HashSet<&str>, prefix: &str, entry: &TensorEntry) -> Result<(SchemeKind, usize, usize)> {
    let bad = |problem: String| Error::BadTensor { file: Some(ckpt.file_of(&entry.name)), tensor: prefix.to_string(), problem };
    let [rows, cols] = entry.shape[..] else {
        return Err(bad(format!("quant_weight has shape {:?}, expected a matrix", entry.shape)));
    };
    if WINT2_ONLY.iter().any(|c| names.contains(super::component_name(prefix, c).as_str())) {
        let k = rows.checked_mul(4).ok_or_else(|| bad(format!("quant_weight has shape {:?}", entry.shape)))?;
        return Ok((SchemeKind::Wint2, k, cols));
    }
    let scale = ckpt.get(&super::component_name(prefix, "weight_scale")).map_err(|_| Error::Packed {
        file: ckpt.file_of(&entry.name),
        tensor: prefix.to_string(),
        source: SchemeError::MissingComponent { name: "weight_scale" },
    })?;
    let n = match scale.shape.as_slice() {
        [n] => *n,
        s => return Err(bad(format!("weight_scale has shape {s:?}, expected one value per output column [N]"))),
    };
    let kind = if rows == n {
        SchemeKind::Wint8
    } else if rows.checked_mul(2) == Some(n) {
        SchemeKind::Wint4
    } else {
        return Err(bad(format!(
            "quant_weight has {rows} rows but weight_scale has {n} values: neither wint8 ([N, K]) nor wint4 ([N/2, K])"
        )));
    };
    Ok((kind, cols, n))
}

/// Writes `config.json` into `work`: the source config with `"dtype": "bfloat16"`, without
/// `torch_dtype`, and with `quantization_config`.
pub fn write_config(source: Option<&Value>, quantization: &QuantizationConfig, work: &Path) -> Result<()> {
    let mut config = source.cloned().unwrap_or_else(|| json!({}));
    if let Some(map) = config.as_object_mut() {
        map.remove("torch_dtype");
        map.insert("dtype".into(), json!("bfloat16"));
        let block =
            serde_json::to_value(quantization).map_err(|e| Error::Json { file: work.join("config.json"), problem: e.to_string() })?;
        map.insert("quantization_config".into(), block);
    }
    crate::checkpoint::output::write_json(&work.join(crate::checkpoint::CONFIG_FILE), &config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_names_become_paddle_names() {
        let class = TensorRole { role: Role::Attention, layer: Some(0), expert: None, part: Some(Part::K) };
        let rename = |n: &str| output_name(n, &class, 2, Naming::Pytorch).0;
        assert_eq!(rename("model.layers.0.self_attn.k_proj.weight"), "ernie.layers.0.self_attn.qkv_proj.weight");
        assert_eq!(rename("model.layers.3.mlp.experts.7.gate_proj.weight"), "ernie.layers.3.mlp.experts.7.up_gate_proj.weight");
        assert_eq!(rename("model.layers.3.mlp.shared_experts.up_proj.weight"), "ernie.layers.3.mlp.shared_experts.up_gate_proj.weight");
        assert_eq!(rename("model.layers.3.mlp.gate.weight"), "ernie.layers.3.mlp.gate.weight");
        assert_eq!(rename("model.mtp_block.0.self_attn.q_proj.weight"), "ernie.mtp_block.0.self_attn.qkv_proj.weight");
        assert_eq!(rename("lm_head.weight"), "lm_head.weight");
        let paddle = output_name("ernie.layers.0.mlp.up_gate_proj.weight", &class, 2, Naming::Paddle);
        assert_eq!(paddle, ("ernie.layers.0.mlp.up_gate_proj.weight".to_string(), false));
        assert_eq!(packed_prefix("ernie.layers.0.mlp.up_gate_proj.weight"), "ernie.layers.0.mlp.up_gate_proj");
        assert_eq!(weight_name("ernie.layers.0.mlp.up_gate_proj"), "ernie.layers.0.mlp.up_gate_proj.weight");
    }

    #[test]
    fn w4w2_mix_round_trips_through_the_config_block() {
        let expert = |layer| TensorRole { role: Role::ExpertUpGate, layer: Some(layer), expert: Some(0), part: Some(Part::UpGate) };
        let attn = TensorRole { role: Role::Attention, layer: Some(0), expert: None, part: Some(Part::Qkv) };
        let roles = [(attn, Some(SchemeKind::Wint8)), (expert(1), Some(SchemeKind::Wint4)), (expert(2), Some(SchemeKind::Wint2))];
        let q = QuantizationConfig::for_tensors(roles.iter().map(|(c, s)| (c, *s))).unwrap();
        let back: QuantizationConfig = serde_json::from_value(serde_json::to_value(&q).unwrap()).unwrap();
        assert_eq!(back, q);
        for (class, scheme) in &roles {
            assert_eq!(back.scheme_of(class), *scheme);
        }
        // Baidu-style blocks with only what the loader needs, or keys ccq does not know.
        let minimal: QuantizationConfig = serde_json::from_str(
            r#"{"quantization": "wint2", "moe_quant_type": "w4w2",
            "moe_quant_config": {"moe_w4_quant_config": {"quant_end_layer": 1}, "moe_w2_quant_config": {"quant_group_size": -1}},
            "kv_cache_quant_type": "none"}"#,
        )
        .unwrap();
        assert_eq!(minimal.scheme_of(&expert(1)), Some(SchemeKind::Wint4));
        assert_eq!(minimal.scheme_of(&expert(2)), Some(SchemeKind::Wint2));
        let other: QuantizationConfig = serde_json::from_str(r#"{"quantization": "wint4", "moe_quant_config": 7}"#).unwrap();
        assert_eq!(other.scheme_of(&expert(2)), Some(SchemeKind::Wint4));
        let interleaved = [(expert(1), Some(SchemeKind::Wint2)), (expert(2), Some(SchemeKind::Wint4))];
        assert_eq!(QuantizationConfig::for_tensors(interleaved.iter().map(|(c, s)| (c, *s))), Err(UnloadableMix::Interleaved));
    }
}
