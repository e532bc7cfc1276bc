//! wint8 and wint4 for the kernels: the per-element reference decode and the tile decoder.
//!
//! Both layouts (`docs/wint4-wint8-layout.md`) keep each column's 64-row tile contiguous: for int8,
//! column `n`'s rows `64t .. 64t+63` are the 64 bytes at
//! `(n/2)*2K + t*128 + (n%2)*64`; for int4, the 64 nibbles from nibble address
//! `2*((n/4)*2K + t*128 + (n%4)*32)`, low nibble first. Inside a tile the rows are
//! interleaved: stored position `p` holds row [`ROW_OF_POS_8`]`[p]` (int8:
//! `p = 16g + r`, row `16g + (r even ? r/2 : 8 + r/2)`) or [`ROW_OF_POS_4`]`[p]` (int4:
//! `p = 32h + pp`, row `32h + 8*(pp%4) + pp/4`). The fast path reads tiles in stored order
//! and permutes `x` to match once per call (`xp[64t + p] = x[64t + row_of_pos[p]]`), so
//! decoding is a straight walk over bytes: `tile[p][c] = f32(q) * weight_scale[n0 + c]`.

use super::{KernelPath, KernelView, Tile, TileSource, BLOCK_N, TILE_K};
use crate::scheme::wint4::nibble_address;
use crate::scheme::wint8::byte_index;
use crate::scheme::{finite_bf16s, Component, SchemeError};

/// Row within the tile stored at int8 position `p`.
pub(crate) const ROW_OF_POS_8: [usize; 64] = {
    let mut t = [0usize; 64];
    let mut p = 0;
    while p < 64 {
        let r = p % 16;
        t[p] = (p / 16) * 16 + if r % 2 == 0 { r / 2 } else { 8 + r / 2 };
        p += 1;
    }
    t
};

/// Row within the tile stored at int4 nibble position `p`.
pub(crate) const ROW_OF_POS_4: [usize; 64] = {
    let mut t = [0usize; 64];
    let mut p = 0;
    while p < 64 {
        let pp = p % 32;
        t[p] = (p / 32) * 32 + 8 * (pp % 4) + pp / 4;
        p += 1;
    }
    t
};

/// A validated packed wint8 (`BITS = 8`) or wint4 (`BITS = 4`) matrix.
pub(crate) struct PerChannelView<'a, const BITS: usize> {
    k: usize,
    n: usize,
    quant_weight: &'a [u8],
    weight_scale: Vec<f32>,
    /// Round each `q * s` to bf16 (FastDeploy's weight-only GEMM) instead of keeping the exact
    /// f32 product.
    bf16_product: bool,
}

impl<'a, const BITS: usize> PerChannelView<'a, BITS> {
    /// `parts` are `quant_weight` and `weight_scale`, already checked for dtype, shape and
    /// length.
    pub(crate) fn new(k: usize, n: usize, parts: &[&'a Component], bf16_product: bool) -> Result<Self, SchemeError> {
        Ok(PerChannelView { k, n, quant_weight: &parts[0].bytes, weight_scale: finite_bf16s(parts[1])?, bf16_product })
    }

    /// `q * s`, exact in f32, or rounded to the nearest bf16 (ties to even; the product is
    /// finite) when the view reads FastDeploy's arithmetic.
    #[inline(always)]
    fn product(&self, q: i32, s: f32) -> f32 {
        let v = q as f32 * s;
        if self.bf16_product {
            super::wint2::bf16_round(v)
        } else {
            v
        }
    }

    /// The signed code of element (`row`, `col`) by the layout's closed-form address.
    fn code(&self, row: usize, col: usize) -> i32 {
        if BITS == 8 {
            i32::from(self.quant_weight[byte_index(self.k, row, col)]) - 128
        } else {
            let a = nibble_address(self.k, row, col);
            let b = self.quant_weight[a / 2];
            i32::from(if a.is_multiple_of(2) { b & 15 } else { b >> 4 }) - 8
        }
    }

    /// `W[row][col] = q * weight_scale[col]` (rounded to bf16 when the view reads FastDeploy's
    /// arithmetic).
    pub(crate) fn value(&self, row: usize, col: usize) -> f32 {
        self.product(self.code(row, col), self.weight_scale[col])
    }

    /// `x` (`[m, K]`) with each 64-row tile's columns put in stored order.
    pub(crate) fn permute_x(&self, x: &[f32], m: usize) -> Vec<f32> {
        let order = if BITS == 8 { &ROW_OF_POS_8 } else { &ROW_OF_POS_4 };
        let mut out = vec![0f32; m * self.k];
        for (o, xr) in out.chunks_exact_mut(TILE_K).zip(x.chunks_exact(TILE_K)) {
            for (p, o) in o.iter_mut().enumerate() {
                *o = xr[order[p]];
            }
        }
        out
    }
}

impl<const BITS: usize> KernelView for PerChannelView<'_, BITS> {
    fn value(&self, row: usize, col: usize) -> f32 {
        PerChannelView::value(self, row, col)
    }

    /// The tile driver over the tiles in storage order, `x` permuted to match; at `m = 1`
    /// on AVX2 or wider, the layout's own dot-product kernels ([`PerChannelView::matmul_m1`]).
    fn matmul(&self, x: &[f32], m: usize, path: KernelPath) -> Vec<f32> {
        let xp = self.permute_x(x, m);
        if m == 1 {
            if let Some(y) = self.matmul_m1(&xp, path) {
                return y;
            }
        }
        super::tiles_or_gemm(self, &xp, m, path)
    }

    fn kernel_run(&self, m: usize, path: KernelPath) -> &'static str {
        match (m, path) {
            (_, KernelPath::Portable) => "portable",
            (1, KernelPath::Avx2) => "avx2",
            (1, _) => "avx512",
            (m, _) if m >= super::PACKED_GEMM_MIN_ROWS => "panels+matrixmultiply",
            _ => "portable-avx2",
        }
    }
}

/// Columns per task of the `m = 1` kernels (a multiple of 4, so no int4 column group is cut).
const M1_COLUMNS: usize = 64;

impl<const BITS: usize> PerChannelView<'_, BITS> {
    /// `y = x W` at `m = 1` by the x86 kernels (`arch/x86_per_channel.rs`): each column one
    /// dot product straight through its bytes, rayon over fixed runs of [`M1_COLUMNS`]
    /// columns; `None` where `path` has no such kernel. `xp` is `x` in stored order.
    fn matmul_m1(&self, xp: &[f32], path: KernelPath) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        {
            use super::arch::x86_per_channel::{self as kernels, PerChannelM1};
            use rayon::prelude::*;
            if path < KernelPath::Avx2 {
                return None;
            }
            let split;
            let x = match BITS {
                8 => xp,
                _ => {
                    split = split_nibble_positions(xp);
                    &split
                }
            };
            let w = PerChannelM1 { quant_weight: self.quant_weight, k: self.k, scales: &self.weight_scale, x };
            type Kernel = unsafe fn(&PerChannelM1<'_>, usize, &mut [f32]);
            let kernel: Kernel = match (BITS, path >= KernelPath::Avx512, self.bf16_product) {
                (8, true, false) => kernels::int8_avx512::<false>,
                (8, true, true) => kernels::int8_avx512::<true>,
                (8, false, false) => kernels::int8_avx2::<false>,
                (8, false, true) => kernels::int8_avx2::<true>,
                (_, true, false) => kernels::int4_avx512::<false>,
                (_, true, true) => kernels::int4_avx512::<true>,
                (_, false, false) => kernels::int4_avx2::<false>,
                (_, false, true) => kernels::int4_avx2::<true>,
            };
            let mut y = vec![0f32; self.n];
            y.par_chunks_mut(M1_COLUMNS).enumerate().for_each(|(i, out)| {
                // SAFETY: `path` is clamped to the CPU and is AVX2 + FMA or (for the 512-bit
                // kernels) AVX-512 F + BW; the view is validated (`k % 64 == 0`, `n` a
                // multiple of 2 or 4, so every run of columns holds whole pairs / groups), and
                // `x` holds `k` values.
                unsafe { kernel(&w, i * M1_COLUMNS, out) }
            });
            Some(y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (xp, path);
            None
        }
    }
}

/// `xp` (stored order) with each tile's 32 even positions first, then its 32 odd ones: the
/// low and high nibbles of the int4 kernels' bytes.
fn split_nibble_positions(xp: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; xp.len()];
    for (o, t) in out.chunks_exact_mut(TILE_K).zip(xp.chunks_exact(TILE_K)) {
        for i in 0..TILE_K / 2 {
            o[i] = t[2 * i];
            o[TILE_K / 2 + i] = t[2 * i + 1];
        }
    }
    out
}

impl<const BITS: usize> TileSource for PerChannelView<'_, BITS> {
    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn decode_tile(&self, t: usize, n0: usize, tile: &mut Tile) {
        let (k, n) = (self.k, self.n);
        let w = BLOCK_N.min(n - n0);
        for c in 0..BLOCK_N {
            if c >= w {
                for row in tile.iter_mut() {
                    row[c] = 0.0;
                }
                continue;
            }
            let col = n0 + c;
            let s = self.weight_scale[col];
            if BITS == 8 {
                let base = (col / 2) * 2 * k + t * 128 + (col % 2) * 64;
                let bytes = &self.quant_weight[base..base + 64];
                for (row, &b) in tile.iter_mut().zip(bytes) {
                    row[c] = self.product(i32::from(b) - 128, s);
                }
            } else {
                let base = (col / 4) * 2 * k + t * 128 + (col % 4) * 32;
                let bytes = &self.quant_weight[base..base + 32];
                for (rows, &b) in tile.chunks_exact_mut(2).zip(bytes) {
                    rows[0][c] = self.product(i32::from(b & 15) - 8, s);
                    rows[1][c] = self.product(i32::from(b >> 4) - 8, s);
                }
            }
        }
    }
}
