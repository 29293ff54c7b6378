//! Reads back the checkpoint the `own_model` example wrote (or, on a clean checkout, trains the
//! same model briefly and writes one first), lists its tensors and shapes, restores it into a
//! freshly built model and optimizer, evaluates, and resumes training from it.
//!
//! ```text
//! cargo run --release -p descent-train --example read_checkpoint [-- --checkpoint PATH]
//! ```
//!
//! Exits non-zero unless the restored model is the saved one and resuming keeps it as good.

mod common;

use candle_nn::VarMap;
use descent_train::checkpoint::Checkpoint;
use descent_train::optim::{OptimizerConfig, VarOptimizer};
use descent_train::rng::Rng;

use common::{batches, checkpoint_path, datasets, evaluate, optimizer_config, Mlp, STEPS};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `steps` optimizer steps of mini-batches of the training set; the mean training loss.
fn run_steps(model: &Mlp, opt: &mut VarOptimizer, steps: u64, seed: u64) -> Res<f64> {
    let ((x, y), _) = datasets()?;
    let mut rng = Rng::new(seed);
    let (end, mut sum) = (opt.steps() + steps, 0.0f64);
    while opt.steps() < end {
        for idx in batches(x.dims()[0], &mut rng)? {
            let loss =
                candle_nn::loss::cross_entropy(&model.forward(&x.index_select(&idx, 0)?)?, &y.index_select(&idx, 0)?)?;
            opt.step(&loss.backward()?)?;
            sum += loss.to_scalar::<f32>()? as f64;
            if opt.steps() == end {
                break;
            }
        }
    }
    Ok(sum / steps as f64)
}

fn fail(message: String) -> ! {
    eprintln!("FAILED: {message}");
    std::process::exit(1)
}

fn main() -> Res<()> {
    let path = checkpoint_path()?;
    if !path.exists() {
        // Self-contained: the same training as `own_model` (the same checkpoint).
        let steps = STEPS;
        println!("no checkpoint at {}: training as own_model does to write one", path.display());
        let mut varmap = VarMap::new();
        let model = Mlp::new(&mut varmap, 0)?;
        let mut opt = VarOptimizer::for_varmap(&varmap, &optimizer_config(steps))?;
        run_steps(&model, &mut opt, steps, 0)?;
        opt.save_checkpoint(&path)?;
    }

    // Loading verifies the file whole: format, checksum, finite values.
    let ck = Checkpoint::load(&path)?;
    println!("{}: {} optimizer steps", path.display(), ck.steps);
    for (name, shape, _) in &ck.weights {
        println!("  model/{name:<24} {shape:?}");
    }
    for (name, values) in &ck.optimizer.buffers {
        println!("  optimizer/{name:<20} [{}]", values.len());
    }
    for (name, n) in &ck.optimizer.counters {
        println!("  counter {name:<22} {n}");
    }

    // A fresh model (other initial weights) and optimizer of the same configuration; the
    // schedule is replaced by a constant, smaller learning rate to fine-tune from the checkpoint.
    let ((_, _), (test_x, test_y)) = datasets()?;
    let mut varmap = VarMap::new();
    let model = Mlp::new(&mut varmap, 12345)?;
    let (fresh_loss, fresh_acc) = evaluate(&model, &test_x, &test_y)?;
    let cfg = OptimizerConfig { lr: Some(1e-3), schedule: None, ..common::adamw_config() };
    let mut opt = VarOptimizer::for_varmap(&varmap, &cfg)?;
    opt.restore(&ck)?;
    let (loss, acc) = evaluate(&model, &test_x, &test_y)?;
    println!("fresh model:    test loss {fresh_loss:.4}, accuracy {:.1}%", 100.0 * fresh_acc);
    println!("restored model: test loss {loss:.4}, accuracy {:.1}%", 100.0 * acc);
    for ((name, var), (saved_name, _, saved)) in opt.vars().iter().zip(&ck.weights) {
        let now = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        if name != saved_name || now.iter().zip(saved).any(|(a, b)| a.to_bits() != b.to_bits()) {
            fail(format!("`{name}` is not the checkpoint's `{saved_name}`"));
        }
    }
    if opt.steps() != ck.steps {
        fail(format!("the optimizer is at step {}, the checkpoint at {}", opt.steps(), ck.steps));
    }

    let more = 150;
    let train_loss = run_steps(&model, &mut opt, more, ck.steps)?;
    let (loss2, acc2) = evaluate(&model, &test_x, &test_y)?;
    println!(
        "resumed to step {}: train loss {train_loss:.4}, test loss {loss2:.4}, accuracy {:.1}%",
        opt.steps(),
        100.0 * acc2
    );
    if !(acc >= 0.9 && loss < 0.5 * fresh_loss && loss2 <= 1.1 * loss && acc2 >= acc - 0.02) {
        fail(format!("test loss {fresh_loss:.4} fresh, {loss:.4} restored, {loss2:.4} resumed"));
    }
    Ok(())
}
