//! Short end-to-end runs that must learn.

use std::path::PathBuf;

use candle_core::Device;
use descent_train::data::Dataset;
use descent_train::mnist;
use descent_train::model::{Init, LinearRegression, Mlp, Model};
use descent_train::rng::Rng;
use descent_train::train::{train, Loss, TrainConfig};
use serde_json::json;

fn cfg(optimizer: &str, lr: f64, epochs: usize, batch: usize) -> TrainConfig {
    TrainConfig {
        optimizer: optimizer.into(),
        lr: Some(lr),
        hparams: json!({}),
        epochs,
        max_steps: None,
        batch_size: batch,
        seed: 0,
        loss: Loss::Mse,
    }
}

#[test]
fn linear_regression_recovers_the_slope() {
    let mut rng = Rng::new(42);
    let (tr, te) = (Dataset::regression(2000, &mut rng).unwrap(), Dataset::regression(500, &mut rng).unwrap());
    let model = LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap();
    let h = train(&model, &tr, &te, &cfg("sgd", 0.1, 20, 32), |_| {}).unwrap();
    let w = model.layer.weight.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((w - 2.0).abs() < 0.05, "slope {w}");
    assert!(h.last().unwrap().test_loss < 0.1, "{:?}", h.last());
}

#[test]
fn the_same_seed_gives_the_same_numbers() {
    let run = || {
        let mut rng = Rng::new(3);
        let (tr, te) = (Dataset::regression(300, &mut rng).unwrap(), Dataset::regression(100, &mut rng).unwrap());
        let model = LinearRegression::new(Init::XavierUniform, &mut rng, &Device::Cpu).unwrap();
        let h = train(&model, &tr, &te, &cfg("adam", 0.05, 2, 16), |_| {}).unwrap();
        (
            h.iter().map(|m| (m.train_loss, m.test_loss)).collect::<Vec<_>>(),
            model.named_vars()[1].1.as_tensor().to_vec2::<f32>().unwrap(),
        )
    };
    assert_eq!(run(), run());
}

#[test]
fn mlp_learns_mnist_in_a_few_hundred_steps() {
    let m = mnist::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    let tr = Dataset::mnist(&m.train, false).unwrap();
    let te = Dataset::mnist(&m.test, false).unwrap();
    let mut rng = Rng::new(0);
    let model = Mlp::new(Init::TorchDefault, 0.2, &mut rng, &Device::Cpu).unwrap();
    let mut c = cfg("adam", 1e-3, 1, 64);
    c.loss = Loss::CrossEntropy;
    c.max_steps = Some(300);
    let h = train(&model, &tr, &te, &c, |_| {}).unwrap();
    let last = h.last().unwrap();
    assert_eq!(last.steps, 300);
    assert!(last.test_accuracy.unwrap() > 0.88, "{last:?}");
    assert!(last.test_loss < 0.45, "{last:?}");
}

#[test]
fn a_diverging_run_stops_with_the_step() {
    let mut rng = Rng::new(1);
    let (tr, te) = (Dataset::regression(256, &mut rng).unwrap(), Dataset::regression(64, &mut rng).unwrap());
    let model = LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap();
    let e = train(&model, &tr, &te, &cfg("sgd", 1e6, 5, 8), |_| {}).unwrap_err().to_string();
    assert!(e.contains("at step") && e.contains("training stopped"), "{e}");
}
