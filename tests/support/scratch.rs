//! Scratch directories for the integration tests, inside fresh temporary directories removed
//! when dropped, also when a test fails.

use std::path::{Path, PathBuf};

/// A scratch directory `ROOT/tag`, `ROOT` a fresh temporary directory.
pub struct Scratch {
    _root: tempfile::TempDir,
    dir: PathBuf,
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.dir
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.dir
    }
}

/// A new scratch directory, created when `create` (else the test creates it or names it as an
/// output that must not exist yet).
pub fn scratch(tag: &str, create: bool) -> Scratch {
    let root = tempfile::Builder::new().prefix(&format!("ccq-{tag}-")).tempdir().expect("a temporary directory");
    let dir = root.path().join(tag);
    if create {
        std::fs::create_dir_all(&dir).expect("a scratch directory");
    }
    Scratch { _root: root, dir }
}
