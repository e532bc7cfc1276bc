//! The code maps the encoder starts from, and the offline search that found them.
//!
//! A code map (`code_scale`, `code_zp`) picks which 256 of the 32768 15-bit codes a column
//! can use. [`MAPS`] lists maps that quantise i.i.d. Gaussian 4-vectors well, best first,
//! each with `alpha`, the group scale (in units of the group's RMS) at which it did best.
//! They were found by `search_code_maps` below (run it with
//! `cargo test --release -p ccq search_code_maps -- --ignored --nocapture`).

/// A code map and the scale-to-RMS ratio it works best at on Gaussian data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeMap {
    /// Slope of the map (`code_scale`).
    pub code_scale: f32,
    /// Offset of the map (`code_zp`).
    pub code_zp: f32,
    /// Best group scale divided by the group's RMS, on N(0, 1) data.
    pub alpha: f32,
}

/// Good code maps for Gaussian data, best first (see the module docs).
///
/// From `search_code_maps`: 3000 random maps (`code_scale` uniform in [1, 128.5], `code_zp`
/// uniform over the offsets keeping `d` inside [0, 32767]) scored on 512 Gaussian 4-vectors
/// at their best scale; the 20 best re-scored on 4096 fresh vectors. The MSE on those 4096
/// vectors is given beside each map (optimal scalar 2-bit: 0.1175).
pub const MAPS: &[CodeMap] = &[
    CodeMap { code_scale: 120.976_37, code_zp: 1378.0, alpha: 0.0624 }, // 0.1072
    CodeMap { code_scale: 120.950_356, code_zp: 1651.0, alpha: 0.0612 }, // 0.1073
    CodeMap { code_scale: 121.063_385, code_zp: 1125.0, alpha: 0.0612 }, // 0.1092
    CodeMap { code_scale: 121.796_22, code_zp: 1510.0, alpha: 0.0612 }, // 0.1094
    CodeMap { code_scale: 123.0932, code_zp: 1194.0, alpha: 0.0612 },   // 0.1094
    CodeMap { code_scale: 121.792_94, code_zp: 1456.0, alpha: 0.0612 }, // 0.1094
    CodeMap { code_scale: 117.831_06, code_zp: 1166.0, alpha: 0.0612 }, // 0.1096
    CodeMap { code_scale: 121.727_13, code_zp: 1183.0, alpha: 0.0612 }, // 0.1096
    // Second search (`search_code_maps` with 4096 vectors per candidate, top maps re-scored
    // on 32768): fixed-scale MSE on the 32768 vectors, where the first two maps above score
    // 0.1097 and 0.1094.
    CodeMap { code_scale: 120.969, code_zp: 1623.0, alpha: 0.0615 }, // 0.1094
    CodeMap { code_scale: 120.953_224, code_zp: 761.0, alpha: 0.0615 }, // 0.1094
    CodeMap { code_scale: 120.935_234, code_zp: 944.0, alpha: 0.0615 }, // 0.1095
    CodeMap { code_scale: 120.946_95, code_zp: 298.0, alpha: 0.0615 }, // 0.1097
    CodeMap { code_scale: 119.948_94, code_zp: 1050.0, alpha: 0.0615 }, // 0.1099
    CodeMap { code_scale: 120.044_426, code_zp: 1648.0, alpha: 0.0615 }, // 0.1101
    CodeMap { code_scale: 120.951_33, code_zp: 566.0, alpha: 0.0615 }, // 0.1101
    CodeMap { code_scale: 121.005_87, code_zp: 1782.0, alpha: 0.0615 }, // 0.1103
];

/// The naive full-range map (`code_scale = 32767/255`, `code_zp = 0`), a baseline.
pub const NAIVE: CodeMap = CodeMap { code_scale: 32767.0 / 255.0, code_zp: 0.0, alpha: 0.06 };

#[cfg(test)]
mod tests {
    use crate::rng::Rng;
    use crate::scheme::wint2::codebook::Codebook;

    /// Mean squared error per weight of quantising `data` (4-vectors) with codebook `cb` at
    /// plain (unrounded) scale `s`: decoded values are `q * s`.
    fn mse_at_scale(cb: &Codebook, data: &[[f32; 4]], s: f32) -> f64 {
        let vals: [f32; 64] = std::array::from_fn(|i| (i as f32 - 32.0) * s);
        let table = cb.table(&vals);
        let h = [1.0f32; 4];
        let total: f64 = data.iter().map(|x| table.best_byte(x, &h).1 as f64).sum();
        total / (4 * data.len()) as f64
    }

    fn gaussian_vectors(seed: u64, count: usize) -> Vec<[f32; 4]> {
        let mut rng = Rng::new(seed);
        (0..count).map(|_| std::array::from_fn(|_| rng.normal() as f32)).collect()
    }

    /// Best scale on a log grid, refined once around the winner.
    fn best_scale(cb: &Codebook, data: &[[f32; 4]]) -> (f32, f64) {
        let mut best = (0.0f32, f64::INFINITY);
        for i in 0..32 {
            let s = 0.01 * 1.1f32.powi(i);
            let m = mse_at_scale(cb, data, s);
            if m < best.1 {
                best = (s, m);
            }
        }
        let centre = best.0;
        for i in -5..=5 {
            let s = centre * (1.0 + 0.02 * i as f32);
            let m = mse_at_scale(cb, data, s);
            if m < best.1 {
                best = (s, m);
            }
        }
        best
    }

    #[test]
    #[ignore = "offline search; minutes of CPU"]
    fn search_code_maps() {
        let small = gaussian_vectors(11, 512);
        let large = gaussian_vectors(12, 4096);
        let mut rng = Rng::new(99);
        let mut found: Vec<(f64, f32, f32, f32)> = Vec::new();
        for _ in 0..3000 {
            let cs = (1.0 + rng.uniform() * 127.5) as f32;
            let span = 32767.0 - 255.0 * cs as f64;
            let zp = (rng.uniform() * span).floor() as f32;
            let cb = Codebook::new(cs, zp);
            let (s, m) = best_scale(&cb, &small);
            found.push((m, cs, zp, s));
        }
        found.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(m, cs, zp, s) in found.iter().take(20) {
            let cb = Codebook::new(cs, zp);
            let (s2, m2) = best_scale(&cb, &large);
            println!("cs {cs:?} zp {zp:?} small {m:.4} s {s:.4} | large {m2:.4} s {s2:.4}");
        }
    }
}
