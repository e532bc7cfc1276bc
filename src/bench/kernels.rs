//! The kernel benchmark behind `ccq bench kernels`: fast matmul speed per format.
//!
//! For a `[K, N]` matrix in each format (WINT2, wint4, wint8, dense bf16, dense f32) and
//! activations `[M, K]` (fixed seed), [`run`] times [`kernel::matmul`](crate::kernel::matmul)
//! (median of repeated calls, after one warm-up) on the current rayon pool, and beside it,
//! in the same run, a `memcpy` of as many bytes as the format's packed size. The dense f32
//! rows are the f32 matmul baseline (the same tiled kernel on plain f32 weights).
//!
//! WINT2 gets a second row, `wint2-portable`: the same call with the instruction-set
//! kernels turned off ([`crate::kernel::matmul_portable`]), the path CPUs
//! without AVX-512 BF16 run and the old fast path, timed in the same run for a ratio.
//!
//! Figures per row: `weights/s = K * N / t` (each call reads every weight once, whatever
//! `M`), `GFLOP/s = 2 * M * K * N / t`, `GB/s = packed bytes / t` (all components).
//!
//! Packed data: the schemes' own encoders on a Gaussian `[K, N / tiles]` slice, repeated
//! across the columns (WINT2 encodes about 1 M weights/s per core; the speed of the kernels
//! does not depend on which values the bytes hold).

use std::fmt;
use std::time::Instant;

use crate::kernel::{matmul, matmul_portable, Input, KernelError, Weights};
use crate::rng::Rng;
use crate::scheme::{Component, Packed, Scheme, SchemeKind, Wint2, Wint4, Wint8};
use crate::Dtype;

/// One timed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRow {
    /// Format label: `wint2`, `wint2-portable`, `wint4`, `wint8`, `bf16`, `f32`.
    pub format: &'static str,
    /// Rows of `x`.
    pub m: usize,
    /// Rows of the weight matrix.
    pub k: usize,
    /// Columns of the weight matrix.
    pub n: usize,
    /// Threads of the pool the row was measured on.
    pub threads: usize,
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

/// Times the fast matmul of every fixture at every `m` on the current rayon pool.
pub fn run(fixtures: &[(&'static str, BenchWeights)], ms: &[usize], reps: usize, seed: u64) -> Result<Vec<KernelRow>, KernelError> {
    let mut rows = Vec::new();
    for &m in ms {
        for (format, w) in fixtures {
            let paths: &[(&'static str, bool)] =
                if *format == "wint2" { &[("wint2", true), ("wint2-portable", false)] } else { &[(*format, true)] };
            for &(label, arch) in paths {
                let (k, n) = w.weights().shape();
                let x = Rng::new(seed).normals(m * k);
                let mut err = None;
                let seconds = median_seconds(reps, || {
                    let y = if arch { matmul(Input::F32(&x), m, &w.weights()) } else { matmul_portable(Input::F32(&x), m, &w.weights()) };
                    if let Err(e) = y {
                        err = Some(e);
                    }
                });
                if let Some(e) = err {
                    return Err(e);
                }
                let bytes = w.bytes();
                let src = vec![1u8; bytes];
                let mut dst = vec![0u8; bytes];
                let memcpy_seconds = median_seconds(reps, || {
                    dst.copy_from_slice(std::hint::black_box(&src));
                    std::hint::black_box(&mut dst);
                });
                rows.push(KernelRow {
                    format: label,
                    m,
                    k,
                    n,
                    threads: rayon::current_num_threads(),
                    seconds,
                    packed_bytes: bytes,
                    memcpy_seconds,
                });
            }
        }
    }
    Ok(rows)
}

/// Prints rows as one table; `f32 x` is the time relative to the dense f32 row of the same
/// `m` and thread count (the f32 matmul baseline).
pub struct Table<'a>(pub &'a [KernelRow]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format | threads | M | K x N | ms/call | G weights/s | GFLOP/s | packed MB | GB/s packed | memcpy same bytes GB/s | time vs f32 matmul")?;
        for r in self.0 {
            let f32_row = self.0.iter().find(|b| b.format == "f32" && b.m == r.m && b.threads == r.threads);
            let vs = f32_row.map(|b| format!("{:.2}x", r.seconds / b.seconds)).unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "{} | {} | {} | {}x{} | {:.3} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} | {}",
                r.format,
                r.threads,
                r.m,
                r.k,
                r.n,
                r.seconds * 1e3,
                r.weights_per_s() / 1e9,
                r.gflops(),
                r.packed_bytes as f64 / 1e6,
                r.gbs(),
                r.packed_bytes as f64 / r.memcpy_seconds / 1e9,
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
    fn run_reports_every_format() {
        let f = fixtures(128, 8, 1, 1);
        let rows = run(&f, &[1, 2], 1, 2).unwrap();
        assert_eq!(rows.len(), 12);
        assert!(rows.iter().any(|r| r.format == "wint2-portable"));
        assert!(Table(&rows).to_string().lines().count() == 13);
    }
}
