//! WINT2 for the kernels: the per-element reference decode and the tile decoder.
//!
//! One tile is one 64-row group: 16 byte rows of `quant_weight`, one local scale per
//! column. For each column the code map (`code_scale`, `code_zp + 0.5`) and the group scale
//! `s = bf16_rne(ls * super)` are fixed across the tile, so per byte row the decoder computes
//!
//! ```text
//! d[c]          = floor(fma(b[c], code_scale[c], code_zp[c] + 0.5)) as i32
//! tile[4p+j][c] = bf16_rne( f32(((d[c] >> (9 - 3j)) & 63) - 32) * s[c] )
//! ```
//!
//! with `c` running over the block's columns, which are contiguous in `quant_weight`
//! (`[K/4, N]` row-major): plain lane-wise arithmetic that vectorises. `bf16_rne` is the
//! bit form of round-to-nearest-even: add `0x7FFF + lsb` to the f32 bits and clear the low
//! 16 (identical to `half::bf16::from_f32` for every non-NaN input, infinities and overflow
//! to infinity included; a NaN product can only be `0 * inf`, whose quiet NaN it keeps).
//!
//! The instruction-set kernels compute the same weights (bit for bit, but that a zero weight
//! may come out `+0`) on full 32-column blocks whose parameters keep their arithmetic exact
//! (`Wint2View::arch_block`); this file picks them per block ([`TileSource::block_arch`], any
//! `m`) and per run of blocks at `m = 1` ([`TileSource::blocks_m1_arch`]): the AVX-512
//! kernels (`arch/x86.rs`) when the path allows AVX-512 BF16, else the AVX2 + FMA kernels
//! (`arch/avx2.rs`) when it allows AVX2. Other blocks, and the portable path, run the code
//! below.

use super::{KernelPath, KernelView, Tile, TileSource, BLOCK_N};
use crate::scheme::wint2::decode::{code, group_scale, local_scale, weight, window};
use crate::scheme::wint2::GROUP_ROWS;
use crate::scheme::{check_finite, finite_bf16s, Component, SchemeError};

/// A validated packed WINT2 matrix.
pub(crate) struct Wint2View<'a> {
    k: usize,
    n: usize,
    quant_weight: &'a [u8],
    weight_scale: &'a [u8],
    super_scales: Vec<f32>,
    code_scale: Vec<f32>,
    code_zp: Vec<f32>,
}

/// Little-endian f32 values of a component, NaN and infinities rejected.
fn finite_f32s(c: &Component) -> Result<Vec<f32>, SchemeError> {
    let values = c.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    check_finite(c.name, values)
}

impl<'a> Wint2View<'a> {
    /// `parts` are the five components in `COMPONENTS` order, already checked for dtype,
    /// shape and length.
    pub(crate) fn new(k: usize, n: usize, parts: &[&'a Component]) -> Result<Self, SchemeError> {
        Ok(Wint2View {
            k,
            n,
            quant_weight: &parts[0].bytes,
            weight_scale: &parts[1].bytes,
            super_scales: finite_bf16s(parts[2])?,
            code_scale: finite_f32s(parts[3])?,
            code_zp: finite_f32s(parts[4])?,
        })
    }

    /// `W[row][col]` by `docs/wint2-format.md` steps 1-7, fused rounding.
    pub(crate) fn value(&self, row: usize, col: usize) -> f32 {
        let n = self.n;
        let b = self.quant_weight[(row / 4) * n + col];
        let d = code(b, self.code_scale[col], self.code_zp[col]);
        let g = row / GROUP_ROWS;
        let ls = local_scale(self.weight_scale[(g / 2) * n + col], g);
        weight(window(d, row % 4), ls, self.super_scales[col])
    }
}

/// Round to nearest bf16, ties to even, on the bits (see the module documentation); for
/// finite values equal to [`crate::scheme::wint2::decode::bf16_rne`], and it vectorises.
#[inline(always)]
pub(super) fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

impl KernelView for Wint2View<'_> {
    fn value(&self, row: usize, col: usize) -> f32 {
        Wint2View::value(self, row, col)
    }

    fn kernel_run(&self, m: usize, path: KernelPath) -> &'static str {
        match path {
            KernelPath::Portable => "portable",
            _ if m >= super::PACKED_GEMM_MIN_ROWS => "panels+matrixmultiply",
            KernelPath::Avx512Vbmi if m == 1 => "avx512-vbmi",
            KernelPath::Avx512Bf16 | KernelPath::Avx512Vbmi => "avx512-bf16",
            KernelPath::Avx2 | KernelPath::Avx512 => "avx2",
        }
    }
}

impl TileSource for Wint2View<'_> {
    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn decode_tile(&self, t: usize, n0: usize, tile: &mut Tile) {
        let (cs, c) = self.code_maps(n0);
        let s = self.group_scales(t, n0);
        for p in 0..GROUP_ROWS / 4 {
            let d = self.codes(t * (GROUP_ROWS / 4) + p, n0, &cs, &c);
            for j in 0..4 {
                let shift = 9 - 3 * j as u32;
                let row = &mut tile[4 * p + j];
                for l in 0..BLOCK_N {
                    let q = ((d[l] >> shift) & 63) - 32;
                    row[l] = bf16_round(q as f32 * s[l]);
                }
            }
        }
    }

    /// The tile loop with the tile kept in registers: each decoded weight goes straight into
    /// `acc[l] += x[k] * w`, k ascending, exactly the tile path's terms and order.
    #[inline(always)]
    fn block_m1(&self, x: &[f32], n0: usize) -> Option<[f32; BLOCK_N]> {
        let (cs, c) = self.code_maps(n0);
        let mut acc = [0f32; BLOCK_N];
        for (t, xg) in x.chunks_exact(GROUP_ROWS).enumerate() {
            let s = self.group_scales(t, n0);
            for (p, x4) in xg.chunks_exact(4).enumerate() {
                let d = self.codes(t * (GROUP_ROWS / 4) + p, n0, &cs, &c);
                for (j, &xv) in x4.iter().enumerate() {
                    let shift = 9 - 3 * j as u32;
                    for l in 0..BLOCK_N {
                        let q = ((d[l] >> shift) & 63) - 32;
                        acc[l] += xv * bf16_round(q as f32 * s[l]);
                    }
                }
            }
        }
        Some(acc)
    }

    /// The instruction-set kernel for full blocks whose parameters keep it exact, any `m`:
    /// AVX-512 ([`arch::x86`](super::arch::x86)) when the CPU has AVX-512 F + BW + BF16 (it
    /// decodes once per 8 rows of `x`, which still beats the tile path's unfused 8-lane sums
    /// at `m = 64`), else AVX2 + FMA ([`arch::avx2`](super::arch::avx2)).
    fn block_arch(&self, x: &[f32], m: usize, n0: usize, path: KernelPath) -> Option<Vec<[f32; BLOCK_N]>> {
        #[cfg(target_arch = "x86_64")]
        {
            if m == 0 || path < KernelPath::Avx2 {
                return None;
            }
            let b = self.arch_block(n0)?;
            if path >= KernelPath::Avx512Bf16 {
                // SAFETY: the path (clamped to the CPU) has the features; `arch_block` checked
                // the block's invariants.
                Some(unsafe { super::arch::x86::wint2_block_avx512(&b, x, m) })
            } else {
                // SAFETY: the path (clamped to the CPU) has AVX2 and FMA; `arch_block` checked
                // the block's invariants.
                Some(unsafe { super::arch::avx2::wint2_block_avx2(&b, x, m) })
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, m, n0, path);
            None
        }
    }

    /// 256 columns: four cache lines of `quant_weight` per row, one pass of the widest
    /// lookup kernel.
    fn m1_run(&self) -> usize {
        8
    }

    /// Runs of adjacent blocks at `m = 1`: the lookup kernel over 8, 4 and 2 blocks (256,
    /// 128, 64 columns) where the CPU has AVX-512 VBMI and the code maps are in its range,
    /// else the paired AVX-512 kernel, else one block at a time; on CPUs with AVX2 + FMA but
    /// not AVX-512 BF16, the paired AVX2 kernel, else one block at a time (partial blocks
    /// and parameters outside the kernels' range take the portable path).
    fn blocks_m1_arch(&self, x: &[f32], n0: usize, count: usize, path: KernelPath) -> Option<Vec<[f32; BLOCK_N]>> {
        #[cfg(target_arch = "x86_64")]
        {
            if path < KernelPath::Avx2 {
                return None;
            }
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                let first = out.len();
                // The longest run from `first` that the AVX-512 kernels take.
                let run: Vec<_> = (first..count).map_while(|b| self.arch_block(n0 + b * BLOCK_N)).collect();
                if run.is_empty() {
                    out.extend(super::block(self, x, 1, n0 + first * BLOCK_N, path));
                } else if path >= KernelPath::Avx512Bf16 {
                    self.run_m1_avx512(&run, x, path, &mut out);
                } else {
                    run_m1_avx2(&run, x, &mut out);
                }
            }
            Some(out)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, n0, count, path);
            None
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Wint2View<'_> {
    /// `m = 1` over adjacent blocks that all passed [`Self::arch_block`], widest kernel first.
    fn run_m1_avx512(&self, blocks: &[super::arch::x86::Wint2Block<'_>], x: &[f32], path: KernelPath, out: &mut Vec<[f32; BLOCK_N]>) {
        use super::arch::x86;
        let vbmi = path >= KernelPath::Avx512Vbmi;
        let lookup = |run: &[x86::Wint2Block<'_>], len: usize| vbmi && run.len() >= len && run[..len].iter().all(|b| b.lookup_ok);
        let mut rest = blocks;
        // SAFETY: the path (clamped to the CPU) has the AVX-512 features, `arch_block` checked each block's invariants;
        // the blocks are adjacent; VBMI and the lookup range are checked for the lookup kernel.
        unsafe {
            while !rest.is_empty() {
                let take = if lookup(rest, 8) {
                    out.extend(x86::wint2_lines_m1_vbmi::<4>(&rest[..8], x));
                    8
                } else if lookup(rest, 4) {
                    out.extend(x86::wint2_lines_m1_vbmi::<2>(&rest[..4], x));
                    4
                } else if lookup(rest, 2) {
                    out.extend(x86::wint2_lines_m1_vbmi::<1>(&rest[..2], x));
                    2
                } else if rest.len() >= 2 {
                    out.extend(x86::wint2_pair_m1_avx512(&rest[0], &rest[1], x));
                    2
                } else {
                    out.extend(x86::wint2_block_avx512(&rest[0], x, 1));
                    1
                };
                rest = &rest[take..];
            }
        }
    }
}

/// `m = 1` over adjacent blocks that all passed [`Wint2View::arch_block`], on the AVX2 path:
/// pairs of blocks per pass, a last odd block alone.
#[cfg(target_arch = "x86_64")]
fn run_m1_avx2(blocks: &[super::arch::x86::Wint2Block<'_>], x: &[f32], out: &mut Vec<[f32; BLOCK_N]>) {
    use super::arch::avx2;
    let mut pairs = blocks.chunks_exact(2);
    // SAFETY: the path (clamped to the CPU) has AVX2 and FMA (callers check it), `arch_block`
    // checked each block's invariants; the blocks of a pair are adjacent.
    unsafe {
        for pair in pairs.by_ref() {
            out.extend(avx2::wint2_pair_m1_avx2(&pair[0], &pair[1], x));
        }
        for b in pairs.remainder() {
            out.extend(avx2::wint2_block_avx2(b, x, 1));
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<'a> Wint2View<'a> {
    /// Block `[n0, n0 + 32)` for the AVX-512 and AVX2 kernels (callers check the path), if
    /// the block is full and its parameters keep the kernels exact.
    fn arch_block(&self, n0: usize) -> Option<super::arch::x86::Wint2Block<'a>> {
        use super::arch::x86::{wint2_block_ok, wint2_lookup_ok, Wint2Block, WIDTH};
        const _: () = assert!(WIDTH == BLOCK_N);
        if n0 + BLOCK_N > self.n {
            return None;
        }
        let (code_scale, code_c) = self.code_maps(n0);
        let super_scale: [f32; BLOCK_N] = std::array::from_fn(|c| self.super_scales[n0 + c]);
        if !(0..BLOCK_N).all(|c| wint2_block_ok(code_scale[c], code_c[c], super_scale[c])) {
            return None;
        }
        // Invariants: full block (`n0 + 32 <= n`), `k % 128 == 0` (checked shape), the
        // components have their checked sizes.
        let lookup_ok = (0..BLOCK_N).all(|c| wint2_lookup_ok(code_scale[c], code_c[c]));
        Some(Wint2Block {
            quant_weight: self.quant_weight,
            weight_scale: self.weight_scale,
            k: self.k,
            n: self.n,
            n0,
            code_scale,
            code_c,
            super_scale,
            lookup_ok,
        })
    }
}

impl Wint2View<'_> {
    /// Columns `[n0, n0 + BLOCK_N)`'s code maps `(code_scale, code_zp + 0.5)`; padding
    /// columns get `(0, 0)`, so their codes are 0 (and their scales 0: weight 0).
    #[inline(always)]
    fn code_maps(&self, n0: usize) -> ([f32; BLOCK_N], [f32; BLOCK_N]) {
        let w = BLOCK_N.min(self.n - n0);
        let mut cs = [0f32; BLOCK_N];
        let mut c = [0f32; BLOCK_N];
        for j in 0..w {
            cs[j] = self.code_scale[n0 + j];
            c[j] = self.code_zp[n0 + j] + 0.5;
        }
        (cs, c)
    }

    /// Group `t`'s scales `bf16_rne(ls * super)` for the block's columns (0 for padding).
    #[inline(always)]
    fn group_scales(&self, t: usize, n0: usize) -> [f32; BLOCK_N] {
        let n = self.n;
        let w = BLOCK_N.min(n - n0);
        let ls_row = &self.weight_scale[(t / 2) * n + n0..][..w];
        let mut s = [0f32; BLOCK_N];
        for j in 0..w {
            s[j] = group_scale(local_scale(ls_row[j], t), self.super_scales[n0 + j]);
        }
        s
    }

    /// Codes `d` of byte row `p` for the block's columns (padding bytes are 0).
    #[inline(always)]
    fn codes(&self, p: usize, n0: usize, cs: &[f32; BLOCK_N], c: &[f32; BLOCK_N]) -> [i32; BLOCK_N] {
        let n = self.n;
        let w = BLOCK_N.min(n - n0);
        let mut b = [0u8; BLOCK_N];
        b[..w].copy_from_slice(&self.quant_weight[p * n + n0..][..w]);
        let mut d = [0i32; BLOCK_N];
        for l in 0..BLOCK_N {
            d[l] = f32::from(b[l]).mul_add(cs[l], c[l]).floor() as i32;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::wint2::decode::bf16_rne;

    #[test]
    fn bit_rounding_matches_half() {
        let mut x = 1u32;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(x);
            if !v.is_nan() {
                assert_eq!(bf16_round(v).to_bits(), bf16_rne(v).to_bits(), "{v:e}");
            }
        }
        for v in [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1.0 + 1.0 / 256.0] {
            assert_eq!(bf16_round(v).to_bits(), bf16_rne(v).to_bits(), "{v:e}");
        }
    }
}
