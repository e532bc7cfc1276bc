//! `ccq bench`: quality and speed tables of the weight schemes, and the speed of `inspect`.
//!
//! The measuring lives in the library (`ccq::bench`); this file only gathers the data sets
//! (generated Gaussian fixtures, real expert matrices when present, sparse synthetic
//! checkpoints) and prints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::values::EffortArg;
use ccq::bench::wint2::{self, Method, Row, Table};
use ccq::scheme::Effort;

/// What `ccq bench` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchWhat {
    /// Quality and speed of the WINT2 codec.
    #[value(name = "wint2")]
    Wint2,
    /// Header-only reading of a 300B-shaped sparse checkpoint.
    #[value(name = "inspect")]
    Inspect,
    /// Calibration tokens/s and peak memory on the tiny shape and one 21B-A3B-shaped MoE layer.
    #[value(name = "calibrate")]
    Calibrate,
    /// Fast matmul of every format at 4096 x 4096, M = 1, 8, 64, beside memcpy and f32 matmul.
    #[value(name = "kernels")]
    Kernels,
    /// Error-feedback encoding speed and output error on 21B-A3B expert shapes, beside the
    /// diagonal encoder.
    #[value(name = "feedback")]
    Feedback,
    /// Prefill and decode tokens/s of `--model` checkpoints and of a synthetic 21B-A3B-shaped
    /// one, against the memory bandwidth limit.
    #[value(name = "generate")]
    Generate,
}

/// The encoder effort levels `ccq bench` measures (`--effort`): one, or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffortLevels {
    /// One level, spelt as `ccq quantize --effort` takes it.
    One(EffortArg),
    /// Every level ([`Effort::ALL`]).
    All,
}

impl EffortLevels {
    /// The levels, fastest first.
    fn efforts(self) -> Vec<Effort> {
        match self {
            EffortLevels::One(e) => vec![e.into()],
            EffortLevels::All => Effort::ALL.to_vec(),
        }
    }
}

impl clap::ValueEnum for EffortLevels {
    fn value_variants<'a>() -> &'a [Self] {
        static LEVELS: std::sync::LazyLock<Vec<EffortLevels>> = std::sync::LazyLock::new(|| {
            EffortArg::value_variants().iter().map(|&e| EffortLevels::One(e)).chain([EffortLevels::All]).collect()
        });
        &LEVELS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            EffortLevels::One(e) => e.to_possible_value(),
            EffortLevels::All => Some(clap::builder::PossibleValue::new("all").help("Every level")),
        }
    }
}

/// Arguments of `ccq bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: BenchWhat,
    /// generate: checkpoints to decode (repeatable; any ccq reads, original or quantized);
    /// missing ones are skipped.
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
    /// inspect: routed experts per MoE layer of the synthetic 300B-shaped checkpoint (64 is
    /// the real model; 512 gives about 79k tensors).
    #[arg(long, default_value_t = 64)]
    pub experts: usize,
    /// Encoder effort levels to measure.
    #[arg(long, value_enum, default_value = "all")]
    pub effort: EffortLevels,
    /// Folder of real checkpoints (`ernie45-moe-minilm-pt/` inside); skipped if missing.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Rows of the Gaussian matrix.
    #[arg(long, default_value_t = 4096)]
    pub k: usize,
    /// Columns of the Gaussian matrix.
    #[arg(long, default_value_t = 512)]
    pub n: usize,
    /// feedback: also convert a 21B-A3B-shaped checkpoint of a dense and an MoE layer with this
    /// many routed experts, calibrated layer by layer (0: skip; 64 is the real model, minutes).
    /// generate: decode such a checkpoint (original and wint2-experts) with this many experts.
    #[arg(long, default_value_t = 0)]
    pub layer_experts: usize,
    /// Print one row per real matrix instead of pooling them.
    #[arg(long)]
    pub per_matrix: bool,
    /// kernels: run only this kernel path (default: every path this CPU has, one row per
    /// distinct kernel). `CCQ_KERNEL=PATH` caps what every other command runs.
    #[arg(long, value_parser = crate::values::kernel_path())]
    pub kernel: Option<ccq::kernel::KernelPath>,
    /// kernels: print every row as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ccq bench` and prints the table.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Wint2 => bench_wint2(args),
        BenchWhat::Inspect => bench_inspect(args),
        BenchWhat::Calibrate => bench_calibrate(args),
        BenchWhat::Kernels => bench_kernels(args),
        BenchWhat::Feedback => bench_feedback(args),
        BenchWhat::Generate => bench_generate(args),
    }
}

/// `ccq bench inspect`: writes a sparse 300B-shaped checkpoint (headers only) to a temporary
/// directory and times `inspect --json` against reading the header bytes alone.
fn bench_inspect(args: &BenchArgs) -> anyhow::Result<()> {
    use ccq::synth::{write_checkpoint, SynthModel, SynthOptions};
    let dir = std::env::temp_dir().join(format!("ccq-bench-inspect-{}", std::process::id()));
    let mut model = SynthModel::preset("300b-a47b").expect("preset exists");
    model.num_experts = args.experts;
    let options = SynthOptions { shards: 40, sparse: true, ..SynthOptions::default() };
    write_checkpoint(&model, &options, &dir)?;
    let timing = ccq::bench::inspect::time_inspect(&dir, 5);
    std::fs::remove_dir_all(&dir)?;
    let t = timing?;
    say!("tensors | shards | data described | read headers (baseline) | inspect --json | ratio | per 10k tensors");
    say!(
        "{} | {} | {:.1} GB | {:.4} s | {:.4} s | {:.1}x | {:.4} s",
        t.tensors,
        t.shards,
        t.data_bytes as f64 / 1e9,
        t.read_headers,
        t.inspect_json,
        t.inspect_json / t.read_headers.max(1e-9),
        t.per_10k_tensors()
    );
    Ok(())
}

/// `ccq bench kernels`: fast matmul of every format at K x N = 4096 x 4096 for M = 1, 8, 64
/// on `--threads` threads, then M = 1 on one thread, at every kernel path this CPU has (or
/// `--kernel`'s), beside a memcpy of the same bytes and the sgemm reference of the same run.
fn bench_kernels(args: &BenchArgs) -> anyhow::Result<()> {
    use ccq::bench::kernels::{fixtures, run, sgemm_row, Table, SGEMM};
    use ccq::kernel::KernelPath;
    const K: usize = 4096;
    const N: usize = 4096;
    let paths = match args.kernel {
        Some(p) if !p.supported() => {
            let have: Vec<&str> = KernelPath::available().into_iter().map(KernelPath::name).collect();
            anyhow::bail!("this CPU cannot run the {p} kernels; it runs {}", have.join(", "))
        }
        Some(p) => vec![p],
        None => KernelPath::available(),
    };
    // Encode a [4096, 512] slice per scheme and repeat it across the 4096 columns.
    let data = fixtures(K, N, 8, 0x5EED);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
    let mut rows = pool.install(|| run(&data, &[1, 8, 64], &paths, 7, 0xC0DE))?;
    // The one-core M = 1 rows carry the headline figures: more calls, so that a burst of
    // load on a shared machine moves the median less.
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let one = single.install(|| run(&data, &[1], &paths, 31, 0xC0DE))?;
    rows.extend(one.iter().cloned());
    if args.json {
        for r in &rows {
            say!("{}", r.json(sgemm_row(&rows, r)));
        }
        return Ok(());
    }
    say_raw!("{}", Table(&rows));
    say!("M = 1, one core, measured above (packed bytes' rate over the memcpy of the same bytes):");
    for r in one.iter().filter(|r| r.format != SGEMM) {
        say!("  {} {}: {:.2} G weights/s, {:.2}x memcpy", r.format, r.path, r.weights_per_s() / 1e9, r.gbs() / r.memcpy_gbs());
    }
    Ok(())
}

/// `ccq bench calibrate`: calibration throughput on the tiny fixture shape and on one
/// 21B-A3B-shaped MoE layer, growing the experts and the sequence length.
fn bench_calibrate(_args: &BenchArgs) -> anyhow::Result<()> {
    use ccq::bench::calibrate::{prepare, time_calibration};
    // (preset, layers, experts, [(seq_len, sequences)])
    type Case<'a> = (&'a str, usize, usize, &'a [(usize, usize)]);
    let cases: [Case; 3] =
        [("tiny", 3, 4, &[(64, 8), (256, 8)]), ("21b-a3b", 2, 16, &[(64, 4), (256, 4)]), ("21b-a3b", 2, 64, &[(64, 4), (256, 4)])];
    say!("shape | layers | experts | seq len | sequences | tokens | seconds | tokens/s | peak RSS so far (MiB)");
    for (preset, layers, experts, runs) in cases {
        let dir = std::env::temp_dir().join(format!("ccq-bench-calibrate-{}", std::process::id()));
        let model = prepare(&dir, preset, layers, experts)?;
        for &(seq_len, sequences) in runs {
            let t = time_calibration(&dir, preset, &model, seq_len, sequences)?;
            say!(
                "{} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {}",
                t.preset,
                t.layers,
                t.experts,
                t.seq_len,
                t.sequences,
                t.seq_len * t.sequences,
                t.seconds,
                t.tokens_per_second(),
                t.peak_rss_mib.map_or("?".to_string(), |m| format!("{m:.0}"))
            );
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// `ccq bench generate`: prefill and decode on 1 and 2 threads per checkpoint.
fn bench_generate(args: &BenchArgs) -> anyhow::Result<()> {
    use ccq::bench::generate::{prepare_synthetic, time_generate};
    say!("checkpoint | threads | prefill tokens/s (64) | decode tokens/s (32) | weight MiB per token | read GB/s | limit tokens/s | decode / limit");
    let row = |name: &str, path: &std::path::Path| -> anyhow::Result<()> {
        let files = ccq::model::source::ModelFiles::open(path)?;
        let source = files.weights()?;
        for threads in [1, 2] {
            let t = time_generate(source.as_ref(), 64, 32, threads)?;
            say!(
                "{name} | {threads} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2}",
                t.prefill_tokens_per_s,
                t.decode_tokens_per_s,
                t.bytes_per_token as f64 / 1048576.0,
                t.bandwidth / 1e9,
                t.limit_tokens_per_s(),
                t.ratio()
            );
        }
        Ok(())
    };
    for path in &args.models {
        if !path.exists() {
            say!("{} | skipped: not found", path.display());
            continue;
        }
        row(&path.display().to_string(), path)?;
    }
    if args.layer_experts > 0 {
        let dir = std::env::temp_dir().join(format!("ccq-bench-generate-{}", std::process::id()));
        let (src, w2) = prepare_synthetic(&dir, args.layer_experts)?;
        row(&format!("21b-a3b 2 layers, {} experts, original (bf16 file, f32 in memory)", args.layer_experts), &src)?;
        row(&format!("21b-a3b 2 layers, {} experts, wint2-experts", args.layer_experts), &w2)?;
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// `ccq bench feedback`: error-feedback encoding on the 21B-A3B expert shapes, per scheme.
fn bench_feedback(args: &BenchArgs) -> anyhow::Result<()> {
    use ccq::bench::feedback::{layer_hessian_bytes, time_feedback};
    if args.threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global()?;
    }
    let effort = match args.effort {
        EffortLevels::One(e) => e.into(),
        EffortLevels::All => Effort::Default,
    };
    say!("scheme | matrix [K, N] | diagonal s | factor s | feedback s | feedback / diagonal time | feedback weights/s | output error diagonal | output error feedback | peak RSS so far (MiB)");
    for kind in [ccq::SchemeKind::Wint2, ccq::SchemeKind::Wint4, ccq::SchemeKind::Wint8] {
        for (k, n) in [(2560, 1536), (1536, 2560)] {
            let t = time_feedback(kind.scheme(effort).as_ref(), k, n, 0xFEED)?;
            say!(
                "{} | [{k}, {n}] | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} M | {:.5} | {:.5} | {}",
                t.scheme,
                t.diagonal_seconds,
                t.factor_seconds,
                t.feedback_seconds,
                (t.factor_seconds + t.feedback_seconds) / t.diagonal_seconds.max(1e-9),
                (k * n) as f64 / (t.factor_seconds + t.feedback_seconds).max(1e-9) / 1e6,
                t.diagonal_error,
                t.feedback_error,
                t.peak_rss_mib.map_or("?".to_string(), |m| format!("{m:.0}"))
            );
        }
    }
    if args.layer_experts > 0 {
        let dir = std::env::temp_dir().join(format!("ccq-bench-feedback-{}", std::process::id()));
        let t = ccq::bench::feedback::time_layer(&dir, args.layer_experts, 4, 256)?;
        say!(
            "21B-A3B-shaped checkpoint, a dense layer and one MoE layer of {} experts, {} calibration tokens, --calib-tokens conversion: {:.1} s, peak RSS {}",
            t.experts,
            t.tokens,
            t.seconds,
            t.peak_rss_mib.map_or("?".to_string(), |m| format!("{m:.0} MiB"))
        );
    }
    let bytes = layer_hessian_bytes(64, 2560, 1536);
    say!(
        "one 21B-A3B MoE layer (64 experts): {:.2} GiB of f64 Hessian sums; with the default --hessian-budget of {:.0} GiB its experts run in about {} chunk(s)",
        bytes as f64 / (1u64 << 30) as f64,
        ccq::calibrate::layerwise::DEFAULT_HESSIAN_BUDGET as f64 / (1u64 << 30) as f64,
        bytes.div_ceil(ccq::calibrate::layerwise::DEFAULT_HESSIAN_BUDGET)
    );
    Ok(())
}

/// `ccq bench wint2`: the codec's quality and speed table.
fn bench_wint2(args: &BenchArgs) -> anyhow::Result<()> {
    let efforts = args.effort.efforts();
    let ccq_methods: Vec<Method> = efforts.iter().map(|&effort| Method::Ccq { effort, importance: false }).collect();
    let mut baselines = ccq_methods.clone();
    baselines.extend([Method::NaiveMap, Method::Rtn]);

    let gauss = wint2::gaussian("gaussian", args.k, args.n, 0x5EED);
    let mut rows = wint2::run(std::slice::from_ref(&gauss), &baselines, args.threads)?;

    let mut weighted = gauss.clone();
    weighted.name = "gaussian, log-normal h".to_string();
    weighted.importance = Some(wint2::log_normal_importance(args.k, 1.0, 0x1A7E));
    let mut with_h = ccq_methods.clone();
    with_h.extend(efforts.iter().map(|&effort| Method::Ccq { effort, importance: true }));
    with_h.push(Method::Rtn);
    rows.extend(wint2::run(&[weighted], &with_h, args.threads)?);

    let real_dir = args.data.join("ernie45-moe-minilm-pt");
    let footer;
    if real_dir.is_dir() {
        let real = ccq::bench::expert_datasets(&ccq::Checkpoint::open(&real_dir)?, 128)?;
        let real_rows = wint2::run(&real, &baselines, args.threads)?;
        footer = real_summary(&real_rows, &efforts);
        if args.per_matrix {
            rows.extend(real_rows);
        } else {
            let label = format!("minilm experts ({})", real.len());
            rows.extend(pool_by_method(&real_rows, &label));
        }
    } else {
        footer = format!("(no real data at {}: skipped)\n", real_dir.display());
    }
    say_raw!("{}", Table(&rows));
    say_raw!("{footer}");
    Ok(())
}

/// One pooled row per method, in first-seen order.
fn pool_by_method(rows: &[Row], label: &str) -> Vec<Row> {
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.method.as_str()) {
            order.push(&r.method);
        }
    }
    order
        .iter()
        .filter_map(|m| {
            let same: Vec<Row> = rows.iter().filter(|r| r.method == *m).cloned().collect();
            wint2::pool(&same, label)
        })
        .collect()
}

/// How many real matrices each ccq effort encodes better than RTN, and the worst ratio.
fn real_summary(rows: &[Row], efforts: &[Effort]) -> String {
    let rtn: BTreeMap<&str, f64> =
        rows.iter().filter(|r| r.method == Method::Rtn.label()).map(|r| (r.dataset.as_str(), r.nmse())).collect();
    let mut out = String::new();
    for &effort in efforts {
        let label = Method::Ccq { effort, importance: false }.label();
        let ratios: Vec<f64> =
            rows.iter().filter(|r| r.method == label).filter_map(|r| rtn.get(r.dataset.as_str()).map(|b| r.nmse() / b)).collect();
        let wins = ratios.iter().filter(|&&x| x < 1.0).count();
        let worst = ratios.iter().copied().fold(0.0f64, f64::max);
        out += &format!("{label}: lower NMSE than rtn on {wins}/{} real matrices (worst NMSE ratio {worst:.3})\n", ratios.len());
    }
    out
}
