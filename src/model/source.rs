//! Where the forward pass gets its weights: an original checkpoint or a quantized one.
//!
//! Tensor names come from [`super::names`]. Both namings are understood. PyTorch (`model.`
//! prefix): separate `q/k/v_proj` and `gate/up` projections, linear weights `[out, in]`,
//! router `[experts, hidden]`. Paddle (`ernie.` prefix, ERNIE only): fused
//! `self_attn.qkv_proj` (`[q | k | v]` columns) and `up_gate_proj` (`[gate | up]`), weights
//! `[in, out]`, router `[hidden, experts]`. Which one a layer uses is decided by which tensors
//! exist, so a FastDeploy checkpoint made from a PyTorch one (Paddle names) reads the same
//! way. A linear's `.bias`, when stored, is added to its output.
//!
//! [`OriginalWeights`] assembles f32 logical `[k, n]` matrices
//! ([`Checkpoint::logical_matrix`](crate::Checkpoint::logical_matrix)); [`QuantizedWeights`] hands each tensor's packed
//! components (or its unquantized matrix) to [`crate::kernel::matmul`] as
//! [`crate::quantized::QuantizedCheckpoint::weights`] gives them. Norms, the router, its
//! bias and the embedding are read as stored in both. The lm_head, when tied, is the
//! embedding transposed, in f32.

use super::names::{QKV_FUSED, QKV_LEAVES};
use super::{
    Biased, Block, ForwardConfig, KernelLinear, LayerWeights, Linear, Mlp, MoeWeights, Projections, SwiGlu, TensorNames, WeightSource,
};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::quantized::QuantizedCheckpoint;

/// How a checkpoint stores its linears.
trait Store: Sync {
    fn ckpt(&self) -> &Checkpoint;
    /// The shape of the linear `module` (no `.weight`) as stored (a packed one: its logical
    /// `[k, n]`), when it exists.
    fn linear_shape(&self, module: &str) -> Option<Vec<usize>>;
    /// Whether the linear `module` exists.
    fn has_linear(&self, module: &str) -> bool {
        self.linear_shape(module).is_some()
    }
    /// The linear `module`, checked to be logical `[k, n]`.
    fn linear(&self, module: &str, k: usize, n: usize) -> Result<Box<dyn Linear>>;
}

/// A checkpoint's weights behind [`WeightSource`].
struct Source<S> {
    store: S,
    cfg: ForwardConfig,
    names: TensorNames,
    paddle: bool,
}

/// An original (unquantized) checkpoint, either naming.
pub struct OriginalWeights<'a>(Source<OriginalStore<'a>>);

/// A quantized checkpoint (FastDeploy or native layout), through the packed kernels.
pub struct QuantizedWeights<'a>(Source<QuantStore<'a>>);

struct OriginalStore<'a> {
    ckpt: &'a Checkpoint,
    paddle: bool,
    /// Linear weights (by tensor name) to use instead of the stored ones, logical `[k, n]`.
    replaced: Option<&'a std::collections::BTreeMap<String, Vec<f32>>>,
}

struct QuantStore<'a> {
    q: &'a QuantizedCheckpoint,
}

fn config_of(ckpt: &Checkpoint) -> Result<ForwardConfig> {
    let file = ckpt.path().join(crate::checkpoint::CONFIG_FILE);
    let json = ckpt.config().ok_or_else(|| Error::BadInput {
        problem: format!("{}: no config.json; the forward pass needs the model's config", ckpt.path().display()),
    })?;
    ForwardConfig::from_json(json, &file)
}

fn is_paddle(ckpt: &Checkpoint) -> bool {
    ckpt.tensors().iter().any(|t| t.name.starts_with(crate::layout::PADDLE_PREFIX))
}

/// Checks, from headers, that an original checkpoint of a family the forward pass runs holds
/// every tensor its config describes with the config's shapes (all problems listed at once,
/// [`WeightSource::check_complete`]). Returns whether it was checked: `false` for a checkpoint
/// without `config.json` or of another family, which ccq can still convert tensor by tensor.
pub fn check_original_complete(ckpt: &Checkpoint) -> Result<bool> {
    let Some(json) = ckpt.config() else { return Ok(false) };
    if super::config::Architecture::of(json, &ckpt.path().join(crate::checkpoint::CONFIG_FILE)).is_err() {
        return Ok(false);
    }
    OriginalWeights::new(ckpt)?.check_complete()?;
    Ok(true)
}

impl<'a> OriginalWeights<'a> {
    /// Reads and checks the config of an original checkpoint.
    pub fn new(ckpt: &'a Checkpoint) -> Result<OriginalWeights<'a>> {
        let paddle = is_paddle(ckpt);
        Source::new(OriginalStore { ckpt, paddle, replaced: None }, config_of(ckpt)?).map(OriginalWeights)
    }

    /// An original checkpoint whose linear weights named in `replaced` (tensor name -> logical
    /// `[k, n]` f32, e.g. decoded quantized weights) are used instead of the stored ones.
    pub fn with_replaced(ckpt: &'a Checkpoint, replaced: &'a std::collections::BTreeMap<String, Vec<f32>>) -> Result<OriginalWeights<'a>> {
        let paddle = is_paddle(ckpt);
        Source::new(OriginalStore { ckpt, paddle, replaced: Some(replaced) }, config_of(ckpt)?).map(OriginalWeights)
    }
}

impl<'a> QuantizedWeights<'a> {
    /// Reads and checks the config of a quantized checkpoint.
    pub fn new(q: &'a QuantizedCheckpoint) -> Result<QuantizedWeights<'a>> {
        Source::new(QuantStore { q }, config_of(q.checkpoint())?).map(QuantizedWeights)
    }
}

impl<S: Store> Source<S> {
    fn new(store: S, cfg: ForwardConfig) -> Result<Source<S>> {
        let paddle = is_paddle(store.ckpt());
        let names = TensorNames::new(cfg.architecture, paddle);
        let source = Source { store, cfg, names, paddle };
        source.ckpt().get(&source.names.embed())?;
        Ok(source)
    }

    fn ckpt(&self) -> &Checkpoint {
        self.store.ckpt()
    }

    /// A 1-D f32 weight of `len` values (the first `len` when longer, e.g. the VL bias).
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let mut v = self.ckpt().read_f32_finite(name)?;
        if v.len() < len {
            return Err(Error::BadTensor {
                file: Some(self.ckpt().file_of(name)),
                tensor: name.to_string(),
                problem: format!("has {} values, expected {len}", v.len()),
            });
        }
        v.truncate(len);
        Ok(v)
    }

    /// A stored matrix as logical `[k, n]` f32: stored `[k, n]` or `[n, k]` (by shape; by
    /// naming when square).
    fn matrix(&self, name: &str, k: usize, n: usize) -> Result<Vec<f32>> {
        let entry = self.ckpt().get(name)?;
        let transpose = match entry.shape.as_slice() {
            [a, b] if (*a, *b) == (k, n) && (*a, *b) == (n, k) => !self.paddle,
            [a, b] if (*a, *b) == (k, n) => false,
            [a, b] if (*a, *b) == (n, k) => true,
            s => {
                return Err(Error::BadTensor {
                    file: Some(self.ckpt().file_of(name)),
                    tensor: name.to_string(),
                    problem: format!("shape {s:?} is neither [{k}, {n}] nor [{n}, {k}]"),
                })
            }
        };
        self.ckpt().logical_matrix(&[name.to_string()], k, n, transpose)
    }

    /// The linear `module`, with its `.bias` when the checkpoint stores one.
    fn linear(&self, module: &str, k: usize, n: usize) -> Result<Box<dyn Linear>> {
        let linear = self.store.linear(module, k, n)?;
        let bias_name = format!("{module}.bias");
        if self.ckpt().get(&bias_name).is_err() {
            return Ok(linear);
        }
        Ok(Box::new(Biased { linear, bias: self.vector(&bias_name, n)? }))
    }

    fn projections(&self, module: &str, fused: &str, separate: &[&str], widths: Vec<usize>, k: usize) -> Result<Projections> {
        let fused_name = format!("{module}.{fused}");
        let parts = if self.store.has_linear(&fused_name) {
            vec![self.linear(&fused_name, k, widths.iter().sum())?]
        } else {
            separate.iter().zip(&widths).map(|(s, &w)| self.linear(&format!("{module}.{s}"), k, w)).collect::<Result<Vec<_>>>()?
        };
        Projections::new(&fused_name, parts, widths, k)
    }

    fn swiglu(&self, layer: usize, block: Block, width: usize) -> Result<SwiGlu> {
        let h = self.cfg.hidden;
        let module = self.names.module(layer, block);
        let leaves = self.names.mlp_leaves(block);
        Ok(SwiGlu {
            gate_up: self.projections(&module, leaves.fused, &[leaves.gate, leaves.up], vec![width, width], h)?,
            down: self.linear(&format!("{module}.{}", leaves.down), width, h)?,
        })
    }

    fn moe(&self, i: usize) -> Result<MoeWeights> {
        let (c, names) = (&self.cfg, &self.names);
        let router = self.matrix(&names.router(i), c.hidden, c.experts)?;
        let bias_name = names.router_bias(i);
        let bias = match self.ckpt().get(&bias_name) {
            Ok(_) => self.vector(&bias_name, c.experts)?,
            Err(_) => vec![0.0; c.experts],
        };
        let experts = (0..c.experts).map(|e| self.swiglu(i, Block::Expert(e), c.moe_intermediate)).collect::<Result<Vec<_>>>()?;
        let shared = match c.shared_intermediate {
            0 => None,
            width => Some(self.swiglu(i, Block::SharedExperts, width)?),
        };
        let shared_gate = match c.shared_gate && shared.is_some() {
            true => Some(self.matrix(&names.shared_gate(i), c.hidden, 1)?),
            false => None,
        };
        Ok(MoeWeights { router, bias, experts, shared, shared_gate })
    }
}

/// Collects what a checkpoint lacks for the forward pass: absent tensors and linears whose
/// stored shape is not the config's.
struct Inventory<'a, S> {
    source: &'a Source<S>,
    problems: Vec<String>,
}

impl<S: Store> Inventory<'_, S> {
    fn vector(&mut self, name: String, len: usize) {
        self.exact(name, &[len], "a vector");
    }

    /// A tensor read as stored, which must have exactly `shape` (`what` names the config's
    /// fields that give it).
    fn exact(&mut self, name: String, shape: &[usize], what: &str) {
        match self.source.ckpt().get(&name) {
            Err(_) => self.problems.push(format!("{name} is missing")),
            Ok(e) if e.shape != shape => self.problems.push(format!("{name}: stored {:?}, the config needs {shape:?} ({what})", e.shape)),
            Ok(_) => {}
        }
    }

    /// A matrix read as stored (router, shared-expert gate): `[k, n]` or `[n, k]`.
    fn matrix(&mut self, name: String, k: usize, n: usize) {
        match self.source.ckpt().get(&name) {
            Err(_) => self.problems.push(format!("{name} is missing")),
            Ok(e) => self.shape(&name, &e.shape, k, n),
        }
    }

    fn linear(&mut self, module: String, k: usize, n: usize) {
        match self.source.store.linear_shape(&module) {
            None => self.problems.push(format!("{module}.weight is missing")),
            Some(shape) => self.shape(&module, &shape, k, n),
        }
    }

    /// `shape` must be `[k, n]` or `[n, k]`.
    fn shape(&mut self, name: &str, shape: &[usize], k: usize, n: usize) {
        if shape != [k, n] && shape != [n, k] {
            self.problems.push(format!("{name}: stored {shape:?}, the config needs [{n}, {k}]"));
        }
    }

    fn projections(&mut self, module: &str, fused: &str, separate: &[&str], widths: &[usize], k: usize) {
        let fused_name = format!("{module}.{fused}");
        if self.source.store.has_linear(&fused_name) {
            return self.linear(fused_name, k, widths.iter().sum());
        }
        for (s, &w) in separate.iter().zip(widths) {
            self.linear(format!("{module}.{s}"), k, w);
        }
    }

    fn swiglu(&mut self, layer: usize, block: Block, width: usize) {
        let names = &self.source.names;
        let (module, leaves, h) = (names.module(layer, block), names.mlp_leaves(block), self.source.cfg.hidden);
        self.projections(&module, leaves.fused, &[leaves.gate, leaves.up], &[width, width], h);
        self.linear(format!("{module}.{}", leaves.down), width, h);
    }

    fn layer(&mut self, i: usize) {
        let (c, names) = (&self.source.cfg, &self.source.names);
        let (base, attn) = (names.layer(i), names.attention(i));
        self.vector(format!("{base}.input_layernorm.weight"), c.hidden);
        self.vector(format!("{base}.post_attention_layernorm.weight"), c.hidden);
        let (qw, kvw) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        self.projections(&attn, QKV_FUSED, &QKV_LEAVES, &[qw, kvw, kvw], c.hidden);
        self.linear(format!("{attn}.o_proj"), qw, c.hidden);
        if c.architecture.qk_norm() {
            self.vector(format!("{attn}.q_norm.weight"), c.head_dim);
            self.vector(format!("{attn}.k_norm.weight"), c.head_dim);
        }
        if !c.is_moe_layer(i) {
            return self.swiglu(i, Block::DenseMlp, c.intermediate);
        }
        self.matrix(names.router(i), c.hidden, c.experts);
        for e in 0..c.experts {
            self.swiglu(i, Block::Expert(e), c.moe_intermediate);
        }
        if c.shared_intermediate > 0 {
            self.swiglu(i, Block::SharedExperts, c.shared_intermediate);
            if c.shared_gate {
                self.matrix(names.shared_gate(i), c.hidden, 1);
            }
        }
    }
}

impl<S: Store> Source<S> {
    /// Every tensor the forward pass will read, checked to exist with the config's shape
    /// (headers only); all problems listed at once.
    fn check_complete(&self) -> Result<()> {
        let mut inv = Inventory { source: self, problems: Vec::new() };
        let (vocab, hidden) = (self.cfg.vocab, self.cfg.hidden);
        inv.exact(self.names.embed(), &[vocab, hidden], "vocab_size, hidden_size");
        inv.vector(self.names.final_norm(), hidden);
        if !self.cfg.tie_word_embeddings {
            inv.linear("lm_head".to_string(), self.cfg.hidden, self.cfg.vocab);
        }
        for i in 0..self.cfg.layers {
            inv.layer(i);
        }
        let what = format!("{}: the checkpoint does not hold the model its config describes", self.ckpt().path().display());
        Error::refuse_all(&what, inv.problems, 8)
    }
}

impl<S: Store> WeightSource for Source<S> {
    fn path(&self) -> &std::path::Path {
        self.ckpt().path()
    }

    fn check_complete(&self) -> Result<()> {
        Source::check_complete(self)
    }

    fn config(&self) -> &ForwardConfig {
        &self.cfg
    }

    fn names(&self) -> &TensorNames {
        &self.names
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (h, vocab) = (self.cfg.hidden, self.cfg.vocab);
        let entry = self.ckpt().get(&self.names.embed())?;
        if entry.shape != [vocab, h] {
            return Err(Error::BadTensor {
                file: Some(self.ckpt().file_of(&entry.name)),
                tensor: entry.name.clone(),
                problem: format!("shape {:?} is not [{vocab}, {h}]", entry.shape),
            });
        }
        let conversion = self.ckpt().conversion(entry)?;
        let bytes = self.ckpt().raw_bytes(entry)?;
        let row = h * conversion.element_size();
        let mut out = vec![0.0f32; tokens.len() * h];
        for (&t, o) in tokens.iter().zip(out.chunks_exact_mut(h)) {
            conversion.convert(&bytes[t as usize * row..(t as usize + 1) * row], o);
        }
        Ok(out)
    }

    fn layer(&self, i: usize) -> Result<LayerWeights> {
        let c = &self.cfg;
        let base = self.names.layer(i);
        let attn = self.names.attention(i);
        let (qw, kvw) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let qkv = self.projections(&attn, QKV_FUSED, &QKV_LEAVES, vec![qw, kvw, kvw], c.hidden)?;
        let o = self.linear(&format!("{attn}.o_proj"), qw, c.hidden)?;
        let qk_norm = match c.architecture.qk_norm() {
            true => Some((
                self.vector(&format!("{attn}.q_norm.weight"), c.head_dim)?,
                self.vector(&format!("{attn}.k_norm.weight"), c.head_dim)?,
            )),
            false => None,
        };
        let mlp = match c.is_moe_layer(i) {
            true => Mlp::Moe(self.moe(i)?),
            false => Mlp::Dense(self.swiglu(i, Block::DenseMlp, c.intermediate)?),
        };
        Ok(LayerWeights {
            qk_norm,
            input_norm: self.vector(&format!("{base}.input_layernorm.weight"), c.hidden)?,
            post_norm: self.vector(&format!("{base}.post_attention_layernorm.weight"), c.hidden)?,
            qkv,
            o,
            mlp,
        })
    }

    fn final_norm(&self) -> Result<Vec<f32>> {
        self.vector(&self.names.final_norm(), self.cfg.hidden)
    }

    fn lm_head(&self) -> Result<Box<dyn Linear>> {
        let (h, vocab) = (self.cfg.hidden, self.cfg.vocab);
        if self.cfg.tie_word_embeddings || !self.store.has_linear("lm_head") {
            if !self.cfg.tie_word_embeddings {
                return Err(Error::TensorNotFound { checkpoint: self.ckpt().path().to_path_buf(), tensor: "lm_head.weight".to_string() });
            }
            // E is stored [vocab, hidden]; the head's logical [hidden, vocab] is its transpose.
            let w = self.ckpt().logical_matrix(&[self.names.embed()], h, vocab, true)?;
            let embed = self.names.embed();
            return Ok(Box::new(KernelLinear::dense_f32(self.ckpt().file_of(&embed), embed, &w, h, vocab)));
        }
        self.store.linear("lm_head", h, vocab)
    }
}

impl Store for OriginalStore<'_> {
    fn ckpt(&self) -> &Checkpoint {
        self.ckpt
    }

    fn linear_shape(&self, module: &str) -> Option<Vec<usize>> {
        self.ckpt.get(&format!("{module}.weight")).ok().map(|e| e.shape.clone())
    }

    fn linear(&self, module: &str, k: usize, n: usize) -> Result<Box<dyn Linear>> {
        let name = format!("{module}.weight");
        if let Some(w) = self.replaced.and_then(|r| r.get(&name)) {
            if w.len() != k * n {
                return Err(Error::BadTensor {
                    file: None,
                    tensor: name,
                    problem: format!("replacement holds {} values, not [{k}, {n}]", w.len()),
                });
            }
            return Ok(Box::new(KernelLinear::dense_f32(self.ckpt.path().to_path_buf(), name, w, k, n)));
        }
        let entry = self.ckpt.get(&name)?;
        // PyTorch stores [out, in], Paddle [in, out]; an lm_head of either may be either.
        let transpose = match entry.shape.as_slice() {
            [a, b] if (*a, *b) == (n, k) && (k != n || !self.paddle) => true,
            [a, b] if (*a, *b) == (k, n) => false,
            s => {
                return Err(Error::BadTensor {
                    file: Some(self.ckpt.file_of(&name)),
                    tensor: name,
                    problem: format!("shape {s:?} is neither [{k}, {n}] nor [{n}, {k}]"),
                })
            }
        };
        let w = self.ckpt.logical_matrix(std::slice::from_ref(&name), k, n, transpose)?;
        self.ckpt.release(entry);
        Ok(Box::new(KernelLinear::dense_f32(self.ckpt.file_of(&name), name, &w, k, n)))
    }
}

impl QuantStore<'_> {
    /// The linear `module`'s weight: packed under the layout's prefix, or stored unquantized
    /// as `module.weight`.
    fn find(&self, module: &str) -> Option<&crate::quantized::QuantizedTensor> {
        let weight = format!("{module}.weight");
        self.q.get(self.q.layout().packed_prefix(&weight)).or_else(|_| self.q.get(&weight)).ok()
    }
}

impl Store for QuantStore<'_> {
    fn ckpt(&self) -> &Checkpoint {
        self.q.checkpoint()
    }

    fn linear_shape(&self, module: &str) -> Option<Vec<usize>> {
        self.find(module).map(|t| vec![t.k, t.n])
    }

    fn linear(&self, module: &str, k: usize, n: usize) -> Result<Box<dyn Linear>> {
        let t = self
            .find(module)
            .ok_or_else(|| Error::TensorNotFound { checkpoint: self.q.checkpoint().path().to_path_buf(), tensor: module.to_string() })?;
        if (t.k, t.n) != (k, n) {
            return Err(Error::BadTensor {
                file: Some(self.q.checkpoint().path().to_path_buf()),
                tensor: t.name.clone(),
                problem: format!("logical shape [{}, {}] is not [{k}, {n}]", t.k, t.n),
            });
        }
        let weights = self.q.weights(t)?;
        self.q.release(t);
        Ok(Box::new(KernelLinear::new(self.q.file_of(t), t.name.clone(), weights)))
    }
}

/// A checkpoint the forward pass runs, opened by what it holds: quantized (either layout,
/// through the packed kernels) or original (any naming; also `ccq dequant` output).
pub enum ModelFiles {
    /// An original checkpoint.
    Original(Box<Checkpoint>),
    /// A quantized checkpoint.
    Quantized(Box<QuantizedCheckpoint>),
}

impl ModelFiles {
    /// Opens `path` as a quantized checkpoint when it is one
    /// ([`crate::quantized::holds_quantized`]), as an original one otherwise.
    pub fn open(path: &std::path::Path) -> Result<ModelFiles> {
        let ckpt = Checkpoint::open(path)?;
        match crate::quantized::holds_quantized(&ckpt) {
            true => QuantizedCheckpoint::open(path).map(|q| ModelFiles::Quantized(Box::new(q))),
            false => Ok(ModelFiles::Original(Box::new(ckpt))),
        }
    }

    /// The stored checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        match self {
            ModelFiles::Original(c) => c,
            ModelFiles::Quantized(q) => q.checkpoint(),
        }
    }

    /// `original`, or `quantized (LAYOUT)`.
    pub fn kind(&self) -> String {
        match self {
            ModelFiles::Original(_) => "original".to_string(),
            ModelFiles::Quantized(q) => format!("quantized ({})", q.layout().name()),
        }
    }

    /// The weights, behind the forward pass's [`WeightSource`].
    pub fn weights(&self) -> Result<Box<dyn WeightSource + '_>> {
        Ok(match self {
            ModelFiles::Original(c) => Box::new(OriginalWeights::new(c)?),
            ModelFiles::Quantized(q) => Box::new(QuantizedWeights::new(q)?),
        })
    }
}

/// The public wrappers hand every call to their [`Source`].
macro_rules! forward_to_source {
    ($($wrapper:ident),*) => {$(
        impl WeightSource for $wrapper<'_> {
            fn path(&self) -> &std::path::Path {
                self.0.path()
            }
            fn config(&self) -> &ForwardConfig {
                self.0.config()
            }
            fn names(&self) -> &TensorNames {
                self.0.names()
            }
            fn check_complete(&self) -> Result<()> {
                self.0.check_complete()
            }
            fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
                self.0.embed(tokens)
            }
            fn layer(&self, i: usize) -> Result<LayerWeights> {
                self.0.layer(i)
            }
            fn final_norm(&self) -> Result<Vec<f32>> {
                self.0.final_norm()
            }
            fn lm_head(&self) -> Result<Box<dyn Linear>> {
                self.0.lm_head()
            }
        }
    )*};
}

forward_to_source!(OriginalWeights, QuantizedWeights);
