//! What the forward pass needs from `config.json`, checked, and what differs per family.
//!
//! One driver runs every family ([`super::forward`]); what differs is data read here:
//!
//! | family (`model_type`) | rope | q/k norm | router | shared expert | MoE block, expert leaves |
//! |---|---|---|---|---|---|
//! | ERNIE 4.5 (`ernie4_5_moe`, `ernie4_5`) | interleaved pairs | no | softmax, top-k by `p + e_score_correction_bias`, renormalised | `shared_experts`, `moe_intermediate_size * moe_num_shared_experts` wide, ungated | `mlp`, `gate_proj/up_proj/down_proj` |
//! | Qwen2-MoE (`qwen2_moe`) | rotate-half | no | softmax, top-k, renormalised when `norm_topk_prob` | `shared_expert`, `shared_expert_intermediate_size` wide, times `sigmoid(x · shared_expert_gate)` | `mlp`, `gate_proj/up_proj/down_proj` |
//! | Qwen3-MoE (`qwen3_moe`) | rotate-half | per-head RMSNorm on q and k | as Qwen2-MoE | none | as Qwen2-MoE |
//! | Mixtral (`mixtral`) | rotate-half | no | softmax, top-k, renormalised | none | `block_sparse_moe`, `w1/w3/w2` |
//! | dense Llama, Mistral, Qwen2, Qwen3 | rotate-half | Qwen3 only | - | - | - |
//!
//! Which layers are MoE follows [`MoeConfig::is_moe_layer`] (ERNIE's start/end/interval, Qwen's
//! `decoder_sparse_step` and `mlp_only_layers`, every layer for Mixtral); the other layers run a
//! dense SwiGLU MLP `intermediate_size` wide. Biases of any linear are used when the checkpoint
//! stores them (Qwen2's q/k/v biases, ERNIE's `use_bias`). Rope scaling and sliding-window
//! attention beyond the sequence length are not implemented and are refused.

use crate::error::{Error, Result};
use crate::layout::{ModelConfig, MoeConfig};
use crate::tokens::ModelLimits;
use serde_json::Value;
use std::path::Path;

/// The default of `moe_norm_min` in the reference (`Ernie4_5_MoeConfig`).
pub const DEFAULT_MOE_NORM_MIN: f64 = 1e-12;

/// A family the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// ERNIE 4.5, MoE (`ernie4_5_moe`) or dense (`ernie4_5`).
    Ernie45,
    /// Qwen2-MoE (`qwen2_moe`).
    Qwen2Moe,
    /// Qwen3-MoE (`qwen3_moe`).
    Qwen3Moe,
    /// Mixtral (`mixtral`).
    Mixtral,
    /// A dense Llama-style model: `llama`, `mistral`, `qwen2`.
    Llama,
    /// A dense Qwen3 (`qwen3`): Llama with per-head q/k norms.
    Qwen3,
}

/// The most decoder layers the forward pass takes.
pub const MAX_LAYERS: usize = 1 << 16;

/// The `model_type`s the forward pass runs, for error messages.
pub const SUPPORTED_MODEL_TYPES: &str = "ernie4_5_moe, ernie4_5, qwen2_moe, qwen3_moe, mixtral, llama, mistral, qwen2, qwen3";

impl Architecture {
    /// The family of `model_type`; a config without one is ERNIE 4.5 when it has ERNIE's MoE keys.
    pub fn of(json: &Value, file: &Path) -> Result<Architecture> {
        let model_type = json.get("model_type").and_then(Value::as_str);
        Ok(match model_type {
            Some(t) if t.starts_with("ernie4_5") && !t.contains("vl") => Architecture::Ernie45,
            Some("qwen2_moe") => Architecture::Qwen2Moe,
            Some("qwen3_moe") => Architecture::Qwen3Moe,
            Some("mixtral") => Architecture::Mixtral,
            Some("llama" | "mistral" | "qwen2") => Architecture::Llama,
            Some("qwen3") => Architecture::Qwen3,
            None if json.get("moe_num_experts").is_some() => Architecture::Ernie45,
            other => {
                let what = other.map_or("a config without \"model_type\"".to_string(), |t| format!("model_type \"{t}\""));
                return Err(Error::BadInput {
                    problem: format!("{}: the forward pass does not support {what}; supported: {SUPPORTED_MODEL_TYPES}", file.display()),
                });
            }
        })
    }

    /// How the rotary embedding pairs the channels of a head.
    pub fn rope(self) -> Rope {
        match self {
            Architecture::Ernie45 => Rope::Interleaved,
            _ => Rope::Half,
        }
    }

    /// Whether q and k get a per-head RMSNorm before the rotary embedding.
    pub fn qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3Moe | Architecture::Qwen3)
    }
}

/// Which channels of a head the rotary embedding rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rope {
    /// Pairs `(2i, 2i+1)` (GPT-J style; ERNIE).
    Interleaved,
    /// Pairs `(i, i + d/2)` (`rotate_half`; Llama, Qwen, Mixtral).
    Half,
}

/// Everything the forward pass needs from `config.json`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    /// The family.
    pub architecture: Architecture,
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads` (`heads` when absent).
    pub kv_heads: usize,
    /// `head_dim` (`hidden / heads` when absent).
    pub head_dim: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// The dense MLP width (`intermediate_size`; 0 when every layer is MoE).
    pub intermediate: usize,
    /// The routed experts' width (`moe_intermediate_size`; Mixtral's `intermediate_size`).
    pub moe_intermediate: usize,
    /// Routed (text) experts per MoE layer (0 for a dense model).
    pub experts: usize,
    /// Experts chosen per token (`moe_k`, `num_experts_per_tok`).
    pub top_k: usize,
    /// The shared expert MLP's width (0 when there is none).
    pub shared_intermediate: usize,
    /// Whether the shared expert's output is scaled by `sigmoid(x · shared_expert_gate)`.
    pub shared_gate: bool,
    /// Whether the top-k routing weights are divided by their sum.
    pub renormalize: bool,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f32,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `max_position_embeddings` (no limit when absent).
    pub max_positions: Option<usize>,
    /// The attention window, when sliding-window attention is on: longer sequences are refused.
    pub sliding_window: Option<usize>,
    /// `moe_norm_min`: the floor of the renormalising sum.
    pub moe_norm_min: f32,
    /// `tie_word_embeddings`.
    pub tie_word_embeddings: bool,
    /// Which layers are MoE (`None`: none).
    pub moe: Option<MoeConfig>,
}

/// Reads typed keys of one config file, with errors naming it.
struct Keys<'a> {
    json: &'a Value,
    file: &'a Path,
}

impl Keys<'_> {
    fn bad(&self, problem: String) -> Error {
        Error::BadInput { problem: format!("{}: {problem}", self.file.display()) }
    }

    fn missing(&self, key: &str) -> Error {
        self.bad(format!("config lacks \"{key}\", which the forward pass needs"))
    }

    fn float(&self, key: &str) -> Option<f64> {
        self.json.get(key).and_then(Value::as_f64)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.json.get(key).and_then(Value::as_bool)
    }

    fn count(&self, key: &str) -> Option<usize> {
        self.json.get(key).and_then(Value::as_u64).and_then(|v| usize::try_from(v).ok())
    }

    fn positive(&self, key: &str, value: Option<usize>) -> Result<usize> {
        match value {
            None => Err(self.missing(key)),
            Some(0) => Err(self.bad(format!("\"{key}\" must be positive"))),
            Some(v) => Ok(v),
        }
    }

    /// Refuses rope scaling (only the plain rotary embedding is implemented).
    fn plain_rope(&self) -> Result<()> {
        match self.json.get("rope_scaling") {
            None | Some(Value::Null) => Ok(()),
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("?");
                match kind {
                    "default" => Ok(()),
                    _ => Err(self.bad(format!("rope_scaling of type \"{kind}\" is not supported by the forward pass"))),
                }
            }
        }
    }

    /// The attention window when sliding-window attention is on.
    fn sliding_window(&self, architecture: Architecture) -> Option<usize> {
        let on = match architecture {
            Architecture::Qwen2Moe | Architecture::Qwen3Moe | Architecture::Qwen3 => self.flag("use_sliding_window") == Some(true),
            Architecture::Ernie45 => false,
            _ => true,
        };
        self.count("sliding_window").filter(|_| on)
    }
}

impl ForwardConfig {
    /// Reads and checks the config; a missing key is an [`Error::BadInput`] naming it.
    pub fn from_json(json: &Value, file: &Path) -> Result<ForwardConfig> {
        let keys = Keys { json, file };
        let architecture = Architecture::of(json, file)?;
        let cfg = ModelConfig::from_json(json, file)?;
        keys.plain_rope()?;
        let moe = cfg.moe.clone();
        if architecture == Architecture::Ernie45 {
            if let Some(m) = &moe {
                if !matches!(m.rule, crate::layout::MoeLayerRule::Ernie { .. }) {
                    return Err(keys.missing("moe_layer_start_index"));
                }
            }
        }
        let moe_type =
            json.get("model_type").and_then(Value::as_str).is_some_and(|t| t.ends_with("moe")) || architecture == Architecture::Mixtral;
        if moe.is_none() && moe_type {
            return Err(keys.missing(match architecture {
                Architecture::Mixtral => "num_local_experts",
                Architecture::Ernie45 => "moe_num_experts",
                _ => "num_experts",
            }));
        }
        let hidden = keys.positive("hidden_size", cfg.hidden_size)?;
        let heads = keys.positive("num_attention_heads", cfg.num_attention_heads)?;
        let kv_heads = cfg.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(keys.bad(format!("num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})")));
        }
        let head_dim = cfg.head_dim.unwrap_or(hidden / heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(keys.bad(format!("head_dim {head_dim} must be even and positive")));
        }
        // Every projection must be addressable: heads x head_dim x hidden cannot overflow.
        let elements = |h: usize| h.checked_mul(head_dim).and_then(|w| w.checked_mul(hidden));
        if elements(heads).and(elements(kv_heads)).is_none() {
            return Err(keys.bad(format!("head_dim {head_dim} is too large")));
        }
        let layers = keys.positive("num_hidden_layers", cfg.num_hidden_layers)?;
        // Every per-layer loop (checks, config comparison) runs before a tensor is read: a
        // corrupt count must not make them run for ever. Real models have at most a few hundred.
        if layers > MAX_LAYERS {
            return Err(Error::BadInput {
                problem: format!("{}: num_hidden_layers is {layers}; ccq runs models of at most {MAX_LAYERS} layers", file.display()),
            });
        }
        let (experts, top_k) = match &moe {
            None => (0, 0),
            Some(m) => {
                let experts = m.num_experts[0];
                let key = if architecture == Architecture::Ernie45 { "moe_k" } else { "num_experts_per_tok" };
                let top_k = m.top_k.ok_or_else(|| keys.missing(key))?;
                if top_k == 0 || top_k > experts {
                    return Err(keys.bad(format!("{key} {top_k} must be in 1..={experts}")));
                }
                (experts, top_k)
            }
        };
        let any_dense = (0..layers).any(|i| !moe.as_ref().is_some_and(|m| m.is_moe_layer(i, layers)));
        let (moe_intermediate, intermediate) = match architecture {
            Architecture::Mixtral => (keys.positive("intermediate_size", cfg.intermediate_size)?, 0),
            _ if moe.is_some() => {
                let moe_width = keys.positive("moe_intermediate_size", moe.as_ref().and_then(|m| m.intermediate_size.first().copied()))?;
                let dense = if any_dense { keys.positive("intermediate_size", cfg.intermediate_size)? } else { 0 };
                (moe_width, dense)
            }
            _ => (0, keys.positive("intermediate_size", cfg.intermediate_size)?),
        };
        let (shared_intermediate, shared_gate) = match architecture {
            Architecture::Ernie45 => (moe_intermediate * moe.as_ref().map_or(0, |m| m.num_shared_experts), false),
            Architecture::Qwen2Moe => (keys.count("shared_expert_intermediate_size").unwrap_or(0), true),
            _ => (0, false),
        };
        let renormalize = match architecture {
            Architecture::Qwen2Moe | Architecture::Qwen3Moe => keys.flag("norm_topk_prob").unwrap_or(false),
            _ => true,
        };
        Ok(ForwardConfig {
            architecture,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab: keys.positive("vocab_size", cfg.vocab_size)?,
            intermediate,
            moe_intermediate,
            experts,
            top_k,
            shared_intermediate,
            shared_gate,
            renormalize,
            rms_norm_eps: keys.float("rms_norm_eps").ok_or_else(|| keys.missing("rms_norm_eps"))? as f32,
            rope_theta: keys.float("rope_theta").ok_or_else(|| keys.missing("rope_theta"))?,
            max_positions: keys.count("max_position_embeddings"),
            sliding_window: keys.sliding_window(architecture),
            moe_norm_min: keys.float("moe_norm_min").unwrap_or(DEFAULT_MOE_NORM_MIN) as f32,
            tie_word_embeddings: cfg.tie_word_embeddings,
            moe,
        })
    }

    /// Whether layer `i` is an MoE layer.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.is_moe_layer(i, self.layers))
    }

    /// The token limits of the model ([`ModelLimits`]).
    pub fn limits(&self) -> ModelLimits {
        ModelLimits { vocab: self.vocab, max_positions: self.max_positions, sliding_window: self.sliding_window }
    }

    /// The longest sequence the forward pass takes ([`ModelLimits::max_sequence`]).
    pub fn max_sequence(&self) -> Option<usize> {
        self.limits().max_sequence()
    }

    /// Checks token sequences before any work ([`ModelLimits::check`]).
    pub fn check_tokens(&self, sequences: &[Vec<u32>]) -> Result<()> {
        self.limits().check(sequences)
    }

    /// The differences that make two models' forward passes incomparable, as `key: a vs b`
    /// (empty when they have the same architecture and shapes).
    pub fn differences(&self, other: &ForwardConfig) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |key: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{key}: {a} vs {b}"));
            }
        };
        cmp("family", format!("{:?}", self.architecture), format!("{:?}", other.architecture));
        cmp("vocab_size", self.vocab.to_string(), other.vocab.to_string());
        cmp("hidden_size", self.hidden.to_string(), other.hidden.to_string());
        cmp("num_hidden_layers", self.layers.to_string(), other.layers.to_string());
        cmp("num_attention_heads", self.heads.to_string(), other.heads.to_string());
        cmp("num_key_value_heads", self.kv_heads.to_string(), other.kv_heads.to_string());
        cmp("head_dim", self.head_dim.to_string(), other.head_dim.to_string());
        cmp("dense MLP width", self.intermediate.to_string(), other.intermediate.to_string());
        cmp("expert width", self.moe_intermediate.to_string(), other.moe_intermediate.to_string());
        cmp("routed experts", self.experts.to_string(), other.experts.to_string());
        cmp("experts per token", self.top_k.to_string(), other.top_k.to_string());
        cmp("shared expert width", self.shared_intermediate.to_string(), other.shared_intermediate.to_string());
        cmp("routing renormalised", self.renormalize.to_string(), other.renormalize.to_string());
        cmp("rms_norm_eps", self.rms_norm_eps.to_string(), other.rms_norm_eps.to_string());
        cmp("rope_theta", self.rope_theta.to_string(), other.rope_theta.to_string());
        cmp("tie_word_embeddings", self.tie_word_embeddings.to_string(), other.tie_word_embeddings.to_string());
        let moe_layers = |c: &ForwardConfig| format!("{:?}", (0..c.layers).filter(|&i| c.is_moe_layer(i)).collect::<Vec<_>>());
        cmp("MoE layers", moe_layers(self), moe_layers(other));
        out
    }
}

impl From<&ForwardConfig> for ModelLimits {
    fn from(cfg: &ForwardConfig) -> ModelLimits {
        cfg.limits()
    }
}
