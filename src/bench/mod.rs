//! Benchmark support: deterministic fixtures, the quality/speed tables of the schemes, and
//! the header-only speed of `ccq inspect`, the speed of the matmul kernels.

pub mod calibrate;
pub mod feedback;
pub mod generate;
pub mod inspect;
pub mod kernels;
pub mod wint2;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::layout::{ModelLayout, Naming};
use wint2::Dataset;

/// The routed-expert weight matrices of a checkpoint as logical `[in, out]` data sets
/// (PyTorch `[out, in]` weights transposed), keeping those whose input size is a multiple of
/// `k_multiple`, in file order.
pub fn expert_datasets(ckpt: &Checkpoint, k_multiple: usize) -> Result<Vec<Dataset>> {
    let model = ModelLayout::of(ckpt)?;
    let transpose = model.naming == Naming::Pytorch;
    let mut out = Vec::new();
    for t in ckpt.tensors() {
        if !model.classify(&t.name).role.is_routed_expert() || t.shape.len() != 2 {
            continue;
        }
        let (k, n) = if transpose { (t.shape[1], t.shape[0]) } else { (t.shape[0], t.shape[1]) };
        if k % k_multiple.max(1) != 0 {
            continue;
        }
        let w = ckpt.logical_matrix(std::slice::from_ref(&t.name), k, n, transpose)?;
        out.push(Dataset { name: t.name.clone(), k, n, w, importance: None });
    }
    Ok(out)
}
