//! `ccq dequant` end to end, and the `ccq::quantized` reader it is built on: a round trip
//! through both layouts from both namings gives back the source's tensors (names, shapes,
//! dtypes, orientation), packed tensors equal to their scheme's decode and close to the
//! source, unquantized ones bit for bit; corrupted checkpoints fail with typed errors naming
//! the tensor.

use super::{ccq, fails_with, refused, repo, stdout, temp_dir, tensor_set};
use ccq::checkpoint::write::{SafetensorsWriter, TensorSpec};
use ccq::quantized::QuantizedCheckpoint;
use ccq::scheme::{Component, Packed, SchemeError};
use ccq::{Checkpoint, Dtype, Error, SchemeKind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Quantizes with wint8 dense, wint4 experts in layer 1 and WINT2 in layer 2; the native
/// layout in shards of 200 kB (the dequantized output keeps one shard per input shard).
fn quantize(src: &str, out: &Path, layout: &str) {
    let out = out.display().to_string();
    let shard_size = if layout == "native" { "200KB" } else { "4GB" };
    stdout(&ccq(&["quantize", src, "-o", &out, "--quiet", "--w4-end-layer", "1", "--layout", layout, "--shard-size", shard_size]));
}

fn dequant(quant: &Path, out: &Path) -> String {
    let r = ccq(&["dequant", &quant.display().to_string(), "-o", &out.display().to_string()]);
    assert!(r.status.success(), "ccq dequant failed: {}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stderr).into_owned()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// f32 -> bf16 -> f32, round to nearest even (finite values).
fn bf16_round(v: f32) -> f32 {
    let bits = v.to_bits();
    f32::from_bits((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

/// A packed tensor's components read straight from the checkpoint, decoded by its scheme.
fn decode_independently(q: &Checkpoint, name: &str, kind: SchemeKind, k: usize, n: usize) -> Vec<f32> {
    let scheme = kind.decoder();
    let components = scheme
        .component_layout(k, n)
        .into_iter()
        .map(|(c, _, _)| {
            let e = q.get(&format!("{name}.{c}")).unwrap();
            Component { name: c, dtype: e.dtype, shape: e.shape.clone(), bytes: q.raw_bytes(e).unwrap().to_vec() }
        })
        .collect();
    scheme.decode(&Packed { kind, k, n, components }).unwrap()
}

/// Quantizes `fixture` into `layout`, dequantizes it, and checks the result tensor by tensor
/// against the provenance record (read here as plain JSON), the packed bytes and the source.
/// Returns the NMSE per scheme.
fn round_trip(fixture: &str, layout: &str) -> BTreeMap<String, f64> {
    let dir = temp_dir(&format!("dq-{fixture}-{layout}"));
    let (quant, out) = (dir.join("q"), dir.join("d"));
    let src_path = repo(&format!("fixtures/{fixture}"));
    quantize(&src_path, &quant, layout);
    let note = dequant(&quant, &out);
    assert!(note.contains("source names and orientation"), "{note}");
    let (src, q, d) = (Checkpoint::open(&src_path).unwrap(), Checkpoint::open(&quant).unwrap(), Checkpoint::open(&out).unwrap());
    assert_eq!(tensor_set(&d), tensor_set(&src), "{fixture} {layout}");
    assert_eq!(json(&out.join("config.json")), json(&Path::new(&src_path).join("config.json")));
    assert_eq!(d.shards().len(), q.shards().len());
    assert!(!out.join("ccq-provenance.json").exists());

    let provenance = json(&quant.join("ccq-provenance.json"));
    assert_eq!(provenance["layout"], layout);
    let mut errors: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for t in provenance["tensors"].as_array().unwrap() {
        let (name, transposed) = (t["name"].as_str().unwrap(), t["transposed"].as_bool().unwrap());
        let (k, n) = (t["k"].as_u64().unwrap() as usize, t["n"].as_u64().unwrap() as usize);
        let sources = t["sources"].as_array().unwrap();
        let Some(scheme) = t["scheme"].as_str() else {
            for s in sources {
                let s = s["name"].as_str().unwrap();
                let (a, b) = (d.get(s).unwrap(), src.get(s).unwrap());
                assert_eq!(d.raw_bytes(a).unwrap(), src.raw_bytes(b).unwrap(), "{s} is not bit-identical");
            }
            continue;
        };
        let w = decode_independently(&q, name, SchemeKind::from_name(scheme).unwrap(), k, n);
        let mut offset = 0;
        for s in sources {
            let (s, width) = (s["name"].as_str().unwrap(), s["width"].as_u64().unwrap() as usize);
            let got = d.read_f32(s).unwrap();
            let original = src.read_f32(s).unwrap();
            let mut expected = vec![0.0f32; k * width];
            for row in 0..k {
                for c in 0..width {
                    let at = if transposed { c * k + row } else { row * width + c };
                    expected[at] = bf16_round(w[row * n + offset + c]);
                }
            }
            assert_eq!(got, expected, "{s}: not the decode of {name}");
            let e = errors.entry(scheme.to_string()).or_default();
            for (g, o) in got.iter().zip(&original) {
                e.0 += ((g - o) as f64).powi(2);
                e.1 += (*o as f64).powi(2);
            }
            offset += width;
        }
        assert_eq!(offset, n);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    errors.into_iter().map(|(k, (err, norm))| (k, err / norm)).collect()
}

fn check_nmse(nmse: &BTreeMap<String, f64>) {
    // Measured on the fixtures (either naming, either layout): WINT2 0.105, wint4 0.011,
    // wint8 4.4e-5; the bounds leave about 25% for encoder changes.
    let bound = |s: &str| match s {
        "wint2" => 0.13,
        "wint4" => 0.015,
        _ => 1e-4,
    };
    assert_eq!(nmse.len(), 3, "{nmse:?}");
    for (scheme, v) in nmse {
        assert!(*v < bound(scheme), "{scheme}: NMSE {v}");
    }
}

#[test]
fn fastdeploy_layout_from_pytorch_dequantizes_to_the_source() {
    check_nmse(&round_trip("ernie45-tiny-pt", "fastdeploy"));
}

#[test]
fn fastdeploy_layout_from_paddle_dequantizes_to_the_source() {
    check_nmse(&round_trip("ernie45-tiny-paddle", "fastdeploy"));
}

#[test]
fn native_layout_dequantizes_to_the_source_from_both_namings() {
    check_nmse(&round_trip("ernie45-tiny-pt", "native"));
    check_nmse(&round_trip("ernie45-tiny-paddle", "native"));
}

#[test]
fn without_provenance_names_stay_as_stored_and_schemes_are_inferred() {
    let dir = temp_dir("dq-noprov");
    let quant = dir.join("q");
    quantize(&repo("fixtures/ernie45-tiny-pt"), &quant, "fastdeploy");
    let with = QuantizedCheckpoint::open(&quant).unwrap();
    let recorded: Vec<_> = with.tensors().iter().map(|t| (t.name.clone(), t.scheme, t.k, t.n)).collect();
    let qkv = with.get("ernie.layers.0.self_attn.qkv_proj").unwrap();
    let sources: Vec<&str> = qkv.sources.as_ref().unwrap().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        sources,
        ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"]
    );
    // The reader's dequantize is the scheme's decode; weights() hands the same packed bytes on.
    let expert = with.get("ernie.layers.2.mlp.experts.1.down_proj").unwrap();
    assert_eq!(expert.scheme, Some(SchemeKind::Wint2));
    let q = Checkpoint::open(&quant).unwrap();
    assert_eq!(with.dequantize(expert).unwrap(), decode_independently(&q, &expert.name, SchemeKind::Wint2, 128, 128));
    match with.weights(expert).unwrap() {
        ccq::quantized::OwnedWeights::Packed(p) => assert_eq!((p.kind, p.k, p.n, p.components.len()), (SchemeKind::Wint2, 128, 128, 5)),
        other => panic!("{other:?}"),
    }
    let router = with.get("ernie.layers.1.mlp.gate.weight").unwrap();
    assert_eq!((router.scheme, router.dtype, router.k, router.n, router.transposed), (None, Some(Dtype::F32), 128, 4, true));

    // A record that does not parse, or does not describe this checkpoint, is an error naming it.
    let record_path = quant.join("ccq-provenance.json");
    let record = json(&record_path);
    let mut other_model = record.clone();
    other_model["tensors"][3]["name"] = "ernie.layers.9.self_attn.qkv_proj".into();
    let mut bad_width = record.clone();
    bad_width["tensors"][3]["sources"][0]["width"] = 7.into();
    for (text, problem) in [
        ("{".to_string(), "not a valid provenance record"),
        (other_model.to_string(), "which the checkpoint does not hold"),
        (bad_width.to_string(), "does not hold k = 128 rows of width 7"),
    ] {
        std::fs::write(&record_path, text).unwrap();
        let err = QuantizedCheckpoint::open(&quant).unwrap_err();
        assert!(matches!(&err, Error::Json { file, .. } if file == &record_path), "{err:?}");
        assert!(err.to_string().contains(problem), "{err}");
    }
    std::fs::remove_file(&record_path).unwrap();
    let without = QuantizedCheckpoint::open(&quant).unwrap();
    let inferred: Vec<_> = without.tensors().iter().map(|t| (t.name.clone(), t.scheme, t.k, t.n)).collect();
    assert_eq!(inferred, recorded);
    assert!(without.tensors().iter().all(|t| t.sources.is_none()));
    let kinds: std::collections::BTreeSet<_> = inferred.iter().filter_map(|t| t.1).collect();
    assert_eq!(kinds.len(), 3);

    let out = dir.join("d");
    let note = dequant(&quant, &out);
    assert!(note.contains("has no ccq-provenance.json"), "{note}");
    let d = Checkpoint::open(&out).unwrap();
    let qkv = d.get("ernie.layers.0.self_attn.qkv_proj.weight").unwrap();
    assert_eq!((qkv.dtype, qkv.shape.clone()), (Dtype::BF16, vec![128, 256]));
    assert_eq!(d.get("ernie.layers.1.mlp.gate.weight").unwrap().dtype, Dtype::F32);
    let config = json(&out.join("config.json"));
    assert!(config.get("quantization_config").is_none() && config["dtype"] == "bfloat16");

    // The output exists now: --force is needed to replace it.
    fails_with(&["dequant", &quant.display().to_string(), "-o", &out.display().to_string()], "--force");

    // A quantization_config that disagrees with the components is caught.
    let mut config = json(&quant.join("config.json"));
    config["quantization_config"]["moe_quant_config"]["moe_w4_quant_config"]["quant_end_layer"] = 2.into();
    std::fs::write(quant.join("config.json"), config.to_string()).unwrap();
    let err = QuantizedCheckpoint::open(&quant).unwrap_err();
    assert!(matches!(&err, Error::BadTensor { tensor, .. } if tensor == "ernie.layers.2.mlp.experts.0.up_gate_proj"), "{err}");
    assert!(err.to_string().contains("quantization_config makes it wint4"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}

/// A hand-made FastDeploy-layout checkpoint: one wint8 tensor and one WINT2 tensor, whose
/// components can be given any dtype and shape.
fn fastdeploy_checkpoint(dir: &Path, specs: &[(&str, Dtype, Vec<usize>)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let config = r#"{"model_type": "ernie4_5_moe", "quantization_config": {"quantization": "wint8"}}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let specs: Vec<TensorSpec> = specs.iter().map(|(n, d, s)| TensorSpec::new(*n, *d, s.clone())).collect();
    let mut w = SafetensorsWriter::create(dir.join("model.safetensors"), &specs, &Default::default()).unwrap();
    for s in &specs {
        w.write(&vec![0x3c; s.nbytes() as usize]).unwrap();
    }
    w.finish().unwrap();
    dir.display().to_string()
}

fn good_fastdeploy() -> Vec<(&'static str, Dtype, Vec<usize>)> {
    let o = "ernie.layers.0.self_attn.o_proj";
    let e = "ernie.layers.0.mlp.down_proj";
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        (leak(format!("{o}.quant_weight")), Dtype::I8, vec![128, 128]),
        (leak(format!("{o}.weight_scale")), Dtype::BF16, vec![128]),
        (leak(format!("{e}.quant_weight")), Dtype::U8, vec![32, 64]),
        (leak(format!("{e}.weight_scale")), Dtype::U8, vec![1, 64]),
        (leak(format!("{e}.super_scales")), Dtype::BF16, vec![64]),
        (leak(format!("{e}.code_scale")), Dtype::F32, vec![64]),
        (leak(format!("{e}.code_zp")), Dtype::F32, vec![64]),
        ("ernie.norm.weight", Dtype::BF16, vec![128]),
    ]
}

#[test]
fn corrupted_packed_tensors_are_errors_naming_them() {
    let dir = temp_dir("dq-corrupt");
    let good = fastdeploy_checkpoint(&dir.join("good"), &good_fastdeploy());
    let q = QuantizedCheckpoint::open(&good).unwrap();
    let schemes: Vec<_> = q.tensors().iter().map(|t| (t.name.as_str(), t.scheme, t.k, t.n)).collect();
    assert_eq!(
        schemes,
        [
            ("ernie.layers.0.self_attn.o_proj", Some(SchemeKind::Wint8), 128, 128),
            ("ernie.layers.0.mlp.down_proj", Some(SchemeKind::Wint2), 128, 64),
            ("ernie.norm.weight", None, 128, 1),
        ]
    );

    let cases: [(usize, Dtype, Vec<usize>, &str, &str); 4] = [
        (1, Dtype::BF16, vec![100], "ernie.layers.0.self_attn.o_proj", "neither wint8"),
        (0, Dtype::F32, vec![128, 128], "ernie.layers.0.self_attn.o_proj", "dtype F32, expected I8"),
        (4, Dtype::BF16, vec![63], "ernie.layers.0.mlp.down_proj", "super_scales has shape [63], expected [64]"),
        (5, Dtype::BF16, vec![64], "ernie.layers.0.mlp.down_proj", "code_scale has dtype BF16, expected F32"),
    ];
    for (i, (which, dtype, shape, tensor, problem)) in cases.into_iter().enumerate() {
        let mut specs = good_fastdeploy();
        specs[which] = (specs[which].0, dtype, shape);
        let path = fastdeploy_checkpoint(&dir.join(format!("bad{i}")), &specs);
        let err = QuantizedCheckpoint::open(&path).unwrap_err();
        assert!(matches!(&err, Error::Packed { tensor: t, .. } | Error::BadTensor { tensor: t, .. } if t == tensor), "{err:?}");
        let stderr = refused(&["dequant", &path, "-o", &dir.join(format!("out{i}")).display().to_string()]);
        assert!(stderr.contains(tensor) && stderr.contains(problem), "{stderr}");
        assert!(!dir.join(format!("out{i}")).exists());
    }
    let mut specs = good_fastdeploy();
    specs.remove(1);
    let err = QuantizedCheckpoint::open(fastdeploy_checkpoint(&dir.join("missing"), &specs)).unwrap_err();
    assert!(matches!(&err, Error::Packed { source: SchemeError::MissingComponent { name: "weight_scale" }, .. }), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A hand-made native-layout file: one wint8 tensor `w` [128, 128] with the given metadata.
fn native_file(dir: &Path, metadata: Option<&str>) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("model.safetensors");
    let specs =
        vec![TensorSpec::new("w.quant_weight", Dtype::I8, vec![128, 128]), TensorSpec::new("w.weight_scale", Dtype::BF16, vec![128])];
    let mut meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(m) = metadata {
        meta.insert("ccq.tensor.w".to_string(), m.to_string());
    }
    let mut w = SafetensorsWriter::create(&path, &specs, &meta).unwrap();
    for s in &specs {
        w.write(&vec![0x3c; s.nbytes() as usize]).unwrap();
    }
    w.finish().unwrap();
    path.display().to_string()
}

#[test]
fn native_metadata_missing_or_garbled_is_a_typed_error() {
    let dir = temp_dir("dq-native-meta");
    let params = r#""params": {"granularity": "per_channel", "layout": "cutlass_interleaved"}"#;
    let meta = |fields: &str| format!("{{{fields}, {params}}}");
    let good = meta(r#""scheme": "wint8", "k": 128, "n": 128, "transposed": true, "components": ["quant_weight", "weight_scale"]"#);
    let q = QuantizedCheckpoint::open(native_file(&dir.join("good"), Some(&good))).unwrap();
    let t = q.get("w").unwrap();
    assert_eq!((t.scheme, t.k, t.n, t.transposed), (Some(SchemeKind::Wint8), 128, 128, true));
    assert_eq!(q.dequantize(t).unwrap().len(), 128 * 128);

    let wint8 = |rest: &str| meta(&format!(r#""scheme": "wint8", {rest}"#));
    let cases = [
        (None, "no ccq.tensor.w metadata".to_string()),
        (Some("{not json".to_string()), "not a valid description".to_string()),
        (
            Some(meta(r#""scheme": "wint3", "k": 128, "n": 128, "transposed": true, "components": []"#)),
            "unknown scheme 'wint3'".to_string(),
        ),
        (
            Some(wint8(r#""k": -1, "n": 128, "transposed": true, "components": ["quant_weight", "weight_scale"]"#)),
            "invalid value".to_string(),
        ),
        (Some(wint8(r#""k": 128, "n": 128, "components": ["quant_weight", "weight_scale"]"#)), "missing field `transposed`".to_string()),
        (
            Some(wint8(r#""k": 128, "n": 128, "transpose": true, "components": ["quant_weight", "weight_scale"]"#)),
            "unknown field `transpose`".to_string(),
        ),
        (Some(wint8(r#""k": 128, "n": 128, "transposed": true, "components": ["quant_weight"]"#)), "\"components\" must list".to_string()),
        (
            Some(wint8(r#""k": 64, "n": 128, "transposed": true, "components": ["quant_weight", "weight_scale"]"#)),
            "component quant_weight has shape [128, 128], expected [128, 64]".to_string(),
        ),
        (Some(good.replace("per_channel", "per_group")), "written with wint8 parameters".to_string()),
    ];
    for (i, (meta, problem)) in cases.into_iter().enumerate() {
        let path = native_file(&dir.join(format!("bad{i}")), meta.as_deref());
        let err = QuantizedCheckpoint::open(&path).unwrap_err();
        assert!(matches!(&err, Error::QuantMetadata { tensor, .. } | Error::Packed { tensor, .. } if tensor == "w"), "{err:?}");
        assert!(err.to_string().contains(&problem), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 14, defect 8: a dequantization that fails while writing (here a NaN super scale, found
/// at decode time) used to leave a partial directory it could never resume; now nothing stays.
#[test]
fn failed_dequant_leaves_nothing_behind() {
    let dir = temp_dir("dq-leftover");
    let path = fastdeploy_checkpoint(&dir.join("nan"), &good_fastdeploy());
    let ckpt = ccq::Checkpoint::open(&path).unwrap();
    let e = ckpt.get("ernie.layers.0.mlp.down_proj.super_scales").unwrap();
    let file = ckpt.shards()[e.shard].path.clone();
    let (start, end) = (e.byte_range.0 as usize, e.byte_range.1 as usize);
    drop(ckpt);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[start..end].fill(0xff);
    std::fs::write(&file, bytes).unwrap();
    let out = dir.join("out");
    let stderr = refused(&["dequant", &path, "-o", &out.display().to_string()]);
    assert!(stderr.contains("super_scales") && stderr.contains("NaN"), "{stderr}");
    assert!(!out.exists() && !ccq::checkpoint::output::partial_dir(&out).exists());
}

/// Issue 14, defect 9: flipping `transposed` in `ccq-provenance.json` used to make `dequant`
/// write transposed matrices with exit 0; the record is now checked against the sources'
/// shapes and the native layout's own descriptions.
#[test]
fn a_flipped_transposed_in_the_provenance_is_refused() {
    let dir = temp_dir("dq-flipped");
    let src = repo("fixtures/ernie45-tiny-pt");
    for layout in ["fastdeploy", "native"] {
        let q = dir.join(layout);
        let qs = q.display().to_string();
        stdout(&ccq(&["quantize", &src, "-o", &qs, "--layout", layout, "--quiet"]));
        let file = q.join(ccq::format::provenance::PROVENANCE_FILE);
        let text = std::fs::read_to_string(&file).unwrap().replace("\"transposed\": true", "\"transposed\": false");
        std::fs::write(&file, text).unwrap();
        let err = refused(&["dequant", &qs, "-o", &dir.join(format!("{layout}-out")).display().to_string()]);
        assert!(err.contains("transposed"), "{layout}: {err}");
    }
}
