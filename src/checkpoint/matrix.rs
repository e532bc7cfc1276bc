//! Reading source tensors as one logical matrix: the `[K = in, N = out]` row-major f32 matrix
//! every scheme encodes, assembled from one or more stored tensors (fused q|k|v, gate|up) and
//! transposed from PyTorch's `[out, in]` where the tensors are stored that way.

use super::Checkpoint;
use crate::error::{Error, Result};

impl Checkpoint {
    /// Reads `sources` as f32 and assembles the logical `[k, n]` row-major matrix, their
    /// columns side by side:
    ///
    /// ```text
    /// W[row][off_i + j] = S_i[j][row]    sources stored [out, in] (transpose)
    /// W[row][off_i + j] = S_i[row][j]    otherwise
    /// ```
    ///
    /// Each source must hold `k` rows (inputs) and the widths must add up to `n`; a source
    /// that does not, or a NaN or infinite value, is an error naming the tensor and its file.
    pub fn logical_matrix(&self, sources: &[String], k: usize, n: usize, transpose: bool) -> Result<Vec<f32>> {
        let Some(first) = sources.first() else {
            return Err(Error::BadInput {
                problem: format!("a logical [{k}, {n}] matrix of {} needs at least one source tensor", self.path().display()),
            });
        };
        let mut w = vec![0.0f32; k.checked_mul(n).ok_or_else(|| self.bad_matrix(first, k, n, "is too large"))?];
        let mut offset = 0;
        for name in sources {
            let entry = self.get(name)?;
            let width = source_width(&entry.shape, k, transpose)
                .filter(|&w| offset + w <= n)
                .ok_or_else(|| self.bad_matrix(name, k, n, "does not hold k rows of the columns left"))?;
            let s = self.read_f32_finite(name)?;
            if transpose {
                transpose_into(&s, width, k, &mut w, n, offset);
            } else {
                for row in 0..k {
                    w[row * n + offset..row * n + offset + width].copy_from_slice(&s[row * width..(row + 1) * width]);
                }
            }
            offset += width;
        }
        if offset != n {
            return Err(self.bad_matrix(first, k, n, &format!("and the tensors fused with it hold {offset} columns")));
        }
        Ok(w)
    }

    /// The file that holds tensor `name` (the checkpoint's path when it is not found).
    pub fn file_of(&self, name: &str) -> std::path::PathBuf {
        match self.get(name) {
            Ok(e) => self.shards()[e.shard].path.clone(),
            Err(_) => self.path().to_path_buf(),
        }
    }

    fn bad_matrix(&self, name: &str, k: usize, n: usize, problem: &str) -> Error {
        let shape = self.get(name).map(|e| format!("{:?}", e.shape)).unwrap_or_default();
        Error::BadTensor {
            file: Some(self.file_of(name)),
            tensor: name.to_string(),
            problem: format!("stored {shape}; read as part of a logical [{k}, {n}] matrix it {problem}"),
        }
    }
}

/// Columns a stored tensor of `shape` gives a logical matrix of `k` rows: its output count
/// when it is a matrix with `k` inputs, 1 for a vector of `k` values.
fn source_width(shape: &[usize], k: usize, transpose: bool) -> Option<usize> {
    match *shape {
        [out, input] if transpose && input == k => Some(out),
        [input, out] if !transpose && input == k => Some(out),
        [len] if len == k => Some(1),
        _ if shape.iter().product::<usize>() == k => Some(1),
        _ => None,
    }
}

/// `dst[r * dst_cols + offset + c] = src[c * rows + r]` for a `[cols, rows]` source, in
/// 64 x 64 tiles so that both sides stay in cache.
fn transpose_into(src: &[f32], cols: usize, rows: usize, dst: &mut [f32], dst_cols: usize, offset: usize) {
    const TILE: usize = 64;
    for c0 in (0..cols).step_by(TILE) {
        for r0 in (0..rows).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                for r in r0..(r0 + TILE).min(rows) {
                    dst[r * dst_cols + offset + c] = src[c * rows + r];
                }
            }
        }
    }
}
