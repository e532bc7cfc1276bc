//! ccq: convolutional code quantization for Mixture-of-Experts checkpoints.
//!
//! The crate is laid out by concept:
//! - [`checkpoint`]: reading (and writing) safetensors checkpoints, streamed tensor by tensor;
//! - [`layout`]: what each tensor of a model is (expert, router, attention, ...);
//! - [`inspect`]: a header-only summary of a checkpoint;
//! - [`synth`]: deterministic synthetic checkpoints for tests and benchmarks.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod dtype;
pub mod error;

pub use checkpoint::{Checkpoint, ReadOptions, TensorEntry};
pub use dtype::Dtype;
pub use error::{Error, Result};
pub mod layout;
pub mod inspect;
pub mod rng;
pub mod synth;
