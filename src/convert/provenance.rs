//! The provenance record of a conversion ([`crate::format::provenance`]): built from the plan,
//! the source's headers and the options.

use super::plan::{Plan, PlannedTensor};
use super::run::ConvertOptions;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::format::provenance::{
    Provenance, ProvenanceSource, ProvenanceSourceTensor, ProvenanceTensor, PROVENANCE_FORMAT, PROVENANCE_VERSION,
};
use serde_json::json;

/// The record for a conversion of `ckpt` by `plan`.
pub fn provenance_of(ckpt: &Checkpoint, plan: &Plan, options: &ConvertOptions) -> Result<Provenance> {
    let mut recorded = json!({"effort": options.effort.name()});
    if let (Some(map), Some(extra)) = (recorded.as_object_mut(), options.provenance_options.as_object()) {
        map.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(Provenance {
        format: PROVENANCE_FORMAT.to_string(),
        version: PROVENANCE_VERSION,
        ccq_version: env!("CARGO_PKG_VERSION").to_string(),
        layout: plan.layout,
        source: ProvenanceSource { naming: plan.naming, config: ckpt.config().cloned() },
        options: recorded,
        tensors: plan.tensors.iter().map(|t| tensor_record(ckpt, plan, t)).collect::<Result<_>>()?,
    })
}

/// The record of one planned tensor.
fn tensor_record(ckpt: &Checkpoint, plan: &Plan, t: &PlannedTensor) -> Result<ProvenanceTensor> {
    let name = match t.choice {
        Some(_) => plan.layout.packed_prefix(&t.name).to_string(),
        None => t.outputs[0].name.clone(),
    };
    let mut sources = Vec::with_capacity(t.sources.len());
    for s in &t.sources {
        let e = ckpt.get(s)?;
        let width = match e.shape.len() {
            2 if t.transpose => e.shape[0],
            2 => e.shape[1],
            _ => 1,
        };
        sources.push(ProvenanceSourceTensor { name: s.clone(), width, dtype: e.dtype, shape: e.shape.clone() });
    }
    Ok(ProvenanceTensor { name, scheme: t.choice, k: t.k, n: t.n, transposed: t.transpose, params: t.choice.map(|k| k.params()), sources })
}
