//! Blocked dense factorisations in f64 for the Hessians of error feedback: the lower Cholesky
//! factor and the inverse of a lower-triangular matrix, in blocks of [`NB`] so that almost all
//! the work is `matrixmultiply::dgemm` on cache-sized tiles.
//!
//! Cholesky, right-looking, for each block column `J` (rows and columns `j0..j1`):
//!
//! ```text
//! L_JJ  = chol(A_JJ)                      (unblocked, below)
//! L_IJ  = A_IJ L_JJ^-T                    for the rows i >= j1 (forward substitution per row)
//! A_II -= L_IJ L_IJ^T                     the trailing matrix, lower part (dgemm per row block)
//! ```
//!
//! Inverse, `X = L^-1`, block column `J` independently of the others:
//!
//! ```text
//! X_JJ = L_JJ^-1
//! X_IJ = -L_II^-1 (sum_{J <= M < I} L_IM X_MJ)      for block rows I after J, in order
//! ```
//!
//! Row and column blocks are fixed ([`NB`]) whatever the thread count, so the results are too.

use rayon::prelude::*;

/// Block size.
pub const NB: usize = 64;

/// `sum a_i b_i` with 8 independent partial sums (lane `i` takes the terms `i mod 8`, lanes
/// added in order): vectorises, and the order is fixed.
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Factorises the symmetric `a` (row-major `[k, k]`, lower triangle read) in place into its
/// lower Cholesky factor `L` (`a = L L^T`; the upper triangle is zeroed). `false` when a pivot
/// is not positive (the matrix is not positive definite in f64).
pub fn cholesky_lower(a: &mut [f64], k: usize) -> bool {
    for j0 in (0..k).step_by(NB) {
        let j1 = (j0 + NB).min(k);
        // The diagonal block.
        for j in j0..j1 {
            let pivot = a[j * k + j] - dot(&a[j * k + j0..j * k + j], &a[j * k + j0..j * k + j]);
            if !(pivot > 0.0 && pivot.is_finite()) {
                return false;
            }
            let d = pivot.sqrt();
            a[j * k + j] = d;
            for i in j + 1..j1 {
                let s = dot(&a[i * k + j0..i * k + j], &a[j * k + j0..j * k + j]);
                a[i * k + j] = (a[i * k + j] - s) / d;
            }
        }
        if j1 == k {
            break;
        }
        // The panel below it: each row solves x L_JJ^T = a, independently.
        let diag: Vec<f64> = (j0..j1).flat_map(|r| a[r * k + j0..r * k + j1].to_vec()).collect();
        let w = j1 - j0;
        a[j1 * k..].par_chunks_mut(k).for_each(|row| {
            for j in 0..w {
                let s = dot(&row[j0..j0 + j], &diag[j * w..j * w + j]);
                row[j0 + j] = (row[j0 + j] - s) / diag[j * w + j];
            }
        });
        // The trailing matrix: A[i][c] -= sum_m P[i][m] P[c][m], rows in blocks of NB, each
        // block from its first column j1 to its own last row.
        let panel: Vec<f64> = (j1..k).flat_map(|r| a[r * k + j0..r * k + j1].to_vec()).collect();
        a[j1 * k..].par_chunks_mut(NB * k).enumerate().for_each(|(bi, block)| {
            let rows = block.len() / k;
            let r0 = bi * NB; // row offset inside the trailing matrix
            let cols = r0 + rows;
            // SAFETY: the panel rows r0.. (rows x w, row-major), the panel's first `cols` rows
            // read as their transpose (w x cols: strides 1, w), and this block's columns j1..
            // (rows x cols, row stride k) inside `block`, not aliased with `panel`.
            unsafe {
                matrixmultiply::dgemm(
                    rows,
                    w,
                    cols,
                    -1.0,
                    panel.as_ptr().add(r0 * w),
                    w as isize,
                    1,
                    panel.as_ptr(),
                    1,
                    w as isize,
                    1.0,
                    block.as_mut_ptr().add(j1),
                    k as isize,
                    1,
                );
            }
        });
    }
    for r in 0..k {
        a[r * k + r + 1..(r + 1) * k].iter_mut().for_each(|v| *v = 0.0);
    }
    true
}

/// `L^-1` of a lower-triangular `l` (row-major `[k, k]`, positive diagonal), lower triangular.
pub fn invert_lower(l: &[f64], k: usize) -> Vec<f64> {
    let columns: Vec<(usize, Vec<f64>)> = (0..k)
        .step_by(NB)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|j0| {
            let w = NB.min(k - j0);
            // X[j0.., j0..j0 + w], row-major (k - j0) x w.
            let mut x = vec![0.0f64; (k - j0) * w];
            for i0 in (j0..k).step_by(NB) {
                let h = NB.min(k - i0);
                // S = sum_{j0 <= m < i0} L[i][m] X[m][:], for the rows i of block I.
                let mut s = vec![0.0f64; h * w];
                if i0 > j0 {
                    // SAFETY: L[i0.., j0..i0] (h x (i0 - j0), row stride k), X[j0..i0, :]
                    // ((i0 - j0) x w, row-major) and s (h x w) are in bounds; s is not aliased.
                    unsafe {
                        matrixmultiply::dgemm(
                            h,
                            i0 - j0,
                            w,
                            1.0,
                            l.as_ptr().add(i0 * k + j0),
                            k as isize,
                            1,
                            x.as_ptr(),
                            w as isize,
                            1,
                            0.0,
                            s.as_mut_ptr(),
                            w as isize,
                            1,
                        );
                    }
                } else {
                    // The diagonal block: L_JJ X_JJ = I.
                    for c in 0..w {
                        s[c * w + c] = -1.0;
                    }
                }
                // L_II Y = -S by forward substitution, column by column of Y.
                for r in 0..h {
                    let i = i0 + r;
                    for c in 0..w {
                        let mut acc = -s[r * w + c];
                        for t in 0..r {
                            acc -= l[i * k + i0 + t] * x[(i0 - j0 + t) * w + c];
                        }
                        x[(i0 - j0 + r) * w + c] = acc / l[i * k + i];
                    }
                }
            }
            (j0, x)
        })
        .collect();
    let mut out = vec![0.0f64; k * k];
    for (j0, x) in columns {
        let w = NB.min(k - j0);
        for (r, row) in x.chunks_exact(w).enumerate() {
            out[(j0 + r) * k + j0..(j0 + r) * k + j0 + w].copy_from_slice(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn spd(k: usize, seed: u64) -> Vec<f64> {
        let x: Vec<f64> = Rng::new(seed).normals(2 * k * k).iter().map(|&v| v as f64).collect();
        let mut a = vec![0.0f64; k * k];
        for row in x.chunks_exact(k) {
            for i in 0..k {
                for j in 0..k {
                    a[i * k + j] += row[i] * row[j];
                }
            }
        }
        a
    }

    #[test]
    fn factors_and_inverts_across_block_edges() {
        for k in [1, 5, 64, 65, 130, 200] {
            let a = spd(k, k as u64);
            let mut l = a.clone();
            assert!(cholesky_lower(&mut l, k));
            let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for i in 0..k {
                for j in 0..k {
                    let s: f64 = (0..k).map(|m| l[i * k + m] * l[j * k + m]).sum();
                    assert!((s - a[i * k + j]).abs() <= 1e-9 * scale, "k {k} ({i}, {j}): {s} vs {}", a[i * k + j]);
                }
                assert!((i + 1..k).all(|j| l[i * k + j] == 0.0));
            }
            let x = invert_lower(&l, k);
            for i in 0..k {
                for j in 0..k {
                    let s: f64 = (0..k).map(|m| l[i * k + m] * x[m * k + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-8, "k {k} ({i}, {j}): {s}");
                }
            }
        }
    }

    #[test]
    fn indefinite_matrices_are_reported() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_lower(&mut a, 2));
    }

    #[test]
    fn results_do_not_depend_on_threads() {
        let k = 150;
        let a = spd(k, 3);
        let run = |t| {
            rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| {
                let mut l = a.clone();
                assert!(cholesky_lower(&mut l, k));
                invert_lower(&l, k)
            })
        };
        assert_eq!(run(1), run(3));
    }
}
