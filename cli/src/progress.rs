//! Progress of the forward passes of `calibrate` and `eval`: an indicatif bar on a terminal,
//! a plain line every 10 s otherwise, nothing when quiet.

use ccq::model::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Reports layer runs and tokens.
pub struct LayerReporter {
    bar: Option<ProgressBar>,
    plain: bool,
    last: Instant,
    start: Instant,
}

impl LayerReporter {
    /// A reporter; silent when `quiet`.
    pub fn new(quiet: bool) -> LayerReporter {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(ProgressStyle::with_template("{bar:40} layer runs {pos}/{len} ETA {eta} {msg}").expect("valid template"));
            bar
        });
        LayerReporter { bar, plain: !quiet && !terminal, last: Instant::now(), start: Instant::now() }
    }

    /// Hears one progress event.
    pub fn update(&mut self, p: Progress) {
        let rate = p.tokens_done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_length(p.steps_total as u64);
            bar.set_position(p.steps_done as u64);
            bar.set_message(format!("tokens {}/{} ({rate:.0}/s)", p.tokens_done, p.tokens_total));
        } else if self.plain && (self.last.elapsed() >= Duration::from_secs(10) || p.tokens_done == p.tokens_total) {
            self.last = Instant::now();
            // A closed stderr must not stop the work: the line is dropped.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "ccq: {}/{} layer runs, {}/{} tokens, {rate:.0} tokens/s",
                p.steps_done,
                p.steps_total,
                p.tokens_done,
                p.tokens_total
            );
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
