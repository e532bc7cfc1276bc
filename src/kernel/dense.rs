//! Unquantized weights for the kernels: logical `[K, N]` row-major, bf16 (`SIZE = 2`) or
//! f32 (`SIZE = 4`), little-endian. A tile is a plain copy of `TILE_K` rows of the block's
//! columns (bf16 widened exactly: its bits shifted into the top half of an f32).

use rayon::prelude::*;

use super::{KernelPath, KernelView, Tile, TileSource, BLOCK_N, TILE_K};
use crate::scheme::SchemeError;

/// From this many rows of `x` on, f32 weights are multiplied by `matrixmultiply`'s GEMM
/// ([`DenseView::gemm`]) instead of the tile kernels.
pub(crate) const GEMM_MIN_ROWS: usize = 16;

/// Rows of `x` per parallel GEMM task for `m` rows: at least 64, at most 8 tasks (each task
/// packs the whole weight matrix once, so fewer, taller tasks pack less). A function of `m`
/// alone, so the result does not depend on threads.
fn gemm_rows(m: usize) -> usize {
    m.div_ceil(8).next_multiple_of(64).max(64)
}

impl<const SIZE: usize> DenseView<'_, SIZE> {
    /// `y = x W` by `matrixmultiply::sgemm`, in parallel over fixed blocks of
    /// [`gemm_rows`] rows of `x` (f32 sums in the GEMM's own order: within
    /// [`super::tolerance`] of the reference, like the other fast paths). bf16 weights are
    /// widened (exactly) to an f32 copy of the matrix for the call.
    pub(crate) fn gemm(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let owned: Vec<f32>;
        // SAFETY (align_to): every bit pattern is a valid f32; the middle part is used only
        // for f32 weights whose slice is aligned whole (little-endian: the bytes are the values).
        let w: &[f32] = match unsafe { self.bytes.align_to::<f32>() } {
            ([], mid, []) if SIZE == 4 && cfg!(target_endian = "little") => mid,
            _ => {
                owned = self.bytes.chunks_exact(SIZE).map(Self::at).collect();
                &owned
            }
        };
        let mut y = vec![0.0f32; m * n];
        if n == 0 {
            return y;
        }
        let rows = gemm_rows(m);
        y.par_chunks_mut(rows * n).zip(x.par_chunks(rows * k.max(1))).for_each(|(yb, xb)| {
            let rows = yb.len() / n;
            // SAFETY: xb is rows x k, w is k x n, yb is rows x n, all row-major and in bounds;
            // yb is not aliased.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    n,
                    1.0,
                    xb.as_ptr(),
                    k as isize,
                    1,
                    w.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    yb.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        });
        y
    }
}

/// Validated dense weights with `SIZE` bytes per value.
pub(crate) struct DenseView<'a, const SIZE: usize> {
    k: usize,
    n: usize,
    bytes: &'a [u8],
}

impl<'a, const SIZE: usize> DenseView<'a, SIZE> {
    /// Checks that `bytes` holds exactly `k * n` values.
    pub(crate) fn new(bytes: &'a [u8], k: usize, n: usize) -> Result<Self, SchemeError> {
        let expected = k.checked_mul(n).and_then(|e| e.checked_mul(SIZE)).unwrap_or(usize::MAX);
        if bytes.len() != expected {
            return Err(SchemeError::ComponentLength { name: "weight", expected, found: bytes.len() });
        }
        Ok(DenseView { k, n, bytes })
    }

    #[inline(always)]
    fn at(b: &[u8]) -> f32 {
        if SIZE == 4 {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }
    }

    /// `W[row][col]`.
    pub(crate) fn value(&self, row: usize, col: usize) -> f32 {
        Self::at(&self.bytes[(row * self.n + col) * SIZE..])
    }
}

impl<const SIZE: usize> KernelView for DenseView<'_, SIZE> {
    fn value(&self, row: usize, col: usize) -> f32 {
        DenseView::value(self, row, col)
    }

    /// From [`GEMM_MIN_ROWS`] rows on (any path but the portable one), the GEMM; below, the
    /// tile driver.
    fn matmul(&self, x: &[f32], m: usize, path: KernelPath) -> Vec<f32> {
        match path > KernelPath::Portable && m >= GEMM_MIN_ROWS {
            true => self.gemm(x, m),
            false => super::run_tiles(self, x, m, path),
        }
    }

    fn kernel_run(&self, m: usize, path: KernelPath) -> &'static str {
        match (path, m >= GEMM_MIN_ROWS) {
            (KernelPath::Portable, _) => "portable",
            (_, true) => "matrixmultiply",
            (_, false) => "portable-avx2",
        }
    }
}

impl<const SIZE: usize> TileSource for DenseView<'_, SIZE> {
    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn decode_tile(&self, t: usize, n0: usize, tile: &mut Tile) {
        let (k, n) = (self.k, self.n);
        let w = BLOCK_N.min(n - n0);
        let rows = TILE_K.min(k - t * TILE_K);
        for (r, trow) in tile[..rows].iter_mut().enumerate() {
            let start = ((t * TILE_K + r) * n + n0) * SIZE;
            let src = &self.bytes[start..start + w * SIZE];
            for (o, b) in trow.iter_mut().zip(src.chunks_exact(SIZE)) {
                *o = Self::at(b);
            }
            for o in &mut trow[w..] {
                *o = 0.0;
            }
        }
    }
}
