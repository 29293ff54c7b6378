//! The README's "From `cargo add` to a trained model": a candle MLP of your own fits
//! `y = sin(3x)` with descent's AdamW and a warm-up + cosine learning rate through
//! [`VarOptimizer`]. `tests/readme.rs` keeps the README's copy equal to this file.
//!
//! ```text
//! cargo run --release -p descent-train --example quickstart
//! ```

// README: start
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, loss::mse, VarBuilder, VarMap};
use descent_core::schedule::{warmup_cosine_decay, WarmupCosineDecay};
use descent_train::{OptimizerConfig, VarOptimizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 256 points of y = sin(3x) on [-1, 1].
    let dev = Device::Cpu;
    let x = Tensor::arange(0f32, 256.0, &dev)?.affine(2.0 / 255.0, -1.0)?.unsqueeze(1)?;
    let y = (&x * 3.0)?.sin()?;

    // A 1-32-1 tanh MLP whose parameters live in a VarMap.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let (fc1, fc2) = (linear(1, 32, vb.pp("fc1"))?, linear(32, 1, vb.pp("fc2"))?);
    let model = |x: &Tensor| fc2.forward(&fc1.forward(x)?.tanh()?);
    // Seeded initial weights (candle's CPU generator takes no seed): uniform in ±1/√fan_in, as
    // torch's Linear draws them.
    let mut rng = descent_train::rng::Rng::new(0);
    for (name, fan_in) in [("fc1.weight", 1.0), ("fc1.bias", 1.0), ("fc2.weight", 32.0), ("fc2.bias", 32.0)] {
        let var = varmap.data().lock().unwrap()[name].clone();
        let bound = 1.0 / f32::sqrt(fan_in);
        let values: Vec<f32> = (0..var.elem_count()).map(|_| rng.range(-bound, bound)).collect();
        var.set(&Tensor::from_vec(values, var.shape(), &dev)?)?;
    }

    // torch.optim.AdamW(lr=1e-2), its rate multiplied by a warm-up + cosine schedule.
    let steps = 500;
    let schedule = warmup_cosine_decay(WarmupCosineDecay {
        init_value: 0.0,
        peak_value: 1.0,
        warmup_steps: 25,
        decay_steps: steps,
        end_value: 0.0,
        exponent: 1.0,
    })?;
    let config = OptimizerConfig {
        optimizer: "adamw".into(),
        lr: Some(1e-2),
        schedule: Some(Arc::new(schedule)),
        ..Default::default()
    };
    let mut opt = VarOptimizer::for_varmap(&varmap, &config)?;

    let first = mse(&model(&x)?, &y)?.to_scalar::<f32>()?;
    for _ in 0..steps {
        let loss = mse(&model(&x)?, &y)?;
        opt.step(&loss.backward()?)?;
    }
    let last = mse(&model(&x)?, &y)?.to_scalar::<f32>()?;
    println!("mean squared error: {first:.4} before, {last:.4} after {steps} steps");
    assert!(last < 0.03, "the model did not fit: {last}"); // predicting 0 scores about 0.5
    Ok(())
}
// README: end
