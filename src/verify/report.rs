//! The `--report FILE.html` page: one self-contained HTML file (inline CSS and SVG, no
//! scripts, no network) with a heatmap of error over layers x experts, a histogram of NMSE per
//! scheme, and the worst tensors.

use super::{TensorRow, VerifyReport};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Renders the report as HTML.
pub fn html(report: &VerifyReport) -> String {
    let mut out = String::new();
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ccq verify</title>\n<style>");
    out.push_str("body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}");
    out.push_str("td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}");
    out.push_str(
        ".fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}svg text{font:11px sans-serif}</style></head><body>\n",
    );
    let _ = writeln!(
        out,
        "<h1>ccq verify</h1><p>original <code>{}</code><br>quantized <code>{}</code><br>{}</p>",
        escape(&report.original),
        escape(&report.quantized),
        escape(&report.probe)
    );
    if report.passed {
        out.push_str("<p class=\"pass\">all thresholds met</p>\n");
    } else {
        let _ = writeln!(out, "<p class=\"fail\">{} threshold(s) exceeded</p><ul>", report.offenders.len());
        for o in &report.offenders {
            let _ = writeln!(out, "<li>{}: {} {:.4e} &gt; {:.4e}</li>", escape(&o.name), o.figure, o.value, o.limit);
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Expert NMSE, layers x experts</h2>\n");
    out.push_str(&heatmap(&report.tensors));
    out.push_str("<h2>NMSE per scheme</h2>\n");
    out.push_str(&histograms(&report.tensors));
    out.push_str("<h2>Worst tensors</h2>\n");
    out.push_str(&worst_table(&report.tensors, 25));
    out.push_str("</body></html>\n");
    out
}

/// Minimal HTML escaping for text and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A colour from green (low) to red (high) for `t` in [0, 1].
fn colour(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let hue = 120.0 * (1.0 - t);
    format!("hsl({hue:.0},70%,50%)")
}

/// Mean NMSE of each (layer, expert) over its routed-expert tensors, drawn as a grid of cells
/// coloured on a log scale between the smallest and largest cell.
fn heatmap(tensors: &[TensorRow]) -> String {
    let mut cells: BTreeMap<(usize, usize), (f64, usize)> = BTreeMap::new();
    for t in tensors {
        if let (Some(l), Some(e)) = (t.layer, t.expert) {
            if t.nmse.is_finite() {
                let c = cells.entry((l, e)).or_default();
                c.0 += t.nmse;
                c.1 += 1;
            }
        }
    }
    if cells.is_empty() {
        return "<p>no routed-expert tensors</p>\n".to_string();
    }
    let layers: Vec<usize> = cells.keys().map(|k| k.0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let experts = cells.keys().map(|k| k.1).max().unwrap_or(0) + 1;
    let means: Vec<f64> = cells.values().map(|(s, n)| s / *n as f64).collect();
    let (lo, hi) = means.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = (lo.max(1e-12).ln(), hi.max(1e-12).ln());
    let cell = (640 / experts.max(1)).clamp(4, 40);
    let (left, top) = (60, 20);
    let (width, height) = ((left + cell * experts + 10).max(560), top + cell * layers.len() + 30);
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">\n");
    for (row, layer) in layers.iter().enumerate() {
        let y = top + row * cell;
        let _ = writeln!(svg, "<text x=\"0\" y=\"{}\">layer {layer}</text>", y + cell * 3 / 4);
        for expert in 0..experts {
            let Some((sum, n)) = cells.get(&(*layer, expert)) else { continue };
            let mean = sum / *n as f64;
            let t = if hi > lo { (mean.max(1e-12).ln() - lo) / (hi - lo) } else { 0.5 };
            let _ = writeln!(
                svg,
                "<rect x=\"{}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"{}\"><title>layer {layer} expert {expert}: mean NMSE {mean:.4e} over {n} tensors</title></rect>",
                left + expert * cell,
                colour(t)
            );
        }
    }
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{}\">experts 0..{} (green {:.3e} .. red {:.3e}, log scale)</text></svg>",
        height - 8,
        experts - 1,
        lo.exp(),
        hi.exp()
    );
    svg
}

/// One bar chart per scheme: counts of tensors per NMSE bin (log-spaced, 4 bins per decade).
fn histograms(tensors: &[TensorRow]) -> String {
    let mut by_scheme: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for t in tensors.iter().filter(|t| t.nmse.is_finite() && t.nmse > 0.0) {
        by_scheme.entry(t.scheme.as_str()).or_default().push(t.nmse);
    }
    let mut out = String::new();
    for (scheme, values) in by_scheme {
        let bin = |v: f64| (v.log10() * 4.0).floor() as i64;
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for &v in &values {
            *counts.entry(bin(v)).or_default() += 1;
        }
        let (first, last) = (*counts.keys().next().unwrap_or(&0), *counts.keys().last().unwrap_or(&0));
        let bins = (last - first + 1) as usize;
        let peak = counts.values().copied().max().unwrap_or(1);
        let (bar, h) = (30usize, 120usize);
        let width = (bins * bar + 20).max(240);
        let mut svg =
            format!("<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\">\n", escape(scheme), h + 40);
        for (i, b) in (first..=last).enumerate() {
            let n = counts.get(&b).copied().unwrap_or(0);
            let bh = n * h / peak;
            let lower = 10f64.powf(b as f64 / 4.0);
            let _ = writeln!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"#4a7\"><title>NMSE {lower:.2e}..{:.2e}: {n} tensors</title></rect><text x=\"{}\" y=\"{}\">{n}</text>",
                10 + i * bar,
                h - bh + 10,
                bar - 4,
                lower * 10f64.powf(0.25),
                10 + i * bar,
                h + 25
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\">NMSE {:.1e} .. {:.1e}</text></svg>",
            h + 38,
            10f64.powf(first as f64 / 4.0),
            10f64.powf((last + 1) as f64 / 4.0)
        );
        out.push_str(&svg);
    }
    out
}

/// The `limit` tensors with the highest NMSE.
fn worst_table(tensors: &[TensorRow], limit: usize) -> String {
    let mut rows: Vec<&TensorRow> = tensors.iter().collect();
    rows.sort_by(|a, b| b.nmse.total_cmp(&a.nmse).then(a.name.cmp(&b.name)));
    let mut out = String::from("<table><tr><th>tensor</th><th>scheme</th><th>NMSE</th><th>SQNR dB</th><th>cosine</th><th>max abs err</th><th>output rel err</th></tr>\n");
    for t in rows.into_iter().take(limit) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.4e}</td><td>{:.2}</td><td>{:.6}</td><td>{:.3e}</td><td>{:.4e}</td></tr>",
            escape(&t.name),
            escape(&t.scheme),
            t.nmse,
            t.sqnr_db,
            t.cosine,
            t.max_abs_err,
            t.output_rel_err
        );
    }
    out.push_str("</table>\n");
    out
}
