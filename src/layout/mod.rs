//! Model layouts: what every tensor of a checkpoint is.
//!
//! From `config.json` ([`ModelConfig`]) and tensor names, [`ModelLayout::classify`] gives each
//! tensor a [`Role`], its layer, its expert index and, for projections, which one it is
//! ([`Part`]). ERNIE 4.5 is understood in both namings: PyTorch (`model.` prefix, [out, in]
//! weights, separate q/k/v and gate/up) and Paddle (`ernie.` prefix, [in, out] weights, fused
//! `qkv_proj` and `up_gate_proj`). The expert tensors of Mixtral
//! (`block_sparse_moe.experts.E.w1/w2/w3`), Qwen2/Qwen3-MoE and DeepSeek-V2/V3
//! (`mlp.experts.E.*`, `mlp.shared_expert(s).*`) are recognised by their names. A name ccq does
//! not recognise is [`Role::Other`], never an error.

pub mod config;

pub use config::{ModelConfig, MoeConfig, MoeLayerRule};

use serde::Serialize;
use std::fmt;

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A routed expert's gate projection (the SiLU branch).
    ExpertGate,
    /// A routed expert's up projection.
    ExpertUp,
    /// A routed expert's fused [gate | up] projection (Paddle naming).
    ExpertUpGate,
    /// A routed expert's down projection.
    ExpertDown,
    /// Any projection of a shared (always active) expert.
    SharedExpert,
    /// A projection of a dense (non-MoE) MLP.
    DenseMlp,
    /// An attention projection (q, k, v, o or fused qkv, or DeepSeek's low-rank parts).
    Attention,
    /// The router (expert gate) weight.
    Router,
    /// The router's score-correction bias.
    RouterBias,
    /// The token embedding.
    Embedding,
    /// The output projection to the vocabulary.
    LmHead,
    /// A normalisation weight.
    Norm,
    /// Part of a multi-token-prediction block.
    Mtp,
    /// Anything else.
    Other,
}

impl Role {
    /// Every role, in report order.
    pub const ALL: [Role; 14] = [
        Role::ExpertGate,
        Role::ExpertUp,
        Role::ExpertUpGate,
        Role::ExpertDown,
        Role::SharedExpert,
        Role::DenseMlp,
        Role::Attention,
        Role::Router,
        Role::RouterBias,
        Role::Embedding,
        Role::LmHead,
        Role::Norm,
        Role::Mtp,
        Role::Other,
    ];

    /// The snake_case name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Role::ExpertGate => "expert_gate",
            Role::ExpertUp => "expert_up",
            Role::ExpertUpGate => "expert_up_gate",
            Role::ExpertDown => "expert_down",
            Role::SharedExpert => "shared_expert",
            Role::DenseMlp => "dense_mlp",
            Role::Attention => "attention",
            Role::Router => "router",
            Role::RouterBias => "router_bias",
            Role::Embedding => "embedding",
            Role::LmHead => "lm_head",
            Role::Norm => "norm",
            Role::Mtp => "mtp",
            Role::Other => "other",
        }
    }

    /// Whether this is a routed expert's projection.
    pub fn is_routed_expert(self) -> bool {
        matches!(self, Role::ExpertGate | Role::ExpertUp | Role::ExpertUpGate | Role::ExpertDown)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which projection of an attention block or MLP a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Output projection.
    O,
    /// Fused [q | k | v] projection.
    Qkv,
    /// Gate projection (SiLU branch).
    Gate,
    /// Up projection.
    Up,
    /// Fused [gate | up] projection.
    UpGate,
    /// Down projection.
    Down,
}

/// How a checkpoint names and orients its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// Hugging Face / PyTorch: `model.` prefix, linear weights stored [out, in].
    Pytorch,
    /// Paddle (ERNIE): `ernie.` prefix, linear weights stored [in, out].
    Paddle,
}

/// The model family, which decides naming details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// ERNIE 4.5 (text MoE, dense, or vision-language MoE).
    Ernie45,
    /// Mixtral.
    Mixtral,
    /// Qwen2-MoE / Qwen3-MoE.
    QwenMoe,
    /// DeepSeek-V2 / V3.
    #[serde(rename = "deepseek")]
    DeepSeek,
    /// Anything else (Llama-style names are still classified).
    Unknown,
}

/// The name prefix of the PyTorch (Hugging Face) naming.
pub const PYTORCH_PREFIX: &str = "model.";
/// The name prefix of the Paddle (ERNIE) naming; a checkpoint with any tensor under it is
/// Paddle-named.
pub const PADDLE_PREFIX: &str = "ernie.";
/// The Paddle naming's fused `[q | k | v]` attention projection.
pub const QKV_FUSED: &str = "qkv_proj";
/// The Paddle naming's fused `[gate | up]` MLP projection.
pub const UP_GATE_FUSED: &str = "up_gate_proj";

/// Whether a tensor is a linear layer's weight matrix: the only tensors ccq transposes
/// between PyTorch's `[out, in]` and the logical `[in, out]`.
pub fn is_linear(name: &str, class: &TensorRole, rank: usize) -> bool {
    rank == 2 && name.ends_with(".weight") && !matches!(class.role, Role::Embedding | Role::Norm | Role::RouterBias)
}

impl Naming {
    /// The snake_case name used in output.
    pub fn name(self) -> &'static str {
        match self {
            Naming::Pytorch => "pytorch",
            Naming::Paddle => "paddle",
        }
    }
}

impl Family {
    /// The snake_case name used in output.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ernie45 => "ernie45",
            Family::Mixtral => "mixtral",
            Family::QwenMoe => "qwen_moe",
            Family::DeepSeek => "deepseek",
            Family::Unknown => "unknown",
        }
    }
}

/// What one tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TensorRole {
    /// Its role.
    pub role: Role,
    /// The decoder layer it belongs to, if any.
    pub layer: Option<usize>,
    /// The routed expert it belongs to, if any.
    pub expert: Option<usize>,
    /// Which projection it is, when known.
    pub part: Option<Part>,
}

impl TensorRole {
    fn new(role: Role) -> TensorRole {
        TensorRole { role, layer: None, expert: None, part: None }
    }
}

/// A checkpoint's layout: its config, family and naming, able to classify any tensor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLayout {
    /// The config (default when the checkpoint has none).
    pub config: ModelConfig,
    /// The family.
    pub family: Family,
    /// The naming convention.
    pub naming: Naming,
}

impl ModelLayout {
    /// The layout of an opened checkpoint: its `config.json` (default when it has none) and
    /// its tensor names.
    pub fn of(ckpt: &crate::Checkpoint) -> crate::Result<ModelLayout> {
        let config = match ckpt.config() {
            Some(json) => ModelConfig::from_json(json, &ckpt.path().join(crate::checkpoint::CONFIG_FILE))?,
            None => ModelConfig::default(),
        };
        Ok(ModelLayout::detect(config, ckpt.tensors().iter().map(|t| t.name.as_str())))
    }

    /// Detects family and naming from the config and the tensor names.
    pub fn detect<'a>(config: ModelConfig, names: impl IntoIterator<Item = &'a str>) -> ModelLayout {
        let mut paddle = false;
        let mut name_family = Family::Unknown;
        for name in names {
            paddle |= name.starts_with(PADDLE_PREFIX);
            if name.contains(".block_sparse_moe.") {
                name_family = Family::Mixtral;
            } else if name.contains(".mlp.shared_expert.") && name_family == Family::Unknown {
                name_family = Family::QwenMoe;
            }
        }
        let family = match config.model_type.as_deref().unwrap_or("") {
            t if t.starts_with("ernie4_5") => Family::Ernie45,
            t if t.starts_with("mixtral") => Family::Mixtral,
            t if t.starts_with("qwen2_moe") || t.starts_with("qwen3_moe") => Family::QwenMoe,
            t if t.starts_with("deepseek") => Family::DeepSeek,
            _ if paddle => Family::Ernie45,
            _ => name_family,
        };
        let naming = if paddle { Naming::Paddle } else { Naming::Pytorch };
        ModelLayout { config, family, naming }
    }

    /// Classifies one tensor by its name.
    pub fn classify(&self, name: &str) -> TensorRole {
        let body = name.strip_prefix(PYTORCH_PREFIX).or_else(|| name.strip_prefix(PADDLE_PREFIX)).unwrap_or(name);
        if body.starts_with("mtp_") || body.starts_with("mtp.") {
            let module = strip_param(body);
            let part = module.rsplit('.').next().and_then(projection_part);
            return TensorRole { part, ..TensorRole::new(Role::Mtp) };
        }
        if let Some(rest) = body.strip_prefix("layers.") {
            return self.classify_layer(rest);
        }
        match strip_param(body) {
            "embed_tokens" | "word_embeddings" | "tok_embeddings" => TensorRole::new(Role::Embedding),
            "lm_head" => TensorRole::new(Role::LmHead),
            m if is_norm(m) => TensorRole::new(Role::Norm),
            _ => TensorRole::new(Role::Other),
        }
    }

    /// Classifies `rest` = `N.<module path>.<param>` inside a decoder layer.
    fn classify_layer(&self, rest: &str) -> TensorRole {
        let Some((index, module)) = rest.split_once('.') else {
            return TensorRole::new(Role::Other);
        };
        let Ok(layer) = index.parse::<usize>() else {
            return TensorRole::new(Role::Other);
        };
        let mut class = if module.ends_with("e_score_correction_bias") {
            TensorRole::new(Role::RouterBias)
        } else {
            classify_module(strip_param(module))
        };
        class.layer = Some(layer);
        if self.is_mtp_layer(layer) {
            class.role = Role::Mtp;
        }
        class
    }

    /// DeepSeek-V3 stores its multi-token-prediction block as extra layers past the last one.
    fn is_mtp_layer(&self, layer: usize) -> bool {
        let cfg = &self.config;
        cfg.num_mtp_layers > 0 && cfg.num_hidden_layers.is_some_and(|n| layer >= n)
    }
}

/// Drops the trailing parameter name (`weight`, `bias`, or a packed component such as
/// `quant_weight`), leaving the module path.
fn strip_param(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(module, _)| module)
}

fn is_norm(module: &str) -> bool {
    let last = module.rsplit('.').next().unwrap_or(module);
    last.ends_with("norm") || last.ends_with("layernorm") || last == "ln"
}

/// Classifies a module path inside a decoder layer, e.g. `mlp.experts.3.gate_proj`.
fn classify_module(module: &str) -> TensorRole {
    let parts: Vec<&str> = module.split('.').collect();
    let projection = parts.last().copied().and_then(projection_part);
    let with_part = |role| TensorRole { part: projection, ..TensorRole::new(role) };
    match parts.as_slice() {
        [block, "experts", e, ..] if is_moe_block(block) => {
            let mut class = match projection {
                Some(Part::Gate) => with_part(Role::ExpertGate),
                Some(Part::Up) => with_part(Role::ExpertUp),
                Some(Part::UpGate) => with_part(Role::ExpertUpGate),
                Some(Part::Down) => with_part(Role::ExpertDown),
                _ => TensorRole::new(Role::Other),
            };
            class.expert = e.parse().ok();
            class
        }
        [block, "shared_experts" | "shared_expert", ..] if is_moe_block(block) => with_part(Role::SharedExpert),
        [block, "shared_expert_gate"] if is_moe_block(block) => TensorRole::new(Role::Router),
        [block, "gate"] if is_moe_block(block) => TensorRole::new(Role::Router),
        ["mlp", _] if projection.is_some() => with_part(Role::DenseMlp),
        ["self_attn" | "attention", ..] if !is_norm(module) => with_part(Role::Attention),
        _ if is_norm(module) => TensorRole::new(Role::Norm),
        _ => TensorRole::new(Role::Other),
    }
}

fn is_moe_block(block: &str) -> bool {
    block == "mlp" || block == "block_sparse_moe"
}

/// The projection a module name denotes, in any of the supported namings.
fn projection_part(module: &str) -> Option<Part> {
    Some(match module {
        "q_proj" => Part::Q,
        "k_proj" => Part::K,
        "v_proj" => Part::V,
        "o_proj" => Part::O,
        QKV_FUSED => Part::Qkv,
        "gate_proj" | "w1" => Part::Gate,
        "up_proj" | "w3" => Part::Up,
        UP_GATE_FUSED => Part::UpGate,
        "down_proj" | "w2" => Part::Down,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
