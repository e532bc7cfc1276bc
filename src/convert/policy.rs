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
//! multi-token-prediction block. A 2-D `*.weight` tensor whose role ccq does not recognise (the
//! linear layers of an encoder such as MiniLM, of a family ccq does not know) is taken as a
//! dense linear: it gets the preset's dense scheme. An override's regex is matched against the output tensor's
//! name and against each source tensor's name; the last rule that matches wins.
//!
//! A policy file (`ccq quantize --policy FILE`) is a JSON object
//! `{"preset": NAME, "w4_end_layer": N, "rules": [{"match": REGEX, "scheme": NAME}, ...]}`:
//! every top-level key is optional, a rule needs both of its keys, and any other key is an
//! error naming it ([`Policy::from_json`]).

use crate::layout::{Role, TensorRole};
use crate::SchemeKind;
use regex::Regex;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// What a tensor becomes: a packed scheme, or `None` for unquantized.
pub type Choice = Option<SchemeKind>;

/// The shape of a policy file, for error messages.
const POLICY_FILE_SHAPE: &str = r#"{"preset": NAME, "w4_end_layer": N, "rules": [{"match": REGEX, "scheme": NAME}, ...]}"#;

/// The shape of one rule of a policy file, for error messages.
const RULE_SHAPE: &str = r#"{"match": REGEX, "scheme": NAME}"#;

/// What is wrong with a scheme name, a preset name, an override or a policy file. Messages
/// say what was given and what is accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A scheme name that is neither `none` nor in the scheme registry ([`SchemeKind::ALL`]).
    #[error("unknown scheme '{name}'; choose {}", choice_names().join(", "))]
    UnknownScheme {
        /// The name given.
        name: String,
    },
    /// A preset name that is not one of [`Preset::NAMES`].
    #[error("unknown preset '{name}'; choose one of {}", Preset::NAMES.join(", "))]
    UnknownPreset {
        /// The name given.
        name: String,
    },
    /// An override without the `=` that separates its regex from its scheme.
    #[error("override '{text}' is not of the form REGEX=SCHEME")]
    NotAnOverride {
        /// The override as given.
        text: String,
    },
    /// A rule's regex does not compile.
    #[error("bad regex: {source}")]
    BadRegex {
        /// The regex crate's description (it shows the pattern and where it fails).
        source: regex::Error,
    },
    /// A problem with one `REGEX=SCHEME` override.
    #[error("override '{text}': {problem}")]
    Override {
        /// The override as given.
        text: String,
        /// What is wrong with it.
        #[source]
        problem: Box<PolicyError>,
    },
    /// A problem with one rule of a policy file.
    #[error("rules[{index}]: {problem}")]
    Rule {
        /// The rule's position in `rules`, from 0.
        index: usize,
        /// What is wrong with it.
        #[source]
        problem: Box<PolicyError>,
    },
    /// A policy file that is not JSON, or not of the policy file's shape (an unknown or
    /// misspelt key, a missing rule key, a value of the wrong type).
    #[error("{source}; a policy file is {POLICY_FILE_SHAPE}, every key optional except a rule's two")]
    Json {
        /// Where the text is wrong (field path, or line and column).
        source: crate::json::JsonProblem,
    },
    /// A policy file, or one of its rules, is JSON but not an object.
    #[error("{what} must be a JSON object {shape}")]
    NotAnObject {
        /// `a policy file` or `a rule`.
        what: &'static str,
        /// The object expected.
        shape: &'static str,
    },
    /// A policy file gives `w4_end_layer` for a preset other than `fastdeploy-w4w2`.
    #[error("\"w4_end_layer\" applies to fastdeploy-w4w2, not {preset}; remove it, or set \"preset\": \"fastdeploy-w4w2\"")]
    W4EndLayerNotApplicable {
        /// The preset in effect.
        preset: &'static str,
    },
    /// A policy file cannot be read.
    #[error("reading policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A problem with the contents of a policy file.
    #[error("policy file {}: {problem}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        problem: Box<PolicyError>,
    },
}

/// Every name [`parse_choice`] accepts: `none`, then the registry's schemes in
/// [`SchemeKind::ALL`] order.
pub fn choice_names() -> Vec<&'static str> {
    std::iter::once("none").chain(SchemeKind::ALL.iter().map(|k| k.name())).collect()
}

/// Parses a scheme name as the CLI and policy files spell it (`none` = unquantized), through
/// the scheme registry ([`SchemeKind::from_name`]).
pub fn parse_choice(name: &str) -> Result<Choice, PolicyError> {
    if name == "none" {
        return Ok(None);
    }
    SchemeKind::from_name(name).map(Some).ok_or_else(|| PolicyError::UnknownScheme { name: name.to_string() })
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
    pub fn parse(name: &str, w4_end_layer: usize) -> Result<Preset, PolicyError> {
        Ok(match name {
            "fastdeploy-w4w2" => Preset::FastdeployW4W2 { w4_end_layer },
            "wint2-experts" => Preset::Wint2Experts,
            "wint4" => Preset::Wint4,
            "wint8" => Preset::Wint8,
            _ => return Err(PolicyError::UnknownPreset { name: name.to_string() }),
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
    /// A rule from its two halves: a regex and a scheme name (as [`parse_choice`] takes it).
    pub fn new(pattern: &str, scheme: &str) -> Result<Rule, PolicyError> {
        let pattern = Regex::new(pattern).map_err(|source| PolicyError::BadRegex { source })?;
        Ok(Rule { pattern, choice: parse_choice(scheme)? })
    }

    /// Parses `REGEX=SCHEME` (the last `=` separates them, so the regex may contain `=`).
    pub fn parse(text: &str) -> Result<Rule, PolicyError> {
        let (pattern, scheme) = text.rsplit_once('=').ok_or_else(|| PolicyError::NotAnOverride { text: text.to_string() })?;
        Rule::new(pattern, scheme).map_err(|problem| PolicyError::Override { text: text.to_string(), problem: Box::new(problem) })
    }
}

impl fmt::Display for Rule {
    /// `REGEX=SCHEME`, as [`Rule::parse`] reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.pattern.as_str(), choice_name(self.choice))
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
            None if matrix && class.role == Role::Other && output_name.ends_with(".weight") => {
                self.preset.choose(&TensorRole { role: Role::DenseMlp, ..*class })
            }
            None if matrix => self.preset.choose(class),
            None => None,
        }
    }

    /// Parses a policy file's text (the format is in the [module documentation](self)).
    /// `default` is the preset (with its `w4_end_layer`) used where the file names none; the
    /// file's `w4_end_layer`, when given, wins, and applies to `fastdeploy-w4w2` only. Its
    /// rules come before command-line ones. Errors do not name the file: [`Policy::read`] does.
    pub fn from_json(text: &str, default: Preset) -> Result<Policy, PolicyError> {
        // serde would also take a struct from a JSON array, by position: refuse that first.
        let value: serde_json::Value = crate::json::parse(text).map_err(|source| PolicyError::Json { source })?;
        let Some(map) = value.as_object() else {
            return Err(PolicyError::NotAnObject { what: "a policy file", shape: POLICY_FILE_SHAPE });
        };
        if let Some(index) = map.get("rules").and_then(|r| r.as_array()).and_then(|rules| rules.iter().position(|r| !r.is_object())) {
            let problem = Box::new(PolicyError::NotAnObject { what: "a rule", shape: RULE_SHAPE });
            return Err(PolicyError::Rule { index, problem });
        }
        let file: PolicyFile = crate::json::parse(text).map_err(|source| PolicyError::Json { source })?;
        let preset = match (&file.preset, default) {
            (Some(name), _) => {
                let fallback_w4 = match default {
                    Preset::FastdeployW4W2 { w4_end_layer } => w4_end_layer,
                    _ => Preset::DEFAULT_W4_END_LAYER,
                };
                Preset::parse(name, file.w4_end_layer.unwrap_or(fallback_w4))?
            }
            (None, Preset::FastdeployW4W2 { w4_end_layer }) => {
                Preset::FastdeployW4W2 { w4_end_layer: file.w4_end_layer.unwrap_or(w4_end_layer) }
            }
            (None, other) => other,
        };
        if file.w4_end_layer.is_some() && !matches!(preset, Preset::FastdeployW4W2 { .. }) {
            return Err(PolicyError::W4EndLayerNotApplicable { preset: preset.name() });
        }
        let rules = file.rules.iter().enumerate().map(|(index, r)| parse_rule(index, r)).collect::<Result<_, _>>()?;
        Ok(Policy { preset, rules })
    }

    /// Reads the policy file at `path` ([`Policy::from_json`]); errors name the file.
    pub fn read(path: &Path, default: Preset) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })?;
        Policy::from_json(&text, default).map_err(|problem| PolicyError::File { path: path.to_path_buf(), problem: Box::new(problem) })
    }

    /// The policy of a conversion: `preset`, then the policy file at `file` when given (its
    /// preset and rules, [`Policy::read`]), then the `REGEX=SCHEME` `overrides` in order
    /// ([`Rule::parse`]).
    pub fn compose(preset: Preset, file: Option<&Path>, overrides: &[String]) -> Result<Policy, PolicyError> {
        let mut policy = match file {
            Some(path) => Policy::read(path, preset)?,
            None => Policy { preset, rules: Vec::new() },
        };
        for text in overrides {
            policy.rules.push(Rule::parse(text)?);
        }
        Ok(policy)
    }
}

/// A policy file as written: every key optional, no other keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a policy file object")]
struct PolicyFile {
    /// A preset name ([`Preset::NAMES`]); absent is allowed, `null` is not.
    #[serde(default, deserialize_with = "present")]
    preset: Option<String>,
    /// `fastdeploy-w4w2`'s last wint4 layer; absent is allowed, `null` is not.
    #[serde(default, deserialize_with = "present")]
    w4_end_layer: Option<usize>,
    /// Overrides, in order.
    #[serde(default)]
    rules: Vec<PolicyFileRule>,
}

/// A key that, when present, must hold a `T` (`null` included in "not a `T`").
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// One rule of a policy file: both keys required, no other keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = r#"a rule {"match": REGEX, "scheme": NAME}"#)]
struct PolicyFileRule {
    /// The regex.
    #[serde(rename = "match")]
    pattern: String,
    /// The scheme name.
    scheme: String,
}

/// The rule at `index` of a policy file's `rules`.
fn parse_rule(index: usize, rule: &PolicyFileRule) -> Result<Rule, PolicyError> {
    Rule::new(&rule.pattern, &rule.scheme).map_err(|problem| PolicyError::Rule { index, problem: Box::new(problem) })
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
        assert!(Rule::parse("(=wint4").unwrap_err().to_string().contains("bad regex"));
        assert!(Rule::parse("x=wint3").unwrap_err().to_string().contains("unknown scheme"));
        assert!(Policy::from_json("{", Preset::Wint8).is_err());
        assert!(Policy::from_json(r#"{"rules":[{"match":"x"}]}"#, Preset::Wint8).is_err());
        assert!(Policy::from_json(r#"{"rules":{"match":"x","scheme":"none"}}"#, Preset::Wint8).is_err());
        assert!(Policy::from_json(r#"{"preset":"wint8","w4_end":3}"#, Preset::Wint8)
            .unwrap_err()
            .to_string()
            .contains("unknown field `w4_end`"));
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

    #[test]
    fn policy_file_errors_name_the_key_and_what_to_do() {
        let err = |text: &str| Policy::from_json(text, Preset::Wint8).unwrap_err().to_string();
        assert!(err(r#"{"rule": []}"#).contains("unknown field `rule`, expected one of `preset`, `w4_end_layer`, `rules`"));
        assert!(err(r#"{"rules": [{"match": "x", "scheme ": "none"}]}"#).contains("unknown field `scheme `"));
        assert!(err(r#"{"rules": [{"match": "x"}]}"#).contains("missing field `scheme`"));
        assert!(err(r#"{"rules": [{"match": "x", "scheme": "wint3"}]}"#).starts_with("rules[0]: unknown scheme 'wint3'; choose none, "));
        assert!(
            err(r#"{"rules": [{"match": "x", "scheme": "none"}, {"match": "(", "scheme": "none"}]}"#).starts_with("rules[1]: bad regex")
        );
        assert!(err(r#"{"preset": "wint9"}"#).contains("unknown preset 'wint9'; choose one of fastdeploy-w4w2"));
        assert!(err(r#"{"preset": "wint8", "w4_end_layer": 3}"#).contains("applies to fastdeploy-w4w2, not wint8"));
        assert_eq!(err(r#"["wint8"]"#), format!("a policy file must be a JSON object {POLICY_FILE_SHAPE}"));
        assert_eq!(err(r#"{"rules": [["x", "none"]]}"#), format!("rules[0]: a rule must be a JSON object {RULE_SHAPE}"));
        assert!(err(r#"{"w4_end_layer": -1}"#).contains("invalid value: integer `-1`"));
        assert!(err(r#"{"rules": "#).contains("EOF"));
        // A regex and a scheme stay apart: an `=` in the scheme is not taken as the separator.
        assert!(err(r#"{"rules": [{"match": "x", "scheme": "y=none"}]}"#).contains("unknown scheme 'y=none'"));
    }

    #[test]
    fn null_keys_are_refused() {
        for text in [r#"{"preset": null}"#, r#"{"w4_end_layer": null}"#] {
            assert!(Policy::from_json(text, Preset::Wint8).is_err(), "{text}");
        }
        assert!(Policy::from_json(r#"{"rules": []}"#, Preset::Wint8).is_ok());
    }

    #[test]
    fn files_and_overrides_compose_and_errors_name_the_file() {
        let dir = crate::test_support::scratch("policy", true);
        let file = dir.join("p.json");
        std::fs::write(&file, r#"{"preset": "wint4", "rules": [{"match": "o_proj", "scheme": "none"}]}"#).unwrap();
        let p = Policy::compose(Preset::Wint8, Some(&file), &[r"experts\.=wint2".to_string()]).unwrap();
        assert_eq!(p.preset, Preset::Wint4);
        assert_eq!(p.rules.iter().map(Rule::to_string).collect::<Vec<_>>(), ["o_proj=none", r"experts\.=wint2"]);
        std::fs::write(&file, r#"{"rules": [{"match": "x", "scheme": "wint3"}]}"#).unwrap();
        let e = Policy::compose(Preset::Wint8, Some(&file), &[]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("policy file {}: rules[0]: unknown scheme 'wint3'", file.display())), "{e}");
        let missing = dir.join("missing.json");
        let e = Policy::compose(Preset::Wint8, Some(&missing), &[]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("reading policy file {}: ", missing.display())), "{e}");
        let e = Policy::compose(Preset::Wint8, None, &["x=wint3".to_string()]).unwrap_err().to_string();
        assert!(e.starts_with("override 'x=wint3': unknown scheme 'wint3'"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn choice_names_come_from_the_registry() {
        let names = choice_names();
        assert_eq!(names[0], "none");
        assert_eq!(names.len(), SchemeKind::ALL.len() + 1);
        for name in names {
            assert_eq!(choice_name(parse_choice(name).unwrap()), name);
        }
    }
}
