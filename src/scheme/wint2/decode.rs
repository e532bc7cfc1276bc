//! The WINT2 decoder: the exact arithmetic of FastDeploy's fused GEMM, step by step.
//!
//! Each function below is one numbered step of `docs/wint2-format.md`; the comment above it
//! quotes the step. `decode_matrix` strings them together. The encoder uses the same
//! functions to build its candidate tables, so what it optimises is what inference sees.

use rayon::prelude::*;

use super::GROUP_ROWS;

/// Steps 1-3: the code `d` of byte `b` under the column's code map.
///
/// ```text
/// c = zp + 0.5                        (f32, one rounding)
/// d = floor(fma_f32(b, code_scale, c)) as i32   (the multiply-add rounds once)
/// ```
/// The float-to-int conversion saturates (and maps NaN to 0) like PTX `cvt.rmi.s32.f32`;
/// only bits 0..14 of `d` are read afterwards.
#[inline]
pub fn code(b: u8, code_scale: f32, code_zp: f32) -> i32 {
    let c = code_zp + 0.5;
    f32::from(b).mul_add(code_scale, c).floor() as i32
}

/// Step 4: the value `q` of row `j = k % 4` read from code `d`.
///
/// ```text
/// bit of d:  14 13 12 11 10  9  8  7  6  5  4  3  2  1  0
/// j = 0:     [-------q0-------]
/// j = 1:              [-------q1-------]
/// j = 2:                       [-------q2-------]
/// j = 3:                                [-------q3-------]
/// q_j = ((d >> (9 - 3j)) & 63) - 32          in -32..=31
/// ```
/// Neighbouring windows share 3 bits: this overlap is the convolutional code.
#[inline]
pub fn window(d: i32, j: usize) -> i32 {
    let shift = 9 - 3 * j as u32;
    ((d >> shift) & 63) - 32
}

/// The four window values of code `d`, rows `4p .. 4p + 3` of a column.
#[inline]
pub fn windows(d: i32) -> [i32; 4] {
    [window(d, 0), window(d, 1), window(d, 2), window(d, 3)]
}

/// Step 5: the 4-bit local scale of 64-row group `g` from its `weight_scale` byte.
///
/// ```text
/// byte = weight_scale[g / 2][n]
/// ls   = g even ? byte >> 4 : byte & 15      (even group in the HIGH nibble)
/// ```
#[inline]
pub fn local_scale(byte: u8, g: usize) -> u8 {
    if g.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 15
    }
}

/// Rounds an f32 to the nearest bf16, ties to even, and returns it as an (exact) f32.
///
/// `half::bf16::from_f32` keeps the top 16 bits and adds one when the dropped 16 bits are
/// above one half, or exactly one half with an odd kept bit: round to nearest, ties even.
/// NaN stays NaN; values beyond the bf16 range round to infinity.
#[inline]
pub fn bf16_rne(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Step 6 (fused path): the group's scale `s = bf16_rne(f32(ls) * super)`.
///
/// The product is exact in f32 (4-bit times 8-bit significands); only the bf16 step rounds.
#[inline]
pub fn group_scale(ls: u8, super_scale: f32) -> f32 {
    bf16_rne(f32::from(ls) * super_scale)
}

/// Steps 6-7: the decoded weight for window value `q`, local scale `ls` and super scale.
///
/// ```text
/// w = bf16_rne(f32(q) * bf16_rne(f32(ls) * super))   (two roundings)
/// ```
/// This is FastDeploy's fused GEMM, what inference computes. (Its standalone `winx_unzip`
/// op rounds once, `bf16_rne(f32(ls) * super * f32(q))`, and can differ in the last bit;
/// ccq neither writes for nor reads with that variant.)
#[inline]
pub fn weight(q: i32, ls: u8, super_scale: f32) -> f32 {
    bf16_rne(q as f32 * group_scale(ls, super_scale))
}

/// The decoded value of every window value `q = -32..=31` (index `q + 32`) in one group.
pub fn value_table(ls: u8, super_scale: f32) -> [f32; 64] {
    std::array::from_fn(|i| weight(i as i32 - 32, ls, super_scale))
}

/// Validated, unpacked parameters of a packed WINT2 matrix, ready to decode.
pub(crate) struct Params<'a> {
    /// Rows and columns.
    pub k: usize,
    /// Columns.
    pub n: usize,
    /// `quant_weight`, `[k / 4, n]`.
    pub quant_weight: &'a [u8],
    /// `weight_scale`, `[k / 128, n]`, two nibbles per byte.
    pub weight_scale: &'a [u8],
    /// `super_scales` as f32 (exact bf16 values), `[n]`.
    pub super_scales: Vec<f32>,
    /// `code_scale`, `[n]`.
    pub code_scale: Vec<f32>,
    /// `code_zp`, `[n]`.
    pub code_zp: Vec<f32>,
}

/// Decodes a whole matrix to row-major `[k, n]` f32, in parallel over blocks of byte rows.
///
/// Every value is computed independently by the functions above, so the result does not
/// depend on the thread count.
pub(crate) fn decode_matrix(p: &Params<'_>) -> Vec<f32> {
    let (k, n) = (p.k, p.n);
    let mut out = vec![0.0f32; k * n];
    if n == 0 {
        return out;
    }
    // One task per 64-row group: its 16 byte rows share the group's local scales.
    out.par_chunks_mut(GROUP_ROWS * n).enumerate().for_each(|(g, rows)| {
        let ls_row = &p.weight_scale[(g / 2) * n..(g / 2 + 1) * n];
        for (pi, block) in rows.chunks_mut(4 * n).enumerate() {
            let byte_row = g * (GROUP_ROWS / 4) + pi;
            let bytes = &p.quant_weight[byte_row * n..(byte_row + 1) * n];
            for col in 0..n {
                let d = code(bytes[col], p.code_scale[col], p.code_zp[col]);
                let ls = local_scale(ls_row[col], g);
                for (j, q) in windows(d).into_iter().enumerate() {
                    block[j * n + col] = weight(q, ls, p.super_scales[col]);
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_code_and_windows() {
        // c = 1000.5; 200 * 100 + 1000.5 = 21000.5; d = 21000 = 0b101_001_000_001_000.
        let d = code(200, 100.0, 1000.0);
        assert_eq!(d, 21000);
        // d >> 9 = 41 -> 41 - 32 = 9
        // (d >> 6) & 63 = 328 & 63 = 8 -> -24
        // (d >> 3) & 63 = 2625 & 63 = 1 -> -31
        //  d       & 63 = 8 -> -24
        assert_eq!(windows(d), [9, -24, -31, -24]);
        // Bits above 14 are ignored: d + 32768 reads the same windows.
        assert_eq!(windows(d + 32768), windows(d));
        // A negative d wraps like two's complement: -1 has every window at 63 - 32 = 31.
        assert_eq!(windows(-1), [31, 31, 31, 31]);
    }

    #[test]
    fn fma_differs_from_separately_rounded_multiply_add() {
        // code_scale = 10289409 * 2^-17 = 78.50196075439453 (exact in f32), b = 255:
        //   255 * code_scale = 20018 - 2^-17 exactly.
        // code_zp = -20000.5, so c = zp + 0.5 = -20000 exactly.
        // Separately rounded: the product rounds to 20018.0 (f32 ulp at 20018 is 2^-9),
        //   then 20018 - 20000 = 18 -> d = 18.
        // Fused: the exact sum 18 - 2^-17 is representable (ulp at 18 is 2^-19) -> d = 17.
        let cs = 78.501_96_f32;
        assert_eq!(cs, 10_289_409.0 * (2.0f32).powi(-17));
        let zp = -20000.5f32;
        let separate = ((255.0f32 * cs) + (zp + 0.5)).floor() as i32;
        assert_eq!(separate, 18);
        assert_eq!(code(255, cs, zp), 17);
        // The two codes read different lowest windows: 17 - 32 = -15 versus 18 - 32 = -14.
        assert_eq!(windows(17)[3], -15);
        assert_eq!(windows(18)[3], -14);
    }

    #[test]
    fn local_scale_nibbles() {
        // Even group in the high nibble, odd group in the low nibble.
        assert_eq!(local_scale(0xA3, 0), 0xA);
        assert_eq!(local_scale(0xA3, 1), 0x3);
        assert_eq!(local_scale(0xA3, 6), 0xA);
        assert_eq!(local_scale(0xA3, 7), 0x3);
    }

    #[test]
    fn bf16_ties_round_to_even() {
        // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1 + 2^-7: ties to even -> 1.0.
        assert_eq!(bf16_rne(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> 1 + 2^-6.
        assert_eq!(bf16_rne(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        // Just above the tie rounds up.
        assert_eq!(bf16_rne(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 1.0 + 1.0 / 128.0);
        // Negative ties mirror.
        assert_eq!(bf16_rne(-(1.0 + 3.0 / 256.0)), -(1.0 + 1.0 / 64.0));
    }

    #[test]
    fn weight_rounds_the_group_scale_and_the_product() {
        // super = 1 + 2^-7 (a bf16), ls = 3: ls * super = 3.0234375 = 3 + 1.5 ulp (bf16 ulp
        // in [2, 4) is 2^-6): a tie between 3.015625 (odd significand) and 3.03125 (even).
        let sup = 1.0 + 1.0 / 128.0;
        assert_eq!(group_scale(3, sup), 3.03125);
        // q = 3: 3 * 3.03125 = 9.09375 = 145.5 * 2^-4 (bf16 ulp in [8, 16) is 2^-4):
        // again a tie, between 145 (odd) and 146 (even) -> 146 * 2^-4 = 9.125.
        assert_eq!(weight(3, 3, sup), 9.125);
        // One rounding instead: 3 * 1.0078125 * 3 = 9.0703125 = 145.125 * 2^-4 -> 9.0625.
        assert_eq!(bf16_rne(3.0 * sup * 3.0), 9.0625);
    }

    #[test]
    fn decoded_values_are_bf16() {
        for q in -32..32 {
            for ls in 0..16u8 {
                let w = weight(q, ls, 0.0123);
                assert_eq!(bf16_rne(w), w);
            }
        }
    }
}
