//! Checkpoints: the model's weights and the optimizer's whole state in one safetensors file, with
//! the epoch, step count and data-order generator in its metadata, written atomically (temporary
//! file, then rename) so a crash never leaves a corrupt one. Loading validates everything before
//! changing anything: a mismatched checkpoint is refused whole, never half-loaded.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use descent_core::state::StateDict;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::optim::VarOptimizer;

const FORMAT: &str = "descent-checkpoint-1";

/// Everything needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// `(name, shape, values)` of each model parameter.
    pub weights: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub optimizer: StateDict,
    /// Epochs completed and optimizer steps taken.
    pub epoch: usize,
    pub steps: u64,
    /// State of the generator of batch order and dropout.
    pub rng: u64,
    /// State of a metric-driven scheduler (ReduceLROnPlateau), as JSON.
    pub scheduler: Option<String>,
}

fn err(path: &Path, m: impl Into<String>) -> Error {
    Error::Data { path: path.display().to_string(), message: m.into() }
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Captures the model and optimizer now.
    pub fn capture(
        model: &dyn Model,
        opt: &mut VarOptimizer,
        epoch: usize,
        steps: u64,
        rng: u64,
    ) -> Result<Checkpoint> {
        let weights = model
            .named_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.dims().to_vec(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
            .collect::<Result<_>>()?;
        Ok(Checkpoint { weights, optimizer: opt.core().state_dict()?, epoch, steps, rng, scheduler: None })
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
            self.weights.iter().map(|(n, s, v)| (format!("model/{n}"), s.clone(), le_bytes(v))).collect();
        for (k, v) in &self.optimizer.buffers {
            bytes.push((format!("optimizer/{k}"), vec![v.len()], le_bytes(v)));
        }
        let views = bytes
            .iter()
            .map(|(n, s, b)| {
                Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| err(path, e.to_string()))?))
            })
            .collect::<Result<Vec<_>>>()?;
        let scalars = serde_json::to_string(&self.optimizer.scalars).map_err(|e| err(path, e.to_string()))?;
        let counters = serde_json::to_string(&self.optimizer.counters).map_err(|e| err(path, e.to_string()))?;
        let mut meta: HashMap<String, String> = [
            ("format".to_string(), FORMAT.to_string()),
            ("epoch".into(), self.epoch.to_string()),
            ("steps".into(), self.steps.to_string()),
            ("rng".into(), self.rng.to_string()),
            ("optimizer_scalars".into(), scalars),
            ("optimizer_counters".into(), counters),
        ]
        .into_iter()
        .collect();
        if let Some(s) = &self.scheduler {
            meta.insert("scheduler".into(), s.clone());
        }
        let data = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
        let tmp = path.with_extension("safetensors.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| err(path, format!("writing checkpoint: {e}")))
    }

    /// Reads a checkpoint, checking its format.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let data = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&data)
            .map_err(|e| err(path, format!("not a safetensors file: {e}")))?;
        let (_, md) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| err(path, e.to_string()))?;
        let meta = md.metadata().clone().ok_or_else(|| err(path, "no metadata: not a descent checkpoint"))?;
        let get = |k: &str| meta.get(k).ok_or_else(|| err(path, format!("metadata field `{k}` missing")));
        if get("format")? != FORMAT {
            return Err(err(path, format!("format `{}` is not `{FORMAT}`", get("format")?)));
        }
        let num =
            |k: &str| get(k)?.parse::<u64>().map_err(|_| err(path, format!("metadata field `{k}` is not a number")));
        let mut ck = Checkpoint {
            weights: vec![],
            optimizer: StateDict {
                scalars: serde_json::from_str(get("optimizer_scalars")?)
                    .map_err(|e| err(path, format!("optimizer_scalars: {e}")))?,
                counters: serde_json::from_str(get("optimizer_counters")?)
                    .map_err(|e| err(path, format!("optimizer_counters: {e}")))?,
                ..Default::default()
            },
            epoch: num("epoch")? as usize,
            steps: num("steps")?,
            rng: num("rng")?,
            scheduler: meta.get("scheduler").cloned(),
        };
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        for n in names {
            let t = st.tensor(&n).map_err(|e| err(path, e.to_string()))?;
            if t.dtype() != Dtype::F32 {
                return Err(err(path, format!("tensor `{n}` is {:?}, expected F32", t.dtype())));
            }
            let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if let Some(w) = n.strip_prefix("model/") {
                ck.weights.push((w.to_string(), t.shape().to_vec(), v));
            } else if let Some(k) = n.strip_prefix("optimizer/") {
                ck.optimizer.buffers.insert(k.to_string(), v);
            } else {
                return Err(err(path, format!("unexpected tensor `{n}`")));
            }
        }
        Ok(ck)
    }

    /// Restores weights and optimizer state, after checking that every parameter is there with
    /// its shape and that the optimizer state fits; on any mismatch nothing is changed.
    pub fn apply(&self, model: &dyn Model, opt: &mut VarOptimizer) -> Result<()> {
        let vars = model.named_vars();
        let mut by_name: HashMap<&str, (&Vec<usize>, &Vec<f32>)> =
            self.weights.iter().map(|(n, s, v)| (n.as_str(), (s, v))).collect();
        let mut tensors = vec![];
        for (n, v) in &vars {
            let (s, w) = by_name
                .remove(n.as_str())
                .ok_or_else(|| Error::Param(format!("checkpoint has no weights for `{n}`")))?;
            if s.as_slice() != v.dims() {
                return Err(Error::Param(format!(
                    "checkpoint weights `{n}` have shape {s:?}, the model {:?}",
                    v.dims()
                )));
            }
            tensors.push(Tensor::from_vec(w.clone(), s.as_slice(), v.device())?);
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(Error::Param(format!("checkpoint has weights `{extra}` the model does not have")));
        }
        opt.core().load_state_dict(&self.optimizer)?;
        for ((_, v), t) in vars.iter().zip(&tensors) {
            v.set(t)?;
        }
        Ok(())
    }
}
