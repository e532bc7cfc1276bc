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
use super::scheme_with_effort;
use crate::checkpoint::write::SafetensorsWriter;
use crate::checkpoint::{Checkpoint, INDEX_FILE};
use crate::error::{Error, Result};
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
    extra_files: &dyn Fn(&Path) -> Result<()>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let start = Instant::now();
    refuse_to_overwrite_source(ckpt.path(), out)?;
    if out.exists() && !options.force {
        return Err(Error::NotACheckpoint {
            path: out.to_path_buf(),
            problem: "output already exists; pass --force to replace it".to_string(),
        });
    }
    let work = partial_dir(out);
    let fingerprint = fingerprint(ckpt, plan, &options.fingerprint_extra);
    let mut record = prepare_work_dir(&work, &fingerprint, options.resume)?;
    let mut state = Progress { tensors_done: 0, tensors_total: plan.tensors.len(), bytes_done: 0, bytes_total: plan.bytes_in() };
    let (pre_encoded, mut feedback) = match &options.layerwise {
        Some(encoder) => encoder.encode(ckpt, plan, options.effort, &work.join(PRE_ENCODED_DIR))?,
        None => (PreEncoded::new(), Vec::new()),
    };
    let mut reused = 0;
    for (i, shard) in plan.shards.iter().enumerate() {
        let name = plan.shard_name(i);
        let path = work.join(&name);
        if record_matches(&record, &name, &path)? {
            reused += 1;
            let records: Vec<FeedbackRecord> = serde_json::from_value(record["shards"][&name]["feedback"].clone()).unwrap_or_default();
            feedback.extend(records);
        } else {
            let records = write_shard(ckpt, plan, shard, &path, options, &pre_encoded, &mut state, progress)?;
            record_shard(&mut record, &name, &path, &records)?;
            feedback.extend(records);
            write_json(&work.join(PROGRESS_FILE), &record)?;
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
    extra_files(&work)?;
    let mut provenance = crate::quantized::Provenance::from_plan(ckpt, plan, options);
    if let Some(map) = provenance.options.as_object_mut() {
        map.insert("feedback".to_string(), feedback_summary(options, &feedback));
    }
    let pre_dir = work.join(PRE_ENCODED_DIR);
    if pre_dir.exists() {
        std::fs::remove_dir_all(&pre_dir).map_err(|e| Error::io(&pre_dir, e))?;
    }
    write_json(&work.join(crate::quantized::PROVENANCE_FILE), &provenance.to_json())?;
    std::fs::remove_file(work.join(PROGRESS_FILE)).map_err(|e| Error::io(&work, e))?;
    move_into_place(&work, out)?;
    let mut summary = summarize(plan, reused, start.elapsed().as_secs_f64());
    summary.feedback = feedback;
    Ok(summary)
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

/// Refuses an output that is the source or holds it: `--force` would delete the input.
fn refuse_to_overwrite_source(source: &Path, out: &Path) -> Result<()> {
    let (Ok(source), Ok(out_abs)) = (source.canonicalize(), out.canonicalize()) else {
        return Ok(()); // the output does not exist yet, so it holds nothing
    };
    if source.starts_with(&out_abs) {
        return Err(Error::NotACheckpoint {
            path: out.to_path_buf(),
            problem: format!("the output would replace the source {}; choose another output", source.display()),
        });
    }
    Ok(())
}

/// `OUT.ccq-partial`: where an unfinished conversion lives.
pub fn partial_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{name}.ccq-partial"))
}

fn prepare_work_dir(work: &Path, fingerprint: &str, resume: bool) -> Result<Value> {
    let fresh = json!({"fingerprint": fingerprint, "shards": {}});
    if resume {
        if let Ok(text) = std::fs::read_to_string(work.join(PROGRESS_FILE)) {
            if let Ok(record) = serde_json::from_str::<Value>(&text) {
                if record["fingerprint"] == fingerprint {
                    return Ok(record);
                }
            }
        }
    }
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(|e| Error::io(work, e))?;
    }
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    write_json(&work.join(PROGRESS_FILE), &fresh)?;
    Ok(fresh)
}

/// Whether `path` is the shard recorded as complete: same size and checksum.
fn record_matches(record: &Value, name: &str, path: &Path) -> Result<bool> {
    let Some(entry) = record["shards"].get(name) else { return Ok(false) };
    let Ok(meta) = std::fs::metadata(path) else { return Ok(false) };
    if Some(meta.len()) != entry["bytes"].as_u64() {
        return Ok(false);
    }
    Ok(entry["checksum"].as_str() == Some(&file_checksum(path)?))
}

fn record_shard(record: &mut Value, name: &str, path: &Path, feedback: &[FeedbackRecord]) -> Result<()> {
    let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    record["shards"][name] = json!({"bytes": bytes, "checksum": file_checksum(path)?, "feedback": feedback});
    Ok(())
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
        metadata.extend(shard.iter().filter_map(|&t| native_metadata(&plan.tensors[t])));
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
        let component = spec.name.rsplit('.').next().unwrap_or("");
        let entry = encoded.get(&pre_encoded_name(&t.name, component))?;
        if entry.dtype != spec.dtype || entry.shape != spec.shape {
            return Err(Error::BadTensor {
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
    let bad = |e: crate::SchemeError| Error::BadTensor { tensor: t.name.clone(), problem: e.to_string() };
    let scheme = scheme_with_effort(kind, effort);
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

/// The native layout records, per packed tensor, `ccq.tensor.NAME` = its scheme and shapes.
fn native_metadata(t: &PlannedTensor) -> Option<(String, String)> {
    let kind = t.choice?;
    let value = json!({
        "scheme": kind.name(),
        "k": t.k,
        "n": t.n,
        "transposed": t.transpose,
        "components": t.outputs.iter().map(|o| o.name.rsplit('.').next().unwrap_or("")).collect::<Vec<_>>(),
        "params": scheme_params(kind),
    });
    Some((format!("ccq.tensor.{}", t.name), value.to_string()))
}

/// Scheme parameters a decoder needs beyond the components.
fn scheme_params(kind: SchemeKind) -> Value {
    match kind {
        SchemeKind::Wint2 => json!({"group_size": 64, "rounding": "fused"}),
        SchemeKind::Wint4 | SchemeKind::Wint8 => json!({"granularity": "per_channel", "layout": "cutlass_interleaved"}),
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
        writer.write(ckpt.raw_bytes(ckpt.get(&t.sources[0])?)?)?;
    } else {
        let w = logical_matrix(ckpt, &t.sources, t.k, t.n, t.transpose)?;
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

/// Reads `sources` as f32 and assembles the logical `[k, n]` row-major matrix, their columns
/// side by side: `W[row][off_i + j] = S_i[j][row]` for transposed ([out, in]) sources,
/// `S_i[row][j]` otherwise. NaN or infinite values are an error naming the tensor.
pub fn logical_matrix(ckpt: &Checkpoint, sources: &[String], k: usize, n: usize, transpose: bool) -> Result<Vec<f32>> {
    let mut w = vec![0.0f32; k * n];
    let mut offset = 0;
    for name in sources {
        let s = ckpt.read_f32(name)?;
        if let Some(i) = s.iter().position(|v| !v.is_finite()) {
            let file = ckpt.shards()[ckpt.get(name)?.shard].path.clone();
            return Err(Error::NonFinite { file, tensor: name.clone(), index: i, value: s[i] });
        }
        let width = s.len() / k.max(1);
        if transpose {
            transpose_into(&s, width, k, &mut w, n, offset);
        } else {
            for row in 0..k {
                w[row * n + offset..row * n + offset + width].copy_from_slice(&s[row * width..(row + 1) * width]);
            }
        }
        offset += width;
    }
    Ok(w)
}

/// `dst[r * dst_cols + offset + c] = src[c * rows + r]` for a `[cols, rows]` source, in
/// 64 x 64 tiles so that both sides stay in cache.
fn transpose_into(src: &[f32], cols: usize, rows: usize, dst: &mut [f32], dst_cols: usize, offset: usize) {
    const TILE: usize = 64;
    for c0 in (0..cols).step_by(TILE) {
        for r0 in (0..rows).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                for r in r0..(r0 + TILE).min(rows) {
                    dst[r * dst_cols + offset + c] = src[c * rows + r];
                }
            }
        }
    }
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

/// Writes pretty JSON through a temporary name.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let partial = crate::checkpoint::write::partial_name(path);
    let text = serde_json::to_string_pretty(value).expect("json value serializes") + "\n";
    std::fs::write(&partial, text).map_err(|e| Error::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))
}

/// Renames the finished work directory to `out`, replacing an old `out` only after the new
/// one is complete.
pub(crate) fn move_into_place(work: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = out.with_file_name(format!("{}.ccq-old", out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(work, out).map_err(|e| Error::io(out, e))?;
        return std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e));
    }
    std::fs::rename(work, out).map_err(|e| Error::io(out, e))
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

    #[test]
    fn partial_dir_sits_beside_the_output() {
        assert_eq!(partial_dir(Path::new("/x/out")), Path::new("/x/out.ccq-partial"));
    }
}
