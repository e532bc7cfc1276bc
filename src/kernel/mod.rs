//! Dequantize and matmul kernels that work straight from packed bytes.
//!
//! This module owns what a packed tensor *means* to a consumer: [`dequantize`] turns one
//! into the logical `[K, N]` matrix, [`matmul`] multiplies activations by it without ever
//! materialising that matrix. Every format ccq writes is covered (WINT2, wint4, wint8, rtn2) plus
//! unquantized dense bf16 / f32 weights, behind one entry type, [`Weights`].
//!
//! # Formulas
//!
//! For activations `x` (`[m, K]`, row-major) and the logical weight `W` (`[K, N]`, row = input,
//! column = output, Paddle orientation):
//!
//! ```text
//! y[i][n] = sum_{k = 0 .. K-1} x[i][k] * W[k][n]        f32 products, f32 accumulation
//! ```
//!
//! where `W[k][n]` is exactly what each scheme's `decode` produces:
//! - WINT2: `docs/wint2-format.md`, steps 1-7, fused rounding (what inference runs); the values
//!   are bf16 numbers, so [`dequantize_bf16`] is exact;
//! - wint8 / wint4: `q * weight_scale[n]` (exact in f32); [`dequantize_bf16`] rounds that f32
//!   to the nearest bf16, ties to even (`half::bf16::from_f32`);
//! - rtn2: `(c - 1.5) * weight_scale[k / 64][n]` (exact in f32, up to 10 significant bits);
//!   [`dequantize_bf16`] rounds it likewise;
//! - dense: the stored value (bf16 widened exactly to f32; f32 rounded to bf16 by
//!   [`dequantize_bf16`], ties to even).
//!
//! # Reference and fast path
//!
//! [`matmul_reference`] is the specification: for each output element it sums
//! `x[i][k] * W[k][n]` for `k = 0, 1, ..., K-1` in that order, one f32 multiply then one f32
//! add per term (no fused multiply-add), decoding each weight from the packed bytes on its
//! own. It equals, bit for bit, "decode with the scheme, then the naive triple loop".
//!
//! [`matmul`] is the fast path. Output columns are cut into blocks of [`BLOCK_N`]; rayon
//! spreads the blocks over threads, and each block walks the K axis in tiles of
//! [`TILE_K`] rows: it decodes the tile of its columns into a small stack buffer (one
//! 64-row WINT2 group shares one local scale per column) and then, for every row of `x`,
//! accumulates `x[i][k] * tile[k][..]` into `BLOCK_N` independent lanes, so the inner loops
//! run across columns and vectorise. The tile is decoded once and reused for all `m` rows;
//! for `m = 1` WINT2 skips the tile and accumulates each decoded weight at once.
//! On x86-64 the same code is also compiled with AVX2 + FMA enabled and picked at run time
//! when the CPU has them (`is_x86_feature_detected!`), else the baseline build runs.
//!
//! WINT2 has instruction-set kernels (`arch/x86.rs`, picked at run time). With AVX-512 F +
//! BW + BF16: 32 columns in two 16-lane vectors, each weight decoded to exactly the format's
//! bf16 value (exact product `q * s`, one hardware round-to-nearest-even to bf16), products
//! summed with FMA into several accumulators, for up to 8 rows of `x` per decode. For
//! `m = 1` (a decode step) with AVX-512 VBMI as well: up to 256 columns per pass, rows in
//! the lanes, each 64-row group transposed in registers and its weights looked up in a
//! 16 KiB table of `bf16_rne(q * (1 + mantissa / 128))` (exact: the group scale's power of
//! two is applied to the group's partial sum). With AVX2 + FMA only (`arch/avx2.rs`): the
//! same decode in four 8-lane vectors per block, the bf16 rounding done exactly by two FMAs,
//! up to 8 rows of `x` per decode, two blocks per pass at `m = 1`. Blocks whose parameters
//! could push an intermediate out of the normal or `i32` range, partial blocks at the right
//! edge, and CPUs without AVX2 use the portable path, which is [`matmul_portable`] when
//! forced.
//!
//! wint8 / wint4 at `m = 1` on AVX2 or AVX-512 (`arch/x86_per_channel.rs`): each column one
//! dot product read straight through its contiguous 64-row tiles. From
//! [`PACKED_GEMM_MIN_ROWS`] rows of `x` on, every packed format is decoded panel by panel
//! into f32 and multiplied by the GEMM (`panel_gemm`).
//!
//! Every path is selectable ([`KernelPath`], [`matmul_with`], `CCQ_KERNEL`), so tests run the
//! narrower ones on a machine that has a wider one.
//!
//! Determinism: each output element is computed by exactly one task, in an order fixed by
//! the shape alone, so results do not depend on the thread count.
//!
//! # Tolerance
//!
//! The fast path may sum in another order than the reference: wint8 and wint4 tiles are
//! visited in storage order (the CUTLASS row interleave inside each 64-row tile, with `x`
//! permuted to match once per call). Any order of an f32 sum of `K` rounded products has
//! error at most `gamma(K+1) * sum_k |x[i][k]| |W[k][n]|` from the exact sum, with
//! `gamma(j) = j u / (1 - j u)` and `u = 2^-24` (Higham, *Accuracy and Stability*, 3.1), so
//! two orders differ by at most
//!
//! ```text
//! |y_fast - y_ref| <= 2 * gamma(K + 1) * sum_k |x[i][k]| * |W[k][n]|     (see [`tolerance`])
//! ```
//!
//! Tests hold every shape to this bound, for [`matmul`] and [`matmul_portable`]. For dense
//! weights below 16 rows of `x` the fast path keeps the reference's order and operations, and
//! tests hold it bit-identical; so does the portable WINT2 path. From 16 rows on, dense
//! weights (bf16 widened exactly to an f32 copy for the call) go through `matrixmultiply`'s
//! GEMM (its own summation order, in parallel over blocks of rows fixed by `m`, so still
//! independent of the thread count, and of the column a weight sits in): the forward pass of
//! calibration and evaluation spends its time there. The AVX-512 WINT2 kernel sums in another
//! order (FMA, per-lane accumulators), so for WINT2 [`matmul`] is held to the bound only;
//! its weights are still exactly the format's.

mod arch;
mod dense;
mod per_channel;
mod rtn2;
mod wint2;

#[cfg(test)]
mod tests;

use half::bf16;
use rayon::prelude::*;

use crate::scheme::{Packed, SchemeError, SchemeKind};
use crate::Dtype;

pub use arch::{KernelPath, KERNEL_ENV};

/// Output columns per block of the fast path: four 8-lane vectors of f32.
pub const BLOCK_N: usize = 32;

/// Rows of K per tile of the fast path (one WINT2 local-scale group, one CUTLASS tile).
pub const TILE_K: usize = 64;

/// A weight matrix as a kernel reads it: packed components, or plain dense values.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// A packed matrix written by a [`Scheme`](crate::scheme::Scheme) (WINT2 is read with the fused rounding).
    Packed(&'a Packed),
    /// A packed matrix read with FastDeploy's weight-only arithmetic: each wint8 / wint4 weight
    /// is `bf16(q * s)` rather than the exact f32 product (the other schemes as
    /// [`Weights::Packed`]: WINT2's values are bf16 numbers already).
    PackedBf16(&'a Packed),
    /// Unquantized weights, logical `[k, n]` row-major, little-endian.
    Dense {
        /// [`Dtype::BF16`] or [`Dtype::F32`].
        dtype: Dtype,
        /// `k * n` values, `bytes[(row * n + col) * size ..]`.
        bytes: &'a [u8],
        /// Rows (inputs).
        k: usize,
        /// Columns (outputs).
        n: usize,
    },
}

impl Weights<'_> {
    /// Logical `(k, n)`.
    pub fn shape(&self) -> (usize, usize) {
        match *self {
            Weights::Packed(p) | Weights::PackedBf16(p) => (p.k, p.n),
            Weights::Dense { k, n, .. } => (k, n),
        }
    }
}

/// Activations `x`, `[m, K]` row-major, as f32 or bf16 (widened exactly to f32).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// f32 activations.
    F32(&'a [f32]),
    /// bf16 activations.
    Bf16(&'a [bf16]),
}

impl<'a> From<&'a [f32]> for Input<'a> {
    fn from(x: &'a [f32]) -> Input<'a> {
        Input::F32(x)
    }
}

impl<'a> From<&'a [bf16]> for Input<'a> {
    fn from(x: &'a [bf16]) -> Input<'a> {
        Input::Bf16(x)
    }
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::F32(x) => x.len(),
            Input::Bf16(x) => x.len(),
        }
    }
}

/// Why a kernel refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The weights are malformed: wrong kind, shape, component dtype or size, a non-finite
    /// scale; for dense weights the component is named `weight`.
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    /// `x` does not hold `m * K` values.
    #[error("activations hold {found} values, expected m * K = {expected}")]
    InputLength {
        /// `m * K` (saturated at `usize::MAX`).
        expected: usize,
        /// `x.len()`.
        found: usize,
    },
}

/// The bound the fast path keeps to: `2 * gamma(k + 1) * abs_dot`, where `abs_dot` is
/// `sum_k |x[i][k]| * |W[k][n]|` and `gamma(j) = j u / (1 - j u)`, `u = 2^-24`.
pub fn tolerance(k: usize, abs_dot: f64) -> f64 {
    let ju = (k as f64 + 1.0) * f64::from(f32::EPSILON) / 2.0;
    2.0 * ju / (1.0 - ju).max(f64::MIN_POSITIVE) * abs_dot
}

/// The logical `[k, n]` matrix, row-major f32, bit-exact with the scheme's `decode` (for
/// dense weights: the stored values).
pub fn dequantize(w: &Weights<'_>) -> Result<Vec<f32>, KernelError> {
    let v = view(w)?;
    let (k, n) = (v.k(), v.n());
    let mut out = vec![0f32; k * n];
    if n > 0 {
        out.par_chunks_mut(n).enumerate().for_each(|(row, o)| {
            for (col, o) in o.iter_mut().enumerate() {
                *o = v.value(row, col);
            }
        });
    }
    Ok(out)
}

/// The logical `[k, n]` matrix as bf16: exact for WINT2 and dense bf16, round to nearest
/// (ties to even) of [`dequantize`]'s f32 for wint8, wint4 and dense f32.
pub fn dequantize_bf16(w: &Weights<'_>) -> Result<Vec<bf16>, KernelError> {
    Ok(dequantize(w)?.into_iter().map(bf16::from_f32).collect())
}

/// `y = x * W` (`[m, N]`, row-major) by the reference loop: the specification (see the
/// module documentation). Slow: it decodes every weight once per row of `x`.
pub fn matmul_reference(x: Input<'_>, m: usize, w: &Weights<'_>) -> Result<Vec<f32>, KernelError> {
    let v = view(w)?;
    let x = activations(x, m, v.k())?;
    let (k, n) = (v.k(), v.n());
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for col in 0..n {
            let mut acc = 0f32;
            for row in 0..k {
                acc += x[i * k + row] * v.value(row, col);
            }
            y[i * n + col] = acc;
        }
    }
    Ok(y)
}

/// `y = x * W` (`[m, N]`, row-major), fast: tiles decoded from the packed bytes, rayon over
/// column blocks, vectorised inner loops, instruction-set kernels picked at run time.
/// Within [`tolerance`] of [`matmul_reference`]; independent of the thread count.
/// It runs the widest kernels of [`KernelPath::default_cap`].
pub fn matmul(x: Input<'_>, m: usize, w: &Weights<'_>) -> Result<Vec<f32>, KernelError> {
    matmul_with(x, m, w, KernelPath::default_cap())
}

/// [`matmul`] with every instruction-set-specific kernel turned off: the portable fast path
/// that CPUs without them run (bit-identical to [`matmul_reference`] for WINT2 and dense
/// weights, within [`tolerance`] for wint8 / wint4). For tests and benchmarks.
pub fn matmul_portable(x: Input<'_>, m: usize, w: &Weights<'_>) -> Result<Vec<f32>, KernelError> {
    matmul_with(x, m, w, KernelPath::Portable)
}

/// [`matmul`] running no kernel wider than `path` (narrowed to what the CPU has): for tests
/// and benchmarks of each path on a machine with a wider one.
pub fn matmul_with(x: Input<'_>, m: usize, w: &Weights<'_>, path: KernelPath) -> Result<Vec<f32>, KernelError> {
    let v = view(w)?;
    let x = activations(x, m, v.k())?;
    Ok(v.matmul(&x, m, path.clamped()))
}

/// The GEMM crate behind dense weights from 16 rows of `x` on, and behind [`sgemm`].
pub const SGEMM_CRATE: &str = "matrixmultiply";

/// `y = x W` for plain f32 weights `w` (`[k, n]` row-major) through the GEMM crate at full
/// precision, threaded as dense weights are: the benchmarks' sgemm reference.
pub fn sgemm(x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Result<Vec<f32>, KernelError> {
    let expected = m.saturating_mul(k);
    if x.len() != expected {
        return Err(KernelError::InputLength { expected, found: x.len() });
    }
    let expected = k.saturating_mul(n);
    if w.len() != expected {
        return Err(KernelError::Scheme(SchemeError::ComponentLength { name: "weight", expected, found: w.len() }));
    }
    Ok(sgemm_f32(x, m, w, k, n))
}

/// [`sgemm`] on checked lengths.
fn sgemm_f32(x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let copy: Vec<u8>;
    let bytes: &[u8] = if cfg!(target_endian = "little") {
        // SAFETY: any initialised memory may be read as bytes; on a little-endian target the
        // bytes of an f32 slice are its little-endian encoding.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), std::mem::size_of_val(w)) }
    } else {
        copy = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        &copy
    };
    match dense::DenseView::<4>::new(bytes, k, n) {
        Ok(view) => view.gemm(x, m),
        Err(_) => unreachable!("callers check that w holds k * n values"),
    }
}

/// The kernel a [`matmul_with`] call of `m` rows at `path` runs on most blocks, named as
/// `ccq bench kernels` prints it: a [`KernelPath`] name for a hand-written kernel,
/// `portable-avx2` for the portable code compiled with AVX2 + FMA, `matrixmultiply` for
/// the GEMM.
pub fn kernel_run(w: &Weights<'_>, m: usize, path: KernelPath) -> Result<&'static str, KernelError> {
    Ok(view(w)?.kernel_run(m, path.clamped()))
}

/// Checks `x` and widens it to f32.
fn activations(x: Input<'_>, m: usize, k: usize) -> Result<Vec<f32>, KernelError> {
    let expected = m.saturating_mul(k);
    if x.len() != expected {
        return Err(KernelError::InputLength { expected, found: x.len() });
    }
    Ok(match x {
        Input::F32(x) => x.to_vec(),
        Input::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
    })
}

/// Validated weights as the kernels read them: each weight on its own (the reference decode)
/// and the fast matmul, which by default runs the tile driver over the view's tiles.
pub(crate) trait KernelView: TileSource {
    /// `W[row][col]`, decoded on its own: the reference decode.
    fn value(&self, row: usize, col: usize) -> f32;

    /// The fast path's `x * W` for `x` in logical row order, with no kernel wider than
    /// `path` (already clamped to the CPU).
    fn matmul(&self, x: &[f32], m: usize, path: KernelPath) -> Vec<f32> {
        tiles_or_gemm(self, x, m, path)
    }

    /// The kernel [`KernelView::matmul`] runs on a full block (see [`kernel_run`]).
    fn kernel_run(&self, m: usize, path: KernelPath) -> &'static str {
        match path {
            KernelPath::Portable => "portable",
            _ if m >= PACKED_GEMM_MIN_ROWS => "panels+matrixmultiply",
            _ => "portable-avx2",
        }
    }
}

/// The kernel view of `w`, its components checked against its scheme: the one place a
/// scheme kind meets its kernel.
fn view<'a>(w: &Weights<'a>) -> Result<Box<dyn KernelView + 'a>, SchemeError> {
    match *w {
        Weights::Packed(p) | Weights::PackedBf16(p) => {
            let bf16_product = matches!(w, Weights::PackedBf16(_));
            let scheme = p.kind.decoder();
            scheme.check_shape(p.k, p.n)?;
            let mut parts = Vec::new();
            for (name, dtype, shape) in scheme.component_layout(p.k, p.n) {
                parts.push(p.expect_component(name, dtype, &shape)?);
            }
            Ok(match p.kind {
                SchemeKind::Wint2 => Box::new(wint2::Wint2View::new(p.k, p.n, &parts)?),
                SchemeKind::Wint8 => Box::new(per_channel::PerChannelView::<8>::new(p.k, p.n, &parts, bf16_product)?),
                SchemeKind::Wint4 => Box::new(per_channel::PerChannelView::<4>::new(p.k, p.n, &parts, bf16_product)?),
                SchemeKind::Rtn2 => Box::new(rtn2::Rtn2View::new(p.k, p.n, &parts)?),
            })
        }
        Weights::Dense { dtype, bytes, k, n } => match dtype {
            Dtype::F32 => Ok(Box::new(dense::DenseView::<4>::new(bytes, k, n)?)),
            Dtype::BF16 => Ok(Box::new(dense::DenseView::<2>::new(bytes, k, n)?)),
            found => Err(SchemeError::ComponentDtype { name: "weight", expected: Dtype::BF16, found }),
        },
    }
}

/// A tile of the fast path: `TILE_K` rows (in the format's storage order) by `BLOCK_N`
/// columns.
pub(crate) type Tile = [[f32; BLOCK_N]; TILE_K];

/// A format the fast path can decode tile by tile.
pub(crate) trait TileSource: Sync {
    /// Rows (inputs).
    fn k(&self) -> usize;
    /// Columns (outputs).
    fn n(&self) -> usize;
    /// Decodes rows `[t * TILE_K, t * TILE_K + rows)` of columns `[n0, n0 + BLOCK_N)` into
    /// `tile` (row `r` of the tile is the format's `r`-th stored row of the tile, which
    /// `x` has been permuted to match); columns past `n` are written as zeros. Must be
    /// `#[inline(always)]` so that it is compiled with the caller's target features.
    fn decode_tile(&self, t: usize, n0: usize, tile: &mut Tile);

    /// For `m = 1`, a fused decode-and-accumulate of columns `[n0, n0 + BLOCK_N)` that never
    /// stores a tile, if the format has one; it must add the same terms in the same order as
    /// the tile path. `#[inline(always)]` like [`TileSource::decode_tile`].
    #[inline(always)]
    fn block_m1(&self, _x: &[f32], _n0: usize) -> Option<[f32; BLOCK_N]> {
        None
    }

    /// An instruction-set-specific kernel for columns `[n0, n0 + BLOCK_N)` and all `m` rows
    /// (`acc[i][c]`), if the format has one, this CPU runs it and the block qualifies; it may
    /// sum in another order (within [`tolerance`]).
    fn block_arch(&self, _x: &[f32], _m: usize, _n0: usize, _path: KernelPath) -> Option<Vec<[f32; BLOCK_N]>> {
        None
    }

    /// For `m = 1`, `count` adjacent blocks from `n0` at once with an instruction-set kernel
    /// (formats whose kernels share one pass over the rows between blocks), or `None`.
    /// Which blocks run together depends on the shape alone, so results stay independent of
    /// the thread count.
    fn blocks_m1_arch(&self, _x: &[f32], _n0: usize, _count: usize, _path: KernelPath) -> Option<Vec<[f32; BLOCK_N]>> {
        None
    }

    /// Adjacent blocks per task at `m = 1`: how many [`TileSource::blocks_m1_arch`] takes at
    /// once (1, the default: one task per block).
    fn m1_run(&self) -> usize {
        1
    }
}

/// From this many rows of `x` on (any path but the portable one), packed weights are
/// multiplied panel by panel through the GEMM ([`panel_gemm`]) rather than by the tile
/// driver: decoding then costs one pass over the weights per call, and the GEMM's blocking
/// reuses them across rows far better than per-row accumulation.
pub(crate) const PACKED_GEMM_MIN_ROWS: usize = 32;

/// Columns per panel of [`panel_gemm`] (a multiple of [`BLOCK_N`]).
const PANEL_COLS: usize = 256;

/// The tile driver, or from [`PACKED_GEMM_MIN_ROWS`] rows on the panel GEMM.
fn tiles_or_gemm<S: TileSource + ?Sized>(s: &S, x: &[f32], m: usize, path: KernelPath) -> Vec<f32> {
    match path > KernelPath::Portable && m >= PACKED_GEMM_MIN_ROWS {
        true => panel_gemm(s, x, m),
        false => run_tiles(s, x, m, path),
    }
}

/// `y = x W` panel by panel: rayon over fixed panels of [`PANEL_COLS`] columns, each decoded
/// tile by tile into an f32 `[K, PANEL_COLS]` matrix (rows in the format's stored order, as
/// `x` is) and multiplied by the GEMM. Each output column belongs to one panel whose
/// boundaries depend on the shape alone, so the result does not depend on the thread count;
/// the weights are the tiles' (the format's, exactly), the sums the GEMM's (within
/// [`tolerance`]).
fn panel_gemm<S: TileSource + ?Sized>(s: &S, x: &[f32], m: usize) -> Vec<f32> {
    let (k, n) = (s.k(), s.n());
    let panels: Vec<Vec<f32>> = (0..n.div_ceil(PANEL_COLS))
        .into_par_iter()
        .map(|p| {
            let c0 = p * PANEL_COLS;
            let width = PANEL_COLS.min(n - c0);
            let mut panel = vec![0f32; k * width];
            let mut tile: Tile = [[0f32; BLOCK_N]; TILE_K];
            for t in 0..k.div_ceil(TILE_K) {
                let rows = TILE_K.min(k - t * TILE_K);
                for b0 in (0..width).step_by(BLOCK_N) {
                    s.decode_tile(t, c0 + b0, &mut tile);
                    let w = BLOCK_N.min(width - b0);
                    for (r, trow) in tile[..rows].iter().enumerate() {
                        let at = (t * TILE_K + r) * width + b0;
                        panel[at..at + w].copy_from_slice(&trow[..w]);
                    }
                }
            }
            sgemm_f32(x, m, &panel, k, width)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (p, panel) in panels.iter().enumerate() {
        let (c0, width) = (p * PANEL_COLS, PANEL_COLS.min(n - p * PANEL_COLS));
        for i in 0..m {
            y[i * n + c0..i * n + c0 + width].copy_from_slice(&panel[i * width..(i + 1) * width]);
        }
    }
    y
}

/// The fast path's driver: one task per column block, results copied into `y` in order.
fn run_tiles<S: TileSource + ?Sized>(s: &S, x: &[f32], m: usize, path: KernelPath) -> Vec<f32> {
    let n = s.n();
    let nb = n.div_ceil(BLOCK_N);
    let run = s.m1_run();
    let blocks: Vec<Vec<[f32; BLOCK_N]>> = if m == 1 && path > KernelPath::Portable && run > 1 {
        // Runs of blocks, for formats with a kernel that shares a pass between them.
        let runs: Vec<Vec<Vec<[f32; BLOCK_N]>>> = (0..nb.div_ceil(run))
            .into_par_iter()
            .map(|i| {
                let (first, end) = (i * run, nb.min((i + 1) * run));
                match s.blocks_m1_arch(x, first * BLOCK_N, end - first, path) {
                    Some(run) => run.into_iter().map(|b| vec![b]).collect(),
                    None => (first..end).map(|b| block(s, x, m, b * BLOCK_N, path)).collect(),
                }
            })
            .collect();
        runs.into_iter().flatten().collect()
    } else {
        (0..nb).into_par_iter().map(|b| block(s, x, m, b * BLOCK_N, path)).collect()
    };
    let mut y = vec![0f32; m * n];
    for (b, acc) in blocks.iter().enumerate() {
        let n0 = b * BLOCK_N;
        let w = BLOCK_N.min(n - n0);
        for (i, a) in acc.iter().enumerate() {
            y[i * n + n0..i * n + n0 + w].copy_from_slice(&a[..w]);
        }
    }
    y
}

/// One column block, with the widest kernel `path` (clamped to the CPU) allows, else
/// portable.
fn block<S: TileSource + ?Sized>(s: &S, x: &[f32], m: usize, n0: usize, path: KernelPath) -> Vec<[f32; BLOCK_N]> {
    if path == KernelPath::Portable {
        return block_impl(s, x, m, n0);
    }
    if let Some(acc) = s.block_arch(x, m, n0, path) {
        return acc;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if path >= KernelPath::Avx2 {
            // SAFETY: `path` is clamped to the CPU, which has the features `block_avx2` is
            // compiled with.
            return unsafe { block_avx2(s, x, m, n0) };
        }
    }
    block_impl(s, x, m, n0)
}

/// [`block_impl`] compiled with AVX2 and FMA (the body is the same Rust code).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<S: TileSource + ?Sized>(s: &S, x: &[f32], m: usize, n0: usize) -> Vec<[f32; BLOCK_N]> {
    block_impl(s, x, m, n0)
}

/// Walks K tile by tile: decode the tile once, then accumulate it into every row's lanes
/// (`acc[i][c] += x[i][k] * tile[k][c]`, k ascending within the tile's stored order).
#[inline(always)]
fn block_impl<S: TileSource + ?Sized>(s: &S, x: &[f32], m: usize, n0: usize) -> Vec<[f32; BLOCK_N]> {
    let k = s.k();
    if m == 1 {
        if let Some(a) = s.block_m1(x, n0) {
            return vec![a];
        }
    }
    let mut acc = vec![[0f32; BLOCK_N]; m];
    let mut tile: Tile = [[0f32; BLOCK_N]; TILE_K];
    for t in 0..k.div_ceil(TILE_K) {
        let k0 = t * TILE_K;
        let rows = TILE_K.min(k - k0);
        s.decode_tile(t, n0, &mut tile);
        for (i, a) in acc.iter_mut().enumerate() {
            let xr = &x[i * k + k0..i * k + k0 + rows];
            let mut lanes = *a;
            for (&xv, trow) in xr.iter().zip(&tile[..rows]) {
                for c in 0..BLOCK_N {
                    lanes[c] += xv * trow[c];
                }
            }
            *a = lanes;
        }
    }
    acc
}
