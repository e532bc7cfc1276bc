//! Integration tests of the checkpoint reader and the layout classifier on real files:
//! the committed fixtures (one written by the official Python `safetensors` library),
//! generated checkpoints, and hand-broken ones.

use ccq::checkpoint::write::{SafetensorsWriter, TensorSpec};
use ccq::inspect::Inspection;
use ccq::layout::Naming;
use ccq::layout::Role;
use ccq::synth::{write_checkpoint, SynthModel, SynthOptions};
use ccq::{Checkpoint, Dtype, Error, ReadOptions};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

#[path = "support/scratch.rs"]
mod scratch;

/// A fresh empty directory, removed when dropped.
fn temp_dir(tag: &str) -> scratch::Scratch {
    scratch::scratch(&format!("reader-{tag}"), true)
}

fn synth(dir: &Path, naming: Naming, shards: usize, u16: bool) {
    let model = SynthModel::preset("tiny").unwrap();
    let options = SynthOptions { naming, shards, seed: 1, sparse: false, bf16_as_u16: u16 };
    write_checkpoint(&model, &options, dir).unwrap();
}

/// Role, layer and expert as an independent reading of an ERNIE name would give them.
fn expected_role(name: &str) -> (Role, Option<usize>, Option<usize>) {
    let fields: Vec<&str> = name.split('.').collect();
    let layer = fields.iter().position(|f| *f == "layers").map(|i| fields[i + 1].parse().unwrap());
    let expert = fields.iter().position(|f| *f == "experts").map(|i| fields[i + 1].parse().unwrap());
    let has = |s: &str| fields.contains(&s);
    let role = if has("experts") {
        match fields[fields.len() - 2] {
            "gate_proj" => Role::ExpertGate,
            "up_proj" => Role::ExpertUp,
            "up_gate_proj" => Role::ExpertUpGate,
            _ => Role::ExpertDown,
        }
    } else if has("shared_experts") {
        Role::SharedExpert
    } else if has("moe_statics") {
        Role::RouterBias
    } else if has("gate") {
        Role::Router
    } else if has("self_attn") {
        Role::Attention
    } else if has("mlp") {
        Role::DenseMlp
    } else if name.ends_with("norm.weight") {
        Role::Norm
    } else if has("embed_tokens") {
        Role::Embedding
    } else {
        Role::LmHead
    };
    (role, layer, expert)
}

fn assert_ernie_roles(path: &Path, tensors: usize) {
    let ckpt = Checkpoint::open(path).unwrap();
    let inspection = Inspection::of(&ckpt).unwrap();
    assert_eq!(inspection.tensors.len(), tensors);
    assert_eq!(inspection.moe_layers, vec![1, 2]);
    assert_eq!(inspection.num_experts, 4);
    for row in &inspection.tensors {
        assert_eq!((row.role, row.layer, row.expert), expected_role(&row.name), "{}", row.name);
    }
}

#[test]
fn python_written_paddle_fixture_is_classified() {
    assert_ernie_roles(&fixture("ernie45-tiny-paddle"), 40);
}

#[test]
fn sharded_pytorch_fixture_is_classified() {
    let path = fixture("ernie45-tiny-pt");
    assert_ernie_roles(&path, 57);
    assert_eq!(Checkpoint::open(&path).unwrap().shards().len(), 2);
}

#[test]
fn python_written_values_match_the_generator() {
    let dir = temp_dir("values");
    synth(&dir, Naming::Paddle, 1, false);
    let ours = Checkpoint::open(&dir).unwrap();
    let theirs = Checkpoint::open(fixture("ernie45-tiny-paddle")).unwrap();
    for t in ours.tensors() {
        assert_eq!(ours.read_f32(&t.name).unwrap(), theirs.read_f32(&t.name).unwrap(), "{}", t.name);
    }
}

#[test]
fn chunked_reads_equal_whole_reads() {
    let ckpt = Checkpoint::open(fixture("ernie45-tiny-pt")).unwrap();
    let name = "model.layers.1.mlp.experts.3.down_proj.weight";
    let whole = ckpt.read_f32(name).unwrap();
    assert_eq!(whole.len(), 128 * 128);
    for chunk in [1, 7, 1000, 1 << 20] {
        let mut joined = Vec::new();
        ckpt.for_each_f32_chunk(name, chunk, |start, values| {
            assert_eq!(start, joined.len());
            assert!(values.len() <= chunk);
            joined.extend_from_slice(values);
            Ok(())
        })
        .unwrap();
        assert_eq!(joined, whole);
    }
    // Both f32 and bf16 tensors convert; bf16 values are exactly representable.
    let router = ckpt.read_f32("model.layers.1.mlp.gate.weight").unwrap();
    assert_eq!(router.len(), 4 * 128);
    assert!(whole.iter().all(|v| half::bf16::from_f32(*v).to_f32() == *v));
}

#[test]
fn u16_is_read_as_bf16_only_when_asked() {
    let plain = temp_dir("u16-plain");
    let u16 = temp_dir("u16");
    synth(&plain, Naming::Paddle, 1, false);
    synth(&u16, Naming::Paddle, 1, true);
    let name = "ernie.layers.1.mlp.experts.0.down_proj.weight";
    let ckpt = Checkpoint::open(&u16).unwrap();
    assert_eq!(ckpt.get(name).unwrap().dtype, Dtype::U16);
    let err = ckpt.read_f32(name).unwrap_err();
    assert!(matches!(err, Error::NotConvertible { dtype: Dtype::U16, .. }), "{err}");
    assert!(err.to_string().contains(name) && err.to_string().contains("model.safetensors"));
    let as_bf16 = Checkpoint::open_with(&u16, ReadOptions { u16_as_bf16: true }).unwrap();
    let expected = Checkpoint::open(&plain).unwrap().read_f32(name).unwrap();
    assert_eq!(as_bf16.read_f32(name).unwrap(), expected);
}

#[test]
fn other_dtypes_are_carried_as_raw_bytes() {
    let dir = temp_dir("raw");
    let path = dir.join("x.safetensors");
    let specs = [TensorSpec::new("ids", Dtype::I64, vec![2])];
    let mut w = SafetensorsWriter::create(&path, &specs, &BTreeMap::new()).unwrap();
    w.write(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    w.finish().unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    let entry = ckpt.get("ids").unwrap();
    assert_eq!(ckpt.raw_bytes(entry).unwrap()[8], 2);
    assert!(matches!(ckpt.read_f32("ids"), Err(Error::NotConvertible { .. })));
    assert!(matches!(ckpt.get("nope"), Err(Error::TensorNotFound { .. })));
}

#[test]
fn files_we_write_are_read_by_the_reference_crate() {
    let dir = temp_dir("reference");
    synth(&dir, Naming::Pytorch, 2, false);
    let ckpt = Checkpoint::open(&dir).unwrap();
    for shard in ckpt.shards() {
        let bytes = std::fs::read(&shard.path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let entry = ckpt.get(&name).unwrap();
            assert_eq!(view.shape(), entry.shape.as_slice());
            assert_eq!(view.data(), ckpt.raw_bytes(entry).unwrap());
        }
    }
}

// ---- bad input: one clear error per case, naming the file (and tensor) -------------------

/// Writes a raw file: 8-byte length, JSON header, then `data`.
fn raw_file(path: &Path, json: &str, data: &[u8]) {
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn open_err(path: &Path) -> String {
    Checkpoint::open(path).unwrap_err().to_string()
}

#[test]
fn corrupt_files_give_errors_naming_file_and_tensor() {
    let dir = temp_dir("corrupt");
    let f = dir.join("bad.safetensors");
    std::fs::write(&f, [1u8, 2]).unwrap();
    assert!(open_err(&f).contains("bad.safetensors: file is 2 bytes, too short"), "{}", open_err(&f));
    raw_file(&f, "{}", b"");
    std::fs::write(&f, &std::fs::read(&f).unwrap()[..9]).unwrap();
    assert!(open_err(&f).contains("runs past the end"), "{}", open_err(&f));
    raw_file(&f, "{not json", b"");
    assert!(open_err(&f).contains("bad.safetensors: header: not valid JSON at byte 1: key must be a string"), "{}", open_err(&f));
    raw_file(&f, r#"{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#, &[0]);
    assert!(open_err(&f).contains("tensor 'w': unknown dtype 'Q9'"));
    raw_file(&f, r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]);
    assert!(open_err(&f).contains("tensor 'w': data ends at byte 16"), "{}", open_err(&f));
    raw_file(
        &f,
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    );
    assert!(open_err(&f).contains("tensor 'b': data_offsets overlap those of tensor 'a'"));
}

#[test]
fn broken_directories_give_errors_naming_what_is_wrong() {
    let dir = temp_dir("dirs");
    synth(&dir, Naming::Pytorch, 2, false);
    let index = dir.join("model.safetensors.index.json");
    let original_index = std::fs::read_to_string(&index).unwrap();

    std::fs::write(dir.join("config.json"), "{ nope").unwrap();
    assert!(open_err(&dir).contains("config.json: not valid JSON"), "{}", open_err(&dir));
    std::fs::write(dir.join("config.json"), "{}").unwrap();

    let missing = original_index.replace("model-00002-of-00002", "model-00009-of-00009");
    std::fs::write(&index, missing).unwrap();
    assert!(open_err(&dir).contains("'model-00009-of-00009.safetensors', which does not exist"));

    let ghost =
        original_index.replacen("\"weight_map\": {", "\"weight_map\": {\n    \"ghost.weight\": \"model-00001-of-00002.safetensors\",", 1);
    std::fs::write(&index, ghost).unwrap();
    let err = open_err(&dir);
    assert!(err.contains("model-00001-of-00002.safetensors") && err.contains("'ghost.weight'"), "{err}");

    std::fs::write(&index, "[]").unwrap();
    assert!(open_err(&dir).contains("model.safetensors.index.json: no \"weight_map\""));

    // The same tensor in two shards.
    std::fs::write(&index, &original_index).unwrap();
    let first = Checkpoint::open(&dir).unwrap();
    let dup = first.tensors().iter().find(|t| t.shard == 0).unwrap().clone();
    let second = first.shards()[1].path.clone();
    let mut specs: Vec<TensorSpec> =
        first.tensors().iter().filter(|t| t.shard == 1).map(|t| TensorSpec::new(&t.name, t.dtype, t.shape.clone())).collect();
    specs.push(TensorSpec::new(&dup.name, dup.dtype, dup.shape.clone()));
    let mut data = Vec::new();
    for t in first.tensors().iter().filter(|t| t.shard == 1) {
        data.extend_from_slice(first.raw_bytes(t).unwrap());
    }
    data.extend_from_slice(first.raw_bytes(&dup).unwrap());
    drop(first);
    let mut w = SafetensorsWriter::create(&second, &specs, &BTreeMap::new()).unwrap();
    w.write(&data).unwrap();
    w.finish().unwrap();
    let err = open_err(&dir);
    assert!(err.contains(&format!("tensor '{}' appears in both", dup.name)), "{err}");

    let empty = temp_dir("empty");
    assert!(open_err(&empty).contains("no model.safetensors"));
    assert!(open_err(&empty.join("missing")).contains("missing"));
}

// ---- property: corrupted files give an error or a correct result, never a panic ---------

fn valid_file_bytes() -> Vec<u8> {
    let dir = temp_dir("prop-src");
    let path = dir.join("m.safetensors");
    let specs = [
        TensorSpec::new("a", Dtype::BF16, vec![2, 3]),
        TensorSpec::new("b", Dtype::F32, vec![4]),
        TensorSpec::new("c", Dtype::U8, vec![5]),
    ];
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut w = SafetensorsWriter::create(&path, &specs, &meta).unwrap();
    w.write(&(0..33u8).collect::<Vec<_>>()).unwrap();
    w.finish().unwrap();
    std::fs::read(path).unwrap()
}

/// Checks what a successful open promises: spans tile the data exactly and match dtype x shape.
fn assert_consistent(ckpt: &Checkpoint, file_len: u64) {
    let mut spans: Vec<(u64, u64)> = ckpt.tensors().iter().map(|t| t.byte_range).collect();
    spans.sort();
    for t in ckpt.tensors() {
        assert_eq!(t.nbytes(), (t.numel() * t.dtype.size()) as u64);
        assert_eq!(ckpt.raw_bytes(t).unwrap().len() as u64, t.nbytes());
    }
    for w in spans.windows(2) {
        assert_eq!(w[0].1, w[1].0);
    }
    if let Some(last) = spans.last() {
        assert_eq!(last.1, file_len);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn corrupted_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid_file_bytes();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = temp_dir("prop");
        let path = dir.join("m.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(ckpt) = Checkpoint::open(&path) {
            assert_consistent(&ckpt, bytes.len() as u64);
            for t in ckpt.tensors() {
                if t.dtype.is_float_source() {
                    prop_assert_eq!(ckpt.read_f32(&t.name).unwrap().len(), t.numel());
                }
            }
        }
    }
}
