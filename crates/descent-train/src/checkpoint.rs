//! Checkpoints: the model's weights and buffers (batch norm's running statistics) and the
//! optimizer's whole state in one safetensors file, with the epoch, step count, position inside an
//! epoch and generator states in its metadata, written atomically (temporary file, then rename) so a
//! crash never leaves a half-written one.
//!
//! Loading verifies the file whole before anything uses it: a CRC-32 over every metadata field
//! and every tensor (so a flipped bit is caught), no NaN or infinity in the weights or optimizer
//! state, and [`Checkpoint::apply`] checks that it fits the model; a mismatched checkpoint is
//! refused whole, never half-loaded.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use descent_core::state::StateDict;
use safetensors::tensor::{Dtype, TensorView};

use crate::average::{Swalr, WeightAverage};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::optim::VarOptimizer;

const FORMAT: &str = "descent-checkpoint-2";
/// The format before checksums: refused, since nothing in it can be verified.
const FORMAT_V1: &str = "descent-checkpoint-1";

/// Everything needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// `(name, shape, values)` of each model parameter, sorted by name.
    pub weights: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// `(name, shape, values)` of each model buffer ([`Model::named_buffers`]: batch norm's
    /// running statistics), sorted by name, stored under `buffers/`; empty for a model without
    /// any.
    pub buffers: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The optimizer's state ([`VarOptimizer::state_dict`](crate::VarOptimizer::state_dict)), stored under `optimizer/`.
    pub optimizer: StateDict,
    /// Epochs completed (a checkpoint taken inside epoch `k` has `epoch == k − 1` and
    /// [`Checkpoint::progress`] set) and optimizer steps taken.
    pub epoch: usize,
    /// Optimizer steps taken (see `epoch`).
    pub steps: u64,
    /// State of the generator of batch order and dropout now.
    pub rng: u64,
    /// State of a metric-driven scheduler (ReduceLROnPlateau), as JSON.
    pub scheduler: Option<String>,
    /// Where the run stood inside epoch `epoch + 1` when it was stopped there (by a step limit);
    /// `None` when the checkpoint was taken at the end of an epoch.
    pub progress: Option<EpochProgress>,
    /// The identity of the run that wrote the checkpoint, set by the caller before
    /// [`Checkpoint::save`] ([`Checkpoint::capture`] leaves it empty). Stored and loaded as is;
    /// comparing it with the run being resumed is the caller's business.
    pub run_id: String,
    /// A hash of the run's configuration, set by the caller like `run_id` (empty from
    /// [`Checkpoint::capture`]), so that resuming under another configuration can be refused.
    pub config_hash: String,
    /// The model's architecture as JSON, set by the caller (a language model's
    /// [`crate::gpt::GptConfig`]: what rebuilding the model to sample from it needs); `None` from
    /// [`Checkpoint::capture`]. Covered by the checksum like every field.
    pub model_config: Option<String>,
    /// The characters of a character-level model's vocabulary in id order, set by the caller;
    /// `None` from [`Checkpoint::capture`].
    pub vocab: Option<String>,
    /// A digest of a character-level model's text ([`crate::text::CharCorpus::digest`]), set by
    /// the caller, so that a resume on an edited text with the same characters can be refused;
    /// `None` from [`Checkpoint::capture`] and in checkpoints written before it was recorded.
    pub text_digest: Option<String>,
    /// A digest of an image model's training and test sets ([`crate::mnist::Mnist::digest`]),
    /// set by the caller, so that a resume or an evaluation on other data at the run's data path
    /// can be refused; `None` from [`Checkpoint::capture`] and in checkpoints written before it
    /// was recorded.
    pub data_digest: Option<String>,
    /// The run's weight average (EMA or SWA), when it keeps one; set by the training loop.
    pub average: Option<AverageState>,
    /// Early stopping's best epoch so far, in every checkpoint of a run with a patience; set by
    /// the training loop.
    pub best: Option<BestEpoch>,
    /// The training loss of the last whole epoch, which `--min-loss-change` compares the next
    /// one with; set by the training loop when the run has that rule.
    pub last_epoch_train_loss: Option<f64>,
    /// Why the run ended, in the checkpoint written when it ended by early stopping
    /// ([`Checkpoint::restore_best`]): its weights are then the best epoch's, and it cannot be
    /// resumed.
    pub ended: Option<String>,
}

/// Early stopping's best epoch so far: its test loss, the epoch and step it ended at, and the
/// weights and buffers then, which the run restores when it stops. Kept in the checkpoints of a
/// run with a patience, so that a resumed run counts the epochs without improvement, stops and
/// restores as the uninterrupted run does.
#[derive(Debug, Clone, PartialEq)]
pub struct BestEpoch {
    /// The epoch's test loss.
    pub test_loss: f64,
    /// The epoch (from 1).
    pub epoch: usize,
    /// Optimizer steps at its end.
    pub steps: u64,
    /// `(name, shape, values)` of each parameter then, sorted by name.
    pub weights: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// `(name, shape, values)` of each buffer then, sorted by name.
    pub buffers: Vec<(String, Vec<usize>, Vec<f32>)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BestMeta {
    test_loss: f64,
    epoch: usize,
    steps: u64,
}

impl BestEpoch {
    /// `model`'s weights and buffers now, as the best epoch's.
    pub fn capture(model: &dyn Model, test_loss: f64, epoch: usize, steps: u64) -> Result<BestEpoch> {
        Ok(BestEpoch {
            test_loss,
            epoch,
            steps,
            weights: values(&model.named_vars())?,
            buffers: values(&model.named_buffers())?,
        })
    }

    const WHAT: [&'static str; 2] = ["best epoch's weights", "best epoch's buffer"];

    /// Checks that every stored tensor is one of `model`'s, with its shape, and that none is
    /// missing.
    pub fn check(&self, model: &dyn Model) -> Result<()> {
        let (vars, bufs) = (model.named_vars(), model.named_buffers());
        model_tensors(Self::WHAT, &self.weights, &self.buffers, &vars, &bufs).map(drop)
    }

    /// Writes the best epoch's weights and buffers into the model, each checked against the
    /// model's; on a mismatch nothing is changed.
    pub fn apply(&self, model: &dyn Model) -> Result<()> {
        set_model(Self::WHAT, &self.weights, &self.buffers, model)
    }
}

/// A weight average as stored: its kind, its counters and the averaged values by name.
#[derive(Debug, Clone, PartialEq)]
pub struct AverageState {
    /// `ema` or `swa`.
    pub kind: String,
    /// Updates so far (torch's `n_averaged`); 0 with no values stored.
    pub n_averaged: u64,
    /// SWA's learning-rate scheduler once it has started.
    pub swalr: Option<Swalr>,
    /// `(name, shape, values)` of each averaged parameter and buffer, sorted by name.
    pub weights: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// `(name, shape, values)` of each averaged buffer (batch norm's running statistics).
    pub buffers: Vec<(String, Vec<usize>, Vec<f32>)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AverageMeta {
    kind: String,
    n_averaged: u64,
    swalr: Option<Swalr>,
}

impl AverageState {
    /// The state of `avg`, whose buffers follow `model`'s variables.
    pub fn capture(avg: &WeightAverage, model: &dyn Model) -> AverageState {
        let named = |vars: &[(String, Var)], bufs: &[Vec<f32>]| {
            let mut v: Vec<Stored> =
                vars.iter().zip(bufs).map(|((n, var), b)| (n.clone(), var.dims().to_vec(), b.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        AverageState {
            kind: avg.config.label().to_string(),
            n_averaged: avg.n_averaged,
            swalr: avg.swalr,
            weights: named(&model.named_vars(), &avg.params),
            buffers: named(&model.named_buffers(), &avg.buffers),
        }
    }

    /// Restores `avg` (of the same kind) from this state, checking every tensor against the
    /// model's; on a mismatch `avg` is left as it was.
    pub fn restore(&self, avg: &mut WeightAverage, model: &dyn Model) -> Result<()> {
        if self.kind != avg.config.label() {
            return Err(Error::Param(format!(
                "the checkpoint holds an {} average, the run keeps an {} one",
                self.kind,
                avg.config.label()
            )));
        }
        let (params, buffers) = if self.n_averaged == 0 {
            (vec![], vec![])
        } else {
            (
                ordered("averaged weights", &self.weights, &model.named_vars())?,
                ordered("averaged buffer", &self.buffers, &model.named_buffers())?,
            )
        };
        avg.n_averaged = self.n_averaged;
        avg.swalr = self.swalr;
        avg.params = params;
        avg.buffers = buffers;
        Ok(())
    }

    /// Writes the averaged weights and buffers into the model (`descent evaluate --weights ema`).
    pub fn apply(&self, model: &dyn Model) -> Result<()> {
        if self.n_averaged == 0 {
            return Err(Error::Param(format!("the {} average holds nothing yet (no update so far)", self.kind)));
        }
        set_model(["averaged weights", "averaged buffer"], &self.weights, &self.buffers, model)
    }
}

/// Stored `weights` and `buffers` as tensors in the order of `vars` then `bufs` (a model's
/// variables and buffers), each checked like [`matching`]; `what` names the two in errors.
fn model_tensors(
    what: [&str; 2],
    weights: &[Stored],
    buffers: &[Stored],
    vars: &[(String, Var)],
    bufs: &[(String, Var)],
) -> Result<Vec<Tensor>> {
    let mut tensors = matching(what[0], weights, vars)?;
    tensors.extend(matching(what[1], buffers, bufs)?);
    Ok(tensors)
}

/// Writes stored `weights` and `buffers` into `model`, all checked ([`model_tensors`]) before any
/// is written: on a mismatch nothing is changed.
fn set_model(what: [&str; 2], weights: &[Stored], buffers: &[Stored], model: &dyn Model) -> Result<()> {
    let (vars, bufs) = (model.named_vars(), model.named_buffers());
    let tensors = model_tensors(what, weights, buffers, &vars, &bufs)?;
    for ((_, v), t) in vars.iter().chain(&bufs).zip(&tensors) {
        v.set(t)?;
    }
    Ok(())
}

/// The stored values for each of `vars` in their order, checked like [`matching`].
fn ordered(what: &str, stored: &[Stored], vars: &[(String, Var)]) -> Result<Vec<Vec<f32>>> {
    let mut by_name: HashMap<&str, (&Vec<usize>, &Vec<f32>)> =
        stored.iter().map(|(n, s, v)| (n.as_str(), (s, v))).collect();
    let mut out = vec![];
    for (n, v) in vars {
        let (s, w) =
            by_name.remove(n.as_str()).ok_or_else(|| Error::Param(format!("checkpoint has no {what} for `{n}`")))?;
        if s.as_slice() != v.dims() {
            return Err(Error::Param(format!("checkpoint {what} `{n}`: shape {s:?}, the model's {:?}", v.dims())));
        }
        out.push(w.clone());
    }
    if let Some(extra) = by_name.keys().next() {
        return Err(Error::Param(format!("checkpoint has {what} `{extra}` the model does not have")));
    }
    Ok(out)
}

/// A position inside an epoch: what continuing it needs to give the same weights, bit for bit,
/// and the same epoch metrics as a run never stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochProgress {
    /// Batches of the epoch already done (steps taken in it).
    pub batch: usize,
    /// The generator state at the start of the epoch, before its order was drawn: `epoch_order`
    /// from it gives the epoch's order again.
    pub epoch_rng: u64,
    /// The epoch's running sum of batch loss × batch size, the samples it has seen and the
    /// seconds it has taken so far.
    pub loss_sum: f64,
    /// Samples the epoch has seen so far (see `loss_sum`).
    pub samples: usize,
    /// Seconds the epoch has taken so far (see `loss_sum`).
    pub seconds: f64,
}

fn err(path: &Path, m: impl Into<String>) -> Error {
    Error::Data { path: path.display().to_string(), message: m.into() }
}

/// `(name, shape, values)` of a stored tensor.
type Stored = (String, Vec<usize>, Vec<f32>);

/// `(name, shape, values)` of each variable, sorted by name as [`Checkpoint::load`] gives them
/// (so a saved and loaded checkpoint equals the captured one whatever the model's order).
fn values(vars: &[(String, Var)]) -> Result<Vec<Stored>> {
    let mut v = vars
        .iter()
        .map(|(n, v)| {
            f32_var(n, v)?;
            Ok((n.clone(), v.dims().to_vec(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
        })
        .collect::<Result<Vec<Stored>>>()?;
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// A checkpoint names each parameter once and each buffer once: a model whose lists repeat a
/// name (two layers' unprefixed `running_mean`) is refused before it trains, naming it.
pub(crate) fn check_unique_names(model: &dyn Model) -> Result<()> {
    for (what, names) in [
        ("parameters", model.named_vars().into_iter().map(|(n, _)| n).collect::<Vec<_>>()),
        ("buffers", model.named_buffers().into_iter().map(|(n, _)| n).collect()),
    ] {
        let mut seen = std::collections::HashSet::new();
        if let Some(n) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(Error::Param(format!(
                "the model's {what} name `{n}` twice: each must have a name of its own (prefix each layer's names with the layer's)"
            )));
        }
    }
    Ok(())
}

/// Checkpoints hold f32 tensors: a model's variable or buffer of another type is named.
pub(crate) fn f32_var(name: &str, v: &Var) -> Result<()> {
    if v.dtype() != candle_core::DType::F32 {
        return Err(Error::Param(format!(
            "`{name}` is a {:?} tensor; descent's checkpoints and buffers hold f32",
            v.dtype()
        )));
    }
    Ok(())
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a whole file atomically: a temporary file beside it (`.NAME.tmpPID`), synced, renamed
/// over `path`, and the folder synced (best effort) so that the rename lasts; on a failure the
/// temporary file is removed and `path` is as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(path, format!("writing: {e}"))
    })
}

/// A tensor to store: name, dtype, shape, little-endian bytes.
pub(crate) type Part = (String, Dtype, Vec<usize>, Vec<u8>);

/// Writes a safetensors file of `parts` with `meta` and a `checksum` field (the CRC-32 of
/// [`checksum`], as a checkpoint has) atomically: a temporary file, synced, renamed over `path`.
/// Checkpoints and the model files of `descent prune` and `descent quantize` (`what`, in errors)
/// are written so.
pub(crate) fn save_verified(path: &Path, what: &str, parts: &[Part], mut meta: HashMap<String, String>) -> Result<()> {
    let refs: Vec<(&str, Dtype, &[usize], &[u8])> =
        parts.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())).collect();
    meta.insert("checksum".into(), format!("{:08x}", checksum(&meta, &refs)));
    let views = parts
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(|e| err(path, e.to_string()))?)))
        .collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some((n, ..)) = parts.iter().find(|(n, ..)| !seen.insert(n.as_str())) {
        return Err(err(path, format!("writing {what}: two tensors are named `{n}`; each name must be given once")));
    }
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
    write_atomic(path, &data).map_err(|e| match e {
        Error::Data { message, .. } => err(path, format!("{what}: {message}")),
        other => other,
    })
}

/// Verifies the `checksum` field of a file [`save_verified`] wrote (its tensors `st` and metadata
/// `meta`, as the caller read them), before anything of it is used.
pub(crate) fn verify(path: &Path, st: &safetensors::SafeTensors, meta: &HashMap<String, String>) -> Result<()> {
    let stored = meta.get("checksum").ok_or_else(|| {
        err(path, "no checksum (written by an older descent), so it cannot be verified; make it again from its run")
    })?;
    check_sum(path, st, meta, stored).map(drop)
}

/// Compares the `stored` checksum (8 hexadecimal digits) with the file's content; returns the
/// file's tensors by name.
fn check_sum<'a>(
    path: &Path,
    st: &'a safetensors::SafeTensors<'a>,
    meta: &HashMap<String, String>,
    stored: &str,
) -> Result<Vec<(&'a str, TensorView<'a>)>> {
    let stored = u32::from_str_radix(stored, 16)
        .ok()
        .filter(|_| stored.len() == 8)
        .ok_or_else(|| err(path, format!("checksum `{stored}` is not 8 hexadecimal digits")))?;
    let mut tensors = Vec::with_capacity(st.len());
    for n in st.names() {
        tensors.push((n, st.tensor(n).map_err(|e| err(path, e.to_string()))?));
    }
    let parts: Vec<(&str, Dtype, &[usize], &[u8])> =
        tensors.iter().map(|(n, t)| (*n, t.dtype(), t.shape(), t.data())).collect();
    if checksum(meta, &parts) != stored {
        return Err(err(path, "checksum mismatch: the file was modified or corrupted after it was written"));
    }
    Ok(tensors)
}

/// The CRC-32 of a checkpoint's content in a canonical encoding: the number of metadata fields,
/// then each field but `checksum` sorted by key (key and value, each as a little-endian `u64`
/// length and the bytes), then the number of tensors and each tensor sorted by name (its name and
/// dtype name as length and bytes, the number of dimensions and each dimension as `u64`, the
/// data as length and bytes). Lengths make the encoding unambiguous.
fn checksum(meta: &HashMap<String, String>, tensors: &[(&str, Dtype, &[usize], &[u8])]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut put = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let mut fields: Vec<(&String, &String)> = meta.iter().filter(|(k, _)| k.as_str() != "checksum").collect();
    fields.sort();
    let mut sorted: Vec<&(&str, Dtype, &[usize], &[u8])> = tensors.iter().collect();
    sorted.sort_by_key(|t| t.0);
    put(&(fields.len() as u64).to_le_bytes());
    for (k, v) in fields {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    put(&(sorted.len() as u64).to_le_bytes());
    for (name, dtype, shape, data) in sorted {
        put(name.as_bytes());
        put(dtype.to_string().as_bytes());
        let dims: Vec<u8> = shape.iter().flat_map(|&d| (d as u64).to_le_bytes()).collect();
        put(&dims);
        put(data);
    }
    h.finalize()
}

/// The stored values for each of `vars`, as tensors in their order, after checking that each is
/// stored with its shape and that nothing else is (`what`: `weights` or `buffer`, for errors).
fn matching(what: &str, stored: &[Stored], vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    let mut by_name: HashMap<&str, (&Vec<usize>, &Vec<f32>)> =
        stored.iter().map(|(n, s, v)| (n.as_str(), (s, v))).collect();
    let mut tensors = vec![];
    for (n, v) in vars {
        let (s, w) =
            by_name.remove(n.as_str()).ok_or_else(|| Error::Param(format!("checkpoint has no {what} for `{n}`")))?;
        if s.as_slice() != v.dims() {
            return Err(Error::Param(format!("checkpoint {what} `{n}`: shape {s:?}, the model's {:?}", v.dims())));
        }
        f32_var(n, v)?;
        tensors.push(Tensor::from_vec(w.clone(), s.as_slice(), v.device())?);
    }
    if let Some(extra) = by_name.keys().next() {
        return Err(Error::Param(format!("checkpoint has {what} `{extra}` the model does not have")));
    }
    Ok(tensors)
}

/// The first NaN or infinity of `v`, as an error naming the tensor and the index.
fn check_finite(path: &Path, name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(err(
            path,
            format!("tensor `{name}` holds {} at index {i}: the run had diverged when it was saved", v[i]),
        )),
        None => Ok(()),
    }
}

/// A file's bytes, where it is a regular file: a link to a device (`/dev/zero`) or a pipe would
/// be read until memory runs out, a folder not at all.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a device, a pipe or a folder)",
        ));
    }
    std::fs::read(path)
}

impl Checkpoint {
    /// Captures the model and optimizer now, at the end of epoch `epoch` (`run_id` and
    /// `config_hash` empty, no position inside an epoch).
    pub fn capture(
        model: &dyn Model,
        opt: &mut VarOptimizer,
        epoch: usize,
        steps: u64,
        rng: u64,
    ) -> Result<Checkpoint> {
        let mut ck = Self::capture_vars(&model.named_vars(), opt, epoch, steps, rng)?;
        ck.buffers = values(&model.named_buffers())?;
        Ok(ck)
    }

    /// [`Checkpoint::capture`] of named variables (a model of your own: a `VarMap`'s variables,
    /// say) instead of a descent [`Model`].
    pub fn capture_vars(
        vars: &[(String, Var)],
        opt: &mut VarOptimizer,
        epoch: usize,
        steps: u64,
        rng: u64,
    ) -> Result<Checkpoint> {
        Ok(Checkpoint {
            weights: values(vars)?,
            buffers: vec![],
            optimizer: opt.state_dict()?,
            epoch,
            steps,
            rng,
            scheduler: None,
            progress: None,
            run_id: String::new(),
            config_hash: String::new(),
            model_config: None,
            vocab: None,
            text_digest: None,
            data_digest: None,
            average: None,
            best: None,
            last_epoch_train_loss: None,
            ended: None,
        })
    }

    /// The checkpoint of a run that early stopping ended, from its last epoch's: the weights and
    /// buffers, epoch and step of its best epoch, which the run restored; no optimizer state and
    /// no weight average (the last epoch's would not go with these weights, nor be that epoch's)
    /// and marked as ended, so that it is not resumed. `None` when it records no best epoch.
    pub fn restore_best(mut self, why: String) -> Option<Checkpoint> {
        let best = self.best.take()?;
        self.average = None;
        self.weights = best.weights;
        self.buffers = best.buffers;
        self.epoch = best.epoch;
        self.steps = best.steps;
        self.progress = None;
        self.optimizer = StateDict::default();
        self.ended = Some(why);
        Some(self)
    }

    /// True when the checkpoint was taken inside epoch `epoch + 1` rather than at the end of
    /// epoch `epoch`: resuming finishes that epoch first.
    pub fn mid_epoch(&self) -> bool {
        self.progress.is_some()
    }

    /// Writes the checkpoint to `path` atomically, with its checksum.
    pub fn save(&self, path: &Path) -> Result<()> {
        let part = |name: String, shape: &[usize], v: &[f32]| (name, Dtype::F32, shape.to_vec(), le_bytes(v));
        let mut parts: Vec<Part> = self.weights.iter().map(|(n, s, v)| part(format!("model/{n}"), s, v)).collect();
        parts.extend(self.buffers.iter().map(|(n, s, v)| part(format!("buffers/{n}"), s, v)));
        for (k, v) in &self.optimizer.buffers {
            parts.push(part(format!("optimizer/{k}"), &[v.len()], v));
        }
        if let Some(a) = &self.average {
            parts.extend(a.weights.iter().map(|(n, s, v)| part(format!("average/model/{n}"), s, v)));
            parts.extend(a.buffers.iter().map(|(n, s, v)| part(format!("average/buffers/{n}"), s, v)));
        }
        if let Some(b) = &self.best {
            parts.extend(b.weights.iter().map(|(n, s, v)| part(format!("best/model/{n}"), s, v)));
            parts.extend(b.buffers.iter().map(|(n, s, v)| part(format!("best/buffers/{n}"), s, v)));
        }
        let scalars = serde_json::to_string(&self.optimizer.scalars).map_err(|e| err(path, e.to_string()))?;
        let counters = serde_json::to_string(&self.optimizer.counters).map_err(|e| err(path, e.to_string()))?;
        let mut meta: HashMap<String, String> = [
            ("format".to_string(), FORMAT.to_string()),
            ("epoch".into(), self.epoch.to_string()),
            ("steps".into(), self.steps.to_string()),
            ("rng".into(), self.rng.to_string()),
            ("optimizer_scalars".into(), scalars),
            ("optimizer_counters".into(), counters),
            ("run_id".into(), self.run_id.clone()),
            ("config_hash".into(), self.config_hash.clone()),
        ]
        .into_iter()
        .collect();
        if let Some(s) = &self.scheduler {
            meta.insert("scheduler".into(), s.clone());
        }
        if let Some(c) = &self.model_config {
            meta.insert("model_config".into(), c.clone());
        }
        if let Some(v) = &self.vocab {
            meta.insert("vocab".into(), v.clone());
        }
        if let Some(d) = &self.text_digest {
            meta.insert("text_digest".into(), d.clone());
        }
        if let Some(d) = &self.data_digest {
            meta.insert("data_digest".into(), d.clone());
        }
        if let Some(a) = &self.average {
            let m = AverageMeta { kind: a.kind.clone(), n_averaged: a.n_averaged, swalr: a.swalr };
            meta.insert("average".into(), serde_json::to_string(&m).map_err(|e| err(path, e.to_string()))?);
        }
        if let Some(b) = &self.best {
            let m = BestMeta { test_loss: b.test_loss, epoch: b.epoch, steps: b.steps };
            meta.insert("best".into(), serde_json::to_string(&m).map_err(|e| err(path, e.to_string()))?);
        }
        if let Some(e) = &self.ended {
            meta.insert("ended".into(), e.clone());
        }
        if let Some(l) = self.last_epoch_train_loss {
            // Rust prints the shortest decimal that reads back as the same f64.
            meta.insert("last_epoch_train_loss".into(), l.to_string());
        }
        if let Some(p) = &self.progress {
            meta.insert("batch".into(), p.batch.to_string());
            meta.insert("epoch_rng".into(), p.epoch_rng.to_string());
            // Rust prints the shortest decimal that reads back as the same f64.
            meta.insert("epoch_loss_sum".into(), p.loss_sum.to_string());
            meta.insert("epoch_samples".into(), p.samples.to_string());
            meta.insert("epoch_seconds".into(), p.seconds.to_string());
        }
        save_verified(path, "checkpoint", &parts, meta)
    }

    /// Reads a checkpoint and verifies it whole: its format, its checksum, every field, and that
    /// the weights, buffers and optimizer state are finite. Memory use is proportional to the
    /// file's size.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let data = read_regular(path).map_err(|e| err(path, e.to_string()))?;
        Self::from_bytes(path, &data)
    }

    /// [`Checkpoint::load`] of the bytes of a file; `path` names it in errors.
    pub fn from_bytes(path: &Path, data: &[u8]) -> Result<Checkpoint> {
        // Deserializing checks the header's length, the tensors' offsets against the buffer and
        // each shape's element count (with overflow checks) against its bytes.
        let st = safetensors::SafeTensors::deserialize(data)
            .map_err(|e| err(path, format!("not a safetensors file: {e}")))?;
        let (_, md) = safetensors::SafeTensors::read_metadata(data).map_err(|e| err(path, e.to_string()))?;
        let meta = md.metadata().clone().ok_or_else(|| err(path, "no metadata: not a descent checkpoint"))?;
        let get = |k: &str| meta.get(k).ok_or_else(|| err(path, format!("metadata field `{k}` missing")));
        let format = meta.get("format").ok_or_else(|| err(path, "no format field: not a descent checkpoint"))?;
        if format == FORMAT_V1 {
            return Err(err(
                path,
                format!(
                    "written by an older descent ({FORMAT_V1}) without a checksum, so it cannot be verified; \
                     start the run again to get a {FORMAT} checkpoint"
                ),
            ));
        }
        if format != FORMAT {
            return Err(err(path, format!("format `{format}` is not `{FORMAT}`")));
        }

        let mut tensors = check_sum(path, &st, &meta, get("checksum")?)?;

        let num =
            |k: &str| get(k)?.parse::<u64>().map_err(|_| err(path, format!("metadata field `{k}` is not a number")));
        let count =
            |k: &str| usize::try_from(num(k)?).map_err(|_| err(path, format!("metadata field `{k}` is out of range")));
        let float = |k: &str| {
            get(k)?
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(path, format!("metadata field `{k}` is not a finite number")))
        };
        let optimizer = StateDict {
            scalars: serde_json::from_str(get("optimizer_scalars")?)
                .map_err(|e| err(path, format!("optimizer_scalars: {e}")))?,
            counters: serde_json::from_str(get("optimizer_counters")?)
                .map_err(|e| err(path, format!("optimizer_counters: {e}")))?,
            ..Default::default()
        };
        if let Some((k, v)) = optimizer.scalars.iter().find(|(_, v)| !v.is_finite()) {
            return Err(err(path, format!("optimizer scalar `{k}` is {v}")));
        }
        let progress = match meta.get("batch") {
            None => None,
            Some(_) => Some(EpochProgress {
                batch: count("batch")?,
                epoch_rng: num("epoch_rng")?,
                loss_sum: float("epoch_loss_sum")?,
                samples: count("epoch_samples")?,
                seconds: float("epoch_seconds")?,
            }),
        };
        let mut ck = Checkpoint {
            weights: vec![],
            buffers: vec![],
            optimizer,
            epoch: count("epoch")?,
            steps: num("steps")?,
            rng: num("rng")?,
            scheduler: meta.get("scheduler").cloned(),
            progress,
            run_id: get("run_id")?.clone(),
            config_hash: get("config_hash")?.clone(),
            model_config: meta.get("model_config").cloned(),
            vocab: meta.get("vocab").cloned(),
            text_digest: meta.get("text_digest").cloned(),
            data_digest: meta.get("data_digest").cloned(),
            average: match meta.get("average") {
                None => None,
                Some(text) => {
                    let m: AverageMeta = serde_json::from_str(text).map_err(|e| err(path, format!("average: {e}")))?;
                    Some(AverageState {
                        kind: m.kind,
                        n_averaged: m.n_averaged,
                        swalr: m.swalr,
                        weights: vec![],
                        buffers: vec![],
                    })
                }
            },
            best: match meta.get("best") {
                None => None,
                Some(text) => {
                    let m: BestMeta = serde_json::from_str(text).map_err(|e| err(path, format!("best: {e}")))?;
                    if !m.test_loss.is_finite() {
                        return Err(err(path, format!("best: test loss {}", m.test_loss)));
                    }
                    Some(BestEpoch {
                        test_loss: m.test_loss,
                        epoch: m.epoch,
                        steps: m.steps,
                        weights: vec![],
                        buffers: vec![],
                    })
                }
            },
            ended: meta.get("ended").cloned(),
            last_epoch_train_loss: match meta.get("last_epoch_train_loss") {
                None => None,
                Some(_) => Some(float("last_epoch_train_loss")?),
            },
        };
        tensors.sort_by_key(|(n, _)| *n);
        for (n, t) in tensors {
            if t.dtype() != Dtype::F32 {
                return Err(err(path, format!("tensor `{n}` is {}, expected F32", t.dtype())));
            }
            let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            check_finite(path, n, &v)?;
            if let Some(w) = n.strip_prefix("model/") {
                ck.weights.push((w.to_string(), t.shape().to_vec(), v));
            } else if let Some(b) = n.strip_prefix("buffers/") {
                ck.buffers.push((b.to_string(), t.shape().to_vec(), v));
            } else if let Some(k) = n.strip_prefix("optimizer/") {
                ck.optimizer.buffers.insert(k.to_string(), v);
            } else if let (Some(a), Some(w)) = (ck.average.as_mut(), n.strip_prefix("average/model/")) {
                a.weights.push((w.to_string(), t.shape().to_vec(), v));
            } else if let (Some(a), Some(b)) = (ck.average.as_mut(), n.strip_prefix("average/buffers/")) {
                a.buffers.push((b.to_string(), t.shape().to_vec(), v));
            } else if let (Some(b), Some(w)) = (ck.best.as_mut(), n.strip_prefix("best/model/")) {
                b.weights.push((w.to_string(), t.shape().to_vec(), v));
            } else if let (Some(b), Some(w)) = (ck.best.as_mut(), n.strip_prefix("best/buffers/")) {
                b.buffers.push((w.to_string(), t.shape().to_vec(), v));
            } else {
                return Err(err(path, format!("unexpected tensor `{n}`")));
            }
        }
        Ok(ck)
    }

    /// Restores weights, buffers and optimizer state, after checking that every parameter and
    /// buffer is there with its shape (and nothing else) and that the optimizer state fits; on
    /// any mismatch nothing is changed.
    pub fn apply(&self, model: &dyn Model, opt: &mut VarOptimizer) -> Result<()> {
        self.apply_parts(&model.named_vars(), &model.named_buffers(), opt)
    }

    /// Writes the trained weights and buffers into the model, without any optimizer (evaluating a
    /// run's checkpoint); checked like [`Checkpoint::apply`].
    pub fn apply_weights(&self, model: &dyn Model) -> Result<()> {
        set_model(["weights", "buffer"], &self.weights, &self.buffers, model)
    }

    /// [`Checkpoint::apply_weights`], then, where the run's optimizer keeps the weights it
    /// evaluates apart from those it steps (schedule-free's average `x`, Lookahead's slow
    /// weights), those: computed from the checkpoint's optimizer state by the optimizer of `cfg`
    /// (the run's config), as the run computed them at its evaluations. The weights `evaluate`,
    /// an ensemble, a teacher or a pruning of the run take. A checkpoint of early stopping (no
    /// optimizer state) holds the weights its best epoch evaluated already (those written before
    /// descent kept them, its stepped weights).
    pub fn apply_evaluated_weights(&self, model: &dyn Model, cfg: &crate::train::TrainConfig) -> Result<()> {
        self.apply_weights(model)?;
        if self.optimizer == StateDict::default() {
            return Ok(());
        }
        let mut opt = VarOptimizer::for_vars(model.named_vars(), &crate::train::optimizer_config(cfg))?;
        if !opt.evaluates_other_weights()? {
            return Ok(());
        }
        opt.load_state_dict(&self.optimizer).map_err(|e| {
            Error::Param(format!("the checkpoint's optimizer state does not fit the run's optimizer: {e}"))
        })?;
        opt.apply_eval_weights()?;
        Ok(())
    }

    /// [`Checkpoint::apply`] to named variables instead of a descent [`Model`] (no buffers: a
    /// checkpoint holding some is refused).
    pub fn apply_vars(&self, vars: &[(String, Var)], opt: &mut VarOptimizer) -> Result<()> {
        self.apply_parts(vars, &[], opt)
    }

    fn apply_parts(&self, vars: &[(String, Var)], buffers: &[(String, Var)], opt: &mut VarOptimizer) -> Result<()> {
        if let Some(why) = &self.ended {
            return Err(Error::Param(format!(
                "the checkpoint is the end of a run ({why}): its weights are the restored best epoch's, with no \
                 optimizer state to continue from"
            )));
        }
        let tensors = model_tensors(["weights", "buffer"], &self.weights, &self.buffers, vars, buffers)?;
        opt.load_state_dict(&self.optimizer)?;
        for ((_, v), t) in vars.iter().chain(buffers).zip(&tensors) {
            v.set(t)?;
        }
        Ok(())
    }
}
