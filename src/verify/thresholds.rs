//! Accuracy thresholds a CI job can enforce: `--max-nmse 0.12` (every tensor) or
//! `--max-nmse wint2=0.12` (tensors of one scheme); the same for `--max-output-err`.
//! A per-scheme limit takes precedence over the global one for that scheme. Scheme names are
//! those of the scheme registry, plus `none` for unquantized tensors
//! ([`crate::convert::policy::parse_choice`]).

use crate::convert::policy::{choice_name, choice_names, parse_choice};
use std::collections::BTreeMap;

/// A threshold value that does not parse. Messages name the flag and the value as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// The number (of `X` or `SCHEME=X`) is not a finite number >= 0.
    #[error("{flag} {value}: expected a number >= 0 or SCHEME=NUMBER (e.g. 0.12 or wint2=0.12)")]
    BadNumber {
        /// The flag, e.g. `--max-nmse`.
        flag: String,
        /// The value as given.
        value: String,
    },
    /// `SCHEME=X` names a scheme that is neither `none` nor in the scheme registry.
    #[error("{flag} {value}: unknown scheme '{scheme}'; choose {}", choice_names().join(", "))]
    UnknownScheme {
        /// The flag, e.g. `--max-nmse`.
        flag: String,
        /// The value as given.
        value: String,
        /// The scheme name in it.
        scheme: String,
    },
}

/// Limits on one figure: a global one and per-scheme ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Applies to every tensor without a per-scheme limit.
    pub global: Option<f64>,
    /// Per scheme name (`wint2`, `wint4`, `wint8`, ..., `none`).
    pub per_scheme: BTreeMap<String, f64>,
}

impl Limits {
    /// Parses the values of a repeatable flag: `X` or `SCHEME=X`, X a finite number >= 0;
    /// `flag` names the flag in errors.
    pub fn parse(flag: &str, values: &[String]) -> Result<Limits, ThresholdError> {
        let mut limits = Limits::default();
        for v in values {
            let (scheme, number) = match v.split_once('=') {
                Some((s, n)) => (Some(s.trim()), n),
                None => (None, v.as_str()),
            };
            let x: f64 = number
                .trim()
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| ThresholdError::BadNumber { flag: flag.to_string(), value: v.clone() })?;
            match scheme {
                Some(s) => {
                    let choice = parse_choice(s).map_err(|_| ThresholdError::UnknownScheme {
                        flag: flag.to_string(),
                        value: v.clone(),
                        scheme: s.to_string(),
                    })?;
                    limits.per_scheme.insert(choice_name(choice).to_string(), x);
                }
                None => limits.global = Some(x),
            }
        }
        Ok(limits)
    }

    /// The limit for a tensor of `scheme`, if any.
    pub fn for_scheme(&self, scheme: &str) -> Option<f64> {
        self.per_scheme.get(scheme).copied().or(self.global)
    }

    /// Whether `value` of a `scheme` tensor breaks its limit (NaN always does).
    pub fn exceeded(&self, scheme: &str, value: f64) -> Option<f64> {
        self.for_scheme(scheme).filter(|&limit| value.is_nan() || value > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<Limits, ThresholdError> {
        Limits::parse("--max-nmse", &values.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn global_and_per_scheme() {
        let l = parse(&["0.2", "wint2=0.12", " none = 0.5"]).unwrap();
        assert_eq!(l.for_scheme("wint2"), Some(0.12));
        assert_eq!(l.for_scheme("wint8"), Some(0.2));
        assert_eq!(l.for_scheme("none"), Some(0.5));
        assert_eq!(l.exceeded("wint2", 0.13), Some(0.12));
        assert_eq!(l.exceeded("wint2", 0.11), None);
        assert_eq!(l.exceeded("wint8", f64::NAN), Some(0.2));
        assert_eq!(parse(&[]).unwrap().exceeded("wint2", 9.0), None);
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in ["x", "-1", "wint3=0.1", "wint2=", "inf", "NaN"] {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }
        let e = parse(&["wint3=0.1"]).unwrap_err();
        assert_eq!(e, ThresholdError::UnknownScheme { flag: "--max-nmse".into(), value: "wint3=0.1".into(), scheme: "wint3".into() });
        assert!(e.to_string().starts_with("--max-nmse wint3=0.1: unknown scheme 'wint3'; choose none, wint2"), "{e}");
        assert!(parse(&["wint2=-1"]).unwrap_err().to_string().contains("expected a number >= 0"));
    }
}
