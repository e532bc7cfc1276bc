//! What a conversion is asked for (the options of `ccq quantize`), turned into the library's
//! options in one place: the plan's options, the calibration of `--calib STATS`, the `options`
//! record of `ccq-provenance.json` and the extra text of the resume fingerprint.
//!
//! A front end fills a [`QuantizeRequest`] from its flags ([`Policy::compose`] gives the
//! policy), plans with [`QuantizeRequest::plan_options`], adds the calibration
//! ([`StatsCalibration::read`] needs the plan, or [`LayerwiseOptions`] for tokens), and
//! converts with [`QuantizeRequest::convert_options`]. What is recorded, and in what order, is
//! part of the output: `ccq-provenance.json` holds [`QuantizeRequest::provenance_options`].

use crate::calibrate::layerwise::{Layerwise, LayerwiseOptions};
use crate::calibrate::{fnv_hex, Stats, Weighting};
use crate::checkpoint::Checkpoint;
use crate::convert::plan::{OutputLayout, Plan, PlanOptions};
use crate::convert::policy::{choice_name, Choice, Policy};
use crate::convert::run::{ConvertOptions, LayerwiseEncoder, TensorImportance};
use crate::error::{Error, Result};
use crate::scheme::Effort;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The calibration of `ccq quantize --calib STATS`: what each planned tensor's encoder
/// minimises, and what the provenance records about the statistics.
#[derive(Debug, Clone)]
pub struct StatsCalibration {
    /// Per planned tensor name ([`Stats::importance_for_plan`]).
    pub importance: Arc<BTreeMap<String, TensorImportance>>,
    /// `{"file", "fnv64", "stats"}`: the path as given, the FNV-1a 64 digest of the file's
    /// bytes, and the statistics' metadata; recorded under `calibration`.
    pub info: Value,
}

impl StatsCalibration {
    /// Reads the statistics file at `path` (from `ccq calibrate`) for the tensors of `plan`;
    /// errors name the file, and the tensors the statistics do not cover.
    pub fn read(path: &Path, plan: &Plan) -> Result<StatsCalibration> {
        let stats = Stats::read(path)?;
        let importance = stats.importance_for_plan(path, plan)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let info = json!({"file": path.display().to_string(), "fnv64": fnv_hex(&bytes), "stats": stats.meta});
        Ok(StatsCalibration { importance: Arc::new(importance), info })
    }
}

/// Everything a conversion was asked for beyond the source checkpoint and the output path.
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    /// The policy: the preset, with a policy file's preset and `w4_end_layer` applied, and the
    /// rules (the file's, then the overrides'); see [`Policy::compose`].
    pub policy: Policy,
    /// `fastdeploy-w4w2`'s last wint4 layer as asked for on the command line (recorded as
    /// given, even where a policy file's wins).
    pub w4_end_layer: usize,
    /// The `REGEX=SCHEME` overrides as written.
    pub set: Vec<String>,
    /// The policy file, as given.
    pub policy_file: Option<PathBuf>,
    /// Scheme for tensors whose shape the chosen scheme cannot take (`None`: an error).
    pub fallback: Option<Choice>,
    /// The output layout.
    pub layout: OutputLayout,
    /// WINT2 encoder effort.
    pub effort: Effort,
    /// Relative damping of the Hessians of error feedback.
    pub damp: f32,
    /// Calibration statistics (`--calib STATS`).
    pub calibration: Option<StatsCalibration>,
    /// Calibration tokens, run layer by layer inside the conversion (`--calib-tokens`,
    /// `--calib-text`).
    pub layerwise: Option<LayerwiseOptions>,
    /// Replace an existing output directory.
    pub force: bool,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Testing aid: stop after writing this many shards ([`ConvertOptions::stop_after_shards`]).
    pub stop_after_shards: Option<usize>,
    /// Copy tensors holding NaN or infinities ([`ConvertOptions::allow_non_finite`]).
    pub allow_non_finite: bool,
}

impl QuantizeRequest {
    /// The options of [`Plan::build`] for this request, with shards of about `shard_size` bytes.
    pub fn plan_options(&self, shard_size: u64) -> PlanOptions<'_> {
        PlanOptions { layout: self.layout, policy: &self.policy, fallback: self.fallback, shard_size }
    }

    /// What `ccq-provenance.json` records under `options` (after the effort): `preset`,
    /// `w4_end_layer`, `set`, `policy`, `rules`, `fallback`, `layout` and `calibration`, in
    /// that order.
    pub fn provenance_options(&self) -> Value {
        json!({
            "preset": self.policy.preset.name(),
            "w4_end_layer": self.w4_end_layer,
            "set": self.set,
            "policy": self.policy_file.as_ref().map(|p| p.display().to_string()),
            "rules": self.policy.rules.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "fallback": self.fallback.map(choice_name),
            "layout": self.layout.name(),
            "calibration": self.calibration.as_ref().map(|c| c.info.clone()),
        })
    }

    /// The text mixed into the resume fingerprint: every option that changes the output, so
    /// that `--resume` re-uses shards only of a run asked for the same.
    pub fn fingerprint_extra(&self) -> String {
        let mut extra = format!(
            "{}|{}|{:?}|{:?}|{}|{:?}|{}|{}|{}",
            self.policy.preset.name(),
            self.w4_end_layer,
            self.set,
            self.policy_file,
            self.layout.name(),
            self.fallback.map(choice_name),
            self.effort.name(),
            self.calibration.as_ref().map_or(String::new(), |c| c.info["fnv64"].to_string()),
            self.damp
        );
        if let Some(o) = &self.layerwise {
            extra += &format!(
                "|{}|{}|{}|{}|{}|{}",
                o.tokens_label["fnv64"],
                o.sequential,
                o.min_tokens,
                weighting_name(o.weighting),
                o.batch_tokens,
                o.hessian_budget
            );
        }
        if self.allow_non_finite {
            extra += "|allow-non-finite";
        }
        extra
    }

    /// The options of [`super::convert`] for this request. With calibration tokens, the
    /// layer-by-layer encoder is made here and checked against `ckpt` first (the model runs
    /// on the tokens; every layer's Hessians fit the budget), before any work.
    pub fn convert_options(&self, ckpt: &Checkpoint) -> Result<ConvertOptions> {
        let layerwise = match &self.layerwise {
            Some(options) => {
                let encoder = Layerwise::new(options.clone());
                encoder.check(ckpt)?;
                Some(Arc::new(encoder) as Arc<dyn LayerwiseEncoder>)
            }
            None => None,
        };
        Ok(ConvertOptions {
            effort: self.effort,
            force: self.force,
            resume: self.resume,
            fingerprint_extra: self.fingerprint_extra(),
            stop_after_shards: self.stop_after_shards,
            provenance_options: self.provenance_options(),
            importance: self.calibration.as_ref().map(|c| c.importance.clone()),
            damp: self.damp,
            layerwise,
            allow_non_finite: self.allow_non_finite,
        })
    }
}

/// A token weighting as `--weighting` spells it.
fn weighting_name(w: Weighting) -> &'static str {
    match w {
        Weighting::Uniform => "uniform",
        Weighting::Gate => "gate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{Preset, Rule};
    use crate::SchemeKind;

    fn request() -> QuantizeRequest {
        QuantizeRequest {
            policy: Policy { preset: Preset::Wint4, rules: vec![Rule::parse("o_proj=none").unwrap(), Rule::parse("x=y=wint8").unwrap()] },
            w4_end_layer: 2,
            set: vec!["x=y=wint8".to_string()],
            policy_file: Some(PathBuf::from("p.json")),
            fallback: Some(None),
            layout: OutputLayout::Native,
            effort: Effort::Medium,
            damp: 0.01,
            calibration: None,
            layerwise: None,
            force: false,
            resume: false,
            stop_after_shards: None,
            allow_non_finite: false,
        }
    }

    #[test]
    fn provenance_options_keep_their_keys_and_order() {
        let r = request();
        assert_eq!(
            serde_json::to_string(&r.provenance_options()).unwrap(),
            r#"{"preset":"wint4","w4_end_layer":2,"set":["x=y=wint8"],"policy":"p.json","rules":["o_proj=none","x=y=wint8"],"fallback":"none","layout":"native","calibration":null}"#
        );
        let r = QuantizeRequest { fallback: Some(Some(SchemeKind::Wint8)), policy_file: None, ..request() };
        assert_eq!(r.provenance_options()["fallback"], "wint8");
        assert_eq!(r.provenance_options()["policy"], Value::Null);
    }

    #[test]
    fn fingerprint_names_every_option() {
        let r = request();
        assert_eq!(r.fingerprint_extra(), r#"wint4|2|["x=y=wint8"]|Some("p.json")|native|Some("none")|medium||0.01"#);
        let layerwise = LayerwiseOptions {
            sequences: Arc::new(vec![vec![1, 2]]),
            batch_tokens: 64,
            min_tokens: 8,
            weighting: Weighting::Gate,
            damp: 0.01,
            sequential: true,
            hessian_budget: 1000,
            tokens_label: json!({"fnv64": "00ff"}),
        };
        let calibration = StatsCalibration { importance: Arc::new(BTreeMap::new()), info: json!({"fnv64": "abcd"}) };
        let r = QuantizeRequest { fallback: None, calibration: Some(calibration), layerwise: Some(layerwise), ..request() };
        assert_eq!(
            r.fingerprint_extra(),
            r#"wint4|2|["x=y=wint8"]|Some("p.json")|native|None|medium|"abcd"|0.01|"00ff"|true|8|gate|64|1000"#
        );
    }
}
