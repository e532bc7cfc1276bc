//! The fuzz campaign's harness (issue 14), shared by `examples/fuzz.rs` (the campaign) and
//! `tests/fuzz_slice.rs` (a small deterministic slice in the test suite).
//!
//! Seeds: the committed fixtures, small single-file checkpoints cut from their shards, and
//! quantized outputs made from `fixtures/ernie45-tiny-pt` at start-up in both layouts
//! (FastDeploy and native) plus a native one of `fixtures/qwen2-moe-tiny`.
//!
//! Each case is a pure function of `(seed, case index)`: its own random stream picks a kind,
//! a seed and a mutation, so a case replays alone with `--only INDEX`. Every case runs under
//! `catch_unwind`; outcomes are counted per driver as `ok`, the error's variant name
//! (`Header::InvalidJson`, `Packed::...`, ...) or `PANIC`.
//!
//! The mix (per 10,000 cases, see [`Kind::pick`]):
//! - 9,000 `header-mem`: one safetensors file's prefix / JSON header / data length mutated,
//!   parsed in memory by `ccq::checkpoint::header::parse_header` and by the reference
//!   `safetensors::SafeTensors::deserialize`, acceptance compared; for a small seed the file
//!   is also written to the scratch directory (tmpfs where there is one) and opened with
//!   `Checkpoint::open`, every tensor read (`raw_bytes`, `read_f32`);
//! - 800 `dir-open`: one file of a checkpoint directory mutated (a shard's header or
//!   metadata, including native `ccq.tensor.NAME` descriptions, `config.json`, the index,
//!   `ccq-provenance.json`, packed component bytes, or a file deleted); `Checkpoint::open`,
//!   every tensor read, `ccq::inspect::Inspection::of`, and for quantized seeds
//!   `QuantizedCheckpoint::open` + `dequantize` of every tensor;
//! - 150 `dir-quant`: as `dir-open` on a quantized seed, plus `write_dequantized`,
//!   `ccq::verify::verify` against the original fixture;
//! - 40 `dir-eval`: as `dir-open`, plus `ccq::model::eval::evaluate` of the original fixture
//!   against the mutated checkpoint on two short token sequences;
//! - 10 `convert`: a mutated original (the small ERNIE fixture) converted to the native
//!   layout (`wint4` preset, or `wint2-experts`).

#![allow(dead_code)]

use ccq::checkpoint::header::parse_header;
use ccq::convert::{self, ConvertOptions, OutputLayout, Plan, PlanOptions, Policy, Preset};
use ccq::layout::ModelLayout;
use ccq::quantized::QuantizedCheckpoint;
use ccq::{Checkpoint, Error};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of cases.
    pub cases: u64,
    /// Campaign seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// Run only this case (replay).
    pub only: Option<u64>,
    /// Print every case's description.
    pub verbose: bool,
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The stream of case `index` of campaign `seed`.
    pub fn for_case(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index.wrapping_add(1)));
        r.next();
        r
    }
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One seed: a checkpoint directory's files, in memory and on disk.
#[derive(Debug)]
pub struct Seed {
    /// Short name.
    pub name: String,
    /// The directory on disk (unmutated files are hard-linked from here).
    pub dir: PathBuf,
    /// File name and bytes.
    pub files: Vec<(String, Arc<Vec<u8>>)>,
    /// For a quantized seed: the original it was made from.
    pub original: Option<PathBuf>,
    /// A small single-file seed (cheap to write and read in full).
    pub small: bool,
}

impl Seed {
    fn safetensors(&self) -> Vec<usize> {
        (0..self.files.len()).filter(|&i| self.files[i].0.ends_with(".safetensors")).collect()
    }
}

/// The seeds and the scratch directory of a campaign.
pub struct Corpus {
    /// Every seed.
    pub seeds: Vec<Seed>,
    /// Scratch root (removed on drop).
    pub scratch: tempfile::TempDir,
    /// Originals opened once (for verify and eval), by path.
    originals: BTreeMap<PathBuf, Checkpoint>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn read_dir_files(dir: &Path) -> Vec<(String, Arc<Vec<u8>>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && dir.join(n).is_file())
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), Arc::new(std::fs::read(dir.join(&n)).unwrap()))).collect()
}

/// Splits a safetensors file into (JSON header map, data section).
fn split(bytes: &[u8]) -> (Map<String, Value>, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let map: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (map, &bytes[8 + n..])
}

/// Joins a header map (as JSON text) and a data section.
fn join(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// A valid single file holding the `keep` smallest tensors of `bytes` (and its metadata).
fn cut_small(bytes: &[u8], keep: usize) -> Vec<u8> {
    let (map, data) = split(bytes);
    let mut entries: Vec<(String, Value)> = map.iter().filter(|(k, _)| *k != "__metadata__").map(|(k, v)| (k.clone(), v.clone())).collect();
    let size = |v: &Value| v["data_offsets"][1].as_u64().unwrap() - v["data_offsets"][0].as_u64().unwrap();
    entries.sort_by_key(|(k, v)| (size(v), k.clone()));
    entries.truncate(keep);
    let mut out = Map::new();
    if let Some(m) = map.get("__metadata__") {
        out.insert("__metadata__".into(), m.clone());
    }
    let mut new_data = Vec::new();
    for (k, mut v) in entries {
        let (b, e) = (v["data_offsets"][0].as_u64().unwrap() as usize, v["data_offsets"][1].as_u64().unwrap() as usize);
        let start = new_data.len();
        new_data.extend_from_slice(&data[b..e]);
        v["data_offsets"] = json!([start, new_data.len()]);
        out.insert(k, v);
    }
    join(serde_json::to_string(&Value::Object(out)).unwrap().as_bytes(), &new_data)
}

fn quantize(src_dir: &Path, out: &Path, layout: OutputLayout, preset: &str) {
    let src = Checkpoint::open(src_dir).unwrap();
    let model = ModelLayout::of(&src).unwrap();
    let policy = Policy { preset: Preset::parse(preset, Preset::DEFAULT_W4_END_LAYER).unwrap(), rules: vec![] };
    let options = PlanOptions { layout, policy: &policy, fallback: None, shard_size: u64::MAX };
    let plan = Plan::build(&src, &model, &options).unwrap_or_else(|r| panic!("plan of {}: {r:?}", src_dir.display()));
    let opts = ConvertOptions { force: true, provenance_options: json!({}), ..ConvertOptions::default() };
    convert::convert(&src, &plan, out, &opts, &mut |_| {}).unwrap();
}

fn scratch_root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("ccq-fuzz-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::Builder::new().prefix("ccq-fuzz-").tempdir().unwrap()
}

impl Corpus {
    /// Copies the fixtures, cuts the small seeds and makes the quantized seeds.
    pub fn build() -> Corpus {
        let scratch = scratch_root();
        let seeds_dir = scratch.path().join("seeds");
        let mut seeds = Vec::new();
        let fixtures = ["ernie45-tiny-pt", "ernie45-tiny-paddle", "qwen2-moe-tiny", "qwen3-moe-tiny", "mixtral-tiny", "llama-tiny"];
        let add = |name: &str, dir: PathBuf, original: Option<PathBuf>, small: bool, seeds: &mut Vec<Seed>| {
            let files = read_dir_files(&dir);
            seeds.push(Seed { name: name.to_string(), dir, files, original, small });
        };
        for f in fixtures {
            let dir = seeds_dir.join(f);
            std::fs::create_dir_all(&dir).unwrap();
            for (n, b) in read_dir_files(&fixture(f)) {
                std::fs::write(dir.join(&n), &*b).unwrap();
            }
            add(f, dir, None, false, &mut seeds);
        }
        let quantized = [
            ("ernie45-pt-fastdeploy", "ernie45-tiny-pt", OutputLayout::FastDeploy, "fastdeploy-w4w2"),
            ("ernie45-pt-native", "ernie45-tiny-pt", OutputLayout::Native, "wint2-experts"),
            ("qwen2-moe-native", "qwen2-moe-tiny", OutputLayout::Native, "wint4"),
        ];
        for (name, src, layout, preset) in quantized {
            let dir = seeds_dir.join(name);
            quantize(&fixture(src), &dir, layout, preset);
            add(name, dir, Some(fixture(src)), false, &mut seeds);
        }
        // Small single files cut from every shard of every seed so far.
        let mut small = Vec::new();
        for s in &seeds {
            for i in s.safetensors() {
                for keep in [1usize, 3, 8] {
                    let name = format!("{}-{}-small{keep}", s.name, s.files[i].0.trim_end_matches(".safetensors"));
                    let dir = seeds_dir.join(&name);
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(dir.join("model.safetensors"), cut_small(&s.files[i].1, keep)).unwrap();
                    small.push((name, dir));
                }
            }
        }
        for (name, dir) in small {
            add(&name, dir, None, true, &mut seeds);
        }
        let mut originals = BTreeMap::new();
        for s in &seeds {
            if let Some(o) = &s.original {
                originals.entry(o.clone()).or_insert_with(|| Checkpoint::open(o).unwrap());
            }
        }
        Corpus { seeds, scratch, originals }
    }
}

/// The kind of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Header mutation parsed in memory (and, for small seeds, opened from a file).
    HeaderMem,
    /// One file of a directory mutated; open, read, inspect, dequantize.
    DirOpen,
    /// As `DirOpen` on a quantized seed, plus `write_dequantized` and `verify`.
    DirQuant,
    /// As `DirOpen`, plus `evaluate`.
    DirEval,
    /// A mutated original converted to the native layout.
    Convert,
}

impl Kind {
    fn pick(rng: &mut Rng) -> Kind {
        match rng.below(10_000) {
            0..=8999 => Kind::HeaderMem,
            9000..=9799 => Kind::DirOpen,
            9800..=9949 => Kind::DirQuant,
            9950..=9989 => Kind::DirEval,
            _ => Kind::Convert,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::HeaderMem => "header-mem",
            Kind::DirOpen => "dir-open",
            Kind::DirQuant => "dir-quant",
            Kind::DirEval => "dir-eval",
            Kind::Convert => "convert",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mutations

const DTYPES: [&str; 20] = [
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "f32", "F4", "",
    "UNKNOWN", "F8_E8M0",
];

fn interesting_u64(rng: &mut Rng, near: u64) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => u64::MAX,
        2 => near.wrapping_add(1),
        3 => near.wrapping_sub(1),
        4 => near.wrapping_add(rng.below(16) as u64),
        5 => near.wrapping_sub(rng.below(16) as u64),
        6 => 1u64 << rng.below(64),
        7 => (1u64 << rng.below(64)).wrapping_sub(1),
        8 => rng.next(),
        _ => near.wrapping_mul(2),
    }
}

fn interesting_json_number(rng: &mut Rng, near: u64) -> Value {
    match rng.below(12) {
        0 => json!(-1),
        1 => json!(1.5),
        2 => json!(i64::MIN),
        3 => json!("7"),
        4 => Value::Null,
        5 => json!(1e300),
        _ => json!(interesting_u64(rng, near)),
    }
}

fn tensor_keys(map: &Map<String, Value>) -> Vec<String> {
    map.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

/// Mutates a tensor entry's JSON.
fn mutate_entry(rng: &mut Rng, entry: &mut Value, desc: &mut String) {
    let Some(obj) = entry.as_object_mut() else {
        *entry = json!({});
        desc.push_str("entry->{}");
        return;
    };
    match rng.below(14) {
        0 | 1 => {
            let d = *rng.pick(&DTYPES);
            desc.push_str(&format!("dtype={d}"));
            obj.insert("dtype".into(), json!(d));
        }
        2 => {
            let d = *rng.pick(&DTYPES);
            desc.push_str(&format!("dtype={d}+offsets-resized"));
            obj.insert("dtype".into(), json!(d));
            // Keep the byte count consistent with the new dtype where possible.
            let numel: u64 = obj["shape"].as_array().map(|s| s.iter().map(|x| x.as_u64().unwrap_or(0)).product()).unwrap_or(0);
            let size = match d {
                "F64" | "I64" | "U64" => 8,
                "F32" | "I32" | "U32" => 4,
                "F16" | "BF16" | "I16" | "U16" => 2,
                _ => 1,
            };
            if let Some(b) = obj["data_offsets"][0].as_u64() {
                obj.insert("data_offsets".into(), json!([b, b + numel * size]));
            }
        }
        3 | 4 => {
            let which = rng.below(2);
            let near = obj.get("data_offsets").and_then(|o| o[which].as_u64()).unwrap_or(0);
            let v = interesting_json_number(rng, near);
            desc.push_str(&format!("data_offsets[{which}]={v}"));
            if let Some(Value::Array(a)) = obj.get_mut("data_offsets") {
                if a.len() > which {
                    a[which] = v;
                }
            }
        }
        5 => {
            let v = match rng.below(6) {
                0 => json!([]),
                1 => json!([0]),
                2 => json!([0, 0, 0]),
                3 => json!("0,1"),
                4 => Value::Null,
                _ => {
                    let (a, b) = (obj["data_offsets"][0].clone(), obj["data_offsets"][1].clone());
                    json!([b, a])
                }
            };
            desc.push_str(&format!("data_offsets={v}"));
            obj.insert("data_offsets".into(), v);
        }
        6..=8 => {
            let shape = obj.get("shape").and_then(|s| s.as_array()).cloned().unwrap_or_default();
            let mut s = shape.clone();
            let v = match rng.below(8) {
                0 => {
                    s.push(json!(1));
                    Value::Array(s)
                }
                1 => {
                    s.pop();
                    Value::Array(s)
                }
                2 if !s.is_empty() => {
                    let i = rng.below(s.len());
                    let near = s[i].as_u64().unwrap_or(0);
                    s[i] = interesting_json_number(rng, near);
                    Value::Array(s)
                }
                3 => json!([]),
                4 => {
                    s.reverse();
                    Value::Array(s)
                }
                5 => json!([u64::MAX, 2]),
                6 => json!([1u64 << 32, 1u64 << 32, 16]),
                _ => json!("shape"),
            };
            desc.push_str(&format!("shape={v}"));
            obj.insert("shape".into(), v);
        }
        9 => {
            let k = rng.pick(&["dtype", "shape", "data_offsets"]).to_string();
            desc.push_str(&format!("delete {k}"));
            obj.remove(&k);
        }
        10 => {
            desc.push_str("extra key");
            obj.insert("extra".into(), json!(1));
        }
        11 => {
            desc.push_str("dtype=number");
            obj.insert("dtype".into(), json!(4));
        }
        12 => {
            // A consistent shape change: the same element count, factored differently.
            let numel: u64 = obj["shape"].as_array().map(|s| s.iter().map(|x| x.as_u64().unwrap_or(0)).product()).unwrap_or(0);
            desc.push_str(&format!("shape=[{numel}]"));
            obj.insert("shape".into(), json!([numel]));
        }
        _ => {
            let v = rng.pick(&[json!(null), json!([]), json!("x"), json!(0)]).clone();
            desc.push_str(&format!("entry={v}"));
            *entry = v.clone();
        }
    }
}

/// A value for a metadata entry: strings (some holding JSON), or other types.
fn mutate_metadata_value(rng: &mut Rng, old: &Value, desc: &mut String) -> Value {
    if let Some(text) = old.as_str() {
        if let Ok(mut inner) = serde_json::from_str::<Value>(text) {
            if (inner.is_object() || inner.is_array()) && rng.below(3) > 0 {
                mutate_json(rng, &mut inner, desc, 0);
                return json!(inner.to_string());
            }
        }
    }
    match rng.below(8) {
        0 => json!(1),
        1 => Value::Null,
        2 => json!({"a": "b"}),
        3 => json!(""),
        4 => json!("{"),
        5 => {
            let mut s = old.as_str().unwrap_or("").to_string();
            let cut = rng.below(s.len() + 1);
            while !s.is_char_boundary(cut.min(s.len())) {
                s.pop();
            }
            s.truncate(cut.min(s.len()));
            json!(s)
        }
        6 => json!(["x"]),
        _ => json!("\u{0000}\u{ffff}"),
    }
}

/// A generic structural mutation of a JSON value (config, index, provenance, descriptions).
fn mutate_json(rng: &mut Rng, v: &mut Value, desc: &mut String, depth: usize) {
    // Walk down to a random node.
    if depth < 6 && rng.below(3) > 0 {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                let k = rng.pick(&keys).clone();
                desc.push_str(&format!(".{k}"));
                return mutate_json(rng, m.get_mut(&k).unwrap(), desc, depth + 1);
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.below(a.len());
                desc.push_str(&format!("[{i}]"));
                return mutate_json(rng, &mut a[i], desc, depth + 1);
            }
            _ => {}
        }
    }
    let new = match (rng.below(10), &*v) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let mut m = m.clone();
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            m.remove(&k);
            desc.push_str(&format!(" delete {k}"));
            Value::Object(m)
        }
        (1, Value::Array(a)) if !a.is_empty() => {
            let mut a = a.clone();
            if rng.one_in(2) {
                a.pop();
                desc.push_str(" pop");
            } else {
                a.push(a[0].clone());
                desc.push_str(" push");
            }
            Value::Array(a)
        }
        (2, Value::Number(n)) => {
            let near = n.as_u64().unwrap_or(1);
            let x = interesting_json_number(rng, near);
            desc.push_str(&format!("={x}"));
            x
        }
        (3, Value::String(s)) => {
            let x = match rng.below(4) {
                0 => String::new(),
                1 => format!("{s}x"),
                2 => s.chars().rev().collect(),
                _ => "model-99999-of-99999.safetensors".to_string(),
            };
            desc.push_str(&format!("={x:?}"));
            json!(x)
        }
        (4, Value::Bool(b)) => {
            desc.push_str(&format!("={}", !b));
            json!(!b)
        }
        _ => {
            let x = rng
                .pick(&[json!(null), json!(0), json!(-1), json!(""), json!([]), json!({}), json!(1e308), json!(true), json!(u64::MAX)])
                .clone();
            desc.push_str(&format!("={x}"));
            x
        }
    };
    *v = new;
}

/// Mutates one safetensors file; returns the new bytes.
pub fn mutate_safetensors(rng: &mut Rng, bytes: &[u8], desc: &mut String) -> Vec<u8> {
    let before = desc.len();
    let out = mutate_safetensors_inner(rng, bytes, desc);
    let text = desc[before..].to_string();
    let tag = match TAGS.iter().find(|t| text.starts_with(**t)) {
        _ if text.contains("dtype=F8_E8M0") => "dtype=F8_E8M0",
        Some(t) => t,
        None => "entry",
    };
    TAG.with(|t| *t.borrow_mut() = tag);
    out
}

/// Classes of header mutations, by the start of their description.
const TAGS: &[&str] = &[
    "prefix",
    "truncate header",
    "flip",
    "set h",
    "insert h",
    "data ",
    "header padding",
    "delete tensor",
    "duplicate key",
    "__metadata__=null",
    "duplicate __metadata__",
    "metadata",
    "rename",
    "header=",
    "swap offsets",
    "reserialized",
];

fn mutate_safetensors_inner(rng: &mut Rng, bytes: &[u8], desc: &mut String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = &bytes[8..8 + n];
    let data = &bytes[8 + n..];
    match rng.below(20) {
        0 | 1 => {
            // The length prefix.
            let v = interesting_u64(rng, n as u64);
            desc.push_str(&format!("prefix={v}"));
            let mut out = bytes.to_vec();
            out[..8].copy_from_slice(&v.to_le_bytes());
            out
        }
        2 => {
            // One byte of the prefix.
            let mut out = bytes.to_vec();
            let i = rng.below(8);
            let b = rng.next() as u8;
            desc.push_str(&format!("prefix[{i}]={b}"));
            out[i] = b;
            out
        }
        3 => {
            // Truncate the JSON (prefix adjusted or not).
            let cut = rng.below(n + 1);
            let keep_prefix = rng.one_in(2);
            desc.push_str(&format!("truncate header at {cut} (prefix {})", if keep_prefix { "kept" } else { "adjusted" }));
            if keep_prefix {
                let mut out = bytes[..8 + cut].to_vec();
                out.extend_from_slice(data);
                out
            } else {
                join(&header[..cut], data)
            }
        }
        4 | 5 => {
            // Flip, set or insert header bytes.
            let mut h = header.to_vec();
            let count = 1 + rng.below(3);
            for _ in 0..count {
                let i = rng.below(h.len().max(1));
                match rng.below(3) {
                    0 if !h.is_empty() => {
                        let bit = 1u8 << rng.below(8);
                        desc.push_str(&format!("flip h[{i}]^{bit} "));
                        h[i] ^= bit;
                    }
                    1 if !h.is_empty() => {
                        let b = *rng.pick(b"{}[]\",:0123456789 \\\x00\xff-eE.");
                        desc.push_str(&format!("set h[{i}]={b:?} "));
                        h[i] = b;
                    }
                    _ => {
                        let b = *rng.pick(b"{}[]\",:0 \x00\xff");
                        desc.push_str(&format!("insert h[{i}]={b:?} "));
                        h.insert(i.min(h.len()), b);
                    }
                }
            }
            join(&h, data)
        }
        6 => {
            // Data section length.
            let mut out = bytes.to_vec();
            if rng.one_in(2) && !data.is_empty() {
                let cut = 1 + rng.below(data.len().min(64));
                desc.push_str(&format!("data -{cut} bytes"));
                out.truncate(out.len() - cut);
            } else {
                let add = 1 + rng.below(64);
                desc.push_str(&format!("data +{add} bytes"));
                out.extend(std::iter::repeat_n(0u8, add));
            }
            out
        }
        7 => {
            // Padding after the JSON object (spaces as the format allows, or other bytes).
            let pads: [&[u8]; 6] = [b"   ", b"\n", b"\x00", b"x", b"{}", b"\t "];
            let pad: &[u8] = pads[rng.below(pads.len())];
            desc.push_str(&format!("header padding {pad:?}"));
            let mut h = header.to_vec();
            h.extend_from_slice(pad);
            join(&h, data)
        }
        _ => {
            // Structural mutations of the parsed header.
            let Ok(mut map) = serde_json::from_slice::<Map<String, Value>>(header) else {
                desc.push_str("unparsable seed");
                return bytes.to_vec();
            };
            let keys = tensor_keys(&map);
            let text = match rng.below(12) {
                0 if !keys.is_empty() => {
                    let k = rng.pick(&keys).clone();
                    desc.push_str(&format!("delete tensor {k}"));
                    map.remove(&k);
                    serde_json::to_string(&map).unwrap()
                }
                1 if !keys.is_empty() => {
                    // A duplicated key (only text can hold one), the same or another entry.
                    let k = rng.pick(&keys).clone();
                    let other = rng.pick(&keys).clone();
                    let dup = if rng.one_in(2) { map[&k].clone() } else { map[&other].clone() };
                    desc.push_str(&format!("duplicate key {k} (value of {other})"));
                    let body = serde_json::to_string(&map).unwrap();
                    format!("{{{}:{},{}", serde_json::to_string(&k).unwrap(), dup, &body[1..])
                }
                2 => {
                    desc.push_str("__metadata__=null");
                    map.insert("__metadata__".into(), Value::Null);
                    serde_json::to_string(&map).unwrap()
                }
                3 => {
                    // A duplicated __metadata__ (first or last wins?).
                    let first =
                        rng.pick(&[json!({}), json!({"format": "pt"}), json!({"x": "1"}), json!(null), json!({"format": 1})]).clone();
                    desc.push_str(&format!("duplicate __metadata__ {first}"));
                    let body = serde_json::to_string(&map).unwrap();
                    format!("{{\"__metadata__\":{first},{}", &body[1..])
                }
                4..=7 if !keys.is_empty() => {
                    let k = rng.pick(&keys).clone();
                    desc.push_str(&format!("{k}: "));
                    mutate_entry(rng, map.get_mut(&k).unwrap(), desc);
                    serde_json::to_string(&map).unwrap()
                }
                8 => {
                    // Metadata values (native `ccq.tensor.NAME` descriptions among them).
                    let meta = map.entry("__metadata__").or_insert_with(|| json!({}));
                    match meta.as_object_mut() {
                        Some(m) if !m.is_empty() && !rng.one_in(4) => {
                            let mk: Vec<String> = m.keys().cloned().collect();
                            let k = rng.pick(&mk).clone();
                            desc.push_str(&format!("metadata {k}"));
                            let v = mutate_metadata_value(rng, &m[&k], desc);
                            m.insert(k, v);
                        }
                        Some(m) => {
                            let k = rng.pick(&["format", "ccq.tensor.x", "", "__metadata__"]).to_string();
                            desc.push_str(&format!("metadata add {k}"));
                            m.insert(k, json!("pt"));
                        }
                        None => {
                            desc.push_str("metadata -> {}");
                            *meta = json!({});
                        }
                    }
                    serde_json::to_string(&map).unwrap()
                }
                9 if !keys.is_empty() => {
                    // Rename a tensor.
                    let k = rng.pick(&keys).clone();
                    let new = rng
                        .pick(&["".to_string(), format!("{k}.x"), "__metadata__ ".to_string(), "\u{0}".to_string(), keys[0].clone()])
                        .clone();
                    desc.push_str(&format!("rename {k} -> {new:?}"));
                    let v = map.remove(&k).unwrap();
                    map.insert(new, v);
                    serde_json::to_string(&map).unwrap()
                }
                10 => {
                    let v = rng.pick(&["[]", "null", "\"x\"", "1", "{}", ""]).to_string();
                    desc.push_str(&format!("header={v}"));
                    v
                }
                _ => {
                    let (a, b) = (rng.below(keys.len().max(1)), rng.below(keys.len().max(1)));
                    if keys.len() >= 2 && a != b {
                        // Swap two entries' offsets.
                        let (ka, kb) = (keys[a].clone(), keys[b].clone());
                        desc.push_str(&format!("swap offsets {ka} <-> {kb}"));
                        let oa = map[&ka]["data_offsets"].clone();
                        let ob = map[&kb]["data_offsets"].clone();
                        map[&ka]["data_offsets"] = ob;
                        map[&kb]["data_offsets"] = oa;
                    } else {
                        desc.push_str("reserialized");
                    }
                    serde_json::to_string(&map).unwrap()
                }
            };
            join(text.as_bytes(), data)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Outcomes

/// Counts of one campaign.
#[derive(Debug, Default)]
pub struct Report {
    /// `(driver, outcome)` -> count.
    pub outcomes: BTreeMap<(String, String), u64>,
    /// Cases per kind.
    pub kinds: BTreeMap<String, u64>,
    /// Every panic: `(case, seed name, mutation, driver, location and message)`.
    pub panics: Vec<(u64, String, String, String, String)>,
    /// Differences from the safetensors crate: class -> (count, first examples).
    pub differences: BTreeMap<String, (u64, Vec<String>)>,
    /// Header cases both accepted / both rejected.
    pub agree: (u64, u64),
    /// Cases run.
    pub cases: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Longest case: duration, index, description.
    pub max_case: (Duration, u64, String),
    /// Cases over the per-case budget.
    pub over_budget: Vec<(u64, Duration, String)>,
    /// Error messages that fail the audit of [`audit_message`]: class -> (count, first examples).
    pub vague: BTreeMap<String, (u64, Vec<String>)>,
    /// Error messages audited.
    pub audited: u64,
}

/// The per-case time budget: a case running longer is reported as a possible hang.
pub const CASE_BUDGET: Duration = Duration::from_secs(10);

/// Difference classes (substrings of the class) that are documented: `(class, why)`. Every
/// other class of "ccq accepts, safetensors rejects" fails the test slice.
pub const EXPLAINED: &[(&str, &str)] = &[(
    "safetensors rejects (InvalidHeaderDeserialization) [mutation: dtype=F8_E8M0]",
    "ccq knows the dtype F8_E8M0 of newer safetensors releases; the reference crate 0.4 predates it",
)];

thread_local! {
    /// The class of the last header mutation (for difference classes).
    static TAG: RefCell<&'static str> = const { RefCell::new("") };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let loc = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let in_case = LAST_PANIC.with(|p| {
                let mut p = p.borrow_mut();
                let was_armed = p.is_some();
                if was_armed {
                    *p = Some(format!("{loc}: {msg}"));
                }
                was_armed
            });
            if !in_case {
                previous(info);
            }
        }));
    });
}

/// The variant name of an error (`Header::InvalidJson`, `Packed::...`, `Io`).
pub fn variant(e: &Error) -> String {
    fn head(debug: String) -> String {
        debug.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    }
    match e {
        Error::Header { kind, .. } => format!("Header::{}", head(format!("{kind:?}"))),
        Error::Packed { source, .. } => format!("Packed::{}", head(format!("{source:?}"))),
        Error::Kernel { source, .. } => format!("Kernel::{}", head(format!("{source:?}"))),
        Error::Io { source, .. } => format!("Io::{:?}", source.kind()),
        other => head(format!("{other:?}")),
    }
}

/// An error's message as the CLI prints it: the error and its chain of causes.
pub fn full_message(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s += &format!("\n  caused by: {text}");
        }
        cause = c.source();
    }
    s
}

/// Drivers whose errors are not audited: the in-memory header parse has no file, and the
/// harness's own plan summary is not a ccq message.
const UNAUDITED: &[&str] = &["parse_header", "plan"];

/// What is wrong with an error message a user would read, if anything: it names no file
/// (every driver here reads files under the case directory or the fixtures); it is serde's
/// raw wording, "... at line 1 column 44" (ccq says "at byte B" or "at line L, column C"); or
/// it says a value has the wrong type or range without naming the field.
pub fn audit_message(message: &str) -> Option<&'static str> {
    let names_file = [".safetensors", ".json", "case-", "fixtures"].iter().any(|f| message.contains(f));
    let serde_position = message.split(" at line ").skip(1).any(|rest| {
        let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !line.is_empty() && rest[line.len()..].starts_with(" column ")
    });
    let value_problem = ["invalid type:", "invalid value:", "invalid length"].iter().any(|p| message.contains(p));
    let unnamed_value = value_problem && !message.contains("field `") && !message.contains("the whole document");
    if !names_file {
        Some("name no file")
    } else if serde_position {
        Some("leak serde's position wording")
    } else if unnamed_value {
        Some("give a wrong value without its field")
    } else {
        None
    }
}

/// The outcomes of one case.
#[derive(Debug, Default)]
struct CaseResult {
    outcomes: Vec<(String, String)>,
    panic: Option<(String, String)>,
    difference: Option<String>,
    agree: Option<bool>,
    audited: u64,
    vague: Vec<(&'static str, String)>,
}

impl CaseResult {
    fn record<T>(&mut self, driver: &str, r: &ccq::Result<T>) -> bool {
        let outcome = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => variant(e),
        };
        if let Err(e) = r {
            if !UNAUDITED.contains(&driver) {
                self.audited += 1;
                let message = full_message(e);
                if let Some(class) = audit_message(&message) {
                    self.vague.push((class, format!("[{driver}] {outcome}: {message}")));
                }
            }
        }
        self.outcomes.push((driver.to_string(), outcome));
        r.is_ok()
    }
}

/// Runs `f` as the driver `driver`, catching a panic.
fn guarded<T>(res: &mut CaseResult, driver: &str, f: impl FnOnce() -> ccq::Result<T>) -> Option<T> {
    if res.panic.is_some() {
        return None;
    }
    LAST_PANIC.with(|p| *p.borrow_mut() = Some(String::new()));
    let r = catch_unwind(AssertUnwindSafe(f));
    let msg = LAST_PANIC.with(|p| p.borrow_mut().take());
    match r {
        Ok(r) => {
            res.record(driver, &r);
            r.ok()
        }
        Err(_) => {
            res.outcomes.push((driver.to_string(), "PANIC".to_string()));
            res.panic = Some((driver.to_string(), msg.unwrap_or_default()));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Drivers

fn read_every_tensor(ckpt: &Checkpoint) -> ccq::Result<()> {
    for t in ckpt.tensors() {
        let raw = ckpt.raw_bytes(t)?;
        std::hint::black_box(raw.len());
        if ckpt.conversion(t).is_ok() {
            let v = ckpt.read_f32(&t.name)?;
            std::hint::black_box(v.len());
        }
        ckpt.release(t);
    }
    Ok(())
}

fn open_and_read(res: &mut CaseResult, path: &Path) -> Option<Checkpoint> {
    let ckpt = guarded(res, "open", || Checkpoint::open(path))?;
    guarded(res, "read", || read_every_tensor(&ckpt));
    guarded(res, "inspect", || ccq::inspect::Inspection::of(&ckpt));
    Some(ckpt)
}

fn dequantize_all(q: &QuantizedCheckpoint) -> ccq::Result<()> {
    for t in q.tensors() {
        let v = q.dequantize(t)?;
        std::hint::black_box(v.len());
        q.release(t);
    }
    Ok(())
}

fn header_case(res: &mut CaseResult, corpus: &Corpus, rng: &mut Rng, case_dir: &Path, desc: &mut String) {
    let seed = &corpus.seeds[rng.below(corpus.seeds.len())];
    let files = seed.safetensors();
    let fi = *rng.pick(&files);
    desc.push_str(&format!("{}/{}: ", seed.name, seed.files[fi].0));
    let bytes = mutate_safetensors(rng, &seed.files[fi].1, desc);
    let ours = guarded(res, "parse_header", || {
        let head = &bytes[..bytes.len().min(8 + MAX_HEAD)];
        parse_header(head, bytes.len() as u64).map_err(|kind| Error::Header { file: PathBuf::from("mem"), kind })
    });
    if res.panic.is_some() {
        return;
    }
    let theirs = safetensors::SafeTensors::deserialize(&bytes);
    compare(res, ours.is_some(), &theirs.map(|_| ()).map_err(|e| format!("{e:?}")), "parse_header");
    if seed.small || rng.one_in(50) {
        std::fs::create_dir_all(case_dir).unwrap();
        let file = case_dir.join("model.safetensors");
        std::fs::write(&file, &bytes).unwrap();
        let opened = open_and_read(res, &file);
        if res.difference.is_none() && opened.is_some() != ours.is_some() {
            res.difference = Some(format!("Checkpoint::open {} but parse_header {}", verdict(opened.is_some()), verdict(ours.is_some())));
        }
    }
}

/// Headers are read up to this many bytes in memory (the file's real prefix bounds them).
const MAX_HEAD: usize = 100_000_000;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "accepts"
    } else {
        "rejects"
    }
}

fn compare(res: &mut CaseResult, ours: bool, theirs: &Result<(), String>, what: &str) {
    let tag = TAG.with(|t| *t.borrow());
    match (ours, theirs) {
        (true, Ok(())) => res.agree = Some(true),
        (false, Err(_)) => res.agree = Some(false),
        (true, Err(e)) => {
            let class: String = e.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            res.difference = Some(format!("ccq {what} accepts, safetensors rejects ({class}) [mutation: {tag}]"));
        }
        (false, Ok(())) => {
            let ours = res.outcomes.iter().rev().find(|(d, _)| d == what).map(|(_, o)| o.clone()).unwrap_or_default();
            res.difference = Some(format!("ccq {what} rejects ({ours}), safetensors accepts [mutation: {tag}]"));
        }
    }
}

/// Which file of a directory seed to mutate, and how; writes the case directory.
fn mutate_dir(rng: &mut Rng, seed: &Seed, case_dir: &Path, desc: &mut String) {
    std::fs::create_dir_all(case_dir).unwrap();
    let fi = rng.below(seed.files.len());
    let (name, bytes) = &seed.files[fi];
    desc.push_str(&format!("{}/{name}: ", seed.name));
    let mut delete = false;
    let new: Vec<u8> = if rng.one_in(40) {
        desc.push_str("deleted");
        delete = true;
        Vec::new()
    } else if name.ends_with(".safetensors") {
        if rng.one_in(4) {
            // Data bytes (packed components, scales, ...): flip bytes or write NaN / inf.
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let (map, _) = split(bytes);
            let keys = tensor_keys(&map);
            let k = rng.pick(&keys).clone();
            let (b, e) = (map[&k]["data_offsets"][0].as_u64().unwrap() as usize, map[&k]["data_offsets"][1].as_u64().unwrap() as usize);
            let mut out = bytes.to_vec();
            if e > b {
                let count = 1 + rng.below(4);
                for _ in 0..count {
                    let i = 8 + n + b + rng.below(e - b);
                    match rng.below(3) {
                        0 => out[i] ^= 1 << rng.below(8),
                        1 => out[i] = 0xFF,
                        _ => out[i] = 0x7F,
                    }
                }
                let all_nan = rng.one_in(8);
                if all_nan {
                    for x in &mut out[8 + n + b..8 + n + e] {
                        *x = 0xFF;
                    }
                }
                desc.push_str(&format!("data of {k}: {count} byte(s){}", if all_nan { ", then all 0xFF" } else { "" }));
            } else {
                desc.push_str(&format!("data of {k}: empty"));
            }
            out
        } else {
            mutate_safetensors(rng, bytes, desc)
        }
    } else if let Ok(mut v) = serde_json::from_slice::<Value>(bytes) {
        if rng.one_in(10) {
            let cut = rng.below(bytes.len());
            desc.push_str(&format!("truncated at {cut}"));
            bytes[..cut].to_vec()
        } else {
            desc.push_str("json");
            mutate_json(rng, &mut v, desc, 0);
            serde_json::to_vec(&v).unwrap()
        }
    } else {
        desc.push_str("bytes flipped");
        let mut out = bytes.to_vec();
        if !out.is_empty() {
            let i = rng.below(out.len());
            out[i] ^= 0x20;
        }
        out
    };
    for (i, (n, _)) in seed.files.iter().enumerate() {
        let dst = case_dir.join(n);
        if i == fi {
            if !delete {
                std::fs::write(&dst, &new).unwrap();
            }
        } else if std::fs::hard_link(seed.dir.join(n), &dst).is_err() {
            std::fs::copy(seed.dir.join(n), &dst).unwrap();
        }
    }
}

fn dir_case(res: &mut CaseResult, corpus: &Corpus, rng: &mut Rng, kind: Kind, case_dir: &Path, desc: &mut String) {
    let big: Vec<&Seed> = corpus.seeds.iter().filter(|s| !s.small).collect();
    let quantized: Vec<&Seed> = big.iter().copied().filter(|s| s.original.is_some()).collect();
    let seed = match kind {
        Kind::DirQuant => *rng.pick(&quantized),
        _ if rng.one_in(2) => *rng.pick(&quantized),
        _ => *rng.pick(&big),
    };
    let dir = case_dir.join("in");
    mutate_dir(rng, seed, &dir, desc);
    let _ = open_and_read(res, &dir);
    if res.panic.is_some() {
        return;
    }
    let q = if seed.original.is_some() {
        let q = guarded(res, "quantized_open", || QuantizedCheckpoint::open(&dir));
        if let Some(q) = &q {
            guarded(res, "dequantize", || dequantize_all(q));
        }
        q
    } else {
        None
    };
    if kind == Kind::DirQuant {
        if let Some(q) = &q {
            guarded(res, "write_dequantized", || {
                ccq::quantized::write_dequantized(q, &case_dir.join("dq"), &ccq::quantized::DequantOptions { force: true })
            });
            let original = &corpus.originals[seed.original.as_ref().unwrap()];
            let options = ccq::verify::VerifyOptions { probe_rows: 4, ..Default::default() };
            guarded(res, "verify", || ccq::verify::verify(original, q, &options, &mut |_, _| {}));
        }
    }
    if kind == Kind::DirEval {
        let original = seed.original.clone().unwrap_or_else(|| fixture(&seed.name));
        guarded(res, "eval", || {
            let a = ccq::model::source::ModelFiles::open(&original)?;
            let b = ccq::model::source::ModelFiles::open(&dir)?;
            let (wa, wb) = (a.weights()?, b.weights()?);
            let sequences = vec![vec![1u32, 2, 3, 4], vec![5u32, 0, 7]];
            ccq::model::eval::evaluate(&*wa, &*wb, &sequences, 64, &mut |_| {})
        });
    }
}

fn convert_case(res: &mut CaseResult, corpus: &Corpus, rng: &mut Rng, case_dir: &Path, desc: &mut String) {
    let seed = corpus.seeds.iter().find(|s| s.name == "ernie45-tiny-pt").unwrap();
    let dir = case_dir.join("in");
    mutate_dir(rng, seed, &dir, desc);
    let preset = *rng.pick(&["wint4", "wint2-experts", "wint8"]);
    desc.push_str(&format!(" ; convert native {preset}"));
    let Some(ckpt) = guarded(res, "open", || Checkpoint::open(&dir)) else { return };
    let Some(model) = guarded(res, "layout", || ModelLayout::of(&ckpt)) else { return };
    let policy = Policy { preset: Preset::parse(preset, Preset::DEFAULT_W4_END_LAYER).unwrap(), rules: vec![] };
    let options = PlanOptions { layout: OutputLayout::Native, policy: &policy, fallback: None, shard_size: u64::MAX };
    let plan = guarded(res, "plan", || {
        Plan::build(&ckpt, &model, &options).map_err(|r| Error::BadInput { problem: format!("{} refusal(s)", r.len()) })
    });
    let Some(plan) = plan else { return };
    let out = case_dir.join("out");
    let opts = ConvertOptions { force: true, provenance_options: json!({}), ..ConvertOptions::default() };
    if guarded(res, "convert", || convert::convert(&ckpt, &plan, &out, &opts, &mut |_| {})).is_some() {
        if let Some(q) = guarded(res, "quantized_open", || QuantizedCheckpoint::open(&out)) {
            guarded(res, "dequantize", || dequantize_all(&q));
        }
    }
}

/// Runs case `index`; returns its kind, description, result and duration.
fn run_case(corpus: &Corpus, seed: u64, index: u64) -> (Kind, String, CaseResult, Duration) {
    let start = Instant::now();
    let mut rng = Rng::for_case(seed, index);
    let kind = Kind::pick(&mut rng);
    let mut desc = String::new();
    let mut res = CaseResult::default();
    let case_dir = corpus.scratch.path().join(format!("case-{index}"));
    match kind {
        Kind::HeaderMem => header_case(&mut res, corpus, &mut rng, &case_dir, &mut desc),
        Kind::DirOpen | Kind::DirQuant | Kind::DirEval => dir_case(&mut res, corpus, &mut rng, kind, &case_dir, &mut desc),
        Kind::Convert => convert_case(&mut res, corpus, &mut rng, &case_dir, &mut desc),
    }
    if case_dir.exists() {
        let _ = std::fs::remove_dir_all(&case_dir);
    }
    (kind, desc, res, start.elapsed())
}

/// Runs a campaign on `corpus`, printing progress to stderr when `progress`.
pub fn run(corpus: &Corpus, options: &Options, progress: bool) -> Report {
    install_hook();
    let report = Mutex::new(Report::default());
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let indices: Vec<u64> = match options.only {
        Some(i) => vec![i],
        None => (0..options.cases).collect(),
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(options.threads.max(1)).build().unwrap();
    let chunk = 256usize;
    pool.install(|| {
        use rayon::prelude::*;
        indices.par_chunks(chunk).for_each(|block| {
            let mut local = Report::default();
            for &i in block {
                let (kind, desc, res, took) = run_case(corpus, options.seed, i);
                if options.verbose {
                    eprintln!("case {i} [{}] {desc} -> {:?}", kind.name(), res.outcomes);
                }
                *local.kinds.entry(kind.name().to_string()).or_default() += 1;
                for (d, o) in res.outcomes {
                    *local.outcomes.entry((d, o)).or_default() += 1;
                }
                if let Some((driver, msg)) = res.panic {
                    local.panics.push((i, String::new(), desc.clone(), driver, msg));
                }
                local.audited += res.audited;
                for (class, message) in res.vague {
                    let e = local.vague.entry(class.to_string()).or_default();
                    e.0 += 1;
                    if e.1.len() < 400 {
                        e.1.push(format!("case {i}: {desc}\n      {message}"));
                    }
                }
                if let Some(class) = res.difference {
                    let e = local.differences.entry(class).or_default();
                    e.0 += 1;
                    if e.1.len() < 3 {
                        e.1.push(format!("case {i}: {desc}"));
                    }
                }
                match res.agree {
                    Some(true) => local.agree.0 += 1,
                    Some(false) => local.agree.1 += 1,
                    None => {}
                }
                if took > local.max_case.0 {
                    local.max_case = (took, i, format!("[{}] {desc}", kind.name()));
                }
                if took > CASE_BUDGET {
                    local.over_budget.push((i, took, desc));
                }
                local.cases += 1;
            }
            let mut r = report.lock().unwrap();
            merge(&mut r, local);
            let n = done.fetch_add(block.len() as u64, Ordering::Relaxed) + block.len() as u64;
            if progress && n % (chunk as u64 * 200) < block.len() as u64 {
                let s = start.elapsed().as_secs_f64();
                eprintln!(
                    "{n} cases, {:.0} cases/s, {} panic(s), {} difference(s)",
                    n as f64 / s,
                    r.panics.len(),
                    r.differences.values().map(|d| d.0).sum::<u64>()
                );
            }
        });
    });
    let mut r = report.into_inner().unwrap();
    r.elapsed = start.elapsed();
    r.panics.sort();
    r
}

fn merge(into: &mut Report, from: Report) {
    for (k, v) in from.outcomes {
        *into.outcomes.entry(k).or_default() += v;
    }
    for (k, v) in from.kinds {
        *into.kinds.entry(k).or_default() += v;
    }
    into.panics.extend(from.panics);
    for (k, (n, ex)) in from.differences {
        let e = into.differences.entry(k).or_default();
        e.0 += n;
        for x in ex {
            if e.1.len() < 3 {
                e.1.push(x);
            }
        }
    }
    into.audited += from.audited;
    for (k, (n, ex)) in from.vague {
        let e = into.vague.entry(k).or_default();
        e.0 += n;
        for x in ex {
            if e.1.len() < 400 {
                e.1.push(x);
            }
        }
    }
    into.agree.0 += from.agree.0;
    into.agree.1 += from.agree.1;
    into.cases += from.cases;
    if from.max_case.0 > into.max_case.0 {
        into.max_case = from.max_case;
    }
    into.over_budget.extend(from.over_budget);
}

impl Report {
    /// Differences that are not in [`EXPLAINED`].
    pub fn unexplained_differences(&self) -> Vec<(&String, u64)> {
        self.differences.iter().filter(|(k, _)| !EXPLAINED.iter().any(|(e, _)| k.contains(e))).map(|(k, v)| (k, v.0)).collect()
    }

    /// The final table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64();
        s += &format!("cases {}  in {:.1} s  = {:.0} cases/s\n", self.cases, secs, self.cases as f64 / secs.max(1e-9));
        s += &format!("max case time {:.1} ms (case {}: {})\n", self.max_case.0.as_secs_f64() * 1e3, self.max_case.1, self.max_case.2);
        s += &format!("cases over the {} s budget: {}\n\n", CASE_BUDGET.as_secs(), self.over_budget.len());
        s += "kind         cases\n";
        for (k, v) in &self.kinds {
            s += &format!("{k:<12} {v:>9}\n");
        }
        s += "\ndriver             outcome                                   count\n";
        for ((d, o), v) in &self.outcomes {
            s += &format!("{d:<18} {o:<40} {v:>9}\n");
        }
        s += &format!("\nheader acceptance vs safetensors 0.4: both accept {}, both reject {}\n", self.agree.0, self.agree.1);
        if self.differences.is_empty() {
            s += "differences: none\n";
        }
        for (k, (n, ex)) in &self.differences {
            s += &format!("difference: {k}: {n}\n");
            if let Some((_, why)) = EXPLAINED.iter().find(|(e, _)| k.contains(e)) {
                s += &format!("    documented: {why}\n");
            }
            for e in ex {
                s += &format!("    {e}\n");
            }
        }
        s += &format!("\nerror messages audited: {}\n", self.audited);
        if self.vague.is_empty() {
            s += "messages naming no file or leaking parser wording: none\n";
        }
        for (k, (n, ex)) in &self.vague {
            s += &format!("messages that {k}: {n}\n");
            for e in ex {
                s += &format!("    {e}\n");
            }
        }
        s += &format!("\npanics: {}\n", self.panics.len());
        for (i, _, desc, driver, msg) in self.panics.iter().take(50) {
            s += &format!("  case {i} [{driver}] {desc}\n      at {msg}\n");
        }
        for (i, took, desc) in &self.over_budget {
            s += &format!("over budget: case {i} {:.1} s: {desc}\n", took.as_secs_f64());
        }
        s
    }
}
