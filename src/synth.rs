//! Deterministic synthetic ERNIE 4.5 MoE checkpoints, for tests and benchmarks.
//!
//! [`SynthModel`] holds the shape of a model (a few presets, from a 1 MB toy to the 300B
//! model's shape); [`write_checkpoint`] writes it as a Hugging Face directory in PyTorch or
//! Paddle naming, sharded or not, with `config.json`. Values are drawn from per-tensor seeded
//! normal streams, so the same spec always gives byte-identical files. With `sparse`, only
//! headers are written and the data is left as holes: a 300B-shaped checkpoint then costs
//! almost no disk and can be used to measure header-only work such as `ccq inspect`.

use crate::checkpoint::output::write_json;
use crate::checkpoint::write::{SafetensorsWriter, TensorSpec};
use crate::checkpoint::INDEX_FILE;
use crate::error::{Error, Result};
use crate::layout::Naming;
use crate::rng::Rng;
use crate::Dtype;
use half::bf16;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The shape of a synthetic ERNIE 4.5 MoE model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthModel {
    /// Hidden size H.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Dense MLP width.
    pub intermediate_size: usize,
    /// Expert width.
    pub moe_intermediate_size: usize,
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Shared experts per MoE layer.
    pub num_shared_experts: usize,
    /// Experts per token.
    pub moe_k: usize,
    /// First MoE layer.
    pub moe_layer_start_index: usize,
    /// Whether lm_head is tied to the embedding.
    pub tie_word_embeddings: bool,
    /// Whether to add one multi-token-prediction block.
    pub mtp: bool,
}

impl SynthModel {
    /// Preset names accepted by [`SynthModel::preset`].
    pub const PRESETS: [&'static str; 4] = ["tiny", "small", "21b-a3b", "300b-a47b"];

    /// A named preset: `tiny` (about 1 MB), `small` (about 60 MB), `21b-a3b` and `300b-a47b`
    /// (the shapes of ERNIE-4.5-21B-A3B and ERNIE-4.5-300B-A47B).
    pub fn preset(name: &str) -> Option<SynthModel> {
        let tiny = SynthModel {
            hidden_size: 128,
            num_layers: 3,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 64,
            vocab_size: 256,
            intermediate_size: 256,
            moe_intermediate_size: 128,
            num_experts: 4,
            num_shared_experts: 1,
            moe_k: 2,
            moe_layer_start_index: 1,
            tie_word_embeddings: true,
            mtp: false,
        };
        Some(match name {
            "tiny" => tiny,
            "small" => SynthModel {
                hidden_size: 512,
                num_layers: 4,
                num_heads: 8,
                num_kv_heads: 2,
                vocab_size: 4096,
                intermediate_size: 1536,
                moe_intermediate_size: 512,
                num_experts: 16,
                moe_k: 4,
                ..tiny
            },
            "21b-a3b" => SynthModel {
                hidden_size: 2560,
                num_layers: 28,
                num_heads: 20,
                num_kv_heads: 4,
                head_dim: 128,
                vocab_size: 103424,
                intermediate_size: 12288,
                moe_intermediate_size: 1536,
                num_experts: 64,
                num_shared_experts: 2,
                moe_k: 6,
                moe_layer_start_index: 1,
                tie_word_embeddings: true,
                mtp: false,
            },
            "300b-a47b" => SynthModel {
                hidden_size: 8192,
                num_layers: 54,
                num_heads: 64,
                num_kv_heads: 8,
                head_dim: 128,
                vocab_size: 103424,
                intermediate_size: 28672,
                moe_intermediate_size: 3584,
                num_experts: 64,
                num_shared_experts: 0,
                moe_k: 8,
                moe_layer_start_index: 3,
                tie_word_embeddings: false,
                mtp: true,
            },
            _ => return None,
        })
    }

    /// The `config.json` of this model in the given naming.
    pub fn config_json(&self, naming: Naming) -> serde_json::Value {
        let mut config = json!({
            "architectures": ["Ernie4_5_MoeForCausalLM"],
            "model_type": "ernie4_5_moe",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "moe_num_experts": self.num_experts,
            "moe_k": self.moe_k,
            "moe_num_shared_experts": self.num_shared_experts,
            "moe_layer_start_index": self.moe_layer_start_index,
            "moe_layer_end_index": self.num_layers.saturating_sub(1),
            "moe_layer_interval": 1,
            "moe_use_aux_free": true,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_bias": false,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "num_nextn_predict_layers": usize::from(self.mtp),
        });
        let dtype_key = match naming {
            Naming::Pytorch => "torch_dtype",
            Naming::Paddle => "dtype",
        };
        config[dtype_key] = json!("bfloat16");
        config
    }
}

/// How one synthetic tensor is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    /// Normal(0, std^2).
    Normal(f32),
    /// Every element equal.
    Constant(f32),
}

/// A tensor to generate.
struct SynthTensor {
    spec: TensorSpec,
    fill: Fill,
}

/// Options for [`write_checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Naming and orientation.
    pub naming: Naming,
    /// Number of shard files (1 writes `model.safetensors` without an index).
    pub shards: usize,
    /// Seed of every value stream.
    pub seed: u64,
    /// Write headers only and leave the data as holes.
    pub sparse: bool,
    /// Paddle only: store bf16 weights as U16 (as Paddle's converter does).
    pub bf16_as_u16: bool,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { naming: Naming::Pytorch, shards: 1, seed: 0, sparse: false, bf16_as_u16: false }
    }
}

/// What [`write_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    /// Shard files written.
    pub files: Vec<PathBuf>,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data (including holes when sparse).
    pub data_bytes: u64,
}

/// Writes the model as a checkpoint directory `dir` (created if missing).
pub fn write_checkpoint(model: &SynthModel, options: &SynthOptions, dir: &Path) -> Result<SynthSummary> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_old_weights(dir)?;
    write_json(&dir.join(crate::checkpoint::CONFIG_FILE), &model.config_json(options.naming))?;
    let tensors = tensor_list(model, options);
    let groups = split_into_shards(&tensors, options.shards.max(1));
    let count = groups.len();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    for (i, group) in groups.iter().enumerate() {
        let name = crate::checkpoint::shard_file_name(i, count);
        for t in *group {
            weight_map.insert(t.spec.name.clone(), json!(name));
        }
        files.push(write_shard(&dir.join(&name), group, options)?);
    }
    let data_bytes = tensors.iter().map(|t| t.spec.nbytes()).sum();
    if count > 1 {
        let index = json!({"metadata": {"total_size": data_bytes}, "weight_map": weight_map});
        write_json(&dir.join(INDEX_FILE), &index)?;
    }
    Ok(SynthSummary { files, tensors: tensors.len(), data_bytes })
}

/// Removes the weights and index a previous checkpoint left in `dir`, so that the new one is
/// not mixed with stale shards.
fn remove_old_weights(dir: &Path) -> Result<()> {
    for item in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = item.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".safetensors") || name == INDEX_FILE {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Splits the tensor list into `n` contiguous groups of roughly equal bytes.
fn split_into_shards(tensors: &[SynthTensor], n: usize) -> Vec<&[SynthTensor]> {
    let total: u64 = tensors.iter().map(|t| t.spec.nbytes()).sum();
    let mut groups = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        acc += t.spec.nbytes();
        let boundary = total * (groups.len() as u64 + 1) / n as u64;
        if acc >= boundary && groups.len() + 1 < n && i + 1 < tensors.len() {
            groups.push(&tensors[start..=i]);
            start = i + 1;
        }
    }
    groups.push(&tensors[start..]);
    groups
}

fn write_shard(path: &Path, tensors: &[SynthTensor], options: &SynthOptions) -> Result<PathBuf> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|t| t.spec.clone()).collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut writer = SafetensorsWriter::create(path, &specs, &metadata)?;
    if options.sparse {
        return writer.finish_sparse();
    }
    for t in tensors {
        write_values(&mut writer, t, options.seed)?;
    }
    writer.finish()
}

/// Streams one tensor's values, 1 Mi elements at a time, each chunk from its own seeded stream.
fn write_values(writer: &mut SafetensorsWriter, t: &SynthTensor, seed: u64) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let numel: usize = t.spec.shape.iter().product();
    let mut bytes = Vec::with_capacity(CHUNK.min(numel) * t.spec.dtype.size());
    for (c, start) in (0..numel).step_by(CHUNK).enumerate() {
        let mut rng = Rng::for_stream(seed, &t.spec.name, c as u64);
        bytes.clear();
        for _ in start..(start + CHUNK).min(numel) {
            let v = match t.fill {
                Fill::Normal(std) => (rng.normal() as f32) * std,
                Fill::Constant(v) => v,
            };
            match t.spec.dtype {
                Dtype::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
                _ => bytes.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
        writer.write(&bytes)?;
    }
    Ok(())
}

/// Every tensor of the model, in checkpoint order.
fn tensor_list(m: &SynthModel, o: &SynthOptions) -> Vec<SynthTensor> {
    let paddle = o.naming == Naming::Paddle;
    let prefix = if paddle { "ernie." } else { "model." };
    let weight_dtype = if paddle && o.bf16_as_u16 { Dtype::U16 } else { Dtype::BF16 };
    let std = 0.02;
    let mut out = Vec::new();
    let mut push = |name: String, dtype: Dtype, shape: Vec<usize>, fill: Fill| {
        out.push(SynthTensor { spec: TensorSpec::new(name, dtype, shape), fill });
    };
    // A linear layer with logical shape [in, out], stored in the naming's orientation.
    let linear = |k: usize, n: usize| if paddle { vec![k, n] } else { vec![n, k] };
    let h = m.hidden_size;
    push(format!("{prefix}embed_tokens.weight"), weight_dtype, vec![m.vocab_size, h], Fill::Normal(std));
    for layer in 0..m.num_layers {
        let p = format!("{prefix}layers.{layer}.");
        push_block(&mut push, &p, m, weight_dtype, paddle, layer >= m.moe_layer_start_index);
    }
    push(format!("{prefix}norm.weight"), weight_dtype, vec![h], Fill::Constant(1.0));
    if m.mtp {
        push(format!("{prefix}mtp_emb_norm.0.weight"), weight_dtype, vec![h], Fill::Constant(1.0));
        push(format!("{prefix}mtp_hidden_norm.0.weight"), weight_dtype, vec![h], Fill::Constant(1.0));
        push(format!("{prefix}mtp_linear_proj.0.weight"), weight_dtype, linear(2 * h, h), Fill::Normal(std));
        push_block(&mut push, &format!("{prefix}mtp_block.0."), m, weight_dtype, paddle, false);
    }
    if !m.tie_word_embeddings {
        push("lm_head.weight".to_string(), weight_dtype, linear(h, m.vocab_size), Fill::Normal(std));
    }
    out
}

/// One decoder block (attention + dense MLP or MoE) under the name prefix `p`.
fn push_block(push: &mut impl FnMut(String, Dtype, Vec<usize>, Fill), p: &str, m: &SynthModel, dt: Dtype, paddle: bool, moe: bool) {
    let (h, std) = (m.hidden_size, 0.02);
    let linear = |k: usize, n: usize| if paddle { vec![k, n] } else { vec![n, k] };
    let (q, kv) = (m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim);
    push(format!("{p}input_layernorm.weight"), dt, vec![h], Fill::Constant(1.0));
    if paddle {
        push(format!("{p}self_attn.qkv_proj.weight"), dt, linear(h, q + 2 * kv), Fill::Normal(std));
    } else {
        push(format!("{p}self_attn.q_proj.weight"), dt, linear(h, q), Fill::Normal(std));
        push(format!("{p}self_attn.k_proj.weight"), dt, linear(h, kv), Fill::Normal(std));
        push(format!("{p}self_attn.v_proj.weight"), dt, linear(h, kv), Fill::Normal(std));
    }
    push(format!("{p}self_attn.o_proj.weight"), dt, linear(q, h), Fill::Normal(std));
    push(format!("{p}post_attention_layernorm.weight"), dt, vec![h], Fill::Constant(1.0));
    let mut mlp = |prefix: String, width: usize| {
        if paddle {
            push(format!("{prefix}up_gate_proj.weight"), dt, linear(h, 2 * width), Fill::Normal(std));
        } else {
            push(format!("{prefix}gate_proj.weight"), dt, linear(h, width), Fill::Normal(std));
            push(format!("{prefix}up_proj.weight"), dt, linear(h, width), Fill::Normal(std));
        }
        push(format!("{prefix}down_proj.weight"), dt, linear(width, h), Fill::Normal(std));
    };
    if !moe {
        mlp(format!("{p}mlp."), m.intermediate_size);
        return;
    }
    for e in 0..m.num_experts {
        mlp(format!("{p}mlp.experts.{e}."), m.moe_intermediate_size);
    }
    if m.num_shared_experts > 0 {
        mlp(format!("{p}mlp.shared_experts."), m.moe_intermediate_size * m.num_shared_experts);
    }
    push(format!("{p}mlp.gate.weight"), Dtype::F32, linear(h, m.num_experts), Fill::Normal(std));
    push(format!("{p}mlp.moe_statics.e_score_correction_bias"), Dtype::F32, vec![1, m.num_experts], Fill::Constant(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_exist() {
        for name in SynthModel::PRESETS {
            assert!(SynthModel::preset(name).is_some(), "{name}");
        }
        assert!(SynthModel::preset("huge").is_none());
    }

    #[test]
    fn shard_split_is_contiguous_and_complete() {
        let m = SynthModel::preset("tiny").unwrap();
        let tensors = tensor_list(&m, &SynthOptions::default());
        for n in [1, 2, 3, 7] {
            let groups = split_into_shards(&tensors, n);
            assert_eq!(groups.len(), n);
            assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), tensors.len());
            assert!(groups.iter().all(|g| !g.is_empty()));
        }
    }
}
