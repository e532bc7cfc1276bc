//! `ccq generate`: runs a checkpoint (original or quantized) token by token on the CPU and
//! streams what it writes.

use anyhow::{bail, Context, Result};
use ccq::model::decode::{Decoder, Sampling};
use ccq::model::source::ModelFiles;
use ccq::rng::Rng;
use ccq::tokens::{chat_prompt, tokenizer_path, TextTokenizer};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Flags of `ccq generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Checkpoint (original, or quantized in either layout) with its tokenizer.json.
    checkpoint: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate (generation also stops at an end-of-text token and at the
    /// model's context length).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 picks the most likely token at every step (deterministic); above 0, sampling.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// With sampling: keep only the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// With sampling: keep the most likely tokens up to this cumulative probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the chat template of tokenizer_config.json (ChatML, Llama 3 and
    /// Mistral templates are recognised).
    #[arg(long)]
    chat: bool,
    /// The tokenizer.json to use instead of the checkpoint's own.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
}

/// Runs `ccq generate`.
pub fn run(args: &GenerateArgs) -> Result<ExitCode> {
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p };
    sampling.check()?;
    if args.max_tokens == 0 {
        bail!("--max-tokens must be positive");
    }
    let files = ModelFiles::open(&args.checkpoint)?;
    let source = files.weights()?;
    let cfg = source.config().clone();
    let tokenizer = TextTokenizer::open(&tokenizer_path(&args.checkpoint, args.tokenizer.as_deref())?)?;
    if tokenizer.vocab_size() > cfg.vocab {
        bail!("the tokenizer's vocabulary ({} tokens) is larger than the model's embedding ({} rows)", tokenizer.vocab_size(), cfg.vocab);
    }
    let tokenizer_config = read_json(&args.checkpoint.join("tokenizer_config.json"))?;
    let (text, chat_stop) = match args.chat {
        true => {
            let chat = chat_prompt(tokenizer_config.as_ref(), &args.checkpoint.join("tokenizer_config.json"), &args.prompt)?;
            (chat.text, tokenizer.token_id(chat.stop))
        }
        false => (args.prompt.clone(), None),
    };
    let prompt = tokenizer.encode(&text)?;
    if prompt.is_empty() {
        bail!("the prompt tokenizes to no tokens");
    }
    let limit = cfg.max_sequence().unwrap_or(usize::MAX);
    if prompt.len() >= limit {
        bail!("the prompt has {} tokens; the model takes at most {limit} positions, and one must be left to generate", prompt.len());
    }
    let stops = stop_ids(&files, tokenizer_config.as_ref(), &tokenizer, chat_stop);

    let mut decoder = Decoder::new(source.as_ref())?;
    let start = Instant::now();
    let mut logits = decoder.feed(&prompt, false)?;
    let prefill = start.elapsed().as_secs_f64();
    let mut rng = Rng::new(args.seed);
    let mut generated: Vec<u32> = Vec::new();
    let mut shown = String::new();
    let mut stdout = std::io::stdout().lock();
    let decode_start = Instant::now();
    let mut open = true;
    while generated.len() < args.max_tokens {
        let next = sampling.pick(&logits, &mut rng);
        if stops.contains(&next) {
            break;
        }
        generated.push(next);
        open = open && show(&tokenizer, &generated, &mut shown, &mut stdout)?;
        if !open || decoder.positions() >= limit {
            break;
        }
        if generated.len() < args.max_tokens {
            logits = decoder.feed(&[next], false)?;
        }
    }
    let decode = decode_start.elapsed().as_secs_f64();
    if open {
        let _ = writeln!(stdout);
    }
    let rss = ccq::bench::calibrate::peak_rss_mib().map_or("?".to_string(), |m| format!("{m:.0} MiB"));
    let _ = writeln!(
        std::io::stderr(),
        "ccq: prompt {} tokens, prefill {:.1} tokens/s; generated {} tokens, decode {:.1} tokens/s; peak RSS {rss}",
        prompt.len(),
        prompt.len() as f64 / prefill.max(1e-9),
        generated.len(),
        generated.len() as f64 / decode.max(1e-9),
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints the text `generated` decodes to beyond what is shown (held back while it ends in
/// an incomplete character); false when stdout is closed.
fn show(tokenizer: &TextTokenizer, generated: &[u32], shown: &mut String, out: &mut impl Write) -> Result<bool> {
    let text = tokenizer.decode(generated)?;
    if text.ends_with('\u{FFFD}') || !text.starts_with(shown.as_str()) {
        return Ok(true);
    }
    let new = &text[shown.len()..];
    let written = out.write_all(new.as_bytes()).and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(false),
        Err(e) => return Err(e.into()),
        Ok(()) => {}
    }
    *shown = text;
    Ok(true)
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(ccq::json::parse(&text).with_context(|| path.display().to_string())?))
}

/// The tokens that end generation: `eos_token_id` of config.json (one or a list), the
/// `eos_token` of tokenizer_config.json, and the chat template's end of turn.
fn stop_ids(files: &ModelFiles, tokenizer_config: Option<&Value>, tokenizer: &TextTokenizer, chat_stop: Option<u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = chat_stop.into_iter().collect();
    if let Some(eos) = files.checkpoint().config().and_then(|c| c.get("eos_token_id")) {
        let list = eos.as_array().cloned().unwrap_or_else(|| vec![eos.clone()]);
        ids.extend(list.iter().filter_map(|v| v.as_u64()).map(|v| v as u32));
    }
    let token = tokenizer_config.and_then(|c| c.get("eos_token")).and_then(|t| t.as_str().or_else(|| t["content"].as_str()));
    ids.extend(token.and_then(|t| tokenizer.token_id(t)));
    ids
}
