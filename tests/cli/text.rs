//! Text input (`--text`, `--calib-text`), `eval` of any two checkpoints with its architecture
//! check, and calibrated 2-bit conversion of every family the forward pass runs.

use super::{ccq, copy_fixture, fails_with, repo, stdout, temp_dir};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A copy of a fixture checkpoint, with the byte tokenizer as its `tokenizer.json`.
fn with_tokenizer(fixture: &str, dir: &Path) -> String {
    let out = dir.join(fixture);
    copy_fixture(fixture, &out);
    std::fs::copy(repo("fixtures/byte-tokenizer.json"), out.join("tokenizer.json")).unwrap();
    out.display().to_string()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&stdout(&ccq(args))).unwrap()
}

fn text_file(dir: &Path) -> PathBuf {
    let text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. \
                However little known the feelings or views of such a man may be on his first entering a neighbourhood. "
        .repeat(3);
    let path = dir.join("text.txt");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn eval_text_and_any_two_checkpoints() {
    let dir = temp_dir("text-eval");
    std::fs::create_dir_all(&dir).unwrap();
    let src = with_tokenizer("ernie45-tiny-pt", &dir);
    let text = text_file(&dir);
    let text_arg = text.display().to_string();
    let w2 = dir.join("w2").display().to_string();
    stdout(&ccq(&["quantize", &src, "-o", &w2, "--preset", "wint2-experts", "--layout", "native", "--quiet"]));

    // The byte tokenizer's ids are the text's bytes: --text equals --tokens of those bytes.
    let bytes = std::fs::read(&text).unwrap();
    let seqs: Vec<Vec<u8>> = bytes.chunks_exact(100).map(<[u8]>::to_vec).collect();
    let ids = dir.join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&seqs).unwrap()).unwrap();
    let by_text = json(&["eval", &src, &w2, "--text", &text_arg, "--seq-len", "100", "--json", "--quiet"]);
    let by_ids = json(&["eval", &src, &w2, "--tokens", &ids.display().to_string(), "--json", "--quiet"]);
    assert_eq!(by_text, by_ids);
    assert_eq!(by_text["tokens"], seqs.len() * 99);
    let kld = by_text["kld_mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld.is_finite(), "{by_text}");

    // A directory of .txt files is its files in name order; --max-sequences spreads.
    let texts = dir.join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    std::fs::copy(&text, texts.join("b.txt")).unwrap();
    let few = json(&["eval", &src, &w2, "--text", &texts.display().to_string(), "--seq-len", "50", "--max-sequences", "3", "--json"]);
    assert_eq!(few["tokens"], 3 * 49);

    // Original against itself, against its dequantized copy, dequantized against quantized.
    let deq = dir.join("deq").display().to_string();
    stdout(&ccq(&["dequant", &w2, "-o", &deq]));
    let eval =
        |a: &str, b: &str| json(&["eval", a, b, "--text", &text_arg, "--tokenizer", &repo("fixtures/byte-tokenizer.json"), "--json"]);
    let same = eval(&src, &src);
    assert_eq!((same["kld_mean"].as_f64(), same["top1_agreement"].as_f64()), (Some(0.0), Some(1.0)));
    let vs_deq = eval(&src, &deq);
    assert!((vs_deq["kld_mean"].as_f64().unwrap() / eval(&src, &w2)["kld_mean"].as_f64().unwrap() - 1.0).abs() < 0.05, "{vs_deq}");
    // The dequantized copy differs from the quantized one by its bf16 rounding only.
    assert!(eval(&deq, &w2)["kld_mean"].as_f64().unwrap() < 0.05 * kld);

    // What differs between two models is named, before the tokens are read.
    fails_with(
        &["eval", &src, &repo("fixtures/qwen2-moe-tiny"), "--tokens", "no-such-file.json"],
        "qwen2-moe-tiny are not the same model: family: Ernie45 vs Qwen2Moe; vocab_size: 256 vs 128",
    );
    // A checkpoint without a tokenizer, text too short for one sequence.
    fails_with(
        &["eval", &repo("fixtures/ernie45-tiny-pt"), &w2, "--text", &text_arg],
        "has no tokenizer.json to tokenize the text with: pass --tokenizer FILE",
    );
    fails_with(&["eval", &src, &w2, "--text", &text_arg, "--seq-len", "4000"], "fewer than one sequence of --seq-len 4000");
    fails_with(&["eval", &src, &w2, "--text", &text_arg, "--tokens", "x"], "cannot be used with");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn calibrate_and_quantize_from_text() {
    let dir = temp_dir("text-calibrate");
    std::fs::create_dir_all(&dir).unwrap();
    let src = with_tokenizer("ernie45-tiny-pt", &dir);
    let text = text_file(&dir).display().to_string();
    let stats = dir.join("stats.safetensors").display().to_string();
    let summary = json(&["calibrate", &src, "--text", &text, "--seq-len", "64", "-o", &stats, "--json", "--quiet"]);
    let label = &summary["meta"]["token_source"];
    assert_eq!(label["seq_len"], 64);
    assert_eq!(label["tokenizer_fnv64"].as_str().unwrap().len(), 16);
    let fed = dir.join("fed").display().to_string();
    let out = ccq(&["quantize", &src, "-o", &fed, "--preset", "wint2-experts", "--calib-text", &text, "--seq-len", "64"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("encoded with error feedback"), "{err}");
    let provenance = std::fs::read_to_string(Path::new(&fed).join("ccq-provenance.json")).unwrap();
    assert!(provenance.contains("tokenizer_fnv64"), "{provenance}");
    fails_with(&["quantize", &src, "-o", &fed, "--sequential"], "--sequential and --seq-len need --calib-tokens or --calib-text");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Qwen2-MoE, Qwen3-MoE and Mixtral at 2 bits in the native layout: calibrated error feedback
/// (`--calib-tokens`) moves the predictions less than plain rounding, measured by `eval`.
#[test]
fn every_moe_family_quantizes_with_feedback() {
    let dir = temp_dir("families");
    std::fs::create_dir_all(&dir).unwrap();
    let seqs: Vec<Vec<usize>> = (0..8).map(|s| (0..32).map(|i| (s * 37 + i * 11 + i * i) % 128).collect()).collect();
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, serde_json::to_string(&seqs).unwrap()).unwrap();
    let tokens = tokens.display().to_string();
    for family in ["qwen2-moe", "qwen3-moe", "mixtral"] {
        let src = repo(&format!("fixtures/{family}-tiny"));
        let (plain, fed) =
            (dir.join(format!("{family}-plain")).display().to_string(), dir.join(format!("{family}-fed")).display().to_string());
        let base = ["quantize", &src, "--preset", "wint2-experts", "--layout", "native", "--quiet"];
        stdout(&ccq(&[&base[..], &["-o", &plain]].concat()));
        stdout(&ccq(&[&base[..], &["-o", &fed, "--calib-tokens", &tokens]].concat()));
        let kld = |q: &str| json(&["eval", &src, q, "--tokens", &tokens, "--json", "--quiet"])["kld_mean"].as_f64().unwrap();
        let (k_plain, k_fed) = (kld(&plain), kld(&fed));
        assert!(k_fed < 0.75 * k_plain, "{family}: feedback KLD {k_fed} vs plain {k_plain}");
        fails_with(
            &["quantize", &src, "-o", &plain, "--layout", "fastdeploy", "--force"],
            "the fastdeploy layout is for ERNIE 4.5 checkpoints; use --layout native",
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
