//! Writing a quantized checkpoint back as a dequantized one (`ccq dequant`).
//!
//! With a provenance record the output has the source's names, shapes, dtypes and
//! orientation: each fused tensor is split back into its sources by their widths, PyTorch
//! sources are transposed back to `[out, in]`, and `config.json` is the source's as recorded.
//! Quantized tensors become bf16 (or the source's F16/F32 when it had that), unquantized ones
//! are copied byte for byte whenever they are stored as the source stored them.
//! Without a record, names stay as stored (a FastDeploy packed tensor `NAME` becomes
//! `NAME.weight`), in the logical `[in, out]` orientation for the FastDeploy layout and in the
//! source's orientation for the native one (its metadata says), and `config.json` loses its
//! `quantization_config`.
//!
//! The output has one shard per input shard (same file names; `model.safetensors` when the
//! input is one file), is written into `OUT.ccq-partial` and renamed into place when complete,
//! and is streamed: memory holds one tensor's logical matrix and its output bytes.

use super::{QuantizedCheckpoint, QuantizedTensor};
use crate::checkpoint::output::{move_into_place, partial_dir, write_json};
use crate::checkpoint::write::{SafetensorsWriter, TensorSpec};
use crate::checkpoint::{CONFIG_FILE, INDEX_FILE, SINGLE_FILE};
use crate::error::{Error, Result};
use crate::format::provenance::PROVENANCE_FILE;
use crate::format::OutputLayout;
use crate::Dtype;
use half::{bf16, f16};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Options of [`write_dequantized`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DequantOptions {
    /// Replace an existing output directory.
    pub force: bool,
}

/// What [`write_dequantized`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DequantSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Of which dequantized from packed tensors.
    pub dequantized: usize,
    /// Shard files written.
    pub shards: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// Whether the provenance record gave back the source's names and orientation.
    pub restored_source: bool,
}

/// One output tensor: which quantized tensor it comes from, and how.
struct Piece {
    spec: TensorSpec,
    /// Index into the quantized checkpoint's tensors.
    tensor: usize,
    /// First logical column and width.
    columns: (usize, usize),
    /// Write the logical columns transposed (`[width, k]`).
    transpose: bool,
    /// Copy the stored bytes as they are.
    raw: bool,
}

/// Writes `q` dequantized into the directory `out` (see the module documentation).
pub fn write_dequantized(q: &QuantizedCheckpoint, out: &Path, options: &DequantOptions) -> Result<DequantSummary> {
    let input = q.checkpoint().path();
    crate::checkpoint::output::check_output(out, input, options.force)?;
    let restored_source = q.provenance().is_some();
    let shards = plan_pieces(q)?;
    let work = partial_dir(out);
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    }
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let summary = DequantSummary { tensors: 0, dequantized: 0, shards: shards.len(), bytes: 0, restored_source };
    let written = write_all(q, &shards, &work, summary).and_then(|summary| move_into_place(&work, out).map(|_| summary));
    if written.is_err() {
        // Unlike a conversion, a dequantization does not resume: leave nothing behind.
        let _ = std::fs::remove_dir_all(&work);
    }
    written
}

/// Writes every shard, the index, the config and the side files into `work`.
fn write_all(q: &QuantizedCheckpoint, shards: &[(String, Vec<Piece>)], work: &Path, mut summary: DequantSummary) -> Result<DequantSummary> {
    let single = shards.len() == 1;
    let mut weight_map = serde_json::Map::new();
    for (file_name, pieces) in shards {
        let file_name = if single { SINGLE_FILE.to_string() } else { file_name.clone() };
        write_shard(q, pieces, &work.join(&file_name), &mut summary)?;
        for p in pieces {
            weight_map.insert(p.spec.name.clone(), json!(file_name));
        }
    }
    if !single {
        let index = json!({"metadata": {"total_size": summary.bytes}, "weight_map": weight_map});
        write_json(&work.join(INDEX_FILE), &index)?;
    }
    write_config(q, work)?;
    let input = q.checkpoint().path();
    if input.is_dir() {
        copy_side_files(input, work)?;
    }
    Ok(summary)
}

/// The output tensors, grouped by the input shard holding their quantized tensor.
fn plan_pieces(q: &QuantizedCheckpoint) -> Result<Vec<(String, Vec<Piece>)>> {
    let ckpt = q.checkpoint();
    let mut shards: Vec<(String, Vec<Piece>)> = ckpt
        .shards()
        .iter()
        .map(|s| (s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), Vec::new()))
        .collect();
    let mut names = HashSet::new();
    for (i, t) in q.tensors().iter().enumerate() {
        let shard = ckpt.get(&t.stored[0])?.shard;
        for piece in pieces_of(q, i, t)? {
            if !names.insert(piece.spec.name.clone()) {
                return Err(Error::BadTensor {
                    file: Some(q.checkpoint().path().to_path_buf()),
                    tensor: piece.spec.name,
                    problem: "would be written twice to the dequantized checkpoint".to_string(),
                });
            }
            shards[shard].1.push(piece);
        }
    }
    shards.retain(|(_, pieces)| !pieces.is_empty());
    Ok(shards)
}

/// The output tensors of one quantized tensor.
fn pieces_of(q: &QuantizedCheckpoint, index: usize, t: &QuantizedTensor) -> Result<Vec<Piece>> {
    let Some(sources) = &t.sources else {
        // No provenance: the stored name; a packed tensor in logical order (FastDeploy) or
        // the source's (native, whose metadata records it).
        let (name, dtype, shape, transpose) = match t.scheme {
            None => (t.name.clone(), t.dtype.unwrap_or(Dtype::BF16), t.shape.clone(), false),
            Some(_) => {
                let back = q.layout() == OutputLayout::Native && t.transposed;
                let name = q.layout().weight_name(&t.name);
                (name, Dtype::BF16, if back { vec![t.n, t.k] } else { vec![t.k, t.n] }, back)
            }
        };
        let raw = t.scheme.is_none();
        return Ok(vec![Piece { spec: TensorSpec::new(name, dtype, shape), tensor: index, columns: (0, t.n), transpose, raw }]);
    };
    let mut pieces = Vec::new();
    let mut offset = 0;
    for s in sources {
        let stored_as_source =
            t.scheme.is_none() && sources.len() == 1 && t.dtype == Some(s.dtype) && t.shape == s.shape && t.transposed == t.stored_nk;
        let dtype = match s.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => s.dtype,
            _ if stored_as_source => s.dtype,
            other => {
                return Err(Error::BadTensor {
                    file: Some(q.checkpoint().path().to_path_buf()),
                    tensor: s.name.clone(),
                    problem: format!("its source dtype {other} cannot be written from dequantized values"),
                })
            }
        };
        let transpose = t.transposed && s.shape.len() == 2;
        pieces.push(Piece {
            spec: TensorSpec::new(&s.name, dtype, s.shape.clone()),
            tensor: index,
            columns: (offset, s.width),
            transpose,
            raw: stored_as_source,
        });
        offset += s.width;
    }
    Ok(pieces)
}

fn write_shard(q: &QuantizedCheckpoint, pieces: &[Piece], path: &Path, summary: &mut DequantSummary) -> Result<()> {
    let specs: Vec<TensorSpec> = pieces.iter().map(|p| p.spec.clone()).collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut writer = SafetensorsWriter::create(path, &specs, &metadata)?;
    let mut i = 0;
    while i < pieces.len() {
        // The pieces of one quantized tensor are consecutive: decode it once for all.
        let index = pieces[i].tensor;
        let t = &q.tensors()[index];
        let end = i + pieces[i..].iter().take_while(|p| p.tensor == index).count();
        let mut logical: Option<Vec<f32>> = None;
        for p in &pieces[i..end] {
            if p.raw {
                let entry = q.checkpoint().get(&t.stored[0])?;
                writer.write(q.checkpoint().raw_bytes(entry)?)?;
            } else {
                if logical.is_none() {
                    logical = Some(q.dequantize(t)?);
                }
                let w = logical.as_deref().expect("decoded above");
                let values = columns(w, t.k, t.n, p.columns, p.transpose);
                writer.write(&encode(&values, p.spec.dtype))?;
            }
            summary.tensors += 1;
            summary.bytes += p.spec.nbytes();
        }
        summary.dequantized += usize::from(t.is_quantized());
        q.release(t);
        i = end;
    }
    writer.finish()?;
    Ok(())
}

/// Columns `[offset, offset + width)` of a row-major `[k, n]` matrix, as `[k, width]`, or
/// transposed to `[width, k]`.
fn columns(w: &[f32], k: usize, n: usize, (offset, width): (usize, usize), transpose: bool) -> Vec<f32> {
    if offset == 0 && width == n && !transpose {
        return w.to_vec();
    }
    let mut out = vec![0.0f32; k * width];
    for row in 0..k {
        let src = &w[row * n + offset..row * n + offset + width];
        if transpose {
            for (c, &v) in src.iter().enumerate() {
                out[c * k + row] = v;
            }
        } else {
            out[row * width..(row + 1) * width].copy_from_slice(src);
        }
    }
    out
}

/// Little-endian bytes of `values` in `dtype` (BF16, F16 or F32), rounding to nearest even.
fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// `config.json`: the source's as the provenance record holds it; otherwise the stored one
/// without `quantization_config`.
fn write_config(q: &QuantizedCheckpoint, work: &Path) -> Result<()> {
    let recorded = q.provenance().and_then(|p| p.source.config.clone());
    let config = match recorded {
        Some(c) => Some(c),
        None => q.checkpoint().config().cloned().map(|mut c| {
            if let Some(map) = c.as_object_mut() {
                map.remove("quantization_config");
            }
            c
        }),
    };
    match config {
        Some(c) => write_json(&work.join(CONFIG_FILE), &c),
        None => Ok(()),
    }
}

/// Copies every other regular file (tokenizer, generation config, ...) except weights, the
/// shard index, `config.json` and the provenance record.
fn copy_side_files(dir: &Path, work: &Path) -> Result<()> {
    for item in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = item.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let skip = name == CONFIG_FILE
            || name == INDEX_FILE
            || name == PROVENANCE_FILE
            || name.ends_with(".safetensors")
            || name.starts_with('.')
            || !path.is_file();
        if !skip {
            std::fs::copy(&path, work.join(&name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}
