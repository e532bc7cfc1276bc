//! x86-64 kernels (AVX-512 F + BW + BF16, and VBMI for the lookup kernel), called only
//! after run-time detection.
//!
//! Two WINT2 kernels live here: the decode kernel below (columns in the lanes, any `m`), and
//! for `m = 1` the lookup kernel [`wint2_lines_m1_vbmi`] (rows in the lanes, weights from
//! a table; about 1.2x faster, documented on the function). So does what the WINT2 kernels
//! of every x86 level share: the block they take ([`Wint2Block`], [`WIDTH`]) and the range of
//! parameters that keeps their arithmetic exact ([`wint2_block_ok`]); the AVX2 + FMA kernels
//! for CPUs without AVX-512 BF16 are in [`super::avx2`].
//!
//! # WINT2, one block of 32 columns
//!
//! The two halves of the block (columns `n0 .. n0 + 16`, `n0 + 16 .. n0 + 32`) sit in two
//! 16-lane vectors; `quant_weight` rows are contiguous across columns, so one 16-byte load
//! per half and byte row gives 16 codes:
//!
//! ```text
//! d      = floor(fma(f32(b), code_scale, code_zp + 0.5))     (one rounding, as the format)
//! a_j    = f32(d & (63 << sh_j))  = u_j * 2^sh_j             (exact, < 2^15)
//! p_j    = fms(a_j, s * 2^-sh_j, 32 s) = (u_j - 32) * s = q_j * s
//! (for sh_j = 9, 6, 3 the conversion is folded away: the bits 0x4B000000 | (d & mask) are
//! the f32 2^23 + a_j, and fms(that, s 2^-sh_j, 2^(23 - sh_j) s + 32 s) is again q_j * s,
//! the constant being exact since it spans at most 26 - sh_j <= 23 bits)
//! w_j    = bf16_rne(p_j)                                     (vcvtne2ps2bf16)
//! ```
//!
//! `q * s` has at most 14 significant bits, so it is an f32 and the fused multiply-subtract
//! produces it exactly (`s * 2^-sh` is exact as long as it stays normal); `w_j` is then the
//! format's fused-rounding weight, bit for bit. The instruction flushes subnormal inputs and
//! outputs to zero and the float-to-int conversion differs from Rust's `as i32` outside
//! `i32` range, so the caller sends here only blocks whose parameters keep every
//! intermediate normal and in range ([`wint2_block_ok`]); other blocks take the portable
//! path.
//!
//! The bf16 pairs are widened back to f32 with `unpack{lo,hi}_epi16(0, w)`, which puts
//! columns in lane order `[0-3, 8-11, 16-19, 24-27]` (lo) and `[4-7, 12-15, 20-23, 28-31]`
//! (hi); accumulators keep that order and are put back in column order at the end. Products
//! `x[k] * w` are accumulated with FMA, in several accumulators for `m = 1` and `2`: the sum
//! order differs from the reference, within [`tolerance`](crate::kernel::tolerance).

use std::arch::x86_64::*;

/// Byte rows of `quant_weight` fetched ahead of use.
const PREFETCH_ROWS: usize = 16;

/// 64-row groups fetched ahead of use by the lookup kernel.
const PREFETCH_GROUPS: usize = 4;

/// Columns per block (two 16-lane vectors).
pub(crate) const WIDTH: usize = 32;

/// One WINT2 column block's inputs: `n0 + WIDTH <= n`, `k % 64 == 0`, and the slices are the
/// whole validated components.
pub(crate) struct Wint2Block<'a> {
    pub quant_weight: &'a [u8],
    pub weight_scale: &'a [u8],
    pub k: usize,
    pub n: usize,
    pub n0: usize,
    /// `code_scale` of the block's columns.
    pub code_scale: [f32; WIDTH],
    /// `code_zp + 0.5` (computed in f32) of the block's columns.
    pub code_c: [f32; WIDTH],
    /// `super_scales` of the block's columns.
    pub super_scale: [f32; WIDTH],
    /// Whether every column also satisfies [`wint2_lookup_ok`] (the VBMI kernel's range).
    pub lookup_ok: bool,
}

/// Whether column parameters keep the AVX-512 and AVX2 kernels exact: `super` is 0 or within
/// `[2^-96, 2^96]` in magnitude (group scales and every nonzero `q * s` stay normal and
/// finite, as do `s * 2^-9`, and the AVX2 kernels' `s * 2^-12`), and `|255 * code_scale| +
/// |c| < 2^30` (codes in `i32` range).
pub(crate) fn wint2_block_ok(code_scale: f32, code_c: f32, super_scale: f32) -> bool {
    let sup = f64::from(super_scale).abs();
    let sup_ok = sup == 0.0 || (sup >= 2f64.powi(-96) && sup <= 2f64.powi(96));
    let code_ok = 255.0 * f64::from(code_scale).abs() + f64::from(code_c).abs() < 2f64.powi(30);
    sup_ok && code_ok
}

/// Whether a column's code map keeps the lookup kernel's codes exact: `|255 code_scale| +
/// |c| < 2^21`, so `|v| < 2^22` for every `v = fma(b, code_scale, c)` and adding `1.5 * 2^23`
/// rounded down leaves `floor(v)` in the low mantissa bits ([`wint2_lines_m1_vbmi`]).
pub(crate) fn wint2_lookup_ok(code_scale: f32, code_c: f32) -> bool {
    255.0 * f64::from(code_scale).abs() + f64::from(code_c).abs() < 2f64.powi(21)
}

/// Two adjacent blocks at `m = 1` in one pass over the rows of `quant_weight` (the kernel for
/// CPUs without VBMI and for code maps outside [`wint2_lookup_ok`]).
///
/// # Safety
/// As [`wint2_block_avx512`], for both blocks (of the same matrix), `x.len() == b0.k`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn wint2_pair_m1_avx512(b0: &Wint2Block<'_>, b1: &Wint2Block<'_>, x: &[f32]) -> [[f32; WIDTH]; 2] {
    let mut o = [[[0f32; WIDTH]; 1]; 2];
    let [o0, o1] = &mut o;
    // SAFETY: same contract as this function.
    unsafe { rows_nb::<1, 2, 2>([b0, b1], x, 0, [o0, o1]) };
    [o[0][0], o[1][0]]
}

/// `bf16_rne((u - 32) * (1 + m / 128))` as bf16 bits, for every 7-bit mantissa `m` (rows)
/// and window value `u` (columns): the weights of a unit group scale, 16 KiB.
///
/// A group scale `s` is a bf16 `±2^e * (1 + m / 128)`, and scaling by a power of two
/// commutes with rounding while nothing leaves the normal range ([`wint2_block_ok`]), so
/// `bf16_rne(q s) = ±2^e * UNIT_WEIGHTS[m][q + 32]`.
fn unit_weights() -> &'static [[u16; 64]; 128] {
    static TABLE: std::sync::OnceLock<Box<[[u16; 64]; 128]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([[0u16; 64]; 128]);
        for (m, row) in t.iter_mut().enumerate() {
            let s = 1.0 + m as f32 / 128.0;
            for (u, w) in row.iter_mut().enumerate() {
                // (u - 32) * s has at most 14 significant bits: exact in f32.
                *w = half::bf16::from_f32((u as f32 - 32.0) * s).to_bits();
            }
        }
        t
    })
}

/// `2 L` adjacent blocks (`L` lines of 64 columns) at `m = 1`, with rows in the vector lanes
/// and the weights looked up in [`unit_weights`] (AVX-512 VBMI).
///
/// Per 64-row group, the 16 byte rows of each line (one cache line each) are transposed in
/// registers so that each column's 16 bytes are contiguous. Then, per column:
///
/// ```text
/// d[p]     = floor(fma(f32(b[p]), code_scale, code_zp + 0.5))       p = 0..16 byte rows
/// u[4p+j]  = (d[p] >> (9 - 3j)) & 63                                 (vpmultishiftqb)
/// w[4p+j]  = UNIT_WEIGHTS[m][u[4p+j]]                                (vpermi2w, bf16)
/// part     = sum over the group's 64 rows of x[k] * w[k]             (16 lanes)
/// acc     += part * (±2^e)                                           (exact scaling)
/// ```
///
/// where `s = bf16_rne(ls * super) = ±2^e (1 + m / 128)` is the column's group scale. The
/// weights are the format's fused-rounding values bit for bit; only the order of the f32
/// sums differs from the reference (within [`tolerance`](crate::kernel::tolerance)).
/// Several lines per pass share each page of `quant_weight`: fewer TLB misses per byte
/// when rows are a page apart.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, BF16 and VBMI; `blocks` must be `2 L` adjacent
/// blocks of the same matrix (`blocks[i].n0 == blocks[0].n0 + i * WIDTH`), each satisfying
/// the [`Wint2Block`] invariants and `lookup_ok`, and `x.len() == blocks[0].k`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vbmi")]
pub(crate) unsafe fn wint2_lines_m1_vbmi<const L: usize>(blocks: &[Wint2Block<'_>], x: &[f32]) -> Vec<[f32; WIDTH]> {
    debug_assert!(blocks.len() == 2 * L && (0..2 * L).all(|i| blocks[i].n0 == blocks[0].n0 + i * WIDTH && blocks[i].lookup_ok));
    let (k, n, n0) = (blocks[0].k, blocks[0].n, blocks[0].n0);
    debug_assert!(k == x.len() && k % 64 == 0);
    // Line `l`, column `c`: block `2 l + c / 32`, its column `c % 32`.
    macro_rules! per_line {
        ($field:ident) => {{
            let v: [[f32; 64]; L] = std::array::from_fn(|l| std::array::from_fn(|c| blocks[2 * l + c / WIDTH].$field[c % WIDTH]));
            v
        }};
    }
    let (code_scale, code_c, super_scale) = (per_line!(code_scale), per_line!(code_c), per_line!(super_scale));
    let table = unit_weights();
    // Window offsets within each 64-bit pair of codes (d[2i] in bits 0..32, d[2i + 1] above):
    // bytes 0-3 take windows j = 0..3 of the low code, bytes 4-7 those of the high one.
    let windows = _mm512_set1_epi64(i64::from_le_bytes([9, 6, 3, 0, 41, 38, 35, 32]));
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); 64]; L];
    // SAFETY (pointer reads): byte rows `p < k / 4` and scale rows `g / 2 < k / 128` of the
    // `[.., n]` components, columns `n0 .. n0 + 64 L <= n`; `x[..k]`; table rows `m < 128`.
    unsafe {
        let qw = blocks[0].quant_weight.as_ptr().add(n0);
        let ws = blocks[0].weight_scale.as_ptr().add(n0);
        let group = |g: usize| -> [[__m512i; 16]; L] {
            std::array::from_fn(|l| {
                transpose_16x64(std::array::from_fn(|p| _mm512_loadu_si512(qw.add((16 * g + p) * n + 64 * l) as *const _)))
            })
        };
        for g in 0..k / 64 {
            let columns = group(g);
            // xr[r] lane i = x[64 g + 4 i + r]: the order the lookups produce rows in.
            let xg: [f32; 64] = std::array::from_fn(|t| x[64 * g + 4 * (t % 16) + t / 16]);
            let xr: [__m512; 4] = std::array::from_fn(|r| _mm512_loadu_ps(xg.as_ptr().add(16 * r)));
            for l in 0..L {
                let (mantissa, scale) = group_scale_parts(ws.add((g / 2) * n + 64 * l), g, &super_scale[l]);
                let bytes = columns[l].as_ptr() as *const u8;
                let (cs, cc, acc) = (&code_scale[l], &code_c[l], &mut acc[l]);
                // A three-stage software pipeline over the columns: windows two columns
                // ahead of the sums, lookups one ahead. Column c = 16 L + z sits in 128-bit
                // lane L of transposed register z.
                let windows_of = |c: usize| {
                    let d = codes_low(bytes.add(64 * (c % 16) + 16 * (c / 16)), _mm512_set1_ps(cs[c]), _mm512_set1_ps(cc[c]));
                    _mm512_multishift_epi64_epi8(windows, d)
                };
                // Even bytes of u are windows j = 0, 2 (rows 4i and 4i + 2 of dword lane i
                // after the lookup); odd bytes, shifted down, j = 1, 3 (rows 4i + 1, 4i + 3).
                let lookup = |c: usize, u: __m512i| {
                    let t = table[mantissa[c] as usize & 127].as_ptr() as *const __m512i;
                    let (t0, t1) = (_mm512_loadu_si512(t as *const _), _mm512_loadu_si512(t.add(1) as *const _));
                    (_mm512_permutex2var_epi16(t0, u, t1), _mm512_permutex2var_epi16(t0, _mm512_srli_epi16::<8>(u), t1))
                };
                let mut u_next = windows_of(1);
                let mut w_next = lookup(0, windows_of(0));
                for c in 0..64 {
                    // One row of group g + PREFETCH_GROUPS per 4 columns: well ahead, spread out.
                    if c % 4 == 0 && g + PREFETCH_GROUPS < k / 64 {
                        _mm_prefetch::<_MM_HINT_T1>(qw.add((16 * (g + PREFETCH_GROUPS) + c / 4) * n + 64 * l) as *const i8);
                    }
                    let (wa, wb) = w_next;
                    if c + 1 < 64 {
                        w_next = lookup(c + 1, u_next);
                    }
                    if c + 2 < 64 {
                        u_next = windows_of(c + 2);
                    }
                    let mut part = _mm512_mul_ps(xr[0], _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wa)));
                    part = _mm512_fmadd_ps(xr[2], _mm512_castsi512_ps(_mm512_and_si512(wa, high)), part);
                    part = _mm512_fmadd_ps(xr[1], _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wb)), part);
                    part = _mm512_fmadd_ps(xr[3], _mm512_castsi512_ps(_mm512_and_si512(wb, high)), part);
                    acc[c] = _mm512_fmadd_ps(part, _mm512_set1_ps(scale[c]), acc[c]);
                }
            }
        }
    }
    (0..2 * L).map(|b| std::array::from_fn(|c| _mm512_reduce_add_ps(acc[b / 2][WIDTH * (b % 2) + c]))).collect()
}

/// Transposes 16 rows of 64 bytes: in the result, 128-bit lane `L` of register `z` holds
/// column `16 L + z` (its 16 bytes in row order). Four rounds of in-lane unpacks, each
/// doubling the run of one column's bytes (1, 2, 4, 8 rows -> 2, 4, 8, 16).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn transpose_16x64(r: [__m512i; 16]) -> [__m512i; 16] {
    // t1[8h + a]: rows 2a, 2a + 1 of lane columns 8h .. 8h + 8.
    let t1: [__m512i; 16] = std::array::from_fn(|i| {
        let (h, a) = (i / 8, i % 8);
        if h == 0 {
            _mm512_unpacklo_epi8(r[2 * a], r[2 * a + 1])
        } else {
            _mm512_unpackhi_epi8(r[2 * a], r[2 * a + 1])
        }
    });
    // t2[4 cg + b]: rows 4b .. 4b + 4 of lane columns 4cg .. 4cg + 4.
    let t2: [__m512i; 16] = std::array::from_fn(|i| {
        let (cg, b) = (i / 4, i % 4);
        let (x, y) = (t1[8 * (cg / 2) + 2 * b], t1[8 * (cg / 2) + 2 * b + 1]);
        if cg % 2 == 0 {
            _mm512_unpacklo_epi16(x, y)
        } else {
            _mm512_unpackhi_epi16(x, y)
        }
    });
    // t3[2 cp + rb]: rows 8rb .. 8rb + 8 of lane columns 2cp, 2cp + 1.
    let t3: [__m512i; 16] = std::array::from_fn(|i| {
        let (cp, rb) = (i / 2, i % 2);
        let (x, y) = (t2[4 * (cp / 2) + 2 * rb], t2[4 * (cp / 2) + 2 * rb + 1]);
        if cp % 2 == 0 {
            _mm512_unpacklo_epi32(x, y)
        } else {
            _mm512_unpackhi_epi32(x, y)
        }
    });
    // t4[z]: rows 0 .. 16 of lane column z.
    std::array::from_fn(|z| {
        let (x, y) = (t3[2 * (z / 2)], t3[2 * (z / 2) + 1]);
        if z % 2 == 0 {
            _mm512_unpacklo_epi64(x, y)
        } else {
            _mm512_unpackhi_epi64(x, y)
        }
    })
}

/// Group `g`'s scales `s = bf16_rne(ls * super)` of 64 columns split as `s = scale *
/// (1 + mantissa / 128)`: `mantissa` the 7 stored bits, `scale` the sign and exponent
/// (`±2^e`, or 0 when `s` is 0).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn group_scale_parts(ws: *const u8, g: usize, sup: &[f32; 64]) -> ([u32; 64], [f32; 64]) {
    let mut mantissa = [0u32; 64];
    let mut scale = [0f32; 64];
    for h in 0..4 {
        // SAFETY: the caller guarantees 64 readable bytes at `ws`.
        let s = _mm512_castps_si512(unsafe { group_scales(ws.add(16 * h), g, _mm512_loadu_ps(sup.as_ptr().add(16 * h))) });
        let m = _mm512_and_si512(_mm512_srli_epi32::<16>(s), _mm512_set1_epi32(0x7F));
        let e = _mm512_and_si512(s, _mm512_set1_epi32(0xFF80_0000u32 as i32));
        // SAFETY: 16 lanes into arrays of 64 at 16 h.
        unsafe {
            _mm512_storeu_si512(mantissa.as_mut_ptr().add(16 * h) as *mut _, m);
            _mm512_storeu_si512(scale.as_mut_ptr().add(16 * h) as *mut _, e);
        }
    }
    (mantissa, scale)
}

/// `acc[i][c] = sum_k x[i][k] * W[k][n0 + c]` for the `m` rows of `x` (`[m, k]`).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and BF16; `b` must satisfy the [`Wint2Block`]
/// invariants, `x.len() == m * b.k`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn wint2_block_avx512(b: &Wint2Block<'_>, x: &[f32], m: usize) -> Vec<[f32; WIDTH]> {
    debug_assert!(b.n0 + WIDTH <= b.n && b.k.is_multiple_of(64) && x.len() == m * b.k);
    let mut out = vec![[0f32; WIDTH]; m];
    let mut r0 = 0;
    while r0 < m {
        let rest = m - r0;
        let o = &mut out[r0..];
        // SAFETY: same contract as this function.
        unsafe {
            if rest >= 8 {
                rows::<8, 1>(b, x, r0, o);
                r0 += 8;
            } else if rest >= 4 {
                rows::<4, 1>(b, x, r0, o);
                r0 += 4;
            } else if rest >= 2 {
                rows::<2, 2>(b, x, r0, o);
                r0 += 2;
            } else {
                rows::<1, 4>(b, x, r0, o);
                r0 += 1;
            }
        }
    }
    out
}

/// Round to nearest bf16, ties to even, on the bits (finite inputs).
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn bf16_round(v: __m512) -> __m512 {
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb);
    _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(0xFFFF_0000u32 as i32)))
}

/// `v = fma(f32(b), code_scale, c)` of the 16 bytes at `p` (one rounding, as the format).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn code_values(p: *const u8, cs: __m512, c: __m512) -> __m512 {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let bytes = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) });
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(bytes), cs, c)
}

/// Codes `floor(v)` of the 16 bytes at `p` (16 columns of one byte row).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn codes(p: *const u8, cs: __m512, c: __m512) -> __m512i {
    // SAFETY: the caller's contract.
    _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(unsafe { code_values(p, cs, c) })
}

/// Codes of the 16 bytes at `p` (one column's byte rows) as the bits of the f32
/// `1.5 * 2^23 + floor(v)`, by an addition rounded down: while `|v| < 2^22`
/// ([`wint2_lookup_ok`]) its low 22 bits are `floor(v) mod 2^22`, so bits 0..14, all the
/// windows read, are those of the format's code.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn codes_low(p: *const u8, cs: __m512, c: __m512) -> __m512i {
    // SAFETY: the caller's contract.
    let v = unsafe { code_values(p, cs, c) };
    _mm512_castps_si512(_mm512_add_round_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(v, _mm512_set1_ps(12_582_912.0)))
}

/// Group scales `bf16_rne(ls * super)` of 16 columns from their 16 `weight_scale` bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn group_scales(p: *const u8, g: usize, sup: __m512) -> __m512 {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let bytes = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) });
    let ls = if g.is_multiple_of(2) { _mm512_srli_epi32::<4>(bytes) } else { _mm512_and_si512(bytes, _mm512_set1_epi32(15)) };
    bf16_round(_mm512_mul_ps(_mm512_cvtepi32_ps(ls), sup))
}

/// `MR` rows of `x` starting at `r0`, `NA` accumulator sets (row `4p + j` goes to set
/// `j % NA`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rows<const MR: usize, const NA: usize>(b: &Wint2Block<'_>, x: &[f32], r0: usize, out: &mut [[f32; WIDTH]]) {
    // SAFETY: same contract.
    unsafe { rows_nb::<MR, NA, 1>([b], x, r0, [out]) }
}

/// [`rows`] over `NB` blocks of the same matrix at once (adjacent blocks share cache lines
/// and pages of `quant_weight`: one pass over its rows serves them all).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rows_nb<const MR: usize, const NA: usize, const NB: usize>(
    bs: [&Wint2Block<'_>; NB],
    x: &[f32],
    r0: usize,
    outs: [&mut [[f32; WIDTH]]; NB],
) {
    let (k, n) = (bs[0].k, bs[0].n);
    // SAFETY (all pointer reads below): byte rows `p < k / 4` and scale rows `g / 2 < k / 128`
    // of `[.., n]` matrices, columns `n0 .. n0 + 32 <= n`; x rows `r0 .. r0 + MR <= m`.
    unsafe {
        let cs: [[__m512; 2]; NB] =
            std::array::from_fn(|i| [_mm512_loadu_ps(bs[i].code_scale.as_ptr()), _mm512_loadu_ps(bs[i].code_scale.as_ptr().add(16))]);
        let cc: [[__m512; 2]; NB] =
            std::array::from_fn(|i| [_mm512_loadu_ps(bs[i].code_c.as_ptr()), _mm512_loadu_ps(bs[i].code_c.as_ptr().add(16))]);
        let sup: [[__m512; 2]; NB] =
            std::array::from_fn(|i| [_mm512_loadu_ps(bs[i].super_scale.as_ptr()), _mm512_loadu_ps(bs[i].super_scale.as_ptr().add(16))]);
        let zero = _mm512_setzero_si512();
        let magic = _mm512_set1_epi32(0x4B00_0000);
        let pow = [1.0 / 512.0, 1.0 / 64.0, 1.0 / 8.0, 1.0f32];
        let masks = [63 << 9, 63 << 6, 63 << 3, 63i32];
        let mut acc = [[[[_mm512_setzero_ps(); 2]; MR]; NA]; NB];
        let xp: [*const f32; MR] = std::array::from_fn(|r| x.as_ptr().add((r0 + r) * k));
        for g in 0..k / 64 {
            let mut sj = [[[_mm512_setzero_ps(); 2]; 4]; NB];
            let mut s32 = [[_mm512_setzero_ps(); 2]; NB];
            let mut cj = [[[_mm512_setzero_ps(); 2]; 3]; NB];
            for nb in 0..NB {
                let ws = bs[nb].weight_scale.as_ptr().add((g / 2) * n + bs[nb].n0);
                let s = [group_scales(ws, g, sup[nb][0]), group_scales(ws.add(16), g, sup[nb][1])];
                s32[nb] = [_mm512_mul_ps(s[0], _mm512_set1_ps(32.0)), _mm512_mul_ps(s[1], _mm512_set1_ps(32.0))];
                sj[nb] = std::array::from_fn(|j| {
                    let f = _mm512_set1_ps(pow[j]);
                    [_mm512_mul_ps(s[0], f), _mm512_mul_ps(s[1], f)]
                });
                // `2^(23 - sh) s + 32 s`: at most 26 - sh <= 23 significant bits for sh >= 3,
                // so exact (one rounding of an exact fma result), and
                // `(2^23 + u 2^sh) s 2^-sh - it` is `(u - 32) s` exactly.
                cj[nb] = std::array::from_fn(|j| {
                    let f = _mm512_set1_ps(pow[j] * 8_388_608.0);
                    [_mm512_fmadd_ps(s[0], f, s32[nb][0]), _mm512_fmadd_ps(s[1], f, s32[nb][1])]
                });
            }
            for pp in 0..16 {
                let p = g * 16 + pp;
                for nb in 0..NB {
                    let (sj, s32, cj, cs, cc) = (&sj[nb], &s32[nb], &cj[nb], &cs[nb], &cc[nb]);
                    let acc = &mut acc[nb];
                    let row = bs[nb].quant_weight.as_ptr().add(p * n + bs[nb].n0);
                    // The block reads 32 bytes per row at a stride of `n`: fetch ahead.
                    if p + PREFETCH_ROWS < k / 4 {
                        _mm_prefetch::<_MM_HINT_T0>(row.add(PREFETCH_ROWS * n) as *const i8);
                    }
                    let d = [codes(row, cs[0], cc[0]), codes(row.add(16), cs[1], cc[1])];
                    for j in 0..4 {
                        let mask = _mm512_set1_epi32(masks[j]);
                        let (w0, w1) = if j < 3 {
                            // Bits `2^23 | u << sh` are the f32 `2^23 + u 2^sh` (one ternary op).
                            let f0 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xEA>(d[0], mask, magic));
                            let f1 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xEA>(d[1], mask, magic));
                            (_mm512_fmsub_ps(f0, sj[j][0], cj[j][0]), _mm512_fmsub_ps(f1, sj[j][1], cj[j][1]))
                        } else {
                            let a0 = _mm512_cvtepi32_ps(_mm512_and_si512(d[0], mask));
                            let a1 = _mm512_cvtepi32_ps(_mm512_and_si512(d[1], mask));
                            (_mm512_fmsub_ps(a0, sj[j][0], s32[0]), _mm512_fmsub_ps(a1, sj[j][1], s32[1]))
                        };
                        let wb: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(w1, w0));
                        let lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, wb));
                        let hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, wb));
                        for r in 0..MR {
                            let xv = _mm512_set1_ps(*xp[r].add(4 * p + j));
                            let a = &mut acc[j % NA][r];
                            a[0] = _mm512_fmadd_ps(xv, lo, a[0]);
                            a[1] = _mm512_fmadd_ps(xv, hi, a[1]);
                        }
                    }
                }
            }
        }
        for nb in 0..NB {
            let acc = &acc[nb];
            let out = &mut *outs[nb];
            for r in 0..MR {
                let (mut lo, mut hi) = (acc[0][r][0], acc[0][r][1]);
                for set in &acc[1..] {
                    lo = _mm512_add_ps(lo, set[r][0]);
                    hi = _mm512_add_ps(hi, set[r][1]);
                }
                let mut l = [0f32; 16];
                let mut h = [0f32; 16];
                _mm512_storeu_ps(l.as_mut_ptr(), lo);
                _mm512_storeu_ps(h.as_mut_ptr(), hi);
                let o = &mut out[r];
                for lane in 0..16 {
                    // 128-bit block `lane / 4` holds columns (block / 2) * 16 + (block % 2) * 8 + i.
                    let (blk, i) = (lane / 4, lane % 4);
                    let col = (blk / 2) * 16 + (blk % 2) * 8 + i;
                    o[col] = l[lane];
                    o[col + 4] = h[lane];
                }
            }
        }
    }
}
