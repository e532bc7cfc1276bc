//! `ccq-provenance.json`: how a quantized checkpoint maps back to the checkpoint it came from.
//!
//! `ccq quantize` (that is, [`crate::convert::convert`]) writes this file into every output,
//! whatever the layout. It records the source's naming and config, the options that chose the
//! schemes, and for every output tensor its scheme, logical `[k, n]` shape, whether the
//! sources were stored `[out, in]`, and the source tensors whose columns it holds, in order.
//! With it, [`crate::quantized::QuantizedCheckpoint`] can give every tensor back its source names, shape,
//! dtype and orientation (see `FORMAT.md`, section "Provenance"). Loaders that do not know the
//! file (FastDeploy) ignore it.

use super::OutputLayout;
use crate::error::{Error, Result};
use crate::layout::Naming;
use crate::{Dtype, SchemeKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// File name of the provenance record in a quantized checkpoint directory.
pub const PROVENANCE_FILE: &str = "ccq-provenance.json";
/// The value of the record's `format` field.
pub const PROVENANCE_FORMAT: &str = "ccq-provenance";
/// The record version this ccq writes and reads.
pub const PROVENANCE_VERSION: u32 = 1;

/// The parsed `ccq-provenance.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Always [`PROVENANCE_FORMAT`].
    pub format: String,
    /// Always [`PROVENANCE_VERSION`].
    pub version: u32,
    /// Version of the ccq that wrote the checkpoint.
    pub ccq_version: String,
    /// Output layout: `"fastdeploy"` or `"native"`.
    pub layout: OutputLayout,
    /// The source checkpoint.
    pub source: ProvenanceSource,
    /// The options that chose the schemes: `effort` plus what the caller recorded
    /// (`ccq quantize`: `preset`, `w4_end_layer`, `set`, `policy`, `fallback`), and how the
    /// encoders were calibrated (`feedback`). A record of the run, not read back.
    pub options: Value,
    /// Every output tensor, in write order.
    pub tensors: Vec<ProvenanceTensor>,
}

/// What the record says about the source checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceSource {
    /// `"pytorch"` (`[out, in]` linear weights) or `"paddle"` (`[in, out]`).
    pub naming: Naming,
    /// The source's `config.json`, as it was (`null` when it had none).
    pub config: Option<Value>,
}

/// One output tensor of the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceTensor {
    /// The name the checkpoint knows it by: the stored tensor's name when unquantized, the
    /// prefix of its component tensors (`NAME.quant_weight`, ...) when packed.
    pub name: String,
    /// The scheme (`"wint2"`, `"wint4"`, `"wint8"`, `"rtn2"`), or `null` when stored
    /// unquantized.
    pub scheme: Option<SchemeKind>,
    /// Logical rows (inputs); for a tensor that is not a matrix, its element count.
    pub k: usize,
    /// Logical columns (outputs); 1 for a tensor that is not a matrix.
    pub n: usize,
    /// Whether the sources are stored `[out, in]` (PyTorch linear weights): the logical
    /// `[k, n]` columns of each source must be transposed to give back its `[width, k]`.
    pub transposed: bool,
    /// The scheme's parameters ([`SchemeKind::params`]) for a packed tensor, checked on
    /// reading against the scheme that decodes it; absent for unquantized tensors and in
    /// records written before parameters were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// The source tensors, in the order their columns are concatenated.
    pub sources: Vec<ProvenanceSourceTensor>,
}

/// One source tensor of an output tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceSourceTensor {
    /// The tensor's name in the source checkpoint.
    pub name: String,
    /// How many columns of the logical matrix it occupies.
    pub width: usize,
    /// Its dtype in the source, as safetensors names it.
    pub dtype: Dtype,
    /// Its shape in the source.
    pub shape: Vec<usize>,
}

impl Provenance {
    /// Writes the record to `path` (through a temporary name).
    pub fn write(&self, path: &Path) -> Result<()> {
        let value = serde_json::to_value(self).map_err(|e| Error::Json { file: path.to_path_buf(), problem: e.to_string() })?;
        crate::checkpoint::output::write_json(path, &value)
    }

    /// Reads and validates `path`; every problem is an [`Error::Json`] naming the file.
    pub fn read(path: &Path) -> Result<Provenance> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Provenance::parse(&text, path)
    }

    /// Parses and validates record text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Provenance> {
        let bad = |problem: String| Error::Json { file: path.to_path_buf(), problem };
        let p: Provenance = crate::json::parse(text).map_err(|e| bad(format!("not a valid provenance record: {e}")))?;
        if p.format != PROVENANCE_FORMAT || p.version != PROVENANCE_VERSION {
            return Err(bad(format!(
                "format '{}' version {}; this ccq reads '{PROVENANCE_FORMAT}' version {PROVENANCE_VERSION}",
                p.format, p.version
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &p.tensors {
            let problem = |what: String| bad(format!("tensor '{}': {what}", t.name));
            if !seen.insert(t.name.as_str()) {
                return Err(problem("listed twice".into()));
            }
            if let (Some(kind), Some(params)) = (t.scheme, &t.params) {
                if *params != kind.params() {
                    return Err(problem(format!(
                        "written with {kind} parameters {params}; this ccq decodes {kind} with {}",
                        kind.params()
                    )));
                }
            }
            if t.sources.is_empty() {
                return Err(problem("no sources".into()));
            }
            let mut width = 0usize;
            for s in &t.sources {
                let numel = s.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                let expected = t.k.checked_mul(s.width);
                if numel.is_none() || numel != expected {
                    return Err(problem(format!(
                        "source '{}' has shape {:?}, which does not hold k = {} rows of width {}",
                        s.name, s.shape, t.k, s.width
                    )));
                }
                // A matrix source is [width, k] when transposed, [k, width] otherwise: a flipped
                // `transposed` would dequantize to the transpose.
                if let [a, b] = s.shape[..] {
                    let expected = if t.transposed { [s.width, t.k] } else { [t.k, s.width] };
                    if [a, b] != expected {
                        return Err(problem(format!(
                            "source '{}' has shape {:?}, but \"transposed\": {} makes it {:?}",
                            s.name, s.shape, t.transposed, expected
                        )));
                    }
                }
                width = width.saturating_add(s.width);
            }
            if width != t.n {
                return Err(problem(format!("source widths add up to {width}, not n = {}", t.n)));
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(params: &str) -> String {
        format!(
            r#"{{"format": "ccq-provenance", "version": 1, "ccq_version": "0.1.0", "layout": "native",
               "source": {{"naming": "pytorch", "config": null}}, "options": {{}},
               "tensors": [{{"name": "w", "scheme": "rtn2", "k": 64, "n": 2, "transposed": true{params},
                             "sources": [{{"name": "w", "width": 2, "dtype": "BF16", "shape": [2, 64]}}]}}]}}"#
        )
    }

    #[test]
    fn parameters_are_checked_and_may_be_absent_in_older_records() {
        let p = Path::new("ccq-provenance.json");
        assert!(Provenance::parse(&record(r#", "params": {"group_size": 64}"#), p).is_ok());
        assert!(Provenance::parse(&record(""), p).is_ok());
        let err = Provenance::parse(&record(r#", "params": {"group_size": 32}"#), p).unwrap_err().to_string();
        assert!(err.contains("written with rtn2 parameters"), "{err}");
        let err = Provenance::parse(&record(r#", "param": {}"#), p).unwrap_err().to_string();
        assert!(err.contains("unknown field `param`"), "{err}");
    }
}
