//! A tiny deterministic random source for fixtures and benchmarks: SplitMix64 and
//! Box-Muller normals. Not for cryptography; chosen because it is a dozen lines, has no
//! dependencies, and gives the same numbers on every platform and thread count.

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a Weyl constant and
/// scrambled by two multiply-xorshift rounds.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    /// A second normal left over from the last Box-Muller pair.
    spare: Option<f64>,
}

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed, spare: None }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal N(0, 1) by the Box-Muller transform (two per pair of uniforms).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - u is in (0, 1], so the logarithm is finite.
        let radius = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }

    /// `len` i.i.d. N(0, 1) values as f32.
    pub fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal() as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_sane_moments() {
        let a = Rng::new(7).normals(1000);
        assert_eq!(a, Rng::new(7).normals(1000));
        assert_ne!(a, Rng::new(8).normals(1000));
        let big = Rng::new(1).normals(100_000);
        let mean = big.iter().map(|&v| v as f64).sum::<f64>() / 1e5;
        let var = big.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 1e5;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }
}
