//! Non-finite values (issue 14, defect 3): a NaN in a tensor that is carried through (a norm)
//! used to pass `quantize`, and `eval` then printed `ppl NaN, KL NaN` with exit 0.

use super::{ccq, copy_fixture, fails_with, repo, stdout, temp_dir};
use std::path::Path;

/// A copy of the PyTorch fixture in `dir` whose `tensor` has a NaN as its element 3.
fn with_nan(dir: &Path, tensor: &str) {
    copy_fixture("ernie45-tiny-pt", dir);
    let src = Path::new(&repo("fixtures/ernie45-tiny-pt")).to_path_buf();
    let ckpt = ccq::Checkpoint::open(&src).unwrap();
    let e = ckpt.get(tensor).unwrap();
    assert_eq!(e.dtype, ccq::Dtype::BF16);
    let file = dir.join(ckpt.shards()[e.shard].path.file_name().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let at = e.byte_range.0 as usize + 3 * 2;
    bytes[at..at + 2].copy_from_slice(&[0xc0, 0x7f]); // bf16 NaN
    std::fs::write(&file, bytes).unwrap();
}

#[test]
fn nan_in_a_carried_tensor_is_refused_by_quantize_and_eval() {
    let dir = temp_dir("nonfinite");
    let bad = dir.join("bad");
    let norm = "model.layers.1.post_attention_layernorm.weight";
    with_nan(&bad, norm);
    let (bad_s, out) = (bad.display().to_string(), dir.join("q").display().to_string());
    let err = super::refused(&["quantize", &bad_s, "-o", &out, "--layout", "native", "--quiet"]);
    assert!(err.contains(&format!("tensor '{norm}': element 3 is NaN")) && err.contains("the unfinished output stays in"), "{err}");
    assert!(!Path::new(&out).exists());
    // Other options than the failed run's: its work directory is discarded only on request.
    fails_with(
        &["quantize", &bad_s, "-o", &out, "--layout", "native", "--quiet", "--allow-non-finite"],
        "pass --resume to continue it, or --force",
    );
    stdout(&ccq(&["quantize", &bad_s, "-o", &out, "--layout", "native", "--quiet", "--allow-non-finite", "--force"]));
    let fd = dir.join("fd").display().to_string();
    fails_with(&["quantize", &bad_s, "-o", &fd, "--quiet"], "element 3 is NaN");
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, "[[1, 2, 3, 4, 5, 6]]").unwrap();
    let src = repo("fixtures/ernie45-tiny-pt");
    fails_with(&["eval", &src, &bad_s, "--tokens", &tokens.display().to_string(), "--quiet"], "element 3 is NaN");
}
