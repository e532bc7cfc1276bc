//! Unquantized weights for the kernels: logical `[K, N]` row-major, bf16 (`SIZE = 2`) or
//! f32 (`SIZE = 4`), little-endian. A tile is a plain copy of `TILE_K` rows of the block's
//! columns (bf16 widened exactly: its bits shifted into the top half of an f32).

use super::{Tile, TileSource, BLOCK_N, TILE_K};
use crate::scheme::SchemeError;

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
