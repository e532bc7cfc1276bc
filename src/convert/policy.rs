//! Which scheme each tensor gets: presets, then `REGEX=SCHEME` overrides (last match wins).
//!
//! Presets follow Baidu's 2-bit ERNIE 4.5 release:
//!
//! | preset            | attention, dense MLP, shared experts | routed experts                                   | everything else |
//! |-------------------|--------------------------------------|--------------------------------------------------|-----------------|
//! | `fastdeploy-w4w2` | wint8                                | wint4 for layers <= `w4_end_layer`, wint2 after | unquantized     |
//! | `wint2-experts`   | wint8                                | wint2                                            | unquantized     |
//! | `wint4`           | wint4                                | wint4                                            | unquantized     |
//! | `wint8`           | wint8                                | wint8                                            | unquantized     |
//!
//! "Everything else" is the router and its bias, embeddings, norms, lm_head and the
//! multi-token-prediction block. An override's regex is matched against the output tensor's
//! name and against each source tensor's name; the last rule that matches wins.

use crate::layout::{Role, TensorRole};
use crate::SchemeKind;
use regex::Regex;
use serde_json::Value;

/// What a tensor becomes: a packed scheme, or `None` for unquantized.
pub type Choice = Option<SchemeKind>;

/// Parses a scheme name as the CLI and policy files spell it (`none` = unquantized).
pub fn parse_choice(name: &str) -> Result<Choice, String> {
    if name == "none" {
        return Ok(None);
    }
    SchemeKind::from_name(name).map(Some).ok_or_else(|| {
        let known: Vec<&str> = SchemeKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown scheme '{name}'; choose none, {}", known.join(", "))
    })
}

/// The name of a choice (`none` for unquantized).
pub fn choice_name(choice: Choice) -> &'static str {
    choice.map_or("none", SchemeKind::name)
}

/// A named starting point for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Baidu's mix: dense wint8, experts wint4 up to a layer then WINT2.
    FastdeployW4W2 {
        /// Last layer (global index) whose experts are wint4.
        w4_end_layer: usize,
    },
    /// Experts WINT2, dense wint8.
    Wint2Experts,
    /// Every linear layer wint4.
    Wint4,
    /// Every linear layer wint8.
    Wint8,
}

impl Preset {
    /// Preset names as the CLI spells them.
    pub const NAMES: [&'static str; 4] = ["fastdeploy-w4w2", "wint2-experts", "wint4", "wint8"];

    /// Default last wint4 layer of `fastdeploy-w4w2` (as in Baidu's release).
    pub const DEFAULT_W4_END_LAYER: usize = 6;

    /// Parses a preset name; `w4_end_layer` applies to `fastdeploy-w4w2`.
    pub fn from_name(name: &str, w4_end_layer: usize) -> Result<Preset, String> {
        Ok(match name {
            "fastdeploy-w4w2" => Preset::FastdeployW4W2 { w4_end_layer },
            "wint2-experts" => Preset::Wint2Experts,
            "wint4" => Preset::Wint4,
            "wint8" => Preset::Wint8,
            _ => return Err(format!("unknown preset '{name}'; choose one of {}", Preset::NAMES.join(", "))),
        })
    }

    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::FastdeployW4W2 { .. } => "fastdeploy-w4w2",
            Preset::Wint2Experts => "wint2-experts",
            Preset::Wint4 => "wint4",
            Preset::Wint8 => "wint8",
        }
    }

    /// The scheme this preset gives a tensor of the given role.
    pub fn choose(self, class: &TensorRole) -> Choice {
        let dense = matches!(class.role, Role::Attention | Role::DenseMlp | Role::SharedExpert);
        let expert = class.role.is_routed_expert();
        if !dense && !expert {
            return None;
        }
        Some(match self {
            Preset::FastdeployW4W2 { w4_end_layer } if expert => {
                if class.layer.is_some_and(|l| l <= w4_end_layer) {
                    SchemeKind::Wint4
                } else {
                    SchemeKind::Wint2
                }
            }
            Preset::Wint2Experts if expert => SchemeKind::Wint2,
            Preset::FastdeployW4W2 { .. } | Preset::Wint2Experts | Preset::Wint8 => SchemeKind::Wint8,
            Preset::Wint4 => SchemeKind::Wint4,
        })
    }
}

/// One `REGEX=SCHEME` override.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Matched (unanchored) against output and source tensor names.
    pub pattern: Regex,
    /// What matching tensors get.
    pub choice: Choice,
}

impl Rule {
    /// Parses `REGEX=SCHEME` (the last `=` separates them, so the regex may contain `=`).
    pub fn parse(text: &str) -> Result<Rule, String> {
        let (pattern, scheme) = text.rsplit_once('=').ok_or_else(|| format!("override '{text}' is not of the form REGEX=SCHEME"))?;
        let pattern = Regex::new(pattern).map_err(|e| format!("override '{text}': bad regex: {e}"))?;
        Ok(Rule { pattern, choice: parse_choice(scheme)? })
    }
}

/// A preset plus overrides.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The starting point.
    pub preset: Preset,
    /// Overrides, applied in order (last match wins).
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The scheme for a tensor written as `output_name` from `source_names`. A preset
    /// quantizes matrices only (`matrix`): biases, norms and other vectors are kept, whatever
    /// their role; an explicit rule is applied as written.
    pub fn choose(&self, class: &TensorRole, output_name: &str, source_names: &[String], matrix: bool) -> Choice {
        let matches = |r: &&Rule| r.pattern.is_match(output_name) || source_names.iter().any(|s| r.pattern.is_match(s));
        match self.rules.iter().rev().find(matches) {
            Some(rule) => rule.choice,
            None if matrix => self.preset.choose(class),
            None => None,
        }
    }

    /// Reads a policy file: `{"preset": NAME, "w4_end_layer": N, "rules": [{"match": REGEX,
    /// "scheme": NAME}, ...]}` (every key optional, no other keys). `default` is the preset
    /// (with its `w4_end_layer`) used where the file names none; the file's `w4_end_layer`,
    /// when given, wins. Its rules come before command-line ones.
    pub fn from_json(text: &str, default: Preset) -> Result<Policy, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let map = v.as_object().ok_or("a policy file must be a JSON object")?;
        if let Some(key) = map.keys().find(|k| !["preset", "w4_end_layer", "rules"].contains(&k.as_str())) {
            return Err(format!("unknown key \"{key}\" (expected preset, w4_end_layer, rules)"));
        }
        let file_w4 = match map.get("w4_end_layer") {
            None => None,
            Some(n) => Some(n.as_u64().ok_or("\"w4_end_layer\" must be a non-negative integer")? as usize),
        };
        let preset = match (map.get("preset"), default) {
            (Some(p), _) => {
                let fallback_w4 = match default {
                    Preset::FastdeployW4W2 { w4_end_layer } => w4_end_layer,
                    _ => Preset::DEFAULT_W4_END_LAYER,
                };
                Preset::from_name(p.as_str().ok_or("\"preset\" must be a string")?, file_w4.unwrap_or(fallback_w4))?
            }
            (None, Preset::FastdeployW4W2 { w4_end_layer }) => Preset::FastdeployW4W2 { w4_end_layer: file_w4.unwrap_or(w4_end_layer) },
            (None, other) if file_w4.is_some() => return Err(format!("\"w4_end_layer\" applies to fastdeploy-w4w2, not {}", other.name())),
            (None, other) => other,
        };
        let rules = match map.get("rules") {
            None => Vec::new(),
            Some(Value::Array(items)) => items.iter().enumerate().map(|(i, r)| parse_rule(i, r)).collect::<Result<_, _>>()?,
            Some(_) => return Err("\"rules\" must be a list of {\"match\", \"scheme\"} objects".to_string()),
        };
        Ok(Policy { preset, rules })
    }
}

/// One `{"match": REGEX, "scheme": NAME}` rule of a policy file.
fn parse_rule(i: usize, rule: &Value) -> Result<Rule, String> {
    let field = |key: &str| rule.get(key).and_then(Value::as_str).ok_or(format!("rule {i} needs a string \"{key}\""));
    Rule::parse(&format!("{}={}", field("match")?, field("scheme")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(role: Role, layer: Option<usize>) -> TensorRole {
        TensorRole { role, layer, expert: None, part: None }
    }

    #[test]
    fn fastdeploy_preset_follows_baidu() {
        let p = Preset::FastdeployW4W2 { w4_end_layer: 6 };
        assert_eq!(p.choose(&class(Role::ExpertDown, Some(6))), Some(SchemeKind::Wint4));
        assert_eq!(p.choose(&class(Role::ExpertUpGate, Some(7))), Some(SchemeKind::Wint2));
        assert_eq!(p.choose(&class(Role::Attention, Some(7))), Some(SchemeKind::Wint8));
        assert_eq!(p.choose(&class(Role::SharedExpert, Some(7))), Some(SchemeKind::Wint8));
        for role in [Role::Router, Role::RouterBias, Role::Embedding, Role::Norm, Role::LmHead, Role::Mtp, Role::Other] {
            assert_eq!(p.choose(&class(role, Some(7))), None, "{role}");
        }
        assert_eq!(Preset::Wint2Experts.choose(&class(Role::ExpertGate, Some(1))), Some(SchemeKind::Wint2));
        assert_eq!(Preset::Wint4.choose(&class(Role::DenseMlp, Some(0))), Some(SchemeKind::Wint4));
    }

    #[test]
    fn last_matching_override_wins() {
        let policy = Policy {
            preset: Preset::Wint8,
            rules: vec![Rule::parse(r"experts\.=wint4").unwrap(), Rule::parse(r"experts\.3\.=none").unwrap()],
        };
        let c = class(Role::ExpertDown, Some(1));
        assert_eq!(policy.choose(&c, "x.experts.2.down", &[], true), Some(SchemeKind::Wint4));
        assert_eq!(policy.choose(&c, "x.experts.3.down", &[], true), None);
        assert_eq!(policy.choose(&c, "fused", &["a.experts.3.b".to_string()], true), None);
        assert_eq!(policy.choose(&class(Role::Attention, Some(1)), "q", &[], true), Some(SchemeKind::Wint8));
        assert_eq!(policy.choose(&class(Role::Attention, Some(1)), "q.bias", &[], false), None, "a preset never quantizes a vector");
    }

    #[test]
    fn bad_rules_and_files_are_errors() {
        assert!(Rule::parse("no-equals").is_err());
        assert!(Rule::parse("(=wint4").unwrap_err().contains("bad regex"));
        assert!(Rule::parse("x=wint3").unwrap_err().contains("unknown scheme"));
        assert!(Policy::from_json("{", Preset::Wint8).is_err());
        assert!(Policy::from_json(r#"{"rules":[{"match":"x"}]}"#, Preset::Wint8).is_err());
        assert!(Policy::from_json(r#"{"rules":{"match":"x","scheme":"none"}}"#, Preset::Wint8).is_err());
        assert!(Policy::from_json(r#"{"preset":"wint8","w4_end":3}"#, Preset::Wint8).unwrap_err().contains("unknown key"));
        assert!(Policy::from_json(r#"{"w4_end_layer":3}"#, Preset::Wint8).is_err());
        let merged = Policy::from_json(r#"{"w4_end_layer":3}"#, Preset::FastdeployW4W2 { w4_end_layer: 6 }).unwrap();
        assert_eq!(merged.preset, Preset::FastdeployW4W2 { w4_end_layer: 3 });
        let cli = Policy::from_json(r#"{"preset":"fastdeploy-w4w2"}"#, Preset::FastdeployW4W2 { w4_end_layer: 9 }).unwrap();
        assert_eq!(cli.preset, Preset::FastdeployW4W2 { w4_end_layer: 9 });
        let p =
            Policy::from_json(r#"{"preset":"fastdeploy-w4w2","w4_end_layer":2,"rules":[{"match":"a=b","scheme":"none"}]}"#, Preset::Wint8)
                .unwrap();
        assert_eq!(p.preset, Preset::FastdeployW4W2 { w4_end_layer: 2 });
        assert_eq!(p.rules[0].pattern.as_str(), "a=b");
    }
}
