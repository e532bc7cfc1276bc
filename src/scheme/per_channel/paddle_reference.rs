//! Paddle's `weight_quantize` byte pipeline (sm75..sm90, per channel), re-expressed step
//! by step over code arrays, as an independent oracle for the closed-form index formulas of
//! the layout doc that [`crate::scheme::wint8`] and [`crate::scheme::wint4`] implement.

/// The `quant_weight` bytes Paddle writes for row-major `[k, n]` codes `q` with `bits`
/// = 8 or 4. Paddle moves 32-bit words, so this needs `n` a multiple of `32 / bits`
/// (and `k` of 64).
pub(crate) fn quant_weight(q: &[i8], k: usize, n: usize, bits: usize) -> Vec<u8> {
    let per_word = 32 / bits; // codes per 32-bit register
    let mask = ((1u16 << bits) - 1) as u8; // 0xFF or 0x0F

    // 1. Rows (K) permuted inside tiles of 8 * 16 / bits rows: row `base + t` of the
    //    result takes row `base + 8 * ((t % per_word) / 2) + t % 2 + 2 * (t / per_word)`.
    let tile = 8 * 16 / bits;
    let mut permuted = vec![0i8; k * n];
    for row in 0..k {
        let (base, t) = (row - row % tile, row % tile);
        let src = base + 8 * ((t % per_word) / 2) + t % 2 + 2 * (t / per_word);
        permuted[row * n..(row + 1) * n].copy_from_slice(&q[src * n..(src + 1) * n]);
    }

    // 2. Transposed to [n, k] (column-major codes).
    let mut transposed = vec![0i8; k * n];
    for row in 0..k {
        for col in 0..n {
            transposed[col * k + row] = permuted[row * n + col];
        }
    }

    // 3. Columns interleaved: `il` = 16 / bits consecutive columns share one output
    //    column; inside each 64-row tile their words follow one another.
    let il = 16 / bits;
    let words_per_col = k / per_word;
    let words_per_tile = 64 / per_word;
    let mut interleaved = vec![0i8; k * n];
    for col in 0..n {
        for wr in 0..words_per_col {
            let tile_start = wr - wr % words_per_tile;
            let dst_word = (col / il) * words_per_col * il + il * tile_start + words_per_tile * (col % il) + wr % words_per_tile;
            let src = (col * words_per_col + wr) * per_word;
            let dst = dst_word * per_word;
            interleaved[dst..dst + per_word].copy_from_slice(&transposed[src..src + per_word]);
        }
    }

    // 4. Biased to unsigned (+128 / +8), then shuffled inside each register: int8 swaps
    //    bytes 1 and 2 of every 4; int4 puts source code 2d (d < 4) or 2(d - 4) + 1
    //    (d >= 4) in nibble d.
    let bias = 1i16 << (bits - 1);
    let biased: Vec<u8> = interleaved.iter().map(|&c| ((c as i16 + bias) as u8) & mask).collect();
    let mut codes = biased.clone();
    for (reg, out) in biased.chunks(per_word).zip(codes.chunks_mut(per_word)) {
        for (d, o) in out.iter_mut().enumerate() {
            *o = if bits == 8 { reg[[0, 2, 1, 3][d]] } else { reg[if d < 4 { 2 * d } else { 2 * (d - 4) + 1 }] };
        }
    }

    // Codes to bytes, little-endian: for int4 the even code is the low nibble.
    if bits == 8 {
        codes
    } else {
        codes.chunks(2).map(|p| p[0] | (p[1] << 4)).collect()
    }
}
