//! The fuzz campaign (issue 14): mutates valid checkpoints (the fixtures and quantized
//! outputs made from them at start-up) and drives ccq's library in-process, counting
//! outcomes; see `tests/support/fuzz.rs` for the mutations, drivers and mix.
//!
//! ```text
//! cargo run --release --example fuzz -- --cases 1000000 --seed 1 --threads 2
//! cargo run --release --example fuzz -- --seed 1 --only 12345 --verbose   # replay one case
//! ```
//!
//! Exits with status 1 when a case panicked or ccq accepted a header the safetensors crate
//! rejects (outside the documented exceptions).

#[path = "../tests/support/fuzz.rs"]
mod fuzz;

fn main() {
    let mut options = fuzz::Options { cases: 10_000, seed: 1, threads: 2, only: None, verbose: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a number");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--cases" => options.cases = value("--cases"),
            "--seed" => options.seed = value("--seed"),
            "--threads" => options.threads = value("--threads") as usize,
            "--only" => options.only = Some(value("--only")),
            "--verbose" => options.verbose = true,
            _ => {
                eprintln!("usage: fuzz [--cases N] [--seed S] [--threads T] [--only CASE] [--verbose]");
                std::process::exit(2)
            }
        }
    }
    let start = std::time::Instant::now();
    let corpus = fuzz::Corpus::build();
    eprintln!("{} seeds ready in {:.1} s", corpus.seeds.len(), start.elapsed().as_secs_f64());
    println!("command: fuzz --cases {} --seed {} --threads {}", options.cases, options.seed, options.threads);
    let report = fuzz::run(&corpus, &options, true);
    print!("{}", report.table());
    if !report.panics.is_empty() || report.unexplained_differences().iter().any(|(k, _)| k.contains("accepts, safetensors rejects")) {
        std::process::exit(1);
    }
}
