//! `ccq verify` end to end: figures that match an independent computation from `ccq dequant`'s
//! output, thresholds and exit codes, reports, and checkpoints that do not belong together.

use super::{ccq, fails_with, refused, repo, stdout, temp_dir};
use ccq::Checkpoint;
use serde_json::Value;
use std::collections::BTreeMap;

/// NMSE of every tensor of `dequant` against `original`, computed here from plain values.
fn independent_nmse(original: &Checkpoint, dequant: &Checkpoint) -> BTreeMap<String, f64> {
    original
        .tensors()
        .iter()
        .map(|t| {
            let w = original.read_f32(&t.name).unwrap();
            let q = dequant.read_f32(&t.name).unwrap();
            let err: f64 = w.iter().zip(&q).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
            let energy: f64 = w.iter().map(|a| f64::from(*a).powi(2)).sum();
            (t.name.clone(), err / energy)
        })
        .collect()
}

#[test]
fn figures_match_dequant_and_thresholds_gate() {
    let dir = temp_dir("verify");
    let (q, dq) = (dir.join("q"), dir.join("dq"));
    let src = repo("fixtures/ernie45-tiny-pt");
    let (qs, dqs) = (q.display().to_string(), dq.display().to_string());
    stdout(&ccq(&["quantize", &src, "-o", &qs, "--w4-end-layer", "1", "--quiet"]));
    stdout(&ccq(&["dequant", &qs, "-o", &dqs, "--quiet"]));
    let report = dir.join("report.html");
    let out = ccq(&["verify", &src, &qs, "--json", "--quiet", "--report", &report.display().to_string()]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let expected = independent_nmse(&Checkpoint::open(&src).unwrap(), &Checkpoint::open(&dq).unwrap());
    let rows = v["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), 45, "every quantized source tensor has a row");
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let nmse = row["nmse"].as_f64().unwrap();
        let independent = expected[name];
        // WINT2 values are bf16 and dequant writes them exactly. wint8/wint4 values are f32
        // `q * scale`, which dequant rounds to bf16: that adds up to about (2^-9)^2 / 3 of
        // relative noise energy (~1.3e-6), comparable to wint8's own error, hence the
        // absolute term.
        let (relative, absolute) = if row["scheme"] == "wint2" { (1e-9, 0.0) } else { (0.05, 1e-5) };
        assert!((nmse - independent).abs() <= relative * independent + absolute, "{name}: {nmse} vs {independent}");
        for key in ["sqnr_db", "cosine", "max_abs_err", "output_rel_err", "scheme", "quantized"] {
            assert!(!row[key].is_null(), "{name} {key}");
        }
        assert!(row["output_rel_err"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(v["passed"], true);
    assert!(v["by_scheme"].as_array().unwrap().iter().any(|g| g["key"] == "wint2"));
    assert!(v["by_expert"].as_array().unwrap().iter().any(|g| g["key"] == "layer 2 expert 3"));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<svg") && html.contains("Worst tensors") && !html.contains("<script"));

    // A limit below what was measured fails with exit 1 and names the offenders.
    let worst_wint2 = rows.iter().filter(|r| r["scheme"] == "wint2").map(|r| r["nmse"].as_f64().unwrap()).fold(0.0, f64::max);
    let below = format!("wint2={}", worst_wint2 * 0.999);
    let fail = ccq(&["verify", &src, &qs, "--quiet", "--max-nmse", &below]);
    assert_eq!(fail.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fail.stdout).contains("threshold(s) exceeded"));
    let above = format!("wint2={}", worst_wint2 * 1.001);
    let pass = ccq(&["verify", &src, &qs, "--quiet", "--max-nmse", &above, "--max-output-err", "1"]);
    assert_eq!(pass.status.code(), Some(0));
    let out_fail = ccq(&["verify", &src, &qs, "--quiet", "--max-output-err", "wint8=0.001"]);
    assert_eq!(out_fail.status.code(), Some(1));

    // Thresholds that do not parse: exit 2 before any work.
    fails_with(&["verify", &src, "/nonexistent", "--max-nmse", "wint3=0.1"], "unknown scheme 'wint3'");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_that_do_not_belong_together_are_refused() {
    let dir = temp_dir("verify-mismatch");
    let q = dir.join("q").display().to_string();
    stdout(&ccq(&["quantize", &repo("fixtures/ernie45-tiny-pt"), "-o", &q, "--quiet"]));
    let err = refused(&["verify", &repo("fixtures/ernie45-tiny-paddle"), &q]);
    assert!(err.contains("do not belong together") && err.contains("which the original does not have") && err.contains("more"), "{err}");
    // A different model of the same naming: shapes disagree.
    let other = dir.join("other").display().to_string();
    stdout(&ccq(&["synth", "-o", &other, "--preset", "small", "--layers", "3"]));
    fails_with(&["verify", &other, &q], "inputs but its source");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loader_api_multiplies_by_a_packed_tensor() {
    use ccq::quantized::QuantizedCheckpoint;
    let dir = temp_dir("loader-matmul");
    let q = dir.join("q");
    stdout(&ccq(&["quantize", &repo("fixtures/ernie45-tiny-pt"), "-o", &q.display().to_string(), "--w4-end-layer", "1", "--quiet"]));
    let ckpt = QuantizedCheckpoint::open(&q).unwrap();
    for name in ["ernie.layers.2.mlp.experts.1.up_gate_proj", "ernie.layers.1.mlp.experts.0.down_proj", "ernie.layers.0.self_attn.qkv_proj"]
    {
        let t = ckpt.get(name).unwrap();
        let m = 3;
        let x: Vec<f32> = (0..m * t.k).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
        let y = ckpt.matmul(t, &x, m).unwrap();
        let w = ckpt.dequantize(t).unwrap();
        for r in 0..m {
            for c in 0..t.n {
                let exact: f64 = (0..t.k).map(|k| f64::from(x[r * t.k + k]) * f64::from(w[k * t.n + c])).sum();
                let scale: f64 = (0..t.k).map(|k| (f64::from(x[r * t.k + k]) * f64::from(w[k * t.n + c])).abs()).sum();
                assert!((f64::from(y[r * t.n + c]) - exact).abs() <= 1e-5 * scale + 1e-12, "{name} [{r}, {c}]");
            }
        }
        assert!(ckpt.matmul(t, &x[1..], m).is_err(), "wrong x length is an error");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A FastDeploy checkpoint made elsewhere has no provenance record: verify regroups the
/// original by the layout's own naming rules, packed and unquantized tensors alike (it used
/// to find no counterpart for any unquantized tensor).
#[test]
fn fastdeploy_checkpoint_without_provenance_pairs_every_tensor() {
    let dir = temp_dir("verify-no-provenance");
    let q = dir.join("q");
    let (src, qs) = (repo("fixtures/ernie45-tiny-pt"), q.display().to_string());
    stdout(&ccq(&["quantize", &src, "-o", &qs, "--w4-end-layer", "1", "--quiet"]));
    let with: Value = serde_json::from_str(&stdout(&ccq(&["verify", &src, &qs, "--json", "--quiet"]))).unwrap();
    std::fs::remove_file(q.join(ccq::format::provenance::PROVENANCE_FILE)).unwrap();
    let without: Value = serde_json::from_str(&stdout(&ccq(&["verify", &src, &qs, "--json", "--quiet"]))).unwrap();
    assert_eq!(with["tensors"], without["tensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Thresholds take the schemes of the library's registry (and `none`), checked before any
/// checkpoint is opened.
#[test]
fn thresholds_take_the_registry_schemes() {
    let src = repo("fixtures/ernie45-tiny-pt");
    for name in std::iter::once("none").chain(ccq::SchemeKind::ALL.iter().map(|k| k.name())) {
        let err = refused(&["verify", &src, "/nonexistent", "--max-nmse", &format!("{name}=0.1"), "--max-output-err", "0.5"]);
        assert!(err.contains("/nonexistent") && !err.contains("--max-"), "{name}: {err}");
    }
    fails_with(&["verify", &src, "/nonexistent", "--max-output-err", "wint2=-1"], "--max-output-err wint2=-1: expected a number >= 0");
}

/// Issue 14, defect 10: a quantized checkpoint without any quantized tensor used to print an
/// empty table and "all thresholds met" with exit 0.
#[test]
fn verifying_nothing_fails_unless_allowed() {
    let dir = temp_dir("verify-empty");
    let q = dir.join("q").display().to_string();
    let src = repo("fixtures/ernie45-tiny-pt");
    stdout(&ccq(&["quantize", &src, "-o", &q, "--layout", "native", "--set", ".=none", "--quiet"]));
    let r = ccq(&["verify", &src, &q, "--quiet"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("nothing was verified"), "{}", String::from_utf8_lossy(&r.stderr));
    stdout(&ccq(&["verify", &src, &q, "--quiet", "--allow-empty"]));
}
