//! The kernel benchmark behind `ccq bench kernels`: fast matmul speed per format and
//! kernel path.
//!
//! For a `[K, N]` matrix in each format (WINT2, wint4, wint8, dense bf16, dense f32) and
//! activations `[M, K]` (fixed seed), [`run`] times
//! [`kernel::matmul_with`](crate::kernel::matmul_with) (median of repeated calls, after one
//! warm-up) on the current rayon pool at every [`KernelPath`] asked for, one row per distinct
//! kernel actually run ([`kernel_run`]), and beside it, in the same run, a `memcpy` of as many
//! bytes as the format's packed size and the `sgemm` reference: the same shape through the
//! GEMM crate at full precision on f32 weights ([`crate::kernel::sgemm`]), so every figure
//! comes with ratios to the machine's own bandwidth and GEMM.
//!
//! Figures per row: `weights/s = K * N / t` (each call reads every weight once, whatever
//! `M`), `GFLOP/s = 2 * M * K * N / t`, `GB/s = packed bytes / t` (all components).
//!
//! Packed data: the schemes' own encoders on a Gaussian `[K, N / tiles]` slice, repeated
//! across the columns (WINT2 encodes about 1 M weights/s per core; the speed of the kernels
//! does not depend on which values the bytes hold).

use std::fmt;
use std::time::Instant;

use crate::kernel::{kernel_run, matmul_with, sgemm, Input, KernelError, KernelPath, Weights};
use crate::rng::Rng;
use crate::scheme::{Component, Packed, Scheme, SchemeKind, Wint2, Wint4, Wint8};
use crate::Dtype;

/// The label of the sgemm reference rows.
pub const SGEMM: &str = "sgemm";

/// One timed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRow {
    /// Format label: `wint2`, `wint4`, `wint8`, `bf16`, `f32`, or [`SGEMM`].
    pub format: &'static str,
    /// The kernel run (see [`kernel_run`]; `matrixmultiply` for the sgemm rows).
    pub path: &'static str,
    /// Threads of the pool the row was measured on.
    pub threads: usize,
    /// Rows of `x`.
    pub m: usize,
    /// Rows of the weight matrix.
    pub k: usize,
    /// Columns of the weight matrix.
    pub n: usize,
    /// Median seconds per matmul call.
    pub seconds: f64,
    /// Bytes of all stored components.
    pub packed_bytes: usize,
    /// Median seconds of a memcpy of `packed_bytes` (one thread).
    pub memcpy_seconds: f64,
}

impl KernelRow {
    /// `K * N / seconds`.
    pub fn weights_per_s(&self) -> f64 {
        (self.k * self.n) as f64 / self.seconds
    }
    /// `2 * M * K * N / seconds / 1e9`.
    pub fn gflops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64 / self.seconds / 1e9
    }
    /// Packed bytes per second / 1e9.
    pub fn gbs(&self) -> f64 {
        self.packed_bytes as f64 / self.seconds / 1e9
    }
    /// The memcpy's bytes per second / 1e9.
    pub fn memcpy_gbs(&self) -> f64 {
        self.packed_bytes as f64 / self.memcpy_seconds / 1e9
    }
    /// The row as one JSON object (`ccq bench kernels --json`), with the sgemm row of the same
    /// `m` and threads, when given, as `gflops_vs_sgemm`.
    pub fn json(&self, sgemm: Option<&KernelRow>) -> serde_json::Value {
        serde_json::json!({
            "format": self.format,
            "path": self.path,
            "threads": self.threads,
            "m": self.m,
            "k": self.k,
            "n": self.n,
            "seconds": self.seconds,
            "g_weights_per_s": self.weights_per_s() / 1e9,
            "gflops": self.gflops(),
            "packed_bytes": self.packed_bytes,
            "gb_per_s": self.gbs(),
            "memcpy_gb_per_s": self.memcpy_gbs(),
            "gflops_vs_sgemm": sgemm.map(|s| self.gflops() / s.gflops()),
        })
    }
}

/// An owned weight matrix in one format.
pub enum BenchWeights {
    /// A packed scheme output.
    Packed(Packed),
    /// Dense values: dtype, bytes, k, n.
    Dense(Dtype, Vec<u8>, usize, usize),
}

impl BenchWeights {
    /// The kernels' view.
    pub fn weights(&self) -> Weights<'_> {
        match self {
            BenchWeights::Packed(p) => Weights::Packed(p),
            BenchWeights::Dense(dtype, bytes, k, n) => Weights::Dense { dtype: *dtype, bytes, k: *k, n: *n },
        }
    }
    /// Stored bytes.
    pub fn bytes(&self) -> usize {
        match self {
            BenchWeights::Packed(p) => p.components.iter().map(|c| c.bytes.len()).sum(),
            BenchWeights::Dense(_, b, ..) => b.len(),
        }
    }
}

/// Repeats a packed `[k, n]` matrix `reps` times along the columns: `[k, n * reps]`.
fn tile_columns(p: &Packed, reps: usize) -> Packed {
    let components = p
        .components
        .iter()
        .map(|c| {
            let bytes = match (p.kind, c.shape.len()) {
                // WINT2 2-D components are [rows, N] row-major: repeat each row.
                (SchemeKind::Wint2, 2) => c.bytes.chunks_exact(c.bytes.len() / c.shape[0]).flat_map(|r| r.repeat(reps)).collect(),
                // 1-D [N] vectors, and wint8/wint4 quant_weight ([N * bits / 8, K]: whole
                // column groups are contiguous runs): repeat the whole array.
                _ => c.bytes.repeat(reps),
            };
            let mut shape = c.shape.clone();
            let axis = if p.kind == SchemeKind::Wint2 || shape.len() == 1 { shape.len() - 1 } else { 0 };
            shape[axis] *= reps;
            Component { name: c.name, dtype: c.dtype, shape, bytes }
        })
        .collect();
    Packed { kind: p.kind, k: p.k, n: p.n * reps, components }
}

/// The five formats of a fixed-seed Gaussian `[k, n]`, packed ones encoded on `n / tiles`
/// columns and tiled (`tiles` must divide `n`, and `n / tiles` be a multiple of 4).
pub fn fixtures(k: usize, n: usize, tiles: usize, seed: u64) -> Vec<(&'static str, BenchWeights)> {
    let slice = n / tiles;
    let w = Rng::new(seed).normals(k * slice);
    let full = Rng::new(seed ^ 1).normals(k * n);
    let packed = |s: &dyn Scheme| {
        BenchWeights::Packed(tile_columns(&s.encode(&w, k, slice, crate::scheme::Importance::Uniform).expect("valid shape"), tiles))
    };
    vec![
        ("wint2", packed(&Wint2::default())),
        ("wint4", packed(&Wint4::default())),
        ("wint8", packed(&Wint8::default())),
        ("bf16", BenchWeights::Dense(Dtype::BF16, full.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(), k, n)),
        ("f32", BenchWeights::Dense(Dtype::F32, full.iter().flat_map(|v| v.to_le_bytes()).collect(), k, n)),
    ]
}

/// Median of `reps` timings of `f` after one warm-up call.
pub fn median_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Median seconds of a memcpy of `bytes` bytes.
fn memcpy_seconds(bytes: usize, reps: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    median_seconds(reps, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    })
}

/// Times the fast matmul of every fixture at every `m` and every path of `paths` (clamped to
/// the CPU; one row per distinct kernel run) on the current rayon pool, then the sgemm
/// reference of each `m` at the fixtures' shape.
pub fn run(
    fixtures: &[(&'static str, BenchWeights)],
    ms: &[usize],
    paths: &[KernelPath],
    reps: usize,
    seed: u64,
) -> Result<Vec<KernelRow>, KernelError> {
    let mut rows = Vec::new();
    let threads = rayon::current_num_threads();
    for &m in ms {
        for (format, w) in fixtures {
            let weights = w.weights();
            let (k, n) = weights.shape();
            let x = Rng::new(seed).normals(m * k);
            let mut seen = Vec::new();
            for &path in paths {
                let name = kernel_run(&weights, m, path)?;
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name);
                let mut err = None;
                let seconds = median_seconds(reps, || {
                    if let Err(e) = matmul_with(Input::F32(&x), m, &weights, path) {
                        err = Some(e);
                    }
                });
                if let Some(e) = err {
                    return Err(e);
                }
                let bytes = w.bytes();
                rows.push(KernelRow {
                    format,
                    path: name,
                    threads,
                    m,
                    k,
                    n,
                    seconds,
                    packed_bytes: bytes,
                    memcpy_seconds: memcpy_seconds(bytes, reps),
                });
            }
        }
        if let Some((_, w)) = fixtures.first() {
            let (k, n) = w.weights().shape();
            let x = Rng::new(seed).normals(m * k);
            let f32_weights = Rng::new(seed ^ 2).normals(k * n);
            let mut err = None;
            let seconds = median_seconds(reps, || match sgemm(&x, m, &f32_weights, k, n) {
                Ok(y) => drop(std::hint::black_box(y)),
                Err(e) => err = Some(e),
            });
            if let Some(e) = err {
                return Err(e);
            }
            let bytes = 4 * k * n;
            rows.push(KernelRow {
                format: SGEMM,
                path: crate::kernel::SGEMM_CRATE,
                threads,
                m,
                k,
                n,
                seconds,
                packed_bytes: bytes,
                memcpy_seconds: memcpy_seconds(bytes, reps),
            });
        }
    }
    Ok(rows)
}

/// The sgemm reference row of `r`'s `m` and thread count.
pub fn sgemm_row<'a>(rows: &'a [KernelRow], r: &KernelRow) -> Option<&'a KernelRow> {
    rows.iter().find(|b| b.format == SGEMM && b.m == r.m && b.threads == r.threads)
}

/// Prints rows as one table, each with its GFLOP/s over the sgemm reference's of the same
/// `m` and thread count, and its packed bytes' rate over the memcpy's.
pub struct Table<'a>(pub &'a [KernelRow]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "format | path | threads | M | K x N | ms/call | G weights/s | GFLOP/s | packed MB | GB/s packed | memcpy same bytes GB/s | GB/s vs memcpy | GFLOP/s vs sgemm"
        )?;
        for r in self.0 {
            let vs = sgemm_row(self.0, r).map(|b| format!("{:.2}x", r.gflops() / b.gflops())).unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "{} | {} | {} | {} | {}x{} | {:.3} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2}x | {}",
                r.format,
                r.path,
                r.threads,
                r.m,
                r.k,
                r.n,
                r.seconds * 1e3,
                r.weights_per_s() / 1e9,
                r.gflops(),
                r.packed_bytes as f64 / 1e6,
                r.gbs(),
                r.memcpy_gbs(),
                r.gbs() / r.memcpy_gbs(),
                vs
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::dequantize;

    #[test]
    fn tiled_fixtures_repeat_the_slice() {
        let (k, n, tiles) = (128, 16, 2);
        for (format, w) in fixtures(k, n, tiles, 3) {
            let d = dequantize(&w.weights()).unwrap();
            if matches!(format, "bf16" | "f32") {
                continue;
            }
            for row in 0..k {
                assert_eq!(d[row * n..row * n + 8], d[row * n + 8..row * n + 16], "{format} row {row}");
            }
        }
    }

    #[test]
    fn run_reports_every_format_path_and_the_sgemm_reference() {
        let f = fixtures(128, 8, 1, 1);
        let rows = run(&f, &[1, 2], &[KernelPath::Portable], 1, 2).unwrap();
        assert_eq!(rows.len(), 12, "5 formats and sgemm at 2 values of m");
        assert!(rows.iter().filter(|r| r.format != SGEMM).all(|r| r.path == "portable"));
        assert_eq!(rows.iter().filter(|r| r.format == SGEMM).count(), 2);
        assert_eq!(Table(&rows).to_string().lines().count(), 13);
        let all = run(&f, &[1], &KernelPath::available(), 1, 2).unwrap();
        let wint2: Vec<&str> = all.iter().filter(|r| r.format == "wint2").map(|r| r.path).collect();
        assert_eq!(
            wint2.len(),
            KernelPath::available()
                .iter()
                .map(|&p| kernel_run(&f[0].1.weights(), 1, p).unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
        let json = all[0].json(sgemm_row(&all, &all[0]));
        for key in ["format", "path", "threads", "m", "k", "n", "g_weights_per_s", "memcpy_gb_per_s", "gflops_vs_sgemm"] {
            assert!(!json[key].is_null(), "{key}: {json}");
        }
    }
}
