//! Checks shared by the wint8 and wint4 tests, generic over the layout.

use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{column_error, paddle_reference, Layout, ScaleRule};
use crate::rng::Rng;
use crate::scheme::{Packed, Scheme, SchemeError};
use crate::Dtype;

/// Row-major `[k, n]` random codes in `-qmax..=qmax`.
pub(crate) fn random_codes(k: usize, n: usize, qmax: i32, seed: u64) -> Vec<i8> {
    let mut rng = Rng::new(seed);
    let span = (2 * qmax + 1) as u64;
    (0..k * n).map(|_| ((rng.next_u64() % span) as i32 - qmax) as i8).collect()
}

/// Every element gets its own address, and together they cover `0..k * n`; reading
/// back the bytes [`Layout::interleave`] wrote gives every code back.
pub(crate) fn assert_bijection<L: Layout>(k: usize, n: usize) {
    let mut seen = vec![false; k * n];
    for row in 0..k {
        for col in 0..n {
            let a = L::code_address(k, row, col);
            assert!(a < k * n, "[{k}, {n}] ({row}, {col}) -> {a} out of range");
            assert!(!seen[a], "[{k}, {n}] ({row}, {col}) -> {a} taken twice");
            seen[a] = true;
        }
    }
    let q = random_codes(k, n, L::QMAX, 11);
    let bytes = L::interleave(&q, k, n);
    assert_eq!(bytes.len(), k * n * L::BITS / 8);
    for row in 0..k {
        for col in 0..n {
            assert_eq!(L::read_code(&bytes, k, row, col), i32::from(q[row * n + col]));
        }
    }
}

/// For a bf16-valued matrix, the absmax encoder writes the bytes Paddle's
/// `weight_quantize` writes: its scale (max over the column starting from the first
/// row's signed value, divided in f32, stored bf16), its quantization (C `round` of the
/// quotient by the stored scale, clamped), then its byte pipeline.
pub(crate) fn assert_absmax_matches_paddle<L: Layout>(scheme: &dyn Scheme) {
    let bound = L::QMAX as f32;
    for (k, n, seed) in [(64, 8, 1u64), (128, 16, 2), (192, 24, 3), (256, 64, 4)] {
        let mut rng = Rng::new(seed);
        let w: Vec<f32> = (0..k * n).map(|i| bf16::from_f32(rng.normal() as f32 * (1 + i % 5) as f32).to_f32()).collect();
        let scales: Vec<bf16> = (0..n)
            .map(|c| {
                let mut max = w[c];
                for r in 0..k {
                    max = if w[r * n + c].abs() > max { w[r * n + c].abs() } else { max };
                }
                bf16::from_f32(max / bound)
            })
            .collect();
        let q: Vec<i8> = (0..k * n)
            .map(|i| {
                let scaled = (w[i] / scales[i % n].to_f32()).round();
                scaled.clamp(-bound, bound) as i8
            })
            .collect();
        let p = scheme.encode(&w, k, n, crate::scheme::Importance::Uniform).unwrap();
        assert_eq!(p.components[0].bytes, paddle_reference::quant_weight(&q, k, n, L::BITS));
        let scale_bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(p.components[1].bytes, scale_bytes);
    }
}

/// `W = q * s` with `s` a power of two per column and some `|q| = qmax` in each column
/// decodes back to exactly `W`.
pub(crate) fn assert_exact_round_trip<L: Layout>(scheme: &dyn Scheme) {
    let (k, n) = (128, 16);
    let mut q = random_codes(k, n, L::QMAX, 5);
    for c in 0..n {
        q[(c * 7 % k) * n + c] = if c % 2 == 0 { L::QMAX as i8 } else { -L::QMAX as i8 };
    }
    // Column c has scale 2^(c % 7 - 3).
    let w: Vec<f32> = (0..k * n).map(|i| f32::from(q[i]) * 2f32.powi((i % n % 7) as i32 - 3)).collect();
    let p = scheme.encode(&w, k, n, crate::scheme::Importance::Uniform).unwrap();
    assert_eq!(scheme.decode(&p).unwrap(), w);
}

/// The same bytes whether rayon runs 1 or 3 threads.
pub(crate) fn assert_thread_independent(scheme: &dyn Scheme, n: usize) {
    let k = 256;
    let w = Rng::new(21).normals(k * n);
    let h: Vec<f32> = (0..k).map(|i| 1.0 + (i % 7) as f32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| scheme.encode(&w, k, n, crate::scheme::Importance::Diagonal(&h)).unwrap())
    };
    assert_eq!(run(1), run(3));
}

/// An all-zero column gets scale 0 and code 0 (bias value in every byte), and decodes
/// to zeros; the other columns are unaffected.
pub(crate) fn assert_zero_column<L: Layout>(scheme: &dyn Scheme) {
    let (k, n) = (64, 8);
    let mut w = Rng::new(9).normals(k * n);
    for r in 0..k {
        w[r * n + 3] = 0.0;
    }
    let p = scheme.encode(&w, k, n, crate::scheme::Importance::Uniform).unwrap();
    assert_eq!(&p.components[1].bytes[6..8], &[0, 0]);
    for r in 0..k {
        assert_eq!(L::read_code(&p.components[0].bytes, k, r, 3), 0);
    }
    let d = scheme.decode(&p).unwrap();
    assert!((0..k).all(|r| d[r * n + 3] == 0.0));
    assert!((0..k).any(|r| d[r * n + 2] != 0.0));
}

/// Shape, length, finiteness and importance errors. `bad_n` has a bad column count,
/// `bad_k` a bad row count.
pub(crate) fn assert_bad_inputs<L: Layout>(scheme: &dyn Scheme, bad_n: (usize, usize), bad_k: (usize, usize)) {
    let bad_shape = |k: usize, n: usize| {
        let w = vec![0f32; k * n];
        assert!(
            matches!(
                scheme.encode(&w, k, n, crate::scheme::Importance::Uniform),
                Err(SchemeError::BadShape { scheme: s, k: kk, n: nn, .. })
                    if s == L::KIND && kk == k && nn == n
            ),
            "[{k}, {n}]"
        );
        assert!(scheme.check_shape(k, n).is_err());
    };
    bad_shape(bad_n.0, bad_n.1);
    bad_shape(bad_k.0, bad_k.1);
    bad_shape(0, L::N_MULTIPLE);
    bad_shape(64, 0);

    let (k, n) = (64, L::N_MULTIPLE);
    assert_eq!(
        scheme.encode(&[0.0; 3], k, n, crate::scheme::Importance::Uniform),
        Err(SchemeError::WeightLength { expected: k * n, found: 3 })
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w = vec![0.5f32; k * n];
        w[5 * n + 1] = bad;
        assert!(matches!(
            scheme.encode(&w, k, n, crate::scheme::Importance::Uniform),
            Err(SchemeError::NonFiniteWeight { k: 5, n: 1, .. })
        ));
    }
    let w = vec![0.5f32; k * n];
    assert_eq!(
        scheme.encode(&w, k, n, crate::scheme::Importance::Diagonal(&[1.0; 3])),
        Err(SchemeError::ImportanceLength { expected: k, found: 3 })
    );
    for bad in [-1.0f32, f32::NAN, f32::INFINITY] {
        let mut h = vec![1.0f32; k];
        h[7] = bad;
        assert!(matches!(scheme.encode(&w, k, n, crate::scheme::Importance::Diagonal(&h)), Err(SchemeError::BadImportance { k: 7, .. })));
    }
}

/// Every way a component can be wrong gives its typed error, never a panic.
pub(crate) fn assert_bad_components<L: Layout>(scheme: &dyn Scheme) {
    let (k, n) = (64, 2 * L::N_MULTIPLE);
    let good = scheme.encode(&Rng::new(2).normals(k * n), k, n, crate::scheme::Importance::Uniform).unwrap();
    let qw_shape = vec![n * L::BITS / 8, k];
    let edit = |f: &dyn Fn(&mut Packed)| {
        let mut p = good.clone();
        f(&mut p);
        scheme.decode(&p)
    };
    let other = crate::scheme::SchemeKind::ALL.into_iter().find(|&x| x != L::KIND).unwrap();
    assert_eq!(edit(&|p| p.kind = other), Err(SchemeError::WrongKind { expected: L::KIND, found: other }));
    assert!(matches!(edit(&|p| p.k = 96), Err(SchemeError::BadShape { .. })));
    assert!(matches!(edit(&|p| p.n = n + 1), Err(SchemeError::BadShape { .. })));
    assert_eq!(
        edit(&|p| {
            p.components.remove(1);
        }),
        Err(SchemeError::MissingComponent { name: "weight_scale" })
    );
    assert_eq!(
        edit(&|p| p.components[0].dtype = Dtype::U8),
        Err(SchemeError::ComponentDtype { name: "quant_weight", expected: Dtype::I8, found: Dtype::U8 })
    );
    assert_eq!(
        edit(&|p| p.components[1].dtype = Dtype::F32),
        Err(SchemeError::ComponentDtype { name: "weight_scale", expected: Dtype::BF16, found: Dtype::F32 })
    );
    assert_eq!(
        edit(&|p| p.components[0].shape = vec![k, n * L::BITS / 8]),
        Err(SchemeError::ComponentShape { name: "quant_weight", expected: qw_shape.clone(), found: vec![k, n * L::BITS / 8] })
    );
    assert_eq!(
        edit(&|p| p.components[0].bytes.pop().map(drop).unwrap_or(())),
        Err(SchemeError::ComponentLength { name: "quant_weight", expected: k * n * L::BITS / 8, found: k * n * L::BITS / 8 - 1 })
    );
    assert_eq!(
        edit(&|p| p.components[1].bytes.push(0)),
        Err(SchemeError::ComponentLength { name: "weight_scale", expected: 2 * n, found: 2 * n + 1 })
    );
    for (bits, value) in [(0x7FC0u16, f32::NAN), (0x7F80, f32::INFINITY)] {
        let r = edit(&|p| p.components[1].bytes[2..4].copy_from_slice(&bits.to_le_bytes()));
        match r {
            Err(SchemeError::NonFiniteParameter { name: "weight_scale", index: 1, value: v }) => {
                assert!(v.is_nan() == value.is_nan() && (v.is_nan() || v == value));
            }
            other => panic!("expected NonFiniteParameter, got {other:?}"),
        }
    }
}

/// A matrix whose column count is a multiple of `n_multiple`: `k` in 64..=256, each
/// column scaled by its own power of ten (1e-30..1e30) so tiny and huge columns occur.
pub(crate) fn matrix(n_multiple: usize) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=4, 1usize..=6).prop_flat_map(move |(kt, nm)| {
        let (k, n) = (64 * kt, n_multiple * nm);
        (Just(k), Just(n), prop::collection::vec(-1.0f32..1.0, k * n), prop::collection::vec(-30i32..=30, n)).prop_map(|(k, n, w, mags)| {
            let w = w.iter().enumerate().map(|(i, v)| v * 10f32.powi(mags[i % n])).collect();
            (k, n, w)
        })
    })
}

/// Bound for element `(k, n)` with stored scale `s`:
/// `|W - What| <= s * (0.5 + 2^-16)`, the half step plus the f32 rounding of `W / s`
/// (at most `|W / s| * 2^-24 <= 128 * 2^-24` steps); an element clamped at the absmax
/// scale misses by at most `qmax * s * 2^-9` (the bf16 rounding of the scale), which is
/// inside the same bound. Under the searched scale a clamped element is instead checked
/// to be decoded to `+-qmax * s` with the sign of `W` and `|W|` beyond it; and each
/// column's weighted error is at most the absmax scale's.
pub(crate) fn assert_error_bound<L: Layout>(
    scheme: &dyn Scheme,
    rule: ScaleRule,
    w: &[f32],
    k: usize,
    n: usize,
) -> Result<(), TestCaseError> {
    let p = scheme.encode(w, k, n, crate::scheme::Importance::Uniform).unwrap();
    let d = scheme.decode(&p).unwrap();
    let scales: Vec<f32> = p.components[1].bytes.chunks(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    let searched = rule == ScaleRule::Search;
    for i in 0..k * n {
        let s = scales[i % n];
        let e = (w[i] - d[i]).abs();
        let clamped = d[i].abs() == L::QMAX as f32 * s && d[i].signum() == w[i].signum() && w[i].abs() >= d[i].abs();
        prop_assert!(e <= s * (0.5 + 2f32.powi(-16)) || (searched && clamped), "element {i}: w {} decoded {} scale {s}", w[i], d[i]);
    }
    for c in 0..n {
        let col: Vec<f32> = (0..k).map(|r| w[r * n + c]).collect();
        let absmax = col.iter().fold(0f32, |m, v| m.max(v.abs()));
        let a = super::absmax_scale(absmax, L::QMAX).to_f32();
        prop_assert!(column_error(&col, None, scales[c], L::QMAX) <= column_error(&col, None, a, L::QMAX));
    }
    Ok(())
}

/// Random `quant_weight` bytes and bf16 scale bit patterns (NaN and infinities included)
/// for a valid shape.
pub(crate) fn arbitrary_components(n_multiple: usize, bits: usize) -> impl Strategy<Value = (usize, usize, Vec<u8>, Vec<u16>)> {
    (1usize..=3, 1usize..=4).prop_flat_map(move |(kt, nm)| {
        let (k, n) = (64 * kt, n_multiple * nm);
        (Just(k), Just(n), prop::collection::vec(any::<u8>(), k * n * bits / 8), prop::collection::vec(any::<u16>(), n))
    })
}

/// Decoding arbitrary bytes returns `k * n` values, none NaN (a huge finite scale times
/// a code may overflow to infinity, as it would in the kernel), or a
/// [`SchemeError::NonFiniteParameter`] when a scale is NaN or infinite.
pub(crate) fn assert_decode_total<L: Layout>(
    scheme: &dyn Scheme,
    k: usize,
    n: usize,
    bytes: Vec<u8>,
    scales: Vec<u16>,
) -> Result<(), TestCaseError> {
    let finite = scales.iter().all(|&b| bf16::from_bits(b).is_finite());
    let p = Packed {
        kind: L::KIND,
        k,
        n,
        components: vec![
            crate::scheme::Component { name: "quant_weight", dtype: Dtype::I8, shape: vec![n * L::BITS / 8, k], bytes },
            crate::scheme::Component {
                name: "weight_scale",
                dtype: Dtype::BF16,
                shape: vec![n],
                bytes: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            },
        ],
    };
    match scheme.decode(&p) {
        Ok(d) => {
            prop_assert!(finite);
            prop_assert_eq!(d.len(), k * n);
            prop_assert!(d.iter().all(|v| !v.is_nan()));
        }
        Err(SchemeError::NonFiniteParameter { name: "weight_scale", .. }) => {
            prop_assert!(!finite)
        }
        Err(e) => prop_assert!(false, "unexpected error {e}"),
    }
    Ok(())
}
