//! Where output goes while it is written: every file under a temporary name, every output
//! directory as `OUT.ccq-partial` until complete, then renamed into place, so that nothing
//! partial ever looks finished and an old output is replaced only by a complete new one.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `OUT.ccq-partial`: where an unfinished output directory lives.
pub fn partial_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{name}.ccq-partial"))
}

/// Writes pretty JSON through a temporary name.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let partial = super::write::partial_name(path);
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json { file: path.to_path_buf(), problem: e.to_string() })? + "\n";
    std::fs::write(&partial, text).map_err(|e| Error::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))
}

/// Renames the finished work directory to `out`, replacing an old `out` only after the new
/// one is complete.
pub fn move_into_place(work: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = out.with_file_name(format!("{}.ccq-old", out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(work, out).map_err(|e| Error::io(out, e))?;
        return std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e));
    }
    std::fs::rename(work, out).map_err(|e| Error::io(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dir_sits_beside_the_output() {
        assert_eq!(partial_dir(Path::new("/x/out")), Path::new("/x/out.ccq-partial"));
    }
}
