//! Kernel tests: the reference against decode-then-naive-matmul (exact), the fast path
//! against the reference (within [`tolerance`] for every format; bit-identical for dense,
//! and for WINT2 on the portable path), random packed bytes, thread-count independence and
//! typed errors.

use half::bf16;
use proptest::prelude::*;

use super::*;
use crate::rng::Rng;
use crate::scheme::{Component, Scheme, Wint2};

/// An owned test matrix in one of the formats.
enum Owned {
    Packed(Packed),
    Dense(Dtype, Vec<u8>, usize, usize),
}

impl Owned {
    fn weights(&self) -> Weights<'_> {
        match self {
            Owned::Packed(p) => Weights::Packed(p),
            Owned::Dense(dtype, bytes, k, n) => Weights::Dense { dtype: *dtype, bytes, k: *k, n: *n },
        }
    }
}

fn gaussian(k: usize, n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).normals(k * n)
}

/// A `[k, n]` Gaussian in one of the formats: a registered scheme by name, or dense (shapes
/// each scheme can hold are the caller's job).
fn make(format: &str, k: usize, n: usize, seed: u64) -> Owned {
    let w = gaussian(k, n, seed);
    if let Some(kind) = SchemeKind::from_name(format) {
        return Owned::Packed(kind.decoder().encode(&w, k, n, crate::scheme::Importance::Uniform).unwrap());
    }
    match format {
        "f32" => Owned::Dense(Dtype::F32, w.iter().flat_map(|v| v.to_le_bytes()).collect(), k, n),
        "bf16" => Owned::Dense(Dtype::BF16, w.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(), k, n),
        _ => unreachable!(),
    }
}

/// The decoded matrix by the scheme itself (or the stored dense values).
fn decoded(o: &Owned) -> Vec<f32> {
    match o {
        Owned::Packed(p) => p.kind.decoder().decode(p).unwrap(),
        Owned::Dense(Dtype::F32, b, ..) => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Owned::Dense(_, b, ..) => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    }
}

fn naive(x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for col in 0..n {
            let mut acc = 0f32;
            for row in 0..k {
                acc += x[i * k + row] * w[row * n + col];
            }
            y[i * n + col] = acc;
        }
    }
    y
}

/// `|fast - reference| <= tolerance(k, sum |x| |w|)` element by element; NaN only together.
fn assert_within(fast: &[f32], reference: &[f32], x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Result<(), String> {
    for i in 0..m {
        for col in 0..n {
            let (f, r) = (fast[i * n + col], reference[i * n + col]);
            if r.is_nan() || f.is_nan() || r.is_infinite() {
                if f.to_bits() != r.to_bits() && !(f.is_nan() && r.is_nan()) {
                    return Err(format!("({i}, {col}): fast {f} reference {r}"));
                }
                continue;
            }
            let abs_dot: f64 = (0..k).map(|row| (x[i * k + row] as f64 * w[row * n + col] as f64).abs()).sum();
            let bound = tolerance(k, abs_dot);
            if ((f as f64) - (r as f64)).abs() > bound {
                return Err(format!("({i}, {col}): fast {f} reference {r} differ by more than {bound:e}"));
            }
        }
    }
    Ok(())
}

const FORMATS: [&str; 6] = ["wint2", "wint8", "wint4", "rtn2", "bf16", "f32"];

#[test]
fn every_registered_scheme_is_tested() {
    for kind in SchemeKind::ALL {
        assert!(FORMATS.contains(&kind.name()), "{kind} is missing from the kernel tests");
    }
}

#[test]
fn reference_is_decode_then_naive_matmul_exactly() {
    for (format, k, n) in [("wint2", 128, 5), ("wint8", 64, 6), ("wint4", 128, 8), ("rtn2", 64, 33), ("bf16", 70, 5), ("f32", 3, 7)] {
        let o = make(format, k, n, 11);
        let w = decoded(&o);
        assert_eq!(dequantize(&o.weights()).unwrap(), w, "{format}");
        let as_bf16: Vec<bf16> = w.iter().map(|v| bf16::from_f32(*v)).collect();
        assert_eq!(dequantize_bf16(&o.weights()).unwrap(), as_bf16, "{format}");
        for m in [1, 3] {
            let x = gaussian(m, k, 12);
            let y = matmul_reference(Input::F32(&x), m, &o.weights()).unwrap();
            let want = naive(&x, m, &w, k, n);
            assert_eq!(
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{format} m {m}"
            );
        }
    }
}

#[test]
fn wint2_dequantize_bf16_is_exact() {
    let o = make("wint2", 128, 9, 3);
    let f = dequantize(&o.weights()).unwrap();
    let b = dequantize_bf16(&o.weights()).unwrap();
    assert!(f.iter().zip(&b).all(|(f, b)| b.to_f32() == *f));
}

#[test]
fn fast_matches_reference_for_many_shapes() {
    let shapes: &[(&str, usize, usize)] = &[
        ("wint2", 128, 1),
        ("wint2", 256, 33),
        ("wint2", 128, 70),
        ("wint2", 128, 32),
        ("wint2", 384, 64),
        ("wint2", 128, 97),
        ("wint2", 1024, 40),
        ("wint8", 64, 2),
        ("wint8", 192, 34),
        ("wint8", 128, 66),
        ("wint4", 64, 4),
        ("wint4", 128, 36),
        ("wint4", 192, 68),
        ("rtn2", 64, 1),
        ("rtn2", 128, 33),
        ("rtn2", 192, 97),
        ("bf16", 1, 1),
        ("bf16", 70, 33),
        ("f32", 130, 65),
        ("f32", 64, 32),
    ];
    for &(format, k, n) in shapes {
        let o = make(format, k, n, (k * n) as u64);
        let w = decoded(&o);
        for m in [1, 2, 3, 4, 5, 8, 9, 16, 17, 64] {
            if m == 64 && k * n > 13_000 {
                continue;
            }
            let x = gaussian(m, k, 7 + m as u64);
            let r = matmul_reference(Input::F32(&x), m, &o.weights()).unwrap();
            for path in KernelPath::available() {
                let y = matmul_with(Input::F32(&x), m, &o.weights(), path).unwrap();
                assert_within(&y, &r, &x, m, &w, k, n).unwrap_or_else(|e| panic!("{format} {path} [{m}, {k}] x [{k}, {n}]: {e}"));
                // Dense weights from GEMM_MIN_ROWS rows on go through the GEMM: within tolerance only.
                if matches!(format, "bf16" | "f32") && m < super::dense::GEMM_MIN_ROWS {
                    assert_eq!(y, r, "{format} {path} m {m}: same order, bit-identical");
                }
                if path == KernelPath::Portable && matches!(format, "wint2" | "rtn2" | "bf16" | "f32") {
                    assert_eq!(y, r, "{format} m {m}: portable path keeps the order, bit-identical");
                }
            }
            assert_eq!(
                matmul_portable(Input::F32(&x), m, &o.weights()).unwrap(),
                matmul_with(Input::F32(&x), m, &o.weights(), KernelPath::Portable).unwrap()
            );
        }
    }
}

/// Encoder output always qualifies for the AVX-512 WINT2 kernel (so the benchmark and real
/// checkpoints run it), and where the CPU has it the fast path does differ from the
/// portable one somewhere (it is really taken) while staying within the tolerance.
#[test]
fn wint2_arch_kernel_is_taken_for_encoder_output() {
    let (k, n) = (256, 64);
    let Owned::Packed(p) = make("wint2", k, n, 5) else { unreachable!() };
    let comp = |name: &str| p.components.iter().find(|c| c.name == name).unwrap().bytes.clone();
    let f32s = |b: Vec<u8>| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
    let (cs, zp) = (f32s(comp("code_scale")), f32s(comp("code_zp")));
    let sup: Vec<f32> = comp("super_scales").chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    #[cfg(target_arch = "x86_64")]
    for c in 0..n {
        assert!(arch::x86::wint2_block_ok(cs[c], zp[c] + 0.5, sup[c]), "column {c}");
    }
    if KernelPath::Avx512Bf16.supported() {
        let x = gaussian(1, k, 3);
        let f = matmul(Input::F32(&x), 1, &Weights::Packed(&p)).unwrap();
        let q = matmul_portable(Input::F32(&x), 1, &Weights::Packed(&p)).unwrap();
        assert_ne!(f, q, "the AVX-512 kernel sums in another order");
    }
}

#[test]
fn bf16_input_is_widened_exactly() {
    let (m, k, n) = (2, 128, 10);
    let xb: Vec<bf16> = gaussian(m, k, 5).iter().map(|v| bf16::from_f32(*v)).collect();
    let xf: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
    for format in FORMATS {
        let o = make(format, k, if format == "wint4" { 12 } else { n }, 4);
        assert_eq!(matmul(Input::Bf16(&xb), m, &o.weights()).unwrap(), matmul(Input::F32(&xf), m, &o.weights()).unwrap());
        assert_eq!(
            matmul_reference(xb.as_slice().into(), m, &o.weights()).unwrap(),
            matmul_reference(xf.as_slice().into(), m, &o.weights()).unwrap()
        );
    }
}

#[test]
fn fast_path_is_independent_of_thread_count() {
    let (m, k, n) = (3, 128, 100);
    let x = gaussian(m, k, 9);
    for format in FORMATS {
        let o = make(format, k, n, 8);
        for path in KernelPath::available() {
            for m in [1, m] {
                let run = |threads| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| matmul_with(Input::F32(&x[..m * k]), m, &o.weights(), path).unwrap())
                };
                assert_eq!(run(1), run(3), "{format} {path} m {m}");
            }
        }
    }
}

#[test]
fn empty_shapes() {
    let o = make("f32", 0, 3, 1);
    assert_eq!(matmul(Input::F32(&[]), 2, &o.weights()).unwrap(), vec![0.0; 6]);
    let o = make("bf16", 4, 0, 1);
    assert_eq!(matmul(Input::F32(&[1.0; 8]), 2, &o.weights()).unwrap(), Vec::<f32>::new());
    let o = make("wint2", 128, 3, 1);
    assert_eq!(matmul(Input::F32(&[]), 0, &o.weights()).unwrap(), Vec::<f32>::new());
}

#[test]
fn bad_input_gives_typed_errors() {
    let o = make("wint2", 128, 4, 1);
    let x = vec![0.5f32; 127];
    assert_eq!(matmul(Input::F32(&x), 1, &o.weights()), Err(KernelError::InputLength { expected: 128, found: 127 }));
    assert_eq!(matmul_reference(Input::F32(&x), 1, &o.weights()), Err(KernelError::InputLength { expected: 128, found: 127 }));
    assert!(matches!(matmul(Input::F32(&x), usize::MAX, &o.weights()), Err(KernelError::InputLength { expected: usize::MAX, .. })));

    let bytes = vec![0u8; 12];
    let dense = |dtype, k, n| Weights::Dense { dtype, bytes: &bytes, k, n };
    assert!(matches!(dequantize(&dense(Dtype::F16, 2, 3)), Err(KernelError::Scheme(SchemeError::ComponentDtype { name: "weight", .. }))));
    assert_eq!(
        dequantize(&dense(Dtype::F32, 2, 2)),
        Err(KernelError::Scheme(SchemeError::ComponentLength { name: "weight", expected: 16, found: 12 }))
    );
    assert!(matches!(dequantize(&dense(Dtype::BF16, usize::MAX, 2)), Err(KernelError::Scheme(SchemeError::ComponentLength { .. }))));
    assert!(dequantize(&dense(Dtype::BF16, 2, 3)).is_ok());

    let Owned::Packed(good) = o else { unreachable!() };
    let x = vec![0.5f32; 128];
    let err = |p: &Packed| matmul(Input::F32(&x), 1, &Weights::Packed(p)).unwrap_err();
    let mut p = good.clone();
    p.components.remove(3);
    assert_eq!(err(&p), KernelError::Scheme(SchemeError::MissingComponent { name: "code_scale" }));
    let mut p = good.clone();
    p.components[0].dtype = Dtype::I8;
    assert!(matches!(err(&p), KernelError::Scheme(SchemeError::ComponentDtype { name: "quant_weight", .. })));
    let mut p = good.clone();
    p.components[0].bytes.pop();
    assert!(matches!(err(&p), KernelError::Scheme(SchemeError::ComponentLength { name: "quant_weight", .. })));
    let mut p = good.clone();
    p.components[2].bytes[0..2].copy_from_slice(&bf16::NAN.to_le_bytes());
    assert!(matches!(err(&p), KernelError::Scheme(SchemeError::NonFiniteParameter { name: "super_scales", .. })));
    let mut p = good.clone();
    p.k = 64;
    assert!(matches!(err(&p), KernelError::Scheme(SchemeError::BadShape { .. })));

    let Owned::Packed(mut p) = make("wint8", 64, 4, 2) else { unreachable!() };
    p.components[1].shape = vec![3];
    assert!(matches!(dequantize(&Weights::Packed(&p)), Err(KernelError::Scheme(SchemeError::ComponentShape { name: "weight_scale", .. }))));
    let Owned::Packed(mut p) = make("wint4", 64, 4, 2) else { unreachable!() };
    p.components[1].bytes[2..4].copy_from_slice(&bf16::INFINITY.to_le_bytes());
    assert!(matches!(
        matmul(Input::F32(&[0.0; 64]), 1, &Weights::Packed(&p)),
        Err(KernelError::Scheme(SchemeError::NonFiniteParameter { name: "weight_scale", index: 1, .. }))
    ));
}

/// A WINT2 matrix from arbitrary bytes and parameter bit patterns.
fn wint2_from_bits(k: usize, n: usize, qw: Vec<u8>, ws: Vec<u8>, sup: Vec<u16>, cs: Vec<u32>, zp: Vec<u32>) -> Packed {
    let comp = |name, dtype, shape: Vec<usize>, bytes| Component { name, dtype, shape, bytes };
    Packed {
        kind: SchemeKind::Wint2,
        k,
        n,
        components: vec![
            comp("quant_weight", Dtype::U8, vec![k / 4, n], qw),
            comp("weight_scale", Dtype::U8, vec![k / 128, n], ws),
            comp("super_scales", Dtype::BF16, vec![n], sup.iter().flat_map(|v| v.to_le_bytes()).collect()),
            comp("code_scale", Dtype::F32, vec![n], cs.iter().flat_map(|v| v.to_le_bytes()).collect()),
            comp("code_zp", Dtype::F32, vec![n], zp.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ],
    }
}

fn wint2_strategy() -> impl Strategy<Value = Packed> {
    (1usize..=2, 1usize..=40).prop_flat_map(|(kg, n)| {
        let k = 128 * kg;
        // Bit patterns: mostly moderate parameters, sometimes arbitrary (huge, NaN, inf).
        let f32s = prop::collection::vec(prop_oneof![3 => (-1e4f32..1e4).prop_map(f32::to_bits), 1 => any::<u32>()], n);
        let bf16s = prop::collection::vec(prop_oneof![3 => (-1e3f32..1e3).prop_map(|v| bf16::from_f32(v).to_bits()), 1 => any::<u16>()], n);
        (prop::collection::vec(any::<u8>(), k / 4 * n), prop::collection::vec(any::<u8>(), k / 128 * n), bf16s, f32s.clone(), f32s)
            .prop_map(move |(qw, ws, sup, cs, zp)| wint2_from_bits(k, n, qw, ws, sup, cs, zp))
    })
}

fn per_channel_strategy() -> impl Strategy<Value = Packed> {
    (any::<bool>(), 1usize..=3, 1usize..=18).prop_flat_map(|(int8, kt, nq)| {
        let (k, n) = (64 * kt, 4 * nq);
        let len = if int8 { k * n } else { k * n / 2 };
        (prop::collection::vec(any::<u8>(), len), prop::collection::vec((-1e20f32..1e20).prop_map(|v| bf16::from_f32(v).to_bits()), n))
            .prop_map(move |(bytes, scales)| Packed {
                kind: if int8 { SchemeKind::Wint8 } else { SchemeKind::Wint4 },
                k,
                n,
                components: vec![
                    Component { name: "quant_weight", dtype: Dtype::I8, shape: vec![len / k, k], bytes },
                    Component {
                        name: "weight_scale",
                        dtype: Dtype::BF16,
                        shape: vec![n],
                        bytes: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                    },
                ],
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Arbitrary WINT2 bytes never panic: either a typed error (a non-finite parameter), or
    /// a portable result bit-identical to the reference, a fast result within the tolerance
    /// of it, and a dequantization equal to decode.
    #[test]
    fn wint2_random_bytes(p in wint2_strategy(), m in prop_oneof![Just(1usize), Just(3), Just(8)], seed in 0u64..100) {
        let w = Weights::Packed(&p);
        let x = gaussian(m, p.k, seed);
        match (matmul(Input::F32(&x), m, &w), matmul_reference(Input::F32(&x), m, &w)) {
            (Ok(f), Ok(r)) => {
                let bits = |v: &[f32]| v.iter().map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() }).collect::<Vec<_>>();
                let portable = matmul_portable(Input::F32(&x), m, &w).unwrap();
                prop_assert_eq!(bits(&portable), bits(&r));
                let d = dequantize(&w).unwrap();
                prop_assert_eq!(bits(&d), bits(&Wint2::default().decode(&p).unwrap()));
                let within = assert_within(&f, &r, &x, m, &d, p.k, p.n);
                prop_assert!(within.is_ok(), "{:?}", within);
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.to_string(), b.to_string());
                let is_non_finite = matches!(a, KernelError::Scheme(SchemeError::NonFiniteParameter { .. }));
                prop_assert!(is_non_finite);
            }
            (a, b) => prop_assert!(false, "fast {:?} reference {:?}", a.is_ok(), b.is_ok()),
        }
    }

    /// Arbitrary wint8/wint4 bytes with finite scales: fast within the tolerance of the
    /// reference, dequantization equal to decode.
    #[test]
    fn per_channel_random_bytes(p in per_channel_strategy(), m in prop_oneof![Just(1usize), Just(2), Just(8)], seed in 0u64..100) {
        let w = Weights::Packed(&p);
        let x = gaussian(m, p.k, seed);
        let d = dequantize(&w).unwrap();
        let decoded = p.kind.decoder().decode(&p).unwrap();
        prop_assert_eq!(&d, &decoded);
        let f = matmul(Input::F32(&x), m, &w).unwrap();
        let r = matmul_reference(Input::F32(&x), m, &w).unwrap();
        prop_assert!(assert_within(&f, &r, &x, m, &d, p.k, p.n).is_ok(), "{:?}", assert_within(&f, &r, &x, m, &d, p.k, p.n));
    }

    /// Arbitrary dense bytes (any bit pattern) never panic; bf16 and f32 fast paths equal
    /// the reference bit for bit (NaN payloads aside).
    #[test]
    fn dense_random_bytes(f32s in any::<bool>(), k in 0usize..140, n in 0usize..40, seed in 0u64..100, fill in any::<u64>()) {
        let size = if f32s { 4 } else { 2 };
        let mut rng = Rng::new(fill);
        let bytes: Vec<u8> = (0..k * n * size).map(|_| rng.next_u64() as u8).collect();
        let w = Weights::Dense { dtype: if f32s { Dtype::F32 } else { Dtype::BF16 }, bytes: &bytes, k, n };
        let x = gaussian(2, k, seed);
        let f = matmul(Input::F32(&x), 2, &w).unwrap();
        let r = matmul_reference(Input::F32(&x), 2, &w).unwrap();
        let bits = |v: &[f32]| v.iter().map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() }).collect::<Vec<_>>();
        prop_assert_eq!(bits(&f), bits(&r));
    }
}

/// The weights the fast path uses are exactly the format's: `x = I` (`m = K`, one-hot rows,
/// and `m = 1` one-hot vectors for every row) gives back the dequantized matrix value for
/// value, for encoder output and for random bytes with in-range random parameters (signed,
/// tiny and large scales, every local scale, code maps at the edge of the lookup kernel's
/// range and past it), on the AVX-512 kernels where the CPU has them. The widths cover
/// every `m = 1` kernel: runs of 8, 4, 2 and 1 blocks and a partial block at the edge.
#[test]
fn wint2_fast_weights_are_exact() {
    let mut rng = Rng::new(77);
    let mut mats = vec![];
    for (k, n) in [(128, 64), (256, 96), (128, 288), (256, 224), (128, 300)] {
        let Owned::Packed(p) = make("wint2", k, n, 9) else { unreachable!() };
        mats.push(p);
        for outliers in [false, true] {
            let mut bytes = |len: usize| (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>();
            let (qw, ws) = (bytes(k / 4 * n), bytes(k / 128 * n));
            let mut rng2 = Rng::new((k * n) as u64 + u64::from(outliers));
            let mut f = |lo: f32, hi: f32| lo + (hi - lo) * (rng2.next_u64() % 1_000_000) as f32 / 1e6;
            let sup: Vec<u16> = (0..n).map(|c| bf16::from_f32(f(-1.0, 1.0) * [1e-20, 1.0, 3e4, 1e20][c % 4]).to_bits()).collect();
            // Column 5 of every 11: |255 cs| + |c| just under 2^21 (the lookup kernel's edge);
            // with outliers, columns 17 and 36 of every 37 past it, codes up to 1.5 * 2^22
            // and beyond (those runs take the paired kernel).
            let cs: Vec<u32> = (0..n)
                .map(|c| match (c % 11, c % 37) {
                    (_, 17) if outliers => [24_672.0f32, -24_672.0][c % 2],
                    (_, 36) if outliers => f(-2e5, 2e5),
                    (5, _) => [8000.0f32, -8000.0][c % 2],
                    _ => f(-200.0, 200.0),
                })
                .map(f32::to_bits)
                .collect();
            let zp: Vec<u32> = (0..n).map(|_| f(-20000.0, 20000.0).to_bits()).collect();
            mats.push(wint2_from_bits(k, n, qw, ws, sup, cs, zp));
        }
    }
    for p in &mats {
        let (k, n) = (p.k, p.n);
        let w = Weights::Packed(p);
        let d = dequantize(&w).unwrap();
        let mut eye = vec![0f32; k * k];
        for i in 0..k {
            eye[i * k + i] = 1.0;
        }
        for path in KernelPath::available() {
            assert_eq!(matmul_with(Input::F32(&eye), k, &w, path).unwrap(), d, "{path} [{k}, {n}] identity");
            for row in 0..k {
                let y = matmul_with(Input::F32(&eye[row * k..(row + 1) * k]), 1, &w, path).unwrap();
                assert_eq!(y, d[row * n..(row + 1) * n], "{path} [{k}, {n}] row {row}");
            }
        }
    }
}

/// Every path's weights are exactly [`dequantize`]'s, for every format (both readings of
/// wint8 / wint4): `x` = rows of the identity, `m = k` (the tile and GEMM paths) and `m = 1`.
#[test]
fn every_path_multiplies_by_exactly_the_dequantized_weights() {
    for &(format, k, n) in
        &[("wint8", 128, 70), ("wint4", 192, 68), ("rtn2", 128, 40), ("bf16", 64, 33), ("f32", 64, 33), ("wint2", 128, 96)]
    {
        let o = make(format, k, n, 31);
        let mut readings = vec![o.weights()];
        if let Owned::Packed(p) = &o {
            if matches!(p.kind, SchemeKind::Wint8 | SchemeKind::Wint4) {
                readings.push(Weights::PackedBf16(p));
            }
        }
        let mut eye = vec![0f32; k * k];
        for i in 0..k {
            eye[i * k + i] = 1.0;
        }
        for w in &readings {
            let d = dequantize(w).unwrap();
            for path in KernelPath::available() {
                assert_eq!(matmul_with(Input::F32(&eye), k, w, path).unwrap(), d, "{format} {path} identity");
                for row in [0, 1, k / 2, k - 1] {
                    let y = matmul_with(Input::F32(&eye[row * k..(row + 1) * k]), 1, w, path).unwrap();
                    assert_eq!(y, d[row * n..(row + 1) * n], "{format} {path} row {row}");
                }
            }
        }
    }
}

#[test]
fn kernel_paths_parse_and_clamp() {
    for p in KernelPath::ALL {
        assert_eq!(KernelPath::parse(p.name()), Some(p));
        assert!(p.clamped() <= KernelPath::detected());
    }
    assert_eq!(KernelPath::parse("avx3"), None);
    assert!(KernelPath::Portable.supported());
    assert_eq!(KernelPath::available().last().copied(), Some(KernelPath::detected()));
    assert!(KernelPath::default_cap() <= KernelPath::detected());
}

/// The `m = 1` kernels agree with the reference within the tolerance on Gaussian
/// activations, for every run length (and so every kernel) the driver picks.
#[test]
fn wint2_m1_kernels_match_reference() {
    for (k, n) in [(128, 256), (256, 160), (384, 100), (128, 288)] {
        let o = make("wint2", k, n, 21);
        let w = decoded(&o);
        for seed in 0..3 {
            let x = gaussian(1, k, seed);
            let r = matmul_reference(Input::F32(&x), 1, &o.weights()).unwrap();
            for path in KernelPath::available() {
                let f = matmul_with(Input::F32(&x), 1, &o.weights(), path).unwrap();
                assert_within(&f, &r, &x, 1, &w, k, n).unwrap_or_else(|e| panic!("{path} [{k}, {n}] seed {seed}: {e}"));
            }
        }
    }
}

/// FastDeploy's arithmetic: every wint8 / wint4 weight is the bf16 rounding of the exact
/// product, in the reference, the dequantization and the fast path alike.
#[test]
fn bf16_product_rounds_each_weight() {
    for (format, k, n) in [("wint8", 128, 34), ("wint4", 192, 36)] {
        let Owned::Packed(p) = make(format, k, n, 21) else { unreachable!() };
        let exact = dequantize(&Weights::Packed(&p)).unwrap();
        let deployed = dequantize(&Weights::PackedBf16(&p)).unwrap();
        let rounded: Vec<f32> = exact.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
        assert_eq!(deployed, rounded, "{format}");
        assert_ne!(deployed, exact, "{format}: some product needs more than bf16's 8 bits");
        for m in [1, 5] {
            let x = gaussian(m, k, 22);
            let r = matmul_reference(Input::F32(&x), m, &Weights::PackedBf16(&p)).unwrap();
            assert_eq!(r, naive(&x, m, &rounded, k, n), "{format} m {m}");
            for path in KernelPath::available() {
                let f = matmul_with(Input::F32(&x), m, &Weights::PackedBf16(&p), path).unwrap();
                assert_within(&f, &r, &x, m, &rounded, k, n).unwrap_or_else(|e| panic!("{format} {path} m {m}: {e}"));
            }
        }
    }
}

/// Where the CPU has AVX2 + FMA, the AVX2 WINT2 kernel takes encoder output (every column in
/// the AVX-512 kernels' range and the narrow decode's) and is really run: at `m = 1` (pairs of
/// blocks and a last single one) and `m = 3` its sums differ from the portable path's in the
/// last bits somewhere, within the tolerance of the reference.
#[test]
fn wint2_avx2_kernel_is_taken_for_encoder_output() {
    let (k, n) = (256, 96);
    let Owned::Packed(p) = make("wint2", k, n, 5) else { unreachable!() };
    let comp = |name: &str| p.components.iter().find(|c| c.name == name).unwrap().bytes.clone();
    let f32s = |b: Vec<u8>| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
    let (cs, zp) = (f32s(comp("code_scale")), f32s(comp("code_zp")));
    #[cfg(target_arch = "x86_64")]
    for c in 0..n {
        assert!(arch::avx2::narrow_ok(cs[c], zp[c] + 0.5), "column {c}");
    }
    if !KernelPath::Avx2.supported() {
        return;
    }
    assert_eq!(kernel_run(&Weights::Packed(&p), 1, KernelPath::Avx2).unwrap(), "avx2");
    assert_eq!(kernel_run(&Weights::Packed(&p), 8, KernelPath::Avx512).unwrap(), "avx2");
    let w = decoded(&Owned::Packed(p.clone()));
    for m in [1, 3] {
        let x = gaussian(m, k, 3);
        let f = matmul_with(Input::F32(&x), m, &Weights::Packed(&p), KernelPath::Avx2).unwrap();
        let q = matmul_portable(Input::F32(&x), m, &Weights::Packed(&p)).unwrap();
        assert_ne!(f, q, "m {m}: the AVX2 kernel sums in another order");
        assert_within(&f, &q, &x, m, &w, k, n).unwrap_or_else(|e| panic!("m {m}: {e}"));
    }
}

/// The AVX2 kernel's weights are exactly the format's for both of its code decodes: random
/// bytes and local scales with signed, tiny and large super scales, code maps in the narrow
/// decode's range (but block 1), past it (the wide decode), and at the narrow decode's edge:
/// a code value `v` of `-2^-24` (narrow: the floor is -1) and of `-2^-28` (a `code_scale` off
/// the 2^-25 grid, which must take the wide decode). `x = I` (`m = k`: 8 rows per decode) and one-hot
/// rows at `m = 1` (pairs of blocks and single ones, a partial block at the edge).
#[test]
fn wint2_avx2_weights_are_exact() {
    if !KernelPath::Avx2.supported() {
        return;
    }
    let mut rng = Rng::new(91);
    for (k, n, wide) in [(256, 96, false), (128, 300, false), (256, 96, true), (128, 140, true)] {
        let mut qw: Vec<u8> = (0..k / 4 * n).map(|_| rng.next_u64() as u8).collect();
        let ws: Vec<u8> = (0..k / 128 * n).map(|_| rng.next_u64() as u8).collect();
        let mut rng2 = Rng::new((k * n) as u64 + u64::from(wide));
        let mut f = |lo: f32, hi: f32| lo + (hi - lo) * (rng2.next_u64() % 1_000_000) as f32 / 1e6;
        let sup: Vec<u16> = (0..n).map(|c| bf16::from_f32(f(-1.0, 1.0) * [1e-20, 1.0, 3e4, 1e20][c % 4]).to_bits()).collect();
        let mut cs = vec![0f32; n];
        let mut zp = vec![0f32; n];
        for c in 0..n {
            (cs[c], zp[c]) = match (c % 13, c) {
                // v(37) = 37 * 2^-19 + c = -2^-24: narrow decode, floor -1.
                (3, _) => (2f32.powi(-19), -0.5 - 1185.0 * 2f32.powi(-24)),
                // v(5) = 5 * 3 * 2^-28 - 2^-24 = -2^-28: off the grid, so block 1 (and the
                // pair it is in) takes the wide decode.
                (_, 40) => (3.0 * 2f32.powi(-28), -0.5 - 2f32.powi(-24)),
                _ if wide => (f(1100.0, 2e5) * [1.0, -1.0][c % 2], f(-20000.0, 20000.0)),
                _ => (f(-200.0, 200.0), f(-20000.0, 20000.0)),
            };
            for p in (0..k / 4).step_by(3) {
                qw[p * n + c] = match (c % 13, c) {
                    (3, _) => 37,
                    (_, 40) => 5,
                    _ => qw[p * n + c],
                };
            }
        }
        #[cfg(target_arch = "x86_64")]
        for c in 0..n {
            let code_c = zp[c] + 0.5;
            assert!(arch::x86::wint2_block_ok(cs[c], code_c, bf16::from_bits(sup[c]).to_f32()), "column {c}");
            assert_eq!(arch::avx2::narrow_ok(cs[c], code_c), c % 13 == 3 || (!wide && c != 40), "column {c}");
        }
        let p = wint2_from_bits(k, n, qw, ws, sup, cs.iter().map(|v| v.to_bits()).collect(), zp.iter().map(|v| v.to_bits()).collect());
        let w = Weights::Packed(&p);
        let d = dequantize(&w).unwrap();
        let mut eye = vec![0f32; k * k];
        for i in 0..k {
            eye[i * k + i] = 1.0;
        }
        assert_eq!(matmul_with(Input::F32(&eye), k, &w, KernelPath::Avx2).unwrap(), d, "[{k}, {n}] wide {wide} identity");
        for row in 0..k {
            let y = matmul_with(Input::F32(&eye[row * k..(row + 1) * k]), 1, &w, KernelPath::Avx2).unwrap();
            assert_eq!(y, d[row * n..(row + 1) * n], "[{k}, {n}] wide {wide} row {row}");
        }
        for m in [2, 4, 5, 8, 11] {
            let x = gaussian(m, k, m as u64);
            let f = matmul_with(Input::F32(&x), m, &w, KernelPath::Avx2).unwrap();
            let r = matmul_reference(Input::F32(&x), m, &w).unwrap();
            assert_within(&f, &r, &x, m, &d, k, n).unwrap_or_else(|e| panic!("[{k}, {n}] wide {wide} m {m}: {e}"));
        }
    }
}
