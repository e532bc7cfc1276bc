//! Conversion: streaming an original checkpoint into a quantized one.
//!
//! [`plan`] decides, from headers alone, every output tensor (its sources, scheme and stored
//! components) and the shard files, asking [`crate::format`] how the output layout names
//! them; [`policy`] holds the presets and overrides that choose schemes; [`run`] streams
//! tensors read -> convert -> encode -> write, one at a time, into a temporary directory that
//! is renamed into place only when complete, and can resume an interrupted run;
//! [`provenance`] builds the record written beside the tensors.

pub mod plan;
pub mod policy;
pub mod provenance;
pub mod run;

pub use plan::{OutputLayout, Plan, PlanOptions, PlannedTensor, Refusal};
pub use policy::{Choice, Policy, Preset, Rule};
pub use run::{convert, ConvertOptions, Progress, Summary};
