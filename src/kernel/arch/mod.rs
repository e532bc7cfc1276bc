//! Instruction-set-specific kernels, selected at run time; the portable code in the format
//! files is the fallback and stays the specification's fast twin.

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// Whether the AVX-512 WINT2 kernel can run on this CPU (AVX-512 F + BW + BF16).
#[inline]
pub(crate) fn has_wint2_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the lookup-based WINT2 `m = 1` kernel can run (the above plus AVX-512 VBMI).
#[inline]
pub(crate) fn has_wint2_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_wint2_avx512() && is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
