//! Executing a plan: read -> convert -> encode -> write, one tensor at a time.
//!
//! Output goes to `OUT.ccq-partial/`, each shard under a temporary name until complete. When
//! a shard is complete its size and checksum are recorded in `ccq-progress.json` there, with a
//! fingerprint of the source headers and options; `resume` re-uses shards whose fingerprint,
//! size and checksum still match and redoes the rest. Only when every file is written is the
//! directory renamed to `OUT`: an interrupted run never leaves anything that looks finished,
//! and the input is only ever read. Peak memory is one output tensor's f32 matrix, its packed
//! bytes and the encoder's per-column work, whatever the model's size.

use super::plan::{OutputLayout, Plan, PlannedTensor};
use crate::checkpoint::output::{move_into_place, partial_dir, write_json};
use crate::checkpoint::write::SafetensorsWriter;
use crate::checkpoint::{Checkpoint, INDEX_FILE};
use crate::error::{Error, Result};
use crate::format::native::NativeTensor;
use crate::scheme::Effort;
use crate::{Dtype, SchemeKind};
use half::bf16;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File recording the completed shards of an unfinished run.
pub const PROGRESS_FILE: &str = "ccq-progress.json";

/// What one planned tensor's encoder minimises, as a conversion is given it.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorImportance {
    /// The mean square activation per input row (`ccq calibrate`'s `mean_sq`).
    Diagonal(Vec<f32>),
    /// `X^T X / W` of the tensor's input, row-major `[k, k]` (shared by the tensors that read
    /// the same input): the encoder uses error feedback ([`crate::scheme::feedback`]).
    Hessian(std::sync::Arc<Vec<f32>>),
}

/// Tensors encoded before the shards are written (by [`LayerwiseEncoder`]): per planned tensor
/// name, the safetensors file in the work directory holding its components, stored as
/// `NAME::COMPONENT`.
pub type PreEncoded = BTreeMap<String, PathBuf>;

/// Encodes some of a plan's tensors before the shards are written, in an order of its own
/// (the calibrated conversion: layer by layer, with the forward pass between layers). It writes
/// into `dir` (inside the work directory, kept by `--resume`) and re-uses what an interrupted
/// run of the same fingerprint completed there.
pub trait LayerwiseEncoder: std::fmt::Debug + Send + Sync {
    /// Encodes, returning where each tensor's components are and the feedback records.
    fn encode(&self, ckpt: &Checkpoint, plan: &Plan, effort: Effort, dir: &Path) -> Result<(PreEncoded, Vec<FeedbackRecord>)>;
    /// What to record under `calibration` in `ccq-provenance.json`.
    fn describe(&self) -> Value;
}

/// How one tensor was encoded with error feedback.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeedbackRecord {
    /// Output tensor name.
    pub tensor: String,
    /// Relative damping used (above the requested one when the factorisation needed more).
    pub damp: f32,
    /// Factorisations that failed before it.
    pub retries: usize,
    /// The input's Hessian was empty (no token reached it): encoded as without calibration.
    pub empty: bool,
}

/// Options of [`convert`] beyond the plan.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// WINT2 encoder effort.
    pub effort: Effort,
    /// Replace an existing output directory.
    pub force: bool,
    /// Continue an interrupted run, re-using its verified shards.
    pub resume: bool,
    /// Extra text mixed into the resume fingerprint (e.g. the command-line options).
    pub fingerprint_extra: String,
    /// Stop with [`Error::Interrupted`] after writing this many shards: a deterministic
    /// interruption, for testing `resume`.
    pub stop_after_shards: Option<usize>,
    /// The caller's description of the options that chose the schemes (preset, rules, ...),
    /// recorded under `options` in `ccq-provenance.json` next to the effort.
    pub provenance_options: Value,
    /// Per planned tensor name, what its encoder minimises (from `ccq calibrate`); tensors
    /// not listed, or `None`: the plain squared error.
    pub importance: Option<std::sync::Arc<BTreeMap<String, TensorImportance>>>,
    /// Relative damping of every Hessian ([`crate::scheme::importance`]).
    pub damp: f32,
    /// Encodes tensors ahead of the shards (the calibrated, layer-by-layer conversion).
    pub layerwise: Option<std::sync::Arc<dyn LayerwiseEncoder>>,
    /// Copy tensors holding NaN or infinities as they are instead of refusing them (tensors
    /// that are quantized or converted are always refused: no encoder takes them).
    pub allow_non_finite: bool,
}

impl Default for ConvertOptions {
    /// Default effort, no calibration, [`crate::scheme::importance::DEFAULT_DAMP`]; refuses an
    /// existing output.
    fn default() -> ConvertOptions {
        ConvertOptions {
            effort: Effort::default(),
            force: false,
            resume: false,
            fingerprint_extra: String::new(),
            stop_after_shards: None,
            provenance_options: Value::Null,
            importance: None,
            damp: crate::scheme::importance::DEFAULT_DAMP,
            layerwise: None,
            allow_non_finite: false,
        }
    }
}

/// Progress reported after each tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Tensors done (including re-used ones).
    pub tensors_done: usize,
    /// Tensors in the plan.
    pub tensors_total: usize,
    /// Source bytes done.
    pub bytes_done: u64,
    /// Source bytes in the plan.
    pub bytes_total: u64,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Output tensors per scheme name (`none` for unquantized).
    pub tensors_per_scheme: BTreeMap<String, usize>,
    /// Bytes of source tensors.
    pub bytes_in: u64,
    /// Bytes of output tensor data.
    pub bytes_out: u64,
    /// Average stored bits per weight over all output tensors.
    pub bits_per_weight: f64,
    /// Shards re-used from an interrupted run.
    pub shards_reused: usize,
    /// Tensors quantized with the fallback scheme.
    pub fallbacks: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Logical weights processed per second.
    pub weights_per_second: f64,
    /// The tensors encoded with error feedback, in write order.
    pub feedback: Vec<FeedbackRecord>,
}

/// Converts `ckpt` by `plan` into the directory `out`.
pub fn convert(
    ckpt: &Checkpoint,
    plan: &Plan,
    out: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let start = Instant::now();
    crate::checkpoint::output::check_output(out, ckpt.path(), options.force)?;
    let work = partial_dir(out);
    let fingerprint = fingerprint(ckpt, plan, &options.fingerprint_extra);
    let mut record = prepare_work_dir(&work, &fingerprint, options.resume, options.force)?;
    let mut state = Progress { tensors_done: 0, tensors_total: plan.tensors.len(), bytes_done: 0, bytes_total: plan.bytes_in() };
    let (pre_encoded, mut feedback) = match &options.layerwise {
        Some(encoder) => encoder.encode(ckpt, plan, options.effort, &work.join(PRE_ENCODED_DIR))?,
        None => (PreEncoded::new(), Vec::new()),
    };
    let mut reused = 0;
    for (i, shard) in plan.shards.iter().enumerate() {
        let name = plan.shard_name(i);
        let path = work.join(&name);
        if let Some(done) = record.completed(&name, &path)? {
            reused += 1;
            feedback.extend(done.feedback.iter().cloned());
        } else {
            let records = write_shard(ckpt, plan, shard, &path, options, &pre_encoded, &mut state, progress)?;
            record.add(&name, &path, &records)?;
            feedback.extend(records);
            record.write(&work)?;
            if options.stop_after_shards == Some(i + 1 - reused) {
                return Err(Error::Interrupted { work: work.clone(), shards_done: i + 1 });
            }
            continue;
        }
        for &t in shard {
            state.tensors_done += 1;
            state.bytes_done += plan.tensors[t].bytes_in;
        }
        progress(state);
    }
    if plan.shards.len() > 1 {
        write_index(plan, &work)?;
    }
    write_side_files(ckpt, plan, &work)?;
    let mut provenance = super::provenance::provenance_of(ckpt, plan, options)?;
    if let Some(map) = provenance.options.as_object_mut() {
        map.insert("feedback".to_string(), feedback_summary(options, &feedback));
    }
    let pre_dir = work.join(PRE_ENCODED_DIR);
    if pre_dir.exists() {
        std::fs::remove_dir_all(&pre_dir).map_err(|e| Error::io(&pre_dir, e))?;
    }
    provenance.write(&work.join(crate::format::provenance::PROVENANCE_FILE))?;
    std::fs::remove_file(work.join(PROGRESS_FILE)).map_err(|e| Error::io(&work, e))?;
    move_into_place(&work, out)?;
    let mut summary = summarize(plan, reused, start.elapsed().as_secs_f64());
    summary.feedback = feedback;
    Ok(summary)
}

/// Writes what the output needs beside the tensors: the source directory's other files
/// (tokenizer, generation config, ...) and `config.json`, the source's as it is (native) or
/// with FastDeploy's `quantization_config` ([`crate::format::fastdeploy::write_config`]).
fn write_side_files(ckpt: &Checkpoint, plan: &Plan, work: &Path) -> Result<()> {
    if ckpt.path().is_dir() {
        crate::format::copy_side_files(ckpt.path(), work)?;
    }
    match plan.layout {
        OutputLayout::FastDeploy => {
            let q = plan.fastdeploy_config()?;
            crate::format::fastdeploy::write_config(ckpt.config(), &q, work)
        }
        OutputLayout::Native => match ckpt.config() {
            Some(c) => write_json(&work.join(crate::checkpoint::CONFIG_FILE), c),
            None => Ok(()),
        },
    }
}

/// Folder of the work directory where a [`LayerwiseEncoder`] keeps its encoded tensors.
pub const PRE_ENCODED_DIR: &str = "ccq-encoded";

/// The `feedback` entry of the provenance options: the method, the damping asked for, and the
/// tensors that needed more damping or had an empty Hessian.
fn feedback_summary(options: &ConvertOptions, records: &[FeedbackRecord]) -> Value {
    let any_hessian = options.layerwise.is_some()
        || options.importance.as_ref().is_some_and(|m| m.values().any(|t| matches!(t, TensorImportance::Hessian(_))));
    let method = match (&options.importance, any_hessian) {
        (_, true) => "feedback",
        (Some(_), false) => "diagonal",
        (None, false) => "none",
    };
    let more: Vec<Value> = records.iter().filter(|r| r.retries > 0).map(|r| json!({"tensor": r.tensor, "damp": r.damp})).collect();
    let empty: Vec<&str> = records.iter().filter(|r| r.empty).map(|r| r.tensor.as_str()).collect();
    json!({
        "method": method,
        "damp": options.damp,
        "tensors": records.len(),
        "more_damping": more,
        "empty_hessians": empty,
        "calibration": options.layerwise.as_ref().map(|l| l.describe()),
    })
}

/// `ccq-progress.json`: the shards an unfinished run completed, under the fingerprint of
/// what it writes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRecord {
    fingerprint: String,
    shards: BTreeMap<String, ShardRecord>,
}

/// One completed shard: its size, checksum and the feedback records of its tensors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardRecord {
    bytes: u64,
    checksum: String,
    feedback: Vec<FeedbackRecord>,
}

impl ResumeRecord {
    /// The shard `name` at `path` if it is the one recorded as complete: same size and
    /// checksum.
    fn completed(&self, name: &str, path: &Path) -> Result<Option<&ShardRecord>> {
        let Some(entry) = self.shards.get(name) else { return Ok(None) };
        let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
        if meta.len() != entry.bytes || entry.checksum != file_checksum(path)? {
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// Records shard `name`, just written to `path`.
    fn add(&mut self, name: &str, path: &Path, feedback: &[FeedbackRecord]) -> Result<()> {
        let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        self.shards.insert(name.to_string(), ShardRecord { bytes, checksum: file_checksum(path)?, feedback: feedback.to_vec() });
        Ok(())
    }

    /// Writes the record into the work directory.
    fn write(&self, work: &Path) -> Result<()> {
        let path = work.join(PROGRESS_FILE);
        write_json(&path, &serde_json::to_value(self).map_err(|e| Error::Json { file: path.clone(), problem: e.to_string() })?)
    }
}

/// The work directory, ready: with `resume`, the record of an earlier run of the same
/// fingerprint and the shards it lists are kept; otherwise (or when the record is absent,
/// unreadable or of another fingerprint) the directory is emptied and a fresh record written.
/// Without `resume` or `force`, an existing work directory is an [`Error::Unfinished`] saying
/// how many finished shards `--resume` would reuse.
fn prepare_work_dir(work: &Path, fingerprint: &str, resume: bool, force: bool) -> Result<ResumeRecord> {
    let earlier = std::fs::read_to_string(work.join(PROGRESS_FILE)).ok().and_then(|t| serde_json::from_str::<ResumeRecord>(&t).ok());
    let shards_done = earlier.as_ref().map_or(0, |r| r.shards.len());
    match earlier.filter(|r| r.fingerprint == fingerprint) {
        Some(record) if resume => return Ok(record),
        // Never discard an interrupted run's work silently.
        same if work.exists() && !resume && !force => {
            return Err(Error::Unfinished { work: work.to_path_buf(), shards_done, same_options: same.is_some() })
        }
        _ => {}
    }
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(|e| Error::io(work, e))?;
    }
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    let fresh = ResumeRecord { fingerprint: fingerprint.to_string(), shards: BTreeMap::new() };
    fresh.write(work)?;
    Ok(fresh)
}

#[allow(clippy::too_many_arguments)]
fn write_shard(
    ckpt: &Checkpoint,
    plan: &Plan,
    shard: &[usize],
    path: &Path,
    options: &ConvertOptions,
    pre_encoded: &PreEncoded,
    state: &mut Progress,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<FeedbackRecord>> {
    let specs: Vec<_> = shard.iter().flat_map(|&t| plan.tensors[t].outputs.iter().cloned()).collect();
    let mut metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    if plan.layout == OutputLayout::Native {
        for t in shard.iter().map(|&t| &plan.tensors[t]) {
            if let Some(kind) = t.choice {
                let (key, value) = NativeTensor::new(kind, t.k, t.n, t.transpose).metadata_entry(&t.name);
                metadata.insert(key, value);
            }
        }
    }
    let mut writer = SafetensorsWriter::create(path, &specs, &metadata)?;
    let mut records = Vec::new();
    let mut factors = FactorCache::default();
    for &t in shard {
        let tensor = &plan.tensors[t];
        match pre_encoded.get(&tensor.name) {
            Some(file) => copy_pre_encoded(tensor, file, &mut writer)?,
            None => records.extend(write_tensor(ckpt, tensor, plan.layout, options, &mut factors, &mut writer)?),
        }
        state.tensors_done += 1;
        state.bytes_done += tensor.bytes_in;
        progress(*state);
    }
    writer.finish()?;
    Ok(records)
}

/// Writes the components of `t` that a [`LayerwiseEncoder`] stored in `file`.
fn copy_pre_encoded(t: &PlannedTensor, file: &Path, writer: &mut SafetensorsWriter) -> Result<()> {
    let encoded = Checkpoint::open(file)?;
    for spec in &t.outputs {
        let entry = encoded.get(&pre_encoded_name(&t.name, crate::format::component_of(&spec.name)))?;
        if entry.dtype != spec.dtype || entry.shape != spec.shape {
            return Err(Error::BadTensor {
                file: Some(file.to_path_buf()),
                tensor: spec.name.clone(),
                problem: format!(
                    "the encoded copy in {} is {:?} {:?}, the plan wants {:?} {:?}",
                    file.display(),
                    entry.dtype,
                    entry.shape,
                    spec.dtype,
                    spec.shape
                ),
            });
        }
        writer.write(encoded.raw_bytes(entry)?)?;
    }
    Ok(())
}

/// The name a [`LayerwiseEncoder`] stores component `component` of tensor `tensor` under.
pub fn pre_encoded_name(tensor: &str, component: &str) -> String {
    format!("{tensor}::{component}")
}

/// The last few factorised Hessians, by the `X^T X` they came from: the tensors that read one
/// input (q, k, v; gate, up) are planned next to each other, and factorising is `O(K^3)`.
#[derive(Default)]
pub struct FactorCache {
    entries: Vec<(std::sync::Arc<Vec<f32>>, f32, std::sync::Arc<crate::scheme::Hessian>)>,
}

impl FactorCache {
    /// Entries kept.
    const KEEP: usize = 3; // see `get`

    /// The factorised Hessian of `xtx` (`[k, k]`) with damping `damp`, computed at most once
    /// while it stays among the last three used.
    pub fn get(
        &mut self,
        xtx: &std::sync::Arc<Vec<f32>>,
        k: usize,
        damp: f32,
    ) -> std::result::Result<std::sync::Arc<crate::scheme::Hessian>, crate::SchemeError> {
        if let Some((_, _, h)) = self.entries.iter().find(|(x, d, _)| std::sync::Arc::ptr_eq(x, xtx) && *d == damp) {
            return Ok(h.clone());
        }
        let h = std::sync::Arc::new(crate::scheme::Hessian::new(k, xtx, damp)?);
        if self.entries.len() == Self::KEEP {
            self.entries.remove(0);
        }
        self.entries.push((xtx.clone(), damp, h.clone()));
        Ok(h)
    }
}

/// Encodes the logical matrix `w` of planned tensor `t` as `kind`, factorising its Hessian when
/// it has one (with the record of how it was damped).
pub fn encode_planned(
    t: &PlannedTensor,
    kind: SchemeKind,
    effort: Effort,
    w: &[f32],
    importance: Option<&TensorImportance>,
    damp: f32,
    factors: &mut FactorCache,
) -> Result<(crate::Packed, Option<FeedbackRecord>)> {
    let bad = |source: crate::SchemeError| Error::Packed { file: t.source_file.clone(), tensor: t.name.clone(), source };
    let scheme = kind.scheme(effort);
    match importance {
        Some(TensorImportance::Hessian(xtx)) => {
            let hessian = factors.get(xtx, t.k, damp).map_err(bad)?;
            let packed = scheme.encode(w, t.k, t.n, crate::scheme::Importance::Hessian(&hessian)).map_err(bad)?;
            let d = hessian.damping();
            Ok((packed, Some(FeedbackRecord { tensor: t.name.clone(), damp: d.used, retries: d.retries, empty: d.empty })))
        }
        Some(TensorImportance::Diagonal(h)) => Ok((scheme.encode(w, t.k, t.n, crate::scheme::Importance::Diagonal(h)).map_err(bad)?, None)),
        None => Ok((scheme.encode(w, t.k, t.n, crate::scheme::Importance::Uniform).map_err(bad)?, None)),
    }
}

/// Writes one planned tensor's stored bytes, component by component, then lets the kernel
/// drop the source pages it read (so resident memory stays near one tensor, not the model).
fn write_tensor(
    ckpt: &Checkpoint,
    t: &PlannedTensor,
    layout: OutputLayout,
    options: &ConvertOptions,
    factors: &mut FactorCache,
    writer: &mut SafetensorsWriter,
) -> Result<Option<FeedbackRecord>> {
    let importance = options.importance.as_ref().and_then(|m| m.get(&t.name));
    let mut record = None;
    if t.is_raw_copy(layout) {
        if !options.allow_non_finite {
            ckpt.check_finite(&t.sources[0])?;
        }
        writer.write(ckpt.raw_bytes(ckpt.get(&t.sources[0])?)?)?;
    } else {
        let w = ckpt.logical_matrix(&t.sources, t.k, t.n, t.transpose)?;
        match t.choice {
            None => writer.write(&float_bytes(&w, t.outputs[0].dtype))?,
            Some(kind) => {
                let (packed, fed) = encode_planned(t, kind, options.effort, &w, importance, options.damp, factors)?;
                record = fed;
                for c in &packed.components {
                    writer.write(&c.bytes)?;
                }
            }
        }
    }
    for name in &t.sources {
        ckpt.release(ckpt.get(name)?);
    }
    Ok(record)
}

fn float_bytes(w: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => w.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
    }
}

fn write_index(plan: &Plan, work: &Path) -> Result<()> {
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in plan.shards.iter().enumerate() {
        for &t in shard {
            for spec in &plan.tensors[t].outputs {
                weight_map.insert(spec.name.clone(), json!(plan.shard_name(i)));
            }
        }
    }
    let index = json!({"metadata": {"total_size": plan.bytes_out()}, "weight_map": weight_map});
    write_json(&work.join(INDEX_FILE), &index)
}

fn summarize(plan: &Plan, reused: usize, seconds: f64) -> Summary {
    let mut per_scheme = BTreeMap::new();
    for t in &plan.tensors {
        *per_scheme.entry(super::policy::choice_name(t.choice).to_string()).or_insert(0) += 1;
    }
    let weights: u64 = plan.tensors.iter().map(PlannedTensor::numel).sum();
    Summary {
        tensors_per_scheme: per_scheme,
        bytes_in: plan.bytes_in(),
        bytes_out: plan.bytes_out(),
        bits_per_weight: plan.bytes_out() as f64 * 8.0 / weights.max(1) as f64,
        shards_reused: reused,
        fallbacks: plan.tensors.iter().filter(|t| t.fell_back).map(|t| t.name.clone()).collect(),
        seconds,
        weights_per_second: weights as f64 / seconds.max(1e-9),
        feedback: Vec::new(),
    }
}

/// A fingerprint of what a run will write: the source headers, the plan and the options.
fn fingerprint(ckpt: &Checkpoint, plan: &Plan, extra: &str) -> String {
    let mut h = Checksum::default();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(extra.as_bytes());
    for t in ckpt.tensors() {
        h.update(format!("{}|{}|{:?}|{:?}", t.name, t.dtype, t.shape, t.byte_range).as_bytes());
    }
    for s in ckpt.shards() {
        h.update(&s.file_len.to_le_bytes());
        // A source rewritten in place with the same shapes must not re-use old shards.
        let modified = std::fs::metadata(&s.path).and_then(|m| m.modified()).ok();
        let nanos = modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        h.update(&nanos.to_le_bytes());
    }
    for t in &plan.tensors {
        h.update(format!("{}|{:?}|{}", t.name, t.choice.map(SchemeKind::name), t.outputs.len()).as_bytes());
    }
    h.hex()
}

/// Checksum of a whole file, read in 8 MiB pieces.
pub(crate) fn file_checksum(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut h = Checksum::default();
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(h.hex());
        }
        h.update(&buf[..n]);
    }
}

/// A fast non-cryptographic 128-bit checksum (two FNV-1a-style lanes over 8-byte words),
/// enough to detect a truncated or altered shard; not a defence against tampering.
#[derive(Debug, Clone)]
struct Checksum {
    a: u64,
    b: u64,
    len: u64,
    tail: Vec<u8>,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum { a: 0xcbf2_9ce4_8422_2325, b: 0x8422_2325_cbf2_9ce4, len: 0, tail: Vec::new() }
    }
}

impl Checksum {
    fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        let whole = self.tail.len() / 8 * 8;
        for w in self.tail[..whole].chunks_exact(8) {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            self.a = (self.a ^ v).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
            self.b = (self.b ^ v.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
        }
        self.tail.drain(..whole);
    }

    fn hex(&self) -> String {
        let mut c = self.clone();
        let mut last = c.tail.clone();
        last.resize(8, 0);
        c.tail.clear();
        c.update(&last);
        c.update(&self.len.to_le_bytes());
        format!("{:016x}{:016x}", c.a, c.b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_depends_on_every_byte_and_not_on_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = {
            let mut h = Checksum::default();
            h.update(&data);
            h.hex()
        };
        let pieces = {
            let mut h = Checksum::default();
            for c in data.chunks(7) {
                h.update(c);
            }
            h.hex()
        };
        assert_eq!(whole, pieces);
        for i in [0, 500, 999] {
            let mut changed = data.clone();
            changed[i] ^= 1;
            let mut h = Checksum::default();
            h.update(&changed);
            assert_ne!(h.hex(), whole, "byte {i}");
        }
        let mut shorter = Checksum::default();
        shorter.update(&data[..999]);
        assert_ne!(shorter.hex(), whole);
    }
}
