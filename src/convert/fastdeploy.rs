//! What a FastDeploy-loadable ERNIE 4.5 checkpoint needs besides its tensors: `config.json`
//! with `"dtype"` (and no `torch_dtype`) and the `quantization_config` block, and the
//! tokenizer and generation files copied unchanged (see `fastdeploy-layout.md`).

use super::plan::Plan;
use crate::error::{Error, Result};
use crate::layout::Role;
use crate::SchemeKind;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// The `quantization_config` block for a plan, or an error when FastDeploy could not load the
/// mix of schemes it holds (its loader takes one dense scheme, and for MoE experts either one
/// scheme or wint4 up to a layer and WINT2 after it).
pub fn quantization_config(plan: &Plan) -> std::result::Result<Value, String> {
    let mut dense = BTreeSet::new();
    let (mut w4_layers, mut w2_layers, mut other_expert) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for t in &plan.tensors {
        match (t.class.role, t.choice) {
            (Role::Attention | Role::DenseMlp | Role::SharedExpert, c) => {
                dense.insert(c);
            }
            (r, Some(SchemeKind::Wint4)) if r.is_routed_expert() => {
                w4_layers.insert(t.class.layer.unwrap_or(0));
            }
            (r, Some(SchemeKind::Wint2)) if r.is_routed_expert() => {
                w2_layers.insert(t.class.layer.unwrap_or(0));
            }
            (r, c) if r.is_routed_expert() => {
                other_expert.insert(c);
            }
            _ => {}
        }
    }
    let dense_type = match dense.len() {
        0 => None,
        1 => *dense.iter().next().expect("one"),
        _ => {
            return Err(
                "FastDeploy loads one scheme for all attention, dense MLP and shared-expert tensors, but the policy mixes several".into()
            )
        }
    };
    let dense_name = dense_type.map_or("none", SchemeKind::name);
    let mut config = json!({"quantization": "wint2", "dense_quant_type": dense_name});
    if !w2_layers.is_empty() && !other_expert.is_empty() {
        return Err("FastDeploy loads WINT2 experts only beside wint4 ones (wint4 up to a layer, WINT2 after it); the policy gives some experts another scheme".into());
    }
    if let (Some(&last_w4), Some(&first_w2)) = (w4_layers.iter().next_back(), w2_layers.iter().next()) {
        if last_w4 >= first_w2 {
            return Err(
                "FastDeploy's w4w2 loader needs wint4 experts in layers up to some layer and WINT2 after it; the policy interleaves them"
                    .into(),
            );
        }
    }
    let moe_start = w4_layers.iter().chain(&w2_layers).min().copied().unwrap_or(0);
    let moe_end = w4_layers.iter().chain(&w2_layers).max().copied().unwrap_or(0);
    if !w2_layers.is_empty() {
        let last_w4 = w4_layers.iter().next_back().copied().map_or(moe_start as i64 - 1, |l| l as i64);
        config["moe_quant_type"] = json!("w4w2");
        config["moe_quant_config"] = json!({
            "moe_w4_quant_config": {"quant_type": "wint4", "quant_granularity": "per_channel",
                                    "quant_start_layer": moe_start, "quant_end_layer": last_w4},
            "moe_w2_quant_config": {"quant_type": "wint2", "quant_granularity": "pp_acc",
                                    "quant_group_size": 64, "quant_start_layer": last_w4 + 1,
                                    "quant_end_layer": moe_end}
        });
    } else {
        let expert = match (w4_layers.is_empty(), other_expert.len()) {
            (false, 0) => "wint4".to_string(),
            (true, 1) => other_expert.iter().next().expect("one").map_or("none", SchemeKind::name).to_string(),
            (true, 0) => dense_name.to_string(),
            _ => return Err("FastDeploy loads one scheme for all MoE experts unless they are wint4 then WINT2".into()),
        };
        config["quantization"] = json!(expert);
        config["moe_quant_type"] = json!(expert);
    }
    Ok(config)
}

/// Writes `config.json` into `work`: the source config with `"dtype": "bfloat16"`, without
/// `torch_dtype`, and with `quantization_config`.
pub fn write_config(source: Option<&Value>, quantization: Value, work: &Path) -> Result<()> {
    let mut config = source.cloned().unwrap_or_else(|| json!({}));
    if let Some(map) = config.as_object_mut() {
        map.remove("torch_dtype");
        map.insert("dtype".into(), json!("bfloat16"));
        map.insert("quantization_config".into(), quantization);
    }
    super::run::write_json(&work.join("config.json"), &config)
}

/// File endings of weights and weight indexes in other formats, never copied.
const WEIGHT_ENDINGS: [&str; 11] =
    [".safetensors", ".bin", ".pt", ".pth", ".pdparams", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".index.json"];

/// Copies every other regular file of the source directory (tokenizer, generation config,
/// README, ...) except `config.json` and weights or weight indexes in any format.
pub fn copy_side_files(source_dir: &Path, work: &Path) -> Result<()> {
    if !source_dir.is_dir() {
        return Ok(());
    }
    for item in std::fs::read_dir(source_dir).map_err(|e| Error::io(source_dir, e))? {
        let path = item.map_err(|e| Error::io(source_dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let skip = name == crate::checkpoint::CONFIG_FILE
            || WEIGHT_ENDINGS.iter().any(|end| name.ends_with(end))
            || name.starts_with('.')
            || !path.is_file();
        if !skip {
            std::fs::copy(&path, work.join(&name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}
