//! What an encoder minimises: the importance of a matrix's input rows.
//!
//! A linear layer `y = x W` (`W` logical `[K, N]`) fed with the calibration rows `X` (`[T, K]`)
//! makes the output error `||X W - X What||^2 = tr(E^T H E)`, `E = W - What`, `H = X^T X / T`.
//! An encoder can see three approximations of that, from none to all of it:
//!
//! - [`Importance::Uniform`]: `H = I`, the plain squared error;
//! - [`Importance::Diagonal`]: `H = diag(h)`, input channels independent (`h_k` is the mean
//!   square activation of channel `k`);
//! - [`Importance::Hessian`]: the full damped `H`, with the factor error feedback needs
//!   ([`super::feedback`]).
//!
//! # Damping and factorisation
//!
//! ```text
//! lambda = damp * mean_k H[k][k]                    (relative damping, default 0.01)
//! Hd     = H + lambda I
//! Hd     = V V^T,   V upper triangular              ("upper-lower" Cholesky, rows from the end)
//! U      = V^-1,    so Hd^-1 = U^T U                (U upper: GPTQ's Cholesky factor of H^-1)
//! ```
//!
//! With `P` the exchange matrix (rows and columns reversed), `P Hd P = L L^T` is an ordinary
//! lower Cholesky factorisation, so `V = P L P` and `U = P L^-1 P` (both blocked, in
//! [`super::cholesky`]).
//!
//! A pivot that is not positive (a Hessian that is singular in f64 even after damping) makes the
//! factorisation retry with ten times the damping, up to [`MAX_RETRIES`] times; the damping
//! finally used is reported ([`Damping`]). A Hessian whose diagonal is all zero (an expert that
//! received no token and has no layer statistics to borrow) carries no information: it is
//! replaced by the identity, so the encoder falls back to the plain squared error, and
//! [`Damping::empty`] says so. Nothing here returns NaN: the inputs are checked finite and the
//! pivots positive.

use super::cholesky::{cholesky_lower, invert_lower};
use super::SchemeError;

/// Default relative damping (`--damp`): a hundredth of the mean diagonal, as GPTQ uses.
pub const DEFAULT_DAMP: f32 = 0.01;

/// Times the damping is multiplied by ten after a failed factorisation before giving up.
pub const MAX_RETRIES: usize = 6;

/// The importance an encoder is given for a logical `[K, N]` matrix.
#[derive(Debug, Clone, Copy, Default)]
pub enum Importance<'a> {
    /// Every input row counts the same: minimise `||W - What||^2`.
    #[default]
    Uniform,
    /// One weight per input row (length `K`, finite, `>= 0`): minimise `sum_k h_k ||W_k - What_k||^2`.
    Diagonal(&'a [f32]),
    /// The full damped Hessian: minimise `tr(E^T H E)` with error feedback.
    Hessian(&'a Hessian),
}

impl<'a> From<Option<&'a [f32]>> for Importance<'a> {
    /// `Some(h)` is [`Importance::Diagonal`], `None` [`Importance::Uniform`].
    fn from(h: Option<&'a [f32]>) -> Importance<'a> {
        h.map_or(Importance::Uniform, Importance::Diagonal)
    }
}

impl<'a> Importance<'a> {
    /// The per-row weights an encoder without feedback uses: `h` itself, or the damped diagonal
    /// of a Hessian; `None` when uniform.
    pub fn diagonal(&self) -> Option<&'a [f32]> {
        match self {
            Importance::Uniform => None,
            Importance::Diagonal(h) => Some(h),
            Importance::Hessian(h) => Some(&h.diag),
        }
    }

    /// The rows this importance describes, if it says.
    pub fn rows(&self) -> Option<usize> {
        match self {
            Importance::Uniform => None,
            Importance::Diagonal(h) => Some(h.len()),
            Importance::Hessian(h) => Some(h.k),
        }
    }
}

/// How a Hessian was damped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Damping {
    /// The relative damping asked for.
    pub requested: f32,
    /// The relative damping the factorisation succeeded with (`requested * 10^retries`).
    pub used: f32,
    /// The absolute `lambda` added to the diagonal.
    pub lambda: f64,
    /// Failed factorisations before the one that succeeded.
    pub retries: usize,
    /// The Hessian's diagonal was all zero; the identity was used instead.
    pub empty: bool,
}

/// A damped, factorised Hessian `H` of one matrix input (`[K, K]`, symmetric).
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    k: usize,
    /// `Hd = H + lambda I`, row-major `[K, K]`.
    h: Vec<f32>,
    /// Its diagonal.
    diag: Vec<f32>,
    /// `U`, upper triangular, `Hd^-1 = U^T U`, row-major `[K, K]` (zeros below the diagonal).
    u: Vec<f32>,
    damping: Damping,
}

impl Hessian {
    /// Damps and factorises `xtx` (row-major `[k, k]`, e.g. `X^T X / T`; only symmetric input is
    /// meaningful, the upper triangle is what is read) with relative damping `damp`.
    pub fn new(k: usize, xtx: &[f32], damp: f32) -> Result<Hessian, SchemeError> {
        let expected = k.checked_mul(k).ok_or(SchemeError::HessianShape { k, found: xtx.len() })?;
        if k == 0 || xtx.len() != expected {
            return Err(SchemeError::HessianShape { k, found: xtx.len() });
        }
        if let Some(i) = xtx.iter().position(|v| !v.is_finite()) {
            return Err(SchemeError::BadHessian { row: i / k, col: i % k, value: xtx[i] });
        }
        if let Some(i) = (0..k).find(|&i| xtx[i * k + i] < 0.0) {
            return Err(SchemeError::BadHessian { row: i, col: i, value: xtx[i * k + i] });
        }
        if !(damp.is_finite() && damp >= 0.0) {
            return Err(SchemeError::BadDamping { value: damp });
        }
        let mean_diag = (0..k).map(|i| xtx[i * k + i] as f64).sum::<f64>() / k as f64;
        let empty = mean_diag <= f64::from(f32::MIN_POSITIVE);
        // The symmetric H from the upper triangle (the identity when empty).
        let base = |r: usize, c: usize| -> f64 {
            match empty {
                true => f64::from(u8::from(r == c)),
                false => xtx[r.min(c) * k + r.max(c)] as f64,
            }
        };
        let scale = if empty { 1.0 } else { mean_diag };
        // At least a tiny damping, so that an all-zero channel never gives a zero pivot.
        let mut relative = f64::from(damp).max(1e-6);
        for retries in 0..=MAX_RETRIES {
            let lambda = relative * scale;
            if let Some(u) = upper_lower_inverse(&base, k, lambda) {
                let h: Vec<f32> = (0..k * k).map(|i| (base(i / k, i % k) + if i / k == i % k { lambda } else { 0.0 }) as f32).collect();
                let diag = (0..k).map(|i| h[i * k + i]).collect();
                let damping = Damping { requested: damp, used: relative as f32, lambda, retries, empty };
                return Ok(Hessian { k, h, diag, u, damping });
            }
            relative *= 10.0;
        }
        Err(SchemeError::HessianNotPositive { k, damp: relative as f32 })
    }

    /// Rows (and columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The damped Hessian `Hd`, row-major `[K, K]`.
    pub fn matrix(&self) -> &[f32] {
        &self.h
    }

    /// The damped diagonal.
    pub fn diag(&self) -> &[f32] {
        &self.diag
    }

    /// `U` with `Hd^-1 = U^T U`, upper triangular, row-major.
    pub fn factor(&self) -> &[f32] {
        &self.u
    }

    /// How it was damped.
    pub fn damping(&self) -> Damping {
        self.damping
    }

    /// Per column: the output error of `w_hat` against `w` (both row-major `[K, N]`),
    /// [`Hessian::column_errors`] of `w - w_hat`.
    pub fn output_errors(&self, w: &[f32], w_hat: &[f32], n: usize) -> Vec<f64> {
        let e: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
        self.column_errors(&e, n)
    }

    /// Per column `c` of the row-major `[K, N]` error `e`: `e_c^T Hd e_c` (the output error of
    /// that column); their sum is `tr(E^T Hd E)`.
    pub fn column_errors(&self, e: &[f32], n: usize) -> Vec<f64> {
        let k = self.k;
        let mut he = vec![0.0f32; k * n];
        // SAFETY: the pointers cover k x k, k x n and k x n row-major matrices with the strides
        // given, and `he` is not aliased.
        unsafe {
            matrixmultiply::sgemm(
                k,
                k,
                n,
                1.0,
                self.h.as_ptr(),
                k as isize,
                1,
                e.as_ptr(),
                n as isize,
                1,
                0.0,
                he.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        let mut out = vec![0.0f64; n];
        for (er, hr) in e.chunks_exact(n).zip(he.chunks_exact(n)) {
            for ((o, &a), &b) in out.iter_mut().zip(er).zip(hr) {
                *o += a as f64 * b as f64;
            }
        }
        out
    }
}

/// `V` upper triangular with `H + lambda I = V V^T` (`H[r][c] = base(r, c)`), inverted and
/// rounded to f32: `U = V^-1`, or `None` when a pivot is not positive. With `P` the exchange
/// matrix (rows and columns reversed), `P (H + lambda I) P = L L^T` (lower Cholesky,
/// [`cholesky_lower`]), so `V = P L P` and `U = P L^-1 P` ([`invert_lower`]). Holds two f64
/// copies of the matrix at most.
fn upper_lower_inverse(base: &dyn Fn(usize, usize) -> f64, k: usize, lambda: f64) -> Option<Vec<f32>> {
    let flip = |i: usize| k - 1 - i;
    let mut a: Vec<f64> = (0..k * k).map(|i| base(flip(i / k), flip(i % k)) + if i / k == i % k { lambda } else { 0.0 }).collect();
    if !cholesky_lower(&mut a, k) {
        return None;
    }
    let x = invert_lower(&a, k);
    drop(a);
    Some((0..k * k).map(|i| x[flip(i / k) * k + flip(i % k)] as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn gram(k: usize, t: usize, seed: u64) -> Vec<f32> {
        let x = Rng::new(seed).normals(t * k);
        let mut h = vec![0.0f32; k * k];
        for row in x.chunks_exact(k) {
            for a in 0..k {
                for b in 0..k {
                    h[a * k + b] += row[a] * row[b] / t as f32;
                }
            }
        }
        h
    }

    #[test]
    fn factor_inverts_the_damped_hessian() {
        let k = 24;
        let hs = Hessian::new(k, &gram(k, 100, 1), 0.01).unwrap();
        let (h, u) = (hs.matrix(), hs.factor());
        // Hd (U^T U) = I.
        for r in 0..k {
            for c in 0..k {
                let mut s = 0.0f64;
                for m in 0..k {
                    let inv: f64 = (0..k).map(|j| u[j * k + m] as f64 * u[j * k + c] as f64).sum();
                    s += h[r * k + m] as f64 * inv;
                }
                let want = if r == c { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-3, "({r}, {c}): {s}");
            }
        }
        assert!((0..k).all(|r| (0..r).all(|c| u[r * k + c] == 0.0)));
    }

    #[test]
    fn singular_hessians_are_damped_not_failed() {
        let k = 16;
        // Rank one from a single token, with two dead channels.
        let mut x = Rng::new(2).normals(k);
        x[3] = 0.0;
        x[7] = 0.0;
        let h: Vec<f32> = (0..k * k).map(|i| x[i / k] * x[i % k]).collect();
        let hs = Hessian::new(k, &h, 0.0).unwrap();
        assert!(hs.factor().iter().all(|v| v.is_finite()));
        let zero = Hessian::new(k, &vec![0.0; k * k], 0.01).unwrap();
        assert!(zero.damping().empty);
        assert!(zero.factor().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_hessians_are_refused() {
        assert!(matches!(Hessian::new(4, &[0.0; 15], 0.01), Err(SchemeError::HessianShape { .. })));
        let mut h = vec![0.0f32; 16];
        h[5] = f32::NAN;
        assert!(matches!(Hessian::new(4, &h, 0.01), Err(SchemeError::BadHessian { row: 1, col: 1, .. })));
        h[5] = -1.0;
        assert!(matches!(Hessian::new(4, &h, 0.01), Err(SchemeError::BadHessian { .. })));
        assert!(matches!(Hessian::new(4, &[0.0; 16], -1.0), Err(SchemeError::BadDamping { .. })));
    }
}
