//! Error figures between an original matrix and its quantized reconstruction.
//!
//! With `e = W - What` over all elements:
//! - NMSE = sum e^2 / sum W^2;
//! - SQNR = 10 log10(sum W^2 / sum e^2) dB (= -10 log10 NMSE);
//! - cosine = sum W What / (||W|| ||What||);
//! - max abs = max |e|;
//!
//! and on activations, with `Y = X W` and `Yhat = X What`:
//! - output relative error = ||Y - Yhat|| / ||Y||.
//!
//! Sums are in f64 and taken in a fixed order, so figures do not depend on thread count.

use serde::Serialize;

/// Running sums from which every figure is derived.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorSums {
    /// sum W^2.
    pub ref_energy: f64,
    /// sum What^2.
    pub quant_energy: f64,
    /// sum W What.
    pub dot: f64,
    /// sum (W - What)^2.
    pub err_energy: f64,
    /// max |W - What|.
    pub max_abs: f64,
}

impl ErrorSums {
    /// Sums over paired slices.
    pub fn of(reference: &[f32], quantized: &[f32]) -> ErrorSums {
        let mut s = ErrorSums::default();
        for (&w, &q) in reference.iter().zip(quantized) {
            let (w, q) = (f64::from(w), f64::from(q));
            s.ref_energy += w * w;
            s.quant_energy += q * q;
            s.dot += w * q;
            s.err_energy += (w - q) * (w - q);
            s.max_abs = s.max_abs.max((w - q).abs());
        }
        s
    }

    /// Adds the sums of another part of the same matrix.
    pub fn merge(&mut self, other: &ErrorSums) {
        self.ref_energy += other.ref_energy;
        self.quant_energy += other.quant_energy;
        self.dot += other.dot;
        self.err_energy += other.err_energy;
        self.max_abs = self.max_abs.max(other.max_abs);
    }

    /// NMSE = sum e^2 / sum W^2 (0 when both are zero).
    pub fn nmse(&self) -> f64 {
        ratio(self.err_energy, self.ref_energy)
    }

    /// SQNR in dB; infinite for an exact reconstruction.
    pub fn sqnr_db(&self) -> f64 {
        -10.0 * self.nmse().log10()
    }

    /// Cosine similarity (1 when both are zero).
    pub fn cosine(&self) -> f64 {
        let norms = (self.ref_energy * self.quant_energy).sqrt();
        if norms == 0.0 {
            return if self.ref_energy == self.quant_energy { 1.0 } else { 0.0 };
        }
        self.dot / norms
    }

    /// Relative L2 error `sqrt(sum e^2 / sum W^2)` (used for outputs).
    pub fn relative_l2(&self) -> f64 {
        self.nmse().sqrt()
    }
}

/// `num / den`, with 0/0 = 0 and x/0 = infinity.
fn ratio(num: f64, den: f64) -> f64 {
    match (num, den) {
        (n, d) if d > 0.0 => n / d,
        (0.0, _) => 0.0,
        _ => f64::INFINITY,
    }
}

/// Summary statistics of one figure over a group of tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stat {
    /// Tensors in the group.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Maximum.
    pub max: f64,
}

impl Stat {
    /// The statistic of `values` (empty: all zero).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Stat {
        let (mut count, mut sum, mut max) = (0usize, 0.0f64, f64::NEG_INFINITY);
        for v in values {
            count += 1;
            sum += v;
            max = max.max(v);
        }
        if count == 0 {
            return Stat::default();
        }
        Stat { count, mean: sum / count as f64, max }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_a_known_error() {
        let w = [3.0f32, 4.0];
        let q = [3.0f32, 3.0];
        let s = ErrorSums::of(&w, &q);
        assert_eq!(s.nmse(), 1.0 / 25.0);
        assert!((s.sqnr_db() - 13.979_400_086_720_377).abs() < 1e-12);
        assert!((s.cosine() - 21.0 / (5.0 * 18f64.sqrt())).abs() < 1e-12);
        assert_eq!(s.max_abs, 1.0);
        assert_eq!(s.relative_l2(), 0.2);
    }

    #[test]
    fn degenerate_cases() {
        let zero = ErrorSums::of(&[0.0, 0.0], &[0.0, 0.0]);
        assert_eq!((zero.nmse(), zero.cosine()), (0.0, 1.0));
        assert_eq!(zero.sqnr_db(), f64::INFINITY);
        let from_zero = ErrorSums::of(&[0.0], &[1.0]);
        assert_eq!(from_zero.nmse(), f64::INFINITY);
        assert_eq!(Stat::of([]), Stat::default());
        assert_eq!(Stat::of([1.0, 3.0]), Stat { count: 2, mean: 2.0, max: 3.0 });
    }
}
