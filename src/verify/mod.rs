//! Verification: how far a quantized checkpoint is from its original, tensor by tensor and on
//! activations, with thresholds a CI job can enforce.
//!
//! For every quantized tensor the original matrix is rebuilt from the original checkpoint and
//! compared with the packed tensor's reconstruction ([`metrics`]); the output error
//! `||X W - X What|| / ||X W||` is computed with the packed matmul kernel, X being a
//! fixed-seed Gaussian probe (or calibration activations when given). Figures are reported
//! per source tensor (a fused q|k|v tensor gives one row each for q, k and v) and aggregated
//! per scheme, layer and expert ([`VerifyReport`]); [`thresholds`] decide pass or fail;
//! [`report`] renders the HTML page. Work streams one tensor at a time.

pub mod metrics;
pub mod report;
pub mod run;
pub mod thresholds;

pub use run::{verify, VerifyOptions};

use metrics::Stat;
use serde::Serialize;
use std::collections::BTreeMap;
use thresholds::Limits;

/// Figures of one source tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorRow {
    /// The source tensor's name (in the original checkpoint).
    pub name: String,
    /// The quantized tensor it was stored in.
    pub quantized: String,
    /// Scheme name (`wint2`, `wint4`, `wint8`, `none`).
    pub scheme: String,
    /// Role, as `ccq inspect` names it.
    pub role: String,
    /// Decoder layer, if any.
    pub layer: Option<usize>,
    /// Routed expert, if any.
    pub expert: Option<usize>,
    /// Logical rows (inputs).
    pub k: usize,
    /// Logical columns (outputs) of this source.
    pub n: usize,
    /// sum (W - What)^2 / sum W^2.
    pub nmse: f64,
    /// 10 log10(1 / NMSE) dB (null in JSON when infinite).
    pub sqnr_db: f64,
    /// Cosine similarity of W and What.
    pub cosine: f64,
    /// max |W - What|.
    pub max_abs_err: f64,
    /// ||X W - X What|| / ||X W||.
    pub output_rel_err: f64,
}

/// Aggregated figures of a group of tensors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// The group: a scheme name, `layer N` or `layer N expert E`.
    pub key: String,
    /// NMSE over the group.
    pub nmse: Stat,
    /// Output relative error over the group.
    pub output_rel_err: Stat,
}

/// A tensor that broke a threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offender {
    /// Source tensor name.
    pub name: String,
    /// `nmse` or `output_rel_err`.
    pub figure: &'static str,
    /// Measured value.
    pub value: f64,
    /// The limit it exceeded.
    pub limit: f64,
}

/// The whole verification result (the `--json` object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Path of the original checkpoint.
    pub original: String,
    /// Path of the quantized checkpoint.
    pub quantized: String,
    /// What X was for the output error (probe or calibration).
    pub probe: String,
    /// Per source tensor, in checkpoint order.
    pub tensors: Vec<TensorRow>,
    /// Per scheme.
    pub by_scheme: Vec<Group>,
    /// Per layer.
    pub by_layer: Vec<Group>,
    /// Per layer and routed expert.
    pub by_expert: Vec<Group>,
    /// Tensors over a threshold.
    pub offenders: Vec<Offender>,
    /// Whether every threshold was met.
    pub passed: bool,
}

/// Thresholds on the two gated figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    /// `--max-nmse`.
    pub nmse: Limits,
    /// `--max-output-err`.
    pub output_err: Limits,
}

impl VerifyReport {
    /// Aggregates rows and applies thresholds.
    pub fn build(original: String, quantized: String, probe: String, tensors: Vec<TensorRow>, thresholds: &Thresholds) -> VerifyReport {
        let by_scheme = group_by(&tensors, |t| Some(t.scheme.clone()));
        let by_layer = group_by(&tensors, |t| t.layer.map(|l| format!("layer {l}")));
        let by_expert = group_by(&tensors, |t| match (t.layer, t.expert) {
            (Some(l), Some(e)) => Some(format!("layer {l} expert {e}")),
            _ => None,
        });
        let mut offenders = Vec::new();
        for t in &tensors {
            if let Some(limit) = thresholds.nmse.exceeded(&t.scheme, t.nmse) {
                offenders.push(Offender { name: t.name.clone(), figure: "nmse", value: t.nmse, limit });
            }
            if let Some(limit) = thresholds.output_err.exceeded(&t.scheme, t.output_rel_err) {
                offenders.push(Offender { name: t.name.clone(), figure: "output_rel_err", value: t.output_rel_err, limit });
            }
        }
        let passed = offenders.is_empty();
        VerifyReport { original, quantized, probe, tensors, by_scheme, by_layer, by_expert, offenders, passed }
    }
}

/// Groups rows by a key (rows without one are skipped), keys in natural order of first
/// appearance sorted by (layer, expert) numerically where they are numbers.
fn group_by(rows: &[TensorRow], key: impl Fn(&TensorRow) -> Option<String>) -> Vec<Group> {
    let mut groups: BTreeMap<(Vec<u64>, String), Vec<&TensorRow>> = BTreeMap::new();
    for r in rows {
        if let Some(k) = key(r) {
            let numbers: Vec<u64> = k.split(' ').filter_map(|w| w.parse().ok()).collect();
            groups.entry((numbers, k)).or_default().push(r);
        }
    }
    groups
        .into_iter()
        .map(|((_, key), rows)| Group {
            key,
            nmse: Stat::of(rows.iter().map(|r| r.nmse)),
            output_rel_err: Stat::of(rows.iter().map(|r| r.output_rel_err)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, scheme: &str, layer: Option<usize>, expert: Option<usize>, nmse: f64) -> TensorRow {
        TensorRow {
            name: name.into(),
            quantized: name.into(),
            scheme: scheme.into(),
            role: "expert_down".into(),
            layer,
            expert,
            k: 128,
            n: 128,
            nmse,
            sqnr_db: -10.0 * nmse.log10(),
            cosine: 1.0 - nmse / 2.0,
            max_abs_err: 0.1,
            output_rel_err: nmse.sqrt(),
        }
    }

    #[test]
    fn aggregates_and_thresholds() {
        let rows = vec![
            row("a", "wint2", Some(10), Some(2), 0.11),
            row("b", "wint2", Some(2), Some(0), 0.09),
            row("c", "wint8", Some(2), None, 0.0001),
        ];
        let t = Thresholds { nmse: Limits::parse("--max-nmse", &["wint2=0.1".into()]).unwrap(), ..Default::default() };
        let r = VerifyReport::build("o".into(), "q".into(), "probe".into(), rows, &t);
        assert_eq!(r.by_layer.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(), ["layer 2", "layer 10"]);
        assert_eq!(r.by_scheme[0].key, "wint2");
        assert_eq!(r.by_scheme[0].nmse.count, 2);
        assert!((r.by_scheme[0].nmse.mean - 0.10).abs() < 1e-12);
        assert_eq!(r.by_expert.len(), 2);
        assert!(!r.passed);
        assert_eq!(r.offenders.len(), 1);
        assert_eq!((r.offenders[0].name.as_str(), r.offenders[0].figure), ("a", "nmse"));
        let html = report::html(&r);
        assert!(html.contains("<svg") && html.contains("layer 10 expert 2") && html.contains("1 threshold(s) exceeded"));
        // Self-contained: no scripts, and no address but the SVG namespace.
        assert!(!html.contains("<script"));
        assert_eq!(html.matches("http").count(), html.matches("http://www.w3.org/2000/svg").count());
    }
}
