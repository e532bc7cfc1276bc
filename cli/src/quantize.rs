//! `ccq quantize`: plan, then stream a checkpoint into a quantized one.

use crate::values::{scheme_choice, EffortArg, LayoutArg, PresetArg, WeightingArg};
use anyhow::{bail, Context, Result};
use ccq::convert::policy::Choice;
use ccq::convert::{self, OutputLayout, Plan, Policy, Preset, Progress};
use ccq::layout::{Family, ModelLayout};
use ccq::request::{QuantizeRequest, StatsCalibration};
use ccq::{Checkpoint, ReadOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Flags of `ccq quantize`.
#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Source checkpoint (directory or .safetensors file).
    source: PathBuf,
    /// Output directory (written as OUT.ccq-partial, renamed into place when complete).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Scheme preset.
    #[arg(long, value_enum, default_value = "fastdeploy-w4w2")]
    preset: PresetArg,
    /// fastdeploy-w4w2: last layer whose experts are wint4 (written to quant_end_layer).
    #[arg(long, default_value_t = Preset::DEFAULT_W4_END_LAYER)]
    w4_end_layer: usize,
    /// Override: REGEX=SCHEME (a scheme as --fallback takes it), matched against output and
    /// source tensor names; repeatable, the last match wins.
    #[arg(long = "set", value_name = "REGEX=SCHEME")]
    set: Vec<String>,
    /// Policy file (JSON: {"preset", "w4_end_layer", "rules": [{"match", "scheme"}]}, every key
    /// optional except a rule's two); its rules come before --set ones.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Output layout; default fastdeploy for ERNIE 4.5, native otherwise.
    #[arg(long, value_enum)]
    layout: Option<LayoutArg>,
    /// Scheme for tensors whose shape the chosen scheme cannot take (otherwise an error).
    // `Choice` is `Option<SchemeKind>` (`none`: unquantized); written as the alias, clap takes
    // this for an optional flag with a value, not for `Option<Option<_>>`.
    #[arg(long, value_name = "SCHEME", value_parser = scheme_choice())]
    fallback: Option<Choice>,
    /// Target shard size, e.g. 4GB, 500MB or a byte count.
    #[arg(long, default_value = "4GB")]
    shard_size: String,
    /// WINT2 encoder effort (slower, lower error; see `ccq bench wint2`).
    #[arg(long, value_enum, default_value = "default")]
    effort: EffortArg,
    /// Worker threads (0: one per core). Output is byte-identical at any count.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    /// Continue an interrupted run, re-using the shards it completed and verified.
    #[arg(long)]
    resume: bool,
    /// No progress and no summary.
    #[arg(short, long)]
    quiet: bool,
    /// Read U16 tensors as bf16 payload (Paddle's converter stores bf16 weights as U16).
    #[arg(long)]
    u16_as_bf16: bool,
    /// Calibration statistics from `ccq calibrate`: every quantized tensor's encoder minimises
    /// the error weighted by its input's mean square activation per channel (per expert), or,
    /// when they hold X^T X (`--hessian full`), the output error with error feedback.
    #[arg(long, value_name = "STATS")]
    calib: Option<PathBuf>,
    /// Calibration tokens (JSON array of sequences, or raw little-endian u32 ids with
    /// --seq-len): the conversion runs the model layer by layer on them and encodes every
    /// layer's tensors with error feedback under their inputs' full Hessians.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["calib", "calib_text"])]
    calib_tokens: Option<PathBuf>,
    /// Calibration text, as --calib-tokens but UTF-8 text tokenized with the source's
    /// tokenizer.json and cut into sequences of --seq-len tokens (repeatable; a directory
    /// stands for its *.txt files, in name order).
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "calib")]
    calib_text: Vec<PathBuf>,
    /// With --calib-text: the tokenizer.json to use instead of the source's own.
    #[arg(long, value_name = "FILE", requires = "calib_text")]
    tokenizer: Option<PathBuf>,
    /// With --calib-tokens: read raw u32 ids cut into sequences of this length. With
    /// --calib-text: tokens per sequence (default 512, or the model's limit when lower).
    #[arg(long)]
    seq_len: Option<usize>,
    /// With --calib-text: keep at most this many sequences, evenly spread over the text.
    #[arg(long, requires = "calib_text")]
    max_sequences: Option<usize>,
    /// With --calib-tokens or --calib-text: feed layer L+1 with the outputs of the already
    /// quantized layer L.
    #[arg(long)]
    sequential: bool,
    /// With --calib-tokens: most bytes of Hessian sums held at once (experts are taken in
    /// chunks beyond it), e.g. 8GB.
    #[arg(long, default_value = "8GiB")]
    hessian_budget: String,
    /// With --calib-tokens: experts that receive fewer tokens are blended with their layer.
    #[arg(long, default_value_t = 16)]
    min_tokens: usize,
    /// With --calib-tokens: uniform (every token counts 1) or gate (an expert's token counts
    /// its routing weight).
    #[arg(long, value_enum, default_value = "uniform")]
    weighting: WeightingArg,
    /// With --calib-tokens: tokens run through a layer at a time.
    #[arg(long, default_value_t = 2048)]
    batch_tokens: usize,
    /// Relative damping of the Hessians of error feedback: `lambda = DAMP * mean diag(H)` is
    /// added to the diagonal (raised tenfold, and reported, when a factorisation needs more).
    #[arg(long, default_value_t = ccq::scheme::importance::DEFAULT_DAMP)]
    damp: f32,
    /// Testing aid: stop (as if interrupted) after writing this many shards.
    #[arg(long, hide = true)]
    stop_after_shards: Option<usize>,
    /// Refuse (exit 2), instead of warning, when the plan quantizes nothing or less than asked:
    /// rules that match nothing, fallbacks to unquantized, no WINT2 left by --w4-end-layer.
    #[arg(long)]
    strict: bool,
    /// Convert a checkpoint that lacks tensors its config describes, or whose shapes disagree
    /// with it (otherwise refused before any work, every problem listed), e.g. a partial
    /// checkpoint on purpose. Only checked for the families the forward pass runs.
    #[arg(long)]
    allow_incomplete: bool,
    /// Copy unquantized tensors holding NaN or infinities as they are (otherwise refused,
    /// naming the tensor and element; quantized tensors are always refused).
    #[arg(long)]
    allow_non_finite: bool,
}

/// Runs `ccq quantize`.
pub fn run(args: &QuantizeArgs) -> Result<ExitCode> {
    let ckpt = Checkpoint::open_with(&args.source, ReadOptions { u16_as_bf16: args.u16_as_bf16 })?;
    let model = ModelLayout::of(&ckpt)?;
    if !args.allow_incomplete {
        ccq::model::source::check_original_complete(&ckpt)
            .map_err(|e| anyhow::anyhow!("{e}\n(pass --allow-incomplete to convert it anyway)"))?;
    }
    let layout = match args.layout {
        Some(l) => OutputLayout::from(l),
        None if model.family == Family::Ernie45 => OutputLayout::FastDeploy,
        None => OutputLayout::Native,
    };
    let mut request = QuantizeRequest {
        policy: Policy::compose(args.preset.preset(args.w4_end_layer), args.policy.as_deref(), &args.set)?,
        w4_end_layer: args.w4_end_layer,
        set: args.set.clone(),
        policy_file: args.policy.clone(),
        fallback: args.fallback,
        layout,
        effort: args.effort.into(),
        damp: args.damp,
        calibration: None,
        layerwise: None,
        force: args.force,
        resume: args.resume,
        stop_after_shards: args.stop_after_shards,
        allow_non_finite: args.allow_non_finite,
    };
    let shard_size = parse_size(&args.shard_size)?;
    let plan = Plan::build(&ckpt, &model, &request.plan_options(shard_size)).map_err(|refusals| {
        let list: Vec<String> = refusals.iter().map(|r| format!("  {}: {}", r.tensor, r.reason)).collect();
        if let [only] = &refusals[..] {
            if only.tensor == ckpt.path().display().to_string() {
                return anyhow::anyhow!("{}: {}", only.tensor, only.reason);
            }
        }
        let hint = if refusals.iter().any(|r| r.reason.contains("U16")) {
            "pass --u16-as-bf16 if the U16 tensors hold bf16 payload"
        } else {
            "--fallback SCHEME or --set REGEX=SCHEME with a scheme that takes them"
        };
        anyhow::anyhow!("{} tensor(s) cannot be converted as planned ({hint}):\n{}", refusals.len(), list.join("\n"))
    })?;
    if layout == OutputLayout::FastDeploy {
        plan.fastdeploy_config().map_err(ccq::Error::from)?;
    }
    let shortfalls = plan.shortfalls(&request.policy);
    if args.strict && !shortfalls.is_empty() {
        bail!("--strict: the plan quantizes less than asked:\n  {}", shortfalls.join("\n  "));
    }
    for s in &shortfalls {
        note!("ccq: warning: {s}");
    }
    request.calibration = args.calib.as_deref().map(|path| StatsCalibration::read(path, &plan)).transpose()?;
    let calibrating = args.calib_tokens.is_some() || !args.calib_text.is_empty();
    if !calibrating && (args.sequential || args.seq_len.is_some()) {
        bail!("--sequential and --seq-len need --calib-tokens or --calib-text");
    }
    if calibrating {
        let source = crate::tokens::token_source(
            args.calib_tokens.as_deref(),
            &args.calib_text,
            args.tokenizer.as_deref(),
            args.seq_len,
            args.max_sequences,
            &args.source,
        )?;
        let model = ccq::model::source::OriginalWeights::new(&ckpt)?;
        let tokens = source.load(ccq::model::WeightSource::config(&model)).with_context(|| source.describe())?;
        if args.min_tokens == 0 {
            bail!("--min-tokens must be positive");
        }
        request.layerwise = Some(ccq::calibrate::layerwise::LayerwiseOptions {
            sequences: std::sync::Arc::new(tokens.sequences),
            batch_tokens: args.batch_tokens.max(1),
            min_tokens: args.min_tokens,
            weighting: args.weighting.into(),
            damp: args.damp,
            sequential: args.sequential,
            hessian_budget: parse_size(&args.hessian_budget)?,
            tokens_label: tokens.label,
        });
    }
    if args.dry_run {
        say_raw!("{}", render_plan(&plan));
        return Ok(ExitCode::SUCCESS);
    }
    let Some(output) = &args.output else { bail!("--output is required (or pass --dry-run)") };
    if args.threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global()?;
    }
    let convert_options = request.convert_options(&ckpt).context("calibration")?;
    let mut reporter = Reporter::new(args.quiet, plan.bytes_in());
    let summary = convert::convert(&ckpt, &plan, output, &convert_options, &mut |p| reporter.update(p)).map_err(|e| leftover(e, output))?;
    reporter.finish();
    if !args.quiet {
        note!("{}", render_summary(&summary, output));
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `4GB`, `500MB`, `64KiB` or a plain byte count.
pub(crate) fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("bad size '{text}'"))?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1048576.0,
        "GIB" => 1073741824.0,
        _ => bail!("bad size '{text}': use a byte count or a unit such as MB or GB"),
    };
    if value <= 0.0 {
        bail!("bad size '{text}': must be positive");
    }
    Ok((value * scale) as u64)
}

fn render_plan(plan: &Plan) -> String {
    let mut out = format!("{:<64} {:<7} {:>14} {:>14} {:>7}\n", "tensor", "scheme", "bytes before", "bytes after", "bpw");
    for t in &plan.tensors {
        let scheme = convert::policy::choice_name(t.choice);
        let mark = if t.fell_back { " (fallback)" } else { "" };
        let bpw = t.bytes_out() as f64 * 8.0 / t.numel().max(1) as f64;
        out.push_str(&format!("{:<64} {:<7} {:>14} {:>14} {:>7.3}{mark}\n", t.name, scheme, t.bytes_in, t.bytes_out(), bpw));
    }
    let weights: u64 = plan.tensors.iter().map(|t| t.numel()).sum();
    out.push_str(&format!(
        "{:<64} {:<7} {:>14} {:>14} {:>7.3}\n{} tensors in {} shard(s), {} layout\n",
        "total",
        "",
        plan.bytes_in(),
        plan.bytes_out(),
        plan.bytes_out() as f64 * 8.0 / weights.max(1) as f64,
        plan.tensors.len(),
        plan.shards.len(),
        plan.layout.name()
    ));
    out
}

fn render_summary(s: &convert::Summary, output: &Path) -> String {
    let schemes: Vec<String> = s.tensors_per_scheme.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let mut text = format!(
        "wrote {}: {} tensors ({}), {} -> {} bytes, {:.3} bits per weight, {:.1} s, {:.2} M weights/s",
        output.display(),
        s.tensors_per_scheme.values().sum::<usize>(),
        schemes.join(", "),
        s.bytes_in,
        s.bytes_out,
        s.bits_per_weight,
        s.seconds,
        s.weights_per_second / 1e6
    );
    if s.shards_reused > 0 {
        text.push_str(&format!("\nre-used {} verified shard(s) from the interrupted run", s.shards_reused));
    }
    if !s.feedback.is_empty() {
        let more: Vec<String> = s.feedback.iter().filter(|r| r.retries > 0).map(|r| format!("{} ({})", r.tensor, r.damp)).collect();
        let empty = s.feedback.iter().filter(|r| r.empty).count();
        text.push_str(&format!("\n{} tensor(s) encoded with error feedback", s.feedback.len()));
        if !more.is_empty() {
            text.push_str(&format!("; {} needed more damping: {}", more.len(), more.join(", ")));
        }
        if empty > 0 {
            text.push_str(&format!("; {empty} saw no calibration token (encoded without it)"));
        }
    }
    if !s.fallbacks.is_empty() {
        text.push_str(&format!("\n{} tensor(s) used the fallback scheme: {}", s.fallbacks.len(), s.fallbacks.join(", ")));
    }
    text
}

/// Progress: an indicatif bar on a terminal, a plain line every 10 s otherwise, nothing when
/// quiet.
struct Reporter {
    bar: Option<ProgressBar>,
    plain: bool,
    last: Instant,
}

impl Reporter {
    fn new(quiet: bool, total_bytes: u64) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::new(total_bytes);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
                    .expect("valid template"),
            );
            bar
        });
        Reporter { bar, plain: !quiet && !terminal, last: Instant::now() }
    }

    fn update(&mut self, p: Progress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.bytes_done);
            bar.set_message(format!("tensors {}/{}", p.tensors_done, p.tensors_total));
        } else if self.plain && (self.last.elapsed() >= Duration::from_secs(10) || p.tensors_done == p.tensors_total) {
            self.last = Instant::now();
            note!("ccq: {}/{} tensors, {}/{} bytes read", p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A failed conversion's error, saying where its unfinished output stays (a stopped run's
/// error says so itself): nothing partial is left without a word.
fn leftover(e: ccq::Error, output: &Path) -> anyhow::Error {
    let work = ccq::checkpoint::output::partial_dir(output);
    if matches!(e, ccq::Error::Interrupted { .. } | ccq::Error::Unfinished { .. }) || !work.exists() {
        return e.into();
    }
    let bytes: u64 = std::fs::read_dir(&work).into_iter().flatten().flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    anyhow::anyhow!(
        "{e}\nthe unfinished output stays in {} ({:.1} MB): fix the cause and rerun with --resume to reuse its finished shards (the same options), or delete it",
        work.display(),
        bytes as f64 / 1e6
    )
}
