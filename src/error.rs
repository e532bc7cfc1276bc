//! The library's error type: every failure names the file, and the tensor where there is one.

use crate::checkpoint::HeaderError;
use crate::{Dtype, SchemeError};
use std::path::PathBuf;

/// Result with ccq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ccq's library. Messages are lowercase, say what was wrong
/// and where, and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors header failed validation.
    #[error("{}: {kind}", file.display())]
    Header {
        /// The safetensors file.
        file: PathBuf,
        /// What is wrong with its header.
        #[source]
        kind: HeaderError,
    },
    /// A JSON file (config or index) is not what it should be.
    #[error("{}: {problem}", file.display())]
    Json {
        /// The JSON file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The path holds no checkpoint ccq can read.
    #[error("{}: {problem}", path.display())]
    NotACheckpoint {
        /// The path given.
        path: PathBuf,
        /// What is missing.
        problem: String,
    },
    /// The shard index names a file that does not exist.
    #[error("{}: tensor '{tensor}' is mapped to '{shard}', which does not exist", index.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The first tensor mapped to the missing shard.
        tensor: String,
        /// The missing shard's file name.
        shard: String,
    },
    /// The shard index maps a tensor to a shard that does not hold it.
    #[error("{}: the index maps tensor '{tensor}' to this file, but its header has no such tensor", shard.display())]
    NotInShard {
        /// The shard file.
        shard: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor name appears in two shards.
    #[error("tensor '{tensor}' appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor's name.
        tensor: String,
        /// One shard holding it.
        first: PathBuf,
        /// The other shard holding it.
        second: PathBuf,
    },
    /// No tensor of that name in the checkpoint.
    #[error("{}: no tensor named '{tensor}'", checkpoint.display())]
    TensorNotFound {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// A tensor's dtype cannot be converted to f32.
    #[error("{}: tensor '{tensor}' has dtype {dtype}, which ccq does not convert to f32{hint}", file.display())]
    NotConvertible {
        /// The shard file.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Advice, starting with "; " (empty when there is none).
        hint: &'static str,
    },
    /// A value that must be finite is NaN or infinite.
    #[error("{}: tensor '{tensor}': element {index} is {value}, expected a finite number", file.display())]
    NonFinite {
        /// The file holding the tensor.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Flat index of the first bad element.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// A tensor does not have the shape (or values) an operation needs.
    #[error("{}tensor '{tensor}': {problem}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    BadTensor {
        /// The file holding the tensor, when it comes from one.
        file: Option<PathBuf>,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The output is, or holds, the input: writing it would destroy the input.
    #[error("{}: the output would replace the input {}; choose another output", output.display(), input.display())]
    OutputHoldsInput {
        /// The output path.
        output: PathBuf,
        /// The input it would replace.
        input: PathBuf,
    },
    /// An unfinished run's work directory is in the way of a run without `--resume`.
    #[error(
        "{}: holds an unfinished run{}; pass --resume to continue it, or --force to discard it",
        work.display(),
        match (same_options, shards_done) {
            (true, n) => format!(" with the same options, {n} finished shard(s) that --resume would reuse"),
            (false, _) => " of other options (or of an older ccq)".to_string(),
        }
    )]
    Unfinished {
        /// The work directory (`OUT.ccq-partial`).
        work: PathBuf,
        /// Finished shards recorded there.
        shards_done: usize,
        /// Whether they were written with the options of this run.
        same_options: bool,
    },
    /// The output path exists and `--force` was not given.
    #[error("{}: output already exists; pass --force to replace it", path.display())]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// An original and a quantized checkpoint that do not belong together.
    #[error("{} and {} do not belong together:\n  {}", original.display(), quantized.display(), problems.join("\n  "))]
    Mismatch {
        /// The original checkpoint.
        original: PathBuf,
        /// The quantized checkpoint.
        quantized: PathBuf,
        /// Every mismatch found.
        problems: Vec<String>,
    },
    /// A file writer was given a different number of bytes than its header promised.
    #[error("{}: the header promises {expected} data bytes but {got} were given", file.display())]
    WriteSize {
        /// The file being written.
        file: PathBuf,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// A packed tensor's stored components are not what its scheme stores (missing, wrong
    /// dtype, shape or size, or values the decoder rejects).
    #[error("{}: tensor '{tensor}': {source}", file.display())]
    Packed {
        /// The file holding the tensor's components (or its source, when encoding).
        file: PathBuf,
        /// The packed tensor's name (the prefix of its components).
        tensor: String,
        /// What is wrong with its components.
        source: SchemeError,
    },
    /// A kernel refused a tensor's weights or activations.
    #[error("{}: tensor '{tensor}': {source}", file.display())]
    Kernel {
        /// The file holding the tensor.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What the kernel refused.
        source: crate::kernel::KernelError,
    },
    /// The planned mix of schemes is one FastDeploy's loader cannot read.
    #[error("{source}; use --layout native, or --set REGEX=SCHEME to change the mix")]
    FastDeployMix {
        /// Why.
        #[from]
        source: crate::format::fastdeploy::UnloadableMix,
    },
    /// A quantized tensor's description is missing or wrong: in the native layout, the
    /// `ccq.tensor.NAME` metadata of the shard holding it.
    #[error("{}: tensor '{tensor}': {problem}", file.display())]
    QuantMetadata {
        /// The file that holds (or should hold) the description.
        file: PathBuf,
        /// The quantized tensor's name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// A conversion stopped before it finished; its completed shards are kept for `--resume`.
    #[error("{}: stopped after {shards_done} shard(s); run again with --resume to continue", work.display())]
    Interrupted {
        /// The unfinished output directory.
        work: PathBuf,
        /// Shards completed so far.
        shards_done: usize,
    },
    /// Input a model cannot run on (token ids, sequence lengths, missing config keys), found
    /// before any weight is read.
    #[error("{problem}")]
    BadInput {
        /// What is wrong, naming the sequence, token or key.
        problem: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    /// Nothing when `problems` is empty; otherwise one [`Error::BadInput`] that lists them
    /// all at once: `"{what} (N problem(s)): p1; p2; ..."`, the first `shown` of them, then
    /// `...` when there are more.
    pub fn refuse_all(what: &str, mut problems: Vec<String>, shown: usize) -> Result<(), Error> {
        if problems.is_empty() {
            return Ok(());
        }
        let n = problems.len();
        problems.truncate(shown);
        let more = if n > shown { "; ..." } else { "" };
        Err(Error::BadInput { problem: format!("{what} ({n} problem(s)): {}{more}", problems.join("; ")) })
    }
}
