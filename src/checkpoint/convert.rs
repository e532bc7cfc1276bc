//! Conversion of stored element bytes to f32, in bounded chunks.

use crate::Dtype;
use half::{bf16, f16};

/// How a tensor's bytes become f32 values, decided once per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// IEEE f32, copied.
    F32,
    /// IEEE f16, widened exactly.
    F16,
    /// bfloat16 (or U16 holding bf16 payload when asked for), widened exactly.
    Bf16,
}

impl Conversion {
    /// The conversion for `dtype`; `u16_as_bf16` reads U16 as bf16 payload (Paddle's
    /// converter writes bf16 weights that way). `None` when the dtype is not convertible.
    pub fn for_dtype(dtype: Dtype, u16_as_bf16: bool) -> Option<Conversion> {
        match dtype {
            Dtype::F32 => Some(Conversion::F32),
            Dtype::F16 => Some(Conversion::F16),
            Dtype::BF16 => Some(Conversion::Bf16),
            Dtype::U16 if u16_as_bf16 => Some(Conversion::Bf16),
            _ => None,
        }
    }

    /// Bytes per element read.
    pub fn element_size(self) -> usize {
        match self {
            Conversion::F32 => 4,
            Conversion::F16 | Conversion::Bf16 => 2,
        }
    }

    /// Converts `bytes` (little-endian, exactly `out.len()` elements) into `out`.
    pub fn convert(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.element_size());
        match self {
            Conversion::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Conversion::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Conversion::Bf16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_each_float_type() {
        let mut out = [0.0f32; 2];
        let f32_bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        Conversion::F32.convert(&f32_bytes, &mut out);
        assert_eq!(out, [1.5, -2.0]);
        let f16_bytes: Vec<u8> = [0x3c00u16, 0xc000].iter().flat_map(|v| v.to_le_bytes()).collect();
        Conversion::F16.convert(&f16_bytes, &mut out);
        assert_eq!(out, [1.0, -2.0]);
        let bf16_bytes: Vec<u8> = [0x3f80u16, 0xbfc0].iter().flat_map(|v| v.to_le_bytes()).collect();
        Conversion::Bf16.convert(&bf16_bytes, &mut out);
        assert_eq!(out, [1.0, -1.5]);
    }

    #[test]
    fn u16_is_bf16_only_when_asked() {
        assert_eq!(Conversion::for_dtype(Dtype::U16, false), None);
        assert_eq!(Conversion::for_dtype(Dtype::U16, true), Some(Conversion::Bf16));
        assert_eq!(Conversion::for_dtype(Dtype::I8, true), None);
    }
}
