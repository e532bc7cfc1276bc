//! A small deterministic random number generator for synthetic data (no external crate).
//!
//! SplitMix64 (Steele, Lea and Flood 2014) for uniform bits, Box-Muller for normals. The same
//! seed gives the same stream on every platform and at every thread count.

/// FNV-1a, 64 bits: `h = (h ^ byte) * 0x100000001b3` from `h = 0xcbf29ce484222325`. A small,
/// stable, non-cryptographic hash for seeds and fingerprints.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// 16 hex digits of [`fnv1a64`]: the fingerprint written to metadata and provenance.
pub fn fnv_hex(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a64(bytes))
}

/// SplitMix64 state.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed, spare_normal: None }
    }

    /// A generator whose seed mixes `seed` with a string (e.g. a tensor name) and an index.
    pub fn for_stream(seed: u64, name: &str, index: u64) -> Rng {
        // FNV-1a over the name, then mixed with the seed and index by a SplitMix step.
        let h = fnv1a64(name.as_bytes());
        let mut mix = Rng::new(seed ^ h.rotate_left(17) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Rng::new(mix.next_u64())
    }

    /// The next 64 uniform bits: `z = (s += 0x9e3779b97f4a7c15)`, then two xor-shift-multiply
    /// rounds.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal, by Box-Muller: `r = sqrt(-2 ln u1)`, `z = r cos(2 pi u2)`, `r sin(2 pi u2)`.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // in (0, 1]: ln is finite
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
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
    fn deterministic_and_normal_moments() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
        assert_ne!(Rng::for_stream(1, "a", 0).next_u64(), Rng::for_stream(1, "b", 0).next_u64());
        assert_ne!(Rng::for_stream(1, "a", 0).next_u64(), Rng::for_stream(1, "a", 1).next_u64());
    }
}
