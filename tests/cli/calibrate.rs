//! `ccq calibrate`, `quantize --calib` and `verify --calib` end to end on the tiny fixture.

use super::{ccq, refused, repo, stdout, temp_dir};
use serde_json::Value;

fn tokens(dir: &std::path::Path, seed: usize) -> String {
    let seqs: Vec<Vec<usize>> = (0..6).map(|s| (0..24).map(|i| (s * 97 + i * 31 + seed * 13) % 256).collect()).collect();
    let path = dir.join(format!("tokens-{seed}.json"));
    std::fs::write(&path, serde_json::to_string(&seqs).unwrap()).unwrap();
    path.display().to_string()
}

#[test]
fn calibrated_quantization_end_to_end() {
    let dir = temp_dir("calibrate");
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo("fixtures/ernie45-tiny-pt");
    let stats = dir.join("stats.safetensors").display().to_string();
    let summary: Value = serde_json::from_str(&stdout(&ccq(&["calibrate", &src, "--tokens", &tokens(&dir, 1), "-o", &stats, "--json", "--min-tokens", "40"]))).unwrap();
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
    let error = |q: &std::path::Path| -> f64 {
        let v: Value = serde_json::from_str(&stdout(&ccq(&["verify", &src, &q.display().to_string(), "--calib", &stats, "--json", "--quiet"]))).unwrap();
        assert!(v["probe"].as_str().unwrap().contains("calibration"), "{}", v["probe"]);
        let rows: Vec<f64> = v["tensors"].as_array().unwrap().iter().filter(|r| r["scheme"] == "wint2").map(|r| r["output_rel_err"].as_f64().unwrap()).collect();
        rows.iter().sum::<f64>() / rows.len() as f64
    };
    assert!(error(&calibrated) < error(&plain));

    // Statistics of another model are refused before any work.
    let other = dir.join("other.safetensors").display().to_string();
    stdout(&ccq(&["calibrate", &repo("fixtures/ernie45-tiny-paddle"), "--tokens", &tokens(&dir, 2), "-o", &other]));
    let out = dir.join("mismatch");
    refused(&["quantize", &src, "-o", &out.display().to_string(), "--calib", &other]);
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
