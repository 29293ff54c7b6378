//! Minimizing a function with descent-core alone: the Rosenbrock function
//! `f(x, y) = (1 − x)² + 100 (y − x²)²`, minimum 0 at (1, 1), from (−1.5, 2).
//!
//! First with an optimizer composed optax-style, `chain(scale_by_adam, scale_by_learning_rate(
//! schedule))` with a warm-up + cosine learning rate; then with the same Adam built by name
//! from keyword arguments (`descent_core::spec`), as a config file or a Python user would.
//!
//! ```text
//! cargo run --release -p descent-core --example minimize
//! ```
//!
//! Exits non-zero unless both runs end within 1e-3 of (1, 1).

use descent_core::schedule::{warmup_cosine_decay, WarmupCosineDecay};
use descent_core::spec::build_named;
use descent_core::transforms::{ScaleByAdam, ScaleByAdamConfig, ScaleByLearningRate};
use descent_core::{chain, Optimizer, Transform};
use serde_json::json;

fn rosenbrock(x: f64, y: f64) -> f64 {
    (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
}

fn gradient(x: f64, y: f64) -> [f64; 2] {
    [-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)]
}

/// `steps` steps of `tx` from (−1.5, 2): the end point.
fn minimize(name: &str, tx: Box<dyn Transform>, steps: u64) -> descent_core::Result<[f32; 2]> {
    // One parameter tensor of shape [2]; the optimizer keeps its state (Adam's moments).
    let mut params = vec![vec![-1.5f32, 2.0]];
    let mut opt = Optimizer::new(tx, vec![vec![2]], &[params[0].as_slice()])?;
    println!("{name}");
    for t in 0..=steps {
        let [x, y] = [params[0][0] as f64, params[0][1] as f64];
        if t % (steps / 5) == 0 {
            println!("  step {t:5}  f({x:+.5}, {y:+.5}) = {:.3e}", rosenbrock(x, y));
        }
        if t < steps {
            let g = gradient(x, y).map(|v| v as f32).to_vec();
            opt.step_vecs(&mut params, &[g])?;
        }
    }
    Ok([params[0][0], params[0][1]])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = 5000;
    let lr = warmup_cosine_decay(WarmupCosineDecay {
        init_value: 0.0,
        peak_value: 0.05,
        warmup_steps: 100,
        decay_steps: steps,
        end_value: 1e-4,
        exponent: 1.0,
    })?;
    let composed = chain(vec![
        Box::new(ScaleByAdam::new(ScaleByAdamConfig::default())),
        // flip_sign: descend (optax's scale_by_learning_rate multiplies by −lr).
        Box::new(ScaleByLearningRate::new(lr, true)),
    ]);
    let a = minimize("chain(scale_by_adam, scale_by_learning_rate(warmup_cosine_decay))", composed, steps)?;

    let by_name = build_named("optax.adam", &json!({"learning_rate": 0.002}), &[vec![2]])?;
    let b = minimize("optax.adam(learning_rate=0.002)", by_name, 2 * steps)?;

    let mut ok = true;
    for (name, [x, y]) in [("composed", a), ("by name", b)] {
        let dist = ((x as f64 - 1.0).powi(2) + (y as f64 - 1.0).powi(2)).sqrt();
        println!("{name}: end point ({x:.6}, {y:.6}), {dist:.1e} from the minimum");
        ok &= dist < 1e-3;
    }
    if !ok {
        eprintln!("FAILED: the minimum (1, 1) was not reached");
        std::process::exit(1);
    }
    Ok(())
}
