//! How fast a header-only look at a big checkpoint is: `ccq inspect` against the I/O floor.
//!
//! The baseline reads every shard's header bytes and does nothing else; the measured path
//! opens the checkpoint (validating every header), classifies every tensor and serialises the
//! `--json` report. Both run in the same process on the same files, so their ratio is what
//! the validation and classification cost on top of reading.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::inspect::Inspection;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectTiming {
    /// Tensors in the checkpoint.
    pub tensors: usize,
    /// Shard files.
    pub shards: usize,
    /// Bytes of tensor data the headers describe.
    pub data_bytes: u64,
    /// Seconds to read every header's bytes (the baseline).
    pub read_headers: f64,
    /// Seconds to open, validate, classify and serialise to JSON.
    pub inspect_json: f64,
}

impl InspectTiming {
    /// Seconds of `inspect --json` per 10,000 tensors.
    pub fn per_10k_tensors(&self) -> f64 {
        self.inspect_json * 10_000.0 / self.tensors.max(1) as f64
    }
}

/// Times the baseline and `inspect --json` on the checkpoint at `dir`, best of `repeats`.
pub fn time_inspect(dir: &Path, repeats: usize) -> Result<InspectTiming> {
    let ckpt = Checkpoint::open(dir)?;
    let paths: Vec<_> = ckpt.shards().iter().map(|s| s.path.clone()).collect();
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        for path in &paths {
            read_header_bytes(path)?;
        }
        best.0 = best.0.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let inspection = Inspection::of(&Checkpoint::open(dir)?)?;
        let json = serde_json::to_string(&inspection).expect("inspection serializes");
        best.1 = best.1.min(start.elapsed().as_secs_f64());
        std::hint::black_box(json);
    }
    Ok(InspectTiming {
        tensors: ckpt.tensors().len(),
        shards: paths.len(),
        data_bytes: ckpt.tensors().iter().map(|t| t.nbytes()).sum(),
        read_headers: best.0,
        inspect_json: best.1,
    })
}

fn read_header_bytes(path: &Path) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|e| Error::io(path, e))?;
    let mut header = vec![0u8; u64::from_le_bytes(prefix).min(crate::checkpoint::header::MAX_HEADER_LEN) as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    Ok(header)
}
