//! `ccq bench`: quality and speed tables of the weight schemes.
//!
//! The measuring lives in the library (`ccq::bench`); this file only gathers the data sets
//! (generated Gaussian fixtures and, when present, real expert matrices) and prints.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ccq::bench::wint2::{self, Dataset, Method, Row, Table};
use ccq::scheme::Effort;

/// Arguments of `ccq bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The scheme to benchmark (only `wint2` today).
    #[arg(value_parser = ["wint2"])]
    pub scheme: String,
    /// Encoder effort levels to measure: default, medium, high or all.
    #[arg(long, default_value = "all")]
    pub effort: String,
    /// Folder of real checkpoints (`ernie45-moe-minilm-pt/` inside); skipped if missing.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Rows of the Gaussian matrix.
    #[arg(long, default_value_t = 4096)]
    pub k: usize,
    /// Columns of the Gaussian matrix.
    #[arg(long, default_value_t = 512)]
    pub n: usize,
    /// Print one row per real matrix instead of pooling them.
    #[arg(long)]
    pub per_matrix: bool,
}

/// Runs `ccq bench wint2` and prints the table.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let efforts: Vec<Effort> = match args.effort.as_str() {
        "all" => Effort::ALL.to_vec(),
        name => vec![Effort::from_name(name).with_context(|| format!("unknown effort {name:?}"))?],
    };
    let ccq_methods: Vec<Method> =
        efforts.iter().map(|&effort| Method::Ccq { effort, importance: false }).collect();
    let mut baselines = ccq_methods.clone();
    baselines.extend([Method::NaiveMap, Method::Rtn]);

    let gauss = wint2::gaussian("gaussian", args.k, args.n, 0x5EED);
    let mut rows = wint2::run(std::slice::from_ref(&gauss), &baselines, args.threads)?;

    let mut weighted = gauss.clone();
    weighted.name = "gaussian, log-normal h".to_string();
    weighted.importance = Some(wint2::log_normal_importance(args.k, 1.0, 0x1A7E));
    let mut with_h = ccq_methods.clone();
    with_h.extend(efforts.iter().map(|&effort| Method::Ccq { effort, importance: true }));
    with_h.push(Method::Rtn);
    rows.extend(wint2::run(&[weighted], &with_h, args.threads)?);

    let real_dir = args.data.join("ernie45-moe-minilm-pt");
    let footer;
    if real_dir.is_dir() {
        let real = real_expert_matrices(&real_dir)?;
        let real_rows = wint2::run(&real, &baselines, args.threads)?;
        footer = real_summary(&real_rows, &efforts);
        if args.per_matrix {
            rows.extend(real_rows);
        } else {
            let label = format!("minilm experts ({})", real.len());
            rows.extend(pool_by_method(&real_rows, &label));
        }
    } else {
        footer = format!("(no real data at {}: skipped)\n", real_dir.display());
    }
    print!("{}", Table(&rows));
    print!("{footer}");
    Ok(())
}

/// One pooled row per method, in first-seen order.
fn pool_by_method(rows: &[Row], label: &str) -> Vec<Row> {
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.method.as_str()) {
            order.push(&r.method);
        }
    }
    order
        .iter()
        .filter_map(|m| {
            let same: Vec<Row> = rows.iter().filter(|r| r.method == *m).cloned().collect();
            wint2::pool(&same, label)
        })
        .collect()
}

/// How many real matrices each ccq effort encodes better than RTN, and the worst ratio.
fn real_summary(rows: &[Row], efforts: &[Effort]) -> String {
    let rtn: BTreeMap<&str, f64> =
        rows.iter().filter(|r| r.method == Method::Rtn.label()).map(|r| (r.dataset.as_str(), r.nmse())).collect();
    let mut out = String::new();
    for &effort in efforts {
        let label = Method::Ccq { effort, importance: false }.label();
        let ratios: Vec<f64> = rows
            .iter()
            .filter(|r| r.method == label)
            .filter_map(|r| rtn.get(r.dataset.as_str()).map(|b| r.nmse() / b))
            .collect();
        let wins = ratios.iter().filter(|&&x| x < 1.0).count();
        let worst = ratios.iter().copied().fold(0.0f64, f64::max);
        out += &format!(
            "{label}: lower NMSE than rtn on {wins}/{} real matrices (worst NMSE ratio {worst:.3})\n",
            ratios.len()
        );
    }
    out
}

/// Largest safetensors header this reader accepts.
const MAX_HEADER: u64 = 100 << 20;

/// The expert matrices (`*.mlp.experts.*` bf16 tensors) of every safetensors file in
/// `dir`, transposed from PyTorch `[out, in]` to logical `[in, out]`; those whose input
/// count is not a multiple of 128 are skipped.
///
/// A small self-contained reader (8-byte header length, JSON header, raw bf16), to be
/// replaced by the library's checkpoint reader.
pub fn real_expert_matrices(dir: &Path) -> anyhow::Result<Vec<Dataset>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        out.extend(read_experts(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    Ok(out)
}

/// The expert matrices of one safetensors file.
fn read_experts(path: &Path) -> anyhow::Result<Vec<Dataset>> {
    let mut file = File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER {
        bail!("header of {header_len} bytes is too large");
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)?;
    let data_start = 8 + header_len;
    let mut names: Vec<&String> = header.keys().filter(|n| n.contains(".mlp.experts.")).collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let info = &header[name];
        if info["dtype"] != "BF16" {
            continue;
        }
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone())?;
        let offsets: [u64; 2] = serde_json::from_value(info["data_offsets"].clone())?;
        let [rows_out, cols_in] = shape[..] else { continue };
        if cols_in % 128 != 0 || offsets[1] - offsets[0] != (rows_out * cols_in * 2) as u64 {
            continue;
        }
        let mut raw = vec![0u8; rows_out * cols_in * 2];
        file.seek(SeekFrom::Start(data_start + offsets[0]))?;
        file.read_exact(&mut raw)?;
        let torch: Vec<f32> = raw.chunks_exact(2).map(|b| bf16_to_f32([b[0], b[1]])).collect();
        // PyTorch [out, in] -> logical [in, out].
        let mut w = vec![0.0f32; torch.len()];
        for o in 0..rows_out {
            for i in 0..cols_in {
                w[i * rows_out + o] = torch[o * cols_in + i];
            }
        }
        out.push(Dataset { name: name.clone(), k: cols_in, n: rows_out, w, importance: None });
    }
    Ok(out)
}

/// bf16 little-endian bytes to f32 (the bf16 is the top half of the f32).
fn bf16_to_f32(b: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
}
