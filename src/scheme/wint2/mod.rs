//! CCQ WINT2: the 2-bit expert format of ERNIE 4.5 (see `wint2-format.md`).
//!
//! Stored tensors for a logical `[K, N]` matrix (K % 128 == 0):
//!
//! | component      | dtype  | shape        | holds                                          |
//! |----------------|--------|--------------|------------------------------------------------|
//! | `quant_weight` | `U8`   | `[K/4, N]`   | byte (p, n) codes rows 4p..4p+3 of column n   |
//! | `weight_scale` | `U8`   | `[K/128, N]` | 4-bit local scale per 64-row group, even group in the high nibble |
//! | `super_scales` | `BF16` | `[N]`        | per-column scale                               |
//! | `code_scale`   | `F32`  | `[N]`        | per-column slope of the code map               |
//! | `code_zp`      | `F32`  | `[N]`        | per-column offset of the code map              |
//!
//! [`decode`] holds the bit-exact arithmetic, [`encode`] the encoder and its design notes,
//! [`maps`] the code maps the encoder starts from. This file owns the layout: packing the
//! per-column results into the components above and reading them back.

pub mod codebook;
pub mod decode;
pub mod encode;
pub mod maps;

use super::{
    check_encode_input, check_finite, finite_bf16s, Component, Packed, Scheme, SchemeError,
    SchemeKind,
};
use crate::Dtype;

/// Rows per local-scale group.
pub const GROUP_ROWS: usize = 64;
/// K must be a multiple of this: two 64-row groups share a `weight_scale` byte.
pub const K_MULTIPLE: usize = 128;

/// Component names, in the order [`Wint2::encode`] writes them.
pub const COMPONENTS: [&str; 5] =
    ["quant_weight", "weight_scale", "super_scales", "code_scale", "code_zp"];

/// How the decoder rounds the scale product (`wint2-format.md`, steps 6-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rounding {
    /// `bf16(q * bf16(ls * super))`: FastDeploy's fused GEMM, what inference computes.
    #[default]
    Fused,
    /// `bf16(ls * super * q)`: FastDeploy's standalone `winx_unzip` op.
    Single,
}

/// The encoder's speed/quality knob. The benchmark table reports each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Effort {
    /// One code map per column, one refinement pass.
    Fast,
    /// A few code maps tried per column, scales refined by alternation.
    #[default]
    Default,
    /// Every code map, more alternation and a per-group local-scale search.
    High,
}

impl Effort {
    /// Every level, fastest first.
    pub const ALL: [Effort; 3] = [Effort::Fast, Effort::Default, Effort::High];

    /// Lowercase name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Effort::Fast => "fast",
            Effort::Default => "default",
            Effort::High => "high",
        }
    }

    /// Parses a name written by [`Effort::name`].
    pub fn from_name(name: &str) -> Option<Effort> {
        Effort::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// The WINT2 scheme: decoder rounding variant plus encoder effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Wint2 {
    /// Rounding the decoder applies (and the encoder optimises for).
    pub rounding: Rounding,
    /// Encoder speed/quality trade-off.
    pub effort: Effort,
}

/// Everything the encoder chose for one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnCode {
    /// One byte per 4 rows (`K/4`).
    pub quant_weight: Vec<u8>,
    /// One local scale (0..=15) per 64-row group (`K/64`).
    pub local_scales: Vec<u8>,
    /// The column's super scale.
    pub super_scale: half::bf16,
    /// Slope of the code map.
    pub code_scale: f32,
    /// Offset of the code map.
    pub code_zp: f32,
}

/// Packs local scales (`[K/64, N]` row-major, values 0..=15) into `weight_scale` bytes
/// (`[K/128, N]`): group g of column n goes to byte `(g/2, n)`, even g in the high nibble.
/// Values above 15 are truncated to their low nibble. `groups` must be even.
pub fn pack_weight_scale(local_scales: &[u8], groups: usize, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; groups / 2 * n];
    for (i, byte) in out.iter_mut().enumerate() {
        let (row, col) = (i / n, i % n);
        let even = local_scales[2 * row * n + col] & 15;
        let odd = local_scales[(2 * row + 1) * n + col] & 15;
        *byte = (even << 4) | odd;
    }
    out
}

/// Inverse of [`pack_weight_scale`]: `[K/128, N]` bytes to `[K/64, N]` local scales.
pub fn unpack_weight_scale(weight_scale: &[u8], n: usize) -> Vec<u8> {
    let groups = if n == 0 { 0 } else { weight_scale.len() / n * 2 };
    let mut out = vec![0u8; groups * n];
    for (i, ls) in out.iter_mut().enumerate() {
        let (g, col) = (i / n, i % n);
        *ls = decode::local_scale(weight_scale[(g / 2) * n + col], g);
    }
    out
}

impl Wint2 {
    /// Component shapes for a `[k, n]` matrix, in [`COMPONENTS`] order.
    fn shapes(k: usize, n: usize) -> [(Dtype, Vec<usize>); 5] {
        [
            (Dtype::U8, vec![k / 4, n]),
            (Dtype::U8, vec![k / K_MULTIPLE, n]),
            (Dtype::BF16, vec![n]),
            (Dtype::F32, vec![n]),
            (Dtype::F32, vec![n]),
        ]
    }

    /// Lays out per-column codes as the five stored components.
    pub(crate) fn pack(k: usize, n: usize, columns: &[ColumnCode]) -> Packed {
        let mut quant = vec![0u8; k / 4 * n];
        let mut ls = vec![0u8; k / GROUP_ROWS * n];
        for (col, c) in columns.iter().enumerate() {
            for (p, &b) in c.quant_weight.iter().enumerate() {
                quant[p * n + col] = b;
            }
            for (g, &l) in c.local_scales.iter().enumerate() {
                ls[g * n + col] = l;
            }
        }
        let weight_scale = pack_weight_scale(&ls, k / GROUP_ROWS, n);
        let super_bytes = columns.iter().flat_map(|c| c.super_scale.to_le_bytes()).collect();
        let cs_bytes = columns.iter().flat_map(|c| c.code_scale.to_le_bytes()).collect();
        let zp_bytes = columns.iter().flat_map(|c| c.code_zp.to_le_bytes()).collect();
        let data: [Vec<u8>; 5] = [quant, weight_scale, super_bytes, cs_bytes, zp_bytes];
        let components = Self::shapes(k, n)
            .into_iter()
            .zip(data)
            .zip(COMPONENTS)
            .map(|(((dtype, shape), bytes), name)| Component { name, dtype, shape, bytes })
            .collect();
        Packed { kind: SchemeKind::Wint2, k, n, components }
    }
}

/// Reads little-endian f32 values of a component, rejecting NaN and infinities.
fn finite_f32s(c: &Component) -> Result<Vec<f32>, SchemeError> {
    let values: Vec<f32> = c
        .bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    check_finite(c.name, values)
}


impl Scheme for Wint2 {
    fn kind(&self) -> SchemeKind {
        SchemeKind::Wint2
    }

    fn check_shape(&self, k: usize, n: usize) -> Result<(), SchemeError> {
        if k == 0 || k % K_MULTIPLE != 0 {
            return Err(SchemeError::BadShape {
                scheme: SchemeKind::Wint2,
                k,
                n,
                requirement: "k must be a positive multiple of 128",
            });
        }
        Ok(())
    }

    fn encode(
        &self,
        w: &[f32],
        k: usize,
        n: usize,
        importance: Option<&[f32]>,
    ) -> Result<Packed, SchemeError> {
        self.check_shape(k, n)?;
        check_encode_input(w, k, n, importance)?;
        let columns = encode::encode_columns_at(w, k, n, importance, self.rounding, self.effort);
        Ok(Self::pack(k, n, &columns))
    }

    fn decode(&self, packed: &Packed) -> Result<Vec<f32>, SchemeError> {
        if packed.kind != SchemeKind::Wint2 {
            return Err(SchemeError::WrongKind { expected: SchemeKind::Wint2, found: packed.kind });
        }
        let (k, n) = (packed.k, packed.n);
        self.check_shape(k, n)?;
        let shapes = Self::shapes(k, n);
        let mut parts = Vec::with_capacity(5);
        for ((dtype, shape), name) in shapes.iter().zip(COMPONENTS) {
            parts.push(packed.expect_component(name, *dtype, shape)?);
        }
        let params = decode::Params {
            k,
            n,
            quant_weight: &parts[0].bytes,
            weight_scale: &parts[1].bytes,
            super_scales: finite_bf16s(parts[2])?,
            code_scale: finite_f32s(parts[3])?,
            code_zp: finite_f32s(parts[4])?,
        };
        Ok(decode::decode_matrix(&params, self.rounding))
    }

    fn bits_per_weight(&self, k: usize, n: usize) -> f64 {
        if k == 0 || n == 0 {
            return 0.0;
        }
        // 8 bits per 4 weights, 4 bits per 64, and 16 + 32 + 32 bits per column.
        let bits = (k / 4 * n * 8 + k / GROUP_ROWS * n * 4 + n * 80) as f64;
        bits / (k * n) as f64
    }
}
