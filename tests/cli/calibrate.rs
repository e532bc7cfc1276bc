//! `ccq calibrate`, `quantize --calib` and `verify --calib` end to end on the tiny fixture.

use super::{ccq, refused, repo, stdout, temp_dir};
use serde_json::Value;

fn tokens(dir: &std::path::Path, seed: usize) -> String {
    let seqs: Vec<Vec<usize>> = (0..6).map(|s| (0..24).map(|i| (s * 97 + i * 31 + seed * 13) % 256).collect()).collect();
    let path = dir.join(format!("tokens-{seed}.json"));
    std::fs::write(&path, serde_json::to_string(&seqs).unwrap()).unwrap();
    path.display().to_string()
}

/// The mean calibration-weighted output error of the WINT2 tensors of `quant` (`ccq verify
/// --calib`), checking that the report says the calibration weighted it.
fn wint2_output_error(src: &str, quant: &str, stats: &str) -> f64 {
    let v: Value = serde_json::from_str(&stdout(&ccq(&["verify", src, quant, "--calib", stats, "--json", "--quiet"]))).unwrap();
    assert!(v["probe"].as_str().unwrap().contains("calibration"), "{}", v["probe"]);
    let rows: Vec<f64> =
        v["tensors"].as_array().unwrap().iter().filter(|r| r["scheme"] == "wint2").map(|r| r["output_rel_err"].as_f64().unwrap()).collect();
    rows.iter().sum::<f64>() / rows.len() as f64
}

#[test]
fn calibrated_quantization_end_to_end() {
    let dir = temp_dir("calibrate");
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo("fixtures/ernie45-tiny-pt");
    let stats = dir.join("stats.safetensors").display().to_string();
    let summary: Value = serde_json::from_str(&stdout(&ccq(&[
        "calibrate",
        &src,
        "--tokens",
        &tokens(&dir, 1),
        "-o",
        &stats,
        "--json",
        "--min-tokens",
        "40",
    ])))
    .unwrap();
    // 6 sequences x 24 tokens, top-2 routing: every MoE layer routes 288 token slots, and the
    // experts under --min-tokens are the ones listed as fallbacks.
    for layer in ["1", "2"] {
        let counts: Vec<u64> = summary["expert_tokens"][layer].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
        assert_eq!(counts.len(), 4);
        assert_eq!(counts.iter().sum::<u64>(), 288, "{summary}");
        let low: Vec<u64> = (0..4).filter(|&e| counts[e as usize] < 40).collect();
        let fallbacks: Vec<u64> = summary["fallbacks"][layer].as_array().unwrap().iter().map(|e| e.as_u64().unwrap()).collect();
        assert_eq!(fallbacks, low, "{summary}");
    }

    let (plain, calibrated) = (dir.join("plain"), dir.join("calibrated"));
    stdout(&ccq(&["quantize", &src, "-o", &plain.display().to_string(), "--quiet", "--preset", "wint2-experts"]));
    stdout(&ccq(&["quantize", &src, "-o", &calibrated.display().to_string(), "--quiet", "--preset", "wint2-experts", "--calib", &stats]));
    let provenance = std::fs::read_to_string(calibrated.join("ccq-provenance.json")).unwrap();
    assert!(provenance.contains("calibration"));
    assert_ne!(
        std::fs::read(plain.join("model.safetensors")).unwrap(),
        std::fs::read(calibrated.join("model.safetensors")).unwrap(),
        "importance must change the encoding"
    );

    // Under the calibration statistics, the calibrated checkpoint has the lower output error.
    let error = |q: &std::path::Path| wint2_output_error(&src, &q.display().to_string(), &stats);
    assert!(error(&calibrated) < error(&plain));

    // Statistics of another model are refused before any work.
    let other = dir.join("other.safetensors").display().to_string();
    stdout(&ccq(&["calibrate", &repo("fixtures/ernie45-tiny-paddle"), "--tokens", &tokens(&dir, 2), "-o", &other]));
    let out = dir.join("mismatch");
    refused(&["quantize", &src, "-o", &out.display().to_string(), "--calib", &other]);
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The output files of a conversion, by name (provenance aside, which records the options).
fn outputs(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn feedback_conversion_from_calibration_tokens() {
    let dir = temp_dir("feedback");
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo("fixtures/ernie45-tiny-pt");
    let toks = tokens(&dir, 3);
    let path = |name: &str| dir.join(name).display().to_string();
    let quantize = |out: &str, extra: &[&str]| {
        let mut args =
            vec!["quantize", &src, "-o", out, "--preset", "wint2-experts", "--layout", "native", "--shard-size", "40KB", "--force"];
        args.extend_from_slice(extra);
        ccq(&args)
    };
    // Layer by layer, one thread or two: the same bytes.
    let one = quantize(&path("one"), &["--calib-tokens", &toks, "--threads", "1", "--min-tokens", "40"]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    assert!(String::from_utf8_lossy(&one.stderr).contains("encoded with error feedback"), "{}", String::from_utf8_lossy(&one.stderr));
    let two = quantize(&path("two"), &["--calib-tokens", &toks, "--threads", "2", "--min-tokens", "40", "--quiet"]);
    assert!(two.status.success());
    let fed = outputs(&dir.join("one"));
    assert!(fed.len() > 1, "several shards");
    assert_eq!(fed, outputs(&dir.join("two")));
    let provenance: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("one/ccq-provenance.json")).unwrap()).unwrap();
    let feedback = &provenance["options"]["feedback"];
    assert_eq!(feedback["method"], "feedback", "{feedback}");
    assert!(feedback["tensors"].as_u64().unwrap() > 0);
    assert_eq!(feedback["calibration"]["experts"]["1"]["tokens"].as_object().unwrap().len(), 4, "{feedback}");
    assert!(!dir.join("one").join("ccq-encoded").exists(), "the work files are gone");

    // An interrupted run resumes to the same bytes.
    let stopped = quantize(&path("resumed"), &["--calib-tokens", &toks, "--min-tokens", "40", "--quiet", "--stop-after-shards", "1"]);
    assert!(!stopped.status.success());
    let resumed = quantize(&path("resumed"), &["--calib-tokens", &toks, "--min-tokens", "40", "--quiet", "--resume"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(fed, outputs(&dir.join("resumed")));

    // Sequential mode and the diagonal path encode differently; the budget only chunks.
    let seq = quantize(&path("seq"), &["--calib-tokens", &toks, "--min-tokens", "40", "--quiet", "--sequential"]);
    assert!(seq.status.success(), "{}", String::from_utf8_lossy(&seq.stderr));
    assert_ne!(fed, outputs(&dir.join("seq")));
    let chunked = quantize(&path("chunked"), &["--calib-tokens", &toks, "--min-tokens", "40", "--quiet", "--hessian-budget", "2MB"]);
    assert!(chunked.status.success(), "{}", String::from_utf8_lossy(&chunked.stderr));
    assert_eq!(fed, outputs(&dir.join("chunked")), "chunking experts changes no byte");

    // Against the full-Hessian statistics of the same tokens, feedback has the lower output error.
    let stats = path("full.safetensors");
    stdout(&ccq(&["calibrate", &src, "--tokens", &toks, "-o", &stats, "--hessian", "full", "--min-tokens", "40"]));
    let plain = quantize(&path("plain"), &["--quiet"]);
    assert!(plain.status.success());
    let error = |q: &str| wint2_output_error(&src, &path(q), &stats);
    assert!(error("one") < error("plain"), "feedback {} plain {}", error("one"), error("plain"));

    // Bad input is refused before any work: ids outside the vocabulary, a budget too small.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[[1, 2, 99999]]").unwrap();
    let msg = refused(&["quantize", &src, "-o", &path("bad"), "--calib-tokens", &bad.display().to_string()]);
    assert!(msg.contains("outside the vocabulary"), "{msg}");
    let msg = refused(&["quantize", &src, "-o", &path("tiny-budget"), "--calib-tokens", &toks, "--hessian-budget", "100"]);
    assert!(msg.contains("--hessian-budget"), "{msg}");
    for name in ["bad", "bad.ccq-partial", "tiny-budget", "tiny-budget.ccq-partial"] {
        assert!(!dir.join(name).exists(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
