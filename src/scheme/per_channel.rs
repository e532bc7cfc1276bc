//! Per-output-channel symmetric quantization: what [`Wint8`](super::Wint8) and
//! [`Wint4`](super::Wint4) share (`docs/wint4-wint8-layout.md`).
//!
//! This file owns the arithmetic: the per-column scale (plain absmax or a searched one),
//! the rounding of each weight to an integer, and the decode `q * scale`, plus the
//! [`Scheme`](super::Scheme) plumbing both formats use. Each format's file owns only its byte layout
//! (the CUTLASS interleave) through the crate-private `Layout` trait.
//!
//! # Formulas
//!
//! For a logical `[K, N]` matrix `W` and `qmax` = 127 (int8) or 7 (int4):
//!
//! ```text
//! absmax scale:  scale[n] = bf16_rne( f32( max_k |W[k][n]| ) / qmax )      (division in f32)
//! quantize:      q[k][n]  = clamp( round_half_away_from_zero( W[k][n] / f32(scale[n]) ),
//!                                  -qmax, qmax )                            (division in f32)
//!                q[k][n]  = 0 when scale[n] == 0 (an all-zero column)
//! decode:        What[k][n] = f32(q[k][n]) * f32(scale[n])                  (exact in f32)
//! ```
//!
//! The division uses the **bf16-rounded** scale. That is what Paddle's `weight_quantize`
//! does: its CPU kernel stores `max / bound` into the bf16 scale tensor first and then
//! quantizes each weight with that stored value read back as f32. So for a bf16 source
//! matrix, [`ScaleRule::Absmax`] reproduces Paddle's integers exactly, with one deliberate
//! exception: for an all-zero column Paddle divides 0 by 0 and its clamp turns the NaN into
//! an arbitrary code (127 for int8); ccq writes `q = 0`. Both decode to 0.
//!
//! The decode `q * scale` is exact in f32 (an 8-bit integer times an 8-bit-mantissa bf16
//! fits in f32's 24 bits), so the product is the real value of the stored pair.
//!
//! # The searched scale
//!
//! [`ScaleRule::Search`] keeps the decode formula and changes only which bf16 scale is
//! stored. Per column it searches the bf16 values from one step above the absmax scale down
//! to a floor (`floor * absmax scale`: 0.70 for int8, 0.40 for int4), quantizing the column
//! with each candidate (the formula above, clamping included) and keeping the one with the
//! least `sum_k h_k (W[k][n] - What[k][n])^2` as [`column_error`] measures it:
//!
//! 1. coarse: the step above, the absmax scale, then every [`SEARCH_COARSE_STEP`]-th bf16
//!    value below it down to the floor;
//! 2. fine: every bf16 value within one coarse step of the coarse winner.
//!
//! Searching the bf16 grid itself, not a ratio grid rounded to bf16, means no candidate is
//! tried twice. The absmax scale is always a candidate and only a strictly smaller error
//! replaces the incumbent, so the searched error is never larger than absmax's. Measured
//! (`tests/per_channel_nmse.rs`), the coarse-then-fine pass is within 0.1% of the
//! exhaustive search's NMSE with about a quarter of the candidates, and floors below 0.70 / 0.40 change
//! NMSE by less than 0.02%.
//!
//! Columns are independent; they are processed in parallel (rayon) and collected in column
//! order, and nothing inside a column depends on scheduling, so the output is byte-identical
//! at any thread count.

// Test support for the wint8 and wint4 tests (the Paddle oracle, the shared checks).
#[cfg(test)]
pub(crate) mod paddle_reference;
#[cfg(test)]
pub(crate) mod test_support;

use half::bf16;
use rayon::prelude::*;

use super::feedback::{code_matrix, BlockCoder};
use super::importance::{Hessian, Importance};
use super::{check_encode_input, finite_bf16s, Component, Packed, SchemeError, SchemeKind};
use crate::Dtype;

/// K must be a multiple of this: the CUTLASS interleave works on 64-row tiles.
pub const K_MULTIPLE: usize = 64;

/// Component names, in the order the encoders write them.
pub const COMPONENTS: [&str; 2] = ["quant_weight", "weight_scale"];

/// How the per-column scale is chosen. Decoding is `q * scale` under either rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleRule {
    /// `scale = bf16(max |W| / qmax)`: Paddle's `weight_quantize`, bit for bit. Importance,
    /// if given, is validated but does not change the result.
    Absmax,
    /// The bf16 scale between a per-format floor (0.70 of the absmax scale for int8, 0.40
    /// for int4) and one step above the absmax scale with the least importance-weighted
    /// squared error (see the module docs).
    Search,
}

impl ScaleRule {
    /// Every rule, Paddle's first.
    pub const ALL: [ScaleRule; 2] = [ScaleRule::Absmax, ScaleRule::Search];

    /// Lowercase name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            ScaleRule::Absmax => "absmax",
            ScaleRule::Search => "search",
        }
    }

    /// Parses a name written by [`ScaleRule::name`].
    pub fn from_name(name: &str) -> Option<ScaleRule> {
        ScaleRule::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Rounds to the nearest integer, halves away from zero (C's `round`, which Paddle uses).
/// Rust's [`f32::round`] has exactly these semantics; the name states the contract.
pub fn round_half_away_from_zero(x: f32) -> f32 {
    x.round()
}

/// The absmax scale `bf16_rne(absmax / qmax)`, the division done in f32 as Paddle does.
pub fn absmax_scale(absmax: f32, qmax: i32) -> bf16 {
    bf16::from_f32(absmax / qmax as f32)
}

/// The integer code of weight `w` under `scale` (already bf16-rounded, given as f32):
/// `clamp(round_half_away_from_zero(w / scale), -qmax, qmax)`, or 0 when `scale == 0`.
pub fn quantize_value(w: f32, scale: f32, qmax: i32) -> i32 {
    if scale == 0.0 {
        return 0;
    }
    let limit = qmax as f32;
    // `w / scale` may overflow to +-inf for a subnormal scale; the clamp absorbs that, and
    // with `w` and `scale` finite and `scale != 0` it is never NaN.
    round_half_away_from_zero(w / scale).clamp(-limit, limit) as i32
}

/// [`quantize_value`] as an f32, the fast path the search evaluates many times per column.
/// `f32::round` is a libm call on baseline x86-64 and blocks vectorisation, so:
///
/// 1. clamp `x = w / scale` to `+-(qmax + 1)` first: any `|x| >= qmax + 1` rounds to a
///    value the final clamp maps to `+-qmax` anyway, so the result is unchanged, and now
///    `|x| <= 128`;
/// 2. `r = (x + 1.5 * 2^23) - 1.5 * 2^23` rounds `x` to the nearest integer, ties to even
///    (exact for `|x| < 2^22`: the sum lands in `[2^23, 2^24)` where f32 spacing is 1);
/// 3. `f = x - r` is exact; a tie (`|f| = 0.5`) that went toward zero (`f = 0.5` for
///    `x > 0`, `f = -0.5` for `x < 0`) is moved one away from zero;
/// 4. clamp to `+-qmax`.
///
/// A test holds it equal to [`quantize_value`] bit for bit.
#[inline]
fn quantize_value_f32(w: f32, scale: f32, limit: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    if scale == 0.0 {
        return 0.0;
    }
    let x = (w / scale).max(-(limit + 1.0)).min(limit + 1.0);
    let r = (x + SHIFT) - SHIFT;
    let f = x - r;
    let r = if f == 0.5 && x > 0.0 {
        r + 1.0
    } else if f == -0.5 && x < 0.0 {
        r - 1.0
    } else {
        r
    };
    r.max(-limit).min(limit)
}

/// Independent partial sums in [`column_error`]: lets the compiler vectorise while the
/// summation order (lane `i` takes rows `i mod LANES`, lanes added in order) stays fixed.
const LANES: usize = 8;

/// `sum_k h_k (col[k] - q_k * scale)^2` for the codes [`quantize_value`] gives (`h` = all
/// ones when `None`): the measure [`ScaleRule::Search`] minimises. Each term and each of
/// 8 partial sums (lane `i` takes rows `i mod 8`) is f32, so the result carries a relative
/// rounding error of at most about `rows / 8 * 2^-24`; that can only change which of two
/// nearly equal candidates wins. The lanes are added in f64, in order: the result does not
/// depend on threads.
pub fn column_error(col: &[f32], h: Option<&[f32]>, scale: f32, qmax: i32) -> f64 {
    let limit = qmax as f32;
    let sq = |w: f32| {
        let d = w - quantize_value_f32(w, scale, limit) * scale;
        d * d
    };
    let mut acc = [0f32; LANES];
    let rows = col.chunks_exact(LANES);
    let rest = rows.remainder();
    match h {
        None => {
            for c in rows {
                for (a, &w) in acc.iter_mut().zip(c) {
                    *a += sq(w);
                }
            }
            for (a, &w) in acc.iter_mut().zip(rest) {
                *a += sq(w);
            }
        }
        Some(h) => {
            let hs = h.chunks_exact(LANES);
            let h_rest = hs.remainder();
            for (c, hc) in rows.zip(hs) {
                for ((a, &w), &hk) in acc.iter_mut().zip(c).zip(hc) {
                    *a += hk * sq(w);
                }
            }
            for ((a, &w), &hk) in acc.iter_mut().zip(rest).zip(h_rest) {
                *a += hk * sq(w);
            }
        }
    }
    acc.iter().map(|&a| f64::from(a)).sum()
}

/// Coarse step of the search, in bf16 steps (units in the last place).
pub const SEARCH_COARSE_STEP: u16 = 4;

/// The scale [`ScaleRule::Search`] picks for one column, trying scales down to
/// `floor * absmax scale` (see the module docs).
pub fn search_scale(col: &[f32], h: Option<&[f32]>, qmax: i32, floor: f32) -> bf16 {
    let top = absmax_scale(col_absmax(col), qmax);
    if top.to_f32() <= 0.0 {
        return top;
    }
    // Positive bf16 values are ordered like their bit patterns, so the grid is a range of
    // integers: from one step above the absmax scale (it can help when rounding put the
    // scale below absmax / qmax and the largest weight is clamped) down to the floor.
    let above = bf16::from_bits(top.to_bits() + 1);
    let hi = if above.is_finite() { above.to_bits() } else { top.to_bits() };
    let lo = bf16::from_f32(top.to_f32() * floor).to_bits().max(1);
    let error = |bits: u16| column_error(col, h, bf16::from_bits(bits).to_f32(), qmax);

    let mut best = (error(hi), hi);
    let consider = |bits: u16, best: &mut (f64, u16)| {
        let e = error(bits);
        if e < best.0 {
            *best = (e, bits);
        }
    };
    // Coarse pass: the absmax scale, then every SEARCH_COARSE_STEP-th value below it.
    let mut bits = top.to_bits();
    while bits >= lo && bits < hi {
        consider(bits, &mut best);
        bits = match bits.checked_sub(SEARCH_COARSE_STEP) {
            Some(b) => b,
            None => break,
        };
    }
    // Fine pass: every value within one coarse step of the coarse winner.
    let centre = best.1;
    let from = centre.saturating_sub(SEARCH_COARSE_STEP - 1).max(lo);
    let to = centre.saturating_add(SEARCH_COARSE_STEP - 1).min(hi);
    for bits in (from..=to).rev() {
        if bits != centre {
            consider(bits, &mut best);
        }
    }
    bf16::from_bits(best.1)
}

fn col_absmax(col: &[f32]) -> f32 {
    col.iter().fold(0.0f32, |m, &w| m.max(w.abs()))
}

/// The scale of one column under `rule` (`floor` is used by [`ScaleRule::Search`] only).
pub fn column_scale(col: &[f32], h: Option<&[f32]>, qmax: i32, rule: ScaleRule, floor: f32) -> bf16 {
    match rule {
        ScaleRule::Absmax => absmax_scale(col_absmax(col), qmax),
        ScaleRule::Search => search_scale(col, h, qmax, floor),
    }
}

/// Quantizes a validated row-major `[k, n]` matrix: the codes `q` (row-major `[k, n]`, each
/// in `-qmax..=qmax`) and one bf16 scale per column.
pub fn quantize_matrix(w: &[f32], k: usize, n: usize, h: Option<&[f32]>, qmax: i32, rule: ScaleRule, floor: f32) -> (Vec<i8>, Vec<bf16>) {
    let scales: Vec<bf16> = (0..n)
        .into_par_iter()
        .map(|c| {
            let col: Vec<f32> = (0..k).map(|r| w[r * n + c]).collect();
            column_scale(&col, h, qmax, rule, floor)
        })
        .collect();
    let sf: Vec<f32> = scales.iter().map(|s| s.to_f32()).collect();
    let mut q = vec![0i8; k * n];
    if n > 0 {
        q.par_chunks_mut(n).zip(w.par_chunks(n)).for_each(|(qr, wr)| {
            for ((qv, &wv), &s) in qr.iter_mut().zip(wr).zip(&sf) {
                // |code| <= qmax <= 127, so the cast is lossless.
                *qv = quantize_value(wv, s, qmax) as i8;
            }
        });
    }
    (q, scales)
}

/// A CUTLASS-interleaved byte layout of per-column codes: what each format's file supplies.
pub(crate) trait Layout {
    /// The scheme this layout belongs to.
    const KIND: SchemeKind;
    /// Largest code magnitude written: 127 or 7.
    const QMAX: i32;
    /// Bits per stored code: 8 or 4.
    const BITS: usize;
    /// N must be a multiple of this.
    const N_MULTIPLE: usize;
    /// The lowest fraction of the absmax scale [`ScaleRule::Search`] tries.
    const SEARCH_FLOOR: f32;
    /// The shape rule, in words, for [`SchemeError::BadShape`].
    const REQUIREMENT: &'static str;

    /// Where the code of element (`row`, `col`) of a `[k, n]` matrix is stored, counted in
    /// codes from the start of `quant_weight`: the byte for int8, the nibble for int4. The
    /// map is a bijection onto `0..k * n`.
    fn code_address(k: usize, row: usize, col: usize) -> usize;

    /// Lays the row-major `[k, n]` codes out as `quant_weight` bytes.
    fn interleave(q: &[i8], k: usize, n: usize) -> Vec<u8>;

    /// The code of element (`row`, `col`) of a `[k, n]` matrix stored in `bytes` (which
    /// hold exactly `k * n * BITS / 8` bytes).
    fn read_code(bytes: &[u8], k: usize, row: usize, col: usize) -> i32;
}

/// `quant_weight` shape `[N * BITS / 8, K]`: `[N, K]` for int8, `[N/2, K]` for int4.
pub(crate) fn quant_weight_shape<L: Layout>(k: usize, n: usize) -> [usize; 2] {
    [n * L::BITS / 8, k]
}

/// Shape check shared by both formats.
pub(crate) fn check_shape<L: Layout>(k: usize, n: usize) -> Result<(), SchemeError> {
    if k == 0 || !k.is_multiple_of(K_MULTIPLE) || n == 0 || !n.is_multiple_of(L::N_MULTIPLE) {
        return Err(SchemeError::BadShape { scheme: L::KIND, k, n, requirement: L::REQUIREMENT });
    }
    Ok(())
}

/// The two components of a `[k, n]` matrix: `quant_weight` (`I8`) and `weight_scale`
/// (`BF16`, `[N]`).
pub(crate) fn component_layout<L: Layout>(k: usize, n: usize) -> Vec<(&'static str, Dtype, Vec<usize>)> {
    vec![(COMPONENTS[0], Dtype::I8, quant_weight_shape::<L>(k, n).to_vec()), (COMPONENTS[1], Dtype::BF16, vec![n])]
}

/// Encodes `w` into `quant_weight` (`I8`) and `weight_scale` (`BF16`, `[N]`). With a Hessian the
/// scales are chosen first, under its damped diagonal, and the codes then by scalar GPTQ
/// ([`quantize_matrix_with_feedback`]).
pub(crate) fn encode<L: Layout>(rule: ScaleRule, w: &[f32], k: usize, n: usize, importance: Importance<'_>) -> Result<Packed, SchemeError> {
    check_shape::<L>(k, n)?;
    check_encode_input(w, k, n, importance)?;
    let (q, scales) = match importance {
        Importance::Hessian(h) => quantize_matrix_with_feedback(w, k, n, h, L::QMAX, rule, L::SEARCH_FLOOR),
        other => quantize_matrix(w, k, n, other.diagonal(), L::QMAX, rule, L::SEARCH_FLOOR),
    };
    let quant_weight =
        Component { name: COMPONENTS[0], dtype: Dtype::I8, shape: quant_weight_shape::<L>(k, n).to_vec(), bytes: L::interleave(&q, k, n) };
    let weight_scale =
        Component { name: COMPONENTS[1], dtype: Dtype::BF16, shape: vec![n], bytes: scales.iter().flat_map(|s| s.to_le_bytes()).collect() };
    Ok(Packed { kind: L::KIND, k, n, components: vec![quant_weight, weight_scale] })
}

/// Factors of the diagonal fit's scale that scalar feedback also tries, per column: feedback
/// moves error onto later rows, which then want a somewhat different range.
pub const FEEDBACK_SCALE_FACTORS: [f32; 4] = [1.0, 0.9, 0.95, 1.05];

/// Scalar GPTQ with the scale of each column fixed before its rows are coded: [`column_scale`]
/// under the damped diagonal of `hessian` and its multiples by [`FEEDBACK_SCALE_FACTORS`]
/// (rounded to bf16), each coded by [`quantize_value`] one row at a time with the error fed
/// forward ([`crate::scheme::feedback`], blocks of one row, `M_B = 1 / U[k][k]`). Per column
/// the scale and codes of lowest output error `e^T Hd e` win, plain rounding with the diagonal
/// fit's scale among them, so feedback never makes a column worse.
pub fn quantize_matrix_with_feedback(
    w: &[f32],
    k: usize,
    n: usize,
    hessian: &Hessian,
    qmax: i32,
    rule: ScaleRule,
    floor: f32,
) -> (Vec<i8>, Vec<bf16>) {
    let (mut q, mut scales) = quantize_matrix(w, k, n, Some(hessian.diag()), qmax, rule, floor);
    let errors = |q: &[i8], sf: &[f32]| -> Vec<f64> {
        let e: Vec<f32> = w.iter().zip(q).enumerate().map(|(i, (&wv, &qv))| wv - f32::from(qv) * sf[i % n]).collect();
        hessian.column_errors(&e, n)
    };
    let base: Vec<f32> = scales.iter().map(|s| s.to_f32()).collect();
    let mut best = errors(&q, &base);
    for factor in FEEDBACK_SCALE_FACTORS {
        let trial: Vec<bf16> = base.iter().map(|&s| bf16::from_f32(s * factor)).collect();
        let sf: Vec<f32> = trial.iter().map(|s| s.to_f32()).collect();
        let coder = ScalarCoder { scales: &sf, qmax };
        let fed: Vec<i8> = code_matrix(w, k, n, hessian, &coder).codes.into_iter().map(|c| c as i8).collect();
        let err = errors(&fed, &sf);
        for col in 0..n {
            if err[col] < best[col] {
                best[col] = err[col];
                scales[col] = trial[col];
                for row in 0..k {
                    q[row * n + col] = fed[row * n + col];
                }
            }
        }
    }
    (q, scales)
}

/// One row of one column rounded to its column's scale (the metric of a 1-row block is a
/// positive factor, so rounding to the nearest code is already the best).
struct ScalarCoder<'a> {
    scales: &'a [f32],
    qmax: i32,
}

impl BlockCoder for ScalarCoder<'_> {
    type Chunk = f32;

    fn rows(&self) -> usize {
        1
    }

    fn candidates(&self, col: usize, _row0: usize) -> Vec<f32> {
        vec![self.scales[col]]
    }

    fn code(&self, scale: &f32, _row: usize, x: &[f32], _m: &[f32], out: &mut [f32]) -> u8 {
        let q = quantize_value(x[0], *scale, self.qmax);
        out[0] = q as f32 * scale;
        // |q| <= qmax <= 127: stored as its two's-complement byte.
        q as i8 as u8
    }
}

/// Decodes components written by [`encode`]: `What[k][n] = q * scale[n]`, row-major.
pub(crate) fn decode<L: Layout>(packed: &Packed) -> Result<Vec<f32>, SchemeError> {
    if packed.kind != L::KIND {
        return Err(SchemeError::WrongKind { expected: L::KIND, found: packed.kind });
    }
    let (k, n) = (packed.k, packed.n);
    check_shape::<L>(k, n)?;
    let qw = packed.expect_component(COMPONENTS[0], Dtype::I8, &quant_weight_shape::<L>(k, n))?;
    let ws = packed.expect_component(COMPONENTS[1], Dtype::BF16, &[n])?;
    let scales = finite_bf16s(ws)?;
    let mut out = vec![0f32; k * n];
    out.par_chunks_mut(n).enumerate().for_each(|(row, out_row)| {
        for (col, (o, &s)) in out_row.iter_mut().zip(&scales).enumerate() {
            *o = L::read_code(&qw.bytes, k, row, col) as f32 * s;
        }
    });
    Ok(out)
}

/// Bits per weight: `BITS` per code plus 16 per column for the bf16 scale.
pub(crate) fn bits_per_weight<L: Layout>(k: usize, n: usize) -> f64 {
    if k == 0 || n == 0 {
        return 0.0;
    }
    L::BITS as f64 + 16.0 / k as f64
}

#[cfg(test)]
mod feedback_tests {
    use super::*;
    use crate::rng::Rng;
    use crate::scheme::feedback::{correlated_hessian, identity};

    fn output_error(w: &[f32], q: &[i8], scales: &[bf16], n: usize, h: &Hessian) -> f64 {
        let e: Vec<f32> = w.iter().zip(q).enumerate().map(|(i, (&a, &c))| a - f32::from(c) * scales[i % n].to_f32()).collect();
        h.column_errors(&e, n).iter().sum()
    }

    /// Scalar GPTQ beats plain rounding with the same scales on at least 95 % of random
    /// positive-definite Hessians, for int4 and int8 codes, and is never worse.
    #[test]
    fn feedback_beats_plain_rounding() {
        let (k, n, cases) = (128, 8, 20u64);
        for qmax in [7, 127] {
            let mut better = 0;
            for case in 0..cases {
                let h = Hessian::new(k, &correlated_hessian(k, 200 + case), 0.01).unwrap();
                let w = Rng::new(30 + case).normals(k * n);
                let (fed, scales) = quantize_matrix_with_feedback(&w, k, n, &h, qmax, ScaleRule::Search, 0.7);
                let (plain, plain_scales) = quantize_matrix(&w, k, n, Some(h.diag()), qmax, ScaleRule::Search, 0.7);
                let (a, b) = (output_error(&w, &fed, &scales, n, &h), output_error(&w, &plain, &plain_scales, n, &h));
                assert!(a <= b, "qmax {qmax} case {case}: {a} > {b}");
                better += usize::from(a < b);
            }
            assert!(better as u64 * 100 >= 95 * cases, "qmax {qmax}: {better} of {cases}");
        }
    }

    /// With `H = I` scalar feedback is plain rounding, and never worse than the diagonal fit.
    #[test]
    fn identity_hessian_is_never_worse_than_plain() {
        let (k, n) = (64, 6);
        let h = Hessian::new(k, &identity(k), 0.0).unwrap();
        let w = Rng::new(5).normals(k * n);
        let (fed, scales) = quantize_matrix_with_feedback(&w, k, n, &h, 7, ScaleRule::Search, 0.7);
        let (plain, plain_scales) = quantize_matrix(&w, k, n, Some(h.diag()), 7, ScaleRule::Search, 0.7);
        assert!(output_error(&w, &fed, &scales, n, &h) <= output_error(&w, &plain, &plain_scales, n, &h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn rounding_is_half_away_from_zero() {
        for (x, r) in [(0.5, 1.0), (-0.5, -1.0), (1.5, 2.0), (2.5, 3.0), (-2.5, -3.0), (0.49, 0.0)] {
            assert_eq!(round_half_away_from_zero(x), r, "{x}");
        }
    }

    #[test]
    fn quantize_value_clamps_and_handles_zero_scale() {
        assert_eq!(quantize_value(1.0, 0.0, 127), 0);
        assert_eq!(quantize_value(0.0, 0.0, 7), 0);
        assert_eq!(quantize_value(100.0, 0.5, 127), 127);
        assert_eq!(quantize_value(-100.0, 0.5, 7), -7);
        assert_eq!(quantize_value(0.75, 0.5, 7), 2); // 1.5 rounds away from zero
        assert_eq!(quantize_value(-0.75, 0.5, 7), -2);
        // A subnormal scale: the quotient overflows to infinity and is clamped.
        assert_eq!(quantize_value(3.0e38, 1.0e-40, 127), 127);
    }

    #[test]
    fn fast_quantize_equals_reference() {
        let mut rng = Rng::new(17);
        let mut ws: Vec<f32> = rng.normals(20_000).iter().map(|v| v * 40.0).collect();
        // Exact halves, their neighbours, the clamp edges and huge quotients.
        for i in -300..=300 {
            let half = i as f32 * 0.5;
            ws.extend([half, f32::from_bits(half.to_bits() + 1), f32::from_bits(half.to_bits().saturating_sub(1))]);
        }
        ws.extend([0.0, -0.0, 1.0e30, -1.0e30, f32::MAX, f32::MIN, 1.0e-40]);
        for qmax in [127, 7] {
            for scale in [1.0f32, 0.5, 0.3, 1.0e-3, 7.0, 1.0e-40, 0.0] {
                for &w in &ws {
                    let reference = quantize_value(w, scale, qmax) as f32;
                    let fast = quantize_value_f32(w, scale, qmax as f32);
                    assert_eq!(reference, fast, "w {w} scale {scale} qmax {qmax}");
                }
            }
        }
    }

    #[test]
    fn absmax_scale_divides_in_f32_then_rounds_to_bf16() {
        for absmax in [1.0f32, 0.1, 3.3, 1.0e-30, 123.456] {
            assert_eq!(absmax_scale(absmax, 127), bf16::from_f32(absmax / 127.0f32));
            assert_eq!(absmax_scale(absmax, 7), bf16::from_f32(absmax / 7.0f32));
        }
        assert_eq!(absmax_scale(0.0, 127).to_f32(), 0.0);
    }

    #[test]
    fn search_never_loses_to_absmax_and_is_deterministic() {
        let mut rng = Rng::new(3);
        for qmax in [127, 7] {
            for _ in 0..20 {
                let col = rng.normals(256);
                let h: Vec<f32> = (0..256).map(|_| rng.uniform() as f32).collect();
                for imp in [None, Some(&h[..])] {
                    let a = absmax_scale(col_absmax(&col), qmax).to_f32();
                    let floor = 0.5;
                    let s = search_scale(&col, imp, qmax, floor);
                    assert_eq!(s, search_scale(&col, imp, qmax, floor));
                    assert!(column_error(&col, imp, s.to_f32(), qmax) <= column_error(&col, imp, a, qmax));
                    let ratio = s.to_f32() / a;
                    assert!((floor - 0.01..=1.01).contains(&ratio), "ratio {ratio}");
                }
            }
        }
    }

    #[test]
    fn search_of_zero_column_is_zero() {
        assert_eq!(search_scale(&[0.0; 64], None, 7, 0.5).to_f32(), 0.0);
        assert_eq!(search_scale(&[0.0; 64], None, 127, 0.5).to_f32(), 0.0);
    }

    #[test]
    fn scale_rule_names_round_trip() {
        for r in ScaleRule::ALL {
            assert_eq!(ScaleRule::from_name(r.name()), Some(r));
        }
        assert_eq!(ScaleRule::from_name("absmax/127"), None);
    }
}
