//! `ccq generate` end to end on the tiny fixture with the byte tokenizer: deterministic greedy
//! output, seeded sampling, the figures line, and bad input refused before the model loads.

use super::{ccq, copy_fixture, fails_with, repo, temp_dir};
use std::path::Path;

fn with_tokenizer(dir: &Path, chat_template: Option<&str>) -> String {
    let out = dir.join("model");
    copy_fixture("ernie45-tiny-pt", &out);
    std::fs::copy(repo("fixtures/byte-tokenizer.json"), out.join("tokenizer.json")).unwrap();
    if let Some(t) = chat_template {
        std::fs::write(out.join("tokenizer_config.json"), serde_json::json!({ "chat_template": t }).to_string()).unwrap();
    }
    out.display().to_string()
}

fn generate(args: &[&str]) -> (String, String) {
    let out = ccq(&[&["generate"], args].concat());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

#[test]
fn generate_streams_deterministic_text() {
    let dir = temp_dir("generate");
    std::fs::create_dir_all(&dir).unwrap();
    let model = with_tokenizer(&dir, Some("{{ '[INST] ' + messages[0].content + ' [/INST]' }}"));
    let (text, err) = generate(&[&model, "--prompt", "Hello", "--max-tokens", "12"]);
    assert!(err.contains("ccq: prompt 5 tokens, prefill") && err.contains("generated 12 tokens, decode"), "{err}");
    assert!(err.contains("peak RSS"), "{err}");
    assert_eq!(generate(&[&model, "--prompt", "Hello", "--max-tokens", "12"]).0, text, "greedy is deterministic");
    let quant = dir.join("w2").display().to_string();
    super::stdout(&ccq(&["quantize", &model, "-o", &quant, "--preset", "wint2-experts", "--layout", "native", "--quiet"]));
    std::fs::copy(repo("fixtures/byte-tokenizer.json"), dir.join("w2/tokenizer.json")).unwrap();
    let (q_text, _) = generate(&[&quant, "--prompt", "Hello", "--max-tokens", "12"]);
    assert!(!q_text.is_empty());
    let sample = ["--prompt", "Hello", "--max-tokens", "12", "--temperature", "1.0", "--top-k", "50", "--top-p", "0.9", "--seed", "7"];
    let a = generate(&[&[model.as_str()], &sample[..]].concat()).0;
    assert_eq!(generate(&[&[model.as_str()], &sample[..]].concat()).0, a, "seeded sampling repeats");
    let (_, err) = generate(&[&model, "--prompt", "Hi", "--max-tokens", "3", "--chat"]);
    assert!(err.contains("prompt 20 tokens"), "<s>[INST] Hi [/INST] is 20 bytes: {err}");

    // Bad input, before the model loads.
    fails_with(&["generate", &model, "--prompt", "Hi", "--temperature=-1"], "--temperature -1 must be a finite number >= 0");
    fails_with(&["generate", &model, "--prompt", "Hi", "--top-p", "0"], "--top-p 0 must be in (0, 1]");
    fails_with(&["generate", &model, "--prompt", "Hi", "--top-k", "0"], "--top-k must be positive");
    fails_with(&["generate", &model, "--prompt", &"x".repeat(4096)], "the prompt has 4096 tokens; the model takes at most 4096 positions");
    fails_with(&["generate", &repo("fixtures/ernie45-tiny-pt"), "--prompt", "Hi"], "has no tokenizer.json");
    fails_with(
        &["generate", &repo("fixtures/ernie45-tiny-pt"), "--prompt", "Hi", "--tokenizer", &repo("fixtures/byte-tokenizer.json"), "--chat"],
        "no chat_template",
    );
    let other = with_tokenizer(&dir.join("other"), Some("{{ messages }}"));
    fails_with(&["generate", &other, "--prompt", "Hi", "--chat"], "none of those --chat renders");
    std::fs::remove_dir_all(dir).unwrap();
}
