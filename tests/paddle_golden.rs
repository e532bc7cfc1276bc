//! wint8/wint4 bytes against Paddle's own `weight_quantize` (CPU, arch 80), recorded in
//! `fixtures/paddle-weight-quantize.safetensors` by `fixtures/make_paddle_golden.py`.
//!
//! With the absmax scale rule (Paddle's), ccq must write exactly Paddle's bytes and scales.

use ccq::scheme::{ScaleRule, Scheme, Wint4, Wint8};
use ccq::Checkpoint;
use std::path::Path;

fn golden() -> Checkpoint {
    Checkpoint::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/paddle-weight-quantize.safetensors")).unwrap()
}

fn check(scheme: &dyn Scheme, prefix: &str) {
    let g = golden();
    let mut checked = 0;
    for t in g.tensors().iter().filter(|t| t.name.starts_with("w.")) {
        let tag = &t.name[2..];
        let (k, n) = (t.shape[0], t.shape[1]);
        let w = g.read_f32(&t.name).unwrap();
        let packed = scheme.encode(&w, k, n, ccq::scheme::Importance::Uniform).unwrap();
        let q = g.get(&format!("{prefix}.q.{tag}")).unwrap();
        assert_eq!(packed.components[0].shape, q.shape, "{tag}");
        assert_eq!(packed.components[0].bytes.as_slice(), g.raw_bytes(q).unwrap(), "{prefix} quant_weight {tag}");
        let scales: Vec<f32> =
            packed.components[1].bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        assert_eq!(scales, g.read_f32(&format!("{prefix}.s.{tag}")).unwrap(), "{prefix} weight_scale {tag}");
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn wint8_absmax_equals_paddle_weight_quantize() {
    check(&Wint8 { scale_rule: ScaleRule::Absmax }, "int8");
}

#[test]
fn wint4_absmax_equals_paddle_weight_quantize() {
    check(&Wint4 { scale_rule: ScaleRule::Absmax }, "int4");
}
