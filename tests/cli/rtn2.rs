//! The rtn2 baseline scheme end to end: chosen with `--set`, described in the native layout,
//! decoded by `verify`, `eval` and `dequant` with the scheme that wrote it, refused by the
//! FastDeploy layout.

use super::{ccq, fails_with, repo, stdout, temp_dir};
use ccq::quantized::QuantizedCheckpoint;
use ccq::SchemeKind;
use serde_json::Value;

#[test]
fn rtn2_is_a_scheme_of_the_native_layout() {
    let dir = temp_dir("rtn2");
    let q = dir.join("q").display().to_string();
    let src = repo("fixtures/ernie45-tiny-pt");
    let set = ["--layout", "native", "--preset", "wint2-experts", "--set", r"experts\.1\.=rtn2", "--quiet"];
    stdout(&ccq(&[&["quantize", src.as_str(), "-o", q.as_str()][..], &set[..]].concat()));
    let opened = QuantizedCheckpoint::open(&q).unwrap();
    let rtn2: Vec<_> = opened.tensors().iter().filter(|t| t.scheme == Some(SchemeKind::Rtn2)).collect();
    assert_eq!(rtn2.len(), 6, "experts.1 of layers 1 and 2: gate, up, down");
    let bytes = opened.checkpoint().shards()[0].metadata[&format!("ccq.tensor.{}", rtn2[0].name)].clone();
    assert!(bytes.contains(r#""scheme":"rtn2""#) && bytes.contains(r#""group_size":64"#), "{bytes}");

    let report: Value = serde_json::from_str(&stdout(&ccq(&["verify", &src, &q, "--json", "--quiet"]))).unwrap();
    let rows: Vec<&Value> = report["tensors"].as_array().unwrap().iter().filter(|r| r["scheme"] == "rtn2").collect();
    assert_eq!(rows.len(), 6);
    for r in rows {
        let nmse = r["nmse"].as_f64().unwrap();
        assert!(nmse > 0.02 && nmse < 0.3, "{r}");
    }
    let dq = dir.join("dq").display().to_string();
    stdout(&ccq(&["dequant", &q, "-o", &dq, "--quiet"]));
    let (dqc, t) = (ccq::Checkpoint::open(&dq).unwrap(), rtn2[0]);
    let stored = &t.sources.as_ref().unwrap()[0].name;
    let decoded: Vec<f32> = opened.dequantize(t).unwrap();
    let written = dqc.read_f32(stored).unwrap();
    // The source is PyTorch [out, in]: dequant writes the decoded [k, n] back transposed, as bf16.
    assert!(t.transposed && written.len() == decoded.len());
    for (i, &w) in written.iter().enumerate() {
        let (row, col) = (i % t.k, i / t.k);
        assert_eq!(w, ccq::scheme::wint2::decode::bf16_rne(decoded[row * t.n + col]), "element {i}");
    }
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, "[[1, 2, 3, 4, 5, 6, 7, 8]]").unwrap();
    let e: Value =
        serde_json::from_str(&stdout(&ccq(&["eval", &src, &q, "--tokens", &tokens.display().to_string(), "--json", "--quiet"]))).unwrap();
    assert!(e["kld_mean"].as_f64().unwrap() > 0.0 && e["kld_mean"].as_f64().unwrap() < 1.0, "{e}");

    let fd = dir.join("fd").display().to_string();
    fails_with(&["quantize", &src, "-o", &fd, "--set", r"experts\.1\.=rtn2"], "FastDeploy does not load rtn2; use --layout native");
    std::fs::remove_dir_all(&dir).unwrap();
}
