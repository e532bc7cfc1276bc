//! The scheme registry: every packed format ccq implements, by kind.
//!
//! A [`SchemeKind`] is the tag stored with a packed matrix; [`SchemeKind::scheme`] gives the
//! implementation that encodes and decodes it, and [`SchemeKind::params`] the parameters a
//! decoder needs beyond the components, which the native layout and the provenance record
//! store and check on reading (a checkpoint decodes with exactly the scheme that wrote it).
//! The matmul kernels pick their view of a kind in `kernel::view`. Adding a scheme means: its
//! file(s) here, one entry below, and its kernel view.

use super::{Effort, Rtn2, Scheme, Wint2, Wint4, Wint8};
use serde_json::{json, Value};
use std::fmt;

/// Which packed format a [`super::Packed`] holds; a runtime tag over the [`Scheme`]
/// implementors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SchemeKind {
    /// CCQ 2-bit: 4 weights per byte through a per-column code map (see [`super::wint2`]).
    Wint2,
    /// Per-output-channel symmetric int8, CUTLASS-interleaved (see [`super::wint8`]).
    Wint8,
    /// Per-output-channel symmetric int4, CUTLASS-interleaved (see [`super::wint4`]).
    Wint4,
    /// 2-bit round-to-nearest, a bf16 scale per 64 rows: the baseline (see [`super::rtn2`]).
    Rtn2,
}

impl SchemeKind {
    /// Every kind ccq implements.
    pub const ALL: [SchemeKind; 4] = [SchemeKind::Wint2, SchemeKind::Wint8, SchemeKind::Wint4, SchemeKind::Rtn2];

    /// The scheme's name: FastDeploy's `quant_type` for the kinds it loads, e.g. `"wint2"`.
    pub fn name(self) -> &'static str {
        match self {
            SchemeKind::Wint2 => "wint2",
            SchemeKind::Wint8 => "wint8",
            SchemeKind::Wint4 => "wint4",
            SchemeKind::Rtn2 => "rtn2",
        }
    }

    /// Parses a name written by [`SchemeKind::name`]; `None` if unknown.
    pub fn from_name(name: &str) -> Option<SchemeKind> {
        SchemeKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The implementation, encoding at `effort` (which only WINT2's encoder reads; decoding
    /// does not depend on it).
    pub fn scheme(self, effort: Effort) -> Box<dyn Scheme> {
        match self {
            SchemeKind::Wint2 => Box::new(Wint2 { effort }),
            SchemeKind::Wint4 => Box::new(Wint4::default()),
            SchemeKind::Wint8 => Box::new(Wint8::default()),
            SchemeKind::Rtn2 => Box::new(Rtn2),
        }
    }

    /// The implementation with the default effort: what a decoder needs.
    pub fn decoder(self) -> Box<dyn Scheme> {
        self.scheme(Effort::default())
    }

    /// The parameters a decoder needs beyond the components, as stored in the native layout's
    /// metadata (`params`).
    pub fn params(self) -> Value {
        match self {
            SchemeKind::Wint2 => json!({"group_size": 64, "rounding": "fused"}),
            SchemeKind::Wint4 | SchemeKind::Wint8 => json!({"granularity": "per_channel", "layout": "cutlass_interleaved"}),
            SchemeKind::Rtn2 => json!({"group_size": 64}),
        }
    }
}

impl fmt::Display for SchemeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for SchemeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for SchemeKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SchemeKind, D::Error> {
        let name = String::deserialize(d)?;
        SchemeKind::from_name(&name).ok_or_else(|| {
            let known: Vec<&str> = SchemeKind::ALL.iter().map(|k| k.name()).collect();
            serde::de::Error::custom(format!("unknown scheme '{name}' (this ccq knows {})", known.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_implementations_match_their_kind() {
        for kind in SchemeKind::ALL {
            assert_eq!(SchemeKind::from_name(kind.name()), Some(kind));
            assert_eq!(kind.decoder().kind(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<SchemeKind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<SchemeKind>("\"wint3\"").unwrap_err().to_string().contains("unknown scheme 'wint3'"));
    }
}
