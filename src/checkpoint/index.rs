//! `model.safetensors.index.json`: which shard holds which tensor.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// File name of the shard index in a Hugging Face checkpoint directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The parsed `weight_map` of a shard index, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// `(tensor name, shard file name)` pairs.
    pub weight_map: Vec<(String, String)>,
}

impl ShardIndex {
    /// Parses index JSON text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<ShardIndex> {
        let bad = |problem: String| Error::Json { file: path.to_path_buf(), problem };
        let value: Value = crate::json::parse(text).map_err(|e| bad(e.to_string()))?;
        let map = value.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no \"weight_map\" object".to_string()))?;
        let mut weight_map = Vec::with_capacity(map.len());
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| bad(format!("weight_map entry for '{tensor}' is not a string")))?;
            if shard.is_empty() || shard.contains(['/', '\\']) || shard == ".." || shard == "." {
                return Err(bad(format!("weight_map entry for '{tensor}' names '{shard}', which is not a file name in this directory")));
            }
            weight_map.push((tensor.clone(), shard.to_string()));
        }
        Ok(ShardIndex { weight_map })
    }

    /// The distinct shard file names, sorted.
    pub fn shard_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.weight_map.iter().map(|(_, s)| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ShardIndex> {
        ShardIndex::parse(text, Path::new("index.json"))
    }

    #[test]
    fn parses_weight_map_in_order() {
        let idx = parse(r#"{"metadata":{"total_size":8},"weight_map":{"b":"s2","a":"s1","c":"s1"}}"#).unwrap();
        assert_eq!(idx.weight_map[0], ("b".to_string(), "s2".to_string()));
        assert_eq!(idx.shard_names(), vec!["s1", "s2"]);
    }

    #[test]
    fn rejects_bad_indexes() {
        for text in ["{", "{}", r#"{"weight_map":[]}"#, r#"{"weight_map":{"a":1}}"#, r#"{"weight_map":{"a":"../x"}}"#] {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().starts_with("index.json: "), "{err}");
        }
    }
}
