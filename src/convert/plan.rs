//! The conversion plan: every output tensor, where its values come from, and what it becomes.
//!
//! Planning reads headers only. Each [`PlannedTensor`] names its source tensors (several when
//! q|k|v or gate|up are fused), whether they are transposed from PyTorch's [out, in] to the
//! logical [in, out], the scheme the [`Policy`] chose, and the exact component tensors
//! (names, dtypes, shapes) that will be written. Since sizes are known before any encoding,
//! shards can be laid out and the plan printed (`--dry-run`) before work starts, and every
//! tensor a scheme cannot take is reported at once.

use super::policy::{Choice, Policy};
use crate::checkpoint::write::TensorSpec;
use crate::checkpoint::Checkpoint;
use crate::format::fastdeploy::{self, QuantizationConfig, UnloadableMix};
pub use crate::format::OutputLayout;
use crate::layout::{Family, ModelLayout, Naming, Part, TensorRole};
use crate::Dtype;

/// One tensor of the output, before any data is read.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Output name: the full tensor name when unquantized, the prefix of the component names
    /// when packed.
    pub name: String,
    /// Source tensors whose logical columns are concatenated, in order.
    pub sources: Vec<String>,
    /// What the tensor is.
    pub class: TensorRole,
    /// Whether the sources are stored [out, in] and must be transposed to [in, out] for
    /// encoding (fastdeploy layout: also for writing).
    pub transpose: bool,
    /// Logical rows (inputs) K, for matrices; the stored shape's first dimension otherwise.
    pub k: usize,
    /// Logical columns (outputs) N.
    pub n: usize,
    /// The scheme, or `None` for unquantized.
    pub choice: Choice,
    /// Whether `choice` came from `--fallback` because the scheme asked for could not take
    /// the shape.
    pub fell_back: bool,
    /// The stored tensors this produces.
    pub outputs: Vec<TensorSpec>,
    /// Bytes the sources occupy in the input.
    pub bytes_in: u64,
    /// Stored dtype of the (first) source.
    pub source_dtype: Dtype,
    /// The file holding the (first) source (named in errors).
    pub source_file: std::path::PathBuf,
}

impl PlannedTensor {
    /// Whether the output is the source's bytes unchanged: one unquantized source, copied as
    /// it is (native layout), or already in the output's dtype and orientation (FastDeploy).
    pub fn is_raw_copy(&self, layout: OutputLayout) -> bool {
        self.choice.is_none()
            && self.sources.len() == 1
            && (layout == OutputLayout::Native || (!self.transpose && self.source_dtype == self.outputs[0].dtype))
    }

    /// Bytes written.
    pub fn bytes_out(&self) -> u64 {
        self.outputs.iter().map(TensorSpec::nbytes).sum()
    }

    /// Logical weights.
    pub fn numel(&self) -> u64 {
        (self.k * self.n) as u64
    }
}

/// The whole plan: output tensors in write order, and which go in which shard.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Output layout.
    pub layout: OutputLayout,
    /// How the source names and orients its tensors (recorded in `ccq-provenance.json`).
    pub naming: Naming,
    /// Every output tensor, in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Indices into `tensors`, one list per shard file, in order.
    pub shards: Vec<Vec<usize>>,
}

/// Everything planning needs besides the checkpoint.
#[derive(Debug, Clone)]
pub struct PlanOptions<'a> {
    /// Output layout.
    pub layout: OutputLayout,
    /// Which scheme each tensor gets.
    pub policy: &'a Policy,
    /// Scheme for tensors whose shape the chosen scheme cannot take (`None`: such tensors are
    /// an error).
    pub fallback: Option<Choice>,
    /// Target bytes per shard file.
    pub shard_size: u64,
}

/// A tensor the plan cannot take, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Output tensor name.
    pub tensor: String,
    /// Why.
    pub reason: String,
}

impl Plan {
    /// Plans the conversion of `ckpt`. Every tensor whose shape its scheme cannot take is
    /// collected, so that all of them are reported at once.
    pub fn build(ckpt: &Checkpoint, model: &ModelLayout, options: &PlanOptions) -> Result<Plan, Vec<Refusal>> {
        if options.layout == OutputLayout::FastDeploy && model.family != Family::Ernie45 {
            return Err(vec![Refusal {
                tensor: ckpt.path().display().to_string(),
                reason: "the fastdeploy layout is for ERNIE 4.5 checkpoints; use --layout native for other models".to_string(),
            }]);
        }
        let mut tensors = Vec::new();
        let mut refusals = Vec::new();
        for group in group_sources(ckpt, model, options.layout) {
            match plan_group(ckpt, &group, options) {
                Ok(t) => tensors.push(t),
                Err(reason) => refusals.push(Refusal { tensor: group.name.clone(), reason }),
            }
        }
        if !refusals.is_empty() {
            return Err(refusals);
        }
        let shards = assign_shards(&tensors, options.shard_size);
        Ok(Plan { layout: options.layout, naming: model.naming, tensors, shards })
    }

    /// Total bytes read.
    pub fn bytes_in(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes_in).sum()
    }

    /// Total bytes written (tensor data).
    pub fn bytes_out(&self) -> u64 {
        self.tensors.iter().map(PlannedTensor::bytes_out).sum()
    }

    /// FastDeploy's `quantization_config` for this plan's schemes, or why its loader could not
    /// read them.
    pub fn fastdeploy_config(&self) -> Result<QuantizationConfig, UnloadableMix> {
        QuantizationConfig::for_tensors(self.tensors.iter().map(|t| (&t.class, t.choice)))
    }

    /// Where the plan quantizes nothing, or less than `policy` asked for, each said with its
    /// numbers: no tensor quantized at all; rules that match no tensor; tensors that fell back
    /// to unquantized; a `fastdeploy-w4w2` whose `w4_end_layer` leaves no expert layer WINT2.
    /// `ccq quantize` prints these as warnings and refuses them with `--strict`.
    pub fn shortfalls(&self, policy: &Policy) -> Vec<String> {
        let mut found = Vec::new();
        let quantized = self.tensors.iter().filter(|t| t.choice.is_some()).count();
        if quantized == 0 {
            found.push(format!("no tensor is quantized: all {} tensors stay as they are", self.tensors.len()));
        }
        for rule in &policy.rules {
            let hits = |t: &PlannedTensor| rule.pattern.is_match(&t.name) || t.sources.iter().any(|s| rule.pattern.is_match(s));
            if !self.tensors.iter().any(hits) {
                found.push(format!("the rule '{rule}' matches no tensor"));
            }
        }
        let unquantized_fallbacks = self.tensors.iter().filter(|t| t.fell_back && t.choice.is_none()).count();
        if unquantized_fallbacks > 0 {
            found.push(format!("{unquantized_fallbacks} tensor(s) the policy quantizes fell back to none and stay unquantized"));
        }
        if let super::policy::Preset::FastdeployW4W2 { w4_end_layer } = policy.preset {
            let expert_layers: Vec<usize> =
                self.tensors.iter().filter(|t| t.class.role.is_routed_expert()).filter_map(|t| t.class.layer).collect();
            let wint2 = self.tensors.iter().any(|t| t.class.role.is_routed_expert() && t.choice == Some(crate::SchemeKind::Wint2));
            if let (Some(last), false) = (expert_layers.iter().max(), wint2) {
                found.push(format!(
                    "fastdeploy-w4w2 with --w4-end-layer {w4_end_layer} makes every expert wint4 (the last MoE layer is {last}): no WINT2 at all"
                ));
            }
        }
        found
    }

    /// The shard file name of shard `i`.
    pub fn shard_name(&self, i: usize) -> String {
        crate::checkpoint::shard_file_name(i, self.shards.len())
    }
}

/// Splits tensors, in order, into shards of at most `shard_size` bytes (a tensor larger than
/// that gets a shard of its own).
fn assign_shards(tensors: &[PlannedTensor], shard_size: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = t.bytes_out();
        let current = shards.last_mut().expect("one shard");
        if !current.is_empty() && size + bytes > shard_size {
            shards.push(vec![i]);
            size = bytes;
        } else {
            current.push(i);
            size += bytes;
        }
    }
    shards
}

/// Plans one output tensor: logical shape, scheme (with fallback) and stored components.
fn plan_group(ckpt: &Checkpoint, group: &Group, options: &PlanOptions) -> Result<PlannedTensor, String> {
    let entries: Vec<_> = group.sources.iter().map(|(_, s)| ckpt.get(s).expect("source from this checkpoint")).collect();
    let first = entries[0];
    let bytes_in = entries.iter().map(|e| e.nbytes()).sum();
    let sources: Vec<String> = group.sources.iter().map(|(_, s)| s.clone()).collect();
    let (k, n) = logical_shape(&entries, group.transpose)?;
    let mut choice = options.policy.choose(&group.class, &group.name, &sources, first.shape.len() == 2);
    let mut fell_back = false;
    if let Some(kind) = choice {
        if first.shape.len() != 2 {
            return Err(format!("{kind} needs a matrix, but this tensor is {} {:?}", first.dtype, first.shape));
        }
        if let Err(e) = kind.decoder().check_shape(k, n) {
            match options.fallback {
                Some(fallback) => {
                    if let Some(f) = fallback {
                        f.decoder().check_shape(k, n).map_err(|e2| format!("{e}; fallback: {e2}"))?;
                    }
                    choice = fallback;
                    fell_back = true;
                }
                None => {
                    let fits: Vec<&str> = std::iter::once("none")
                        .chain(
                            crate::SchemeKind::ALL
                                .into_iter()
                                .filter(|s| s.decoder().check_shape(k, n).is_ok())
                                .map(crate::SchemeKind::name),
                        )
                        .collect();
                    return Err(format!(
                        "{e} (stored {} {:?}{}); schemes that take it: {}",
                        first.dtype,
                        first.shape,
                        if group.transpose { ", [out, in]" } else { "" },
                        fits.join(", ")
                    ));
                }
            }
        }
    }
    let loads_packed =
        matches!(group.class.role, crate::layout::Role::Attention | crate::layout::Role::DenseMlp | crate::layout::Role::SharedExpert)
            || group.class.role.is_routed_expert();
    if let Some(kind) = choice.filter(|_| options.layout == OutputLayout::FastDeploy && !loads_packed) {
        return Err(format!(
            "FastDeploy loads this tensor ({:?}) unquantized, not {kind}; use --layout native to quantize it",
            group.class.role
        ));
    }
    if let Some(kind) = choice.filter(|k| options.layout == OutputLayout::FastDeploy && !fastdeploy::SCHEMES.contains(k)) {
        let how = if fell_back { " (the --fallback scheme)" } else { "" };
        return Err(format!("FastDeploy does not load {kind}{how}; use --layout native for it"));
    }
    let outputs = match choice {
        Some(kind) => {
            let prefix = options.layout.packed_prefix(&group.name);
            kind.decoder()
                .component_layout(k, n)
                .into_iter()
                .map(|(suffix, dtype, shape)| TensorSpec::new(crate::format::component_name(prefix, suffix), dtype, shape))
                .collect()
        }
        None => vec![unquantized_spec(group, first, options.layout, k, n)],
    };
    let planned = PlannedTensor {
        name: group.name.clone(),
        sources,
        class: group.class,
        transpose: group.transpose,
        k,
        n,
        choice,
        fell_back,
        outputs,
        bytes_in,
        source_dtype: first.dtype,
        source_file: ckpt.file_of(&first.name),
    };
    if !planned.is_raw_copy(options.layout) {
        for e in &entries {
            if ckpt.conversion(e).is_err() {
                return Err(format!(
                    "source '{}' is {}, which ccq does not convert to f32 (U16 holding bf16 payload must be read as bf16)",
                    e.name, e.dtype
                ));
            }
        }
    }
    Ok(planned)
}

/// Logical [K, N] of a group: sources share K; their N are concatenated.
fn logical_shape(entries: &[&crate::TensorEntry], transpose: bool) -> Result<(usize, usize), String> {
    let first = entries[0];
    if first.shape.len() != 2 {
        if entries.len() > 1 {
            return Err("only matrices can be fused".to_string());
        }
        return Ok((first.numel(), 1));
    }
    let kn = |e: &crate::TensorEntry| if transpose { (e.shape[1], e.shape[0]) } else { (e.shape[0], e.shape[1]) };
    let (k, _) = kn(first);
    let mut n = 0;
    for e in entries {
        if e.shape.len() != 2 || kn(e).0 != k {
            return Err(format!("cannot fuse '{}' {:?} with '{}' {:?}: input sizes differ", first.name, first.shape, e.name, e.shape));
        }
        n += kn(e).1;
    }
    Ok((k, n))
}

/// The stored tensor of an unquantized output. Native: the source as it is. FastDeploy:
/// router and bias f32, everything else bf16, matrices [in, out] once fused or transposed.
fn unquantized_spec(group: &Group, first: &crate::TensorEntry, layout: OutputLayout, k: usize, n: usize) -> TensorSpec {
    match layout {
        OutputLayout::Native => TensorSpec::new(&group.name, first.dtype, first.shape.clone()),
        OutputLayout::FastDeploy => {
            let dtype = fastdeploy::unquantized_dtype(group.class.role);
            let reshaped = group.transpose || group.sources.len() > 1;
            let shape = if reshaped { vec![k, n] } else { first.shape.clone() };
            TensorSpec::new(&group.name, dtype, shape)
        }
    }
}

/// A group of source tensors that becomes one output tensor.
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) sources: Vec<(Part, String)>,
    pub(crate) class: TensorRole,
    pub(crate) transpose: bool,
}

/// Groups the source tensors into output tensors for `layout`.
pub(crate) fn group_sources(ckpt: &Checkpoint, model: &ModelLayout, layout: OutputLayout) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for t in ckpt.tensors() {
        let class = model.classify(&t.name);
        let (name, transpose) = layout.output_name(&t.name, &class, t.shape.len(), model.naming);
        let part = class.part.unwrap_or(Part::O);
        match index.get(&name) {
            Some(&i) => groups[i].sources.push((part, t.name.clone())),
            None => {
                index.insert(name.clone(), groups.len());
                let mut class = class;
                class.part = fastdeploy::fused_part(class.part, &name);
                groups.push(Group { name, sources: vec![(part, t.name.clone())], class, transpose });
            }
        }
    }
    for g in &mut groups {
        g.sources.sort_by_key(|(part, _)| fastdeploy::fuse_order(*part));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::policy::Preset;
    use crate::SchemeKind;

    fn fixture(name: &str) -> (Checkpoint, ModelLayout) {
        let ckpt = Checkpoint::open(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)).unwrap();
        let config = crate::layout::ModelConfig::from_json(ckpt.config().unwrap(), std::path::Path::new("config.json")).unwrap();
        let model = ModelLayout::detect(config, ckpt.tensors().iter().map(|t| t.name.as_str()));
        (ckpt, model)
    }

    fn plan(name: &str, layout: OutputLayout, shard_size: u64) -> Plan {
        let (ckpt, model) = fixture(name);
        let policy = Policy { preset: Preset::FastdeployW4W2 { w4_end_layer: 1 }, rules: vec![] };
        Plan::build(&ckpt, &model, &PlanOptions { layout, policy: &policy, fallback: None, shard_size }).unwrap()
    }

    #[test]
    fn fused_groups_keep_qkv_and_gate_up_order() {
        let p = plan("ernie45-tiny-pt", OutputLayout::FastDeploy, u64::MAX);
        assert_eq!(p.tensors.len(), 40);
        let qkv = p.tensors.iter().find(|t| t.name == "ernie.layers.0.self_attn.qkv_proj.weight").unwrap();
        let parts: Vec<&str> = qkv.sources.iter().map(|s| s.rsplit('.').nth(1).unwrap()).collect();
        assert_eq!(parts, ["q_proj", "k_proj", "v_proj"]);
        assert_eq!((qkv.k, qkv.n, qkv.transpose, qkv.choice), (128, 256, true, Some(SchemeKind::Wint8)));
        let up_gate = p.tensors.iter().find(|t| t.name == "ernie.layers.2.mlp.experts.1.up_gate_proj.weight").unwrap();
        assert!(up_gate.sources[0].ends_with("gate_proj.weight") && up_gate.sources[1].ends_with("up_proj.weight"));
        assert_eq!((up_gate.k, up_gate.n, up_gate.choice), (128, 256, Some(SchemeKind::Wint2)));
        let router = p.tensors.iter().find(|t| t.name == "ernie.layers.1.mlp.gate.weight").unwrap();
        assert_eq!(router.outputs[0].dtype, Dtype::F32);
        assert_eq!(router.outputs[0].shape, vec![128, 4]);
    }

    #[test]
    fn fused_order_does_not_depend_on_file_order() {
        use crate::checkpoint::write::{SafetensorsWriter, TensorSpec};
        let dir = crate::test_support::scratch("plan-order", true);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type": "ernie4_5_moe"}"#).unwrap();
        let names = [
            "model.mtp_block.0.self_attn.k_proj.weight",
            "model.mtp_block.0.self_attn.q_proj.weight",
            "model.mtp_block.0.self_attn.v_proj.weight",
            "model.mtp_block.0.mlp.up_proj.weight",
            "model.mtp_block.0.mlp.gate_proj.weight",
        ];
        let specs: Vec<TensorSpec> = names.iter().map(|n| TensorSpec::new(*n, Dtype::BF16, vec![2, 2])).collect();
        let mut w = SafetensorsWriter::create(dir.join("model.safetensors"), &specs, &Default::default()).unwrap();
        w.write(&[0u8; 40]).unwrap();
        w.finish().unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let model = ModelLayout::of(&ckpt).unwrap();
        let groups = group_sources(&ckpt, &model, OutputLayout::FastDeploy);
        let order: Vec<Vec<&str>> = groups.iter().map(|g| g.sources.iter().map(|(_, s)| s.split('.').nth(4).unwrap()).collect()).collect();
        assert_eq!(order, [vec!["q_proj", "k_proj", "v_proj"], vec!["gate_proj", "up_proj"]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn native_layout_keeps_names_and_shards_by_size() {
        let p = plan("ernie45-tiny-pt", OutputLayout::Native, 100_000);
        assert_eq!(p.tensors.len(), 57);
        assert!(p.shards.len() > 1);
        let all: Vec<usize> = p.shards.iter().flatten().copied().collect();
        assert_eq!(all, (0..57).collect::<Vec<_>>());
        for shard in &p.shards {
            let bytes: u64 = shard.iter().map(|&t| p.tensors[t].bytes_out()).sum();
            assert!(shard.len() == 1 || bytes <= 100_000, "{bytes}");
        }
        let expert = p.tensors.iter().find(|t| t.name == "model.layers.2.mlp.experts.0.down_proj.weight").unwrap();
        let names: Vec<&str> = expert.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names[0], "model.layers.2.mlp.experts.0.down_proj.weight.quant_weight");
        assert_eq!(p.shard_name(0), format!("model-00001-of-{:05}.safetensors", p.shards.len()));
    }
}
