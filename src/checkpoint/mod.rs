//! Reading original checkpoints: Hugging Face safetensors, single or sharded, memory-mapped.
//!
//! [`Checkpoint::open`] takes a directory (with `config.json` and either `model.safetensors`
//! or the shards listed in `model.safetensors.index.json`) or one `.safetensors` file. Opening
//! reads and validates headers only ([`header`]); tensor data is memory-mapped on first use
//! and converted to f32 in bounded chunks ([`Checkpoint::for_each_f32_chunk`]), so a model far
//! larger than memory can be streamed tensor by tensor. Dtypes other than BF16/F16/F32 are
//! available as raw bytes ([`Checkpoint::raw_bytes`]); U16 tensors are read as bf16 only when
//! [`ReadOptions::u16_as_bf16`] says so.

mod convert;
pub mod header;
pub mod index;
mod matrix;
pub mod output;
pub mod write;

pub use convert::Conversion;
pub use header::{Header, HeaderEntry, HeaderError};
pub use index::{ShardIndex, INDEX_FILE};

use crate::error::{Error, Result};
use crate::Dtype;
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// File name of the model configuration in a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of an unsharded checkpoint's weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Default number of elements converted per chunk by [`Checkpoint::read_f32`] (4 MiB of f32).
pub const DEFAULT_CHUNK_ELEMS: usize = 1 << 20;

/// The file name of shard `index` (from 0) of `count`: `model.safetensors` when there is
/// one, else `model-00001-of-00003.safetensors` and so on, as Hugging Face names them.
pub fn shard_file_name(index: usize, count: usize) -> String {
    match count {
        1 => SINGLE_FILE.to_string(),
        _ => format!("model-{:05}-of-{:05}.safetensors", index + 1, count),
    }
}

/// How tensors are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read U16 tensors as bf16 payload. Never guessed: Paddle's converter writes bf16 weights
    /// as U16, but a U16 tensor may equally hold integers.
    pub u16_as_bf16: bool,
}

/// One tensor of a checkpoint: where it lives and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// Index into [`Checkpoint::shards`].
    pub shard: usize,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// `[begin, end)` byte range, absolute within the shard file.
    pub byte_range: (u64, u64),
}

impl TensorEntry {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of stored bytes.
    pub fn nbytes(&self) -> u64 {
        self.byte_range.1 - self.byte_range.0
    }
}

/// One safetensors file of a checkpoint.
#[derive(Debug)]
pub struct Shard {
    /// Path of the file.
    pub path: PathBuf,
    /// Its length in bytes when opened.
    pub file_len: u64,
    /// Its `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
    map: OnceLock<Mmap>,
}

/// An opened checkpoint: validated headers, an optional config, lazily mapped data.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    config: Option<serde_json::Value>,
    shards: Vec<Shard>,
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, usize>,
    unindexed: Vec<String>,
    options: ReadOptions,
}

impl Checkpoint {
    /// Opens a checkpoint directory or a single `.safetensors` file with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        Checkpoint::open_with(path, ReadOptions::default())
    }

    /// Opens a checkpoint directory or a single `.safetensors` file (with the `config.json`
    /// beside it, when there is one).
    pub fn open_with(path: impl AsRef<Path>, options: ReadOptions) -> Result<Checkpoint> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            open_directory(path, options)
        } else {
            // A single file's model is described by the config.json beside it, if there is one.
            let config = match path.parent() {
                Some(dir) => read_config(&dir.join(CONFIG_FILE))?,
                None => None,
            };
            let shard = open_shard(path)?;
            let tensors = shard.1;
            build(path, config, vec![shard.0], vec![tensors], None, options)
        }
    }

    /// The path the checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed `config.json`, when the checkpoint is a directory that has one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// The safetensors files, in the order [`TensorEntry::shard`] indexes them.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Every tensor, shard by shard in data order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// Tensors present in a shard's header but absent from the index (loaders ignore them).
    pub fn unindexed(&self) -> &[String] {
        &self.unindexed
    }

    /// The read options in force.
    pub fn options(&self) -> ReadOptions {
        self.options
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&TensorEntry> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound { checkpoint: self.path.clone(), tensor: name.to_string() })
    }

    /// The stored bytes of a tensor, straight from the memory map.
    pub fn raw_bytes(&self, entry: &TensorEntry) -> Result<&[u8]> {
        let shard = &self.shards[entry.shard];
        let map = shard.mmap()?;
        let (begin, end) = entry.byte_range;
        map.get(begin as usize..end as usize).ok_or_else(|| Error::BadTensor {
            file: Some(self.shards[entry.shard].path.clone()),
            tensor: entry.name.clone(),
            problem: format!("{} is now {} bytes, shorter than when it was opened (file changed?)", shard.path.display(), map.len()),
        })
    }

    /// Tells the kernel that `entry`'s pages will not be needed again soon, so a pass over a
    /// model larger than memory keeps only what it is working on resident. Reading the tensor
    /// again still works (the pages are read back from the file). Best effort: does nothing
    /// where unsupported or when the file is not mapped.
    pub fn release(&self, entry: &TensorEntry) {
        #[cfg(unix)]
        if let Some(map) = self.shards[entry.shard].map.get() {
            let (begin, end) = entry.byte_range;
            if end as usize <= map.len() {
                // SAFETY: the map is a read-only, shared mapping of a file; MADV_DONTNEED only
                // drops resident pages, and any later read faults them back in from the file,
                // so every slice handed out keeps seeing the same bytes.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, begin as usize, (end - begin) as usize) };
            }
        }
    }

    /// How `entry` converts to f32, or a typed error naming file and tensor.
    pub fn conversion(&self, entry: &TensorEntry) -> Result<Conversion> {
        Conversion::for_dtype(entry.dtype, self.options.u16_as_bf16).ok_or_else(|| Error::NotConvertible {
            file: self.shards[entry.shard].path.clone(),
            tensor: entry.name.clone(),
            dtype: entry.dtype,
            hint: if entry.dtype == Dtype::U16 {
                "; if it holds bf16 payload (Paddle's converter writes that), read U16 as bf16"
            } else {
                ""
            },
        })
    }

    /// Converts a tensor to f32 `chunk_elems` elements at a time (at least 1), calling
    /// `f(first_element_index, values)` for each chunk in order. Memory use is one chunk.
    pub fn for_each_f32_chunk<F>(&self, name: &str, chunk_elems: usize, mut f: F) -> Result<()>
    where
        F: FnMut(usize, &[f32]) -> Result<()>,
    {
        let entry = self.get(name)?;
        let conversion = self.conversion(entry)?;
        let bytes = self.raw_bytes(entry)?;
        let chunk_elems = chunk_elems.max(1);
        let mut buf = vec![0.0f32; chunk_elems.min(entry.numel())];
        let step = chunk_elems.saturating_mul(conversion.element_size());
        for (i, chunk) in bytes.chunks(step).enumerate() {
            let out = &mut buf[..chunk.len() / conversion.element_size()];
            conversion.convert(chunk, out);
            f(i * chunk_elems, out)?;
        }
        Ok(())
    }

    /// Checks, chunk by chunk, that a float tensor holds no NaN or infinity; the first one is
    /// an [`Error::NonFinite`] naming file, tensor and element. Tensors of other dtypes (which
    /// hold no such values) pass.
    pub fn check_finite(&self, name: &str) -> Result<()> {
        let entry = self.get(name)?;
        if !matches!(entry.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32) || self.conversion(entry).is_err() {
            return Ok(());
        }
        self.for_each_f32_chunk(name, DEFAULT_CHUNK_ELEMS, |first, chunk| self.finite(entry, first, chunk))
    }

    /// Reads a whole tensor as f32 and checks it holds no NaN or infinity
    /// ([`Checkpoint::check_finite`]).
    pub fn read_f32_finite(&self, name: &str) -> Result<Vec<f32>> {
        let values = self.read_f32(name)?;
        self.finite(self.get(name)?, 0, &values)?;
        Ok(values)
    }

    /// Nothing when `values` (elements `first..` of `entry`) are all finite, else an
    /// [`Error::NonFinite`] naming the first that is not.
    fn finite(&self, entry: &TensorEntry, first: usize, values: &[f32]) -> Result<()> {
        match values.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(Error::NonFinite {
                file: self.shards[entry.shard].path.clone(),
                tensor: entry.name.clone(),
                index: first + i,
                value: values[i],
            }),
            None => Ok(()),
        }
    }

    /// Reads a whole tensor as f32 (row-major, as stored).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.get(name)?.numel());
        self.for_each_f32_chunk(name, DEFAULT_CHUNK_ELEMS, |_, chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Total number of elements over all tensors.
    pub fn total_params(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }
}

impl Shard {
    /// The file's memory map, created on first use.
    fn mmap(&self) -> Result<&Mmap> {
        if let Some(map) = self.map.get() {
            return Ok(map);
        }
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        // SAFETY: the map is read-only. ccq never writes its inputs; as with every
        // memory-mapped reader, another process truncating the file while it is mapped is
        // outside what ccq can guard against (reads are bounds-checked against the map).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&self.path, e))?;
        Ok(self.map.get_or_init(|| map))
    }
}

/// Reads and validates one file's header.
fn open_shard(path: &Path) -> Result<(Shard, Vec<HeaderEntry>)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let header_error = |kind| Error::Header { file: path.to_path_buf(), kind };
    let mut bytes = vec![0u8; file_len.min(header::PREFIX_LEN) as usize];
    file.read_exact(&mut bytes).map_err(|e| Error::io(path, e))?;
    let header_len = header::read_prefix(&bytes, file_len).map_err(header_error)?;
    bytes.resize((header::PREFIX_LEN + header_len) as usize, 0);
    file.read_exact(&mut bytes[header::PREFIX_LEN as usize..]).map_err(|e| Error::io(path, e))?;
    let header = header::parse_header(&bytes, file_len).map_err(header_error)?;
    let data_start = header.data_start();
    let entries = header
        .tensors
        .into_iter()
        .map(|mut t| {
            t.data_offsets = (t.data_offsets.0 + data_start, t.data_offsets.1 + data_start);
            t
        })
        .collect();
    let shard = Shard { path: path.to_path_buf(), file_len, metadata: header.metadata, map: OnceLock::new() };
    Ok((shard, entries))
}

fn open_directory(dir: &Path, options: ReadOptions) -> Result<Checkpoint> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let index_path = dir.join(INDEX_FILE);
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index = ShardIndex::parse(&text, &index_path)?;
        return open_indexed(dir, config, &index_path, &index, options);
    }
    let single = match dir.join(SINGLE_FILE) {
        p if p.exists() => p,
        _ => only_safetensors_file(dir)?,
    };
    let (shard, entries) = open_shard(&single)?;
    build(dir, config, vec![shard], vec![entries], None, options)
}

/// A directory without `model.safetensors` or an index may still hold exactly one
/// `.safetensors` file under another name.
fn only_safetensors_file(dir: &Path) -> Result<PathBuf> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = item.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::NotACheckpoint {
            path: dir.to_path_buf(),
            problem: format!("no {SINGLE_FILE}, no {INDEX_FILE} and no other .safetensors file"),
        }),
        n => Err(Error::NotACheckpoint {
            path: dir.to_path_buf(),
            problem: format!("{n} .safetensors files but no {INDEX_FILE} saying which tensors each holds"),
        }),
    }
}

fn read_config(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value =
        crate::json::parse(&text).map_err(|e| Error::Json { file: path.to_path_buf(), problem: e.to_string() })?;
    if !value.is_object() {
        return Err(Error::Json { file: path.to_path_buf(), problem: "not a JSON object".into() });
    }
    Ok(Some(value))
}

fn open_indexed(
    dir: &Path,
    config: Option<serde_json::Value>,
    index_path: &Path,
    index: &ShardIndex,
    options: ReadOptions,
) -> Result<Checkpoint> {
    let mut shards = Vec::new();
    let mut entries = Vec::new();
    for name in index.shard_names() {
        let path = dir.join(name);
        if !path.is_file() {
            let tensor = index.weight_map.iter().find(|(_, s)| s == name).map(|(t, _)| t.clone());
            return Err(Error::MissingShard {
                index: index_path.to_path_buf(),
                tensor: tensor.unwrap_or_default(),
                shard: name.to_string(),
            });
        }
        let (shard, list) = open_shard(&path)?;
        shards.push(shard);
        entries.push(list);
    }
    build(dir, config, shards, entries, Some(index), options)
}

/// Assembles the checkpoint: checks names are unique across shards and, with an index, that
/// each indexed tensor is in the shard the index names.
fn build(
    path: &Path,
    config: Option<serde_json::Value>,
    shards: Vec<Shard>,
    entries: Vec<Vec<HeaderEntry>>,
    index: Option<&ShardIndex>,
    options: ReadOptions,
) -> Result<Checkpoint> {
    let mut tensors: Vec<TensorEntry> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (shard, list) in entries.into_iter().enumerate() {
        for e in list {
            if let Some(&first) = by_name.get(&e.name) {
                return Err(Error::DuplicateTensor {
                    tensor: e.name,
                    first: shards[tensors[first].shard].path.clone(),
                    second: shards[shard].path.clone(),
                });
            }
            by_name.insert(e.name.clone(), tensors.len());
            tensors.push(TensorEntry { name: e.name, shard, dtype: e.dtype, shape: e.shape, byte_range: e.data_offsets });
        }
    }
    let mut unindexed = Vec::new();
    if let Some(index) = index {
        let shard_of: HashMap<&str, usize> = index.shard_names().into_iter().enumerate().map(|(i, name)| (name, i)).collect();
        for (tensor, shard_name) in &index.weight_map {
            let shard = shard_of[shard_name.as_str()];
            match by_name.get(tensor) {
                Some(&i) if tensors[i].shard == shard => {}
                _ => return Err(Error::NotInShard { shard: shards[shard].path.clone(), tensor: tensor.clone() }),
            }
        }
        let indexed: std::collections::HashSet<&str> = index.weight_map.iter().map(|(t, _)| t.as_str()).collect();
        unindexed = tensors.iter().filter(|t| !indexed.contains(t.name.as_str())).map(|t| t.name.clone()).collect();
        tensors.retain(|t| indexed.contains(t.name.as_str()));
        by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    }
    Ok(Checkpoint { path: path.to_path_buf(), config, shards, tensors, by_name, unindexed, options })
}
