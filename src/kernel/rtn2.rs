//! The rtn2 kernel view: codes read straight from `quant_weight`, each 64-row tile of a column
//! sharing one scale, so a tile is decoded with one scale per column (see
//! [`crate::scheme::rtn2`] for the format).

use super::{KernelView, Tile, TileSource, BLOCK_N, TILE_K};
use crate::scheme::rtn2::{level, value, GROUP_ROWS};
use crate::scheme::{finite_bf16s, Component, SchemeError};

/// A validated packed rtn2 matrix.
pub(crate) struct Rtn2View<'a> {
    k: usize,
    n: usize,
    codes: &'a [u8],
    scales: Vec<f32>,
}

impl<'a> Rtn2View<'a> {
    /// `parts` are `quant_weight` and `weight_scale`, already checked for dtype, shape and
    /// length.
    pub(crate) fn new(k: usize, n: usize, parts: &[&'a Component]) -> Result<Self, SchemeError> {
        Ok(Rtn2View { k, n, codes: &parts[0].bytes, scales: finite_bf16s(parts[1])? })
    }
}

impl KernelView for Rtn2View<'_> {
    fn value(&self, row: usize, col: usize) -> f32 {
        value(self.codes, &self.scales, self.n, row, col)
    }
}

impl TileSource for Rtn2View<'_> {
    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn decode_tile(&self, t: usize, n0: usize, tile: &mut Tile) {
        const { assert!(TILE_K == GROUP_ROWS) };
        let n = self.n;
        let w = BLOCK_N.min(n - n0);
        let scales = &self.scales[t * n + n0..t * n + n0 + w];
        for (r, trow) in tile.iter_mut().enumerate() {
            let row = t * TILE_K + r;
            let bytes = &self.codes[row / 4 * n + n0..row / 4 * n + n0 + w];
            let shift = 2 * (row % 4);
            for ((o, &b), &s) in trow.iter_mut().zip(bytes).zip(scales) {
                *o = level((b >> shift) & 3) * s;
            }
            for o in &mut trow[w..] {
                *o = 0.0;
            }
        }
    }
}
