//! A model of your own through descent's training loop: the `candle_nn` MLP of the `own_model`
//! example, made a [`descent_train::model::Model`] here (outside descent's crates), trained on the
//! three spirals by `descent_train::train::train_from` with every feature of the loop: AdamW with
//! a warm-up and cosine decay, gradient clipping, no weight decay on the biases (a group by name),
//! an exponential moving average of the weights, a checkpoint at the end of every epoch, metrics
//! as JSON lines and TensorBoard scalars. The run is stopped after half its epochs and resumed from
//! its checkpoint file, and ends bit for bit where a run never stopped ends.
//!
//! ```text
//! cargo run --release -p descent-train --example own_loop [-- --out DIR]
//! tensorboard --logdir DIR/tensorboard
//! ```
//!
//! Exits non-zero unless the resumed run equals the straight one and the test accuracy reached 90%.

// Shared with the examples that drive the optimizer themselves: this one takes the model and data.
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use descent_train::average::{AverageConfig, AverageKind};
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::model::{Mode, Model};
use descent_train::rng::Rng;
use descent_train::tensorboard::Scalars;
use descent_train::train::{train_from, EpochEnd, EpochMetrics, Loss, LrSchedule, TrainConfig};
use serde_json::json;

use common::{datasets, Mlp, BATCH};

const EPOCHS: usize = 40;

/// The `candle_nn` MLP as descent's loop sees a model: a forward pass and its named parameters.
struct Net {
    mlp: Mlp,
    varmap: VarMap,
}

impl Net {
    fn new(seed: u64) -> candle_core::Result<Net> {
        let mut varmap = VarMap::new();
        let mlp = Mlp::new(&mut varmap, seed)?;
        Ok(Net { mlp, varmap })
    }
}

impl Model for Net {
    fn forward(&self, x: &Tensor, _mode: Mode, _rng: &mut Rng) -> descent_train::Result<Tensor> {
        Ok(self.mlp.forward(x)?)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> =
            self.varmap.data().lock().expect("varmap lock").iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        hparams: json!({"weight_decay": 1e-2}),
        groups: vec![("bias".into(), json!({"weight_decay": 0.0}))],
        clip_norm: Some(1.0),
        schedule: LrSchedule::WarmupCosine { warmup: 0.05 },
        average: Some(AverageConfig { kind: AverageKind::Ema { decay: 0.99, warmup: true }, use_buffers: false }),
        seed: 7,
        ..TrainConfig::new("adamw", Some(1e-2), epochs, BATCH, Loss::CrossEntropy)
    }
}

/// Each epoch's metrics appended to `metrics.jsonl` and TensorBoard, and its checkpoint saved.
fn on_epoch<'a>(
    dir: &Path,
    tb: &'a mut Scalars,
) -> impl FnMut(&EpochMetrics, &mut EpochEnd) -> descent_train::Result<()> + 'a {
    let dir = dir.to_path_buf();
    move |m, end| {
        let ema = m.average.as_ref().and_then(|a| a.test_accuracy);
        let line = json!({"epoch": m.epoch, "steps": m.steps, "train_loss": m.train_loss, "test_loss": m.test_loss,
                          "test_accuracy": m.test_accuracy, "ema_test_accuracy": ema, "lr": m.lr});
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("metrics.jsonl"))
            .map_err(|e| descent_train::Error::Param(format!("metrics.jsonl: {e}")))?;
        writeln!(f, "{line}").map_err(|e| descent_train::Error::Param(format!("metrics.jsonl: {e}")))?;
        tb.scalar("epoch/train_loss", m.steps, m.train_loss)?;
        tb.scalar("epoch/test_loss", m.steps, m.test_loss)?;
        tb.scalar("epoch/test_accuracy", m.steps, m.test_accuracy.unwrap_or(f64::NAN))?;
        tb.flush()?;
        end.checkpoint()?.save(&dir.join("checkpoint.safetensors"))
    }
}

fn weights(net: &Net) -> Vec<Vec<f32>> {
    net.named_vars().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

/// The folder after `--out`, else one in the temporary directory (`cargo test` passes other
/// arguments: only `--out DIR` names the folder).
fn out_dir() -> PathBuf {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--out" {
            if let Some(d) = args.next() {
                return PathBuf::from(d);
            }
        }
    }
    std::env::temp_dir().join(format!("descent-own-loop-{}", std::process::id()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ((train_x, train_y), (test_x, test_y)) = datasets()?;
    let (train, test) = (Dataset { x: train_x, y: train_y }, Dataset { x: test_x, y: test_y });
    let dir = out_dir();
    if dir.exists() {
        return Err(format!("{}: exists; give a new folder with --out", dir.display()).into());
    }
    std::fs::create_dir_all(&dir)?;

    // The run interrupted after half its epochs (a checkpoint after each, as a kill would leave
    // it); then a fresh process's view: another model built afresh, the checkpoint file read
    // back, and the run continued to the end.
    let mut tb = Scalars::create(&dir.join("tensorboard"))?;
    let net = Net::new(0)?;
    let mut record = on_epoch(&dir, &mut tb);
    let interrupted = train_from(&net, &train, &test, &config(EPOCHS), None, |m: &EpochMetrics, e: &mut EpochEnd| {
        record(m, e)?;
        match m.epoch == EPOCHS / 2 {
            true => Err(descent_train::Error::Param("interrupted".into())),
            false => Ok(()),
        }
    });
    drop(record);
    match interrupted {
        Err(descent_train::Error::Param(m)) if m == "interrupted" => {}
        other => return Err(format!("the first half ended otherwise: {:?}", other.map(|(h, s)| (h.len(), s))).into()),
    }
    let ck = Checkpoint::load(&dir.join("checkpoint.safetensors"))?;
    println!("stopped after epoch {} (step {}); resuming from {}", ck.epoch, ck.steps, dir.display());
    let resumed = Net::new(1)?;
    let (history, _) = train_from(&resumed, &train, &test, &config(EPOCHS), Some(&ck), on_epoch(&dir, &mut tb))?;
    let last = history.last().expect("the resumed epochs");

    // The same run without a stop.
    let straight = Net::new(0)?;
    let (whole, _) =
        train_from(&straight, &train, &test, &config(EPOCHS), None, |_: &EpochMetrics, _: &mut EpochEnd| Ok(()))?;
    // The weights, and the last epoch's figures: its losses and the EMA weights' evaluation.
    let figures = |m: &EpochMetrics| {
        (m.train_loss, m.test_loss, m.average.as_ref().map(|a| (a.test_loss, a.test_accuracy, a.n_averaged)))
    };
    let same = weights(&resumed) == weights(&straight) && whole.last().map(figures) == Some(figures(last));

    let acc = last.test_accuracy.unwrap_or(0.0);
    let ema = last.average.as_ref().and_then(|a| a.test_accuracy).unwrap_or(0.0);
    println!(
        "epoch {}: test loss {:.4}, test accuracy {:.1}% (EMA weights {:.1}%); resumed run equals the straight one: {same}",
        last.epoch,
        last.test_loss,
        100.0 * acc,
        100.0 * ema
    );
    println!("metrics: {}, TensorBoard: {}", dir.join("metrics.jsonl").display(), dir.join("tensorboard").display());
    let rows = std::fs::read_to_string(dir.join("metrics.jsonl"))?.lines().count();
    if !same || acc < 0.9 || rows != EPOCHS {
        return Err(format!("resumed = straight: {same}, accuracy {acc}, {rows} metric rows of {EPOCHS}").into());
    }
    if !std::env::args_os().any(|a| a == "--out") {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
