//! Error feedback (GPTQ / LDLQ): choose codes a block of input rows at a time and push each
//! block's error onto the rows not yet coded, through the inverse Hessian.
//!
//! # The algorithm
//!
//! With `Hd^-1 = U^T U` ([`Hessian::factor`], `U` upper triangular), rows are coded in order in
//! blocks `B` of `r` rows (`r = 4` for WINT2, whose byte holds 4 rows of a column; `r = 1` for
//! the per-channel formats). When block `B` is reached, `F` is the set of rows from `B` on and
//! `R = F \ B` the rows after it; the trailing inverse `(Hd_FF)^-1` is `U_FF^T U_FF`. Coding the
//! block's target `x_B` (already updated by earlier blocks) as `c_B` adds, per column,
//!
//! ```text
//! loss_B = (x_B - c_B)^T ((Hd_FF)^-1)_BB^-1 (x_B - c_B) = || M_B (x_B - c_B) ||^2,
//!          M_B = U_BB^-T (lower triangular, r x r)
//! ```
//!
//! to the output error, once the rows of `R` absorb the best compensation:
//!
//! ```text
//! y_B  = M_B (x_B - c_B)
//! W_R -= U_BR^T y_B              i.e. W[t][n] -= sum_{i in B} U[i][t] y_B[i][n],  t in R
//! ```
//!
//! So each block's code is the exact best of its candidates under the `r x r` metric `M_B^T M_B`
//! (for WINT2, all 256 bytes of its column's code map and group scale: vector feedback), and
//! `sum_B ||y_B||^2 = tr(E^T Hd E)` with `E = W - What`.
//!
//! # Cost
//!
//! The update is applied lazily, as GPTQ does: inside a chunk of [`CHUNK_ROWS`] rows each
//! block updates only the rest of its chunk; when the chunk is done, all later rows get the
//! chunk's `Y` at once, `W[e.., :] -= U[s..e, e..]^T Y` (one matrix product). Columns never
//! interact, so the matrix is split into panels of [`PANEL_COLUMNS`] columns coded in parallel;
//! the split does not depend on the thread count, so neither does the result.

use rayon::prelude::*;

use super::importance::Hessian;

/// Rows per lazily applied chunk: one WINT2 group (64 rows), so a group's scales are fixed
/// when its chunk starts.
pub const CHUNK_ROWS: usize = 64;

/// Columns per independently coded panel.
pub const PANEL_COLUMNS: usize = 64;

/// What feedback needs from a format: the best code of one block of one column under a metric.
pub(crate) trait BlockCoder: Sync {
    /// Per-column state for one chunk of rows (e.g. WINT2's decoded codebook of a group).
    type Chunk: Send;
    /// Rows per block; divides [`CHUNK_ROWS`].
    fn rows(&self) -> usize;
    /// The alternatives for column `col` in the chunk starting at row `row0` (e.g. WINT2's
    /// neighbouring local scales), at least one: each is tried on the whole chunk, with the
    /// feedback inside it, and the one of lowest loss is kept ([`Coded::choices`]).
    fn candidates(&self, col: usize, row0: usize) -> Vec<Self::Chunk>;
    /// The code minimising `||m (x - c)||^2` over the candidates `c` of the block at row `row`
    /// (`m`: lower-triangular `rows x rows`, row-major; `x`: the block's target). Writes the
    /// decoded candidate to `out` and returns its code.
    fn code(&self, chunk: &Self::Chunk, row: usize, x: &[f32], m: &[f32], out: &mut [f32]) -> u8;
}

/// One panel's codes and choices ([`code_panel`]).
type PanelCodes = (Vec<u8>, Vec<u8>);

/// What [`code_matrix`] chose.
pub(crate) struct Coded {
    /// The codes, row-major `[k / rows, n]`.
    pub codes: Vec<u8>,
    /// The candidate kept per chunk and column, row-major `[k / CHUNK_ROWS, n]`.
    pub choices: Vec<u8>,
}

/// Codes the row-major `[k, n]` matrix `w` with feedback under `hessian`. `k` must be a
/// multiple of [`CHUNK_ROWS`] and equal `hessian.k()`.
pub(crate) fn code_matrix<C: BlockCoder>(w: &[f32], k: usize, n: usize, hessian: &Hessian, coder: &C) -> Coded {
    let r = coder.rows();
    let metrics = block_metrics(hessian, r);
    let panels: Vec<(usize, PanelCodes)> = (0..n)
        .step_by(PANEL_COLUMNS)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|c0| {
            let p = PANEL_COLUMNS.min(n - c0);
            (c0, code_panel(w, k, n, c0, p, hessian, &metrics, coder))
        })
        .collect();
    let mut codes = vec![0u8; k / r * n];
    let mut choices = vec![0u8; k / CHUNK_ROWS * n];
    for (c0, (panel, chosen)) in panels {
        place_columns(&mut codes, n, c0, &panel);
        place_columns(&mut choices, n, c0, &chosen);
    }
    Coded { codes, choices }
}

/// Copies the columns `c0..c0 + p` of a row-major matrix `n` wide from `panel` (row-major,
/// `p = min(PANEL_COLUMNS, n - c0)` wide).
fn place_columns(dst: &mut [u8], n: usize, c0: usize, panel: &[u8]) {
    let p = PANEL_COLUMNS.min(n - c0);
    for (row, src) in panel.chunks_exact(p).enumerate() {
        dst[row * n + c0..row * n + c0 + p].copy_from_slice(src);
    }
}

/// `M_B = U_BB^-T` of every block, row-major `r x r` each.
fn block_metrics(hessian: &Hessian, r: usize) -> Vec<Vec<f32>> {
    let (k, u) = (hessian.k(), hessian.factor());
    (0..k / r)
        .map(|b| {
            let s = b * r;
            // L = U_BB^T is lower triangular; invert it by forward substitution in f64.
            let l = |i: usize, j: usize| u[(s + j) * k + s + i] as f64;
            let mut m = vec![0.0f64; r * r];
            for c in 0..r {
                for i in c..r {
                    let known: f64 = (c..i).map(|j| l(i, j) * m[j * r + c]).sum();
                    let rhs = if i == c { 1.0 } else { 0.0 };
                    m[i * r + c] = (rhs - known) / l(i, i);
                }
            }
            m.into_iter().map(|v| v as f32).collect()
        })
        .collect()
}

/// Codes columns `c0..c0 + p`: returns their codes, row-major `[k / r, p]`, and the candidate
/// kept per chunk, `[k / CHUNK_ROWS, p]`.
#[allow(clippy::too_many_arguments)]
fn code_panel<C: BlockCoder>(
    w: &[f32],
    k: usize,
    n: usize,
    c0: usize,
    p: usize,
    hessian: &Hessian,
    metrics: &[Vec<f32>],
    coder: &C,
) -> PanelCodes {
    let r = coder.rows();
    let u = hessian.factor();
    let mut x: Vec<f32> = (0..k).flat_map(|row| w[row * n + c0..row * n + c0 + p].iter().copied()).collect();
    let mut codes = vec![0u8; k / r * p];
    let mut choices = vec![0u8; k / CHUNK_ROWS * p];
    let mut y = vec![0.0f32; CHUNK_ROWS * p];
    for s in (0..k).step_by(CHUNK_ROWS) {
        let e = (s + CHUNK_ROWS).min(k);
        for j in 0..p {
            let column: Vec<f32> = (s..e).map(|t| x[t * p + j]).collect();
            let mut best: Option<ChunkCode> = None;
            for (ci, cand) in coder.candidates(c0 + j, s).iter().enumerate() {
                let coded = code_chunk(coder, cand, &column, s, k, u, metrics);
                if best.as_ref().is_none_or(|b| coded.loss < b.loss) {
                    best = Some(ChunkCode { choice: ci as u8, ..coded });
                }
            }
            let Some(best) = best else { continue };
            for (t, (xv, yv)) in best.x.iter().zip(&best.y).enumerate() {
                x[(s + t) * p + j] = *xv;
                y[t * p + j] = *yv;
            }
            for (b, &c) in best.codes.iter().enumerate() {
                codes[(s / r + b) * p + j] = c;
            }
            choices[s / CHUNK_ROWS * p + j] = best.choice;
        }
        if e < k {
            // Later rows, at once: X[e.., :] -= U[s..e, e..]^T Y.
            let rest = k - e;
            // SAFETY: A = U[s..e, e..]^T is read as a rest x (e - s) matrix with row stride 1
            // and column stride k inside `u` (k x k); B = y (e - s) x p row-major; C = the
            // rows e.. of x, rest x p row-major, not aliased with A or B.
            unsafe {
                matrixmultiply::sgemm(
                    rest,
                    e - s,
                    p,
                    -1.0,
                    u.as_ptr().add(s * k + e),
                    1,
                    k as isize,
                    y.as_ptr(),
                    p as isize,
                    1,
                    1.0,
                    x.as_mut_ptr().add(e * p),
                    p as isize,
                    1,
                );
            }
        }
    }
    (codes, choices)
}

/// One column's chunk coded with one candidate.
struct ChunkCode {
    /// The candidate's index.
    choice: u8,
    /// `sum_B ||y_B||^2` over the chunk's blocks.
    loss: f64,
    /// The chunk's targets as updated inside the chunk.
    x: Vec<f32>,
    /// `y` of every row of the chunk.
    y: Vec<f32>,
    /// One code per block.
    codes: Vec<u8>,
}

/// Codes the chunk of one column starting at row `s` (`column`: its targets) block by block,
/// each block's error fed to the rest of the chunk: `x[t] -= sum_{i in B} U[i][t] y[i]`.
fn code_chunk<C: BlockCoder>(coder: &C, cand: &C::Chunk, column: &[f32], s: usize, k: usize, u: &[f32], metrics: &[Vec<f32>]) -> ChunkCode {
    let r = coder.rows();
    let len = column.len();
    let mut x = column.to_vec();
    let mut y = vec![0.0f32; len];
    let mut codes = Vec::with_capacity(len / r);
    let (mut decoded, mut err) = (vec![0.0f32; r], vec![0.0f32; r]);
    let mut loss = 0.0f64;
    for b in (0..len).step_by(r) {
        let m = &metrics[(s + b) / r];
        codes.push(coder.code(cand, s + b, &x[b..b + r], m, &mut decoded));
        for i in 0..r {
            err[i] = x[b + i] - decoded[i];
        }
        // y_B = M_B (x_B - c_B), M_B lower triangular.
        for i in 0..r {
            let yi: f32 = (0..=i).map(|t| m[i * r + t] * err[t]).sum();
            y[b + i] = yi;
            loss += f64::from(yi) * f64::from(yi);
        }
        for t in b + r..len {
            let update: f32 = (0..r).map(|i| u[(s + b + i) * k + s + t] * y[b + i]).sum();
            x[t] -= update;
        }
    }
    ChunkCode { choice: 0, loss, x, y, codes }
}

/// The `[k, k]` identity, row-major: the Hessian under which feedback has nothing to feed.
#[cfg(test)]
pub(crate) fn identity(k: usize) -> Vec<f32> {
    (0..k * k).map(|i| f32::from(u8::from(i / k == i % k))).collect()
}

/// `X^T X / T` of `4k` tokens whose channels are random mixtures of each other (strongly
/// correlated, as real activations are): the Hessian of the feedback tests.
#[cfg(test)]
pub(crate) fn correlated_hessian(k: usize, seed: u64) -> Vec<f32> {
    let t = 4 * k;
    let mix = crate::rng::Rng::new(seed).normals(k * k);
    let z = crate::rng::Rng::new(seed + 1).normals(t * k);
    let mut x = vec![0.0f32; t * k];
    for (xr, zr) in x.chunks_exact_mut(k).zip(z.chunks_exact(k)) {
        for (c, xv) in xr.iter_mut().enumerate() {
            *xv = zr.iter().zip(&mix[c * k..(c + 1) * k]).map(|(a, b)| a * b).sum::<f32>() + 0.1 * zr[c];
        }
    }
    let mut h = vec![0.0f32; k * k];
    for xr in x.chunks_exact(k) {
        for a in 0..k {
            for b in 0..k {
                h[a * k + b] += xr[a] * xr[b] / t as f32;
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Rounds to a fixed grid of step `q`: the scalar coder of the tests.
    struct Grid {
        q: f32,
        rows: usize,
    }

    impl BlockCoder for Grid {
        type Chunk = ();
        fn rows(&self) -> usize {
            self.rows
        }
        fn candidates(&self, _col: usize, _row0: usize) -> Vec<()> {
            vec![()]
        }
        fn code(&self, _chunk: &(), _row: usize, x: &[f32], _m: &[f32], out: &mut [f32]) -> u8 {
            // Per-row rounding ignores the metric: exact only for r = 1.
            for (o, v) in out.iter_mut().zip(x) {
                *o = (v / self.q).round().clamp(-3.0, 3.0) * self.q;
            }
            (out[0] / self.q) as i8 as u8
        }
    }

    fn decode(codes: &[u8], q: f32) -> Vec<f32> {
        codes.iter().map(|&c| c as i8 as f32 * q).collect()
    }

    /// Each weight rounded alone to the test grid (steps of `q`, codes -3..=3).
    fn round_plain(w: &[f32], q: f32) -> Vec<f32> {
        w.iter().map(|v| (v / q).round().clamp(-3.0, 3.0) * q).collect()
    }

    #[test]
    fn feedback_lowers_output_error() {
        let (k, n) = (128, 40);
        let hs = Hessian::new(k, &correlated_hessian(k, 3), 0.01).unwrap();
        let w = Rng::new(9).normals(k * n);
        let grid = Grid { q: 0.7, rows: 1 };
        let fed = decode(&code_matrix(&w, k, n, &hs, &grid).codes, grid.q);
        let plain = round_plain(&w, grid.q);
        let err = |d: &[f32]| -> f64 { hs.output_errors(&w, d, n).iter().sum() };
        assert!(err(&fed) < 0.7 * err(&plain), "feedback {} plain {}", err(&fed), err(&plain));
    }

    #[test]
    fn identity_hessian_is_plain_rounding() {
        let (k, n) = (64, 9);
        let hs = Hessian::new(k, &identity(k), 0.0).unwrap();
        let w = Rng::new(4).normals(k * n);
        let grid = Grid { q: 0.5, rows: 1 };
        let fed = decode(&code_matrix(&w, k, n, &hs, &grid).codes, grid.q);
        let plain = round_plain(&w, grid.q);
        assert_eq!(fed, plain);
    }

    #[test]
    fn panels_do_not_depend_on_threads() {
        let (k, n) = (128, 150);
        let hs = Hessian::new(k, &correlated_hessian(k, 5), 0.01).unwrap();
        let w = Rng::new(6).normals(k * n);
        let grid = Grid { q: 0.3, rows: 1 };
        let run = |t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| code_matrix(&w, k, n, &hs, &grid).codes);
        assert_eq!(run(1), run(3));
    }
}
