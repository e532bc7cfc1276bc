//! CCQ WINT2: the 2-bit expert format of ERNIE 4.5 (see `docs/wint2-format.md`).
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

#[cfg(test)]
mod adversarial;
pub mod codebook;
pub mod decode;
pub mod encode;
pub mod feedback;
pub mod maps;

use super::{check_encode_input, check_finite, finite_bf16s, Component, Importance, Packed, Scheme, SchemeError, SchemeKind};
use crate::Dtype;

/// Rows per local-scale group.
pub const GROUP_ROWS: usize = 64;
/// K must be a multiple of this: two 64-row groups share a `weight_scale` byte.
pub const K_MULTIPLE: usize = 128;

/// Component names, in the order [`Wint2::encode`] writes them.
pub const COMPONENTS: [&str; 5] = ["quant_weight", "weight_scale", "super_scales", "code_scale", "code_zp"];

/// The encoder's speed/quality knob. The benchmark table reports each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Effort {
    /// One code map, scales from the group RMS, one least-squares scale pass: meets the
    /// 4 M weights/s/core target.
    #[default]
    Default,
    /// Two maps and their mirrors screened, up to two passes and a local-scale search.
    Medium,
    /// Two code maps at 8 `code_zp` offsets each, and their mirrors, screened; the best two
    /// fitted fully (about 0.4 M weights/s/core).
    High,
    /// Two code maps at 32 `code_zp` offsets each, and their mirrors, screened; the best
    /// four fitted fully (about 0.1 M weights/s/core).
    Max,
}

impl Effort {
    /// Every level, fastest first.
    pub const ALL: [Effort; 4] = [Effort::Default, Effort::Medium, Effort::High, Effort::Max];

    /// Lowercase name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Effort::Default => "default",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::Max => "max",
        }
    }

    /// Parses a name written by [`Effort::name`].
    pub fn from_name(name: &str) -> Option<Effort> {
        Effort::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// The WINT2 scheme. It decodes with FastDeploy's fused GEMM arithmetic ([`decode::weight`]),
/// which the encoder optimises for; the only setting is the encoder's effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Wint2 {
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
    let groups = weight_scale.len().checked_div(n).unwrap_or(0) * 2;
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
    let values: Vec<f32> = c.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    check_finite(c.name, values)
}

impl Scheme for Wint2 {
    fn kind(&self) -> SchemeKind {
        SchemeKind::Wint2
    }

    fn check_shape(&self, k: usize, n: usize) -> Result<(), SchemeError> {
        if k == 0 || !k.is_multiple_of(K_MULTIPLE) {
            return Err(SchemeError::BadShape { scheme: SchemeKind::Wint2, k, n, requirement: "k must be a positive multiple of 128" });
        }
        Ok(())
    }

    fn encode(&self, w: &[f32], k: usize, n: usize, importance: Importance<'_>) -> Result<Packed, SchemeError> {
        self.check_shape(k, n)?;
        check_encode_input(w, k, n, importance)?;
        let columns = match importance {
            Importance::Hessian(h) => feedback::encode_columns_with_feedback(w, k, n, h, self.effort),
            other => encode::encode_columns_at(w, k, n, other.diagonal(), self.effort),
        };
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
        Ok(decode::decode_matrix(&params))
    }

    fn bits_per_weight(&self, k: usize, n: usize) -> f64 {
        if k == 0 || n == 0 {
            return 0.0;
        }
        // 8 bits per 4 weights, 4 bits per 64, and 16 + 32 + 32 bits per column.
        let bits = (k / 4 * n * 8 + k / GROUP_ROWS * n * 4 + n * 80) as f64;
        bits / (k * n) as f64
    }

    fn component_layout(&self, k: usize, n: usize) -> Vec<(&'static str, Dtype, Vec<usize>)> {
        COMPONENTS.into_iter().zip(Self::shapes(k, n)).map(|(name, (dtype, shape))| (name, dtype, shape)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use codebook::Codebook;
    use proptest::prelude::*;

    fn gaussian(k: usize, n: usize, seed: u64) -> Vec<f32> {
        Rng::new(seed).normals(k * n)
    }

    fn nmse(w: &[f32], d: &[f32]) -> f64 {
        let e: f64 = w.iter().zip(d).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        e / w.iter().map(|&a| (a as f64).powi(2)).sum::<f64>()
    }

    #[test]
    fn encodes_gaussian_better_than_scalar_two_bit() {
        let (k, n) = (256, 64);
        let w = gaussian(k, n, 1);
        for effort in Effort::ALL {
            let s = Wint2 { effort };
            let d = s.decode(&s.encode(&w, k, n, crate::scheme::Importance::Uniform).unwrap()).unwrap();
            // Optimal scalar 2-bit is 0.1175; the fitted maps reach about 0.105.
            assert!(nmse(&w, &d) < 0.11, "{effort:?}: {}", nmse(&w, &d));
        }
    }

    #[test]
    fn output_is_identical_at_any_thread_count() {
        let (k, n) = (128, 40);
        let w = gaussian(k, n, 2);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| Wint2::default().encode(&w, k, n, crate::scheme::Importance::Uniform).unwrap())
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn importance_lowers_weighted_error() {
        let (k, n) = (256, 32);
        let w = gaussian(k, n, 3);
        let h: Vec<f32> = Rng::new(4).normals(k).iter().map(|z| (1.5 * z).exp()).collect();
        let s = Wint2::default();
        let weighted = |d: &[f32]| -> f64 { (0..k * n).map(|i| h[i / n] as f64 * ((w[i] - d[i]) as f64).powi(2)).sum() };
        let with = s.decode(&s.encode(&w, k, n, crate::scheme::Importance::Diagonal(&h)).unwrap()).unwrap();
        let without = s.decode(&s.encode(&w, k, n, crate::scheme::Importance::Uniform).unwrap()).unwrap();
        assert!(weighted(&with) < 0.85 * weighted(&without));
    }

    #[test]
    fn bad_input_gives_typed_errors() {
        let s = Wint2::default();
        let w = vec![0.5f32; 128 * 2];
        assert!(matches!(s.encode(&w[..64 * 2], 64, 2, crate::scheme::Importance::Uniform), Err(SchemeError::BadShape { .. })));
        assert!(matches!(s.encode(&w, 128, 3, crate::scheme::Importance::Uniform), Err(SchemeError::WeightLength { .. })));
        let mut bad = w.clone();
        bad[5] = f32::NAN;
        assert!(matches!(s.encode(&bad, 128, 2, crate::scheme::Importance::Uniform), Err(SchemeError::NonFiniteWeight { k: 2, n: 1, .. })));
        let h = vec![1.0f32; 127];
        assert!(matches!(s.encode(&w, 128, 2, crate::scheme::Importance::Diagonal(&h)), Err(SchemeError::ImportanceLength { .. })));
        let mut h = vec![1.0f32; 128];
        h[7] = -1.0;
        assert!(matches!(s.encode(&w, 128, 2, crate::scheme::Importance::Diagonal(&h)), Err(SchemeError::BadImportance { k: 7, .. })));

        let good = s.encode(&w, 128, 2, crate::scheme::Importance::Uniform).unwrap();
        let mut p = good.clone();
        p.components.remove(2);
        assert_eq!(s.decode(&p), Err(SchemeError::MissingComponent { name: "super_scales" }));
        let mut p = good.clone();
        p.components[3].dtype = Dtype::F16;
        assert!(matches!(s.decode(&p), Err(SchemeError::ComponentDtype { name: "code_scale", .. })));
        let mut p = good.clone();
        p.components[0].shape = vec![32, 3];
        assert!(matches!(s.decode(&p), Err(SchemeError::ComponentShape { name: "quant_weight", .. })));
        let mut p = good.clone();
        p.components[1].bytes.pop();
        assert!(matches!(s.decode(&p), Err(SchemeError::ComponentLength { name: "weight_scale", .. })));
        let mut p = good.clone();
        p.components[4].bytes[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert!(matches!(s.decode(&p), Err(SchemeError::NonFiniteParameter { name: "code_zp", index: 1, .. })));
        let mut p = good;
        p.k = 64;
        assert!(matches!(s.decode(&p), Err(SchemeError::BadShape { .. })));
    }

    /// Reads column `col`'s parameters back from packed components.
    fn column_params(p: &Packed, col: usize) -> (f32, f32, f32) {
        let f = |i: usize| {
            let b = &p.components[i].bytes[4 * col..4 * col + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let sb = &p.components[2].bytes[2 * col..2 * col + 2];
        (half::bf16::from_le_bytes([sb[0], sb[1]]).to_f32(), f(3), f(4))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The proven bound: under the scales and map the encoder chose, every 4-row
        /// vector's weighted error is the minimum over all 256 bytes (so no other byte, and in
        /// particular none of the codebook's points, is closer); values are finite bf16.
        #[test]
        fn encode_decode_error_is_the_codebook_minimum(
            seed in 0u64..1000, n in 1usize..6, scale in 1e-3f32..1e3, skew in 0.0f64..2.0,
        ) {
            let k = 128;
            let w: Vec<f32> = gaussian(k, n, seed).iter().map(|v| v * scale).collect();
            let h: Vec<f32> = Rng::new(seed + 1).normals(k).iter().map(|z| (skew * *z as f64).exp() as f32).collect();
            let s = Wint2::default();
            let packed = s.encode(&w, k, n, crate::scheme::Importance::Diagonal(&h)).unwrap();
            let d = s.decode(&packed).unwrap();
            let ls = unpack_weight_scale(&packed.components[1].bytes, n);
            for col in 0..n {
                let (sup, cs, zp) = column_params(&packed, col);
                let cb = Codebook::new(cs, zp);
                for p in 0..k / 4 {
                    let vals = decode::value_table(ls[(4 * p / GROUP_ROWS) * n + col], sup);
                    let x: [f32; 4] = std::array::from_fn(|j| w[(4 * p + j) * n + col]);
                    let hv: [f32; 4] = std::array::from_fn(|j| h[4 * p + j]);
                    let got: f32 = (0..4).map(|j| hv[j] * (x[j] - d[(4 * p + j) * n + col]).powi(2)).sum();
                    let (_, min) = cb.best_byte_brute(&vals, &x, &hv);
                    prop_assert!(got <= min * (1.0 + 1e-5) + f32::MIN_POSITIVE);
                    for j in 0..4 {
                        let v = d[(4 * p + j) * n + col];
                        prop_assert!(v.is_finite() && decode::bf16_rne(v) == v);
                    }
                }
            }
        }

        /// Arbitrary component bytes decode to values or a typed error, never a panic.
        #[test]
        fn decode_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..700),
            n in 1usize..4, cut in 0usize..5,
        ) {
            let k = 128;
            let lens = [k / 4 * n, k / 128 * n, 2 * n, 4 * n, 4 * n];
            let mut at = 0;
            let mut comps = Vec::new();
            for (i, (dtype, shape)) in Wint2::shapes(k, n).into_iter().enumerate() {
                let take = lens[i].min(bytes.len().saturating_sub(at));
                let data = bytes.get(at..at + take).unwrap_or(&[]).to_vec();
                at += take;
                comps.push(Component { name: COMPONENTS[i], dtype, shape, bytes: data });
            }
            if cut == 4 && !comps.is_empty() { comps.pop(); }
            let packed = Packed { kind: SchemeKind::Wint2, k, n, components: comps };
            if let Ok(d) = Wint2::default().decode(&packed) {
                prop_assert_eq!(d.len(), k * n);
            }
        }

        /// Local scales pack into nibbles and unpack to the same values.
        #[test]
        fn weight_scale_nibbles_round_trip(
            pairs in 1usize..4, n in 1usize..5, seed in any::<u64>(),
        ) {
            let groups = 2 * pairs;
            let mut rng = Rng::new(seed);
            let ls: Vec<u8> = (0..groups * n).map(|_| (rng.next_u64() % 16) as u8).collect();
            let packed = pack_weight_scale(&ls, groups, n);
            prop_assert_eq!(packed.len(), pairs * n);
            prop_assert_eq!(unpack_weight_scale(&packed, n), ls);
        }

        /// Column codes pack into components whose bytes read back to the same codes.
        #[test]
        fn quant_weight_layout_round_trips(n in 1usize..5, seed in any::<u64>()) {
            let k = 256;
            let mut rng = Rng::new(seed);
            let cols: Vec<ColumnCode> = (0..n).map(|_| ColumnCode {
                quant_weight: (0..k / 4).map(|_| rng.next_u64() as u8).collect(),
                local_scales: (0..k / 64).map(|_| (rng.next_u64() % 16) as u8).collect(),
                super_scale: half::bf16::from_f32(rng.uniform() as f32),
                code_scale: rng.uniform() as f32 * 128.0,
                code_zp: rng.uniform() as f32 * 100.0,
            }).collect();
            let p = Wint2::pack(k, n, &cols);
            let ls = unpack_weight_scale(&p.components[1].bytes, n);
            for (col, c) in cols.iter().enumerate() {
                for (row, &b) in c.quant_weight.iter().enumerate() {
                    prop_assert_eq!(p.components[0].bytes[row * n + col], b);
                }
                for (g, &l) in c.local_scales.iter().enumerate() {
                    prop_assert_eq!(ls[g * n + col], l);
                }
                let (sup, cs, zp) = column_params(&p, col);
                prop_assert_eq!(sup, c.super_scale.to_f32());
                prop_assert_eq!((cs, zp), (c.code_scale, c.code_zp));
            }
        }
    }
}
