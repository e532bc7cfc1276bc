//! Where output goes while it is written: every file under a temporary name, every output
//! directory as `OUT.ccq-partial` until complete, then renamed into place, so that nothing
//! partial ever looks finished and an old output is replaced only by a complete new one.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Checks, before any work, that `out` may be written from `input`:
/// - a path that does not exist yet is always fine;
/// - an existing one needs `force`, and must be a directory (`--force` replaces a directory
///   ccq wrote, never a file);
/// - whatever `force` says, it must not be, or hold, the input or the current directory (its
///   replacement would delete them), nor have an empty final component (`.`, `..`, `/`).
///
/// With these, [`move_into_place`] replaces an old output only once the new one is complete.
pub fn check_output(out: &Path, input: &Path, force: bool) -> Result<()> {
    let refuse = |input: &Path| Err(Error::OutputHoldsInput { output: out.to_path_buf(), input: input.to_path_buf() });
    let named = out.file_name().is_some_and(|n| !n.is_empty());
    let out_abs = std::path::absolute(out).map_err(|e| Error::io(out, e))?;
    if let Ok(cwd) = std::env::current_dir() {
        if !named || cwd.starts_with(&out_abs) || out.canonicalize().is_ok_and(|o| cwd.canonicalize().is_ok_and(|c| c.starts_with(o))) {
            return refuse(&cwd);
        }
    }
    if let (Ok(input_abs), Ok(out_real)) = (input.canonicalize(), out.canonicalize()) {
        if input_abs.starts_with(&out_real) {
            return refuse(input);
        }
    }
    if !out.exists() {
        return Ok(());
    }
    if !force {
        return Err(Error::OutputExists { path: out.to_path_buf() });
    }
    if !out.is_dir() {
        return Err(Error::NotACheckpoint {
            path: out.to_path_buf(),
            problem: "is not a directory; --force replaces only an output directory, remove the file yourself".to_string(),
        });
    }
    Ok(())
}

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
