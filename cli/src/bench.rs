//! `ccq bench`: quality and speed tables of the weight schemes.
//!
//! The measuring lives in the library (`ccq::bench`); this file only gathers the data sets
//! (generated Gaussian fixtures and, when present, real expert matrices) and prints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use ccq::bench::wint2::{self, Method, Row, Table};
use ccq::scheme::Effort;

/// Arguments of `ccq bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The scheme to benchmark (only `wint2` today).
    #[arg(value_parser = ["wint2"])]
    pub scheme: String,
    /// Encoder effort levels to measure: default, medium, high, max or all.
    #[arg(long, default_value = "all")]
    pub effort: String,
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
    /// Print one row per real matrix instead of pooling them.
    #[arg(long)]
    pub per_matrix: bool,
}

/// Runs `ccq bench wint2` and prints the table.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let efforts: Vec<Effort> = match args.effort.as_str() {
        "all" => Effort::ALL.to_vec(),
        name => vec![Effort::from_name(name).with_context(|| format!("unknown effort {name:?}"))?],
    };
    let ccq_methods: Vec<Method> =
        efforts.iter().map(|&effort| Method::Ccq { effort, importance: false }).collect();
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
    print!("{}", Table(&rows));
    print!("{footer}");
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
        let ratios: Vec<f64> = rows
            .iter()
            .filter(|r| r.method == label)
            .filter_map(|r| rtn.get(r.dataset.as_str()).map(|b| r.nmse() / b))
            .collect();
        let wins = ratios.iter().filter(|&&x| x < 1.0).count();
        let worst = ratios.iter().copied().fold(0.0f64, f64::max);
        out += &format!(
            "{label}: lower NMSE than rtn on {wins}/{} real matrices (worst NMSE ratio {worst:.3})\n",
            ratios.len()
        );
    }
    out
}

