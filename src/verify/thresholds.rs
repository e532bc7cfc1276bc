//! Accuracy thresholds a CI job can enforce: `--max-nmse 0.12` (every tensor) or
//! `--max-nmse wint2=0.12` (tensors of one scheme); the same for `--max-output-err`.
//! A per-scheme limit takes precedence over the global one for that scheme.

use std::collections::BTreeMap;

/// Limits on one figure: a global one and per-scheme ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Applies to every tensor without a per-scheme limit.
    pub global: Option<f64>,
    /// Per scheme name (`wint2`, `wint4`, `wint8`, `none`).
    pub per_scheme: BTreeMap<String, f64>,
}

impl Limits {
    /// Parses the values of a repeatable flag: `X` or `SCHEME=X`, X a finite number >= 0.
    pub fn parse(flag: &str, values: &[String]) -> Result<Limits, String> {
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
                .ok_or_else(|| format!("{flag} {v}: expected a number >= 0 or SCHEME=NUMBER"))?;
            match scheme {
                Some(s) if ["wint2", "wint4", "wint8", "none"].contains(&s) => {
                    limits.per_scheme.insert(s.to_string(), x);
                }
                Some(s) => return Err(format!("{flag} {v}: unknown scheme '{s}' (wint2, wint4, wint8 or none)")),
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

    fn parse(values: &[&str]) -> Result<Limits, String> {
        Limits::parse("--max-nmse", &values.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn global_and_per_scheme() {
        let l = parse(&["0.2", "wint2=0.12"]).unwrap();
        assert_eq!(l.for_scheme("wint2"), Some(0.12));
        assert_eq!(l.for_scheme("wint8"), Some(0.2));
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
    }
}
