//! ccq: convolutional code quantization for Mixture-of-Experts checkpoints.

pub mod dtype;
pub use dtype::Dtype;
