//! Quality of the wint8 / wint4 scale rules: absmax (Paddle's) against the searched scale.
//!
//! Ignored by default (seconds of CPU, and it reads `../shared/data` when that exists):
//! `cargo test --release --test per_channel_nmse -- --ignored --nocapture`.
//! NMSE = sum (W - What)^2 / sum W^2, pooled over the matrices of a set.

use std::path::Path;

use ccq::rng::Rng;
use ccq::scheme::{ScaleRule, Scheme, Wint4, Wint8};

/// (sum of squared errors, sum of squares) of one encode/decode.
fn sse(scheme: &dyn Scheme, w: &[f32], k: usize, n: usize) -> (f64, f64) {
    let d = scheme.decode(&scheme.encode(w, k, n, ccq::scheme::Importance::Uniform).unwrap()).unwrap();
    let err = w.iter().zip(&d).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    let energy = w.iter().map(|&a| f64::from(a).powi(2)).sum();
    (err, energy)
}

fn schemes() -> Vec<(&'static str, Box<dyn Scheme>)> {
    vec![
        ("wint8 absmax", Box::new(Wint8 { scale_rule: ScaleRule::Absmax })),
        ("wint8 search", Box::new(Wint8 { scale_rule: ScaleRule::Search })),
        ("wint4 absmax", Box::new(Wint4 { scale_rule: ScaleRule::Absmax })),
        ("wint4 search", Box::new(Wint4 { scale_rule: ScaleRule::Search })),
    ]
}

/// Every 2-D bf16 linear weight of the real checkpoint, as logical [in, out] f32.
fn real_matrices(dir: &Path) -> Vec<(String, usize, usize, Vec<f32>)> {
    let mut out = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        for name in names {
            let t = st.tensor(&name).unwrap();
            let linear = name.contains("_proj.weight");
            if !linear || t.dtype() != safetensors::Dtype::BF16 || t.shape().len() != 2 {
                continue;
            }
            let (out_dim, in_dim) = (t.shape()[0], t.shape()[1]);
            let v: Vec<f32> = t.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            // PyTorch [out, in] -> logical [in, out].
            let mut w = vec![0f32; v.len()];
            for o in 0..out_dim {
                for i in 0..in_dim {
                    w[i * out_dim + o] = v[o * in_dim + i];
                }
            }
            out.push((name, in_dim, out_dim, w));
        }
    }
    out
}

#[test]
#[ignore = "quality table; seconds of CPU; reads ../shared/data when present"]
fn nmse_table() {
    let (k, n) = (4096, 512);
    let w = Rng::new(0x5CA1E).normals(k * n);
    println!("gaussian N(0,1) [{k}, {n}]");
    for (label, s) in schemes() {
        let t = std::time::Instant::now();
        let (e, x) = sse(s.as_ref(), &w, k, n);
        println!("  {label}: NMSE {:.4e}  ({:.2} s)", e / x, t.elapsed().as_secs_f64());
    }

    // Importance-weighted: log-normal h (sigma 1), the search given h; NMSE weighted by h.
    let h = ccq::bench::wint2::log_normal_importance(k, 1.0, 0x1A7E);
    println!("gaussian N(0,1) [{k}, {n}], log-normal h, weighted NMSE");
    for (label, s) in schemes() {
        let d = s.decode(&s.encode(&w, k, n, ccq::scheme::Importance::Diagonal(&h)).unwrap()).unwrap();
        let (mut e, mut x) = (0.0, 0.0);
        for (i, (&a, &b)) in w.iter().zip(&d).enumerate() {
            let hk = f64::from(h[i / n]);
            e += hk * (f64::from(a) - f64::from(b)).powi(2);
            x += hk * f64::from(a).powi(2);
        }
        println!("  {label}: weighted NMSE {:.4e}", e / x);
    }

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ernie45-moe-minilm-pt");
    if !dir.exists() {
        println!("{} absent: real matrices skipped", dir.display());
        return;
    }
    let mats = real_matrices(&dir);
    println!("real: {} matrices of {}", mats.len(), dir.display());
    for (label, s) in schemes() {
        let (mut e, mut x, mut usable) = (0.0, 0.0, 0);
        let mut per: Vec<f64> = Vec::new();
        for (_, k, n, w) in &mats {
            if s.check_shape(*k, *n).is_err() {
                continue;
            }
            let (ee, xx) = sse(s.as_ref(), w, *k, *n);
            e += ee;
            x += xx;
            usable += 1;
            per.push(ee / xx);
        }
        let worst = per.iter().cloned().fold(0.0, f64::max);
        println!("  {label}: pooled NMSE {:.4e} over {usable} matrices, worst {worst:.4e}", e / x);
    }
    // Per-matrix: how often the search beats absmax.
    for (a, b) in [(0, 1), (2, 3)] {
        let s = schemes();
        let (wins, mut total) = (std::cell::Cell::new(0), 0);
        for (_, k, n, w) in &mats {
            if s[a].1.check_shape(*k, *n).is_err() {
                continue;
            }
            total += 1;
            let ea = sse(s[a].1.as_ref(), w, *k, *n).0;
            let eb = sse(s[b].1.as_ref(), w, *k, *n).0;
            if eb < ea {
                wins.set(wins.get() + 1);
            }
            assert!(eb <= ea, "search lost on a matrix");
        }
        println!("  {} better than {} on {}/{} matrices", s[b].0, s[a].0, wins.get(), total);
    }
}
