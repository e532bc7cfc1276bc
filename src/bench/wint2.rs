//! The WINT2 quality and speed benchmark behind `ccq bench wint2`.
//!
//! [`run`] encodes and decodes each [`Dataset`] with each [`Method`] and returns one
//! [`Row`] per pair; [`Table`] prints them. Rows keep raw sums (errors, energies, times), so
//! several data sets can be [`pool`]ed into one row whose NMSE is the ratio of the sums.
//!
//! Metrics: `NMSE = sum (W - What)^2 / sum W^2` and
//! `weighted NMSE = sum h_k (W - What)^2 / sum h_k W^2` (equal to NMSE without importance).

use std::fmt;
use std::time::Instant;

use crate::scheme::wint2::encode::encode_with_maps;
use crate::scheme::wint2::maps::NAIVE;
use crate::scheme::{Effort, Scheme, SchemeError, Wint2};

/// A matrix to benchmark: logical `[k, n]` row-major, with optional row importance.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Name shown in the table.
    pub name: String,
    /// Rows (inputs).
    pub k: usize,
    /// Columns (outputs).
    pub n: usize,
    /// Weights, `w[row * n + col]`.
    pub w: Vec<f32>,
    /// Importance `h_k` per row, used by the weighted NMSE (and by encoders told to).
    pub importance: Option<Vec<f32>>,
}

/// An encoder under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// ccq's WINT2 encoder at an effort level; `importance` says whether it is given `h`.
    Ccq {
        /// Effort level.
        effort: Effort,
        /// Whether the encoder sees the data set's importance.
        importance: bool,
    },
    /// WINT2 with the naive full-range code map (`code_scale = 32767/255`, `code_zp = 0`),
    /// the same scale fitting and exact byte search as the default effort.
    NaiveMap,
    /// Scalar 2-bit round-to-nearest: levels `{-1.5, -0.5, 0.5, 1.5} * s`, one bf16 scale
    /// per 64 weights of a column, searched among 48 candidates (2.25 bpw).
    Rtn,
}

impl Method {
    /// The label shown in the table.
    pub fn label(&self) -> String {
        match self {
            Method::Ccq { effort, importance: true } => format!("ccq {} +h", effort.name()),
            Method::Ccq { effort, importance: false } => format!("ccq {}", effort.name()),
            Method::NaiveMap => "naive map".to_string(),
            Method::Rtn => "rtn2 (2-bit/64)".to_string(),
        }
    }
}

/// Raw measurements of one method on one (or several pooled) data sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Data set name.
    pub dataset: String,
    /// Method label.
    pub method: String,
    /// Stored bits (all components).
    pub bits: f64,
    /// Weights encoded.
    pub weights: f64,
    /// `sum (W - What)^2`.
    pub error: f64,
    /// `sum W^2`.
    pub energy: f64,
    /// `sum h (W - What)^2`.
    pub weighted_error: f64,
    /// `sum h W^2`.
    pub weighted_energy: f64,
    /// Seconds spent encoding.
    pub encode_s: f64,
    /// Seconds spent decoding.
    pub decode_s: f64,
}

impl Row {
    /// Bits per weight.
    pub fn bpw(&self) -> f64 {
        self.bits / self.weights
    }
    /// Normalised MSE.
    pub fn nmse(&self) -> f64 {
        self.error / self.energy
    }
    /// Importance-weighted normalised MSE.
    pub fn weighted_nmse(&self) -> f64 {
        self.weighted_error / self.weighted_energy
    }
    /// Weights encoded per second.
    pub fn encode_rate(&self) -> f64 {
        self.weights / self.encode_s
    }
    /// Weights decoded per second.
    pub fn decode_rate(&self) -> f64 {
        self.weights / self.decode_s
    }
}

/// Sums rows (of one method over several data sets) into one row named `dataset`.
pub fn pool(rows: &[Row], dataset: &str) -> Option<Row> {
    let first = rows.first()?;
    let mut out = Row { dataset: dataset.to_string(), ..first.clone() };
    for r in &rows[1..] {
        out.bits += r.bits;
        out.weights += r.weights;
        out.error += r.error;
        out.energy += r.energy;
        out.weighted_error += r.weighted_error;
        out.weighted_energy += r.weighted_energy;
        out.encode_s += r.encode_s;
        out.decode_s += r.decode_s;
    }
    Some(out)
}

/// Runs every method on every data set, on a pool of `threads` threads (0: rayon's default).
pub fn run(datasets: &[Dataset], methods: &[Method], threads: usize) -> Result<Vec<Row>, SchemeError> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    let body = || {
        let mut rows = Vec::new();
        for d in datasets {
            for m in methods {
                rows.push(measure(d, *m)?);
            }
        }
        Ok(rows)
    };
    match pool {
        Ok(pool) => pool.install(body),
        Err(_) => body(),
    }
}

/// Encodes and decodes one data set with one method.
fn measure(d: &Dataset, m: Method) -> Result<Row, SchemeError> {
    let h = d.importance.as_deref();
    let start = Instant::now();
    let (decoded, bits, encode_s, decode_s) = match m {
        Method::Ccq { effort, importance } => {
            let scheme = Wint2 { effort };
            let packed = scheme.encode(&d.w, d.k, d.n, crate::scheme::Importance::from(if importance { h } else { None }))?;
            let encode_s = start.elapsed().as_secs_f64();
            let t = Instant::now();
            let out = scheme.decode(&packed)?;
            (out, scheme.bits_per_weight(d.k, d.n), encode_s, t.elapsed().as_secs_f64())
        }
        Method::NaiveMap => {
            let scheme = Wint2::default();
            let packed = encode_with_maps(&scheme, &d.w, d.k, d.n, None, &[NAIVE])?;
            let encode_s = start.elapsed().as_secs_f64();
            let t = Instant::now();
            let out = scheme.decode(&packed)?;
            (out, scheme.bits_per_weight(d.k, d.n), encode_s, t.elapsed().as_secs_f64())
        }
        Method::Rtn => {
            let scheme = crate::scheme::Rtn2;
            let packed = scheme.encode(&d.w, d.k, d.n, crate::scheme::Importance::Uniform)?;
            let encode_s = start.elapsed().as_secs_f64();
            let t = Instant::now();
            let out = scheme.decode(&packed)?;
            (out, scheme.bits_per_weight(d.k, d.n), encode_s, t.elapsed().as_secs_f64())
        }
    };
    Ok(score(d, &m, &decoded, bits, encode_s, decode_s))
}

/// The error sums of a decoded matrix, in a fixed order.
fn score(d: &Dataset, m: &Method, decoded: &[f32], bpw: f64, encode_s: f64, decode_s: f64) -> Row {
    let weights = (d.k * d.n) as f64;
    let mut row = Row {
        dataset: d.name.clone(),
        method: m.label(),
        bits: bpw * weights,
        weights,
        error: 0.0,
        energy: 0.0,
        weighted_error: 0.0,
        weighted_energy: 0.0,
        encode_s,
        decode_s,
    };
    for r in 0..d.k {
        let hk = d.importance.as_ref().map_or(1.0, |h| h[r] as f64);
        for c in 0..d.n {
            let w = d.w[r * d.n + c] as f64;
            let e = (w - decoded[r * d.n + c] as f64).powi(2);
            row.error += e;
            row.energy += w * w;
            row.weighted_error += hk * e;
            row.weighted_energy += hk * w * w;
        }
    }
    row
}

/// The benchmark table; `Display` prints it with a header.
pub struct Table<'a>(pub &'a [Row]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<16} {:>6} {:>8} {:>10} {:>12} {:>12}",
            "data set", "method", "bpw", "NMSE", "w. NMSE", "encode w/s", "decode w/s"
        )?;
        for r in self.0 {
            writeln!(
                f,
                "{:<28} {:<16} {:>6.3} {:>8.4} {:>10.4} {:>12.3e} {:>12.3e}",
                r.dataset,
                r.method,
                r.bpw(),
                r.nmse(),
                r.weighted_nmse(),
                r.encode_rate(),
                r.decode_rate()
            )?;
        }
        Ok(())
    }
}

/// The i.i.d. N(0, 1) `[k, n]` data set of the given seed.
pub fn gaussian(name: &str, k: usize, n: usize, seed: u64) -> Dataset {
    let w = crate::rng::Rng::new(seed).normals(k * n);
    Dataset { name: name.to_string(), k, n, w, importance: None }
}

/// A log-normal importance profile `h_k = exp(sigma * z_k)`, z_k i.i.d. N(0, 1).
pub fn log_normal_importance(k: usize, sigma: f64, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..k).map(|_| (sigma * rng.normal()).exp() as f32).collect()
}
