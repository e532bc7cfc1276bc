//! Reading quantized checkpoints: the API a loader, `ccq dequant` and `ccq verify` use.
//!
//! [`QuantizedCheckpoint::open`] takes a checkpoint in either layout ccq writes:
//! - **FastDeploy** (`config.json` with `quantization_config`, packed tensors stored as
//!   `NAME.quant_weight`, `NAME.weight_scale`, ...): each packed tensor's scheme is inferred
//!   from its components and checked against `quantization_config` where that names a scheme
//!   ([`crate::format::fastdeploy`]). Baidu's own checkpoints open too.
//! - **native** (see `FORMAT.md`): each packed tensor is described by the `ccq.tensor.NAME`
//!   metadata of its shard, which is validated ([`crate::format::native`]).
//!
//! Opening reads headers (and `ccq-provenance.json` when present, see [`crate::format::provenance`]) and
//! checks every packed tensor's components (presence, dtype, shape) against its scheme, so a
//! corrupted checkpoint fails with a typed error naming the tensor before any data is read.
//! [`QuantizedCheckpoint::tensors`] then lists every tensor, quantized or not, with its scheme,
//! logical `[k, n]` shape and, when the provenance record is there, the source tensors it came
//! from. A tensor can be read as its [`Packed`] components, dequantized to f32 through its
//! scheme's decode (the definition of what the bytes mean), or handed to a matmul kernel as
//! [`OwnedWeights`]. [`write_dequantized`] writes a whole checkpoint back as bf16.
//!
//! Nothing here panics on a bad file; every failure is an [`Error`] naming file and tensor.
//!
//! # Example
//!
//! ```
//! # use ccq::convert::{self, ConvertOptions, OutputLayout, Plan, PlanOptions, Policy, Preset};
//! # use ccq::layout::{ModelConfig, ModelLayout};
//! # let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ernie45-tiny-pt");
//! # let src = ccq::Checkpoint::open(&fixture)?;
//! # let config = ModelConfig::from_json(src.config().unwrap(), &fixture.join("config.json"))?;
//! # let model = ModelLayout::detect(config, src.tensors().iter().map(|t| t.name.as_str()));
//! # let policy = Policy { preset: Preset::parse("wint8", 0).unwrap(), rules: Vec::new() };
//! # let options = PlanOptions { layout: OutputLayout::FastDeploy, policy: &policy, fallback: None, shard_size: u64::MAX };
//! # let plan = Plan::build(&src, &model, &options).unwrap();
//! # let dir = std::env::temp_dir().join(format!("ccq-doc-quantized-{}", std::process::id()));
//! # let opts = ConvertOptions { force: true, ..ConvertOptions::default() };
//! # convert::convert(&src, &plan, &dir, &opts, &mut |_| {})?;
//! use ccq::quantized::QuantizedCheckpoint;
//! use ccq::SchemeKind;
//!
//! // `dir` holds `fixtures/ernie45-tiny-pt` quantized to wint8 in the FastDeploy layout.
//! let q = QuantizedCheckpoint::open(&dir)?;
//! let qkv = q.get("ernie.layers.0.self_attn.qkv_proj")?;
//! assert_eq!((qkv.scheme, qkv.k, qkv.n), (Some(SchemeKind::Wint8), 128, 256));
//! // The provenance record names the PyTorch tensors it was fused from, [out, in] each.
//! let sources = qkv.sources.as_ref().unwrap();
//! assert_eq!(sources[0].name, "model.layers.0.self_attn.q_proj.weight");
//! assert!(qkv.transposed);
//! let w = q.dequantize(qkv)?; // logical [k, n], row-major
//! assert_eq!(w.len(), 128 * 256);
//! for t in q.tensors() {
//!     println!("{} {:?} [{}, {}]", t.name, t.scheme, t.k, t.n);
//! }
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), ccq::Error>(())
//! ```

mod export;

pub use export::{write_dequantized, DequantOptions, DequantSummary};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::format::fastdeploy::{self, QuantizationConfig};
use crate::format::native::{NativeTensor, METADATA_PREFIX};
use crate::format::provenance::{Provenance, ProvenanceTensor, PROVENANCE_FILE};
use crate::format::{component_name, OutputLayout};
use crate::layout::{ModelConfig, ModelLayout};
use crate::scheme::{Component, Packed, SchemeError};
use crate::{Dtype, SchemeKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One tensor of a quantized checkpoint, packed or stored as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuantizedTensor {
    /// The name the checkpoint knows it by: the stored tensor's name when unquantized, the
    /// prefix of its components (`NAME.quant_weight`, ...) when packed.
    pub name: String,
    /// Its scheme, `None` when stored unquantized.
    pub scheme: Option<SchemeKind>,
    /// Logical rows (inputs); for a tensor that is not a matrix, its element count.
    pub k: usize,
    /// Logical columns (outputs); 1 for a tensor that is not a matrix.
    pub n: usize,
    /// The stored dtype of an unquantized tensor (`None` when packed).
    pub dtype: Option<Dtype>,
    /// The stored shape of an unquantized tensor; `[k, n]` for a packed one.
    pub shape: Vec<usize>,
    /// Whether the source stored it `[out, in]` (PyTorch linear weights). Known from the
    /// provenance record, the native metadata or (native layout) the tensor's role;
    /// `false` when unknown.
    pub transposed: bool,
    /// The source tensors whose columns it holds, in order, when the provenance record is
    /// present.
    pub sources: Option<Vec<SourceTensor>>,
    /// The names of the stored tensors that hold it: itself when unquantized, its components
    /// in the scheme's order when packed.
    pub stored: Vec<String>,
    /// Whether the stored (unquantized) data is `[n, k]` rather than the logical `[k, n]`.
    stored_nk: bool,
}

impl QuantizedTensor {
    /// Whether it is stored packed.
    pub fn is_quantized(&self) -> bool {
        self.scheme.is_some()
    }
}

/// A source tensor of a quantized tensor, from the provenance record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    /// Its name in the source checkpoint.
    pub name: String,
    /// How many logical columns it occupies.
    pub width: usize,
    /// Its dtype in the source.
    pub dtype: Dtype,
    /// Its shape in the source.
    pub shape: Vec<usize>,
}

/// What a matmul kernel needs to multiply by one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedWeights {
    /// A packed matrix, its components as stored.
    Packed(Packed),
    /// A packed wint8 / wint4 matrix of a FastDeploy checkpoint, read with FastDeploy's
    /// arithmetic, `bf16(q * s)` ([`crate::kernel::Weights::PackedBf16`]).
    PackedBf16(Packed),
    /// An unquantized matrix.
    Dense(DenseMatrix),
}

impl OwnedWeights {
    /// Bytes a matmul reads: every packed component, or the dense elements.
    pub fn bytes(&self) -> usize {
        match self {
            OwnedWeights::Packed(p) | OwnedWeights::PackedBf16(p) => p.components.iter().map(|c| c.bytes.len()).sum(),
            OwnedWeights::Dense(d) => d.bytes.len(),
        }
    }

    /// The kernels' view of these weights.
    pub fn as_kernel(&self) -> crate::kernel::Weights<'_> {
        match self {
            OwnedWeights::Packed(p) => crate::kernel::Weights::Packed(p),
            OwnedWeights::PackedBf16(p) => crate::kernel::Weights::PackedBf16(p),
            OwnedWeights::Dense(d) => crate::kernel::Weights::Dense { dtype: d.dtype, bytes: &d.bytes, k: d.k, n: d.n },
        }
    }
}

/// An unquantized logical `[k, n]` matrix, in its stored element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseMatrix {
    /// Element type (`BF16`, `F16` or `F32`).
    pub dtype: Dtype,
    /// Rows (inputs).
    pub k: usize,
    /// Columns (outputs).
    pub n: usize,
    /// Little-endian elements, row-major `[k, n]` (transposed from the stored order if need be).
    pub bytes: Vec<u8>,
}

/// An opened quantized checkpoint.
#[derive(Debug)]
pub struct QuantizedCheckpoint {
    ckpt: Checkpoint,
    layout: OutputLayout,
    provenance: Option<Provenance>,
    tensors: Vec<QuantizedTensor>,
    by_name: HashMap<String, usize>,
}

impl QuantizedCheckpoint {
    /// Opens a quantized checkpoint directory (or a single `.safetensors` file of the native
    /// layout), validating every packed tensor's description and components.
    pub fn open(path: impl AsRef<Path>) -> Result<QuantizedCheckpoint> {
        let path = path.as_ref();
        let ckpt = Checkpoint::open(path)?;
        let provenance_path = path.join(PROVENANCE_FILE);
        let provenance = match path.is_dir() && provenance_path.is_file() {
            true => Some(Provenance::read(&provenance_path)?),
            false => None,
        };
        let layout = detect_layout(&ckpt, provenance.as_ref())?;
        let mut tensors = match layout {
            OutputLayout::FastDeploy => fastdeploy_tensors(&ckpt)?,
            OutputLayout::Native => native_tensors(&ckpt, provenance.is_none())?,
        };
        if let Some(p) = &provenance {
            apply_provenance(&mut tensors, p, &provenance_path, layout)?;
        }
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(QuantizedCheckpoint { ckpt, layout, provenance, tensors, by_name })
    }

    /// The layout it is stored in.
    pub fn layout(&self) -> OutputLayout {
        self.layout
    }

    /// The provenance record, when the checkpoint has one.
    pub fn provenance(&self) -> Option<&Provenance> {
        self.provenance.as_ref()
    }

    /// The underlying checkpoint (stored tensors, shards, config).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.ckpt
    }

    /// Every tensor, in the order of the stored tensors.
    pub fn tensors(&self) -> &[QuantizedTensor] {
        &self.tensors
    }

    /// The tensor called `name` (for a packed tensor, the prefix of its components).
    pub fn get(&self, name: &str) -> Result<&QuantizedTensor> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound { checkpoint: self.ckpt.path().to_path_buf(), tensor: name.to_string() })
    }

    /// Reads a packed tensor's components, checked against its scheme. An unquantized
    /// tensor is an [`Error::BadTensor`].
    pub fn packed(&self, t: &QuantizedTensor) -> Result<Packed> {
        let kind = t.scheme.ok_or_else(|| Error::BadTensor {
            file: Some(self.ckpt.path().to_path_buf()),
            tensor: t.name.clone(),
            problem: "is stored unquantized; read it with dequantize or weights".to_string(),
        })?;
        let layout = kind.decoder().component_layout(t.k, t.n);
        let mut components = Vec::with_capacity(layout.len());
        for (name, _, _) in &layout {
            let entry = self.ckpt.get(&component_name(&t.name, name))?;
            let bytes = self.ckpt.raw_bytes(entry)?.to_vec();
            components.push(Component { name, dtype: entry.dtype, shape: entry.shape.clone(), bytes });
        }
        let packed = Packed { kind, k: t.k, n: t.n, components };
        for (name, dtype, shape) in &layout {
            packed.expect_component(name, *dtype, shape).map_err(|source| self.packed_error(t, source))?;
        }
        Ok(packed)
    }

    /// Whether `t` is read with FastDeploy's arithmetic, `bf16(q * s)`: the wint8 / wint4
    /// tensors of a FastDeploy checkpoint, measured and run as FastDeploy runs them.
    fn bf16_product(&self, t: &QuantizedTensor) -> bool {
        self.layout == OutputLayout::FastDeploy && matches!(t.scheme, Some(SchemeKind::Wint8 | SchemeKind::Wint4))
    }

    /// The logical `[k, n]` matrix as row-major f32: a packed tensor through its scheme's
    /// decode (for the wint8 / wint4 tensors of a FastDeploy checkpoint, each value rounded to
    /// bf16 as FastDeploy's arithmetic does, like [`QuantizedCheckpoint::weights`]), an
    /// unquantized one converted from its stored dtype (and transposed when it is stored
    /// `[n, k]`).
    pub fn dequantize(&self, t: &QuantizedTensor) -> Result<Vec<f32>> {
        match t.scheme {
            Some(kind) => {
                let packed = self.packed(t)?;
                let values = kind.decoder().decode(&packed).map_err(|source| self.packed_error(t, source))?;
                Ok(match self.bf16_product(t) {
                    true => values.into_iter().map(crate::scheme::wint2::decode::bf16_rne).collect(),
                    false => values,
                })
            }
            None => {
                let values = self.ckpt.read_f32(&t.stored[0])?;
                Ok(match t.stored_nk {
                    true => transpose(&values, t.n, t.k),
                    false => values,
                })
            }
        }
    }

    /// What a matmul kernel multiplies by: the packed components, or the unquantized matrix
    /// in logical `[k, n]` order (BF16, F16 or F32, otherwise [`Error::NotConvertible`]). The
    /// wint8 / wint4 tensors of a FastDeploy checkpoint come as [`OwnedWeights::PackedBf16`],
    /// so that `verify`, `eval` and the loader measure the arithmetic FastDeploy runs.
    pub fn weights(&self, t: &QuantizedTensor) -> Result<OwnedWeights> {
        if t.scheme.is_some() {
            return self.packed(t).map(if self.bf16_product(t) { OwnedWeights::PackedBf16 } else { OwnedWeights::Packed });
        }
        let entry = self.ckpt.get(&t.stored[0])?;
        self.ckpt.conversion(entry)?;
        let raw = self.ckpt.raw_bytes(entry)?;
        let bytes = match t.stored_nk {
            true => transpose_bytes(raw, t.n, t.k, entry.dtype.size()),
            false => raw.to_vec(),
        };
        Ok(OwnedWeights::Dense(DenseMatrix { dtype: entry.dtype, k: t.k, n: t.n, bytes }))
    }

    /// `y = x · What` for activations `x` (`[m, t.k]` row-major): the fast kernel
    /// ([`crate::kernel::matmul`]) straight from the packed bytes, f32 accumulation; `y` is
    /// `[m, t.n]`.
    pub fn matmul(&self, t: &QuantizedTensor, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let weights = self.weights(t)?;
        crate::kernel::matmul(crate::kernel::Input::F32(x), m, &weights.as_kernel()).map_err(|source| self.kernel_error(t, source))
    }

    /// The file holding `t`: the shard of its first stored component (packed) or of itself.
    pub fn file_of(&self, t: &QuantizedTensor) -> PathBuf {
        match t.scheme {
            Some(kind) => packed_file(&self.ckpt, &t.name, kind),
            None => self.ckpt.file_of(&t.name),
        }
    }

    /// An [`Error::Packed`] for `t`, naming its file.
    pub fn packed_error(&self, t: &QuantizedTensor, source: SchemeError) -> Error {
        Error::Packed { file: self.file_of(t), tensor: t.name.clone(), source }
    }

    /// An [`Error::Kernel`] for `t`, naming its file.
    pub fn kernel_error(&self, t: &QuantizedTensor, source: crate::kernel::KernelError) -> Error {
        Error::Kernel { file: self.file_of(t), tensor: t.name.clone(), source }
    }

    /// Lets the kernel drop the pages of `t`'s stored tensors (see [`Checkpoint::release`]).
    pub fn release(&self, t: &QuantizedTensor) {
        for name in &t.stored {
            if let Ok(e) = self.ckpt.get(name) {
                self.ckpt.release(e);
            }
        }
    }
}

/// `[rows, cols]` -> `[cols, rows]`.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    out
}

/// `[rows, cols]` elements of `size` bytes -> `[cols, rows]`.
fn transpose_bytes(src: &[u8], rows: usize, cols: usize, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
            out[to..to + size].copy_from_slice(&src[from..from + size]);
        }
    }
    out
}

/// The layout: the provenance record's; else native when any shard describes a packed
/// tensor; else FastDeploy when `config.json` has `quantization_config`.
/// Whether `ckpt` is one ccq (or FastDeploy) wrote quantized: a provenance record, native
/// metadata, a `quantization_config` or packed tensors. An original or dequantized checkpoint
/// is not.
pub fn holds_quantized(ckpt: &Checkpoint) -> bool {
    ckpt.path().join(PROVENANCE_FILE).is_file() || !matches!(detect_layout(ckpt, None), Err(Error::NotACheckpoint { .. }))
}

fn detect_layout(ckpt: &Checkpoint, provenance: Option<&Provenance>) -> Result<OutputLayout> {
    if let Some(p) = provenance {
        return Ok(p.layout);
    }
    let described = ckpt.shards().iter().any(|s| s.metadata.keys().any(|k| k.starts_with(METADATA_PREFIX)));
    if described {
        return Ok(OutputLayout::Native);
    }
    if ckpt.config().is_some_and(|c| c.get("quantization_config").is_some()) {
        return Ok(OutputLayout::FastDeploy);
    }
    if let Some((t, tensor)) = ckpt.tensors().iter().find_map(|t| crate::format::packed_prefix_of(&t.name).map(|p| (t, p.to_string()))) {
        return Err(Error::QuantMetadata {
            file: ckpt.shards()[t.shard].path.clone(),
            tensor: tensor.clone(),
            problem: format!(
                "stored packed, but there is no {METADATA_PREFIX}{tensor} metadata (native layout) and no quantization_config in config.json (FastDeploy layout)"
            ),
        });
    }
    Err(Error::NotACheckpoint {
        path: ckpt.path().to_path_buf(),
        problem: "holds no quantized tensors (no *.quant_weight tensors, no ccq.tensor.* metadata)".to_string(),
    })
}

/// A packed tensor found in the checkpoint: name (prefix), scheme, logical shape.
struct Found {
    name: String,
    kind: SchemeKind,
    k: usize,
    n: usize,
    transposed: bool,
}

/// The shard holding the first of `prefix`'s components that is present (the checkpoint
/// when none is).
fn packed_file(ckpt: &Checkpoint, prefix: &str, kind: SchemeKind) -> PathBuf {
    let layout = kind.decoder().component_layout(1, 1);
    let present = layout.iter().map(|(c, _, _)| component_name(prefix, c)).find(|name| ckpt.get(name).is_ok());
    present.map(|name| ckpt.file_of(&name)).unwrap_or_else(|| ckpt.path().to_path_buf())
}

/// Checks that `found`'s components are all present with the dtype and shape its scheme
/// stores, and returns their names in the scheme's order.
fn check_components(ckpt: &Checkpoint, found: &Found) -> Result<Vec<String>> {
    let packed_error = |source| Error::Packed { file: packed_file(ckpt, &found.name, found.kind), tensor: found.name.clone(), source };
    let scheme = found.kind.decoder();
    scheme.check_shape(found.k, found.n).map_err(packed_error)?;
    let mut names = Vec::new();
    for (name, dtype, shape) in scheme.component_layout(found.k, found.n) {
        let full = component_name(&found.name, name);
        let entry = ckpt.get(&full).map_err(|_| packed_error(SchemeError::MissingComponent { name }))?;
        if entry.dtype != dtype {
            return Err(packed_error(SchemeError::ComponentDtype { name, expected: dtype, found: entry.dtype }));
        }
        if entry.shape != shape {
            return Err(packed_error(SchemeError::ComponentShape { name, expected: shape, found: entry.shape.clone() }));
        }
        names.push(full);
    }
    Ok(names)
}

/// Assembles the tensor list: packed tensors at the position of their first stored
/// component, every other stored tensor as unquantized.
fn assemble(ckpt: &Checkpoint, found: Vec<Found>, unquantized_nk: &dyn Fn(&str, usize) -> bool) -> Result<Vec<QuantizedTensor>> {
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut packed = Vec::new();
    for f in found {
        let stored = check_components(ckpt, &f)?;
        for s in &stored {
            owner.insert(s.clone(), packed.len());
        }
        packed.push(Some(QuantizedTensor {
            name: f.name,
            scheme: Some(f.kind),
            k: f.k,
            n: f.n,
            dtype: None,
            shape: vec![f.k, f.n],
            transposed: f.transposed,
            sources: None,
            stored,
            stored_nk: false,
        }));
    }
    let mut out = Vec::new();
    for e in ckpt.tensors() {
        match owner.get(&e.name) {
            Some(&i) => out.extend(packed[i].take()),
            None => {
                let nk = e.shape.len() == 2 && unquantized_nk(&e.name, e.shape.len());
                let (k, n) = match e.shape.len() {
                    2 if nk => (e.shape[1], e.shape[0]),
                    2 => (e.shape[0], e.shape[1]),
                    _ => (e.numel(), 1),
                };
                out.push(QuantizedTensor {
                    name: e.name.clone(),
                    scheme: None,
                    k,
                    n,
                    dtype: Some(e.dtype),
                    shape: e.shape.clone(),
                    transposed: nk,
                    sources: None,
                    stored: vec![e.name.clone()],
                    stored_nk: nk,
                });
            }
        }
    }
    Ok(out)
}

/// FastDeploy layout: every `NAME.quant_weight` is a packed tensor whose scheme is inferred
/// from its components and checked against `quantization_config`.
fn fastdeploy_tensors(ckpt: &Checkpoint) -> Result<Vec<QuantizedTensor>> {
    let names: HashSet<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
    let quant_config = QuantizationConfig::of(ckpt)?;
    let model = ModelLayout::detect(model_config(ckpt)?, names.iter().copied());
    let mut found = Vec::new();
    for e in ckpt.tensors() {
        let Some(prefix) = crate::format::packed_prefix_of(&e.name) else { continue };
        let (kind, k, n) = fastdeploy::packed_scheme(ckpt, &names, prefix, e)?;
        let weight = OutputLayout::FastDeploy.weight_name(prefix);
        if let Some(expected) = quant_config.as_ref().and_then(|q| q.scheme_of(&model.classify(&weight))) {
            if expected != kind {
                return Err(Error::BadTensor {
                    file: Some(ckpt.file_of(&e.name)),
                    tensor: prefix.to_string(),
                    problem: format!("its components are {kind}, but config.json's quantization_config makes it {expected}"),
                });
            }
        }
        found.push(Found { name: prefix.to_string(), kind, k, n, transposed: false });
    }
    assemble(ckpt, found, &|_, _| false)
}

/// The checkpoint's model config (defaults when it has no `config.json`).
fn model_config(ckpt: &Checkpoint) -> Result<ModelConfig> {
    match ckpt.config() {
        Some(json) => ModelConfig::from_json(json, &ckpt.path().join(crate::checkpoint::CONFIG_FILE)),
        None => Ok(ModelConfig::default()),
    }
}

/// Native layout: every packed tensor is described by `ccq.tensor.NAME` in its shard.
fn native_tensors(ckpt: &Checkpoint, guess_orientation: bool) -> Result<Vec<QuantizedTensor>> {
    let mut found = Vec::new();
    let mut described: BTreeMap<String, PathBuf> = BTreeMap::new();
    for shard in ckpt.shards() {
        for (key, text) in &shard.metadata {
            let Some(name) = key.strip_prefix(METADATA_PREFIX) else { continue };
            if let Some(first) = described.insert(name.to_string(), shard.path.clone()) {
                return Err(Error::QuantMetadata {
                    file: shard.path.clone(),
                    tensor: name.to_string(),
                    problem: format!("described again (also in {})", first.display()),
                });
            }
            let t = NativeTensor::parse(&shard.path, name, text)?;
            found.push(Found { name: name.to_string(), kind: t.scheme, k: t.k, n: t.n, transposed: t.transposed });
        }
    }
    for e in ckpt.tensors() {
        if let Some(prefix) = crate::format::packed_prefix_of(&e.name) {
            if !described.contains_key(prefix) {
                return Err(Error::QuantMetadata {
                    file: ckpt.shards()[e.shard].path.clone(),
                    tensor: prefix.to_string(),
                    problem: format!("stored packed, but its shard has no {METADATA_PREFIX}{prefix} metadata"),
                });
            }
        }
    }
    // Unquantized tensors are stored as in the source. Without a provenance record, whether
    // a matrix is [out, in] follows from the naming, as when ccq planned the conversion.
    let model = ModelLayout::detect(model_config(ckpt)?, ckpt.tensors().iter().map(|t| t.name.as_str()));
    let nk =
        |name: &str, rank: usize| guess_orientation && OutputLayout::Native.output_name(name, &model.classify(name), rank, model.naming).1;
    assemble(ckpt, found, &nk)
}

/// Gives each tensor its sources and orientation from the record, after checking that the
/// record and the checkpoint describe the same tensors.
fn apply_provenance(tensors: &mut [QuantizedTensor], p: &Provenance, file: &Path, layout: OutputLayout) -> Result<()> {
    let bad = |problem: String| Error::Json { file: file.to_path_buf(), problem };
    let records: HashMap<&str, &ProvenanceTensor> = p.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let present: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    if let Some(missing) = p.tensors.iter().find(|t| !present.contains(t.name.as_str())) {
        return Err(bad(format!("lists tensor '{}', which the checkpoint does not hold", missing.name)));
    }
    for t in tensors.iter_mut() {
        let r =
            records.get(t.name.as_str()).ok_or_else(|| bad(format!("does not list tensor '{}', which the checkpoint holds", t.name)))?;
        if r.scheme != t.scheme || (t.scheme.is_some() && (r.k, r.n) != (t.k, t.n)) {
            return Err(bad(format!(
                "records '{}' as {} [{}, {}], but the checkpoint stores {} [{}, {}]",
                t.name,
                r.scheme.map_or("unquantized", SchemeKind::name),
                r.k,
                r.n,
                t.scheme.map_or("unquantized", SchemeKind::name),
                t.k,
                t.n
            )));
        }
        // The native layout's own description says it too: both must agree.
        if layout == OutputLayout::Native && t.scheme.is_some() && t.transposed != r.transposed {
            return Err(bad(format!(
                "records '{}' as transposed: {}, but its shard's {}{} description says {}",
                t.name, r.transposed, METADATA_PREFIX, t.name, t.transposed
            )));
        }
        t.transposed = r.transposed;
        t.sources = Some(
            r.sources
                .iter()
                .map(|s| SourceTensor { name: s.name.clone(), width: s.width, dtype: s.dtype, shape: s.shape.clone() })
                .collect(),
        );
        if t.scheme.is_none() {
            // The native layout stores unquantized tensors as the source does; FastDeploy
            // stores matrices it transposed or fused in the logical [k, n] order.
            let nk = layout == OutputLayout::Native && r.transposed && t.shape.len() == 2;
            let (k, n) = match t.shape.len() {
                2 if nk => (t.shape[1], t.shape[0]),
                2 => (t.shape[0], t.shape[1]),
                _ => (t.shape.iter().product(), 1),
            };
            if (k, n) != (r.k, r.n) {
                return Err(bad(format!("records '{}' as [{}, {}], but the checkpoint stores {:?}", t.name, r.k, r.n, t.shape)));
            }
            t.stored_nk = nk;
            t.k = k;
            t.n = n;
        }
    }
    Ok(())
}
