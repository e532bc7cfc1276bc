//! rtn2: plain 2-bit round-to-nearest with one bf16 scale per column and 64-row group, the
//! baseline to compare WINT2 against at almost the same size (2.25 bits per weight against
//! WINT2's 2.07-2.09). It is ccq's own (FastDeploy does not load it: native layout only).
//!
//! Stored tensors for a logical `[K, N]` matrix (`K % 64 == 0`):
//!
//! | component      | dtype  | shape       | holds                                            |
//! |----------------|--------|-------------|--------------------------------------------------|
//! | `quant_weight` | `U8`   | `[K/4, N]`  | byte `(i, n)`: the codes of rows `4i..4i+4`, row `4i+j` in bits `2j..2j+2` |
//! | `weight_scale` | `BF16` | `[K/64, N]` | scale `s[g][n]` of rows `64g..64g+64` of column `n` |
//!
//! Decode, exact in f32 (a bf16 scale, 8 significant bits, times a multiple of 1/2 of at most
//! 1.5 needs at most 10 bits; only a scale above `f32::MAX / 1.5` would overflow):
//!
//! ```text
//! What[k][n] = (c[k][n] - 1.5) * s[k / 64][n],   c in 0..=3
//! ```
//!
//! Encode: per column and group, the scale is the best of the 48 bf16 candidates
//! `bf16(max|x| / 1.5 * (0.3 + 0.7 i / 47))` under the (importance-weighted) squared error, each
//! value rounded to its nearest level `c = clamp(floor(x / s + 2), 0, 3)`. With a Hessian the
//! scales are chosen so under its damped diagonal and the codes by scalar error feedback
//! ([`super::feedback`]), keeping per column whichever of feedback and plain rounding has the
//! lower output error.

use half::bf16;
use rayon::prelude::*;

use super::feedback::{code_matrix, BlockCoder};
use super::importance::Hessian;
use super::{check_encode_input, finite_bf16s, Component, Importance, Packed, Scheme, SchemeError, SchemeKind};
use crate::Dtype;

/// Rows per scale.
pub const GROUP_ROWS: usize = 64;

/// Scale candidates tried per group.
const CANDIDATES: usize = 48;

/// The component names, in order.
const COMPONENTS: [&str; 2] = ["quant_weight", "weight_scale"];

/// The rtn2 scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rtn2;

/// The value of code `c` in units of the scale: `c - 1.5`.
#[inline(always)]
pub fn level(c: u8) -> f32 {
    f32::from(c) - 1.5
}

/// The nearest code of `x` at scale `s > 0`.
#[inline]
fn nearest(x: f32, s: f32) -> u8 {
    (x / s + 2.0).floor().clamp(0.0, 3.0) as u8
}

/// The code of `x` at scale `s`; every value of a zero-scale group decodes to zero.
#[inline]
fn code_of(x: f32, s: f32) -> u8 {
    if s > 0.0 {
        nearest(x, s)
    } else {
        1
    }
}

/// The best bf16 scale of one group of one column under the weights `h` (1 when `None`);
/// errors are summed in f64, so that no finite weight overflows them.
fn group_scale(xs: &[f32], h: Option<&[f32]>) -> f32 {
    let max = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut best = (0.0f32, f64::INFINITY);
    for i in 0..CANDIDATES {
        let s = bf16::from_f32(max / 1.5 * (0.3 + 0.7 * i as f32 / (CANDIDATES - 1) as f32)).to_f32();
        if s <= 0.0 {
            continue;
        }
        let e: f64 = xs
            .iter()
            .enumerate()
            .map(|(r, &v)| f64::from(h.map_or(1.0, |h| h[r])) * (f64::from(v) - f64::from(level(nearest(v, s))) * f64::from(s)).powi(2))
            .sum();
        if e < best.1 {
            best = (s, e);
        }
    }
    best.0
}

/// Scales (`[K/64, N]`) and plain rounded codes (`[K, N]`, row-major) of `w`.
fn round_matrix(w: &[f32], k: usize, n: usize, h: Option<&[f32]>) -> (Vec<f32>, Vec<u8>) {
    let groups = k / GROUP_ROWS;
    let columns: Vec<(Vec<f32>, Vec<u8>)> = (0..n)
        .into_par_iter()
        .map(|col| {
            let x: Vec<f32> = (0..k).map(|r| w[r * n + col]).collect();
            let scales: Vec<f32> = (0..groups)
                .map(|g| group_scale(&x[g * GROUP_ROWS..(g + 1) * GROUP_ROWS], h.map(|h| &h[g * GROUP_ROWS..(g + 1) * GROUP_ROWS])))
                .collect();
            let codes = x.iter().enumerate().map(|(r, &v)| code_of(v, scales[r / GROUP_ROWS])).collect();
            (scales, codes)
        })
        .collect();
    let (mut scales, mut codes) = (vec![0.0f32; groups * n], vec![0u8; k * n]);
    for (col, (s, c)) in columns.into_iter().enumerate() {
        for g in 0..groups {
            scales[g * n + col] = s[g];
        }
        for r in 0..k {
            codes[r * n + col] = c[r];
        }
    }
    (scales, codes)
}

/// One row of one column rounded to its group's scale (a 1-row block's metric is a positive
/// factor, so the nearest level is the best).
struct GroupCoder<'a> {
    scales: &'a [f32],
    n: usize,
}

impl BlockCoder for GroupCoder<'_> {
    type Chunk = f32;

    fn rows(&self) -> usize {
        1
    }

    fn candidates(&self, col: usize, row0: usize) -> Vec<f32> {
        vec![self.scales[row0 / GROUP_ROWS * self.n + col]]
    }

    fn code(&self, scale: &f32, _row: usize, x: &[f32], _m: &[f32], out: &mut [f32]) -> u8 {
        let c = code_of(x[0], *scale);
        out[0] = level(c) * scale;
        c
    }
}

/// Codes by error feedback under `hessian`, column by column no worse than plain rounding.
fn feedback_codes(w: &[f32], k: usize, n: usize, hessian: &Hessian, scales: &[f32], plain: Vec<u8>) -> Vec<u8> {
    let fed = code_matrix(w, k, n, hessian, &GroupCoder { scales, n }).codes;
    let errors = |codes: &[u8]| {
        let e: Vec<f32> = w.iter().enumerate().map(|(i, &v)| v - level(codes[i]) * scales[(i / n) / GROUP_ROWS * n + i % n]).collect();
        hessian.column_errors(&e, n)
    };
    let (plain_err, fed_err) = (errors(&plain), errors(&fed));
    let mut codes = plain;
    for col in (0..n).filter(|&c| fed_err[c] < plain_err[c]) {
        for r in 0..k {
            codes[r * n + col] = fed[r * n + col];
        }
    }
    codes
}

impl Scheme for Rtn2 {
    fn kind(&self) -> SchemeKind {
        SchemeKind::Rtn2
    }

    fn check_shape(&self, k: usize, n: usize) -> Result<(), SchemeError> {
        if k == 0 || !k.is_multiple_of(GROUP_ROWS) || n == 0 {
            return Err(SchemeError::BadShape {
                scheme: SchemeKind::Rtn2,
                k,
                n,
                requirement: "K must be a positive multiple of 64, N positive",
            });
        }
        Ok(())
    }

    fn encode(&self, w: &[f32], k: usize, n: usize, importance: Importance<'_>) -> Result<Packed, SchemeError> {
        self.check_shape(k, n)?;
        check_encode_input(w, k, n, importance)?;
        let (scales, mut codes) = round_matrix(w, k, n, importance.diagonal());
        if let Importance::Hessian(h) = importance {
            codes = feedback_codes(w, k, n, h, &scales, codes);
        }
        let mut packed = vec![0u8; k / 4 * n];
        for (i, &c) in codes.iter().enumerate() {
            let (row, col) = (i / n, i % n);
            packed[row / 4 * n + col] |= c << (2 * (row % 4));
        }
        let scale_bytes = scales.iter().flat_map(|&s| bf16::from_f32(s).to_le_bytes()).collect();
        let [(q_name, q_dtype, q_shape), (s_name, s_dtype, s_shape)]: [_; 2] =
            self.component_layout(k, n).try_into().expect("two components");
        Ok(Packed {
            kind: SchemeKind::Rtn2,
            k,
            n,
            components: vec![
                Component { name: q_name, dtype: q_dtype, shape: q_shape, bytes: packed },
                Component { name: s_name, dtype: s_dtype, shape: s_shape, bytes: scale_bytes },
            ],
        })
    }

    fn decode(&self, packed: &Packed) -> Result<Vec<f32>, SchemeError> {
        if packed.kind != SchemeKind::Rtn2 {
            return Err(SchemeError::WrongKind { expected: SchemeKind::Rtn2, found: packed.kind });
        }
        let (k, n) = (packed.k, packed.n);
        self.check_shape(k, n)?;
        let layout = self.component_layout(k, n);
        let codes = packed.expect_component(layout[0].0, layout[0].1, &layout[0].2)?;
        let scales = finite_bf16s(packed.expect_component(layout[1].0, layout[1].1, &layout[1].2)?)?;
        Ok((0..k * n).map(|i| value(&codes.bytes, &scales, n, i / n, i % n)).collect())
    }

    fn bits_per_weight(&self, _k: usize, _n: usize) -> f64 {
        2.0 + 16.0 / GROUP_ROWS as f64
    }

    fn component_layout(&self, k: usize, n: usize) -> Vec<(&'static str, Dtype, Vec<usize>)> {
        vec![(COMPONENTS[0], Dtype::U8, vec![k / 4, n]), (COMPONENTS[1], Dtype::BF16, vec![k / GROUP_ROWS, n])]
    }
}

/// `What[row][col]` from the `quant_weight` bytes and the scales as f32 (`[K/64, N]`).
#[inline(always)]
pub fn value(codes: &[u8], scales: &[f32], n: usize, row: usize, col: usize) -> f32 {
    let c = (codes[row / 4 * n + col] >> (2 * (row % 4))) & 3;
    level(c) * scales[row / GROUP_ROWS * n + col]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn gaussian(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    /// An independent decode, element by element from the stored bytes.
    fn decode_by_hand(p: &Packed) -> Vec<f32> {
        let (q, s) = (&p.components[0].bytes, &p.components[1].bytes);
        let mut out = vec![0.0; p.k * p.n];
        for row in 0..p.k {
            for col in 0..p.n {
                let byte = q[(row / 4) * p.n + col];
                let c = (byte >> (2 * (row % 4))) & 3;
                let i = ((row / 64) * p.n + col) * 2;
                let scale = bf16::from_le_bytes([s[i], s[i + 1]]).to_f32();
                out[row * p.n + col] = [-1.5, -0.5, 0.5, 1.5][c as usize] * scale;
            }
        }
        out
    }

    #[test]
    fn round_trip_is_the_nearest_level_of_the_chosen_scale() {
        let (k, n) = (128, 24);
        let w = gaussian(k * n, 1);
        let p = Rtn2.encode(&w, k, n, Importance::Uniform).unwrap();
        let d = Rtn2.decode(&p).unwrap();
        assert_eq!(d, decode_by_hand(&p));
        let nmse = w.iter().zip(&d).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / w.iter().map(|a| a * a).sum::<f32>();
        assert!(nmse > 0.05 && nmse < 0.2, "{nmse}");
        // Huge but finite weights get a scale (an f32 error sum would overflow to inf for every
        // candidate and leave the group at zero).
        let mut huge = vec![1e30f32; k * n];
        huge[5] = -3e38;
        let back = Rtn2.decode(&Rtn2.encode(&huge, k, n, Importance::Uniform).unwrap()).unwrap();
        assert!(back[5] < -1e37 && back[n + 1] > 1e29 && back.iter().all(|v| v.is_finite()), "{} {}", back[5], back[n + 1]);
        let zero = Rtn2.encode(&vec![0.0; k * n], k, n, Importance::Uniform).unwrap();
        assert!(Rtn2.decode(&zero).unwrap().iter().all(|v| *v == 0.0));
        assert!(Rtn2.check_shape(100, 8).is_err());
        assert!((Rtn2.bits_per_weight(k, n) - 2.25).abs() < 1e-12);
    }

    #[test]
    fn feedback_lowers_the_output_error_and_never_raises_it() {
        let (k, n) = (128, 32);
        let w = gaussian(k * n, 2);
        let xtx = crate::scheme::feedback::correlated_hessian(k, 3);
        let h = Hessian::new(k, &xtx, 0.01).unwrap();
        let plain = Rtn2.decode(&Rtn2.encode(&w, k, n, Importance::Diagonal(h.diag())).unwrap()).unwrap();
        let fed = Rtn2.decode(&Rtn2.encode(&w, k, n, Importance::Hessian(&h)).unwrap()).unwrap();
        let (e_plain, e_fed) = (h.output_errors(&w, &plain, n), h.output_errors(&w, &fed, n));
        assert!(e_fed.iter().zip(&e_plain).all(|(f, p)| f <= p));
        assert!(e_fed.iter().sum::<f64>() < 0.9 * e_plain.iter().sum::<f64>(), "{e_fed:?} vs {e_plain:?}");
    }

    proptest! {
        #[test]
        fn any_bytes_decode_exactly_as_stored(k_groups in 1usize..3, n in 1usize..9, seed in 0u64..1000) {
            let k = k_groups * 64;
            let mut rng = Rng::new(seed);
            let q: Vec<u8> = (0..k / 4 * n).map(|_| (rng.next_u64() & 255) as u8).collect();
            let s: Vec<u8> = (0..k / 64 * n).flat_map(|_| bf16::from_f32(rng.normal() as f32).to_le_bytes()).collect();
            let p = Packed { kind: SchemeKind::Rtn2, k, n, components: vec![
                Component { name: "quant_weight", dtype: Dtype::U8, shape: vec![k / 4, n], bytes: q },
                Component { name: "weight_scale", dtype: Dtype::BF16, shape: vec![k / 64, n], bytes: s },
            ]};
            prop_assert_eq!(Rtn2.decode(&p).unwrap(), decode_by_hand(&p));
        }
    }
}
