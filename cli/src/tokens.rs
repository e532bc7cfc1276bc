//! The token flags shared by `calibrate`, `eval` and `quantize`: ids (`--tokens`) or text
//! (`--text`, tokenized with the model's `tokenizer.json`).

use anyhow::{bail, Result};
use ccq::tokens::{tokenizer_path, TokenSource};
use std::path::{Path, PathBuf};

/// Flags naming the token sequences a command runs the model on.
#[derive(clap::Args)]
pub struct TokenArgs {
    /// Token ids: a JSON array of sequences (arrays of ids), or with --seq-len raw
    /// little-endian u32 ids.
    #[arg(long, value_name = "FILE", required_unless_present = "text", conflicts_with = "text")]
    tokens: Option<PathBuf>,
    /// UTF-8 text, tokenized with the checkpoint's tokenizer.json and cut into sequences of
    /// --seq-len tokens (repeatable; a directory stands for its *.txt files, in name order).
    #[arg(long, value_name = "FILE|DIR")]
    text: Vec<PathBuf>,
    /// With --text: the tokenizer.json to use instead of the checkpoint's own.
    #[arg(long, value_name = "FILE", requires = "text")]
    tokenizer: Option<PathBuf>,
    /// With --tokens: read raw little-endian u32 ids cut into sequences of this length. With
    /// --text: tokens per sequence (default 512, or the model's limit when lower).
    #[arg(long)]
    seq_len: Option<usize>,
    /// With --text: keep at most this many sequences, evenly spread over the text.
    #[arg(long, requires = "text")]
    max_sequences: Option<usize>,
}

impl TokenArgs {
    /// Where the tokens come from; `model` is the directory whose tokenizer.json text uses.
    pub fn source(&self, model: &Path) -> Result<TokenSource> {
        token_source(self.tokens.as_deref(), &self.text, self.tokenizer.as_deref(), self.seq_len, self.max_sequences, model)
    }
}

/// A token source from ids or text flags (exactly one of them given).
pub fn token_source(
    ids: Option<&Path>,
    text: &[PathBuf],
    tokenizer: Option<&Path>,
    seq_len: Option<usize>,
    max_sequences: Option<usize>,
    model: &Path,
) -> Result<TokenSource> {
    match (ids, text.is_empty()) {
        (Some(file), true) => Ok(TokenSource::Ids { file: file.to_path_buf(), seq_len }),
        (None, false) => {
            Ok(TokenSource::Text { paths: text.to_vec(), tokenizer: tokenizer_path(model, tokenizer)?, seq_len, max_sequences })
        }
        (Some(_), false) => bail!("give token ids or text, not both"),
        (None, true) => bail!("no tokens given: pass token ids or text"),
    }
}
