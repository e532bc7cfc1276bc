//! Where each family keeps a decoder's tensors: the names the forward pass reads and
//! calibration statistics are keyed by.
//!
//! ```text
//! {p}embed_tokens.weight  {p}norm.weight  lm_head.weight        p = "model." (PyTorch) | "ernie." (Paddle)
//! {p}layers.{i}.input_layernorm.weight  .post_attention_layernorm.weight
//! {p}layers.{i}.self_attn.{q,k,v,o}_proj | .qkv_proj (Paddle)   .q_norm / .k_norm (Qwen3)
//! {p}layers.{i}.mlp.{gate,up,down}_proj | .up_gate_proj (Paddle)          dense MLP
//! {p}layers.{i}.{moe}.gate.weight                                         router
//! {p}layers.{i}.{moe}.experts.{e}.{gate,up,down}                          routed expert
//! {p}layers.{i}.{moe}.{shared}.{gate,up,down}  .shared_expert_gate.weight shared expert (+ gate)
//! {p}layers.{i}.mlp.moe_statics.e_score_correction_bias                   ERNIE's router bias
//!
//! moe = mlp | block_sparse_moe (Mixtral)      gate, up, down = gate_proj, up_proj, down_proj | w1, w3, w2 (Mixtral)
//! shared = shared_experts (ERNIE) | shared_expert (Qwen2-MoE)
//! ```
//!
//! Modules are named without their parameter (`.weight`, `.bias`): a quantized checkpoint's
//! packed tensors are found by the module name.

use super::config::Architecture;
use super::{Block, LinearInput};

/// A SwiGLU MLP's projection names inside its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpLeaves {
    /// The SiLU branch.
    pub gate: &'static str,
    /// The linear branch.
    pub up: &'static str,
    /// The output projection.
    pub down: &'static str,
    /// The fused `[gate | up]` projection of the Paddle naming.
    pub fused: &'static str,
}

const PROJ_LEAVES: MlpLeaves = MlpLeaves { gate: "gate_proj", up: "up_proj", down: "down_proj", fused: UP_GATE_FUSED };
const MIXTRAL_LEAVES: MlpLeaves = MlpLeaves { gate: "w1", up: "w3", down: "w2", fused: UP_GATE_FUSED };

/// The attention projections inside `self_attn`, separate and fused.
pub const QKV_LEAVES: [&str; 3] = ["q_proj", "k_proj", "v_proj"];
pub use crate::layout::QKV_FUSED;
use crate::layout::{PADDLE_PREFIX, PYTORCH_PREFIX, UP_GATE_FUSED};

/// One checkpoint's tensor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorNames {
    prefix: &'static str,
    moe_block: &'static str,
    shared: &'static str,
    expert_leaves: MlpLeaves,
}

impl TensorNames {
    /// The names of `architecture` in PyTorch (`paddle` false) or Paddle naming.
    pub fn new(architecture: Architecture, paddle: bool) -> TensorNames {
        let mixtral = architecture == Architecture::Mixtral;
        TensorNames {
            prefix: if paddle { PADDLE_PREFIX } else { PYTORCH_PREFIX },
            moe_block: if mixtral { "block_sparse_moe" } else { "mlp" },
            shared: if architecture == Architecture::Ernie45 { "shared_experts" } else { "shared_expert" },
            expert_leaves: if mixtral { MIXTRAL_LEAVES } else { PROJ_LEAVES },
        }
    }

    /// `model.` or `ernie.`.
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// The token embedding.
    pub fn embed(&self) -> String {
        format!("{}embed_tokens.weight", self.prefix)
    }

    /// The final norm.
    pub fn final_norm(&self) -> String {
        format!("{}norm.weight", self.prefix)
    }

    /// Decoder layer `i`'s module path.
    pub fn layer(&self, i: usize) -> String {
        format!("{}layers.{i}", self.prefix)
    }

    /// Layer `i`'s attention module.
    pub fn attention(&self, i: usize) -> String {
        format!("{}.self_attn", self.layer(i))
    }

    /// Layer `i`'s MoE block (`mlp` or `block_sparse_moe`).
    pub fn moe_block(&self, i: usize) -> String {
        format!("{}.{}", self.layer(i), self.moe_block)
    }

    /// Layer `i`'s router weight.
    pub fn router(&self, i: usize) -> String {
        format!("{}.gate.weight", self.moe_block(i))
    }

    /// Layer `i`'s router score-correction bias (ERNIE).
    pub fn router_bias(&self, i: usize) -> String {
        format!("{}.mlp.moe_statics.e_score_correction_bias", self.layer(i))
    }

    /// Layer `i`'s shared-expert gate weight (Qwen2-MoE), `[1, hidden]`.
    pub fn shared_gate(&self, i: usize) -> String {
        format!("{}.shared_expert_gate.weight", self.moe_block(i))
    }

    /// The module of a block of layer `i`: an MLP's or the attention's.
    pub fn module(&self, i: usize, block: Block) -> String {
        match block {
            Block::Attention => self.attention(i),
            Block::DenseMlp => format!("{}.mlp", self.layer(i)),
            Block::SharedExperts => format!("{}.{}", self.moe_block(i), self.shared),
            Block::Expert(e) => format!("{}.experts.{e}", self.moe_block(i)),
            Block::LmHead => "lm_head".to_string(),
        }
    }

    /// The projection names of an MLP block's module.
    pub fn mlp_leaves(&self, block: Block) -> MlpLeaves {
        match block {
            Block::Expert(_) => self.expert_leaves,
            _ => PROJ_LEAVES,
        }
    }

    /// The projections (leaf names, separate and fused) that read `input` of `block`.
    pub fn readers(&self, block: Block, input: LinearInput) -> Vec<&'static str> {
        let leaves = self.mlp_leaves(block);
        match input {
            LinearInput::Qkv => [QKV_FUSED].into_iter().chain(QKV_LEAVES).collect(),
            LinearInput::O => vec!["o_proj"],
            LinearInput::GateUp => vec![leaves.fused, leaves.gate, leaves.up],
            LinearInput::Down => vec![leaves.down],
            LinearInput::LmHead => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_name_their_experts() {
        let mixtral = TensorNames::new(Architecture::Mixtral, false);
        assert_eq!(mixtral.module(3, Block::Expert(7)), "model.layers.3.block_sparse_moe.experts.7");
        assert_eq!(mixtral.router(3), "model.layers.3.block_sparse_moe.gate.weight");
        assert_eq!(mixtral.readers(Block::Expert(0), LinearInput::Down), vec!["w2"]);
        assert_eq!(mixtral.readers(Block::DenseMlp, LinearInput::Down), vec!["down_proj"]);
        let qwen = TensorNames::new(Architecture::Qwen2Moe, false);
        assert_eq!(qwen.module(1, Block::SharedExperts), "model.layers.1.mlp.shared_expert");
        assert_eq!(qwen.shared_gate(1), "model.layers.1.mlp.shared_expert_gate.weight");
        let ernie = TensorNames::new(Architecture::Ernie45, true);
        assert_eq!(ernie.module(2, Block::SharedExperts), "ernie.layers.2.mlp.shared_experts");
        assert_eq!(ernie.embed(), "ernie.embed_tokens.weight");
    }
}
