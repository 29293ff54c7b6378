//! `descent train`: a model on a bundled dataset with any descent optimizer.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use descent_train::data::Dataset;
use descent_train::mnist;
use descent_train::model::{Init, LeNet5, LinearRegression, Mlp, Model};
use descent_train::rng::Rng;
use descent_train::train::{train, Loss, Stop, TrainConfig};

/// The models `descent train` knows.
pub const MODELS: &[&str] = &["lenet", "mlp", "linear"];

/// Validated settings of a training run.
pub struct TrainArgs {
    pub model: String,
    pub optimizer: String,
    pub lr: Option<f64>,
    pub hparams: serde_json::Value,
    pub epochs: usize,
    pub steps: Option<u64>,
    pub batch_size: usize,
    pub seed: u64,
    pub init: String,
    pub dropout: f32,
    pub normalize: bool,
    pub data: PathBuf,
    pub clip_norm: Option<f64>,
    pub clip_value: Option<f64>,
    pub l1: f64,
    pub l2: f64,
    pub patience: Option<usize>,
    pub min_delta: f64,
    /// Percent.
    pub target_accuracy: Option<f64>,
}

/// Per-model defaults: (learning rate, batch size), the recipes the README quotes.
pub fn defaults(model: &str) -> (f64, usize) {
    match model {
        "lenet" => (2e-3, 128),
        "linear" => (0.1, 32),
        _ => (1e-3, 32),
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let init = Init::parse(&a.init)?;
    let mut rng = Rng::new(a.seed);
    let dev = Device::Cpu;
    let (model, train_set, test_set, loss): (Box<dyn Model>, Dataset, Dataset, Loss) = match a.model.as_str() {
        "linear" => {
            let tr = Dataset::regression(10_000, &mut rng)?;
            let te = Dataset::regression(2_000, &mut rng)?;
            (Box::new(LinearRegression::new(init, &mut rng, &dev)?), tr, te, Loss::Mse)
        }
        "mlp" | "lenet" => {
            let m = mnist::load(&a.data).with_context(|| format!("loading MNIST from {}", a.data.display()))?;
            let (tr, te) = (Dataset::mnist(&m.train, a.normalize)?, Dataset::mnist(&m.test, a.normalize)?);
            let model: Box<dyn Model> = if a.model == "mlp" {
                Box::new(Mlp::new(init, a.dropout, &mut rng, &dev)?)
            } else {
                Box::new(LeNet5::new(init, &mut rng, &dev)?)
            };
            (model, tr, te, Loss::CrossEntropy)
        }
        other => bail!("unknown model `{other}`; accepted: {}", MODELS.join(", ")),
    };
    let cfg = TrainConfig {
        hparams: a.hparams,
        max_steps: a.steps,
        seed: a.seed,
        clip_norm: a.clip_norm,
        clip_value: a.clip_value,
        l1: a.l1,
        l2: a.l2,
        patience: a.patience,
        min_delta: a.min_delta,
        target_accuracy: a.target_accuracy.map(|t| t / 100.0),
        ..TrainConfig::new(&a.optimizer, a.lr, a.epochs, a.batch_size, loss)
    };
    println!(
        "training {} on {} samples with {} (lr {}), batch {}, {} epoch(s)",
        a.model,
        train_set.len(),
        a.optimizer,
        a.lr.map(|l| l.to_string()).unwrap_or_else(|| "default".into()),
        a.batch_size,
        a.epochs
    );
    let (history, stop) = train(model.as_ref(), &train_set, &test_set, &cfg, |m| {
        let acc = m.test_accuracy.map(|a| format!("  test accuracy {:.2}%", 100.0 * a)).unwrap_or_default();
        println!(
            "epoch {}: {} steps  train loss {:.4}  test loss {:.4}{}  {:.1}s  {:.0} samples/s",
            m.epoch, m.steps, m.train_loss, m.test_loss, acc, m.seconds, m.samples_per_s
        );
    })?;
    match stop {
        Stop::EarlyStopping { best_epoch } => {
            println!(
                "early stopping: no improvement for {} epoch(s); restored epoch {best_epoch}",
                a.patience.unwrap_or(0)
            )
        }
        Stop::TargetAccuracy => println!("target accuracy reached"),
        Stop::Steps | Stop::Epochs => {}
    }
    let last = match stop {
        Stop::EarlyStopping { best_epoch } => history.get(best_epoch - 1),
        _ => history.last(),
    };
    if let Some(last) = last {
        match last.test_accuracy {
            Some(acc) => println!("test accuracy: {:.2}%", 100.0 * acc),
            None => {
                let named = model.named_vars();
                let w: Vec<String> = named
                    .iter()
                    .map(|(n, v)| Ok(format!("{n} = {:.4}", v.as_tensor().flatten_all()?.to_vec1::<f32>()?[0])))
                    .collect::<Result<_>>()?;
                println!("test loss: {:.5}  ({})", last.test_loss, w.join(", "));
            }
        }
    }
    Ok(())
}
