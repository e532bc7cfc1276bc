//! x86-64 WINT2 kernels for AVX2 + FMA: the instruction-set kernels of CPUs without AVX-512
//! BF16 ([`KernelPath::Avx2`](super::KernelPath::Avx2)), called only after run-time
//! detection.
//!
//! They take the AVX-512 kernels' blocks ([`Wint2Block`]: 32 full columns whose parameters
//! pass [`wint2_block_ok`](super::x86::wint2_block_ok)) and compute the same exact weights
//! with 8-lane vectors: columns in the lanes (four vectors per block, in column order), one
//! pass over the byte rows serving `MR` rows of `x` ([`wint2_block_avx2`]: 8, 4, 2 or 1 rows
//! per decode) or, at `m = 1`, two adjacent blocks ([`wint2_pair_m1_avx2`]).
//!
//! # WINT2, 8 columns of one byte row
//!
//! ```text
//! b    = f32(quant_weight[p][c])                          (vpmovzxbd, vcvtdq2ps: exact)
//! v    = fma(b, code_scale, code_zp + 0.5)                (one rounding, as the format)
//! e    = the code's bits: e & (63 << sh_j) = u_j << sh_j, and the bits of 0x4B000000 set,
//!        u_j = (floor(v) >> (9 - 3j)) & 63,  sh_j = 12 - 3j     (j = 0..3: rows 4p + j)
//! f_j  = f32 of bits e & (63 << sh_j | 0x4B000000) = 2^23 + u_j 2^sh_j           (exact)
//! p_j  = fms(f_j, s 2^-sh_j, s (2^(23 - sh_j) + 32)) = (u_j - 32) s = q_j s       (exact)
//! g_j  = fma(p_j, 2^16, p_j)  = rne((2^16 + 1) p_j)
//! w_j  = fnma(p_j, 2^16, g_j) = g_j - 2^16 p_j = bf16_rne(p_j)                   (exact)
//! acc += x[4p + j] * w_j                                  (FMA, per-lane accumulators)
//! ```
//!
//! with `s = bf16_rne(ls * super)` the column's group scale (bits rounding, once per group).
//!
//! **The code `e`.** Two decodes, both putting bits 0..14 of `d = floor(v)` at bits 3..17
//! (so that every window sits at `sh_j >= 3`) and setting the bits of 0x4B000000 (the
//! exponent field of 2^23), all that the masks keep:
//! - *wide*: `e = (floor(v) as i32) << 3 | 0x4B000000` (`vroundps`, `vcvttps2dq`: exact for
//!   `|v| < 2^30`, the whole [`wint2_block_ok`](super::x86::wint2_block_ok) range);
//! - *narrow*: the bits of the f32 `(v8 - 0.5) + 1.5 * 2^23`, where `v8 = fma(b, 8 code_scale,
//!   8 c) = 8 v` (a power-of-two scaling commutes with the single rounding), for blocks whose
//!   columns all pass [`narrow_ok`], so `|8v| < 2^21`. Rounding is monotone and both
//!   `8 floor(v) - 0.5` and `8 floor(v) + 7.5` are f32, so `r = 8v - 0.5` (rounded) lies
//!   between them; the sum with `1.5 * 2^23` rounds `r` to an integer `N` (its f32 grid there
//!   is 1) and sends the left end to the even `8 floor(v)`. The right end, which would go to
//!   `8 floor(v) + 8`, is never reached: `8v - 0.5` would have to round up to it, but the
//!   difference is exact (0.5 is a multiple of `8v`'s ulp) unless `8v` is negative and the
//!   difference lands in a coarser binade, `-2^t - 0.5 < 8v - 0.5 < -2^t`. For `t >= 0` it
//!   then rounds to at most `-2^t`, below the right end (`-2^t + 7.5` for `t >= 3`, `-0.5`
//!   else); for `-0.5 < 8v < 0` it rounds up to the right end `-0.5` only when
//!   `8v >= -2^-25`, and [`narrow_ok`] asks `code_scale` and `c` to be multiples of 2^-25,
//!   so a negative `v` is at most `-2^-25`. Hence `N` is in `[8 floor(v), 8 floor(v) + 7]`:
//!   its low 22 bits (the mantissa's) hold bits 0..14 of `floor(v)` at 3..17, under the
//!   exponent field 0x4B000000. Two additions instead of a round, a conversion, a shift and
//!   an or.
//!
//! **The product.** `p_j` has at most 14 significant bits (6 of `q`, 8 of `s`), so it is an
//! f32 and the fused multiply-subtract gives it exactly: the constant `s (2^(23 - sh) + 32)`
//! spans at most `27 - sh <= 24` bits, and `s 2^-sh` stays normal (`s >= 2^-96`), as do all
//! nonzero products (the [`wint2_block_ok`](super::x86::wint2_block_ok) range).
//!
//! **The rounding** (Veltkamp's split, with FMA). For `p = M 2^(E-23)` (`M` its 24-bit
//! significand, even and below `2^24 - 2^8` since only its top 14 bits can be set),
//! `(2^16 + 1) p = M 2^(E-7) + p` lies in `[2^(E+16), 2^(E+17))`, where the f32 grid is
//! `2^(E-7)`, bf16's grid for `p`. So `g = 2^16 p + r` with `r` the nearest multiple of
//! `2^(E-7)` to `p`, ties to an even multiple (as `M` is even, `g`'s evenness is `r`'s), and
//! `g - 2^16 p = r = bf16_rne(p)` is exact. Two FMAs and no integer ops; `p = 0` gives `+0`.
//!
//! So each weight is the format's fused-rounding weight bit for bit (a zero weight is `+0`,
//! as in the AVX-512 kernel, which no sum starting from `+0` tells from `-0`); only the
//! order of the f32 sums differs from the reference (per-lane FMA accumulators, several sets
//! at `m = 1`), within [`tolerance`](crate::kernel::tolerance).

use std::arch::x86_64::*;

use super::x86::{Wint2Block, WIDTH};

/// Byte rows of `quant_weight` fetched ahead of use.
const PREFETCH_ROWS: usize = 16;

/// Columns per vector.
const LANES: usize = 8;

/// Vectors per block.
const PER_BLOCK: usize = WIDTH / LANES;

/// Whether a column's code map allows the narrow decode (see the module documentation):
/// `|255 code_scale| + |c| < 2^18` (so `|8v| < 2^21`), and `code_scale` and `c` are multiples
/// of 2^-25 (so no `v` lies in `[-2^-28, 0)`).
pub(crate) fn narrow_ok(code_scale: f32, code_c: f32) -> bool {
    let grid = |v: f32| (f64::from(v) * 2f64.powi(25)).fract() == 0.0;
    255.0 * f64::from(code_scale).abs() + f64::from(code_c).abs() < 2f64.powi(18) && grid(code_scale) && grid(code_c)
}

/// Whether every column of `b` allows the narrow decode.
fn block_narrow(b: &Wint2Block<'_>) -> bool {
    (0..WIDTH).all(|c| narrow_ok(b.code_scale[c], b.code_c[c]))
}

/// `acc[i][c] = sum_k x[i][k] * W[k][n0 + c]` for the `m` rows of `x` (`[m, k]`): one pass
/// over the block's byte rows per 8, 4, 2 or 1 rows of `x`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `b` must satisfy the [`Wint2Block`] invariants and
/// every column [`wint2_block_ok`](super::x86::wint2_block_ok); `x.len() == m * b.k`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn wint2_block_avx2(b: &Wint2Block<'_>, x: &[f32], m: usize) -> Vec<[f32; WIDTH]> {
    debug_assert!(b.n0 + WIDTH <= b.n && b.k.is_multiple_of(64) && x.len() == m * b.k);
    let mut out = vec![[0f32; WIDTH]; m];
    let bs = [b];
    let narrow = block_narrow(b);
    let mut r0 = 0;
    while r0 < m {
        let rows = match m - r0 {
            8.. => 8,
            4..=7 => 4,
            2 | 3 => 2,
            _ => 1,
        };
        let o = out[r0..r0 + rows].as_flattened_mut();
        // SAFETY: same contract as this function; rows `r0 .. r0 + rows <= m`, the block's
        // four vectors.
        unsafe {
            match (rows, narrow) {
                (8, true) => span::<8, 4, 1, 1, true>(&bs, x, r0, o),
                (8, false) => span::<8, 4, 1, 1, false>(&bs, x, r0, o),
                (4, true) => span::<4, 4, 1, 1, true>(&bs, x, r0, o),
                (4, false) => span::<4, 4, 1, 1, false>(&bs, x, r0, o),
                (2, true) => span::<2, 4, 1, 4, true>(&bs, x, r0, o),
                (2, false) => span::<2, 4, 1, 4, false>(&bs, x, r0, o),
                (_, true) => span::<1, 4, 2, 4, true>(&bs, x, r0, o),
                (_, false) => span::<1, 4, 2, 4, false>(&bs, x, r0, o),
            }
        }
        r0 += rows;
    }
    out
}

/// Two adjacent blocks at `m = 1` in one pass over the rows of `quant_weight` (64 columns:
/// one cache line per row when aligned, half the pages per byte of a single block).
///
/// # Safety
/// As [`wint2_block_avx2`] for both blocks, which must be of the same matrix and adjacent
/// (`b1.n0 == b0.n0 + WIDTH`); `x.len() == b0.k`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn wint2_pair_m1_avx2(b0: &Wint2Block<'_>, b1: &Wint2Block<'_>, x: &[f32]) -> [[f32; WIDTH]; 2] {
    debug_assert!(b1.n0 == b0.n0 + WIDTH && x.len() == b0.k);
    let mut o = [[0f32; WIDTH]; 2];
    let bs = [b0, b1];
    let out = o.as_flattened_mut();
    // SAFETY: same contract as this function; both blocks' eight vectors.
    unsafe {
        if block_narrow(b0) && block_narrow(b1) {
            span::<1, 8, 1, 8, true>(&bs, x, 0, out);
        } else {
            span::<1, 8, 1, 8, false>(&bs, x, 0, out);
        }
    }
    o
}

/// The code bits `e` of bytes `b` (as f32) by the wide decode: `floor(fma(b, code_scale, c))
/// as i32` shifted left by 3, under the exponent field 0x4B000000 (exact for `|v| < 2^30`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn code_bits_wide(b: __m256, cs: __m256, c: __m256) -> __m256i {
    let d = _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_fmadd_ps(b, cs, c)));
    _mm256_or_si256(_mm256_slli_epi32::<3>(d), _mm256_set1_epi32(0x4B00_0000))
}

/// The code bits `e` by the narrow decode, from `cs8 = 8 code_scale`, `c8 = 8 c`: the bits of
/// `(fma(b, cs8, c8) - 0.5) + 1.5 * 2^23`, whose bits 3..17 are those of
/// `floor(fma(b, code_scale, c))` at 0..14, under the exponent field 0x4B000000, for code maps
/// that pass [`narrow_ok`] (see the module documentation).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn code_bits_narrow(b: __m256, cs8: __m256, c8: __m256) -> __m256i {
    let r = _mm256_sub_ps(_mm256_fmadd_ps(b, cs8, c8), _mm256_set1_ps(0.5));
    _mm256_castps_si256(_mm256_add_ps(r, _mm256_set1_ps(12_582_912.0)))
}

/// Round to nearest bf16, ties to even, on the bits (finite inputs): the group scales.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn bf16_round_bits(v: __m256) -> __m256 {
    let b = _mm256_castps_si256(v);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb);
    _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(0xFFFF_0000u32 as i32)))
}

/// `bf16_rne(p)` by Veltkamp's split with two FMAs, exact for `p = q s` (zero, or normal with
/// at most 14 significant bits, far from overflow): see the module documentation.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn bf16_round_product(p: __m256) -> __m256 {
    let k = _mm256_set1_ps(65_536.0);
    _mm256_fnmadd_ps(p, k, _mm256_fmadd_ps(p, k, p))
}

/// Rows `r0 .. r0 + MR` of `x` times the first `V` vectors of 8 columns of the adjacent
/// blocks `bs` (`V <= 4 bs.len()`), the vectors taken `VB` at a time over each 64-row group;
/// `NA` accumulator sets (row `4p + j` goes to set `j % NA`). `out` is `[MR][bs.len() *
/// WIDTH]`: row `r`'s sums for the blocks' columns, block after block. `NARROW` picks the
/// decode of the code (every block must then pass [`block_narrow`]).
///
/// # Safety
/// The CPU must support AVX2 and FMA; each block satisfies the [`Wint2Block`] invariants and
/// [`wint2_block_ok`](super::x86::wint2_block_ok), they are of one matrix and adjacent
/// (`bs[i].n0 == bs[0].n0 + i * WIDTH`), `x` holds at least `r0 + MR` rows of `k`, `out`
/// holds `MR * bs.len() * WIDTH` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn span<const MR: usize, const V: usize, const NA: usize, const VB: usize, const NARROW: bool>(
    bs: &[&Wint2Block<'_>],
    x: &[f32],
    r0: usize,
    out: &mut [f32],
) {
    debug_assert!(V <= PER_BLOCK * bs.len() && V.is_multiple_of(VB) && out.len() == MR * bs.len() * WIDTH);
    debug_assert!((0..bs.len()).all(|i| bs[i].n0 == bs[0].n0 + i * WIDTH) && x.len() >= (r0 + MR) * bs[0].k);
    let (k, n, n0) = (bs[0].k, bs[0].n, bs[0].n0);
    // Windows of `e` (the code shifted left by 3): `u_j << sh_j`, `sh_j = 12 - 3j`.
    let pow = [1.0 / 4096.0, 1.0 / 512.0, 1.0 / 64.0, 1.0 / 8.0f32];
    let masks = [63 << 12 | 0x4B00_0000, 63 << 9 | 0x4B00_0000, 63 << 6 | 0x4B00_0000, 63 << 3 | 0x4B00_0000i32];
    // SAFETY (all pointer reads below): byte rows `p < k / 4` and scale rows `g / 2 < k / 128`
    // of the `[.., n]` components, columns `n0 .. n0 + 8 V <= n0 + 32 bs.len() <= n` (the
    // blocks are full and adjacent); `x` rows `r0 .. r0 + MR`; the parameter arrays hold
    // `WIDTH` values per block.
    unsafe {
        // Vector `v`: block `v / 4`, its columns `8 (v % 4) ..`.
        let param = |field: fn(&Wint2Block<'_>) -> *const f32, v: usize, scale: f32| {
            _mm256_mul_ps(_mm256_loadu_ps(field(bs[v / PER_BLOCK]).add(LANES * (v % PER_BLOCK))), _mm256_set1_ps(scale))
        };
        // Narrow: `v8 = fma(b, 8 code_scale, 8 c) = 8 v` (exact scalings).
        let m8 = if NARROW { 8.0 } else { 1.0 };
        let cs: [__m256; V] = std::array::from_fn(|v| param(|b| b.code_scale.as_ptr(), v, m8));
        let cc: [__m256; V] = std::array::from_fn(|v| param(|b| b.code_c.as_ptr(), v, m8));
        let sup: [__m256; V] = std::array::from_fn(|v| param(|b| b.super_scale.as_ptr(), v, 1.0));
        let mut acc = [[[_mm256_setzero_ps(); V]; MR]; NA];
        let xp: [*const f32; MR] = std::array::from_fn(|r| x.as_ptr().add((r0 + r) * k));
        let qw = bs[0].quant_weight.as_ptr().add(n0);
        let ws = bs[0].weight_scale.as_ptr().add(n0);
        for g in 0..k / 64 {
            // Per vector and window: `s 2^-sh_j` and `s (2^(23 - sh_j) + 32)` (exact, see
            // the module documentation).
            let mut sj = [[_mm256_setzero_ps(); V]; 4];
            let mut cj = [[_mm256_setzero_ps(); V]; 4];
            for v in 0..V {
                let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(ws.add((g / 2) * n + LANES * v) as *const __m128i));
                let ls = if g.is_multiple_of(2) { _mm256_srli_epi32::<4>(bytes) } else { _mm256_and_si256(bytes, _mm256_set1_epi32(15)) };
                let s = bf16_round_bits(_mm256_mul_ps(_mm256_cvtepi32_ps(ls), sup[v]));
                let s32 = _mm256_mul_ps(s, _mm256_set1_ps(32.0));
                for j in 0..4 {
                    sj[j][v] = _mm256_mul_ps(s, _mm256_set1_ps(pow[j]));
                    cj[j][v] = _mm256_fmadd_ps(s, _mm256_set1_ps(pow[j] * 8_388_608.0), s32);
                }
            }
            for vo in (0..V).step_by(VB) {
                for pp in 0..16 {
                    let p = g * 16 + pp;
                    let row = qw.add(p * n);
                    // The span reads 8 V bytes per row at a stride of `n`: fetch ahead.
                    if vo == 0 && p + PREFETCH_ROWS < k / 4 {
                        _mm_prefetch::<_MM_HINT_T0>(row.add(PREFETCH_ROWS * n) as *const i8);
                        if V > PER_BLOCK {
                            _mm_prefetch::<_MM_HINT_T0>(row.add(PREFETCH_ROWS * n + LANES * V - 1) as *const i8);
                        }
                    }
                    for v in vo..vo + VB {
                        let b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(row.add(LANES * v) as *const __m128i)));
                        let e = if NARROW { code_bits_narrow(b, cs[v], cc[v]) } else { code_bits_wide(b, cs[v], cc[v]) };
                        for j in 0..4 {
                            let f = _mm256_castsi256_ps(_mm256_and_si256(e, _mm256_set1_epi32(masks[j])));
                            let w = bf16_round_product(_mm256_fmsub_ps(f, sj[j][v], cj[j][v]));
                            for r in 0..MR {
                                let xv = _mm256_broadcast_ss(&*xp[r].add(4 * p + j));
                                let a = &mut acc[j % NA][r][v];
                                *a = _mm256_fmadd_ps(xv, w, *a);
                            }
                        }
                    }
                }
            }
        }
        let stride = bs.len() * WIDTH;
        for r in 0..MR {
            for v in 0..V {
                let mut s = acc[0][r][v];
                for set in &acc[1..] {
                    s = _mm256_add_ps(s, set[r][v]);
                }
                _mm256_storeu_ps(out[r * stride + LANES * v..][..LANES].as_mut_ptr(), s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::wint2::decode::bf16_rne;

    /// The two-FMA rounding equals `bf16_rne` for every product `q s` the kernel forms: every
    /// bf16 group scale in range (both signs) and every `q`.
    #[test]
    fn product_rounding_is_bf16_rne() {
        if !super::super::KernelPath::Avx2.supported() {
            return;
        }
        let mut checked = 0;
        for bits in 0..=u16::MAX {
            let s = half::bf16::from_bits(bits).to_f32();
            if !s.is_finite() || (s != 0.0 && !(2f32.powi(-96)..=15.0 * 2f32.powi(96)).contains(&s.abs())) {
                continue;
            }
            let p: [f32; 64] = std::array::from_fn(|i| (i as f32 - 32.0) * s);
            let mut w = [0f32; 64];
            for (p8, w8) in p.chunks_exact(8).zip(w.chunks_exact_mut(8)) {
                // SAFETY: AVX2 + FMA checked above; 8 values read and written.
                unsafe { _mm256_storeu_ps(w8.as_mut_ptr(), bf16_round_product(_mm256_loadu_ps(p8.as_ptr()))) };
            }
            for i in 0..64 {
                // Equal as values (a zero product comes out +0).
                assert_eq!(w[i], bf16_rne(p[i]), "q {} s {s:e}", i as i32 - 32);
                assert!(w[i] != 0.0 || w[i].is_sign_positive());
            }
            checked += 1;
        }
        assert!(checked > 50_000);
    }

    /// Both decodes give the format's code bits (bits 0..14 of `floor(v)` at 3..17, and the
    /// bits of 0x4B000000 set, all the windows' masks read) for every byte, over code maps on coarse and fine
    /// grids (codes exactly at, just below and just above integers, tiny negative ones on and
    /// off the 2^-25 grid), up to the narrow decode's range for it and to 2^29 for the wide
    /// one.
    #[test]
    fn code_decodes_are_exact() {
        if !super::super::KernelPath::Avx2.supported() {
            return;
        }
        let mut rng = crate::rng::Rng::new(5);
        let mut grid_value = |max_log: i32| {
            let r = rng.next_u64();
            let j = (r % 26) as i32;
            let mag = ((r >> 8) % (1 << 22)) as f32 * 2f32.powi(-j);
            let v = if r >> 40 & 1 == 0 { mag } else { -mag };
            if v.abs() < 2f32.powi(max_log) {
                v
            } else {
                v * 2f32.powi(max_log - 30)
            }
        };
        let (mut narrow, mut total) = (0, 0);
        for i in 0..24_000u32 {
            let (cs, zp) = if i % 6 == 5 {
                // Codes just below 0 for byte b0: v(b0) = b0 cs - 2^-24 ceil(b0 cs 2^24) is in
                // (-2^-24, 0], on a grid of 2^-25 (narrow) or 2^-28 (not).
                let r = grid_value(30).to_bits();
                let odd = (2 * (r % 1000) + 1) as f32;
                let cs = odd * 2f32.powi(if i % 12 == 5 { -25 } else { -28 });
                let b0 = ((r >> 12) % 256) as f32;
                (cs, -0.5 - (b0 * cs * 2f32.powi(24)).ceil() * 2f32.powi(-24))
            } else {
                (grid_value(10) * if i % 3 == 0 { 2f32.powi(-12) } else { 1.0 }, grid_value(17))
            };
            let c = zp + 0.5;
            let bytes: [f32; 256] = std::array::from_fn(|b| b as f32);
            for b8 in bytes.chunks_exact(8) {
                let mut wide = [0i32; 8];
                let mut fine = [0i32; 8];
                // SAFETY: AVX2 + FMA checked above; 8 values read and written.
                unsafe {
                    let b = _mm256_loadu_ps(b8.as_ptr());
                    let e = code_bits_wide(b, _mm256_set1_ps(cs), _mm256_set1_ps(c));
                    _mm256_storeu_si256(wide.as_mut_ptr() as *mut __m256i, e);
                    let e = code_bits_narrow(b, _mm256_set1_ps(8.0 * cs), _mm256_set1_ps(8.0 * c));
                    _mm256_storeu_si256(fine.as_mut_ptr() as *mut __m256i, e);
                }
                for (i, &b) in b8.iter().enumerate() {
                    let d = b.mul_add(cs, c).floor() as i32;
                    let want = (d & 0x7FFF) << 3 | 0x4B00_0000;
                    let got = |e: i32| e & (0x7FFF << 3 | 0x4B00_0000);
                    assert_eq!(got(wide[i]), want, "wide: b {b} cs {cs:e} c {c:e}");
                    if narrow_ok(cs, c) {
                        assert_eq!(got(fine[i]), want, "narrow: b {b} cs {cs:e} c {c:e}");
                    }
                }
            }
            narrow += usize::from(narrow_ok(cs, c));
            total += 1;
        }
        assert!(narrow > total / 4 && narrow < total, "{narrow} of {total} code maps narrow");
    }

    /// Timing, not a check: G weights/s (`K * N / t`) of `matmul_with` on one thread for the
    /// benchmark's 4096 x 4096 WINT2 matrix at `M = 1, 2, 4, 8`, the portable path beside the
    /// AVX2 one and the widest AVX-512 one this CPU has, median of 21 calls each, the paths
    /// taking turns call by call:
    /// `cargo test --release --lib wint2_avx2_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn wint2_avx2_speed() {
        use crate::bench::kernels::{fixtures, BenchWeights};
        use crate::kernel::{matmul_with, Input, KernelPath, Weights};
        let (k, n, reps) = (4096, 4096, 21);
        let fx = fixtures(k, n, 8, 0x5EED);
        let Some((_, BenchWeights::Packed(p))) = fx.iter().find(|(f, _)| *f == "wint2") else { panic!("no wint2 fixture") };
        let wide = [KernelPath::Avx512Vbmi, KernelPath::Avx512Bf16].into_iter().find(|p| p.supported());
        let paths: Vec<KernelPath> = [KernelPath::Portable, KernelPath::Avx2].into_iter().filter(|p| p.supported()).chain(wide).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        pool.install(|| {
            for m in [1, 2, 4, 8] {
                let x = crate::rng::Rng::new(3).normals(m * k);
                let mut t = vec![Vec::new(); paths.len()];
                for rep in 0..=reps {
                    for (i, &path) in paths.iter().enumerate() {
                        let start = std::time::Instant::now();
                        std::hint::black_box(matmul_with(Input::F32(&x), m, &Weights::Packed(p), path).unwrap());
                        if rep > 0 {
                            t[i].push(start.elapsed().as_secs_f64());
                        }
                    }
                }
                let rate: Vec<f64> = t
                    .iter_mut()
                    .map(|t| {
                        t.sort_by(f64::total_cmp);
                        (k * n) as f64 / t[t.len() / 2] / 1e9
                    })
                    .collect();
                let cells: Vec<String> = paths.iter().zip(&rate).map(|(p, r)| format!("{p} {r:.2}")).collect();
                println!("M {m}: {} G weights/s; avx2 / portable {:.1}x", cells.join(", "), rate[1] / rate[0]);
            }
        });
    }

    /// `narrow_ok` at its edges: the range and the 2^-25 grid.
    #[test]
    fn narrow_range() {
        assert!(narrow_ok(128.5, 1000.5));
        assert!(narrow_ok(0.0, 0.5));
        assert!(!narrow_ok(1100.0, 10.5));
        assert!(!narrow_ok(1.0, 2f32.powi(18)));
        assert!(narrow_ok(2f32.powi(-25), 0.5));
        assert!(!narrow_ok(2f32.powi(-26), 0.5));
        assert!(!narrow_ok(1.0, 0.1));
    }
}
