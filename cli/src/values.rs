//! The closed sets of flag values, as clap value types: each converts into the library's own
//! type. Scheme names are not listed here: [`scheme_choice`] takes them from the library's
//! registry, so that a new scheme needs no change to the CLI.

use ccq::calibrate::{Hessian, Weighting};
use ccq::convert::policy::{choice_names, parse_choice, Choice};
use ccq::convert::{OutputLayout, Preset};
use ccq::layout::Naming;
use ccq::scheme::Effort;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::ValueEnum;

/// Parses a scheme name (`none` or a scheme of [`ccq::SchemeKind::ALL`]); `--help` and errors
/// list the names.
pub fn scheme_choice() -> impl TypedValueParser<Value = Choice> {
    PossibleValuesParser::new(choice_names()).map(|name| parse_choice(&name).expect("the parser accepts registry names only"))
}

/// Parses a kernel path name (`portable`, `avx2`, ... of [`ccq::kernel::KernelPath::ALL`]).
pub fn kernel_path() -> impl TypedValueParser<Value = ccq::kernel::KernelPath> {
    use ccq::kernel::KernelPath;
    PossibleValuesParser::new(KernelPath::ALL.map(KernelPath::name))
        .map(|name| KernelPath::parse(&name).expect("the parser accepts path names only"))
}

/// `ccq quantize --preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// Dense wint8; experts wint4 up to --w4-end-layer, WINT2 after (Baidu's release).
    #[value(name = "fastdeploy-w4w2")]
    FastdeployW4W2,
    /// Dense wint8; experts WINT2.
    #[value(name = "wint2-experts")]
    Wint2Experts,
    /// Every linear layer wint4.
    #[value(name = "wint4")]
    Wint4,
    /// Every linear layer wint8.
    #[value(name = "wint8")]
    Wint8,
}

impl PresetArg {
    /// The library's preset; `w4_end_layer` applies to `fastdeploy-w4w2`.
    pub fn preset(self, w4_end_layer: usize) -> Preset {
        match self {
            PresetArg::FastdeployW4W2 => Preset::FastdeployW4W2 { w4_end_layer },
            PresetArg::Wint2Experts => Preset::Wint2Experts,
            PresetArg::Wint4 => Preset::Wint4,
            PresetArg::Wint8 => Preset::Wint8,
        }
    }
}

/// WINT2 encoder effort (`--effort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EffortArg {
    /// Fastest.
    #[value(name = "default")]
    Default,
    /// Slower, lower error.
    #[value(name = "medium")]
    Medium,
    /// Slower still (about 0.4 M weights/s/core).
    #[value(name = "high")]
    High,
    /// Slowest, lowest error (about 0.1 M weights/s/core).
    #[value(name = "max")]
    Max,
}

impl From<EffortArg> for Effort {
    fn from(e: EffortArg) -> Effort {
        match e {
            EffortArg::Default => Effort::Default,
            EffortArg::Medium => Effort::Medium,
            EffortArg::High => Effort::High,
            EffortArg::Max => Effort::Max,
        }
    }
}

/// `ccq quantize --layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// FastDeploy's layout of Baidu's 2-bit release (ERNIE 4.5 only).
    #[value(name = "fastdeploy")]
    Fastdeploy,
    /// The source's own names and orientation, any model.
    #[value(name = "native")]
    Native,
}

impl From<LayoutArg> for OutputLayout {
    fn from(l: LayoutArg) -> OutputLayout {
        match l {
            LayoutArg::Fastdeploy => OutputLayout::FastDeploy,
            LayoutArg::Native => OutputLayout::Native,
        }
    }
}

/// How calibration tokens are weighted (`--weighting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightingArg {
    /// Every token counts 1.
    #[value(name = "uniform")]
    Uniform,
    /// An expert's token counts its routing weight.
    #[value(name = "gate")]
    Gate,
}

impl From<WeightingArg> for Weighting {
    fn from(w: WeightingArg) -> Weighting {
        match w {
            WeightingArg::Uniform => Weighting::Uniform,
            WeightingArg::Gate => Weighting::Gate,
        }
    }
}

/// Which second moments `ccq calibrate` records (`--hessian`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HessianArg {
    /// Per-channel sums of squares.
    #[value(name = "diag")]
    Diag,
    /// Also X^T X.
    #[value(name = "full")]
    Full,
}

impl From<HessianArg> for Hessian {
    fn from(h: HessianArg) -> Hessian {
        match h {
            HessianArg::Diag => Hessian::Diag,
            HessianArg::Full => Hessian::Full,
        }
    }
}

/// Tensor naming of `ccq synth` (`--naming`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NamingArg {
    /// model.*, linear weights [out, in].
    #[value(name = "pytorch")]
    Pytorch,
    /// ernie.*, linear weights [in, out].
    #[value(name = "paddle")]
    Paddle,
}

impl From<NamingArg> for Naming {
    fn from(n: NamingArg) -> Naming {
        match n {
            NamingArg::Pytorch => Naming::Pytorch,
            NamingArg::Paddle => Naming::Paddle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: ValueEnum>() -> Vec<String> {
        T::value_variants().iter().map(|v| v.to_possible_value().unwrap().get_name().to_string()).collect()
    }

    /// The spellings are the library's own names, every value of the library's lists once.
    #[test]
    fn spellings_match_the_library() {
        assert_eq!(names::<PresetArg>(), Preset::NAMES);
        for p in PresetArg::value_variants() {
            assert_eq!(p.preset(3).name(), p.to_possible_value().unwrap().get_name());
        }
        assert_eq!(names::<EffortArg>(), Effort::ALL.map(Effort::name));
        for e in EffortArg::value_variants() {
            assert_eq!(Effort::from(*e).name(), e.to_possible_value().unwrap().get_name());
        }
        for l in LayoutArg::value_variants() {
            assert_eq!(OutputLayout::from(*l).name(), l.to_possible_value().unwrap().get_name());
        }
        assert_eq!(names::<WeightingArg>(), ["uniform", "gate"]);
        assert_eq!(names::<HessianArg>(), ["diag", "full"]);
        assert_eq!(names::<NamingArg>(), ["pytorch", "paddle"]);
    }

    #[test]
    fn schemes_come_from_the_registry() {
        let cmd = clap::Command::new("t");
        let parser = scheme_choice();
        for name in choice_names() {
            let choice = parser.parse_ref(&cmd, None, std::ffi::OsStr::new(name)).unwrap();
            assert_eq!(ccq::convert::policy::choice_name(choice), name);
        }
        assert!(parser.parse_ref(&cmd, None, std::ffi::OsStr::new("wint3")).is_err());
    }
}
