//! descent's optimizer on a candle model of your own: a 2-layer MLP of `candle_nn::Linear`
//! layers on a `VarMap` learns three interleaved spirals, with AdamW, linear warm-up then cosine
//! decay, gradient clipping and no weight decay on the biases (a parameter group by name), and
//! ends by saving weights and optimizer state to a checkpoint.
//!
//! ```text
//! cargo run --release -p descent-train --example own_model [-- --checkpoint PATH]
//! ```
//!
//! Exits non-zero unless the loss fell and the test accuracy reached 90%.

mod common;

use candle_nn::VarMap;
use descent_train::optim::VarOptimizer;
use descent_train::rng::Rng;

use common::{batches, checkpoint_path, datasets, evaluate, optimizer_config, Mlp, STEPS};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ((train_x, train_y), (test_x, test_y)) = datasets()?;
    let mut varmap = VarMap::new();
    let model = Mlp::new(&mut varmap, 0)?;

    // Every variable of the VarMap, in the order of their names; `fc1.bias` and `fc2.bias` in
    // the no-decay group.
    let mut opt = VarOptimizer::for_varmap(&varmap, &optimizer_config(STEPS))?;
    println!("parameters: {}", opt.names().join(", "));

    let (loss0, acc0) = evaluate(&model, &test_x, &test_y)?;
    println!("before training: test loss {loss0:.4}, accuracy {:.1}%", 100.0 * acc0);

    let mut rng = Rng::new(0);
    let (mut sum, mut seen) = (0.0f64, 0usize);
    'run: loop {
        for idx in batches(train_x.dims()[0], &mut rng)? {
            let (x, y) = (train_x.index_select(&idx, 0)?, train_y.index_select(&idx, 0)?);
            let loss = candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
            let grads = loss.backward()?;
            // The multiplier the schedule gives this step, and the norm before clipping.
            let (scale, norm) = (opt.lr_scale(), opt.grad_norm(&grads)?);
            opt.step(&grads)?;
            sum += loss.to_scalar::<f32>()? as f64;
            seen += 1;
            let step = opt.steps();
            if step % 150 == 0 {
                println!(
                    "step {step:5}  lr {:.2e}  grad norm {norm:6.3}  train loss {:.4}",
                    1e-2 * scale,
                    sum / seen as f64
                );
                (sum, seen) = (0.0, 0);
            }
            if step == STEPS {
                break 'run;
            }
        }
    }

    let (loss, acc) = evaluate(&model, &test_x, &test_y)?;
    println!("after {STEPS} steps: test loss {loss:.4}, accuracy {:.1}%", 100.0 * acc);
    let path = checkpoint_path()?;
    opt.save_checkpoint(&path)?;
    println!("checkpoint: {}", path.display());

    if !(loss < 0.3 * loss0 && acc >= 0.9) {
        eprintln!("FAILED: the test loss went from {loss0:.4} to {loss:.4}, accuracy {:.1}%", 100.0 * acc);
        std::process::exit(1);
    }
    Ok(())
}
