//! Folders of compressed models (written by `descent prune` and `descent quantize`) and their
//! loading: [`load_compressed`] gives a model ready for inference whatever the folder holds.
//!
//! A folder holds `compress.json` ([`CompressInfo`]: what the model is and how it was made) and
//! one of
//! - `model.safetensors`: f32 weights (pruning made permanent: pruned weights are stored as zeros)
//!   and buffers (`buffers/NAME`), metadata `format` = `descent-model-1`;
//! - `model.int8.safetensors`: an int8 model ([`crate::quant::QuantModel::save`]);
//!
//! and, after structured pruning of an MLP or LeNet-5, `compact.safetensors`: the smaller dense
//! model without the pruned units ([`shrink`]), in the format of `model.safetensors`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{Init, LeNet5, Mlp, Model};
use crate::quant::QuantModel;
use crate::rng::Rng;

/// The record of how a compressed folder was made ([`CompressInfo`]).
pub const INFO: &str = "compress.json";
/// The f32 weights of a pruned model (pruned weights zero).
pub const MODEL_F32: &str = "model.safetensors";
/// The int8 weights and scales of a quantized model.
pub const MODEL_INT8: &str = "model.int8.safetensors";
/// The smaller dense model of a structured pruning.
pub const COMPACT: &str = "compact.safetensors";

/// `compress.json` (a field it does not hold is refused: an edited record, as a changed one is).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressInfo {
    /// `pruned` or `int8`.
    pub kind: String,
    /// The model (`mlp`, `lenet`, `resnet`, `plain`, `linear`) and the CNNs' depth and width.
    pub model: String,
    #[serde(default)]
    /// The CNNs' depth.
    pub depth: Option<usize>,
    #[serde(default)]
    /// The CNNs' width.
    pub width: Option<usize>,
    /// The run's input standardization and MNIST folder, for evaluation.
    pub normalize: bool,
    /// The MNIST folder evaluation reads.
    pub data: PathBuf,
    /// The digest of that data ([`crate::mnist::Mnist::digest`]) when the model was made, so that
    /// other images at the path are refused; absent in folders written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<String>,
    /// The run folder the model came from.
    pub source: PathBuf,
    /// The id of that run (its checkpoint's `run_id`) when the model was made, so that a run
    /// trained anew in the same folder is not read as its source; absent in folders written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run_id: Option<String>,
    /// How it was made, e.g. `l1_unstructured amount 0.5`, `int8 minmax 10 batches`.
    pub method: String,
}

/// The metadata key of a compressed model's file that holds the [`CompressInfo`] it was written
/// with: `compress.json` edited afterwards (another model, other inputs) is noticed.
const INFO_KEY: &str = "compress_info";

impl CompressInfo {
    /// This record as model-file metadata.
    pub(crate) fn stamp(&self) -> Result<(String, String)> {
        Ok((INFO_KEY.to_string(), serde_json::to_string(self).map_err(|e| Error::Param(e.to_string()))?))
    }

    /// That the model file `file` was written with this record, where it holds one (files of an
    /// older descent do not).
    fn check_stamp(&self, dir: &Path, file: &Path) -> Result<()> {
        let data = crate::checkpoint::read_regular(file)
            .map_err(|e| Error::Data { path: file.display().to_string(), message: e.to_string() })?;
        let (_, md) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| Error::Data {
            path: file.display().to_string(),
            message: format!("not a safetensors file: {e}"),
        })?;
        let Some(text) = md.metadata().as_ref().and_then(|m| m.get(INFO_KEY)) else {
            return Ok(());
        };
        let stored: CompressInfo = serde_json::from_str(text)
            .map_err(|e| Error::Data { path: file.display().to_string(), message: format!("{INFO_KEY}: {e}") })?;
        if &stored != self {
            return Err(Error::Data {
                path: dir.join(INFO).display().to_string(),
                message: format!(
                    "changed after {} was written (it was made as: {}); the model is read only as it was made",
                    file.display(),
                    text
                ),
            });
        }
        Ok(())
    }

    /// Whether the folder holds the smaller dense model too: structured pruning of output units
    /// (`ln_structured`, dim 0) of an MLP or LeNet-5.
    pub fn makes_compact(&self) -> bool {
        self.kind == "pruned"
            && self.method.starts_with("ln_structured ")
            && self.method.ends_with(" dim 0")
            && matches!(self.model.as_str(), "mlp" | "lenet")
    }

    /// Reads `compress.json` from a folder.
    pub fn read(dir: &Path) -> Result<CompressInfo> {
        let p = dir.join(INFO);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| Error::Data { path: p.display().to_string(), message: e.to_string() })?;
        serde_json::from_str(&text).map_err(|e| Error::Data { path: p.display().to_string(), message: e.to_string() })
    }
}

/// `(name, shape, values)`.
type Stored = (String, Vec<usize>, Vec<f32>);

/// Writes a model's f32 weights and buffers (`descent-model-1`), with the record `info` of the
/// folder it goes into.
pub fn save_model(path: &Path, info: &CompressInfo, model: &dyn Model) -> Result<()> {
    use safetensors::tensor::Dtype;
    let mut parts: Vec<crate::checkpoint::Part> = vec![];
    for (prefix, vars) in [("", model.named_vars()), ("buffers/", model.named_buffers())] {
        for (n, v) in vars {
            let vals = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            parts.push((format!("{prefix}{n}"), Dtype::F32, v.dims().to_vec(), bytes));
        }
    }
    let meta: HashMap<String, String> =
        [("format".to_string(), "descent-model-1".to_string()), ("model".into(), info.model.clone()), info.stamp()?]
            .into_iter()
            .collect();
    crate::checkpoint::save_verified(path, "model", &parts, meta)
}

/// Reads the weights and buffers of a `descent-model-1` file.
pub fn read_model(path: &Path) -> Result<(Vec<Stored>, Vec<Stored>)> {
    let e = |m: String| Error::Data { path: path.display().to_string(), message: m };
    let data = crate::checkpoint::read_regular(path).map_err(|x| e(x.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|x| e(format!("not a safetensors file: {x}")))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&data).map_err(|x| e(x.to_string()))?;
    let meta = md.metadata().clone().unwrap_or_default();
    if meta.get("format").map(|s| s.as_str()) != Some("descent-model-1") {
        return Err(e("not a descent model file (format descent-model-1)".into()));
    }
    crate::checkpoint::verify(path, &st, &meta)?;
    let (mut w, mut b) = (vec![], vec![]);
    for n in st.names() {
        let t = st.tensor(n).map_err(|x| e(x.to_string()))?;
        let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        match n.strip_prefix("buffers/") {
            Some(bn) => b.push((bn.to_string(), t.shape().to_vec(), v)),
            None => w.push((n.to_string(), t.shape().to_vec(), v)),
        }
    }
    Ok((w, b))
}

/// A model of `info`'s kind with the shapes of `weights` (a compact MLP or LeNet-5 is narrower),
/// quantization-aware ([`crate::qat::QatModel`]) when `buffers` hold its observers.
fn build(info: &CompressInfo, weights: &[Stored], buffers: &[Stored]) -> Result<Box<dyn Model>> {
    if crate::qat::has_observers(buffers.iter().map(|b| b.0.as_str())) {
        let inner = build(info, weights, &[])?;
        return Ok(Box::new(crate::qat::QatModel::new(&info.model, inner, 0.0)?));
    }
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let shape = |n: &str| {
        weights
            .iter()
            .find(|w| w.0 == n)
            .map(|w| w.1.clone())
            .ok_or_else(|| Error::Param(format!("the model file has no `{n}`")))
    };
    let init = Init::TorchDefault;
    Ok(match info.model.as_str() {
        "mlp" => Box::new(Mlp::with_hidden(shape("fc1.weight")?[0], init, 0.0, &mut rng, &dev)?),
        "lenet" => Box::new(LeNet5::with_widths(
            [shape("conv1.weight")?[0], shape("conv2.weight")?[0], shape("fc1.weight")?[0], shape("fc2.weight")?[0]],
            init,
            &mut rng,
            &dev,
        )?),
        "linear" => Box::new(crate::model::LinearRegression::new(init, &mut rng, &dev)?),
        "resnet" => Box::new(crate::resnet::ResNet::new(
            info.depth.unwrap_or(6),
            info.width.unwrap_or(16),
            init,
            &mut rng,
            &dev,
        )?),
        "plain" => Box::new(crate::resnet::PlainCnn::new(
            info.depth.unwrap_or(6),
            info.width.unwrap_or(16),
            init,
            &mut rng,
            &dev,
        )?),
        other => return Err(Error::Param(format!("a compressed folder of model `{other}` cannot be loaded"))),
    })
}

/// Sets a model's variables and buffers to stored values (each by name, with its shape).
pub fn set_values(model: &dyn Model, weights: &[Stored], buffers: &[Stored]) -> Result<()> {
    for (vars, stored, what) in [(model.named_vars(), weights, "weight"), (model.named_buffers(), buffers, "buffer")] {
        let by: HashMap<&str, &Stored> = stored.iter().map(|s| (s.0.as_str(), s)).collect();
        if let Some(extra) = stored.iter().find(|s| !vars.iter().any(|(n, _)| *n == s.0)) {
            return Err(Error::Param(format!("stored {what} `{}` is not one of the model's", extra.0)));
        }
        if by.len() != stored.len() {
            return Err(Error::Param(format!(
                "a {what} is stored twice ({} names for {} tensors)",
                by.len(),
                stored.len()
            )));
        }
        for (n, v) in vars {
            let s = by.get(n.as_str()).ok_or_else(|| Error::Param(format!("no stored {what} `{n}`")))?;
            if s.1 != v.dims() {
                return Err(Error::Param(format!("{what} `{n}`: stored {:?}, the model's {:?}", s.1, v.dims())));
            }
            v.set(&Tensor::from_vec(s.2.clone(), s.1.as_slice(), v.device())?)?;
        }
    }
    Ok(())
}

/// A model loaded for inference, with what a report shows of it.
pub struct Loaded {
    /// The model, ready for evaluation.
    pub model: Box<dyn Model>,
    /// What the folder records of how it was made.
    pub info: CompressInfo,
    /// Weights and biases in all, and those not zero.
    pub params: usize,
    /// Weights and biases that are not zero.
    pub nonzeros: usize,
    /// The size of the model's file.
    pub file_bytes: u64,
    /// The model's file.
    pub file: PathBuf,
}

fn counts(model: &dyn Model) -> Result<(usize, usize)> {
    let (mut p, mut nz) = (0, 0);
    for (_, v) in model.named_vars() {
        let vals = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        p += vals.len();
        nz += vals.iter().filter(|&&x| x != 0.0).count();
    }
    Ok((p, nz))
}

fn load_f32(dir: &Path, info: CompressInfo, file: PathBuf) -> Result<Loaded> {
    let (w, b) = read_model(&file)?;
    info.check_stamp(dir, &file)?;
    let in_file = |e: Error| match e {
        Error::Param(m) => Error::Data { path: file.display().to_string(), message: m },
        e => e,
    };
    let model = build(&info, &w, &b).map_err(in_file)?;
    set_values(model.as_ref(), &w, &b).map_err(in_file)?;
    let (params, nonzeros) = counts(model.as_ref())?;
    let file_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    Ok(Loaded { model, info, params, nonzeros, file_bytes, file })
}

/// The model of a folder written by `descent prune` or `descent quantize`: the int8 model when the
/// folder holds one, else the f32 (pruned) model; its test data is `info.data` (standardized when
/// `info.normalize`).
pub fn load_compressed(dir: &Path) -> Result<Loaded> {
    let info = CompressInfo::read(dir)?;
    let int8 = dir.join(MODEL_INT8);
    if int8.exists() {
        let q = QuantModel::load(&int8)?;
        info.check_stamp(dir, &int8)?;
        let (params, nonzeros) = (q.num_params(), q.nonzeros());
        let file_bytes = std::fs::metadata(&int8).map(|m| m.len()).unwrap_or(0);
        return Ok(Loaded { model: Box::new(q), info, params, nonzeros, file_bytes, file: int8 });
    }
    load_f32(dir, info, dir.join(MODEL_F32))
}

/// The compact model of a structurally pruned folder, if it has one.
pub fn load_compact(dir: &Path) -> Result<Option<Loaded>> {
    let p = dir.join(COMPACT);
    if !p.exists() {
        return Ok(None);
    }
    load_f32(dir, CompressInfo::read(dir)?, p).map(Some)
}

/// The layers [`shrink`] works through, in order: `(weight name, bias name)`.
fn chain(model_name: &str) -> Result<Vec<(&'static str, &'static str)>> {
    Ok(match model_name {
        "mlp" => vec![("fc1.weight", "fc1.bias"), ("fc2.weight", "fc2.bias")],
        "lenet" => vec![
            ("conv1.weight", "conv1.bias"),
            ("conv2.weight", "conv2.bias"),
            ("fc1.weight", "fc1.bias"),
            ("fc2.weight", "fc2.bias"),
            ("fc3.weight", "fc3.bias"),
        ],
        other => {
            return Err(Error::Param(format!(
                "removing pruned channels handles the mlp and lenet models, not `{other}`"
            )))
        }
    })
}

/// The smaller dense model of a structurally pruned MLP or LeNet-5: each layer but the last loses
/// its output units (channels) whose weights are all zero, and the next layer the matching inputs.
/// A removed unit still output the constant `relu(bias)` (pruning zeroes weights, not biases), so
/// its contribution to the next layer is folded into that layer's bias: the compact model
/// computes the same function as the masked one (up to rounding).
pub fn shrink(model_name: &str, model: &dyn Model) -> Result<Box<dyn Model>> {
    let names = chain(model_name)?;
    let vars: HashMap<String, candle_core::Var> = model.named_vars().into_iter().collect();
    let get = |n: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let v = vars.get(n).ok_or_else(|| Error::Param(format!("the model has no `{n}`")))?;
        Ok((v.dims().to_vec(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
    };
    let mut layers: Vec<(Vec<usize>, Vec<f32>, Vec<f32>)> = vec![];
    for (w, b) in &names {
        let (s, wv) = get(w)?;
        layers.push((s, wv, get(b)?.1));
    }
    for i in 0..layers.len() - 1 {
        let (out, per) = (layers[i].0[0], layers[i].1.len() / layers[i].0[0]);
        let live = crate::prune::live_channels(&layers[i].1, out);
        let dead: Vec<usize> = (0..out).filter(|c| !live.contains(c)).collect();
        // Fold each removed unit's constant output into the next layer's bias.
        let consts: Vec<(usize, f32)> = dead.iter().map(|&c| (c, layers[i].2[c].max(0.0))).collect();
        let next = &mut layers[i + 1];
        let n_out = next.0[0];
        let n_in = next.1.len() / n_out;
        let g = n_in / out;
        for (row, bj) in next.1.chunks(n_in).zip(next.2.iter_mut()) {
            let add: f32 = consts.iter().map(|&(c, v)| v * row[c * g..(c + 1) * g].iter().sum::<f32>()).sum();
            *bj += add;
        }
        // Keep the live rows of this layer and the matching input blocks of the next.
        let cur = &mut layers[i];
        let w: Vec<f32> = live.iter().flat_map(|&c| cur.1[c * per..(c + 1) * per].iter().copied()).collect();
        let b: Vec<f32> = live.iter().map(|&c| cur.2[c]).collect();
        (cur.1, cur.2) = (w, b);
        cur.0[0] = live.len();
        let next = &mut layers[i + 1];
        let w: Vec<f32> = (0..n_out)
            .flat_map(|j| live.iter().flat_map(move |&c| (j * n_in + c * g)..(j * n_in + (c + 1) * g)))
            .map(|t| next.1[t])
            .collect();
        next.1 = w;
        next.0[1] = if next.0.len() == 4 { live.len() } else { live.len() * g };
        if live.is_empty() {
            return Err(Error::Param(format!("every unit of `{}` was pruned: nothing would be left", names[i].0)));
        }
    }
    let mut weights = vec![];
    for ((w, b), (s, wv, bv)) in names.iter().zip(layers) {
        weights.push((w.to_string(), s.clone(), wv));
        weights.push((b.to_string(), vec![bv.len()], bv));
    }
    let info = CompressInfo {
        kind: "pruned".into(),
        model: model_name.into(),
        depth: None,
        width: None,
        normalize: false,
        data: PathBuf::new(),
        data_digest: None,
        source: PathBuf::new(),
        source_run_id: None,
        method: String::new(),
    };
    let m = build(&info, &weights, &[])?;
    set_values(m.as_ref(), &weights, &[])?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mode;

    /// A LeNet-5 and an MLP with half their units zeroed (as ln_structured leaves them) and the
    /// compact models [`shrink`] makes of them compute the same logits.
    #[test]
    fn shrunk_models_compute_the_masked_function() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(4);
        let x =
            Tensor::from_vec((0..5 * 784).map(|_| rng.uniform()).collect::<Vec<f32>>(), (5, 1, 28, 28), &dev).unwrap();
        let mlp = Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
        let lenet = LeNet5::new(Init::TorchDefault, &mut rng, &dev).unwrap();
        for (name, m, last) in
            [("mlp", &mlp as &dyn Model, "fc2.weight"), ("lenet", &lenet as &dyn Model, "fc3.weight")]
        {
            for (n, v) in crate::prune::prunable(m) {
                if n == last {
                    continue;
                }
                let w = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mask = crate::prune::ln_structured(
                    &w,
                    v.dims(),
                    crate::prune::Amount::Fraction(0.5),
                    crate::prune::Norm::P(2.0),
                    0,
                )
                .unwrap();
                crate::prune::apply_mask(&v, &mask).unwrap();
            }
            let small = shrink(name, m).unwrap();
            let (p0, _) = counts(m).unwrap();
            let (p1, _) = counts(small.as_ref()).unwrap();
            assert!(p1 * 3 < p0 * 2, "{name}: {p1} of {p0} parameters left");
            let a = m.forward(&x, Mode::Eval, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = small.forward(&x, Mode::Eval, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let err = a.iter().zip(&b).fold(0f32, |e, (x, y)| e.max((x - y).abs()));
            assert!(err < 1e-4, "{name}: {err}");
        }
    }
}
