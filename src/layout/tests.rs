//! Classification tests over the namings of every supported family.

use super::*;
use serde_json::json;
use std::path::Path;

fn layout(config: serde_json::Value, names: &[&str]) -> ModelLayout {
    let cfg = ModelConfig::from_json(&config, Path::new("config.json")).unwrap();
    ModelLayout::detect(cfg, names.iter().copied())
}

fn check(layout: &ModelLayout, name: &str, role: Role, layer: Option<usize>, expert: Option<usize>, part: Option<Part>) {
    let got = layout.classify(name);
    assert_eq!(got, TensorRole { role, layer, expert, part }, "{name}");
}

#[test]
fn ernie_pytorch_names() {
    let l = layout(json!({"model_type": "ernie4_5_moe", "moe_num_experts": 64}), &["model.embed_tokens.weight"]);
    assert_eq!((l.family, l.naming), (Family::Ernie45, Naming::Pytorch));
    check(&l, "model.embed_tokens.weight", Role::Embedding, None, None, None);
    check(&l, "model.norm.weight", Role::Norm, None, None, None);
    check(&l, "lm_head.weight", Role::LmHead, None, None, None);
    check(&l, "model.layers.0.input_layernorm.weight", Role::Norm, Some(0), None, None);
    check(&l, "model.layers.0.post_attention_layernorm.weight", Role::Norm, Some(0), None, None);
    check(&l, "model.layers.0.self_attn.q_proj.weight", Role::Attention, Some(0), None, Some(Part::Q));
    check(&l, "model.layers.0.self_attn.o_proj.weight", Role::Attention, Some(0), None, Some(Part::O));
    check(&l, "model.layers.0.mlp.gate_proj.weight", Role::DenseMlp, Some(0), None, Some(Part::Gate));
    check(&l, "model.layers.0.mlp.down_proj.weight", Role::DenseMlp, Some(0), None, Some(Part::Down));
    check(&l, "model.layers.5.mlp.experts.12.gate_proj.weight", Role::ExpertGate, Some(5), Some(12), Some(Part::Gate));
    check(&l, "model.layers.5.mlp.experts.12.up_proj.weight", Role::ExpertUp, Some(5), Some(12), Some(Part::Up));
    check(&l, "model.layers.5.mlp.experts.12.down_proj.weight", Role::ExpertDown, Some(5), Some(12), Some(Part::Down));
    check(&l, "model.layers.5.mlp.shared_experts.up_proj.weight", Role::SharedExpert, Some(5), None, Some(Part::Up));
    check(&l, "model.layers.5.mlp.gate.weight", Role::Router, Some(5), None, None);
    check(&l, "model.layers.5.mlp.moe_statics.e_score_correction_bias", Role::RouterBias, Some(5), None, None);
    check(&l, "model.mtp_block.0.self_attn.q_proj.weight", Role::Mtp, None, None, Some(Part::Q));
    check(&l, "model.mtp_block.0.mlp.up_proj.weight", Role::Mtp, None, None, Some(Part::Up));
    check(&l, "model.mtp_emb_norm.0.weight", Role::Mtp, None, None, None);
    check(&l, "model.mtp_linear_proj.0.weight", Role::Mtp, None, None, None);
}

#[test]
fn ernie_paddle_names() {
    let l = layout(json!({"model_type": "ernie4_5_moe"}), &["ernie.embed_tokens.weight"]);
    assert_eq!((l.family, l.naming), (Family::Ernie45, Naming::Paddle));
    check(&l, "ernie.embed_tokens.weight", Role::Embedding, None, None, None);
    check(&l, "ernie.layers.3.self_attn.qkv_proj.weight", Role::Attention, Some(3), None, Some(Part::Qkv));
    check(&l, "ernie.layers.0.mlp.up_gate_proj.weight", Role::DenseMlp, Some(0), None, Some(Part::UpGate));
    check(&l, "ernie.layers.3.mlp.experts.63.up_gate_proj.weight", Role::ExpertUpGate, Some(3), Some(63), Some(Part::UpGate));
    check(&l, "ernie.layers.3.mlp.experts.63.down_proj.quant_weight", Role::ExpertDown, Some(3), Some(63), Some(Part::Down));
    check(&l, "ernie.layers.3.mlp.shared_experts.up_gate_proj.weight", Role::SharedExpert, Some(3), None, Some(Part::UpGate));
    check(&l, "ernie.mtp_block.0.mlp.up_gate_proj.weight", Role::Mtp, None, None, Some(Part::UpGate));
    check(&l, "ernie.mtp_hidden_norm.0.weight", Role::Mtp, None, None, None);
}

#[test]
fn ernie_vl_image_experts_and_second_router() {
    let l = layout(json!({"model_type": "ernie4_5_moe_vl", "moe_num_experts": [64, 64]}), &[]);
    check(&l, "ernie.layers.1.mlp.experts.100.down_proj.weight", Role::ExpertDown, Some(1), Some(100), Some(Part::Down));
    check(&l, "ernie.layers.1.mlp.gate.weight_1", Role::Router, Some(1), None, None);
    check(&l, "vision_model.blocks.0.attn.qkv.weight", Role::Other, None, None, None);
}

#[test]
fn mixtral_names() {
    let l = layout(json!({}), &["model.layers.0.block_sparse_moe.gate.weight"]);
    assert_eq!(l.family, Family::Mixtral);
    check(&l, "model.layers.2.block_sparse_moe.experts.7.w1.weight", Role::ExpertGate, Some(2), Some(7), Some(Part::Gate));
    check(&l, "model.layers.2.block_sparse_moe.experts.7.w2.weight", Role::ExpertDown, Some(2), Some(7), Some(Part::Down));
    check(&l, "model.layers.2.block_sparse_moe.experts.7.w3.weight", Role::ExpertUp, Some(2), Some(7), Some(Part::Up));
    check(&l, "model.layers.2.block_sparse_moe.gate.weight", Role::Router, Some(2), None, None);
}

#[test]
fn qwen_and_deepseek_names() {
    let q = layout(json!({"model_type": "qwen2_moe"}), &[]);
    assert_eq!(q.family, Family::QwenMoe);
    check(&q, "model.layers.1.mlp.shared_expert.gate_proj.weight", Role::SharedExpert, Some(1), None, Some(Part::Gate));
    check(&q, "model.layers.1.mlp.shared_expert_gate.weight", Role::Router, Some(1), None, None);
    check(&q, "model.layers.1.self_attn.q_norm.weight", Role::Norm, Some(1), None, None);
    check(&q, "model.layers.1.self_attn.k_proj.bias", Role::Attention, Some(1), None, Some(Part::K));
    let d = layout(json!({"model_type": "deepseek_v3", "num_hidden_layers": 61, "num_nextn_predict_layers": 1}), &[]);
    check(&d, "model.layers.3.mlp.gate.e_score_correction_bias", Role::RouterBias, Some(3), None, None);
    check(&d, "model.layers.3.self_attn.kv_a_proj_with_mqa.weight", Role::Attention, Some(3), None, None);
    check(&d, "model.layers.3.self_attn.kv_a_layernorm.weight", Role::Norm, Some(3), None, None);
    check(&d, "model.layers.3.mlp.experts.255.down_proj.weight", Role::ExpertDown, Some(3), Some(255), Some(Part::Down));
    check(&d, "model.layers.61.mlp.experts.0.down_proj.weight", Role::Mtp, Some(61), Some(0), Some(Part::Down));
}

#[test]
fn unrecognised_names_are_other() {
    let l = layout(json!({}), &[]);
    for name in ["", ".", "weird", "model.layers.x.mlp.gate.weight", "model.layers.", "model.layers.1", "a.b.c.d"] {
        assert_eq!(l.classify(name).role, Role::Other, "{name}");
    }
    check(&l, "model.layers.1.mlp.experts.x.foo.weight", Role::Other, Some(1), None, None);
}
