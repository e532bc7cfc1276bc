//! The full output of `ccq quantize` on the committed fixtures, hashed file by file: a
//! refactoring must leave every byte as it was. The expected digests were recorded from the
//! code before the architecture step (issue 10); a change that alters output on purpose must
//! update them and say why in its commit. Changed on purpose since: `ccq-provenance.json`
//! records each packed tensor's scheme `params` (the weights and every other file unchanged).

use super::{ccq, repo, stdout, temp_dir};
use std::path::Path;

/// `name fnv1a64` per file of `dir`, sorted by name, one line each; in JSON files the scratch
/// directory `scratch` (named by process id) is replaced by `SCRATCH` first.
fn digest(dir: &Path, scratch: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let scratch = scratch.display().to_string();
    let bytes = |n: &str| {
        let b = std::fs::read(dir.join(n)).unwrap();
        match n.ends_with(".json") {
            true => String::from_utf8(b).unwrap().replace(&scratch, "SCRATCH").into_bytes(),
            false => b,
        }
    };
    names.iter().map(|n| format!("{n} {}\n", ccq::rng::fnv_hex(&bytes(n)))).collect()
}

/// Quantizes `fixture` with `extra` options (`{tokens}` in them names a file of calibration
/// tokens in the scratch directory) and digests the output.
fn quantize_digest(tag: &str, fixture: &str, extra: &[&str]) -> String {
    let dir = temp_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = calibration_tokens(&dir);
    let out = dir.join("out").display().to_string();
    let src = repo(fixture);
    let mut args: Vec<String> = ["quantize", &src, "-o", &out, "--quiet"].map(String::from).to_vec();
    args.extend(extra.iter().map(|a| a.replace("{tokens}", &tokens)));
    stdout(&ccq(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let d = digest(Path::new(&out), &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    d
}

fn calibration_tokens(dir: &Path) -> String {
    let seqs: Vec<Vec<usize>> = (0..4).map(|s| (0..24).map(|i| (s * 89 + i * 37) % 256).collect()).collect();
    let path = dir.join("tokens.json");
    std::fs::write(&path, serde_json::to_string(&seqs).unwrap()).unwrap();
    path.display().to_string()
}

#[test]
fn fastdeploy_outputs_keep_their_bytes() {
    let pt = quantize_digest("bytes-fd-pt", "fixtures/ernie45-tiny-pt", &["--shard-size", "60KB"]);
    let paddle = quantize_digest("bytes-fd-paddle", "fixtures/ernie45-tiny-paddle", &[]);
    let both = format!("{pt}--\n{paddle}");
    assert_eq!(both, FASTDEPLOY, "{both}");
}

#[test]
fn native_outputs_keep_their_bytes() {
    let pt = quantize_digest("bytes-native-pt", "fixtures/ernie45-tiny-pt", &["--layout", "native", "--preset", "wint2-experts"]);
    let qwen = quantize_digest("bytes-native-qwen", "fixtures/qwen2-moe-tiny", &["--layout", "native", "--preset", "wint4"]);
    let both = format!("{pt}--\n{qwen}");
    assert_eq!(both, NATIVE, "{both}");
}

#[test]
fn feedback_output_keeps_its_bytes() {
    let d = quantize_digest(
        "bytes-feedback",
        "fixtures/ernie45-tiny-pt",
        &["--layout", "native", "--preset", "wint2-experts", "--calib-tokens", "{tokens}", "--min-tokens", "8"],
    );
    assert_eq!(d, PT_FEEDBACK, "{d}");
}

const FASTDEPLOY: &str = concat!(
    "ccq-provenance.json c6c3c1ba37068800\n",
    "config.json 794c97b108ddfb94\n",
    "model-00001-of-00012.safetensors 47440518d25ca12b\n",
    "model-00002-of-00012.safetensors 532776228799d9fb\n",
    "model-00003-of-00012.safetensors 4b46fa56dc08425e\n",
    "model-00004-of-00012.safetensors a3a45bce88c79293\n",
    "model-00005-of-00012.safetensors 2a733adcafc107ff\n",
    "model-00006-of-00012.safetensors 8c0e6aebc299aa5f\n",
    "model-00007-of-00012.safetensors b87ec748e208428d\n",
    "model-00008-of-00012.safetensors 4eb6549f40f51249\n",
    "model-00009-of-00012.safetensors eecdc5b70197cc18\n",
    "model-00010-of-00012.safetensors ba0374f243f3af1d\n",
    "model-00011-of-00012.safetensors 4104e93f705a5351\n",
    "model-00012-of-00012.safetensors 1cddf6c57c046bf6\n",
    "model.safetensors.index.json c0999a1a9846d8e7\n",
    "--\n",
    "ccq-provenance.json 4f25c8c0e31f65d0\n",
    "config.json 794c97b108ddfb94\n",
    "model.safetensors a5fa72e1f1c4b32c\n",
);
const NATIVE: &str = concat!(
    "ccq-provenance.json 75aec2b186f334e1\n",
    "config.json 0138a9f3bfa91b14\n",
    "model.safetensors 3c2e95b265da99f8\n",
    "--\n",
    "ccq-provenance.json 2b6e144465633dfa\n",
    "config.json 1ef9e6f7243e3221\n",
    "model.safetensors 6d8adcf8a12970af\n",
);
const PT_FEEDBACK: &str =
    concat!("ccq-provenance.json e2b86680bf916fab\n", "config.json 0138a9f3bfa91b14\n", "model.safetensors 9bbdc5f4021add87\n",);
