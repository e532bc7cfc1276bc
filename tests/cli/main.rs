//! End-to-end tests of the real `ccq` binary.

mod calibrate;
mod dequant;
mod eval;
mod generate;
mod nonfinite;
mod output_bytes;
mod pipes;
mod quantize;
mod rtn2;
mod text;
mod verify;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn ccq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ccq")).args(args).output().expect("ccq runs")
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path).display().to_string()
}

#[path = "../support/scratch.rs"]
mod scratch;

/// A scratch directory that does not exist yet (a test creates it or names it as an output).
fn temp_dir(tag: &str) -> scratch::Scratch {
    scratch::scratch(&format!("cli-{tag}"), false)
}

/// Copies every file of the fixture checkpoint `fixture` (a folder name under `fixtures/`)
/// into `to`, creating it.
fn copy_fixture(fixture: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(repo(&format!("fixtures/{fixture}"))).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "ccq failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs ccq expecting bad input: exit 2; returns its stderr.
fn refused(args: &[&str]) -> String {
    let r = ccq(args);
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.status.code(), Some(2), "{err}");
    err
}

/// Runs ccq expecting bad input: exit 2 with `message` in its stderr.
fn fails_with(args: &[&str], message: &str) {
    let err = refused(args);
    assert!(err.contains(message), "expected {message:?} in {err}");
}

/// Every tensor of a checkpoint: name -> (dtype, shape).
fn tensor_set(ckpt: &ccq::Checkpoint) -> BTreeMap<String, (ccq::Dtype, Vec<usize>)> {
    ckpt.tensors().iter().map(|t| (t.name.clone(), (t.dtype, t.shape.clone()))).collect()
}

fn inspect_json(path: &str) -> Value {
    serde_json::from_str(&stdout(&ccq(&["inspect", "--json", path]))).unwrap()
}

#[test]
fn inspect_human_summary() {
    let text = stdout(&ccq(&["inspect", &repo("fixtures/ernie45-tiny-pt")]));
    for line in [
        "model       ernie4_5_moe (family ernie45, pytorch naming)",
        "layers      3, MoE layers 1-2 (2 of 3)",
        "experts     4 routed per MoE layer (top-2), 1 shared",
        "parameters  771,976 in 57 tensors",
        "tied embeddings",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("expert_gate") && text.contains("BF16") && text.contains("F32"));
}

#[test]
fn inspect_json_schema() {
    let v = inspect_json(&repo("fixtures/ernie45-tiny-paddle"));
    assert_eq!(v["model_type"], "ernie4_5_moe");
    assert_eq!(v["num_layers"], 3);
    assert_eq!(v["moe_layers"], serde_json::json!([1, 2]));
    assert_eq!(v["num_experts"], 4);
    assert_eq!(v["total_params"], 771_976);
    assert_eq!(v["naming"], "paddle");
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 40);
    let expert = tensors.iter().find(|t| t["name"] == "ernie.layers.2.mlp.experts.3.up_gate_proj.weight").unwrap();
    assert_eq!(expert["role"], "expert_up_gate");
    assert_eq!(expert["layer"], 2);
    assert_eq!(expert["expert"], 3);
    assert_eq!(expert["dtype"], "BF16");
    assert_eq!(expert["shape"], serde_json::json!([128, 256]));
    assert_eq!(expert["file"], "model.safetensors");
    let embed = tensors.iter().find(|t| t["name"] == "ernie.embed_tokens.weight").unwrap();
    assert_eq!(embed["role"], "embedding");
    assert!(embed["layer"].is_null() && embed["expert"].is_null());
    let roles: Vec<&str> = tensors.iter().map(|t| t["role"].as_str().unwrap()).collect();
    for role in ["expert_down", "shared_expert", "dense_mlp", "attention", "router", "router_bias", "norm"] {
        assert!(roles.contains(&role), "{role}");
    }
}

#[test]
fn synth_then_inspect_both_namings_with_mtp_and_lm_head() {
    let dir = temp_dir("synth");
    let out = dir.display().to_string();
    stdout(&ccq(&["synth", "-o", &out, "--preset", "300b-a47b", "--layers", "5", "--experts", "3", "--sparse", "--shards", "3"]));
    let v = inspect_json(&out);
    assert_eq!(v["moe_layers"], serde_json::json!([3, 4]));
    assert_eq!(v["num_experts"], 3);
    assert_eq!(v["has_mtp"], true);
    assert_eq!(v["by_file"].as_object().unwrap().len(), 3);
    let tensors = v["tensors"].as_array().unwrap();
    assert!(tensors.iter().any(|t| t["name"] == "lm_head.weight" && t["role"] == "lm_head"));
    assert!(tensors.iter().any(|t| t["name"] == "model.mtp_linear_proj.0.weight" && t["role"] == "mtp"));
    let text = stdout(&ccq(&["inspect", &out]));
    assert!(text.contains("multi-token-prediction block present"), "{text}");

    fails_with(&["synth", "-o", &out], "--force");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_u16_payload_note() {
    let dir = temp_dir("u16");
    let out = dir.display().to_string();
    stdout(&ccq(&["synth", "-o", &out, "--naming", "paddle", "--u16"]));
    let text = stdout(&ccq(&["inspect", &out]));
    assert!(text.contains("U16 tensors present"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_mixtral_single_file_without_config() {
    use ccq::checkpoint::write::{SafetensorsWriter, TensorSpec};
    let dir = temp_dir("mixtral");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mixtral.safetensors");
    let mut specs = vec![TensorSpec::new("model.embed_tokens.weight", ccq::Dtype::BF16, vec![8, 4])];
    for e in 0..2 {
        for w in ["w1", "w2", "w3"] {
            let name = format!("model.layers.0.block_sparse_moe.experts.{e}.{w}.weight");
            specs.push(TensorSpec::new(name, ccq::Dtype::BF16, vec![4, 4]));
        }
    }
    specs.push(TensorSpec::new("model.layers.0.block_sparse_moe.gate.weight", ccq::Dtype::BF16, vec![2, 4]));
    let writer = SafetensorsWriter::create(&path, &specs, &Default::default()).unwrap();
    writer.finish_sparse().unwrap();
    let v = inspect_json(&path.display().to_string());
    assert_eq!(v["family"], "mixtral");
    assert_eq!(v["moe_layers"], serde_json::json!([0]));
    assert_eq!(v["num_experts"], 2);
    let w2 = v["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "model.layers.0.block_sparse_moe.experts.1.w2.weight").unwrap();
    assert_eq!((w2["role"].as_str(), w2["expert"].as_u64()), (Some("expert_down"), Some(1)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_exits_2_with_one_clear_message() {
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.safetensors");
    std::fs::write(&file, b"\x10\0\0\0\0\0\0\0{\"a\":").unwrap();
    let out = ccq(&["inspect", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ccq: error: ") && err.contains("broken.safetensors"), "{err}");
    assert!(out.stdout.is_empty(), "no partial answer on stdout");

    fails_with(&["inspect", &dir.join("nowhere").display().to_string()], "nowhere");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 14, defect 9: `inspect` on a quantized checkpoint did not say so and counted packed
/// elements as parameters (536,456 of the stored tensors instead of 771,976 logical); on a
/// single file it ignored the `config.json` beside it.
#[test]
fn inspect_says_quantized_and_counts_logical_parameters() {
    let dir = temp_dir("inspect-quantized");
    let q = dir.join("q").display().to_string();
    stdout(&ccq(&["quantize", &repo("fixtures/ernie45-tiny-pt"), "-o", &q, "--quiet"]));
    let v = inspect_json(&q);
    assert_eq!(v["quantized"]["layout"], "fastdeploy");
    assert_eq!(v["quantized"]["logical_params"], 771_976);
    assert!(stdout(&ccq(&["inspect", &q])).contains("quantized   fastdeploy layout"));
    assert!(inspect_json(&repo("fixtures/ernie45-tiny-pt"))["quantized"].is_null());
    let single = inspect_json(&repo("fixtures/ernie45-tiny-paddle/model.safetensors"));
    assert_eq!(single["model_type"], "ernie4_5_moe");
}
