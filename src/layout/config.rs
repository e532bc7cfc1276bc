//! The parts of a Hugging Face `config.json` that say how a model is laid out.
//!
//! ERNIE 4.5 keys are read in full (`moe_num_experts` and `moe_intermediate_size` may be lists
//! in the vision-language model, one entry per modality: text experts first, then image
//! experts); Mixtral, Qwen-MoE and DeepSeek keys as far as they decide which layers are MoE.
//! Unknown keys are ignored; a known key of the wrong type is an error naming it.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// What ccq reads from `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// `model_type`, e.g. `ernie4_5_moe`.
    pub model_type: Option<String>,
    /// `num_hidden_layers`.
    pub num_hidden_layers: Option<usize>,
    /// `hidden_size`.
    pub hidden_size: Option<usize>,
    /// `intermediate_size` (dense MLP width).
    pub intermediate_size: Option<usize>,
    /// `num_attention_heads`.
    pub num_attention_heads: Option<usize>,
    /// `num_key_value_heads`.
    pub num_key_value_heads: Option<usize>,
    /// `head_dim` (else hidden_size / num_attention_heads).
    pub head_dim: Option<usize>,
    /// `vocab_size`.
    pub vocab_size: Option<usize>,
    /// `tie_word_embeddings` (false when absent).
    pub tie_word_embeddings: bool,
    /// Multi-token-prediction layers (`num_nextn_predict_layers`, DeepSeek-V3).
    pub num_mtp_layers: usize,
    /// The MoE keys, when the config has any.
    pub moe: Option<MoeConfig>,
}

/// Which layers are Mixture-of-Experts layers, and their shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoeConfig {
    /// Routed experts per modality (one entry for text-only models).
    pub num_experts: Vec<usize>,
    /// Expert width per modality (empty when the config does not say).
    pub intermediate_size: Vec<usize>,
    /// Experts chosen per token (`moe_k`, `num_experts_per_tok`).
    pub top_k: Option<usize>,
    /// Shared experts per MoE layer.
    pub num_shared_experts: usize,
    /// Which layers are MoE.
    pub rule: MoeLayerRule,
}

/// The family-specific rule deciding which layer indices are MoE layers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MoeLayerRule {
    /// ERNIE 4.5: `start <= i <= end` and `(i + 1) % interval == 0`.
    Ernie {
        /// `moe_layer_start_index` (smallest entry when a list).
        start: usize,
        /// `moe_layer_end_index` (largest entry when a list); `None` = last layer.
        end: Option<usize>,
        /// `moe_layer_interval`.
        interval: usize,
    },
    /// Qwen-MoE: `i` not in `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`.
    Qwen {
        /// `decoder_sparse_step`.
        step: usize,
        /// `mlp_only_layers`.
        mlp_only_layers: Vec<usize>,
    },
    /// DeepSeek: `i >= first_k_dense_replace` and `i % moe_layer_freq == 0`.
    DeepSeek {
        /// `first_k_dense_replace`.
        first_dense: usize,
        /// `moe_layer_freq`.
        freq: usize,
    },
    /// Every layer (Mixtral).
    #[default]
    All,
}

impl MoeConfig {
    /// Routed experts per MoE layer, all modalities together.
    pub fn total_experts(&self) -> usize {
        self.num_experts.iter().sum()
    }

    /// Whether layer `i` of `num_layers` is an MoE layer.
    pub fn is_moe_layer(&self, i: usize, num_layers: usize) -> bool {
        if self.total_experts() == 0 || i >= num_layers {
            return false;
        }
        match &self.rule {
            MoeLayerRule::Ernie { start, end, interval } => {
                i >= *start && i <= end.unwrap_or(num_layers - 1) && (i + 1).is_multiple_of(*interval)
            }
            MoeLayerRule::Qwen { step, mlp_only_layers } => !mlp_only_layers.contains(&i) && (i + 1).is_multiple_of(*step),
            MoeLayerRule::DeepSeek { first_dense, freq } => i >= *first_dense && i.is_multiple_of(*freq),
            MoeLayerRule::All => true,
        }
    }
}

impl ModelConfig {
    /// Reads the config from parsed JSON; `path` is named in errors.
    pub fn from_json(json: &Value, path: &Path) -> Result<ModelConfig> {
        let keys = Keys { json, path };
        let mut cfg = ModelConfig {
            model_type: keys.string("model_type")?,
            num_hidden_layers: keys.usize("num_hidden_layers")?,
            hidden_size: keys.usize("hidden_size")?,
            intermediate_size: keys.usize("intermediate_size")?,
            num_attention_heads: keys.usize("num_attention_heads")?,
            num_key_value_heads: keys.usize("num_key_value_heads")?,
            head_dim: keys.usize("head_dim")?,
            vocab_size: keys.usize("vocab_size")?,
            tie_word_embeddings: keys.bool("tie_word_embeddings")?.unwrap_or(false),
            num_mtp_layers: keys.usize("num_nextn_predict_layers")?.unwrap_or(0),
            moe: None,
        };
        cfg.moe = keys.moe()?;
        Ok(cfg)
    }
}

/// Typed access to config keys, with errors naming the file and key.
struct Keys<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Keys<'_> {
    fn error(&self, key: &str, want: &str) -> Error {
        Error::Json { file: self.path.to_path_buf(), problem: format!("\"{key}\" must be {want}") }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.get(key).map(|v| v.as_str().map(str::to_string).ok_or_else(|| self.error(key, "a string"))).transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.error(key, "true or false"))).transpose()
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| as_usize(v).ok_or_else(|| self.error(key, "a non-negative integer"))).transpose()
    }

    /// An integer or a list of integers (ERNIE-VL's per-modality keys).
    fn usize_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let list = match v {
            Value::Array(items) => items.iter().map(as_usize).collect::<Option<Vec<_>>>(),
            other => as_usize(other).map(|n| vec![n]),
        };
        list.map(Some).ok_or_else(|| self.error(key, "a non-negative integer or a list of them"))
    }

    /// An integer that may be -1 (meaning "none") or a list of them.
    fn index_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let list = match v {
            Value::Array(items) => items.iter().map(Value::as_i64).collect::<Option<Vec<_>>>(),
            other => other.as_i64().map(|n| vec![n]),
        };
        list.map(Some).ok_or_else(|| self.error(key, "an integer or a list of integers"))
    }

    fn moe(&self) -> Result<Option<MoeConfig>> {
        let experts = match self.usize_list("moe_num_experts")? {
            Some(e) => Some(e),
            None => ["num_local_experts", "n_routed_experts", "num_experts"]
                .iter()
                .find_map(|k| self.usize(k).transpose())
                .transpose()?
                .map(|n| vec![n]),
        };
        let Some(num_experts) = experts.filter(|e| e.iter().sum::<usize>() > 0) else {
            return Ok(None);
        };
        let intermediate_size = self.usize_list("moe_intermediate_size")?.unwrap_or_default();
        let top_k = match self.usize("moe_k")? {
            Some(k) => Some(k),
            None => self.usize("num_experts_per_tok")?,
        };
        // Qwen2-MoE has one shared expert when its width is given.
        let num_shared_experts = match self.usize("moe_num_shared_experts")? {
            Some(n) => n,
            None => match self.usize("n_shared_experts")? {
                Some(n) => n,
                None => usize::from(self.usize("shared_expert_intermediate_size")?.is_some_and(|w| w > 0)),
            },
        };
        Ok(Some(MoeConfig { num_experts, intermediate_size, top_k, num_shared_experts, rule: self.rule()? }))
    }

    fn rule(&self) -> Result<MoeLayerRule> {
        if let Some(starts) = self.index_list("moe_layer_start_index")? {
            let start = starts.iter().copied().min().unwrap_or(0).max(0) as usize;
            let end =
                self.index_list("moe_layer_end_index")?.and_then(|ends| ends.into_iter().max()).filter(|&e| e >= 0).map(|e| e as usize);
            let interval = self.usize("moe_layer_interval")?.unwrap_or(1).max(1);
            return Ok(MoeLayerRule::Ernie { start, end, interval });
        }
        if let Some(step) = self.usize("decoder_sparse_step")? {
            let mlp_only_layers = self.usize_list("mlp_only_layers")?.unwrap_or_default();
            return Ok(MoeLayerRule::Qwen { step: step.max(1), mlp_only_layers });
        }
        if let Some(first_dense) = self.usize("first_k_dense_replace")? {
            let freq = self.usize("moe_layer_freq")?.unwrap_or(1).max(1);
            return Ok(MoeLayerRule::DeepSeek { first_dense, freq });
        }
        Ok(MoeLayerRule::All)
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    #[test]
    fn ernie_text_moe() {
        let cfg = parse(json!({
            "model_type": "ernie4_5_moe", "num_hidden_layers": 54, "moe_num_experts": 64,
            "moe_layer_start_index": 3, "moe_layer_end_index": 53, "moe_layer_interval": 1,
            "moe_k": 8, "moe_num_shared_experts": 0, "tie_word_embeddings": false
        }))
        .unwrap();
        let moe = cfg.moe.unwrap();
        assert_eq!(moe.total_experts(), 64);
        assert_eq!(moe.top_k, Some(8));
        assert!(!moe.is_moe_layer(2, 54));
        assert!(moe.is_moe_layer(3, 54));
        assert!(moe.is_moe_layer(53, 54));
    }

    #[test]
    fn ernie_vl_lists() {
        let cfg = parse(json!({
            "model_type": "ernie4_5_moe_vl", "num_hidden_layers": 28,
            "moe_num_experts": [64, 64], "moe_intermediate_size": [1536, 512],
            "moe_layer_start_index": [1, 1], "moe_layer_end_index": [27, 27]
        }))
        .unwrap();
        let moe = cfg.moe.unwrap();
        assert_eq!(moe.total_experts(), 128);
        assert_eq!(moe.intermediate_size, vec![1536, 512]);
        assert!(!moe.is_moe_layer(0, 28) && moe.is_moe_layer(1, 28) && moe.is_moe_layer(27, 28));
    }

    #[test]
    fn ernie_interval_and_missing_end() {
        let cfg =
            parse(json!({"moe_num_experts": 8, "moe_layer_start_index": 1, "moe_layer_end_index": -1, "moe_layer_interval": 2})).unwrap();
        let moe = cfg.moe.unwrap();
        let layers: Vec<usize> = (0..8).filter(|&i| moe.is_moe_layer(i, 8)).collect();
        assert_eq!(layers, vec![1, 3, 5, 7]);
    }

    #[test]
    fn other_families() {
        let mixtral = parse(json!({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2})).unwrap();
        assert_eq!(mixtral.moe.as_ref().unwrap().rule, MoeLayerRule::All);
        let qwen = parse(json!({"num_experts": 60, "decoder_sparse_step": 1, "mlp_only_layers": [0]})).unwrap();
        assert!(!qwen.moe.as_ref().unwrap().is_moe_layer(0, 4));
        let ds = parse(json!({"n_routed_experts": 256, "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_shared_experts": 1, "num_nextn_predict_layers": 1})).unwrap();
        let moe = ds.moe.unwrap();
        assert!(!moe.is_moe_layer(2, 61) && moe.is_moe_layer(3, 61));
        assert_eq!(moe.num_shared_experts, 1);
        assert_eq!(ds.num_mtp_layers, 1);
        let qwen2 = parse(json!({"model_type": "qwen2_moe", "num_experts": 60, "shared_expert_intermediate_size": 5632})).unwrap();
        assert_eq!(qwen2.moe.unwrap().num_shared_experts, 1);
    }

    #[test]
    fn dense_model_has_no_moe() {
        assert_eq!(parse(json!({"model_type": "llama"})).unwrap().moe, None);
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = parse(json!({"moe_num_experts": "many"})).unwrap_err();
        assert_eq!(err.to_string(), "config.json: \"moe_num_experts\" must be a non-negative integer or a list of them");
        assert!(parse(json!({"num_hidden_layers": -1})).is_err());
        assert!(parse(json!({"tie_word_embeddings": "yes"})).is_err());
    }
}
