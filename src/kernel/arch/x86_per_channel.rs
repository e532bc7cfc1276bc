//! x86-64 kernels for wint8 and wint4 at `m = 1` (AVX-512 F + BW, and AVX2 + FMA), called
//! only on a [`KernelPath`](super::KernelPath) the CPU has.
//!
//! The layouts (`docs/wint4-wint8-layout.md`) keep each column's 64-row tile contiguous, so
//! one output column is a dot product read straight through its bytes, tile after tile, with
//! the activations permuted once per call into stored order (`xp`, see
//! [`PerChannelView::permute_x`](crate::kernel::per_channel)):
//!
//! ```text
//! int8, column c, tile t:  bytes qw[(c/2)*2K + t*128 + (c%2)*64 ..][..64],      q = b - 128
//! int4, column c, tile t:  bytes qw[(c/4)*2K + t*128 + (c%4)*32 ..][..32],      q = nibble - 8,
//!                          byte i holds stored positions 2i (low nibble) and 2i + 1 (high)
//!
//! exact reading (q * s):        y[c] = s[c] * sum_t sum_p q[t][p] * xp[64t + p]
//! FastDeploy's (bf16(q * s)):   y[c] =        sum_t sum_p bf16_rne(q[t][p] * s[c]) * xp[64t + p]
//! ```
//!
//! `q` is widened exactly to f32 (sign-extending `b ^ 0x80` for int8); products are summed
//! with FMA into four accumulators per column, added in a fixed order at the end, so a
//! column's result depends on the shape alone. In the exact reading the scale is applied once
//! to the sum: each term `q x` is rounded once inside the FMA and the final product once more,
//! so the sum stays within `gamma(K + 1) sum |x| |q s|` of the exact value, and within the
//! module's [`tolerance`](crate::kernel::tolerance) of the reference. With `x` a row of the
//! identity both readings return exactly the dequantized weight.
//!
//! For int4 the caller splits `xp` per tile into the 32 even positions then the 32 odd ones
//! (`xs[64t + i] = xp[64t + 2i]`, `xs[64t + 32 + i] = xp[64t + 2i + 1]`), so low and high
//! nibbles each meet a contiguous run of activations.

use std::arch::x86_64::*;

use super::avx2::bf16_round_bits as bf16_round_256;
use super::x86::bf16_round as bf16_round_512;

/// One wint8 / wint4 matrix as the kernels read it.
pub(crate) struct PerChannelM1<'a> {
    /// The whole validated `quant_weight` (`[N * BITS / 8, K]` bytes).
    pub quant_weight: &'a [u8],
    /// Rows `K` (a multiple of 64).
    pub k: usize,
    /// `weight_scale` as f32, one per column.
    pub scales: &'a [f32],
    /// Activations in stored order (int8), or split per tile into even and odd stored
    /// positions (int4), `K` values.
    pub x: &'a [f32],
}

/// The weight the kernels multiply by: `q` (exact reading, scale applied to the sum) or
/// `bf16_rne(q * s)` (FastDeploy's).
#[inline]
#[target_feature(enable = "avx512f")]
fn weight_512<const ROUND: bool>(q: __m512, s: __m512) -> __m512 {
    if ROUND {
        bf16_round_512(_mm512_mul_ps(q, s))
    } else {
        q
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn weight_256<const ROUND: bool>(q: __m256, s: __m256) -> __m256 {
    if ROUND {
        bf16_round_256(_mm256_mul_ps(q, s))
    } else {
        q
    }
}

/// `y[c]` from a column's four accumulators: `(a0 + a1) + (a2 + a3)`, then the lanes summed
/// in a fixed order, times `s` in the exact reading.
#[inline]
#[target_feature(enable = "avx512f")]
fn finish_512<const ROUND: bool>(a: [__m512; 4], s: f32) -> f32 {
    let sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    if ROUND {
        sum
    } else {
        sum * s
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn finish_256<const ROUND: bool>(a: [__m256; 4], s: f32) -> f32 {
    let v = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let sum = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<1>(h, h)));
    if ROUND {
        sum
    } else {
        sum * s
    }
}

/// int8 columns `[c0, c0 + out.len())` (`c0` and the length even), 16 lanes.
///
/// # Safety
/// The CPU must have AVX-512 F + BW; `w` must be a validated int8 matrix with `k % 64 == 0`,
/// `x.len() == k`, and the columns within `scales`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn int8_avx512<const ROUND: bool>(w: &PerChannelM1<'_>, c0: usize, out: &mut [f32]) {
    let k = w.k;
    let flip = _mm_set1_epi8(-128);
    for (pair, o) in out.chunks_exact_mut(2).enumerate() {
        let c = c0 + 2 * pair;
        let s = [_mm512_set1_ps(w.scales[c]), _mm512_set1_ps(w.scales[c + 1])];
        let mut acc = [[_mm512_setzero_ps(); 4]; 2];
        // SAFETY: column pair `c / 2` holds `2k` bytes from `(c / 2) * 2k`; tile `t < k / 64`
        // reads 128 of them and 64 values of `x`.
        unsafe {
            let pair_bytes = w.quant_weight.as_ptr().add((c / 2) * 2 * k);
            for t in 0..k / 64 {
                let bytes = pair_bytes.add(t * 128);
                let xt = w.x.as_ptr().add(64 * t);
                for j in 0..4 {
                    let xv = _mm512_loadu_ps(xt.add(16 * j));
                    for (col, acc) in acc.iter_mut().enumerate() {
                        let b = _mm_xor_si128(_mm_loadu_si128(bytes.add(64 * col + 16 * j) as *const __m128i), flip);
                        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
                        acc[j] = _mm512_fmadd_ps(weight_512::<ROUND>(q, s[col]), xv, acc[j]);
                    }
                }
            }
        }
        o[0] = finish_512::<ROUND>(acc[0], w.scales[c]);
        o[1] = finish_512::<ROUND>(acc[1], w.scales[c + 1]);
    }
}

/// int8 columns as [`int8_avx512`], 8 lanes.
///
/// # Safety
/// The CPU must have AVX2 + FMA; otherwise as [`int8_avx512`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn int8_avx2<const ROUND: bool>(w: &PerChannelM1<'_>, c0: usize, out: &mut [f32]) {
    let k = w.k;
    let flip = _mm_set1_epi8(-128);
    for (pair, o) in out.chunks_exact_mut(2).enumerate() {
        let c = c0 + 2 * pair;
        let s = [_mm256_set1_ps(w.scales[c]), _mm256_set1_ps(w.scales[c + 1])];
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        // SAFETY: as in `int8_avx512`; 8-byte loads stay within each 64-byte tile.
        unsafe {
            let pair_bytes = w.quant_weight.as_ptr().add((c / 2) * 2 * k);
            for t in 0..k / 64 {
                let bytes = pair_bytes.add(t * 128);
                let xt = w.x.as_ptr().add(64 * t);
                for j in 0..8 {
                    let xv = _mm256_loadu_ps(xt.add(8 * j));
                    for (col, acc) in acc.iter_mut().enumerate() {
                        let b = _mm_xor_si128(_mm_loadl_epi64(bytes.add(64 * col + 8 * j) as *const __m128i), flip);
                        let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                        acc[j % 4] = _mm256_fmadd_ps(weight_256::<ROUND>(q, s[col]), xv, acc[j % 4]);
                    }
                }
            }
        }
        o[0] = finish_256::<ROUND>(acc[0], w.scales[c]);
        o[1] = finish_256::<ROUND>(acc[1], w.scales[c + 1]);
    }
}

/// int4 columns `[c0, c0 + out.len())`, 16 lanes; `w.x` split into even and odd stored
/// positions per tile (module documentation).
///
/// # Safety
/// The CPU must have AVX-512 F + BW; `w` must be a validated int4 matrix with `k % 64 == 0`,
/// `x.len() == k`, and the columns within `scales`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn int4_avx512<const ROUND: bool>(w: &PerChannelM1<'_>, c0: usize, out: &mut [f32]) {
    let k = w.k;
    let (low, eight) = (_mm512_set1_epi32(15), _mm512_set1_epi32(8));
    for (i, o) in out.iter_mut().enumerate() {
        let c = c0 + i;
        let s = _mm512_set1_ps(w.scales[c]);
        let mut acc = [_mm512_setzero_ps(); 4];
        // SAFETY: column group `c / 4` holds `2k` bytes from `(c / 4) * 2k`; tile `t < k / 64`
        // reads 32 of them at `(c % 4) * 32` and 64 values of `x`.
        unsafe {
            let col_bytes = w.quant_weight.as_ptr().add((c / 4) * 2 * k + (c % 4) * 32);
            for t in 0..k / 64 {
                let bytes = col_bytes.add(t * 128);
                let xt = w.x.as_ptr().add(64 * t);
                for j in 0..2 {
                    let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.add(16 * j) as *const __m128i));
                    let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(b, low), eight));
                    let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32::<4>(b), eight));
                    acc[j] = _mm512_fmadd_ps(weight_512::<ROUND>(lo, s), _mm512_loadu_ps(xt.add(16 * j)), acc[j]);
                    acc[2 + j] = _mm512_fmadd_ps(weight_512::<ROUND>(hi, s), _mm512_loadu_ps(xt.add(32 + 16 * j)), acc[2 + j]);
                }
            }
        }
        *o = finish_512::<ROUND>(acc, w.scales[c]);
    }
}

/// int4 columns as [`int4_avx512`], 8 lanes.
///
/// # Safety
/// The CPU must have AVX2 + FMA; otherwise as [`int4_avx512`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn int4_avx2<const ROUND: bool>(w: &PerChannelM1<'_>, c0: usize, out: &mut [f32]) {
    let k = w.k;
    let (low, eight) = (_mm256_set1_epi32(15), _mm256_set1_epi32(8));
    for (i, o) in out.iter_mut().enumerate() {
        let c = c0 + i;
        let s = _mm256_set1_ps(w.scales[c]);
        let mut acc = [_mm256_setzero_ps(); 4];
        // SAFETY: as in `int4_avx512`; 8-byte loads stay within each 32-byte tile run.
        unsafe {
            let col_bytes = w.quant_weight.as_ptr().add((c / 4) * 2 * k + (c % 4) * 32);
            for t in 0..k / 64 {
                let bytes = col_bytes.add(t * 128);
                let xt = w.x.as_ptr().add(64 * t);
                for j in 0..4 {
                    let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.add(8 * j) as *const __m128i));
                    let lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b, low), eight));
                    let hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32::<4>(b), eight));
                    let (a_lo, a_hi) = (j % 2, 2 + j % 2);
                    acc[a_lo] = _mm256_fmadd_ps(weight_256::<ROUND>(lo, s), _mm256_loadu_ps(xt.add(8 * j)), acc[a_lo]);
                    acc[a_hi] = _mm256_fmadd_ps(weight_256::<ROUND>(hi, s), _mm256_loadu_ps(xt.add(32 + 8 * j)), acc[a_hi]);
                }
            }
        }
        *o = finish_256::<ROUND>(acc, w.scales[c]);
    }
}
