//! The 256 window vectors a column's code map can produce, and the exact best-byte search.
//!
//! For a code map (`code_scale`, `code_zp`) byte `b` decodes rows `4p..4p+3` of a group to
//! `vals[q_j(b) + 32]`, `j = 0..3`, where `q_j(b)` are the windows of `d(b)` and `vals` is the
//! group's table of decoded values (`decode::value_table`, bf16 roundings included). The
//! best byte for a 4-row vector `x` with importance `h` minimises
//! `E(b) = sum_j h_j (x_j - vals[q_j(b) + 32])^2` over all 256 bytes.
//!
//! Pruning (exact): when `q_0(b)` is non-decreasing in `b` (true for `code_scale >= 0`
//! while `d` stays inside one 15-bit period), the bytes sharing a top window form a
//! contiguous run ("level"), and `h_0 (x_0 - vals[q_0 + 32])^2 <= E(b)` is a lower bound for
//! every byte of the level. `vals` is non-decreasing in `q`, so walking the levels outwards
//! from the one nearest `x_0`, the bound only grows: a direction stops as soon as its bound
//! exceeds the best error found. Inside a level, the error of a byte is accumulated row by
//! row and abandoned once it exceeds the best error. Ties go to the lowest byte, as in
//! the brute-force reference. No byte that could win is skipped, so
//! the result equals the brute-force minimum (the tests check this).

use super::decode::{code, windows};

/// The window vectors of the 256 bytes under one code map.
#[derive(Debug, Clone)]
pub struct Codebook {
    /// `q[b] = [q_0 + 32, q_1 + 32, q_2 + 32, q_3 + 32]`: indices into a value table.
    pub q: [[u8; 4]; 256],
    /// Runs of bytes sharing `q_0`, ordered by `q_0`: `(q_0 + 32, first byte, end byte)`.
    /// Empty when `q_0` is not monotone in `b` (the search is then brute force).
    levels: Vec<(u8, u16, u16)>,
}

impl Codebook {
    /// Builds the codebook of a code map with the decoder's own arithmetic.
    pub fn new(code_scale: f32, code_zp: f32) -> Codebook {
        let mut q = [[0u8; 4]; 256];
        for (b, row) in q.iter_mut().enumerate() {
            let w = windows(code(b as u8, code_scale, code_zp));
            *row = w.map(|v| (v + 32) as u8);
        }
        let monotone = q.windows(2).all(|p| p[0][0] <= p[1][0]);
        let mut levels = Vec::new();
        if monotone {
            let mut start = 0usize;
            for b in 1..=256 {
                if b == 256 || q[b][0] != q[start][0] {
                    levels.push((q[start][0], start as u16, b as u16));
                    start = b;
                }
            }
        }
        Codebook { q, levels }
    }

    /// Whether the pruned search applies (`q_0` monotone in `b`).
    pub fn is_monotone(&self) -> bool {
        !self.levels.is_empty()
    }

    /// Weighted squared error of byte `b`, abandoned (returning a value `> bound`) once the
    /// partial sum exceeds `bound`. A result `<= bound` is the exact error.
    #[inline]
    fn error_below(&self, b: usize, vals: &[f32; 64], x: &[f32; 4], h: &[f32; 4], bound: f32) -> f32 {
        let q = &self.q[b];
        let mut e = 0.0f32;
        for j in 0..4 {
            let r = x[j] - vals[q[j] as usize];
            e = h[j].mul_add(r * r, e);
            if e > bound {
                return e;
            }
        }
        e
    }

    /// Exact weighted error of byte `b`.
    #[inline]
    pub fn error(&self, b: u8, vals: &[f32; 64], x: &[f32; 4], h: &[f32; 4]) -> f32 {
        self.error_below(b as usize, vals, x, h, f32::INFINITY)
    }

    /// The byte minimising the weighted error (lowest byte among ties) and its error, by
    /// trying all 256 bytes. The reference for [`Codebook::best_byte`].
    pub fn best_byte_brute(&self, vals: &[f32; 64], x: &[f32; 4], h: &[f32; 4]) -> (u8, f32) {
        let mut best = (0u8, f32::INFINITY);
        for b in 0..256 {
            let e = self.error_below(b, vals, x, h, best.1);
            if e < best.1 {
                best = (b as u8, e);
            }
        }
        best
    }

    /// The byte minimising the weighted error and its error, with the sound pruning above.
    /// `vals` must be non-decreasing (true for decoded value tables of a scale `>= 0`).
    pub fn best_byte(&self, vals: &[f32; 64], x: &[f32; 4], h: &[f32; 4]) -> (u8, f32) {
        if self.levels.is_empty() {
            return self.best_byte_brute(vals, x, h);
        }
        let levels = &self.levels;
        // The level whose decoded top value is nearest x_0.
        let up = levels.partition_point(|l| vals[l.0 as usize] < x[0]);
        let start = if up == levels.len() {
            up - 1
        } else if up > 0 && x[0] - vals[levels[up - 1].0 as usize] < vals[levels[up].0 as usize] - x[0] {
            up - 1
        } else {
            up
        };
        let mut best = (0u8, f32::INFINITY);
        let scan = |level: &(u8, u16, u16), best: &mut (u8, f32)| -> bool {
            let r = x[0] - vals[level.0 as usize];
            // The same rounding as the first term of `error_below`, so never above it.
            if h[0] * (r * r) > best.1 {
                return false;
            }
            for b in level.1 as usize..level.2 as usize {
                let e = self.error_below(b, vals, x, h, best.1);
                if e < best.1 || (e == best.1 && (b as u8) < best.0) {
                    *best = (b as u8, e);
                }
            }
            true
        };
        for level in &levels[start..] {
            if !scan(level, &mut best) {
                break;
            }
        }
        for level in levels[..start].iter().rev() {
            if !scan(level, &mut best) {
                break;
            }
        }
        best
    }
}
