//! ccq: convolutional code quantization for Mixture-of-Experts checkpoints.

pub mod dtype;
pub use dtype::Dtype;
pub mod bench;
pub mod scheme;
pub use scheme::{Component, Packed, Scheme, SchemeError, SchemeKind};
