//! The 256 window vectors a column's code map can produce, and the exact best-byte search.
//!
//! For a code map (`code_scale`, `code_zp`) byte `b` decodes rows `4p..4p+3` of a group to
//! `vals[q_j(b) + 32]`, `j = 0..3`, where `q_j(b)` are the windows of `d(b)` and `vals` is the
//! group's table of decoded values (`decode::value_table`, bf16 roundings included). The
//! best byte for a 4-row vector `x` with importance `h` minimises
//! `E(b) = sum_j h_j (x_j - vals[q_j(b) + 32])^2` over all 256 bytes.
//!
//! [`Codebook`] holds the window indices `q_j(b) + 32` of a code map; [`Codebook::table`]
//! turns them into a group's decoded 4-vectors ([`Table`], one array per window), and
//! [`Table::best_byte`] scores all 256 bytes in a branch-free loop the compiler vectorises
//! and takes the first arg-min (ties go to the lowest byte). That exhaustive scoring is
//! faster than a pruned walk over the bytes, whose branches cost more than the candidates
//! they skip.

use super::decode::{code, windows};

/// The window vectors of the 256 bytes under one code map.
#[derive(Debug, Clone)]
pub struct Codebook {
    /// `q[b] = [q_0 + 32, q_1 + 32, q_2 + 32, q_3 + 32]`: indices into a value table.
    pub q: [[u8; 4]; 256],
}

impl Codebook {
    /// Builds the codebook of a code map with the decoder's own arithmetic.
    pub fn new(code_scale: f32, code_zp: f32) -> Codebook {
        let mut q = [[0u8; 4]; 256];
        for (b, row) in q.iter_mut().enumerate() {
            let w = windows(code(b as u8, code_scale, code_zp));
            *row = w.map(|v| (v + 32) as u8);
        }
        Codebook { q }
    }

    /// The decoded values of every byte under one group's value table, for [`Table::best_byte`].
    pub fn table(&self, vals: &[f32; 64]) -> Table {
        let mut c = [[0.0f32; 256]; 4];
        for (b, q) in self.q.iter().enumerate() {
            for j in 0..4 {
                c[j][b] = vals[q[j] as usize];
            }
        }
        Table { c }
    }

    /// Exact weighted error of byte `b`.
    #[inline]
    pub fn error(&self, b: u8, vals: &[f32; 64], x: &[f32; 4], h: &[f32; 4]) -> f32 {
        let q = &self.q[b as usize];
        let mut e = 0.0f32;
        for j in 0..4 {
            let r = x[j] - vals[q[j] as usize];
            // Separate multiply and add (no FMA): the same arithmetic as `Table::best_byte`.
            e += h[j] * (r * r);
        }
        e
    }

    /// The byte minimising the weighted error (lowest byte among ties) and its error, by
    /// trying all 256 bytes one at a time: the reference the tests hold
    /// [`Table::best_byte`] to.
    #[cfg(test)]
    pub fn best_byte_brute(&self, vals: &[f32; 64], x: &[f32; 4], h: &[f32; 4]) -> (u8, f32) {
        let mut best = (0u8, f32::INFINITY);
        for b in 0..=255u8 {
            let e = self.error(b, vals, x, h);
            if e < best.1 {
                best = (b, e);
            }
        }
        best
    }
}

/// The 256 decoded 4-vectors of one code map under one group's scales, stored by window
/// (structure of arrays), so that scoring all 256 bytes is a straight vectorisable loop.
#[derive(Debug, Clone)]
pub struct Table {
    /// `c[j][b]`: decoded value of row `j` under byte `b`.
    pub c: [[f32; 256]; 4],
}

/// Lanes of the vectorised arg-min.
const LANES: usize = 16;

impl Table {
    /// The byte minimising the weighted error (lowest byte among ties) and its error: all
    /// 256 bytes scored with the arithmetic of [`Codebook::error`] (so the result equals the
    /// one-byte-at-a-time search of the tests), in a branch-free loop the compiler vectorises.
    #[inline]
    pub fn best_byte(&self, x: &[f32; 4], h: &[f32; 4]) -> (u8, f32) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.best_byte_avx2(x, h) };
        }
        self.best_byte_portable(x, h)
    }

    /// [`Table::best_byte`] compiled for AVX2: the same IEEE operations in the same order
    /// (no FMA contraction), so the same result, twice the lanes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn best_byte_avx2(&self, x: &[f32; 4], h: &[f32; 4]) -> (u8, f32) {
        self.best_byte_portable(x, h)
    }

    #[inline(always)]
    fn best_byte_portable(&self, x: &[f32; 4], h: &[f32; 4]) -> (u8, f32) {
        let mut e = [0.0f32; 256];
        self.errors(x, h, &mut e);
        arg_min(&e)
    }

    /// The weighted error of every byte, `e[b]`.
    #[inline(always)]
    pub fn errors(&self, x: &[f32; 4], h: &[f32; 4], e: &mut [f32; 256]) {
        let [c0, c1, c2, c3] = &self.c;
        for b in 0..256 {
            let r0 = x[0] - c0[b];
            let r1 = x[1] - c1[b];
            let r2 = x[2] - c2[b];
            let r3 = x[3] - c3[b];
            e[b] = h[0] * (r0 * r0) + h[1] * (r1 * r1) + h[2] * (r2 * r2) + h[3] * (r3 * r3);
        }
    }
}

impl Table {
    /// The byte minimising `||m (x - c_b)||^2` for a lower-triangular `4 x 4` metric factor
    /// `m` (row-major; error feedback's `M_B`, [`crate::scheme::feedback`]), lowest byte among
    /// ties, and that error.
    #[inline]
    pub fn best_byte_metric(&self, x: &[f32; 4], m: &[f32; 16]) -> (u8, f32) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.best_byte_metric_avx2(x, m) };
        }
        self.best_byte_metric_portable(x, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn best_byte_metric_avx2(&self, x: &[f32; 4], m: &[f32; 16]) -> (u8, f32) {
        self.best_byte_metric_portable(x, m)
    }

    #[inline(always)]
    fn best_byte_metric_portable(&self, x: &[f32; 4], m: &[f32; 16]) -> (u8, f32) {
        let mut e = [0.0f32; 256];
        self.errors_metric(x, m, &mut e);
        arg_min(&e)
    }

    /// `e[b] = ||m (x - c_b)||^2`, `m` lower triangular (`y_i = sum_{j <= i} m[i][j] r_j`).
    #[inline(always)]
    pub fn errors_metric(&self, x: &[f32; 4], m: &[f32; 16], e: &mut [f32; 256]) {
        let [c0, c1, c2, c3] = &self.c;
        for b in 0..256 {
            let (r0, r1, r2, r3) = (x[0] - c0[b], x[1] - c1[b], x[2] - c2[b], x[3] - c3[b]);
            let y0 = m[0] * r0;
            let y1 = m[4] * r0 + m[5] * r1;
            let y2 = m[8] * r0 + m[9] * r1 + m[10] * r2;
            let y3 = m[12] * r0 + m[13] * r1 + m[14] * r2 + m[15] * r3;
            e[b] = y0 * y0 + y1 * y1 + y2 * y2 + y3 * y3;
        }
    }
}

/// The first index of the smallest value and that value (NaN-free input).
#[inline(always)]
pub fn arg_min(e: &[f32; 256]) -> (u8, f32) {
    let mut m = [f32::INFINITY; LANES];
    for chunk in e.chunks_exact(LANES) {
        for l in 0..LANES {
            m[l] = if chunk[l] < m[l] { chunk[l] } else { m[l] };
        }
    }
    let min = m.iter().copied().fold(f32::INFINITY, |a, b| if b < a { b } else { a });
    // The first chunk holding the minimum (a branch-free test per chunk), then its first hit.
    for (i, chunk) in e.chunks_exact(LANES).enumerate() {
        if chunk.iter().fold(false, |any, &v| any | (v == min)) {
            let l = chunk.iter().position(|&v| v == min).unwrap_or(0);
            return ((i * LANES + l) as u8, min);
        }
    }
    (0, min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::scheme::wint2::decode::value_table;
    use crate::scheme::wint2::maps::{MAPS, NAIVE};

    #[test]
    fn table_search_equals_brute_force() {
        let mut rng = Rng::new(3);
        let maps = MAPS.iter().chain([&NAIVE]);
        for (i, map) in maps.enumerate() {
            let cb = Codebook::new(map.code_scale, map.code_zp);
            let vals = value_table(13 + (i % 3) as u8, 0.005 * (1 + i) as f32);
            let table = cb.table(&vals);
            for t in 0..2000 {
                let x: [f32; 4] = std::array::from_fn(|_| rng.normal() as f32);
                // Mix unit, skewed and zero importances.
                let h: [f32; 4] = std::array::from_fn(|j| match t % 3 {
                    0 => 1.0,
                    1 => (rng.normal() * 1.5).exp() as f32,
                    _ => {
                        if j == t % 4 {
                            0.0
                        } else {
                            1.0
                        }
                    }
                });
                assert_eq!(table.best_byte(&x, &h), cb.best_byte_brute(&vals, &x, &h));
            }
        }
    }
}
