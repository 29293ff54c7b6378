//! What the `own_model` and `read_checkpoint` examples share: a model that is not one of
//! descent's (a 2-layer MLP of `candle_nn::Linear` layers on a `VarMap`), the synthetic data it
//! learns (three interleaved spirals), its optimizer configuration and its evaluation.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use descent_core::schedule::{warmup_cosine_decay, WarmupCosineDecay};
use descent_train::optim::OptimizerConfig;
use descent_train::rng::Rng;
use serde_json::json;

pub const CLASSES: usize = 3;
pub const HIDDEN: usize = 64;
/// Optimizer steps of the `own_model` run (the schedule's length) and its mini-batch size.
pub const STEPS: u64 = 1500;
pub const BATCH: usize = 64;

/// `2 → HIDDEN → CLASSES` with a ReLU between.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// Builds the layers on `varmap` (parameters `fc1.weight`, `fc1.bias`, `fc2.weight`,
    /// `fc2.bias`) and sets them from `seed` as PyTorch's `Linear` does, `U(±1/√fan_in)`, so that
    /// a run is reproducible (candle's own initialization is not seeded).
    pub fn new(varmap: &mut VarMap, seed: u64) -> Result<Mlp> {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &dev);
        let mlp = Mlp { fc1: linear(2, HIDDEN, vb.pp("fc1"))?, fc2: linear(HIDDEN, CLASSES, vb.pp("fc2"))? };
        let mut rng = Rng::new(seed);
        for (layer, fan_in, fan_out) in [("fc1", 2, HIDDEN), ("fc2", HIDDEN, CLASSES)] {
            let b = 1.0 / (fan_in as f32).sqrt();
            let w: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.range(-b, b)).collect();
            let bias: Vec<f32> = (0..fan_out).map(|_| rng.range(-b, b)).collect();
            varmap.set_one(format!("{layer}.weight"), Tensor::from_vec(w, (fan_out, fan_in), &dev)?)?;
            varmap.set_one(format!("{layer}.bias"), Tensor::from_vec(bias, fan_out, &dev)?)?;
        }
        Ok(mlp)
    }

    /// Logits of a batch of points `[n, 2]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)
    }
}

/// `n` points of each of three spiral arms around the origin, with Gaussian noise: inputs `[3n,
/// 2]` and class indices `[3n]`.
pub fn spirals(n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut rng = Rng::new(seed);
    let (mut x, mut y) = (Vec::with_capacity(6 * n), Vec::with_capacity(3 * n));
    for i in 0..CLASSES * n {
        let class = i % CLASSES;
        let t = rng.uniform();
        let angle = class as f32 * std::f32::consts::TAU / CLASSES as f32 + 4.0 * t;
        x.push(t * angle.cos() + 0.04 * rng.normal());
        x.push(t * angle.sin() + 0.04 * rng.normal());
        y.push(class as u32);
    }
    Ok((Tensor::from_vec(x, (CLASSES * n, 2), &Device::Cpu)?, Tensor::from_vec(y, CLASSES * n, &Device::Cpu)?))
}

/// AdamW (lr 1e-2, weight decay 1e-2 but none on the biases), the gradients clipped to norm 1.
pub fn adamw_config() -> OptimizerConfig {
    OptimizerConfig {
        optimizer: "adamw".into(),
        lr: Some(1e-2),
        hparams: json!({"weight_decay": 1e-2}),
        groups: vec![("bias".into(), json!({"weight_decay": 0.0}))],
        clip_norm: Some(1.0),
        ..Default::default()
    }
}

/// [`adamw_config`] with the learning rate warmed up linearly over the first 5% of `total_steps`
/// then decayed to 0 by a cosine (`total_steps` at least 1).
pub fn optimizer_config(total_steps: u64) -> OptimizerConfig {
    let schedule = warmup_cosine_decay(WarmupCosineDecay {
        init_value: 0.0,
        peak_value: 1.0,
        warmup_steps: total_steps / 20,
        decay_steps: total_steps,
        end_value: 0.0,
        exponent: 1.0,
    })
    .expect("a warm-up shorter than the decay");
    OptimizerConfig { schedule: Some(Arc::new(schedule)), ..adamw_config() }
}

/// Mean cross-entropy and accuracy of the model on a dataset.
pub fn evaluate(model: &Mlp, x: &Tensor, y: &Tensor) -> Result<(f32, f64)> {
    let logits = model.forward(x)?;
    let loss = candle_nn::loss::cross_entropy(&logits, y)?.to_scalar::<f32>()?;
    let right = logits.argmax(D::Minus1)?.eq(y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok((loss, right as f64 / y.dims()[0] as f64))
}

/// The checkpoint file: the path after `--checkpoint`, else `descent-own-model.safetensors` in the
/// temporary directory.
pub fn checkpoint_path() -> Result<PathBuf> {
    // `cargo test` runs these examples too, passing its own arguments (a test-name filter,
    // `--nocapture`, …): only `--checkpoint PATH` names the file, so a filter word is never
    // taken for a path to write.
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--checkpoint" {
            return args
                .next()
                .map(PathBuf::from)
                .ok_or_else(|| candle_core::Error::Msg("--checkpoint needs a path".into()));
        }
    }
    Ok(std::env::temp_dir().join("descent-own-model.safetensors"))
}

/// The training and test sets (different seeds: different points of the same spirals).
pub fn datasets() -> Result<((Tensor, Tensor), (Tensor, Tensor))> {
    Ok((spirals(300, 1)?, spirals(200, 2)?))
}

/// One epoch's order of mini-batches of `n` samples, as index tensors.
pub fn batches(n: usize, rng: &mut Rng) -> Result<Vec<Tensor>> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut order);
    order.chunks(BATCH).map(|c| Tensor::new(c, &Device::Cpu)).collect()
}
