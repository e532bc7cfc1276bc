//! Benchmark support: deterministic fixtures and the quality/speed tables of the schemes.

pub mod rng;
pub mod wint2;
