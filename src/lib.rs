//! ccq: convolutional code quantization for Mixture-of-Experts checkpoints.
//!
//! The crate is laid out by concept:
//! - [`json`]: the JSON files ccq reads, typed, with problems naming the field or position;
//! - [`checkpoint`]: reading (and writing) safetensors checkpoints, streamed tensor by tensor;
//! - [`layout`]: what each tensor of a model is (expert, router, attention, ...);
//! - [`format`](mod@format): the output layouts (FastDeploy, native) and the provenance record, in both
//!   directions: how a quantized checkpoint names, orients and describes its tensors;
//! - [`scheme`]: the packed weight formats (WINT2, ...), encode and decode side by side, and what
//!   an encoder minimises ([`scheme::Importance`]: none, diagonal, or a full Hessian with error
//!   feedback, [`scheme::feedback`]);
//! - [`kernel`]: dequantize and matmul straight from packed bytes (reference and fast paths);
//! - [`convert`]: planning and streaming a checkpoint into a quantized one;
//! - [`request`]: what `ccq quantize` is asked for, turned into plan, calibration and conversion
//!   options (above both [`convert`] and [`calibrate`]);
//! - [`quantized`]: opening a quantized checkpoint (either layout) to list, dequantize or
//!   hand its packed tensors to a kernel, and writing it back as a dequantized checkpoint;
//! - [`tokens`]: token sequences from id files or from text through the model's tokenizer;
//! - [`model`]: the decoder forward pass of ERNIE 4.5, Qwen2/3-MoE, Mixtral and dense Llama
//!   models (layer by layer, on original or quantized weights), with routing and activation
//!   hooks, and `ccq eval`'s perplexity / KL figures;
//! - [`calibrate`]: per-expert activation statistics from the forward pass, and the
//!   calibrated layer-by-layer conversion ([`calibrate::layerwise`]);
//! - [`inspect`]: a header-only summary of a checkpoint;
//! - [`verify`]: error figures, thresholds and reports comparing a quantized checkpoint with
//!   its original;
//! - [`bench`](mod@bench): quality and speed measurements behind `ccq bench`;
//! - [`synth`], [`rng`]: deterministic synthetic data for tests and benchmarks.
#![deny(missing_docs)]

pub mod bench;
pub mod calibrate;
pub mod checkpoint;
pub mod convert;
pub mod dtype;
pub mod error;
pub mod format;
pub mod inspect;
pub mod json;
pub mod kernel;
pub mod layout;
pub mod model;
pub mod quantized;
pub mod request;
pub mod rng;
pub mod scheme;
pub mod synth;
pub mod tokens;
pub mod verify;

/// Scratch directories of the unit tests (shared with the integration tests).
#[cfg(test)]
#[path = "../tests/support/scratch.rs"]
mod test_support;

pub use checkpoint::{Checkpoint, ReadOptions, TensorEntry};
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use scheme::{Component, Packed, Scheme, SchemeError, SchemeKind};
