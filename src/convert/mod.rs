//! Conversion: streaming an original checkpoint into a quantized one.
//!
//! [`plan`] decides, from headers alone, every output tensor (its sources, scheme and stored
//! components) and the shard files; [`policy`] holds the presets and overrides that choose
//! schemes; [`run`] streams tensors read -> convert -> encode -> write, one at a time, into a
//! temporary directory that is renamed into place only when complete, and can resume an
//! interrupted run; [`fastdeploy`] writes what FastDeploy's loader needs besides the tensors.

pub mod fastdeploy;
pub mod plan;
pub mod policy;
pub mod run;

pub use plan::{OutputLayout, Plan, PlanOptions, PlannedTensor, Refusal};
pub use policy::{Choice, Policy, Preset, Rule};
pub use run::{convert, ConvertOptions, Progress, Summary};

use crate::scheme::{Effort, Scheme, Wint2, Wint4, Wint8};
use crate::SchemeKind;

/// The scheme implementation for a kind, with default settings.
pub fn scheme_for(kind: SchemeKind) -> Box<dyn Scheme> {
    scheme_with_effort(kind, Effort::default())
}

/// The scheme implementation for a kind; `effort` applies to WINT2's encoder.
pub fn scheme_with_effort(kind: SchemeKind, effort: Effort) -> Box<dyn Scheme> {
    match kind {
        SchemeKind::Wint2 => Box::new(Wint2 { effort, ..Wint2::default() }),
        SchemeKind::Wint4 => Box::new(Wint4::default()),
        SchemeKind::Wint8 => Box::new(Wint8::default()),
    }
}
