//! Output formats: how a quantized checkpoint names, orients and describes its tensors, in
//! both directions.
//!
//! Conversion ([`crate::convert`]) asks this module what to call each output tensor and what
//! to write beside the tensors; reading ([`crate::quantized`]), `ccq dequant`, `ccq verify` and
//! the model loader ask it how to read them back. Each fact lives in one place:
//! - [`fastdeploy`]: the layout FastDeploy loads for ERNIE 4.5 (Paddle names, fused q|k|v and
//!   gate|up, `[in, out]`, `quantization_config`), see `docs/fastdeploy-layout.md`;
//! - [`native`]: ccq's own layout (the source's names, packed tensors described by
//!   `ccq.tensor.NAME` shard metadata), see `FORMAT.md`;
//! - [`provenance`]: `ccq-provenance.json`, written into every output, mapping each tensor
//!   back to its sources.

pub mod fastdeploy;
pub mod native;
pub mod provenance;

use crate::error::{Error, Result};
use crate::layout::{is_linear, Naming, TensorRole};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the output checkpoint names and orients its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputLayout {
    /// What FastDeploy loads for ERNIE 4.5: Paddle names, [in, out], fused q|k|v and gate|up.
    FastDeploy,
    /// The source's own names and orientation; packed tensors as `NAME.<component>`.
    Native,
}

impl OutputLayout {
    /// The layout's name as the CLI and the provenance record spell it.
    pub fn name(self) -> &'static str {
        match self {
            OutputLayout::FastDeploy => "fastdeploy",
            OutputLayout::Native => "native",
        }
    }

    /// The output tensor a source tensor goes into, and whether the source must be transposed
    /// from `[out, in]` to the logical `[in, out]`. Sources mapped to one name are fused.
    pub fn output_name(self, name: &str, class: &TensorRole, rank: usize, naming: Naming) -> (String, bool) {
        match self {
            OutputLayout::FastDeploy => fastdeploy::output_name(name, class, rank, naming),
            OutputLayout::Native => (name.to_string(), naming == Naming::Pytorch && is_linear(name, class, rank)),
        }
    }

    /// The prefix a packed output tensor's components share (`{prefix}.quant_weight`, ...).
    pub fn packed_prefix(self, output_name: &str) -> &str {
        match self {
            OutputLayout::FastDeploy => fastdeploy::packed_prefix(output_name),
            OutputLayout::Native => output_name,
        }
    }

    /// The output tensor name a packed prefix stands for: the inverse of
    /// [`OutputLayout::packed_prefix`].
    pub fn weight_name(self, prefix: &str) -> String {
        match self {
            OutputLayout::FastDeploy => fastdeploy::weight_name(prefix),
            OutputLayout::Native => prefix.to_string(),
        }
    }
}

/// The component every packed tensor stores first, whose presence marks a packed tensor.
pub const PACKED_MARKER: &str = "quant_weight";

/// The prefix of a stored packed tensor's components when `stored` is its marker component
/// (`NAME` of `NAME.quant_weight`).
pub fn packed_prefix_of(stored: &str) -> Option<&str> {
    stored.strip_suffix(PACKED_MARKER)?.strip_suffix('.')
}

/// The stored name of component `component` of a packed tensor whose components share
/// `prefix`.
pub fn component_name(prefix: &str, component: &str) -> String {
    format!("{prefix}.{component}")
}

/// The component suffix of a stored packed tensor name (`"quant_weight"` of
/// `NAME.quant_weight`).
pub fn component_of(stored: &str) -> &str {
    stored.rsplit_once('.').map_or(stored, |(_, c)| c)
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
