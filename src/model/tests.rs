//! The forward pass against numpy golden values, across namings and layouts, and its errors.

use super::eval::evaluate;
use super::source::{OriginalWeights, QuantizedWeights};
use super::*;
use crate::convert::{self, ConvertOptions, OutputLayout, Plan, PlanOptions, Policy, Preset, Rule};
use crate::layout::ModelLayout;
use crate::quantized::QuantizedCheckpoint;
use crate::Checkpoint;
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// `fixtures/ernie45-tiny-pt` converted with `preset` and `overrides` into `layout`.
fn quantize(tag: &str, layout: OutputLayout, preset: &str, overrides: &[&str]) -> crate::test_support::Scratch {
    let src = Checkpoint::open(fixture("ernie45-tiny-pt")).unwrap();
    let model = ModelLayout::of(&src).unwrap();
    let rules = overrides.iter().map(|r| Rule::parse(r).unwrap()).collect();
    let policy = Policy { preset: Preset::parse(preset, 0).unwrap(), rules };
    let options = PlanOptions { layout, policy: &policy, fallback: None, shard_size: u64::MAX };
    let plan = Plan::build(&src, &model, &options).unwrap();
    let dir = crate::test_support::scratch(&format!("model-{tag}"), true);
    let opts = ConvertOptions {
        effort: Default::default(),
        force: true,
        resume: false,
        fingerprint_extra: String::new(),
        stop_after_shards: None,
        provenance_options: json!({}),
        ..ConvertOptions::default()
    };
    convert::convert(&src, &plan, &dir, &opts, &mut |_| {}).unwrap();
    dir
}

/// (layer, experts per token, weights per token).
type GoldenRouting = (usize, Vec<Vec<usize>>, Vec<Vec<f64>>);

struct Golden {
    sequences: Vec<Vec<u32>>,
    /// Per sequence: `[len][vocab]`.
    logits: Vec<Vec<Vec<f64>>>,
    /// Per sequence, per MoE layer.
    routing: Vec<Vec<GoldenRouting>>,
}

fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).unwrap()
}

fn golden() -> Golden {
    golden_of("forward-golden.json")
}

fn golden_of(file: &str) -> Golden {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let seqs = v["sequences"].as_array().unwrap();
    Golden {
        sequences: seqs.iter().map(|s| parse(&s["tokens"])).collect(),
        logits: seqs.iter().map(|s| parse(&s["logits"])).collect(),
        routing: seqs
            .iter()
            .map(|s| {
                s["routing"].as_array().unwrap().iter().map(|r| (parse(&r["layer"]), parse(&r["experts"]), parse(&r["weights"]))).collect()
            })
            .collect(),
    }
}

fn run(source: &dyn WeightSource, sequences: &[Vec<u32>]) -> (Vec<f32>, Vec<Routing>) {
    let mut rec = RoutingRecorder::default();
    let logits = forward(source, sequences, &mut rec).unwrap();
    (logits, rec.routings)
}

/// Logits within 1e-4 of the row's largest magnitude; routing choices exact; routing
/// weights within 1e-5. All sequences run as one batch.
#[test]
fn matches_numpy_golden() {
    let ckpt = Checkpoint::open(fixture("ernie45-tiny-pt")).unwrap();
    assert_matches_golden(&OriginalWeights::new(&ckpt).unwrap(), &golden(), 2);
}

/// Each family's tiny checkpoint against its own numpy forward pass
/// (`fixtures/make_family_fixtures.py`), with the same tolerances; the largest deviation
/// seen is printed (`cargo test -- --nocapture`).
#[test]
fn families_match_numpy_golden() {
    for (family, architecture, moe_layers) in [
        ("qwen2-moe", Architecture::Qwen2Moe, 2),
        ("qwen3-moe", Architecture::Qwen3Moe, 1),
        ("mixtral", Architecture::Mixtral, 2),
        ("llama", Architecture::Llama, 0),
    ] {
        let ckpt = Checkpoint::open(fixture(&format!("{family}-tiny"))).unwrap();
        let source = OriginalWeights::new(&ckpt).unwrap();
        assert_eq!(source.config().architecture, architecture);
        let worst = assert_matches_golden(&source, &golden_of(&format!("forward-golden-{family}.json")), moe_layers);
        println!("{family}: largest logit deviation {worst:.2e} of the row's largest magnitude");
    }
}

/// Checks `source` against golden values; returns the largest relative logit deviation.
fn assert_matches_golden(source: &dyn WeightSource, g: &Golden, moe_layers: usize) -> f64 {
    let vocab = source.config().vocab;
    let (logits, routings) = run(source, &g.sequences);
    assert_eq!(routings.len(), moe_layers);
    let mut worst = 0.0f64;
    let mut row = 0;
    for (s, seq) in g.sequences.iter().enumerate() {
        for t in 0..seq.len() {
            let want = &g.logits[s][t];
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (j, w) in want.iter().enumerate() {
                let got = logits[(row + t) * vocab + j] as f64;
                worst = worst.max((got - w).abs() / scale);
                assert!((got - w).abs() <= 1e-4 * scale, "sequence {s} position {t} logit {j}: {got} vs {w}");
            }
            for (r, (layer, experts, weights)) in routings.iter().zip(&g.routing[s]) {
                assert_eq!(r.layer, *layer);
                let k = r.top_k;
                assert_eq!(&r.experts[(row + t) * k..(row + t + 1) * k], experts[t].as_slice(), "layer {layer} seq {s} pos {t}");
                for (a, b) in r.weights[(row + t) * k..(row + t + 1) * k].iter().zip(&weights[t]) {
                    assert!((*a as f64 - b).abs() <= 1e-5, "layer {layer} seq {s} pos {t}: weight {a} vs {b}");
                }
            }
        }
        row += seq.len();
    }
    worst
}

/// The same weights in Paddle naming (fused qkv / up_gate, [in, out]; written by the
/// FastDeploy layout with nothing quantized) give bit-identical logits and routing, read
/// as an original checkpoint and as a quantized one; so does the native layout.
#[test]
fn namings_and_layouts_agree_bit_for_bit() {
    let g = golden();
    let pt = Checkpoint::open(fixture("ernie45-tiny-pt")).unwrap();
    let want = run(&OriginalWeights::new(&pt).unwrap(), &g.sequences);
    let paddle_dir = quantize("paddle-none", OutputLayout::FastDeploy, "wint8", &[".=none"]);
    let paddle = Checkpoint::open(&paddle_dir).unwrap();
    assert!(paddle.get("ernie.layers.0.self_attn.qkv_proj.weight").is_ok());
    assert_eq!(run(&OriginalWeights::new(&paddle).unwrap(), &g.sequences), want);
    let q = QuantizedCheckpoint::open(&paddle_dir).unwrap();
    assert_eq!(run(&QuantizedWeights::new(&q).unwrap(), &g.sequences), want);
    let native_dir = quantize("native-none", OutputLayout::Native, "wint8", &[".=none"]);
    let q = QuantizedCheckpoint::open(&native_dir).unwrap();
    assert_eq!(run(&QuantizedWeights::new(&q).unwrap(), &g.sequences), want);
    let report = evaluate(&OriginalWeights::new(&pt).unwrap(), &QuantizedWeights::new(&q).unwrap(), &g.sequences, 16, &mut |_| {}).unwrap();
    assert_eq!((report.kld_mean, report.top1_agreement), (0.0, 1.0));
    assert_eq!(report.ppl_original, report.ppl_quantized);
    assert_eq!(report.tokens, g.sequences.iter().map(|s| s.len() - 1).sum::<usize>());
    std::fs::remove_dir_all(paddle_dir).unwrap();
    std::fs::remove_dir_all(native_dir).unwrap();
}

/// wint8 everywhere, both layouts, through the packed kernels: predictions barely move.
#[test]
fn wint8_moves_predictions_little() {
    let g = golden();
    let pt = Checkpoint::open(fixture("ernie45-tiny-pt")).unwrap();
    let original = OriginalWeights::new(&pt).unwrap();
    for layout in [OutputLayout::FastDeploy, OutputLayout::Native] {
        let dir = quantize(&format!("w8-{layout:?}"), layout, "wint8", &[]);
        let q = QuantizedCheckpoint::open(&dir).unwrap();
        assert!(q.tensors().iter().any(|t| t.scheme == Some(crate::SchemeKind::Wint8)));
        let report = evaluate(&original, &QuantizedWeights::new(&q).unwrap(), &g.sequences, 16, &mut |_| {}).unwrap();
        assert!(report.kld_mean > 0.0 && report.kld_mean < 1e-3, "{layout:?}: {report:?}");
        assert!(report.top1_agreement >= 0.9, "{layout:?}: {report:?}");
        assert!((report.ppl_quantized / report.ppl_original - 1.0).abs() < 0.01, "{layout:?}: {report:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Expert rows reach only the experts routed to, with their token indices and weights.
#[test]
fn observer_sees_routed_rows() {
    #[derive(Default)]
    struct Count {
        expert_rows: std::collections::BTreeMap<(usize, usize), usize>,
        shared_rows: usize,
        routings: Vec<Routing>,
    }
    impl Observer for Count {
        fn on_linear_input(&mut self, r: &LinearRows<'_>) {
            assert_eq!(r.rows.len() % r.k, 0);
            match (r.block, r.input) {
                (Block::Expert(e), LinearInput::GateUp) => {
                    let m = r.rows.len() / r.k;
                    assert_eq!(r.tokens.unwrap().len(), m);
                    assert_eq!(r.gate_weights.unwrap().len(), m);
                    *self.expert_rows.entry((r.layer, e)).or_default() += m;
                }
                (Block::SharedExperts, LinearInput::GateUp) => self.shared_rows += r.rows.len() / r.k,
                _ => {}
            }
        }
        fn on_routing(&mut self, r: &Routing) {
            self.routings.push(r.clone());
        }
    }
    let g = golden();
    let ckpt = Checkpoint::open(fixture("ernie45-tiny-pt")).unwrap();
    let mut count = Count::default();
    forward(&OriginalWeights::new(&ckpt).unwrap(), &g.sequences, &mut count).unwrap();
    let tokens: usize = g.sequences.iter().map(Vec::len).sum();
    assert_eq!(count.shared_rows, 2 * tokens);
    for r in &count.routings {
        for e in 0..4 {
            let routed = r.experts.iter().filter(|&&x| x == e).count();
            assert_eq!(count.expert_rows.get(&(r.layer, e)).copied().unwrap_or(0), routed);
        }
    }
}

#[test]
fn bad_input_is_named_before_work() {
    let ckpt = Checkpoint::open(fixture("ernie45-tiny-pt")).unwrap();
    let source = OriginalWeights::new(&ckpt).unwrap();
    let err = |seqs: &[Vec<u32>]| forward(&source, seqs, &mut NoObserver).unwrap_err().to_string();
    assert_eq!(err(&[]), "no token sequences given");
    assert_eq!(err(&[vec![1], vec![]]), "sequence 1 is empty");
    assert_eq!(err(&[vec![1, 256]]), "sequence 0, position 1: token id 256 is outside the vocabulary (vocab_size 256)");
    assert_eq!(err(&[vec![0; 4097]]), "sequence 0 has 4097 tokens, more than max_position_embeddings (4096)");
    assert!(evaluate(&source, &source, &[vec![3]], 16, &mut |_| {}).unwrap_err().to_string().contains("nothing to predict"));

    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("ernie45-tiny-pt/config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("moe_k");
    let e = ForwardConfig::from_json(&cfg, Path::new("config.json")).unwrap_err().to_string();
    assert_eq!(e, "config.json: config lacks \"moe_k\", which the forward pass needs");
    cfg.as_object_mut().unwrap().remove("moe_num_experts");
    let e = ForwardConfig::from_json(&cfg, Path::new("config.json")).unwrap_err().to_string();
    assert!(e.contains("\"moe_num_experts\""), "{e}");
}

#[test]
fn zero_or_huge_dimensions_are_refused() {
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("ernie45-tiny-pt/config.json")).unwrap()).unwrap();
    for (key, value) in [
        ("hidden_size", serde_json::json!(0)),
        ("vocab_size", serde_json::json!(0)),
        ("intermediate_size", serde_json::json!(0)),
        ("moe_intermediate_size", serde_json::json!(0)),
        ("head_dim", serde_json::json!(1u64 << 62)),
    ] {
        let mut cfg = base.clone();
        cfg[key] = value;
        let e = ForwardConfig::from_json(&cfg, Path::new("config.json")).unwrap_err().to_string();
        assert!(e.contains("positive") || e.contains("too large"), "{key}: {e}");
    }
}

/// A copy of a fixture with its config edited by `edit`.
fn with_config(fixture_name: &str, tag: &str, edit: impl Fn(&mut serde_json::Value)) -> crate::test_support::Scratch {
    let dir = crate::test_support::scratch(&format!("model-config-{tag}"), true);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(fixture(fixture_name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// A config that promises tensors the files lack, or a family ccq does not run, is refused
/// before any weight is read, naming what is wrong.
#[test]
fn incomplete_checkpoints_and_unknown_families_are_named() {
    let dir = with_config("qwen2-moe-tiny", "experts", |c| c["num_experts"] = json!(5));
    let ckpt = Checkpoint::open(&dir).unwrap();
    let e = OriginalWeights::new(&ckpt).unwrap().check_complete().unwrap_err().to_string();
    assert!(e.contains("(8 problem(s))"), "{e}");
    assert!(
        e.contains("model.layers.1.mlp.experts.4.gate_proj.weight is missing; model.layers.1.mlp.experts.4.up_proj.weight is missing"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();

    let dir = with_config("mixtral-tiny", "width", |c| c["intermediate_size"] = json!(96));
    let ckpt = Checkpoint::open(&dir).unwrap();
    let e = OriginalWeights::new(&ckpt).unwrap().check_complete().unwrap_err().to_string();
    assert!(e.contains("model.layers.0.block_sparse_moe.experts.0.w1: stored [128, 128], the config needs [96, 128]"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();

    let dir = with_config("mixtral-tiny", "family", |c| c["model_type"] = json!("deepseek_v3"));
    let ckpt = Checkpoint::open(&dir).unwrap();
    let e = OriginalWeights::new(&ckpt).err().unwrap().to_string();
    assert!(e.ends_with("the forward pass does not support model_type \"deepseek_v3\"; supported: ernie4_5_moe, ernie4_5, qwen2_moe, qwen3_moe, mixtral, llama, mistral, qwen2, qwen3"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();

    let dir = with_config("llama-tiny", "rope", |c| c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0}));
    let ckpt = Checkpoint::open(&dir).unwrap();
    let e = OriginalWeights::new(&ckpt).err().unwrap().to_string();
    assert!(e.ends_with("rope_scaling of type \"llama3\" is not supported by the forward pass"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Mixtral's sliding window bounds the sequences it takes.
#[test]
fn sliding_window_bounds_sequences() {
    let dir = with_config("mixtral-tiny", "window", |c| c["sliding_window"] = json!(8));
    let ckpt = Checkpoint::open(&dir).unwrap();
    let source = OriginalWeights::new(&ckpt).unwrap();
    assert_eq!(source.config().max_sequence(), Some(8));
    let e = forward(&source, &[vec![1; 9]], &mut NoObserver).unwrap_err().to_string();
    assert!(e.contains("more than the sliding attention window (8)"), "{e}");
    assert!(forward(&source, &[vec![1; 8]], &mut NoObserver).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Feeding a sequence a few tokens, then one token at a time through the KV caches gives the
/// logits of the full-sequence forward pass, position by position (1e-4 of the row's largest
/// logit), for every family and for packed weights.
#[test]
fn incremental_decoding_matches_the_full_forward() {
    let w2 = quantize("decode-w2", OutputLayout::Native, "wint2-experts", &[]);
    let families = ["ernie45-tiny-pt", "qwen2-moe-tiny", "qwen3-moe-tiny", "mixtral-tiny", "llama-tiny"];
    let ckpts: Vec<Checkpoint> = families.iter().map(|f| Checkpoint::open(fixture(f)).unwrap()).collect();
    let q = QuantizedCheckpoint::open(&w2).unwrap();
    let mut sources: Vec<(String, Box<dyn WeightSource + '_>)> = Vec::new();
    for (f, c) in families.iter().zip(&ckpts) {
        sources.push((f.to_string(), Box::new(OriginalWeights::new(c).unwrap())));
    }
    sources.push(("ernie45 wint2".to_string(), Box::new(QuantizedWeights::new(&q).unwrap())));
    for (name, source) in &sources {
        let vocab = source.config().vocab;
        let seq: Vec<u32> = (0..13u32).map(|i| (i * 37 + 5) % vocab as u32).collect();
        let full = forward(source.as_ref(), std::slice::from_ref(&seq), &mut NoObserver).unwrap();
        let mut decoder = decode::Decoder::new(source.as_ref()).unwrap();
        let mut stepped = decoder.feed(&seq[..4], true).unwrap();
        for t in 4..seq.len() {
            let last = decoder.feed(&seq[t..t + 1], false).unwrap();
            stepped.extend(last);
        }
        assert_eq!(decoder.positions(), seq.len());
        for (t, (a, b)) in full.chunks_exact(vocab).zip(stepped.chunks_exact(vocab)).enumerate() {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-4 * scale, "{name} position {t}: {worst} of {scale}");
        }
    }
    std::fs::remove_dir_all(w2).unwrap();
}

/// Greedy decoding through the KV caches continues each family's prompt with the tokens the
/// numpy reference chose by running the whole sequence at every step.
#[test]
fn greedy_decoding_matches_numpy() {
    for family in ["qwen2-moe", "qwen3-moe", "mixtral", "llama"] {
        let text = std::fs::read_to_string(fixture(&format!("forward-golden-{family}.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let want: Vec<u32> = parse(&v["greedy"]);
        let ckpt = Checkpoint::open(fixture(&format!("{family}-tiny"))).unwrap();
        let source = OriginalWeights::new(&ckpt).unwrap();
        let mut decoder = decode::Decoder::new(&source).unwrap();
        let greedy = decode::Sampling { temperature: 0.0, top_k: None, top_p: 1.0 };
        let mut tokens = want[..4].to_vec();
        let mut logits = decoder.feed(&tokens, false).unwrap();
        while tokens.len() < want.len() {
            let next = greedy.pick(&logits, &mut crate::rng::Rng::new(0));
            tokens.push(next);
            logits = decoder.feed(&[next], false).unwrap();
        }
        assert_eq!(tokens, want, "{family}");
    }
}

/// Found by the fuzz campaign: `num_hidden_layers` = 2^64 - 1 made `eval`'s config
/// comparison loop for ever before any tensor was read.
#[test]
fn absurd_layer_counts_are_refused_at_once() {
    let dir = with_config("ernie45-tiny-pt", "layers", |c| c["num_hidden_layers"] = json!(u64::MAX));
    let ckpt = Checkpoint::open(&*dir).unwrap();
    let err = OriginalWeights::new(&ckpt).err().expect("refused").to_string();
    assert!(err.contains("ccq runs models of at most 65536 layers"), "{err}");
}
