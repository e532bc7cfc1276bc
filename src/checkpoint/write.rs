//! Writing safetensors files tensor by tensor, without holding them all in memory.
//!
//! The header is computed up front from the list of tensors (name, dtype, shape), so the data
//! can then be streamed in order. The file is written under a temporary name beside the target
//! and renamed into place by [`SafetensorsWriter::finish`] only when every byte promised by the
//! header has been written: an interrupted write never leaves a file that looks finished.

use crate::error::{Error, Result};
use crate::Dtype;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A tensor to be written: its name, dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape }
    }

    /// Bytes of data the tensor occupies.
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// The bytes of a safetensors header (length prefix included) for `tensors` stored
/// contiguously in the given order. The JSON is padded with spaces to a multiple of 8 bytes
/// so that the data section is aligned, as the reference writer does.
pub fn header_bytes(tensors: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).expect("string map serializes"));
    }
    let mut offset = 0u64;
    for t in tensors {
        if json.len() > 1 {
            json.push(',');
        }
        let end = offset + t.nbytes();
        let name = serde_json::to_string(&t.name).expect("string serializes");
        let shape = serde_json::to_string(&t.shape).expect("shape serializes");
        json.push_str(&format!("{name}:{{\"dtype\":\"{}\",\"shape\":{shape},\"data_offsets\":[{offset},{end}]}}", t.dtype.name()));
        offset = end;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// Streams one safetensors file: create it with the full tensor list, [`write`](Self::write)
/// every tensor's bytes in that order, then [`finish`](Self::finish).
pub struct SafetensorsWriter {
    target: PathBuf,
    partial: PathBuf,
    out: BufWriter<File>,
    expected: u64,
    written: u64,
}

impl SafetensorsWriter {
    /// Starts writing `path` (under a temporary name) with the header for `tensors`.
    pub fn create(path: impl AsRef<Path>, tensors: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Result<SafetensorsWriter> {
        let target = path.as_ref().to_path_buf();
        let partial = partial_name(&target);
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header_bytes(tensors, metadata)).map_err(|e| Error::io(&partial, e))?;
        let expected = tensors.iter().map(TensorSpec::nbytes).sum();
        Ok(SafetensorsWriter { target, partial, out, expected, written: 0 })
    }

    /// Appends data bytes (the tensors' bytes, in header order, in as many calls as wanted).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.written + bytes.len() as u64 > self.expected {
            return Err(self.size_error(self.written + bytes.len() as u64));
        }
        self.out.write_all(bytes).map_err(|e| Error::io(&self.partial, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Leaves the rest of the data unwritten (zero, as a sparse region) and finishes. For
    /// header-only test and benchmark checkpoints of a large model's shape.
    pub fn finish_sparse(mut self) -> Result<PathBuf> {
        self.flush()?;
        let missing = self.expected - self.written;
        let file = self.out.get_ref();
        let len = file.metadata().map_err(|e| Error::io(&self.partial, e))?.len();
        file.set_len(len + missing).map_err(|e| Error::io(&self.partial, e))?;
        self.rename_into_place()
    }

    /// Checks every promised byte was written, syncs, and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.written != self.expected {
            return Err(self.size_error(self.written));
        }
        self.flush()?;
        self.out.get_ref().sync_all().map_err(|e| Error::io(&self.partial, e))?;
        self.rename_into_place()
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.partial, e))
    }

    fn rename_into_place(self) -> Result<PathBuf> {
        std::fs::rename(&self.partial, &self.target).map_err(|e| Error::io(&self.target, e))?;
        Ok(self.target)
    }

    fn size_error(&self, got: u64) -> Error {
        Error::WriteSize { file: self.target.clone(), expected: self.expected, got }
    }
}

/// `dir/.name.partial`: the temporary name a file is written under.
pub fn partial_name(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    target.with_file_name(format!(".{name}.partial"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::header::parse_header;

    #[test]
    fn header_is_aligned_and_parses() {
        let specs = vec![TensorSpec::new("a.weight", Dtype::BF16, vec![2, 3]), TensorSpec::new("b \"quoted\"", Dtype::F32, vec![5])];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut bytes = header_bytes(&specs, &meta);
        assert_eq!(bytes.len() % 8, 0);
        bytes.resize(bytes.len() + 32, 0);
        let header = parse_header(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(header.tensors[1].name, "b \"quoted\"");
        assert_eq!(header.tensors[1].data_offsets, (12, 32));
        assert_eq!(header.metadata["format"], "pt");
    }

    #[test]
    fn unfinished_file_is_never_in_place() {
        let dir = crate::test_support::scratch("write", true);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("x.safetensors");
        let specs = vec![TensorSpec::new("t", Dtype::U8, vec![4])];
        let mut w = SafetensorsWriter::create(&target, &specs, &BTreeMap::new()).unwrap();
        w.write(&[1, 2]).unwrap();
        assert!(w.write(&[3, 4, 5]).is_err());
        assert!(w.finish().is_err());
        assert!(!target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
