//! ccq's native layout (see `FORMAT.md`), both directions: the source's names and orientation,
//! unquantized tensors copied as they are, and each packed tensor stored as
//! `NAME.<component>` and described by its shard's metadata key `ccq.tensor.NAME`, whose
//! value is a [`NativeTensor`] as JSON.

use crate::error::{Error, Result};
use crate::SchemeKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Metadata key prefix of a packed tensor's description.
pub const METADATA_PREFIX: &str = "ccq.tensor.";

/// The description of one packed tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeTensor {
    /// Its scheme.
    pub scheme: SchemeKind,
    /// Logical rows (inputs).
    pub k: usize,
    /// Logical columns (outputs).
    pub n: usize,
    /// Whether the source stored it `[out, in]`.
    pub transposed: bool,
    /// The component suffixes, in the scheme's order.
    pub components: Vec<String>,
    /// The scheme's parameters ([`SchemeKind::params`]).
    pub params: Value,
}

impl NativeTensor {
    /// The description of a packed `[k, n]` matrix of `scheme`.
    pub fn new(scheme: SchemeKind, k: usize, n: usize, transposed: bool) -> NativeTensor {
        let components = scheme.decoder().component_layout(k, n).into_iter().map(|(c, _, _)| c.to_string()).collect();
        NativeTensor { scheme, k, n, transposed, components, params: scheme.params() }
    }

    /// The shard metadata entry describing the packed tensor `name`.
    pub fn metadata_entry(&self, name: &str) -> (String, String) {
        (format!("{METADATA_PREFIX}{name}"), serde_json::to_string(self).unwrap_or_default())
    }

    /// Parses and validates the description of `name` found in `file`: its shape must be one
    /// the scheme stores, and its components and parameters those this ccq decodes.
    pub fn parse(file: &Path, name: &str, text: &str) -> Result<NativeTensor> {
        let bad = |problem: String| Error::QuantMetadata { file: file.to_path_buf(), tensor: name.to_string(), problem };
        let t: NativeTensor =
            crate::json::parse(text).map_err(|e| bad(format!("{METADATA_PREFIX}{name} is not a valid description: {e}")))?;
        if t.k == 0 || t.n == 0 {
            return Err(bad(format!("the logical shape [{}, {}] is empty", t.k, t.n)));
        }
        let scheme = t.scheme.decoder();
        scheme.check_shape(t.k, t.n).map_err(|e| bad(e.to_string()))?;
        let expected = NativeTensor::new(t.scheme, t.k, t.n, t.transposed);
        if t.components != expected.components {
            return Err(bad(format!("\"components\" must list {:?} for {}, found {:?}", expected.components, t.scheme, t.components)));
        }
        if t.params != expected.params {
            return Err(bad(format!(
                "written with {} parameters {}; this ccq decodes {} with {}",
                t.scheme, t.params, t.scheme, expected.params
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_and_typos_are_refused() {
        let t = NativeTensor::new(SchemeKind::Wint2, 128, 64, true);
        let (key, value) = t.metadata_entry("a.weight");
        assert_eq!(key, "ccq.tensor.a.weight");
        assert_eq!(NativeTensor::parse(Path::new("f"), "a.weight", &value).unwrap(), t);
        let typo = value.replace("\"transposed\"", "\"transpose\"");
        assert!(NativeTensor::parse(Path::new("f"), "a.weight", &typo).is_err());
        let other = value.replace("\"fused\"", "\"single\"");
        let err = NativeTensor::parse(Path::new("f"), "a.weight", &other).unwrap_err().to_string();
        assert!(err.contains("parameters"), "{err}");
    }
}
