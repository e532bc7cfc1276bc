//! `ccq quantize` end to end: the FastDeploy layout tensor by tensor, bytes equal to the
//! schemes' own encoders, determinism across thread counts, interruption and resume, and bad
//! input.

use super::{ccq, fails_with, refused, repo, stdout, temp_dir, tensor_set};
use ccq::scheme::{Scheme, Wint2, Wint4, Wint8};
use ccq::{Checkpoint, Dtype};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The tensor set the layout doc prescribes for the tiny fixture model (H 128, 2 heads of 64,
/// 1 KV head, dense width 256, 4 experts of width 128, 1 shared expert, 3 layers, MoE from
/// layer 1, tied embeddings), with MoE layers <= `w4_end` in wint4 and later ones in WINT2.
fn expected_fastdeploy_tensors(w4_end: usize) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let (h, v, i_dense, i_moe, qkv) = (128, 256, 256, 128, (2 + 2) * 64);
    let mut t = BTreeMap::new();
    let mut add = |name: String, dtype, shape: Vec<usize>| {
        t.insert(name, (dtype, shape));
    };
    let wint8 = |add: &mut dyn FnMut(String, Dtype, Vec<usize>), base: String, k: usize, n: usize| {
        add(format!("{base}.quant_weight"), Dtype::I8, vec![n, k]);
        add(format!("{base}.weight_scale"), Dtype::BF16, vec![n]);
    };
    add("ernie.embed_tokens.weight".into(), Dtype::BF16, vec![v, h]);
    add("ernie.norm.weight".into(), Dtype::BF16, vec![h]);
    for l in 0..3 {
        let p = format!("ernie.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), Dtype::BF16, vec![h]);
        add(format!("{p}.post_attention_layernorm.weight"), Dtype::BF16, vec![h]);
        wint8(&mut add, format!("{p}.self_attn.qkv_proj"), h, qkv);
        wint8(&mut add, format!("{p}.self_attn.o_proj"), 128, h);
        if l == 0 {
            wint8(&mut add, format!("{p}.mlp.up_gate_proj"), h, 2 * i_dense);
            wint8(&mut add, format!("{p}.mlp.down_proj"), i_dense, h);
            continue;
        }
        wint8(&mut add, format!("{p}.mlp.shared_experts.up_gate_proj"), h, 2 * i_moe);
        wint8(&mut add, format!("{p}.mlp.shared_experts.down_proj"), i_moe, h);
        add(format!("{p}.mlp.gate.weight"), Dtype::F32, vec![h, 4]);
        add(format!("{p}.mlp.moe_statics.e_score_correction_bias"), Dtype::F32, vec![1, 4]);
        for e in 0..4 {
            for (proj, k, n) in [("up_gate_proj", h, 2 * i_moe), ("down_proj", i_moe, h)] {
                let base = format!("{p}.mlp.experts.{e}.{proj}");
                if l <= w4_end {
                    add(format!("{base}.quant_weight"), Dtype::I8, vec![n / 2, k]);
                    add(format!("{base}.weight_scale"), Dtype::BF16, vec![n]);
                } else {
                    add(format!("{base}.quant_weight"), Dtype::U8, vec![k / 4, n]);
                    add(format!("{base}.weight_scale"), Dtype::U8, vec![k / 128, n]);
                    add(format!("{base}.super_scales"), Dtype::BF16, vec![n]);
                    add(format!("{base}.code_scale"), Dtype::F32, vec![n]);
                    add(format!("{base}.code_zp"), Dtype::F32, vec![n]);
                }
            }
        }
    }
    t
}

fn quantize(src: &str, out: &Path, extra: &[&str]) -> String {
    let out_s = out.display().to_string();
    let mut args = vec!["quantize", src, "-o", &out_s, "--quiet"];
    args.extend_from_slice(extra);
    stdout(&ccq(&args))
}

/// The logical [in, out] matrix of PyTorch [out, in] sources concatenated along the outputs.
fn logical_from_pytorch(src: &Checkpoint, names: &[&str]) -> (Vec<f32>, usize, usize) {
    let parts: Vec<(Vec<f32>, usize, usize)> = names
        .iter()
        .map(|n| {
            let e = src.get(n).unwrap();
            (src.read_f32(n).unwrap(), e.shape[0], e.shape[1])
        })
        .collect();
    let k = parts[0].2;
    let n: usize = parts.iter().map(|p| p.1).sum();
    let mut w = vec![0.0; k * n];
    let mut off = 0;
    for (data, rows, cols) in &parts {
        for o in 0..*rows {
            for i in 0..*cols {
                w[i * n + off + o] = data[o * cols + i];
            }
        }
        off += rows;
    }
    (w, k, n)
}

fn assert_components(out: &Checkpoint, base: &str, scheme: &dyn Scheme, w: &[f32], k: usize, n: usize) {
    let packed = scheme.encode(w, k, n, ccq::scheme::Importance::Uniform).unwrap();
    for c in &packed.components {
        let name = format!("{base}.{}", c.name);
        let entry = out.get(&name).unwrap();
        assert_eq!(out.raw_bytes(entry).unwrap(), c.bytes.as_slice(), "{name}");
    }
}

#[test]
fn fastdeploy_layout_from_pytorch_is_exact() {
    let out = temp_dir("fd-pt");
    quantize(&repo("fixtures/ernie45-tiny-pt"), &out, &["--w4-end-layer", "1"]);
    let ckpt = Checkpoint::open(&out).unwrap();
    assert_eq!(tensor_set(&ckpt), expected_fastdeploy_tensors(1));

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert!(config.get("torch_dtype").is_none());
    let q = &config["quantization_config"];
    assert_eq!(q["quantization"], "wint2");
    assert_eq!(q["dense_quant_type"], "wint8");
    assert_eq!(q["moe_quant_type"], "w4w2");
    assert_eq!(q["moe_quant_config"]["moe_w4_quant_config"]["quant_end_layer"], 1);

    // Every packed tensor holds exactly what the scheme's encoder gives for the logical
    // matrix, assembled here independently (transpose, concatenate q|k|v and gate|up).
    let src = Checkpoint::open(repo("fixtures/ernie45-tiny-pt")).unwrap();
    let cases: [(&str, Vec<String>, Box<dyn Scheme>); 4] = [
        (
            "ernie.layers.2.mlp.experts.3.up_gate_proj",
            ["gate_proj", "up_proj"].iter().map(|p| format!("model.layers.2.mlp.experts.3.{p}.weight")).collect(),
            Box::new(Wint2::default()),
        ),
        (
            "ernie.layers.2.mlp.experts.0.down_proj",
            vec!["model.layers.2.mlp.experts.0.down_proj.weight".to_string()],
            Box::new(Wint2::default()),
        ),
        (
            "ernie.layers.1.mlp.experts.1.up_gate_proj",
            ["gate_proj", "up_proj"].iter().map(|p| format!("model.layers.1.mlp.experts.1.{p}.weight")).collect(),
            Box::new(Wint4::default()),
        ),
        (
            "ernie.layers.0.self_attn.qkv_proj",
            ["q_proj", "k_proj", "v_proj"].iter().map(|p| format!("model.layers.0.self_attn.{p}.weight")).collect(),
            Box::new(Wint8::default()),
        ),
    ];
    for (base, sources, scheme) in &cases {
        let names: Vec<&str> = sources.iter().map(String::as_str).collect();
        let (w, k, n) = logical_from_pytorch(&src, &names);
        assert_components(&ckpt, base, scheme.as_ref(), &w, k, n);
    }
    // Unquantized tensors: the router is transposed and stays f32; norms are copied.
    let router = ckpt.read_f32("ernie.layers.1.mlp.gate.weight").unwrap();
    let (expected, _, _) = logical_from_pytorch(&src, &["model.layers.1.mlp.gate.weight"]);
    assert_eq!(router, expected);
    assert_eq!(ckpt.read_f32("ernie.norm.weight").unwrap(), src.read_f32("model.norm.weight").unwrap());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn fastdeploy_layout_from_paddle_is_exact() {
    let out = temp_dir("fd-paddle");
    quantize(&repo("fixtures/ernie45-tiny-paddle"), &out, &["--w4-end-layer", "1"]);
    let ckpt = Checkpoint::open(&out).unwrap();
    assert_eq!(tensor_set(&ckpt), expected_fastdeploy_tensors(1));
    let src = Checkpoint::open(repo("fixtures/ernie45-tiny-paddle")).unwrap();
    let name = "ernie.layers.2.mlp.experts.2.down_proj.weight";
    let w = src.read_f32(name).unwrap();
    assert_components(&ckpt, "ernie.layers.2.mlp.experts.2.down_proj", &Wint2::default(), &w, 128, 128);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn output_is_byte_identical_at_any_thread_count() {
    let (a, b) = (temp_dir("threads-1"), temp_dir("threads-2"));
    let src = repo("fixtures/ernie45-tiny-pt");
    quantize(&src, &a, &["--threads", "1", "--preset", "wint2-experts"]);
    quantize(&src, &b, &["--threads", "2", "--preset", "wint2-experts"]);
    for name in ["config.json", "model.safetensors"] {
        assert_eq!(std::fs::read(a.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap(), "{name}");
    }
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

fn dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn interrupted_run_resumes_to_the_same_bytes() {
    let (whole, resumed) = (temp_dir("whole"), temp_dir("resumed"));
    let src = repo("fixtures/ernie45-tiny-pt");
    let shard = ["--shard-size", "100KB"];
    quantize(&src, &whole, &shard);
    let r = resumed.display().to_string();
    let stopped = ccq(&["quantize", &src, "-o", &r, "--quiet", "--shard-size", "100KB", "--stop-after-shards", "3"]);
    assert_eq!(stopped.status.code(), Some(2));
    assert!(!resumed.exists(), "an interrupted run must not look finished");
    let partial = ccq::checkpoint::output::partial_dir(&resumed);
    // Damage the last completed shard: resume must notice and redo it.
    let third = partial.join("model-00003-of-00007.safetensors");
    let mut bytes = std::fs::read(&third).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&third, bytes).unwrap();
    let out = ccq(&["quantize", &src, "-o", &r, "--shard-size", "100KB", "--resume"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-used 2 verified shard(s)"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!partial.exists());
    assert_eq!(dir_bytes(&whole), dir_bytes(&resumed));
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&resumed).unwrap();
}

#[test]
fn existing_output_needs_force_and_dry_run_writes_nothing() {
    let out = temp_dir("force");
    let src = repo("fixtures/ernie45-tiny-paddle");
    let plan = stdout(&ccq(&["quantize", &src, "-o", &out.display().to_string(), "--dry-run"]));
    assert!(!out.exists());
    assert!(plan.contains("ernie.layers.2.mlp.experts.0.up_gate_proj.weight") && plan.contains("wint4"));
    assert!(plan.contains("40 tensors in 1 shard(s), fastdeploy layout"), "{plan}");
    std::fs::create_dir_all(&out).unwrap();
    fails_with(&["quantize", &src, "-o", &out.display().to_string()], "--force");
    quantize(&src, &out, &["--force", "--preset", "wint8"]);
    assert!(out.join("model.safetensors").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn overrides_and_policy_files_change_the_plan() {
    let src = repo("fixtures/ernie45-tiny-pt");
    let plan = stdout(&ccq(&[
        "quantize",
        &src,
        "--dry-run",
        "--w4-end-layer",
        "1",
        "--set",
        r"experts\.0\.=wint8",
        "--set",
        r"layers\.2\.mlp\.experts\.0\.down=none",
        "--layout",
        "native",
    ]));
    let scheme_of = |name: &str| plan.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(scheme_of("model.layers.1.mlp.experts.0.up_proj.weight"), "wint8");
    assert_eq!(scheme_of("model.layers.2.mlp.experts.0.down_proj.weight"), "none");
    assert_eq!(scheme_of("model.layers.2.mlp.experts.1.down_proj.weight"), "wint2");
    let dir = temp_dir("policy");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(&policy, r#"{"preset": "wint4", "rules": [{"match": "o_proj", "scheme": "none"}]}"#).unwrap();
    let policy = policy.display().to_string();
    let plan = stdout(&ccq(&["quantize", &src, "--dry-run", "--layout", "native", "--policy", &policy]));
    assert!(plan.lines().any(|l| l.starts_with("model.layers.0.self_attn.o_proj.weight") && l.contains(" none ")), "{plan}");
    assert!(plan.lines().any(|l| l.starts_with("model.layers.0.self_attn.q_proj.weight") && l.contains(" wint4 ")));
    // FastDeploy's loader takes one dense scheme: a mix it could not load is refused.
    fails_with(&["quantize", &src, "--dry-run", "--policy", &policy], "one scheme for all attention");
    refused(&["quantize", &src, "--dry-run", "--set", "(=wint4"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small Llama-style checkpoint whose MLP width (170) neither 4-bit nor 2-bit schemes take.
fn odd_shaped_checkpoint(dir: &Path, poison: bool) -> String {
    use ccq::checkpoint::write::{SafetensorsWriter, TensorSpec};
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("model.safetensors");
    let specs = vec![
        TensorSpec::new("model.layers.0.mlp.gate_proj.weight", Dtype::F32, vec![170, 128]),
        TensorSpec::new("model.layers.0.mlp.down_proj.weight", Dtype::F32, vec![128, 170]),
        TensorSpec::new("model.layers.0.self_attn.q_proj.weight", Dtype::F32, vec![128, 128]),
    ];
    let mut w = SafetensorsWriter::create(&path, &specs, &Default::default()).unwrap();
    for (i, s) in specs.iter().enumerate() {
        let n = s.shape.iter().product::<usize>();
        let mut values: Vec<f32> = (0..n).map(|j| ((j * 7919 + i) % 101) as f32 / 100.0 - 0.5).collect();
        if poison && i == 2 {
            values[5] = f32::NAN;
        }
        w.write(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    }
    w.finish().unwrap();
    path.display().to_string()
}

#[test]
fn shapes_a_scheme_cannot_take_are_listed_before_any_work() {
    let dir = temp_dir("odd");
    let src = odd_shaped_checkpoint(&dir, false);
    let out = dir.join("out").display().to_string();
    let err = refused(&["quantize", &src, "-o", &out, "--preset", "wint4"]);
    assert!(err.contains("2 tensor(s) cannot be converted as planned"), "{err}");
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("model.layers.0.mlp.down_proj.weight"), "{err}");
    assert!(!dir.join("out").exists() && !ccq::checkpoint::output::partial_dir(&dir.join("out")).exists());
    let ok = ccq(&["quantize", &src, "-o", &out, "--preset", "wint4", "--fallback", "none"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stderr).contains("2 tensor(s) used the fallback scheme"));
    let q = Checkpoint::open(&out).unwrap();
    assert!(q.get("model.layers.0.self_attn.q_proj.weight.quant_weight").is_ok());
    assert_eq!(q.get("model.layers.0.mlp.gate_proj.weight").unwrap().dtype, Dtype::F32);
    let meta = &q.shards()[0].metadata["ccq.tensor.model.layers.0.self_attn.q_proj.weight"];
    let meta: serde_json::Value = serde_json::from_str(meta).unwrap();
    assert_eq!((meta["scheme"].as_str(), meta["k"].as_u64(), meta["transposed"].as_bool()), (Some("wint4"), Some(128), Some(true)));

    fails_with(&["quantize", &src, "-o", &out, "--layout", "fastdeploy", "--force"], "--layout native");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nan_weights_are_an_error_naming_the_tensor() {
    let dir = temp_dir("nan");
    let src = odd_shaped_checkpoint(&dir, true);
    let out = dir.join("out");
    let err = refused(&["quantize", &src, "-o", &out.display().to_string(), "--preset", "wint8", "--fallback", "none"]);
    assert!(err.contains("model.layers.0.self_attn.q_proj.weight") && err.contains("NaN"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mtp_block_and_side_files_are_carried_into_the_fastdeploy_layout() {
    let dir = temp_dir("mtp");
    let src = dir.join("src");
    stdout(&ccq(&["synth", "-o", &src.display().to_string(), "--mtp"]));
    std::fs::write(src.join("tokenizer.model"), b"not really a tokenizer").unwrap();
    std::fs::write(src.join("generation_config.json"), b"{\"top_p\": 0.8}").unwrap();
    let out = dir.join("out");
    quantize(&src.display().to_string(), &out, &[]);
    let q = Checkpoint::open(&out).unwrap();
    let shape = |name: &str| {
        let t = q.get(name).unwrap();
        (t.dtype, t.shape.clone())
    };
    assert_eq!(shape("ernie.mtp_linear_proj.0.weight"), (Dtype::BF16, vec![256, 128]));
    assert_eq!(shape("ernie.mtp_block.0.self_attn.qkv_proj.weight"), (Dtype::BF16, vec![128, 256]));
    assert_eq!(shape("ernie.mtp_block.0.mlp.up_gate_proj.weight"), (Dtype::BF16, vec![128, 512]));
    assert_eq!(shape("ernie.mtp_emb_norm.0.weight"), (Dtype::BF16, vec![128]));
    let s = Checkpoint::open(&src).unwrap();
    let (expected, _, _) = logical_from_pytorch(&s, &["model.mtp_linear_proj.0.weight"]);
    assert_eq!(q.read_f32("ernie.mtp_linear_proj.0.weight").unwrap(), expected);
    assert_eq!(std::fs::read(out.join("tokenizer.model")).unwrap(), b"not really a tokenizer");
    assert_eq!(std::fs::read(out.join("generation_config.json")).unwrap(), b"{\"top_p\": 0.8}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unloadable_expert_mixes_and_unconvertible_sources_are_refused_before_work() {
    let src = repo("fixtures/ernie45-tiny-pt");
    // WINT2 experts beside unquantized ones: FastDeploy's loader could not read that.
    fails_with(
        &["quantize", &src, "--dry-run", "--preset", "wint2-experts", "--set", r"experts\.0\.=none"],
        "WINT2 experts only beside wint4",
    );

    // U16 payload is read as bf16 only when asked, and the refusal says how.
    let dir = temp_dir("u16-quant");
    let u16 = dir.join("src").display().to_string();
    stdout(&ccq(&["synth", "-o", &u16, "--naming", "paddle", "--u16"]));
    let out = dir.join("out");
    fails_with(&["quantize", &u16, "-o", &out.display().to_string()], "--u16-as-bf16");
    assert!(!out.exists() && !ccq::checkpoint::output::partial_dir(&out).exists());
    quantize(&u16, &out, &["--u16-as-bf16"]);
    assert_eq!(Checkpoint::open(&out).unwrap().get("ernie.embed_tokens.weight").unwrap().dtype, Dtype::BF16);

    // The output may not replace the source, even with --force.
    fails_with(&["quantize", &u16, "-o", &u16, "--force", "--u16-as-bf16"], "the output would replace the input");
    assert!(Checkpoint::open(&u16).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A policy file is read strictly: a misspelt key is an error naming the key and the file, a
/// rule needs both its keys, and `w4_end_layer` goes with `fastdeploy-w4w2` only.
#[test]
fn policy_file_typos_are_errors_naming_the_key_and_the_file() {
    let src = repo("fixtures/ernie45-tiny-pt");
    let dir = temp_dir("policy-typos");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (r#"{"rule": [{"match": "o_proj", "scheme": "none"}]}"#, "unknown field `rule`, expected one of `preset`, `w4_end_layer`, `rules`"),
        (r#"{"rules": [{"match": "o_proj", "scheme ": "none"}]}"#, "unknown field `scheme `, expected `match` or `scheme`"),
        (r#"{"rules": [{"match": "o_proj"}]}"#, "missing field `scheme`"),
        (r#"{"rules": [{"match": "o_proj", "scheme": "wint3"}]}"#, "rules[0]: unknown scheme 'wint3'; choose none, "),
        (r#"{"preset": "wint8", "w4_end_layer": 3}"#, "\"w4_end_layer\" applies to fastdeploy-w4w2, not wint8"),
        (r#"[{"match": "o_proj", "scheme": "none"}]"#, "a policy file must be a JSON object"),
    ];
    for (i, (text, message)) in cases.iter().enumerate() {
        let file = dir.join(format!("policy-{i}.json"));
        std::fs::write(&file, text).unwrap();
        let file = file.display().to_string();
        let err = refused(&["quantize", &src, "--dry-run", "--layout", "native", "--policy", &file]);
        assert!(err.contains(&format!("policy file {file}: ")) && err.contains(message), "{text}: expected {message:?} in {err}");
    }
    fails_with(&["quantize", &src, "--dry-run", "--set", "x=wint3"], "override 'x=wint3': unknown scheme 'wint3'");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--fallback` takes every scheme of the library's registry, and `none`, with no list of its
/// own; other closed sets keep their spellings.
#[test]
fn flags_take_the_registry_schemes_and_their_documented_spellings() {
    let src = repo("fixtures/ernie45-tiny-pt");
    let names = std::iter::once("none").chain(ccq::SchemeKind::ALL.iter().map(|k| k.name()));
    for name in names {
        stdout(&ccq(&["quantize", &src, "--dry-run", "--layout", "native", "--fallback", name]));
    }
    let err = refused(&["quantize", &src, "--dry-run", "--fallback", "wint3"]);
    assert!(err.contains("invalid value 'wint3' for '--fallback <SCHEME>'") && err.contains("none, wint2"), "{err}");
    for preset in ccq::convert::Preset::NAMES {
        stdout(&ccq(&["quantize", &src, "--dry-run", "--layout", "native", "--preset", preset]));
    }
    for effort in ccq::scheme::Effort::ALL {
        stdout(&ccq(&["quantize", &src, "--dry-run", "--effort", effort.name()]));
    }
    fails_with(&["quantize", &src, "--dry-run", "--effort", "ultra"], "[possible values: default, medium, high, max]");
    fails_with(&["quantize", &src, "--dry-run", "--layout", "other"], "[possible values: fastdeploy, native]");
    fails_with(&["quantize", &src, "--dry-run", "--weighting", "other"], "[possible values: uniform, gate]");
}

/// What `ccq-provenance.json` records of the options that `tests/cli/output_bytes.rs` does not
/// use (`--set`, `--policy`, `--fallback`, `--effort`, `--w4-end-layer`): values and key order
/// as before the CLI handed their assembly to `ccq::convert::request`.
#[test]
fn provenance_records_the_policy_options_as_given() {
    let src = repo("fixtures/ernie45-tiny-pt");
    let dir = temp_dir("provenance-options");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.json");
    std::fs::write(&policy, r#"{"preset": "wint4", "rules": [{"match": "o_proj", "scheme": "none"}]}"#).unwrap();
    let out = dir.join("out");
    let args = [
        "quantize",
        &src,
        "-o",
        &out.display().to_string(),
        "--quiet",
        "--layout",
        "native",
        "--preset",
        "wint4",
        "--set",
        r"experts\.0\.=wint8",
        "--set",
        "x=y=none",
        "--policy",
        &policy.display().to_string(),
        "--fallback",
        "none",
        "--w4-end-layer",
        "2",
        "--effort",
        "medium",
    ];
    stdout(&ccq(&args));
    let text = std::fs::read_to_string(out.join(ccq::format::provenance::PROVENANCE_FILE)).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    let options = serde_json::to_string(&record["options"]).unwrap().replace(&dir.display().to_string(), "DIR");
    assert_eq!(
        options,
        concat!(
            r#"{"effort":"medium","preset":"wint4","w4_end_layer":2,"set":["experts\\.0\\.=wint8","x=y=none"],"policy":"DIR/p.json","#,
            r#""rules":["o_proj=none","experts\\.0\\.=wint8","x=y=none"],"fallback":"none","layout":"native","calibration":null,"#,
            r#""feedback":{"method":"none","damp":0.009999999776482582,"tensors":0,"more_damping":[],"empty_hessians":[],"calibration":null}}"#
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 14, defect 5: `-o existing_file --force` used to exit 2 after the work, leaving the
/// file and `existing_file.ccq-old`; `-o . --force` wrote everything, then failed "Device or
/// resource busy" and left a hidden `.ccq-partial`. Now `--force` replaces only an output
/// directory, and refuses, before any work, a path that is or holds the current directory or
/// the source.
#[test]
fn force_replaces_only_directories_and_never_the_cwd_or_the_source() {
    let dir = temp_dir("force-paths");
    std::fs::create_dir_all(dir.join("cwd/child")).unwrap();
    let src = repo("fixtures/ernie45-tiny-pt");
    let run_in = |cwd: &std::path::Path, out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ccq"))
            .args(["quantize", &src, "-o", out, "--force", "--quiet"])
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let file = dir.join("a-file");
    std::fs::write(&file, "keep me").unwrap();
    fails_with(&["quantize", &src, "-o", &file.display().to_string(), "--force", "--quiet"], "is not a directory");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    for (cwd, out) in [(dir.join("cwd"), "."), (dir.join("cwd/child"), ".."), (dir.join("cwd/child"), "../child")] {
        let r = run_in(&cwd, out);
        assert_eq!(r.status.code(), Some(2), "{out}: {}", String::from_utf8_lossy(&r.stderr));
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("the output would replace the input"),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let names: Vec<_> = std::fs::read_dir(dir.join("cwd")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["child"], "nothing partial left behind");
    // An existing output directory is replaced as a whole, without leftovers.
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    stdout(&ccq(&["quantize", &src, "-o", &out.display().to_string(), "--force", "--quiet"]));
    assert!(!out.join("stale.txt").exists() && out.join("config.json").exists());
    let siblings: Vec<String> = std::fs::read_dir(&*dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(siblings.iter().all(|n| !n.contains("ccq-old") && !n.contains("ccq-partial")), "{siblings:?}");
}

/// A copy of the PyTorch fixture with its index and config edited.
fn edited_fixture(dir: &std::path::Path, edit_index: impl Fn(&mut Value), edit_config: impl Fn(&mut Value)) -> String {
    super::copy_fixture("ernie45-tiny-pt", dir);
    for (file, edit) in [("model.safetensors.index.json", &edit_index as &dyn Fn(&mut Value)), ("config.json", &edit_config)] {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(dir.join(file), v.to_string()).unwrap();
    }
    dir.display().to_string()
}

/// Issue 14, defect 2: quantize used to exit 0 and write a broken checkpoint when a tensor the
/// model needs was missing or the config was nonsense; eval and calibrate refused the same files.
#[test]
fn incomplete_or_inconsistent_checkpoints_are_refused_before_any_work() {
    let dir = temp_dir("incomplete");
    let out = dir.join("q").display().to_string();
    let no_embed = edited_fixture(
        &dir.join("no-embed"),
        |i| {
            i["weight_map"].as_object_mut().unwrap().remove("model.embed_tokens.weight");
        },
        |_| {},
    );
    let err = refused(&["quantize", &no_embed, "-o", &out, "--quiet"]);
    assert!(err.contains("model.embed_tokens.weight") && err.contains("--allow-incomplete"), "{err}");
    assert!(!std::path::Path::new(&out).exists());
    let no_expert = edited_fixture(
        &dir.join("no-expert"),
        |i| {
            i["weight_map"].as_object_mut().unwrap().retain(|k, _| !k.contains("layers.2.mlp.experts.3."));
        },
        |_| {},
    );
    fails_with(&["quantize", &no_expert, "-o", &out, "--quiet"], "model.layers.2.mlp.experts.3.");
    let nonsense = edited_fixture(&dir.join("nonsense"), |_| {}, |c| c["hidden_size"] = 3.into());
    fails_with(&["quantize", &nonsense, "-o", &out, "--quiet"], "does not hold the model its config describes");
    // A user who means it converts what is there.
    stdout(&ccq(&["quantize", &no_expert, "-o", &out, "--quiet", "--allow-incomplete"]));
}

/// Issue 14, defect 8: a plain rerun after an interruption used to discard `OUT.ccq-partial`
/// silently; now it says how many finished shards `--resume` would reuse, and keeps them.
#[test]
fn plain_rerun_after_an_interruption_keeps_the_finished_shards() {
    let dir = temp_dir("rerun");
    let out = dir.join("q").display().to_string();
    let src = repo("fixtures/ernie45-tiny-pt");
    let args = ["quantize", &src, "-o", &out, "--quiet", "--shard-size", "100KB"];
    let stopped = ccq(&[&args[..], &["--stop-after-shards", "2"]].concat());
    assert_eq!(stopped.status.code(), Some(2));
    fails_with(&args, "2 finished shard(s) that --resume would reuse; pass --resume to continue it, or --force to discard it");
    let resumed = stdout(&ccq(&[&args[..], &["--resume"]].concat()));
    let _ = resumed;
    assert!(std::path::Path::new(&out).join("config.json").exists());
}

/// Issue 14, defect 6: requests that end up quantizing nothing, or less than asked, used to
/// exit 0 silently; presets skipped linear layers ccq does not classify (an encoder's).
#[test]
fn shortfalls_are_said_and_refused_with_strict() {
    let dir = temp_dir("shortfalls");
    let src = repo("fixtures/ernie45-tiny-pt");
    let out = |name: &str| dir.join(name).display().to_string();
    let warned = |args: &[&str]| {
        let r = ccq(args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let stderr = warned(&["quantize", &src, "-o", &out("a"), "--quiet", "--set", "no_such_tensor=wint4"]);
    assert!(stderr.contains("warning: the rule 'no_such_tensor=wint4' matches no tensor"), "{stderr}");
    // The fixture has 3 layers: the default --w4-end-layer 6 leaves no WINT2.
    assert!(stderr.contains("--w4-end-layer 6 makes every expert wint4"), "{stderr}");
    fails_with(&["quantize", &src, "-o", &out("b"), "--quiet", "--strict"], "--strict: the plan quantizes less than asked");
    assert!(!std::path::Path::new(&out("b")).exists());
    let stderr = warned(&["quantize", &src, "-o", &out("c"), "--quiet", "--layout", "native", "--set", ".=none"]);
    assert!(stderr.contains("no tensor is quantized"), "{stderr}");
    stdout(&ccq(&["quantize", &src, "-o", &out("d"), "--quiet", "--w4-end-layer", "1", "--strict"]));

    // An encoder ccq does not know: its 2-D `*.weight` linears are quantized by the preset.
    let enc = dir.join("encoder");
    std::fs::create_dir_all(&enc).unwrap();
    std::fs::write(enc.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let specs = [
        ccq::checkpoint::write::TensorSpec::new("encoder.layer.0.attention.self.query.weight", Dtype::BF16, vec![64, 64]),
        ccq::checkpoint::write::TensorSpec::new("encoder.layer.0.attention.self.query.bias", Dtype::BF16, vec![64]),
    ];
    let mut w = ccq::checkpoint::write::SafetensorsWriter::create(enc.join("model.safetensors"), &specs, &Default::default()).unwrap();
    w.write(&[0x3c; 64 * 64 * 2 + 64 * 2]).unwrap();
    w.finish().unwrap();
    stdout(&ccq(&["quantize", &enc.display().to_string(), "-o", &out("enc"), "--preset", "wint4", "--quiet", "--strict"]));
    let q = ccq::quantized::QuantizedCheckpoint::open(out("enc")).unwrap();
    assert_eq!(q.get("encoder.layer.0.attention.self.query.weight").unwrap().scheme, Some(ccq::SchemeKind::Wint4));
}

/// Issue 14, defect 7: the FastDeploy layout on a non-ERNIE model was reported as "1
/// tensor(s) cannot be converted"; a packed router went into a FastDeploy checkpoint that
/// FastDeploy loads as f32.
#[test]
fn refusals_say_what_is_wrong_and_what_works() {
    let dir = temp_dir("refusals");
    let out = dir.join("q").display().to_string();
    let err = refused(&["quantize", &repo("fixtures/qwen2-moe-tiny"), "-o", &out, "--layout", "fastdeploy"]);
    assert!(err.contains("the fastdeploy layout is for ERNIE 4.5 checkpoints; use --layout native") && !err.contains("tensor(s)"), "{err}");
    let src = repo("fixtures/ernie45-tiny-pt");
    fails_with(&["quantize", &src, "-o", &out, "--set", r"mlp\.gate\.weight=wint2"], "FastDeploy loads this tensor (Router) unquantized");
    stdout(&ccq(&["quantize", &src, "-o", &out, "--layout", "native", "--set", r"mlp\.gate\.weight=wint2", "--quiet"]));
}
