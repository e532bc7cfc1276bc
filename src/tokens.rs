//! Token sequences for calibration and evaluation: from files of ids, or from plain text
//! tokenized with the model's own Hugging Face `tokenizer.json`.
//!
//! # Id files
//! A JSON array of sequences (arrays of ids), or, with a sequence length, raw little-endian
//! u32 ids cut into sequences of that many (the last may be shorter).
//!
//! # Text
//! UTF-8 files (a directory stands for its `*.txt` files in name order) are each tokenized
//! without special tokens (no BOS/EOS is added: the ids are exactly the text's), their ids
//! concatenated in the order given, and the stream cut into consecutive sequences of
//! `seq_len` tokens; a last, shorter rest is dropped. With `max_sequences = N` smaller than
//! the `S` sequences the text gives, sequence `floor(i * S / N)` is kept for `i = 0..N`:
//! evenly spread over the text, the same every run.
//!
//! Every source carries a `label` (files, FNV-1a fingerprints of their bytes and of the
//! tokenizer, lengths) for provenance and resume checks.

use crate::error::{Error, Result};
use crate::rng::fnv_hex;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The sequence length text is cut into unless told otherwise.
pub const DEFAULT_TEXT_SEQ_LEN: usize = 512;

/// The tokenizer file a Hugging Face model directory holds.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Where token sequences come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// A file of ids; with `seq_len`, raw little-endian u32 cut into sequences of that length.
    Ids {
        /// The file.
        file: PathBuf,
        /// Raw u32 sequence length (`None`: a JSON array of sequences).
        seq_len: Option<usize>,
    },
    /// Plain text, tokenized.
    Text {
        /// Text files, or directories of `*.txt` files.
        paths: Vec<PathBuf>,
        /// The `tokenizer.json` to use.
        tokenizer: PathBuf,
        /// Tokens per sequence (`None`: [`DEFAULT_TEXT_SEQ_LEN`], or the model's limit when lower).
        seq_len: Option<usize>,
        /// Keep at most this many sequences, evenly spread.
        max_sequences: Option<usize>,
    },
}

/// Loaded sequences and what they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// The sequences.
    pub sequences: Vec<Vec<u32>>,
    /// Files, fingerprints and lengths, as JSON.
    pub label: Value,
}

/// The tokenizer of the model in `dir`: `explicit` when given, else `dir/tokenizer.json`;
/// an error saying what to provide when there is none.
pub fn tokenizer_path(dir: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let path = if dir.is_dir() { dir.join(TOKENIZER_FILE) } else { dir.with_file_name(TOKENIZER_FILE) };
    match path.is_file() {
        true => Ok(path),
        false => Err(Error::BadInput {
            problem: format!(
                "{} has no {TOKENIZER_FILE} to tokenize the text with: pass --tokenizer FILE (the model's Hugging Face tokenizer.json), or token ids with --tokens",
                dir.display()
            ),
        }),
    }
}

/// What a model takes, which token sequences are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Rows of the embedding: every id must be below.
    pub vocab: usize,
    /// `max_position_embeddings`, when the config says.
    pub max_positions: Option<usize>,
    /// The sliding attention window, when it is on.
    pub sliding_window: Option<usize>,
}

impl ModelLimits {
    /// The longest sequence the model takes: `max_position_embeddings`, and the attention
    /// window when sliding-window attention is on.
    pub fn max_sequence(&self) -> Option<usize> {
        match (self.max_positions, self.sliding_window) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Checks token sequences before any work: not empty, every id below `vocab`, no
    /// sequence empty or longer than [`ModelLimits::max_sequence`].
    pub fn check(&self, sequences: &[Vec<u32>]) -> Result<()> {
        let bad = |problem: String| Err(Error::BadInput { problem });
        if sequences.is_empty() {
            return bad("no token sequences given".to_string());
        }
        for (s, seq) in sequences.iter().enumerate() {
            if seq.is_empty() {
                return bad(format!("sequence {s} is empty"));
            }
            if let Some(max) = self.max_positions.filter(|&m| seq.len() > m) {
                return bad(format!("sequence {s} has {} tokens, more than max_position_embeddings ({max})", seq.len()));
            }
            if let Some(window) = self.sliding_window.filter(|&w| seq.len() > w) {
                return bad(format!(
                    "sequence {s} has {} tokens, more than the sliding attention window ({window}), which the forward pass does not implement",
                    seq.len()
                ));
            }
            if let Some((i, t)) = seq.iter().enumerate().find(|(_, &t)| t as usize >= self.vocab) {
                return bad(format!("sequence {s}, position {i}: token id {t} is outside the vocabulary (vocab_size {})", self.vocab));
            }
        }
        Ok(())
    }
}

impl TokenSource {
    /// Reads the sequences and checks them against the model (`cfg`): ids inside the
    /// vocabulary, lengths within the model's limit, the tokenizer's vocabulary no larger
    /// than the embedding, enough text for one sequence.
    pub fn load(&self, limits: impl Into<ModelLimits>) -> Result<Tokens> {
        let cfg = &limits.into();
        let tokens = match self {
            TokenSource::Ids { file, seq_len } => {
                let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
                let sequences = parse_ids(&bytes, *seq_len, file)?;
                let label = json!({"file": file.display().to_string(), "fnv64": fnv_hex(&bytes), "seq_len": seq_len});
                Tokens { sequences, label }
            }
            TokenSource::Text { paths, tokenizer, seq_len, max_sequences } => load_text(paths, tokenizer, *seq_len, *max_sequences, cfg)?,
        };
        cfg.check(&tokens.sequences)?;
        Ok(tokens)
    }

    /// What the source names, for error context.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Ids { file, .. } => format!("tokens {}", file.display()),
            TokenSource::Text { paths, .. } => {
                format!("text {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// Reads a file of ids (see the module documentation).
pub fn read_ids(path: &Path, seq_len: Option<usize>) -> Result<Vec<Vec<u32>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_ids(&bytes, seq_len, path)
}

/// Parses the contents of a file of ids; `path` is named in errors.
pub fn parse_ids(bytes: &[u8], seq_len: Option<usize>, path: &Path) -> Result<Vec<Vec<u32>>> {
    let bad = |problem: String| Error::BadInput { problem: format!("{}: {problem}", path.display()) };
    match seq_len {
        Some(0) => Err(bad("--seq-len must be positive".to_string())),
        Some(n) => {
            if !bytes.len().is_multiple_of(4) {
                return Err(bad(format!("{} bytes is not a whole number of little-endian u32 token ids", bytes.len())));
            }
            let ids: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok(ids.chunks(n).map(<[u32]>::to_vec).collect())
        }
        None => {
            let json: Value = crate::json::parse_slice(bytes)
                .map_err(|e| bad(format!("not a JSON array of token sequences ({e}); for raw little-endian u32 ids give --seq-len")))?;
            let seqs = json.as_array().ok_or_else(|| bad("must be a JSON array of sequences (arrays of token ids)".to_string()))?;
            seqs.iter()
                .enumerate()
                .map(|(s, seq)| {
                    let ids = seq.as_array().ok_or_else(|| bad(format!("sequence {s} is not an array of token ids")))?;
                    ids.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_u64()
                                .and_then(|v| u32::try_from(v).ok())
                                .ok_or_else(|| bad(format!("sequence {s}, position {i}: {v} is not a token id (a u32)")))
                        })
                        .collect()
                })
                .collect()
        }
    }
}

/// The text files `paths` stand for: files as given, directories as their `*.txt` files in
/// name order.
pub fn text_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if !p.is_dir() {
            files.push(p.clone());
            continue;
        }
        let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| Error::io(p, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "txt"))
            .collect();
        if inside.is_empty() {
            return Err(Error::BadInput { problem: format!("{}: a directory without .txt files", p.display()) });
        }
        inside.sort();
        files.extend(inside);
    }
    if files.is_empty() {
        return Err(Error::BadInput { problem: "no text files given".to_string() });
    }
    Ok(files)
}

/// A model's Hugging Face tokenizer (`tokenizer.json`).
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    fnv64: String,
}

impl TextTokenizer {
    /// Reads `path`.
    pub fn open(path: &Path) -> Result<TextTokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::BadInput {
            problem: format!("{}: not a tokenizer.json the Hugging Face tokenizers library can read ({e})", path.display()),
        })?;
        Ok(TextTokenizer { inner, path: path.to_path_buf(), fnv64: fnv_hex(&bytes) })
    }

    /// FNV-1a 64 of the file it was read from.
    pub fn fingerprint(&self) -> &str {
        &self.fnv64
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text`; no special token is added, special tokens written in the text
    /// (e.g. `<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::BadInput { problem: format!("{}: the tokenizer failed on this text ({e})", self.path.display()) })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::BadInput { problem: format!("{}: the tokenizer cannot decode these ids ({e})", self.path.display()) })
    }

    /// The id of a token written out, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

fn load_text(
    paths: &[PathBuf],
    tokenizer_file: &Path,
    seq_len: Option<usize>,
    max_sequences: Option<usize>,
    cfg: &ModelLimits,
) -> Result<Tokens> {
    let limit = cfg.max_sequence();
    let seq_len = match seq_len {
        Some(0) => return Err(Error::BadInput { problem: "--seq-len must be positive".to_string() }),
        Some(n) => n,
        None => limit.map_or(DEFAULT_TEXT_SEQ_LEN, |l| l.min(DEFAULT_TEXT_SEQ_LEN)),
    };
    if let Some(l) = limit.filter(|&l| seq_len > l) {
        return Err(Error::BadInput { problem: format!("--seq-len {seq_len} is longer than the model takes ({l} tokens)") });
    }
    if max_sequences == Some(0) {
        return Err(Error::BadInput { problem: "--max-sequences must be positive".to_string() });
    }
    let tokenizer = TextTokenizer::open(tokenizer_file)?;
    let vocab = tokenizer.vocab_size();
    if vocab > cfg.vocab {
        return Err(Error::BadInput {
            problem: format!(
                "{}: the tokenizer's vocabulary ({vocab} tokens) is larger than the model's embedding ({} rows): it belongs to another model",
                tokenizer_file.display(),
                cfg.vocab
            ),
        });
    }
    let files = text_files(paths)?;
    let mut ids: Vec<u32> = Vec::new();
    let mut fingerprints = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        let text =
            std::str::from_utf8(&bytes).map_err(|e| Error::BadInput { problem: format!("{}: not UTF-8 text ({e})", f.display()) })?;
        ids.extend(tokenizer.encode(text)?);
        fingerprints.push(json!({"file": f.display().to_string(), "fnv64": fnv_hex(&bytes)}));
    }
    let total = ids.len() / seq_len;
    if total == 0 {
        return Err(Error::BadInput {
            problem: format!("the text tokenizes to {} tokens, fewer than one sequence of --seq-len {seq_len}", ids.len()),
        });
    }
    let all: Vec<Vec<u32>> = ids.chunks_exact(seq_len).map(<[u32]>::to_vec).collect();
    let sequences = match max_sequences {
        Some(n) if n < total => (0..n).map(|i| all[i * total / n].clone()).collect(),
        _ => all,
    };
    let label = json!({
        "text": fingerprints,
        "tokenizer": tokenizer_file.display().to_string(),
        "tokenizer_fnv64": tokenizer.fingerprint(),
        "seq_len": seq_len,
        "max_sequences": max_sequences,
        "text_tokens": ids.len(),
        "sequences": sequences.len(),
    });
    Ok(Tokens { sequences, label })
}

/// The chat templates `ccq generate --chat` renders, recognised by the markers of a
/// `chat_template` in `tokenizer_config.json` (the Jinja itself is not run): one user turn and
/// the assistant's opening, no system message.
///
/// | template | recognised by | rendered | stops at |
/// |---|---|---|---|
/// | ChatML (Qwen, SmolLM) | `<\|im_start\|>` | `<\|im_start\|>user\nPROMPT<\|im_end\|>\n<\|im_start\|>assistant\n` | `<\|im_end\|>` |
/// | Llama 3 | `<\|start_header_id\|>` | `<\|begin_of_text\|><\|start_header_id\|>user<\|end_header_id\|>\n\nPROMPT<\|eot_id\|><\|start_header_id\|>assistant<\|end_header_id\|>\n\n` | `<\|eot_id\|>` |
/// | Mistral / Mixtral | `[INST]` | `<s>[INST] PROMPT [/INST]` | `</s>` |
pub const CHAT_TEMPLATES: &str = "ChatML (<|im_start|>), Llama 3 (<|start_header_id|>), Mistral ([INST])";

/// A prompt rendered for chat, and the token that ends the assistant's turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    /// The text to tokenize (special tokens written out).
    pub text: String,
    /// The end-of-turn token.
    pub stop: &'static str,
}

/// Renders `prompt` as one user turn of the chat template in `tokenizer_config` (the parsed
/// `tokenizer_config.json` of `file`), see [`CHAT_TEMPLATES`].
pub fn chat_prompt(tokenizer_config: Option<&Value>, file: &Path, prompt: &str) -> Result<ChatPrompt> {
    let template = tokenizer_config.and_then(|c| c.get("chat_template")).and_then(|t| match t {
        Value::String(s) => Some(s.clone()),
        // A list of named templates: the "default" one.
        Value::Array(list) => list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string),
        _ => None,
    });
    let Some(template) = template else {
        return Err(Error::BadInput { problem: format!("{}: no chat_template to apply with --chat; run without --chat", file.display()) });
    };
    let (text, stop) = if template.contains("<|im_start|>") {
        (format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"), "<|im_end|>")
    } else if template.contains("<|start_header_id|>") {
        (
            format!("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            "<|eot_id|>",
        )
    } else if template.contains("[INST]") {
        (format!("<s>[INST] {prompt} [/INST]"), "</s>")
    } else {
        return Err(Error::BadInput {
            problem: format!("{}: its chat_template is none of those --chat renders ({CHAT_TEMPLATES}); run without --chat and write the template into --prompt", file.display()),
        });
    };
    Ok(ChatPrompt { text, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_templates_are_recognised_or_refused() {
        let file = Path::new("tokenizer_config.json");
        let chatml = json!({"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}..."});
        let p = chat_prompt(Some(&chatml), file, "Hi").unwrap();
        assert_eq!(p, ChatPrompt { text: "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".to_string(), stop: "<|im_end|>" });
        let listed = json!({"chat_template": [{"name": "default", "template": "[INST] {{ x }} [/INST]"}]});
        assert_eq!(chat_prompt(Some(&listed), file, "Hi").unwrap().text, "<s>[INST] Hi [/INST]");
        let e = chat_prompt(Some(&json!({"chat_template": "{{ messages }}"})), file, "Hi").unwrap_err().to_string();
        assert!(e.contains("none of those --chat renders"), "{e}");
        assert!(chat_prompt(None, file, "Hi").unwrap_err().to_string().contains("no chat_template"));
    }

    #[test]
    fn id_files() {
        let dir = crate::test_support::scratch("tokens", true);
        std::fs::create_dir_all(&dir).unwrap();
        let json_file = dir.join("t.json");
        std::fs::write(&json_file, "[[1, 2, 3], [4]]").unwrap();
        assert_eq!(read_ids(&json_file, None).unwrap(), vec![vec![1, 2, 3], vec![4]]);
        let raw = dir.join("t.bin");
        std::fs::write(&raw, [1u32, 2, 3, 4, 5].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        assert_eq!(read_ids(&raw, Some(2)).unwrap(), vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert!(read_ids(&raw, None).unwrap_err().to_string().contains("--seq-len"));
        std::fs::write(&raw, [0u8; 6]).unwrap();
        assert!(read_ids(&raw, Some(2)).unwrap_err().to_string().contains("6 bytes"));
        std::fs::write(&json_file, "[[1, -2]]").unwrap();
        assert!(read_ids(&json_file, None).unwrap_err().to_string().contains("position 1"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
    }

    /// The limits of the ERNIE fixture (vocab 256, 4096 positions) and of the Mixtral one
    /// (vocab 128).
    fn config(name: &str) -> ModelLimits {
        match name {
            "ernie45-tiny-pt" => ModelLimits { vocab: 256, max_positions: Some(4096), sliding_window: None },
            _ => ModelLimits { vocab: 128, max_positions: None, sliding_window: None },
        }
    }

    fn text_source(file: &Path, seq_len: usize, max_sequences: Option<usize>) -> TokenSource {
        TokenSource::Text {
            paths: vec![file.to_path_buf()],
            tokenizer: fixture("byte-tokenizer.json"),
            seq_len: Some(seq_len),
            max_sequences,
        }
    }

    /// The byte tokenizer's ids are the text's bytes: sequences are consecutive cuts of them,
    /// the rest dropped; --max-sequences keeps sequences floor(i * S / N).
    #[test]
    fn text_is_cut_into_sequences_and_spread() {
        let dir = crate::test_support::scratch("text-cut", true);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.txt");
        let text: String = (0..100).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        std::fs::write(&file, &text).unwrap();
        let cfg = config("ernie45-tiny-pt");
        let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
        let all = text_source(&file, 30, None).load(cfg).unwrap();
        assert_eq!(all.sequences, bytes[..90].chunks(30).map(<[u32]>::to_vec).collect::<Vec<_>>());
        assert_eq!(all.label["text_tokens"], 100);
        let spread = text_source(&file, 10, Some(3)).load(cfg).unwrap();
        let want: Vec<Vec<u32>> = [0, 3, 6].iter().map(|&s| bytes[s * 10..s * 10 + 10].to_vec()).collect();
        assert_eq!(spread.sequences, want);
        let err = text_source(&file, 101, None).load(cfg).unwrap_err().to_string();
        assert_eq!(err, "the text tokenizes to 100 tokens, fewer than one sequence of --seq-len 101");
        let err = text_source(&file, 5000, None).load(cfg).unwrap_err().to_string();
        assert_eq!(err, "--seq-len 5000 is longer than the model takes (4096 tokens)");
        // The byte tokenizer's 256 ids do not fit a 128-row embedding.
        let err = text_source(&file, 10, None).load(config("mixtral-tiny")).unwrap_err().to_string();
        assert!(err.contains("vocabulary (256 tokens) is larger than the model's embedding (128 rows)"), "{err}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(text_source(&file, 1, None).load(cfg).unwrap_err().to_string().contains("not UTF-8"));
        let bad = TokenSource::Text { paths: vec![file.clone()], tokenizer: file.clone(), seq_len: Some(1), max_sequences: None };
        assert!(bad.load(cfg).unwrap_err().to_string().contains("not a tokenizer.json"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_model_without_tokenizer_says_what_to_give() {
        let err = tokenizer_path(&fixture("ernie45-tiny-pt"), None).unwrap_err().to_string();
        assert!(err.ends_with("has no tokenizer.json to tokenize the text with: pass --tokenizer FILE (the model's Hugging Face tokenizer.json), or token ids with --tokens"), "{err}");
        assert_eq!(tokenizer_path(&fixture("x"), Some(Path::new("t.json"))).unwrap(), PathBuf::from("t.json"));
    }

    #[test]
    fn directories_stand_for_their_text_files_in_order() {
        let dir = crate::test_support::scratch("text-files", true);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["b.txt", "a.txt", "c.md"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        assert_eq!(text_files(&[dir.to_path_buf()]).unwrap(), vec![dir.join("a.txt"), dir.join("b.txt")]);
        std::fs::remove_file(dir.join("a.txt")).unwrap();
        std::fs::remove_file(dir.join("b.txt")).unwrap();
        assert!(text_files(&[dir.to_path_buf()]).unwrap_err().to_string().contains("without .txt"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
