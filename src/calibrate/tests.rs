//! Calibration statistics against the forward pass's own routing and rows.

use super::*;
use crate::model::source::OriginalWeights;
use crate::model::{forward, RoutingRecorder, WeightSource};
use std::path::Path;

fn tiny() -> Checkpoint {
    Checkpoint::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ernie45-tiny-pt")).unwrap()
}

fn sequences() -> Vec<Vec<u32>> {
    let mut rng = crate::rng::Rng::new(3);
    (0..3).map(|_| (0..12).map(|_| (rng.next_u64() % 256) as u32).collect()).collect()
}

/// Records the rows of one expert's gate_up input.
struct Rows {
    layer: usize,
    expert: usize,
    rows: Vec<f32>,
}

impl Observer for Rows {
    fn on_linear_input(&mut self, r: &LinearRows<'_>) {
        if r.layer == self.layer && r.block == Block::Expert(self.expert) && r.input == LinearInput::GateUp {
            self.rows.extend_from_slice(r.rows);
        }
    }
}

#[test]
fn counts_and_sums_match_the_forward_pass() {
    let ckpt = tiny();
    let seqs = sequences();
    let stats = calibrate(&ckpt, &seqs, CalibOptions { min_tokens: 1, ..CalibOptions::default() }, 1 << 20, &mut |_| {}).unwrap();
    let source = OriginalWeights::new(&ckpt).unwrap();
    let mut rec = RoutingRecorder::default();
    forward(&source, &seqs, &mut rec).unwrap();
    let experts = source.config().experts;
    for r in &rec.routings {
        let mut counts = vec![0usize; experts];
        r.experts.iter().for_each(|&e| counts[e] += 1);
        assert_eq!(stats.expert_tokens[&r.layer], counts, "layer {}", r.layer);
    }
    // sum_sq of expert 0 of layer 1 against its rows, recomputed independently.
    let mut rows = Rows { layer: 1, expert: 0, rows: Vec::new() };
    forward(&source, &seqs, &mut rows).unwrap();
    let hidden = source.config().hidden;
    let st = &stats.inputs["model.layers.1.mlp.experts.0.gate_up"];
    assert_eq!(st.tokens as usize, rows.rows.len() / hidden);
    for k in 0..hidden {
        let want: f64 = rows.rows.chunks_exact(hidden).map(|r| (r[k] as f64).powi(2)).sum();
        assert!((st.sum_sq[k] as f64 - want).abs() <= 1e-5 * want.max(1e-6), "channel {k}");
        assert!((st.mean_sq[k] as f64 - want / st.tokens as f64).abs() <= 1e-5 * want.max(1e-6));
    }
    // Fused sources share one input's statistics.
    assert_eq!(stats.weights["model.layers.1.mlp.experts.0.gate_proj.weight"], "model.layers.1.mlp.experts.0.gate_up");
    assert_eq!(stats.weights["model.layers.0.self_attn.v_proj.weight"], "model.layers.0.self_attn.qkv");
    // The MoE input holds every token once.
    assert_eq!(stats.inputs["model.layers.1.mlp.moe_input"].tokens as usize, 36);
}

#[test]
fn experts_below_min_tokens_are_blended_and_listed() {
    let ckpt = tiny();
    let seqs = sequences();
    let min = 1000;
    let stats = calibrate(&ckpt, &seqs, CalibOptions { min_tokens: min, ..CalibOptions::default() }, 1 << 20, &mut |_| {}).unwrap();
    assert_eq!(stats.fallbacks[&1], vec![0, 1, 2, 3]);
    let layer = &stats.inputs["model.layers.1.mlp.moe_input"];
    let e = &stats.inputs["model.layers.1.mlp.experts.2.gate_up"];
    assert!(e.fell_back);
    let n = e.tokens as f64;
    for k in 0..e.k {
        let want = (e.sum_sq[k] as f64 + (min as f64 - n) * layer.mean_sq[k] as f64) / min as f64;
        assert!((e.mean_sq[k] as f64 - want).abs() <= 1e-5 * want.max(1e-6));
    }
    let summary = serde_json::to_value(stats.summary()).unwrap();
    assert_eq!(summary["expert_tokens"]["1"].as_array().unwrap().len(), 4);
    assert!(summary["fallbacks"]["2"].is_array());
}

#[test]
fn file_round_trips_and_a_mismatch_is_an_error() {
    let ckpt = tiny();
    let options = CalibOptions { hessian: Hessian::Full, weighting: Weighting::Gate, min_tokens: 4 };
    let stats = calibrate(&ckpt, &sequences(), options, 16, &mut |_| {}).unwrap();
    let dir = crate::test_support::scratch("calib", true);
    let path = dir.join("stats.safetensors");
    stats.write(&path).unwrap();
    let back = Stats::read(&path).unwrap();
    assert_eq!(back.inputs, stats.inputs);
    assert_eq!(back.weights, stats.weights);
    let xtx = back.inputs["model.layers.0.self_attn.qkv"].xtx.as_ref().unwrap();
    let h = &back.inputs["model.layers.0.self_attn.qkv"].mean_sq;
    assert!((xtx[0] - h[0]).abs() <= 1e-5 * h[0]); // diag(X^T X / W) = mean_sq
    let names = ["model.layers.0.self_attn.q_proj.weight".to_string()];
    assert!(back.check_covers(&path, [("q", &names[..], 128)].into_iter()).is_ok());
    let err = back.check_covers(&path, [("q", &names[..], 64)].into_iter()).unwrap_err().to_string();
    assert!(err.contains("do not match") && err.contains("64"), "{err}");
    let missing = ["nope.weight".to_string()];
    assert!(back.check_covers(&path, [("x", &missing[..], 1)].into_iter()).unwrap_err().to_string().contains("nope.weight"));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn malformed_statistics_files_are_errors_not_panics() {
    let dir = crate::test_support::scratch("calib-bad", true);
    let path = dir.join("stats.safetensors");
    for json in [
        r#"{"a.sum_sq":{"dtype":"F32","shape":[1],"data_offsets":[]}}"#,
        r#"{"a.sum_sq":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,0]}}"#,
        r#"{"__metadata__":{"ccq.calibration":"{\"inputs\":{\"a\":{\"k\":4294967296}}}"}}"#,
    ] {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(Stats::read(&path).is_err(), "{json}");
    }
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(&path, &huge).unwrap();
    assert!(Stats::read(&path).is_err());
    // A well-formed description can still be refused by the reader (here: k * k overflows).
    stats_file(&path, &DESCRIPTION.replace(r#""k":2"#, r#""k":4294967296"#));
    let msg = Stats::read(&path).unwrap_err().to_string();
    assert!(msg.contains("too large") && msg.contains(&path.display().to_string()), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A statistics file of one input `a` (k = 2) described by `description`.
fn stats_file(path: &Path, description: &str) {
    let header = json!({
        "__metadata__": {"format": "pt", "ccq.calibration": description},
        "a.sum_sq": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "a.mean_sq": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for v in [3.0f32, 6.0, 1.0, 2.0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, &bytes).unwrap();
}

const DESCRIPTION: &str = r#"{"format":"ccq-calibration","version":1,"meta":{"tokens":3},"inputs":{"a":{"k":2,"tokens":3,"fell_back":true}},"weights":{"w.weight":"a"},"expert_tokens":{"1":[3,0]},"fallbacks":{"1":[1]}}"#;

#[test]
fn the_description_is_written_in_the_documented_layout() {
    let input = |k: usize, tokens: u64, fell_back: bool| InputStats {
        k,
        tokens,
        sum_sq: vec![1.0; k],
        mean_sq: vec![1.0; k],
        xtx: None,
        fell_back,
    };
    let stats = Stats {
        inputs: BTreeMap::from([("b".to_string(), input(3, 7, false)), ("a".to_string(), input(2, 3, true))]),
        weights: BTreeMap::from([("w2.weight".to_string(), "b".to_string()), ("w.weight".to_string(), "a".to_string())]),
        expert_tokens: BTreeMap::from([(10, vec![1, 2]), (2, vec![3, 0])]),
        fallbacks: BTreeMap::from([(10, vec![]), (2, vec![1])]),
        meta: json!({"tokens": 3, "seconds": 0.1, "checkpoint": "x"}),
    };
    let text = serde_json::to_string(&stats.description()).unwrap();
    // What the hand-built description wrote, byte for byte (layers in numeric order).
    let want = concat!(
        r#"{"format":"ccq-calibration","version":1,"meta":{"tokens":3,"seconds":0.1,"checkpoint":"x"},"#,
        r#""inputs":{"a":{"k":2,"tokens":3,"fell_back":true},"b":{"k":3,"tokens":7,"fell_back":false}},"#,
        r#""weights":{"w.weight":"a","w2.weight":"b"},"expert_tokens":{"2":[3,0],"10":[1,2]},"fallbacks":{"2":[1],"10":[]}}"#
    );
    assert_eq!(text, want);
    assert_eq!(Description::parse(&text).unwrap(), stats.description());
}

#[test]
fn a_description_with_a_missing_or_unknown_field_is_refused() {
    let dir = crate::test_support::scratch("calib-fields", true);
    let path = dir.join("stats.safetensors");
    stats_file(&path, DESCRIPTION);
    let stats = Stats::read(&path).unwrap();
    assert_eq!(stats.inputs["a"].tokens, 3);
    assert!(stats.inputs["a"].fell_back);
    assert_eq!(stats.inputs["a"].sum_sq, vec![3.0, 6.0]);
    assert_eq!(stats.inputs["a"].mean_sq, vec![1.0, 2.0]);
    assert_eq!(stats.weights["w.weight"], "a");
    assert_eq!(stats.expert_tokens[&1], vec![3, 0]);
    assert_eq!(stats.fallbacks[&1], vec![1]);
    assert_eq!(stats.meta, json!({"tokens": 3}));
    for (description, field) in [
        // Misspelt fields.
        (DESCRIPTION.replace(r#""tokens":3,"fell"#, r#""tokns":3,"fell"#), "tokns"),
        (DESCRIPTION.replace(r#""fallbacks""#, r#""fallback""#), "fallback"),
        (DESCRIPTION.replace(r#""weights""#, r#""weight""#), "weight"),
        // Missing required fields (formerly read as 0, false or {}).
        (DESCRIPTION.replace(r#""tokens":3,"fell"#, r#""fell"#), "tokens"),
        (DESCRIPTION.replace(r#","fell_back":true"#, ""), "fell_back"),
        (DESCRIPTION.replace(r#""meta":{"tokens":3},"#, ""), "meta"),
        (DESCRIPTION.replace(r#","fallbacks":{"1":[1]}"#, ""), "fallbacks"),
        (DESCRIPTION.replace(r#","expert_tokens":{"1":[3,0]}"#, ""), "expert_tokens"),
        (DESCRIPTION.replace(r#""k":2,"#, ""), "k"),
        // Wrong values.
        (DESCRIPTION.replace(r#""ccq-calibration""#, r#""ccq-calib""#), "format"),
        (DESCRIPTION.replace(r#""version":1"#, r#""version":2"#), "version"),
        (DESCRIPTION.replace(r#"{"1":[3,0]}"#, r#"{"one":[3,0]}"#), "in field `expert_tokens`: invalid value"),
        (DESCRIPTION.replace(r#""fell_back":true"#, r#""fell_back":"yes""#), "field `inputs.a.fell_back`: invalid type: string \"yes\""),
        ("not json".to_string(), "expected"),
    ] {
        assert_ne!(description, DESCRIPTION, "{field}");
        stats_file(&path, &description);
        let err = Stats::read(&path).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(field), "{field}: {msg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
