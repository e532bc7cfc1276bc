//! Instruction-set-specific kernels, selected at run time; the portable code in the format
//! files is the fallback and stays the specification's fast twin.
//!
//! [`KernelPath`] names the instruction-set levels, narrowest first. A call runs at most the
//! level it is given, clamped to what the CPU has ([`KernelPath::detected`]); by default
//! that is [`KernelPath::default_cap`]: the detected level, or a narrower one named by the
//! environment variable `CCQ_KERNEL` (so a machine with a wide path still runs, and tests,
//! the narrower ones).

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_per_channel;

use std::sync::OnceLock;

/// An instruction-set level of the kernels, narrowest first. Each level includes the ones
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelPath {
    /// Plain Rust (auto-vectorised for the build's baseline target).
    Portable,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F + BW.
    Avx512,
    /// AVX-512 F + BW + BF16 (the WINT2 decode kernel).
    Avx512Bf16,
    /// AVX-512 F + BW + BF16 + VBMI (the WINT2 `m = 1` lookup kernel).
    Avx512Vbmi,
}

/// The environment variable that caps the default path (`portable`, `avx2`, `avx512`,
/// `avx512-bf16`, `avx512-vbmi`).
pub const KERNEL_ENV: &str = "CCQ_KERNEL";

impl KernelPath {
    /// Every level, narrowest first.
    pub const ALL: [KernelPath; 5] =
        [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Avx512Bf16, KernelPath::Avx512Vbmi];

    /// The name `CCQ_KERNEL` and `ccq bench --kernel` take.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
            KernelPath::Avx512Bf16 => "avx512-bf16",
            KernelPath::Avx512Vbmi => "avx512-vbmi",
        }
    }

    /// The level called `name`.
    pub fn parse(name: &str) -> Option<KernelPath> {
        KernelPath::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether this CPU has the level's instructions.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = || is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            match self {
                KernelPath::Portable => true,
                KernelPath::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                KernelPath::Avx512 => KernelPath::Avx2.supported() && avx512(),
                KernelPath::Avx512Bf16 => KernelPath::Avx512.supported() && is_x86_feature_detected!("avx512bf16"),
                KernelPath::Avx512Vbmi => KernelPath::Avx512Bf16.supported() && is_x86_feature_detected!("avx512vbmi"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == KernelPath::Portable
        }
    }

    /// The widest level this CPU has.
    pub fn detected() -> KernelPath {
        static DETECTED: OnceLock<KernelPath> = OnceLock::new();
        *DETECTED.get_or_init(|| KernelPath::ALL.into_iter().rev().find(|p| p.supported()).unwrap_or(KernelPath::Portable))
    }

    /// Every level this CPU has, narrowest first.
    pub fn available() -> Vec<KernelPath> {
        KernelPath::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The level [`crate::kernel::matmul`] runs: [`KernelPath::detected`], or the narrower
    /// level `CCQ_KERNEL` names (an unknown name, or a wider level, leaves the detected one).
    pub fn default_cap() -> KernelPath {
        static CAP: OnceLock<KernelPath> = OnceLock::new();
        *CAP.get_or_init(|| {
            let named = std::env::var(KERNEL_ENV).ok().and_then(|v| KernelPath::parse(v.trim()));
            named.map_or(KernelPath::detected(), |p| p.min(KernelPath::detected()))
        })
    }

    /// `self`, narrowed to what this CPU has.
    pub fn clamped(self) -> KernelPath {
        self.min(KernelPath::detected())
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
