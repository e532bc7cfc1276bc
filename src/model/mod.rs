//! The decoder forward pass of every family ccq runs, layer by layer, on original or
//! quantized weights.
//!
//! # What it computes
//! One family-independent driver; what differs per family (rope pairing, q/k norms, router
//! renormalisation, shared expert and its gate, names) is data in [`config`] and [`names`].
//! The references are Hugging Face's `Ernie4_5_MoeForCausalLM`, `Qwen2MoeForCausalLM`,
//! `Qwen3MoeForCausalLM`, `MixtralForCausalLM` and `LlamaForCausalLM`, computed here in f32
//! throughout:
//!
//! ```text
//! h = E[token]
//! for each layer l:
//!     q, k, v = n1(h) Wq + bq, n1(h) Wk + bk, n1(h) Wv + bv   n1 = input_layernorm; biases when stored
//!     q, k = qn(q), kn(k)                                     per-head rmsnorm (Qwen3 only)
//!     h += o( attn( rope(q), rope(k), v ) )
//!     h += mlp_l( n2(h) )                                     n2 = post_attention_layernorm
//! logits = lm_head( norm(h) )          lm_head = E^T when tie_word_embeddings
//!
//! rmsnorm(x) = w * x / sqrt(mean(x^2) + rms_norm_eps)
//! rope, head dim d, position p, f_i = p * rope_theta^(-2i/d), i < d/2, rotating the pair (a, b):
//!     a' = a cos f_i - b sin f_i,   b' = b cos f_i + a sin f_i
//!     interleaved (ERNIE): (a, b) = (x[2i], x[2i+1]);  half (others): (a, b) = (x[i], x[i + d/2])
//! attention: grouped-query (query head h reads kv head h / (heads / kv_heads)),
//!     softmax(q k^T / sqrt(d) + causal mask) v
//! dense mlp (layers that are not MoE): down(silu(gate x) * up x)
//! moe mlp:
//!     p = softmax(x · G)                      G = router, f32, [hidden, experts]
//!     S = top-k experts by p + b              b = e_score_correction_bias (ERNIE), else 0
//!     w_e = p_e / max(sum_{e' in S} p_e', moe_norm_min)  when renormalised, else p_e
//!     y = sum_{e in S} w_e expert_e(x) + g(x) shared(x)   g = sigmoid(x · shared_expert_gate)
//!                                                         (Qwen2-MoE), else 1; each a SwiGLU mlp
//! ```
//! Ties in the top-k are broken towards the lower expert index.
//!
//! # Memory
//! [`forward`] runs a batch of sequences one layer at a time: it asks its [`WeightSource`]
//! for one layer's weights, runs every token of the batch through it, drops them and moves
//! on, so it holds one layer's weights, the hidden states (`tokens x hidden`) and one
//! sequence's attention scores (`heads x len x len`) at a time.
//!
//! # Weights
//! Every projection is a [`Linear`] (`y = x W + b`, `x` is `[m, k]`); [`source::OriginalWeights`]
//! reads an original checkpoint (PyTorch or Paddle naming) into f32 matrices,
//! [`source::QuantizedWeights`] hands a quantized checkpoint's packed tensors to the kernels.
//! Fused tensors (Paddle's `qkv_proj`, `up_gate_proj`) run once and are split by columns.
//!
//! # Hooks
//! An [`Observer`] sees every linear's input rows (for an expert: only the tokens routed to
//! it, with their token indices and routing weights) and every MoE layer's [`Routing`]: what
//! per-expert calibration statistics are gathered from.

pub mod config;
pub mod decode;
pub mod eval;
pub mod names;
pub mod source;
#[cfg(test)]
mod tests;

pub use config::{Architecture, ForwardConfig, Rope};
pub use names::TensorNames;

use crate::error::{Error, Result};

/// A projection `y = x W`: `x` is `[m, k]`, `y` is `[m, n]`, both row-major.
pub trait Linear: Send + Sync {
    /// Input width.
    fn k(&self) -> usize;
    /// Output width.
    fn n(&self) -> usize;
    /// `x W` for `m` rows.
    fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>>;
    /// Bytes of weights (and bias) one product reads.
    fn bytes(&self) -> usize;
}

/// Weights a kernel multiplies by ([`crate::kernel::matmul`]): packed, or dense f32/bf16.
pub struct KernelLinear {
    file: std::path::PathBuf,
    name: String,
    weights: crate::quantized::OwnedWeights,
}

impl KernelLinear {
    /// A dense f32 logical `[k, n]` matrix read from tensor `name` of `file`.
    pub fn dense_f32(file: std::path::PathBuf, name: impl Into<String>, w: &[f32], k: usize, n: usize) -> KernelLinear {
        let bytes = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dense = crate::quantized::DenseMatrix { dtype: crate::Dtype::F32, k, n, bytes };
        KernelLinear { file, name: name.into(), weights: crate::quantized::OwnedWeights::Dense(dense) }
    }

    /// Weights as a quantized checkpoint hands them out, from tensor `name` of `file`.
    pub fn new(file: std::path::PathBuf, name: impl Into<String>, weights: crate::quantized::OwnedWeights) -> KernelLinear {
        KernelLinear { file, name: name.into(), weights }
    }
}

impl Linear for KernelLinear {
    fn k(&self) -> usize {
        self.weights.as_kernel().shape().0
    }

    fn n(&self) -> usize {
        self.weights.as_kernel().shape().1
    }

    fn bytes(&self) -> usize {
        self.weights.bytes()
    }

    fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        crate::kernel::matmul(crate::kernel::Input::F32(x), m, &self.weights.as_kernel()).map_err(|source| Error::Kernel {
            file: self.file.clone(),
            tensor: self.name.clone(),
            source,
        })
    }
}

/// A linear followed by a bias: `y = x W + b`.
pub struct Biased {
    /// The linear.
    pub linear: Box<dyn Linear>,
    /// `b`, one per output.
    pub bias: Vec<f32>,
}

impl Linear for Biased {
    fn k(&self) -> usize {
        self.linear.k()
    }

    fn n(&self) -> usize {
        self.linear.n()
    }

    fn bytes(&self) -> usize {
        self.linear.bytes() + 4 * self.bias.len()
    }

    fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut y = self.linear.forward(x, m)?;
        for row in y.chunks_exact_mut(self.bias.len()) {
            add(row, &self.bias);
        }
        Ok(y)
    }
}

/// Projections sharing one input: either one per output (`q`, `k`, `v`) or one fused
/// tensor whose columns are the outputs side by side (`qkv_proj`), split after the matmul.
pub struct Projections {
    parts: Vec<Box<dyn Linear>>,
    widths: Vec<usize>,
}

impl Projections {
    /// `parts` is either one linear per entry of `widths`, or one fused linear of their sum.
    pub fn new(name: &str, parts: Vec<Box<dyn Linear>>, widths: Vec<usize>, k: usize) -> Result<Projections> {
        let bad = |problem: String| Err(Error::BadTensor { file: None, tensor: name.to_string(), problem });
        let total: usize = widths.iter().sum();
        match parts.len() {
            1 if parts[0].n() != total => return bad(format!("fused width {} is not {total}", parts[0].n())),
            n if n == widths.len() => {
                for (p, &w) in parts.iter().zip(&widths) {
                    if p.n() != w {
                        return bad(format!("output width {} is not {w}", p.n()));
                    }
                }
            }
            1 => {}
            n => return bad(format!("{n} parts for {} outputs", widths.len())),
        }
        if let Some(p) = parts.iter().find(|p| p.k() != k) {
            return bad(format!("input width {} is not {k}", p.k()));
        }
        Ok(Projections { parts, widths })
    }

    /// Bytes of weights one product of every part reads.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.bytes()).sum()
    }

    /// One `[m, width_i]` output per width.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<Vec<f32>>> {
        if self.parts.len() == self.widths.len() {
            return self.parts.iter().map(|p| p.forward(x, m)).collect();
        }
        let fused = self.parts[0].forward(x, m)?;
        let total: usize = self.widths.iter().sum();
        let mut offset = 0;
        let mut out = Vec::with_capacity(self.widths.len());
        for &w in &self.widths {
            let mut y = Vec::with_capacity(m * w);
            for r in 0..m {
                y.extend_from_slice(&fused[r * total + offset..r * total + offset + w]);
            }
            out.push(y);
            offset += w;
        }
        Ok(out)
    }
}

/// A SwiGLU MLP: `down(silu(gate x) * up x)`.
pub struct SwiGlu {
    /// `[gate, up]`, separate or fused.
    pub gate_up: Projections,
    /// The down projection.
    pub down: Box<dyn Linear>,
}

impl SwiGlu {
    /// Bytes of weights one pass reads.
    pub fn bytes(&self) -> usize {
        self.gate_up.bytes() + self.down.bytes()
    }
}

/// An MoE block's weights.
pub struct MoeWeights {
    /// Router `[hidden, experts]`, f32.
    pub router: Vec<f32>,
    /// `e_score_correction_bias`, one per expert (zeros when the checkpoint has none).
    pub bias: Vec<f32>,
    /// The routed experts.
    pub experts: Vec<SwiGlu>,
    /// The shared experts' MLP, when there are any.
    pub shared: Option<SwiGlu>,
    /// The shared expert's gate `[hidden]` (Qwen2-MoE): its output is scaled by `sigmoid(x · g)`.
    pub shared_gate: Option<Vec<f32>>,
}

/// A layer's MLP.
pub enum Mlp {
    /// A dense SwiGLU MLP.
    Dense(SwiGlu),
    /// A Mixture-of-Experts block.
    Moe(MoeWeights),
}

/// One decoder layer's weights.
pub struct LayerWeights {
    /// `input_layernorm.weight`.
    pub input_norm: Vec<f32>,
    /// `post_attention_layernorm.weight`.
    pub post_norm: Vec<f32>,
    /// `[q, k, v]`, separate or fused.
    pub qkv: Projections,
    /// Per-head RMSNorm weights of q and k (`[head_dim]` each; Qwen3).
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// The output projection.
    pub o: Box<dyn Linear>,
    /// The MLP.
    pub mlp: Mlp,
}

/// Where a model's weights come from, one layer at a time.
pub trait WeightSource: Sync {
    /// The checkpoint the weights come from (named in errors).
    fn path(&self) -> &std::path::Path;
    /// The checked config.
    fn config(&self) -> &ForwardConfig;
    /// The checkpoint's tensor names.
    fn names(&self) -> &TensorNames;
    /// Checks, from headers only, that every tensor the forward pass reads is there with the
    /// config's shape; all problems are listed at once.
    fn check_complete(&self) -> Result<()>;
    /// The embedding rows of `tokens`, `[tokens.len(), hidden]`.
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Layer `i`'s weights.
    fn layer(&self, i: usize) -> Result<LayerWeights>;
    /// The final norm weight.
    fn final_norm(&self) -> Result<Vec<f32>>;
    /// The output projection `[hidden, vocab]` (the embedding, transposed, when tied).
    fn lm_head(&self) -> Result<Box<dyn Linear>>;
}

/// Which block a linear belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Block {
    /// Self-attention.
    Attention,
    /// A dense MLP.
    DenseMlp,
    /// An MoE layer's shared experts (their input is every token entering the MoE layer,
    /// which is also the router's input).
    SharedExperts,
    /// Routed expert `e`.
    Expert(usize),
    /// The output projection.
    LmHead,
}

/// Which linear input: tensors that share an input are reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearInput {
    /// The input of q, k and v (or the fused qkv).
    Qkv,
    /// The input of the attention output projection.
    O,
    /// The input of gate and up (or the fused up_gate); in an MoE layer with
    /// [`Block::SharedExperts`], also the router's.
    GateUp,
    /// The input of the down projection.
    Down,
    /// The lm_head input.
    LmHead,
}

/// The rows one linear (or group sharing an input) receives.
#[derive(Debug)]
pub struct LinearRows<'a> {
    /// Decoder layer (`layers` for the lm_head).
    pub layer: usize,
    /// Which block.
    pub block: Block,
    /// Which input.
    pub input: LinearInput,
    /// `[m, k]` row-major.
    pub rows: &'a [f32],
    /// Row width.
    pub k: usize,
    /// For a routed expert: the batch token index of each row.
    pub tokens: Option<&'a [usize]>,
    /// For a routed expert: each row's routing weight.
    pub gate_weights: Option<&'a [f32]>,
}

/// An MoE layer's routing decisions for every token of the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// The layer.
    pub layer: usize,
    /// Experts per token.
    pub top_k: usize,
    /// `[tokens, top_k]`: chosen experts, in decreasing order of biased score.
    pub experts: Vec<usize>,
    /// `[tokens, top_k]`: their renormalised (un-biased) probabilities.
    pub weights: Vec<f32>,
}

/// Sees what the forward pass computes; every method does nothing by default.
pub trait Observer {
    /// The input rows of a linear (group).
    fn on_linear_input(&mut self, _rows: &LinearRows<'_>) {}
    /// An MoE layer's routing.
    fn on_routing(&mut self, _routing: &Routing) {}
    /// Called when layer `i` (or `layers` for the head) starts.
    fn on_layer(&mut self, _i: usize) {}
    /// Whether the caller needs the logits. An observer that only gathers inputs (calibration)
    /// says no, and [`forward`] then stops after showing it the lm_head input, skipping the
    /// largest matmul of the model.
    fn needs_logits(&self) -> bool {
        true
    }
    /// Whether it looks at linear inputs ([`Observer::on_linear_input`]); one that does not
    /// lets the experts of a layer run concurrently.
    fn watches_inputs(&self) -> bool {
        true
    }
}

/// An observer that records nothing.
pub struct NoObserver;
impl Observer for NoObserver {
    fn watches_inputs(&self) -> bool {
        false
    }
}

/// Records every [`Routing`].
#[derive(Default)]
pub struct RoutingRecorder {
    /// The routings, in layer order.
    pub routings: Vec<Routing>,
}

impl Observer for RoutingRecorder {
    fn on_routing(&mut self, routing: &Routing) {
        self.routings.push(routing.clone());
    }
    fn watches_inputs(&self) -> bool {
        false
    }
}

/// How far a run of forward passes has come: decoder layers (and heads) run so far out of
/// all the run takes, and tokens whose forward pass is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Layer runs done (a batch through one layer, or through the head, is one).
    pub steps_done: usize,
    /// Layer runs in all.
    pub steps_total: usize,
    /// Tokens through every layer.
    pub tokens_done: usize,
    /// Tokens in all.
    pub tokens_total: usize,
}

impl Progress {
    /// Nothing done yet of `passes` forward passes of every batch through `layers` layers.
    pub fn start(batches: &[&[Vec<u32>]], layers: usize, passes: usize) -> Progress {
        Progress {
            steps_done: 0,
            steps_total: passes * batches.len() * layers,
            tokens_done: 0,
            tokens_total: batches.iter().flat_map(|b| b.iter()).map(Vec::len).sum(),
        }
    }
}

/// An observer that counts layer runs for a progress callback and hands everything else to
/// `inner`.
pub struct Counting<'a> {
    /// The observer that does the work.
    pub inner: &'a mut dyn Observer,
    /// The progress so far.
    pub progress: Progress,
    /// Called after every layer run.
    pub report: &'a mut dyn FnMut(Progress),
}

impl Counting<'_> {
    /// Marks `tokens` more tokens complete and reports.
    pub fn tokens_done(&mut self, tokens: usize) {
        self.progress.tokens_done += tokens;
        (self.report)(self.progress);
    }
}

impl Observer for Counting<'_> {
    fn on_linear_input(&mut self, rows: &LinearRows<'_>) {
        self.inner.on_linear_input(rows)
    }
    fn on_routing(&mut self, routing: &Routing) {
        self.inner.on_routing(routing)
    }
    fn on_layer(&mut self, i: usize) {
        if i > 0 {
            self.progress.steps_done += 1;
            (self.report)(self.progress);
        }
        self.inner.on_layer(i)
    }
    fn needs_logits(&self) -> bool {
        self.inner.needs_logits()
    }
    fn watches_inputs(&self) -> bool {
        self.inner.watches_inputs()
    }
}

/// Runs `sequences` through the model and returns the logits `[total tokens, vocab]`
/// (sequences back to back), or nothing when the observer does not need them
/// ([`Observer::needs_logits`]). Tokens are checked first ([`ForwardConfig::check_tokens`]).
pub fn forward(source: &dyn WeightSource, sequences: &[Vec<u32>], observer: &mut dyn Observer) -> Result<Vec<f32>> {
    let cfg = source.config().clone();
    cfg.check_tokens(sequences)?;
    let tokens: Vec<u32> = sequences.iter().flatten().copied().collect();
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let m = tokens.len();
    let mut h = source.embed(&tokens)?;
    for l in 0..cfg.layers {
        observer.on_layer(l);
        let w = source.layer(l)?;
        layer_forward(&cfg, &w, l, &mut h, &lengths, observer)?;
    }
    observer.on_layer(cfg.layers);
    let x = rms_norm(&h, &source.final_norm()?, cfg.rms_norm_eps);
    observer.on_linear_input(&LinearRows {
        layer: cfg.layers,
        block: Block::LmHead,
        input: LinearInput::LmHead,
        rows: &x,
        k: cfg.hidden,
        tokens: None,
        gate_weights: None,
    });
    if !observer.needs_logits() {
        return Ok(Vec::new());
    }
    source.lm_head()?.forward(&x, m)
}

/// Runs decoder layer `l` (weights `w`) on the hidden states `h` (`[tokens, hidden]`, the
/// sequences of `lengths` back to back), in place: `h += attn(n1(h)); h += mlp(n2(h))`.
pub fn layer_forward(
    cfg: &ForwardConfig,
    w: &LayerWeights,
    l: usize,
    h: &mut [f32],
    lengths: &[usize],
    observer: &mut dyn Observer,
) -> Result<()> {
    layer_step(cfg, w, l, h, Context::Sequences(lengths), observer)
}

/// [`layer_forward`] with the attention context spelled out: a batch of sequences, or one
/// sequence continuing from a [`KvCache`].
pub fn layer_step(
    cfg: &ForwardConfig,
    w: &LayerWeights,
    l: usize,
    h: &mut [f32],
    context: Context<'_>,
    observer: &mut dyn Observer,
) -> Result<()> {
    let m = h.len() / cfg.hidden;
    let x = rms_norm(h, &w.input_norm, cfg.rms_norm_eps);
    let attn = attention(cfg, w, l, &x, context, observer)?;
    add(h, &attn);
    let x = rms_norm(h, &w.post_norm, cfg.rms_norm_eps);
    let y = match &w.mlp {
        Mlp::Dense(mlp) => swiglu(mlp, &x, m, l, Block::DenseMlp, None, observer)?,
        Mlp::Moe(moe) => moe_block(cfg, moe, &x, m, l, observer)?,
    };
    add(h, &y);
    Ok(())
}

fn add(h: &mut [f32], y: &[f32]) {
    for (a, b) in h.iter_mut().zip(y) {
        *a += b;
    }
}

/// Splits `sequences` into consecutive batches of at most `batch_tokens` tokens (a longer
/// sequence gets a batch of its own), the unit [`forward`] is called on.
pub fn batches(sequences: &[Vec<u32>], batch_tokens: usize) -> impl Iterator<Item = &[Vec<u32>]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= sequences.len() {
            return None;
        }
        let mut end = start + 1;
        let mut n = sequences[start].len();
        while end < sequences.len() && n + sequences[end].len() <= batch_tokens {
            n += sequences[end].len();
            end += 1;
        }
        let batch = &sequences[start..end];
        start = end;
        Some(batch)
    })
}

/// `w * x / sqrt(mean(x^2) + eps)` per row.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, g)| g * (v * r)));
    }
    out
}

/// Rotary embedding, in place, on `[len, heads * d]` rows at positions `p0..p0 + len`; `style`
/// says which channels pair up (see the module documentation).
fn rope(x: &mut [f32], heads: usize, d: usize, theta: f64, style: Rope, p0: usize) {
    let width = heads * d;
    let inv: Vec<f64> = (0..d / 2).map(|i| theta.powf(-((2 * i) as f64) / d as f64)).collect();
    let pair = |i: usize| match style {
        Rope::Interleaved => (2 * i, 2 * i + 1),
        Rope::Half => (i, i + d / 2),
    };
    for (p, row) in x.chunks_exact_mut(width).enumerate() {
        for (i, &f) in inv.iter().enumerate() {
            let a = (p0 + p) as f64 * f;
            let (s, c) = (a.sin() as f32, a.cos() as f32);
            let (ja, jb) = pair(i);
            for h in 0..heads {
                let (a, b) = (h * d + ja, h * d + jb);
                let (x0, x1) = (row[a], row[b]);
                row[a] = x0 * c - x1 * s;
                row[b] = x1 * c + x0 * s;
            }
        }
    }
}

/// What attention attends over: the sequences of a batch (each from position 0), or one
/// sequence's earlier positions held in a [`KvCache`] (incremental decoding).
pub enum Context<'a> {
    /// The lengths of the batch's sequences, back to back.
    Sequences(&'a [usize]),
    /// One sequence continuing after the cached positions; the new keys and values are
    /// appended.
    Cached(&'a mut KvCache),
}

/// One layer's keys (after rope) and values of the positions decoded so far,
/// `[positions, kv_heads * head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self, kv_width: usize) -> usize {
        self.k.len() / kv_width.max(1)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.k.len() + self.v.len())
    }
}

fn attention(
    cfg: &ForwardConfig,
    w: &LayerWeights,
    layer: usize,
    x: &[f32],
    context: Context<'_>,
    observer: &mut dyn Observer,
) -> Result<Vec<f32>> {
    let m = x.len() / cfg.hidden;
    let rows = |input, rows, k| LinearRows { layer, block: Block::Attention, input, rows, k, tokens: None, gate_weights: None };
    observer.on_linear_input(&rows(LinearInput::Qkv, x, cfg.hidden));
    let mut qkv = w.qkv.forward(x, m)?.into_iter();
    let (mut q, mut k, v) = (qkv.next().unwrap_or_default(), qkv.next().unwrap_or_default(), qkv.next().unwrap_or_default());
    let (d, hq, hk) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
    if let Some((qn, kn)) = &w.qk_norm {
        q = rms_norm(&q, qn, cfg.rms_norm_eps);
        k = rms_norm(&k, kn, cfg.rms_norm_eps);
    }
    let (qw, kw) = (hq * d, hk * d);
    let style = cfg.architecture.rope();
    let mut ctx = vec![0.0f32; m * qw];
    match context {
        Context::Sequences(lengths) => {
            let mut start = 0;
            for &len in lengths {
                let (r, out) = (start..start + len, &mut ctx[start * qw..(start + len) * qw]);
                rope(&mut q[r.start * qw..r.end * qw], hq, d, cfg.rope_theta, style, 0);
                rope(&mut k[r.start * kw..r.end * kw], hk, d, cfg.rope_theta, style, 0);
                attend(cfg, &q[r.start * qw..r.end * qw], &k[r.start * kw..r.end * kw], &v[r.start * kw..r.end * kw], 0, out);
                start += len;
            }
        }
        Context::Cached(cache) => {
            let p0 = cache.len(kw);
            rope(&mut q, hq, d, cfg.rope_theta, style, p0);
            rope(&mut k, hk, d, cfg.rope_theta, style, p0);
            cache.k.extend_from_slice(&k);
            cache.v.extend_from_slice(&v);
            attend(cfg, &q, &cache.k, &cache.v, p0, &mut ctx);
        }
    }
    observer.on_linear_input(&rows(LinearInput::O, &ctx, qw));
    w.o.forward(&ctx, m)
}

/// Causal grouped-query attention of the query rows `q` (positions `p0..`) over the keys and
/// values `k`, `v` of positions `0..`: row `i` attends to positions `0..=p0 + i`. Rows run in
/// parallel, each summed in a fixed order (the same result at any thread count).
fn attend(cfg: &ForwardConfig, q: &[f32], k: &[f32], v: &[f32], p0: usize, ctx: &mut [f32]) {
    use rayon::prelude::*;
    let (d, hq, hk) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
    let (qw, kw, group) = (hq * d, hk * d, hq / hk);
    let scale = 1.0 / (d as f32).sqrt();
    ctx.par_chunks_mut(qw).zip(q.par_chunks(qw)).enumerate().for_each(|(i, (out_row, q_row))| {
        let visible = p0 + i + 1;
        let mut scores = vec![0.0f32; visible];
        for h in 0..hq {
            let (kh, qi) = (h / group, &q_row[h * d..(h + 1) * d]);
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let kj = &k[j * kw + kh * d..][..d];
                *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let out = &mut out_row[h * d..(h + 1) * d];
            for (j, s) in scores.iter().enumerate() {
                let p = s / sum;
                let vj = &v[j * kw + kh * d..][..d];
                for (o, vv) in out.iter_mut().zip(vj) {
                    *o += p * vv;
                }
            }
        }
    });
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

fn swiglu(
    mlp: &SwiGlu,
    x: &[f32],
    m: usize,
    layer: usize,
    block: Block,
    routed: Option<(&[usize], &[f32])>,
    observer: &mut dyn Observer,
) -> Result<Vec<f32>> {
    let k = x.len() / m.max(1);
    let rows = |input, rows, k| LinearRows { layer, block, input, rows, k, tokens: routed.map(|r| r.0), gate_weights: routed.map(|r| r.1) };
    observer.on_linear_input(&rows(LinearInput::GateUp, x, k));
    let mut gu = mlp.gate_up.forward(x, m)?.into_iter();
    let (gate, up) = (gu.next().unwrap(), gu.next().unwrap());
    let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
    let width = act.len() / m.max(1);
    observer.on_linear_input(&LinearRows { rows: &act, ..rows(LinearInput::Down, x, width) });
    mlp.down.forward(&act, m)
}

/// Routes every token: top-k on `softmax(x G) + bias`, weights renormalised when the family
/// does.
pub fn route(cfg: &ForwardConfig, moe: &MoeWeights, x: &[f32], layer: usize) -> Routing {
    let (hd, e, top_k) = (cfg.hidden, cfg.experts, cfg.top_k);
    let mut experts = Vec::new();
    let mut weights = Vec::new();
    let mut logits = vec![0.0f32; e];
    for row in x.chunks_exact(hd) {
        logits.iter_mut().for_each(|l| *l = 0.0);
        for (xi, grow) in row.iter().zip(moe.router.chunks_exact(e)) {
            for (l, g) in logits.iter_mut().zip(grow) {
                *l += xi * g;
            }
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let p: Vec<f32> = exps.iter().map(|v| v / sum).collect();
        let mut order: Vec<usize> = (0..e).collect();
        let score = |i: usize| p[i] + moe.bias[i];
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
        let chosen = &order[..top_k];
        let total = match cfg.renormalize {
            true => chosen.iter().map(|&i| p[i]).sum::<f32>().max(cfg.moe_norm_min),
            false => 1.0,
        };
        experts.extend_from_slice(chosen);
        weights.extend(chosen.iter().map(|&i| p[i] / total));
    }
    Routing { layer, top_k, experts, weights }
}

fn moe_block(cfg: &ForwardConfig, moe: &MoeWeights, x: &[f32], m: usize, layer: usize, observer: &mut dyn Observer) -> Result<Vec<f32>> {
    let hd = cfg.hidden;
    let routing = route(cfg, moe, x, layer);
    observer.on_routing(&routing);
    let mut y = match &moe.shared {
        Some(shared) => swiglu(shared, x, m, layer, Block::SharedExperts, None, observer)?,
        None => vec![0.0f32; m * hd],
    };
    if let Some(g) = &moe.shared_gate {
        for (row, out) in x.chunks_exact(hd).zip(y.chunks_exact_mut(hd)) {
            let s = 1.0 / (1.0 + (-row.iter().zip(g).map(|(a, b)| a * b).sum::<f32>()).exp());
            out.iter_mut().for_each(|v| *v *= s);
        }
    }
    // Each expert's tokens and their routing weights, in expert order.
    let mut assigned: Vec<(usize, Vec<usize>, Vec<f32>)> = Vec::new();
    for e in 0..moe.experts.len() {
        let (mut tokens, mut gates) = (Vec::new(), Vec::new());
        for (t, (chosen, w)) in routing.experts.chunks_exact(cfg.top_k).zip(routing.weights.chunks_exact(cfg.top_k)).enumerate() {
            if let Some(slot) = chosen.iter().position(|&c| c == e) {
                tokens.push(t);
                gates.push(w[slot]);
            }
        }
        if !tokens.is_empty() {
            assigned.push((e, tokens, gates));
        }
    }
    let run = |(e, tokens, gates): &(usize, Vec<usize>, Vec<f32>), observer: &mut dyn Observer| {
        let rows: Vec<f32> = tokens.iter().flat_map(|&t| x[t * hd..(t + 1) * hd].iter().copied()).collect();
        swiglu(&moe.experts[*e], &rows, tokens.len(), layer, Block::Expert(*e), Some((tokens, gates)), observer)
    };
    // Unobserved, the experts run concurrently (at one token per step each is a small
    // matmul); their outputs are added in expert order either way.
    let outputs: Vec<Vec<f32>> = match observer.watches_inputs() {
        true => assigned.iter().map(|a| run(a, observer)).collect::<Result<_>>()?,
        false => {
            use rayon::prelude::*;
            assigned.par_iter().map(|a| run(a, &mut NoObserver)).collect::<Result<_>>()?
        }
    };
    for ((_, tokens, gates), out) in assigned.iter().zip(&outputs) {
        for ((&t, g), o) in tokens.iter().zip(gates).zip(out.chunks_exact(hd)) {
            for (a, b) in y[t * hd..(t + 1) * hd].iter_mut().zip(o) {
                *a += g * b;
            }
        }
    }
    Ok(y)
}
