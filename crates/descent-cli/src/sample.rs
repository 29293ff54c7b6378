//! `descent sample`: text from the checkpoint of a language-model run, as nanoGPT's `sample.py`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use descent_train::gpt::{generate_each, Gpt, GptConfig, Sampling};
use descent_train::model::Model;
use descent_train::rng::Rng;
use descent_train::text::CharVocab;
use descent_train::train::Loss;

use crate::folder;

/// The flags of `descent sample`.
#[derive(clap::Args, Debug, Clone)]
pub struct SampleArgs {
    /// The folder of a `descent train --model gpt` run (its checkpoint.safetensors holds the
    /// weights, the model's shape and the vocabulary).
    pub run_dir: PathBuf,
    /// The text to continue; every character must be in the model's vocabulary.
    #[arg(long, default_value = "\n", value_parser = utf8_prompt())]
    pub prompt: String,
    /// Characters to generate after the prompt.
    #[arg(long, default_value_t = 500)]
    pub tokens: usize,
    /// The logits are divided by it before the softmax: below 1 the likely characters get
    /// likelier, above 1 the text gets more varied.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Draw each character among the k most likely only (default: among all).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the draws: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The context the model sees, in characters (default: the block size it was trained with,
    /// the most its position table allows).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The model and vocabulary of a run folder's checkpoint, verified: its checksum and finite
/// values ([`descent_train::checkpoint::Checkpoint::load`]), a model configuration and vocabulary that agree, and exactly
/// the tensors of that model with their shapes.
pub fn load_model(run_dir: &std::path::Path) -> Result<(Gpt, CharVocab)> {
    let path = run_dir.join(folder::run::CHECKPOINT);
    crate::folder::require_dir(run_dir, "the folder of a `descent train --model gpt` run")?;
    if !path.is_file() {
        if run_dir.join(folder::run::CONFIG_JSON).is_file() {
            // A run's folder: in progress, stopped early, or its checkpoint lost.
            return Err(crate::train::missing_checkpoint(run_dir, "the run stopped before its first checkpoint"));
        }
        if ["sweep.json", "compare.json", "bench.json"].iter().any(|f| run_dir.join(f).is_file()) {
            bail!(
                "{}: the folder of a sweep, a comparison or a benchmark, not of a run: give one of its runs' folders",
                run_dir.display()
            );
        }
        bail!(
            "{}: no {}: not the folder of a `descent train` run, or the run stopped before its first checkpoint",
            run_dir.display(),
            folder::run::CHECKPOINT
        );
    }
    // Held to what resume holds a run to: the checkpoint's checksum, written by this folder's run
    // (not copied from another), under the settings of its config.json. The model is the
    // checkpoint's own (its configuration and vocabulary); sampling reads no data.
    let run = crate::evaluate::open_run(run_dir)?;
    let ck = &run.checkpoint;
    let (Some(config), Some(vocab)) = (&ck.model_config, &ck.vocab) else {
        bail!(
            "{}: the checkpoint holds no language model (no model configuration and vocabulary): sample from a run of `descent train --model gpt`",
            path.display()
        );
    };
    let config: serde_json::Value =
        serde_json::from_str(config).with_context(|| format!("{}: the model configuration", path.display()))?;
    let config = GptConfig::from_json(&config).with_context(|| path.display().to_string())?;
    let vocab = CharVocab::new(vocab.chars().collect(), &format!("the checkpoint {}", path.display()))?;
    if vocab.len() != config.vocab_size {
        bail!(
            "{}: a vocabulary of {} characters for a model of {} token ids",
            path.display(),
            vocab.len(),
            config.vocab_size
        );
    }
    let stored: HashMap<&str, (&[usize], &[f32])> =
        ck.weights.iter().map(|(n, shape, v)| (n.as_str(), (shape.as_slice(), v.as_slice()))).collect();
    let model = Gpt::from_tensors(config, |name| {
        stored.get(name).and_then(|(shape, v)| Tensor::from_slice(v, *shape, &Device::Cpu).ok())
    })
    .with_context(|| path.display().to_string())?;
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    if let Some((extra, _, _)) = ck.weights.iter().find(|(n, _, _)| !names.contains(n)) {
        bail!("{}: tensor `{extra}` is not a parameter of the model its configuration describes", path.display());
    }
    // The weights the run evaluated (schedule-free's average, Lookahead's slow weights).
    ck.apply_evaluated_weights(&model, &crate::train::config(&run.args, Loss::CrossEntropy)?)
        .with_context(|| path.display().to_string())?;
    Ok((model, vocab))
}

/// `--prompt` as text: bytes that are not UTF-8 are refused naming the flag (clap's own message
/// names no argument).
fn utf8_prompt() -> impl clap::builder::TypedValueParser<Value = String> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new()
        .try_map(|s| s.into_string().map_err(|s| format!("{s:?} is not UTF-8 text; the vocabulary holds characters")))
}

/// `descent sample`: prints the prompt and its continuation.
pub fn run(a: SampleArgs) -> Result<()> {
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!("--temperature {}: must be a positive number", a.temperature);
    }
    if a.top_k == Some(0) {
        bail!("--top-k 0: draw among at least one character");
    }
    if a.prompt.is_empty() {
        bail!("--prompt is empty: give at least one character to continue");
    }
    let (model, vocab) = load_model(&a.run_dir)?;
    let block = model.config.block_size;
    match a.block_size {
        Some(0) => bail!("--block-size 0: the model needs at least one character of context"),
        Some(b) if b > block => bail!(
            "--block-size {b}: larger than the checkpoint's position table ({block} positions, the block size it was trained with)"
        ),
        _ => {}
    }
    // Quoted and escaped: the default prompt is a newline.
    let prompt = vocab.encode(&a.prompt).with_context(|| format!("--prompt {:?}", a.prompt))?;
    let sampling = Sampling { temperature: a.temperature, top_k: a.top_k, context: a.block_size };
    // The prompt, then each character as it is drawn (flushed at each line's end and every 64
    // characters), so that a long sample shows as it comes and an interrupted one keeps its text;
    // a reader that goes away (`| head`) ends the generation quietly.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !put(&mut out, &a.prompt, true)? {
        return Ok(());
    }
    let (mut count, mut open, mut failed) = (0usize, true, None);
    generate_each(&model, &prompt, a.tokens, &sampling, &mut Rng::new(a.seed), |id| {
        count += 1;
        let text = vocab.decode(&[id]).map_err(|e| descent_train::Error::Param(format!("{e:#}")))?;
        match put(&mut out, &text, text.ends_with('\n') || count.is_multiple_of(64)) {
            Ok(more) => open = more,
            Err(e) => (open, failed) = (false, Some(e)),
        }
        Ok(open)
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if open {
        put(&mut out, "\n", true)?;
    }
    Ok(())
}

/// Writes `text` (flushed if asked); `false` when the reader has gone (a closed pipe).
fn put(out: &mut impl Write, text: &str, flush: bool) -> Result<bool> {
    match out.write_all(text.as_bytes()).and_then(|_| if flush { out.flush() } else { Ok(()) }) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::from(e).context("writing the sample")),
    }
}
