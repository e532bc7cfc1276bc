//! `ccq eval` end to end: the figures against a wint8 checkpoint and against one with nothing
//! quantized (KL 0, agreement 1 exactly), both token file formats, and bad input.

use super::{ccq, copy_fixture, fails_with, repo, stdout, temp_dir};
use serde_json::Value;

fn eval_json(original: &str, quant: &str, tokens: &str, extra: &[&str]) -> Value {
    let mut args = vec!["eval", original, quant, "--tokens", tokens, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&stdout(&ccq(&args))).unwrap()
}

#[test]
fn eval_wint8_and_unquantized() {
    let dir = temp_dir("eval");
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo("fixtures/ernie45-tiny-pt");
    let w8 = dir.join("w8").display().to_string();
    let none = dir.join("none").display().to_string();
    stdout(&ccq(&["quantize", &src, "-o", &w8, "--preset", "wint8", "--quiet"]));
    stdout(&ccq(&["quantize", &src, "-o", &none, "--set", ".=none", "--layout", "native", "--quiet"]));
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, "[[1, 17, 200, 45, 3, 99], [5, 250, 12, 77], [7]]").unwrap();
    let tokens = tokens.display().to_string();

    let same = eval_json(&src, &none, &tokens, &[]);
    assert_eq!(same["tokens"], 8);
    assert_eq!(same["kld_mean"], 0.0);
    assert_eq!(same["top1_agreement"], 1.0);
    assert_eq!(same["ppl_original"], same["ppl_quantized"]);
    let ppl = same["ppl_original"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl.is_finite());

    let w8 = eval_json(&src, &w8, &tokens, &["--batch-tokens", "1"]);
    let kld = w8["kld_mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 1e-3, "{w8}");
    assert_eq!(w8["ppl_original"], same["ppl_original"]);
    let keys: Vec<&str> = w8.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["tokens", "ppl_original", "ppl_quantized", "kld_mean", "top1_agreement", "kld_p50", "kld_p90", "kld_p99"]);
    let (p50, p99) = (w8["kld_p50"].as_f64().unwrap(), w8["kld_p99"].as_f64().unwrap());
    assert!(0.0 <= p50 && p50 <= p99 && p99 >= kld, "{w8}");

    // The same ids as raw little-endian u32, cut by --seq-len.
    let raw = dir.join("tokens.bin");
    let ids: [u32; 8] = [1, 17, 200, 45, 5, 250, 12, 77];
    std::fs::write(&raw, ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let r = eval_json(&src, &none, &raw.display().to_string(), &["--seq-len", "4"]);
    assert_eq!((r["tokens"].as_u64(), r["kld_mean"].as_f64()), (Some(6), Some(0.0)));

    let text = stdout(&ccq(&["eval", &src, &none, "--tokens", &tokens]));
    assert!(text.contains("top-1 agreement 1.0000"), "{text}");

    // Bad input, found before any model runs.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[[1, 2, 256]]").unwrap();
    let bad = bad.display().to_string();
    fails_with(&["eval", &src, &none, "--tokens", &bad], "sequence 0, position 2: token id 256 is outside the vocabulary (vocab_size 256)");
    let empty = dir.join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    fails_with(&["eval", &src, &none, "--tokens", &empty.display().to_string()], "no token sequences given");
    fails_with(&["eval", &src, &none, "--tokens", &raw.display().to_string()], "give --seq-len");
    let long = dir.join("long.json");
    std::fs::write(&long, serde_json::to_string(&vec![vec![1u32; 4097]]).unwrap()).unwrap();
    fails_with(&["eval", &src, &none, "--tokens", &long.display().to_string()], "more than max_position_embeddings (4096)");

    // An original whose config lacks the MoE keys.
    let no_moe = dir.join("no-moe");
    copy_fixture("ernie45-tiny-pt", &no_moe);
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(no_moe.join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().retain(|k, _| !k.starts_with("moe_"));
    std::fs::write(no_moe.join("config.json"), config.to_string()).unwrap();
    fails_with(&["eval", &no_moe.display().to_string(), &none, "--tokens", &tokens], "config lacks \"moe_num_experts\"");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Issue 14, defect 7: when a checkpoint's config and its weights disagree, eval said the
/// token file held an id outside the vocabulary (or named only the embedding's shape); it
/// now names the checkpoint, the tensor, the stored shape and the config fields.
#[test]
fn defect_7_eval_reports_a_config_that_disagrees_with_the_weights() {
    let dir = temp_dir("eval-config-weights");
    let edited = dir.join("edited");
    copy_fixture("ernie45-tiny-pt", &edited);
    let config_file = edited.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    config["vocab_size"] = 128.into();
    std::fs::write(&config_file, config.to_string()).unwrap();
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, "[[1, 2, 3, 100]]").unwrap();
    let (edited, tokens) = (edited.display().to_string(), tokens.display().to_string());
    fails_with(
        &["eval", &edited, &edited, "--tokens", &tokens],
        "edited: the checkpoint does not hold the model its config describes (1 problem(s)): \
         model.embed_tokens.weight: stored [256, 128], the config needs [128, 128] (vocab_size, hidden_size)",
    );
    // Against the unedited original it is the configs that differ, and both are named.
    fails_with(
        &["eval", &repo("fixtures/ernie45-tiny-pt"), &edited, "--tokens", &tokens],
        "edited are not the same model: vocab_size: 256 vs 128",
    );
}
