//! Calibration statistics against the forward pass's own routing and rows.

use super::*;
use crate::convert::run::TensorImportance;
use crate::convert::{self, ConvertOptions, OutputLayout, Plan, PlanOptions, Policy, Preset};
use crate::layout::ModelLayout;
use crate::model::source::OriginalWeights;
use crate::model::{forward, RoutingRecorder, WeightSource};
use crate::quantized::QuantizedCheckpoint;
use crate::verify::{verify, VerifyOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let path = std::env::temp_dir().join(format!("ccq-calib-{}.safetensors", std::process::id()));
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

fn quantize(ckpt: &Checkpoint, tag: &str, importance: Option<Arc<BTreeMap<String, TensorImportance>>>) -> (PathBuf, Plan) {
    let model = ModelLayout::of(ckpt).unwrap();
    let policy = Policy { preset: Preset::from_name("wint2-experts", 0).unwrap(), rules: Vec::new() };
    let plan =
        Plan::build(ckpt, &model, &PlanOptions { layout: OutputLayout::Native, policy: &policy, fallback: None, shard_size: u64::MAX })
            .unwrap();
    let dir = std::env::temp_dir().join(format!("ccq-calib-q-{tag}-{}", std::process::id()));
    let opts = ConvertOptions {
        effort: Default::default(),
        force: true,
        resume: false,
        fingerprint_extra: tag.to_string(),
        stop_after_shards: None,
        provenance_options: json!({}),
        importance,
        damp: crate::scheme::importance::DEFAULT_DAMP,
        layerwise: None,
    };
    let config = ckpt.config().cloned().unwrap();
    convert::convert(ckpt, &plan, &dir, &opts, &|w: &Path| convert::run::write_json(&w.join("config.json"), &config), &mut |_| {}).unwrap();
    (dir, plan)
}

#[test]
fn calibrated_quantization_lowers_the_weighted_error() {
    let ckpt = tiny();
    let stats = calibrate(&ckpt, &sequences(), CalibOptions::default(), 1 << 20, &mut |_| {}).unwrap();
    let (plain, plan) = quantize(&ckpt, "plain", None);
    let importance = stats.importance_for_plan(Path::new("stats"), &plan).unwrap();
    assert!(importance.values().all(|i| matches!(i, TensorImportance::Diagonal(_))));
    let (calib, _) = quantize(&ckpt, "calib", Some(Arc::new(importance)));
    assert_ne!(std::fs::read(plain.join("model.safetensors")).unwrap(), std::fs::read(calib.join("model.safetensors")).unwrap());
    let stats = Arc::new(stats);
    let options = VerifyOptions { calibration: Some((stats, PathBuf::from("stats"))), ..VerifyOptions::default() };
    let mean = |dir: &Path| {
        let r = verify(&ckpt, &QuantizedCheckpoint::open(dir).unwrap(), &options, &mut |_, _| {}).unwrap();
        assert!(r.probe.contains("calibration statistics"));
        r.tensors.iter().map(|t| t.output_rel_err).sum::<f64>() / r.tensors.len() as f64
    };
    let (e_plain, e_calib) = (mean(&plain), mean(&calib));
    assert!(e_calib < e_plain, "calibrated {e_calib} vs plain {e_plain}");
    std::fs::remove_dir_all(plain).unwrap();
    std::fs::remove_dir_all(calib).unwrap();
}

#[test]
fn malformed_statistics_files_are_errors_not_panics() {
    let dir = std::env::temp_dir().join(format!("ccq-calib-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
    std::fs::remove_dir_all(&dir).unwrap();
}
