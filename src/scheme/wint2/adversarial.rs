//! Adversarial columns (issue 14, defect 4): one huge value, one tiny, constants, alternating
//! signs, subnormals, zeros, mixed with Gaussian columns. Every column must decode finitely,
//! never worse than the all-zero reconstruction under the encoder's own measure, and a huge
//! outlier must keep its sign unless its column is stored as zeros.

use proptest::prelude::*;

use super::*;
use crate::rng::Rng;
use crate::scheme::feedback::correlated_hessian;
use crate::scheme::importance::Hessian;
use crate::scheme::Importance;

const K: usize = 128;

/// Huge outliers tried.
const HUGE: [f32; 4] = [1e20, 1e30, f32::MAX / 4.0, -1e20];

/// Column `kind` (see the match) from `seed`; returns the column and its outlier row, if any.
fn column(kind: usize, seed: u64) -> (Vec<f32>, Option<usize>) {
    let mut rng = Rng::new(seed);
    let g: Vec<f32> = rng.normals(K);
    let row = (seed as usize * 7 + 3) % K;
    let with = |mut v: Vec<f32>, x: f32| {
        v[row] = x;
        (v, Some(row))
    };
    match kind {
        0..=3 => with(g, HUGE[kind]),
        4 => with(vec![0.0; K], 1e-30),
        5 => with(g, 1e-30),
        6 => (vec![0.75; K], None),
        7 => (vec![-3e25; K], None),
        8 => ((0..K).map(|r| if r % 2 == 0 { 1.0 } else { -1.0 }).collect(), None),
        9 => ((0..K).map(|r| if r % 2 == 0 { 1e30 } else { -1e30 }).collect(), None),
        10 => (g.iter().map(|v| v * 1e-40).collect(), None),
        11 => (vec![f32::from_bits(1); K], None),
        12 => (vec![0.0; K], None),
        13 => (g.iter().map(|v| v * 1e-30).collect(), None),
        14 => (g.iter().map(|v| v * (f32::MAX / 16.0)).collect(), None),
        _ => (g, None),
    }
}

/// A `[K, n]` row-major matrix of the given column kinds, and each column's outlier row.
fn matrix(kinds: &[usize], seed: u64) -> (Vec<f32>, Vec<Option<usize>>) {
    let n = kinds.len();
    let mut w = vec![0.0f32; K * n];
    let mut outliers = Vec::with_capacity(n);
    for (col, &kind) in kinds.iter().enumerate() {
        let (x, o) = column(kind, seed.wrapping_mul(31).wrapping_add(col as u64));
        for (r, v) in x.into_iter().enumerate() {
            w[r * n + col] = v;
        }
        outliers.push(o);
    }
    (w, outliers)
}

/// Checks every column of `d` against `w`: finite, weighted error at most the column's
/// weighted energy, outlier sign kept when the column is not all zeros.
fn check(w: &[f32], d: &[f32], n: usize, h: &[f32], outliers: &[Option<usize>]) -> Result<(), TestCaseError> {
    prop_assert!(d.iter().all(|v| v.is_finite()), "non-finite decoded value");
    for (col, outlier) in outliers.iter().enumerate() {
        let (mut err, mut energy) = (0.0f64, 0.0f64);
        for r in 0..K {
            let (x, y, hr) = (w[r * n + col] as f64, d[r * n + col] as f64, h[r] as f64);
            err += hr * (x - y).powi(2);
            energy += hr * x * x;
        }
        prop_assert!(err <= energy * (1.0 + 1e-9), "column {col}: error {err:e} > energy {energy:e}");
        let zero = (0..K).all(|r| d[r * n + col] == 0.0);
        if let (Some(r), false) = (outlier, zero) {
            let (x, y) = (w[r * n + col], d[r * n + col]);
            prop_assert!(x.abs() < 1.0 || x * y >= 0.0, "column {col}: outlier {x:e} decoded {y:e}");
        }
    }
    Ok(())
}

fn kinds() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0usize..18, 1..10)
}

fn effort() -> impl Strategy<Value = Effort> {
    proptest::sample::select(Effort::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn adversarial_columns_uniform(kinds in kinds(), seed in 0u64..1000, effort in effort()) {
        let n = kinds.len();
        let (w, outliers) = matrix(&kinds, seed);
        let s = Wint2 { effort };
        let d = s.decode(&s.encode(&w, K, n, Importance::Uniform).unwrap()).unwrap();
        check(&w, &d, n, &[1.0; K], &outliers)?;
    }

    #[test]
    fn adversarial_columns_diagonal(kinds in kinds(), seed in 0u64..1000, skew in 0.0f64..3.0, extreme in 0usize..4) {
        let n = kinds.len();
        let (w, outliers) = matrix(&kinds, seed);
        let mut h: Vec<f32> = Rng::new(seed + 1).normals(K).iter().map(|z| (skew * *z as f64).exp() as f32).collect();
        // Zero, huge and tiny importances too.
        match extreme {
            0 => h[seed as usize % K] = 0.0,
            1 => h.iter_mut().for_each(|v| *v *= 1e30),
            2 => h.iter_mut().for_each(|v| *v *= 1e-30),
            _ => {}
        }
        let s = Wint2::default();
        let d = s.decode(&s.encode(&w, K, n, Importance::Diagonal(&h)).unwrap()).unwrap();
        check(&w, &d, n, &h, &outliers)?;
    }
}

/// Under a full Hessian: per column `e^T Hd e <= w^T Hd w` (computed in f64).
#[test]
fn adversarial_columns_hessian() {
    let kinds: Vec<usize> = (0..18).collect();
    let (w, outliers) = matrix(&kinds, 5);
    let n = kinds.len();
    let h = Hessian::new(K, &correlated_hessian(K, 9), 0.01).unwrap();
    let s = Wint2::default();
    let d = s.decode(&s.encode(&w, K, n, Importance::Hessian(&h)).unwrap()).unwrap();
    assert!(d.iter().all(|v| v.is_finite()));
    let m = h.matrix();
    let quad = |v: &dyn Fn(usize) -> f64| -> f64 { (0..K).map(|i| v(i) * (0..K).map(|j| m[i * K + j] as f64 * v(j)).sum::<f64>()).sum() };
    for (col, outlier) in outliers.iter().enumerate() {
        let err = quad(&|r| w[r * n + col] as f64 - d[r * n + col] as f64);
        let energy = quad(&|r| w[r * n + col] as f64);
        // The encoder measures in f32 (sgemm); allow its rounding.
        assert!(err <= energy * (1.0 + 1e-4), "column {col}: error {err:e} > energy {energy:e}");
        if let Some(r) = *outlier {
            let (x, y) = (w[r * n + col], d[r * n + col]);
            let zero = (0..K).all(|r| d[r * n + col] == 0.0);
            assert!(zero || x.abs() < 1.0 || x * y >= 0.0, "column {col}: outlier {x:e} decoded {y:e}");
        }
    }
}

/// The column: one 1e20 among Gaussians keeps its direction after the fix.
#[test]
fn one_huge_weight_keeps_its_column() {
    let (k, n) = (128, 8);
    let mut w = Rng::new(1).normals(k * n);
    w[3 * n + 2] = 1e20;
    let s = Wint2::default();
    let d = s.decode(&s.encode(&w, k, n, Importance::Uniform).unwrap()).unwrap();
    let col = |m: &[f32]| -> Vec<f64> { (0..k).map(|r| m[r * n + 2] as f64).collect() };
    let (x, y) = (col(&w), col(&d));
    let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
    let (nx, ny) = (x.iter().map(|a| a * a).sum::<f64>().sqrt(), y.iter().map(|a| a * a).sum::<f64>().sqrt());
    let err: f64 = x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum();
    assert!(err < 0.6 * nx * nx, "error / energy {}", err / (nx * nx));
    assert!(dot / (nx * ny) > 0.6, "cosine {}", dot / (nx * ny));
    assert!(y[3] > 0.0);
}
