//! Gradient accumulation: K micro-batches of B per optimizer step train as one batch of K·B.

use candle_core::{Device, Tensor};
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::model::{Init, LeNet5, Mlp, Model};
use descent_train::rng::Rng;
use descent_train::train::{
    train_from, EpochEnd, EpochMetrics, Hooks, Loss, LrSchedule, StepMetrics, Stop, TrainConfig,
};

/// MNIST-shaped data that can be learned: the label is the brightest of ten pixel bands.
fn images(n: usize, rng: &mut Rng) -> Dataset {
    let mut x = vec![0f32; n * 784];
    let mut y = vec![0u32; n];
    for i in 0..n {
        let label = (rng.next_u64() % 10) as usize;
        for (j, v) in x[i * 784..(i + 1) * 784].iter_mut().enumerate() {
            *v = rng.range(0.0, 0.5) + if j / 78 == label { 0.5 } else { 0.0 };
        }
        y[i] = label as u32;
    }
    Dataset {
        x: Tensor::from_vec(x, (n, 1, 28, 28), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
    }
}

/// The step losses of a run, and a checkpoint from each epoch's end.
#[derive(Default)]
struct Record {
    losses: Vec<f32>,
    checkpoints: Vec<Checkpoint>,
}

impl Hooks for &mut Record {
    fn on_step(&mut self, s: &StepMetrics) -> descent_train::train::Control {
        self.losses.push(s.loss);
        descent_train::train::Control::Continue
    }
    fn on_epoch(&mut self, _m: &EpochMetrics, end: &mut EpochEnd) -> descent_train::Result<()> {
        self.checkpoints.push(end.checkpoint()?);
        Ok(())
    }
}

fn weights(m: &dyn Model) -> Vec<f32> {
    m.named_vars().iter().flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Trains a fresh model (seed 0) and returns its step losses and final weights.
fn run(model: &str, batch: usize, accumulate: usize, epochs: usize) -> (Vec<f32>, Vec<f32>, Vec<EpochMetrics>) {
    let mut rng = Rng::new(0);
    let (tr, te) = (images(1000, &mut rng), images(200, &mut rng));
    let m: Box<dyn Model> = match model {
        "mlp" => Box::new(Mlp::new(Init::TorchDefault, 0.0, &mut rng, &Device::Cpu).unwrap()),
        _ => Box::new(LeNet5::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap()),
    };
    let cfg = TrainConfig {
        clip_norm: Some(0.5),
        schedule: LrSchedule::Cosine,
        accumulate,
        ..TrainConfig::new("adamw", Some(2e-3), epochs, batch, Loss::CrossEntropy)
    };
    let mut rec = Record::default();
    let (history, stop) = train_from(m.as_ref(), &tr, &te, &cfg, None, &mut rec).unwrap();
    assert_eq!(stop, Stop::Epochs);
    (rec.losses, weights(m.as_ref()), history)
}

#[test]
fn four_micro_batches_of_32_train_as_one_batch_of_128() {
    // 1000 samples: 7 steps of 128 and a last one of 104 (three micro-batches of 32 and one of
    // 8, weighted by their samples), with clipping of the accumulated gradient and a cosine
    // schedule over the optimizer steps.
    for model in ["mlp", "lenet"] {
        let (l1, w1, h1) = run(model, 128, 1, 2);
        let (l4, w4, h4) = run(model, 32, 4, 2);
        assert_eq!(l1.len(), 16, "{model}: 8 optimizer steps per epoch");
        assert_eq!(l4.len(), l1.len(), "{model}: accumulation counts optimizer steps");
        let (dl, dw) = (max_diff(&l1, &l4), max_diff(&w1, &w4));
        println!(
            "{model}: batch 128 against 4 × 32 over 16 steps: loss differs by {dl:.2e} at most, weights by {dw:.2e}"
        );
        assert!(dl < 1e-5, "{model}: losses {l1:?} vs {l4:?}");
        assert!(dw < 1e-5, "{model}: weights differ by {dw}");
        for (a, b) in h1.iter().zip(&h4) {
            assert_eq!(a.steps, b.steps);
            assert!((a.test_loss - b.test_loss).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn one_micro_batch_per_step_is_the_plain_run_bit_for_bit() {
    let (l1, w1, _) = run("mlp", 100, 1, 1);
    // accumulate 1 takes the plain path; the same numbers to the bit.
    let (l2, w2, _) = run("mlp", 100, 1, 1);
    assert_eq!(l1, l2);
    assert_eq!(w1, w2);
}

#[test]
fn an_accumulating_run_resumes_from_a_checkpoint_inside_an_epoch_bit_for_bit() {
    let mut rng = Rng::new(0);
    let (tr, te) = (images(1000, &mut rng), images(200, &mut rng));
    let fresh = || Mlp::new(Init::TorchDefault, 0.0, &mut Rng::new(5), &Device::Cpu).unwrap();
    let cfg = |max_steps| TrainConfig {
        max_steps,
        accumulate: 3,
        ..TrainConfig::new("adam", Some(1e-3), 2, 40, Loss::CrossEntropy)
    };
    let whole = fresh();
    let mut all = Record::default();
    train_from(&whole, &tr, &te, &cfg(None), None, &mut all).unwrap();
    // 1000 / 120 → 9 steps per epoch; stop after 5 (inside epoch 1), then go on.
    let cut = fresh();
    let mut first = Record::default();
    let (_, stop) = train_from(&cut, &tr, &te, &cfg(Some(5)), None, &mut first).unwrap();
    assert_eq!(stop, Stop::Steps);
    let ck = first.checkpoints.last().unwrap().clone();
    assert!(ck.mid_epoch() && ck.steps == 5);
    let resumed = fresh();
    let mut rest = Record::default();
    train_from(&resumed, &tr, &te, &cfg(None), Some(&ck), &mut rest).unwrap();
    assert_eq!([first.losses, rest.losses].concat(), all.losses);
    assert_eq!(weights(&resumed), weights(&whole));
    // A checkpoint of the accumulating run does not fit another effective batch.
    let other = TrainConfig { accumulate: 2, ..cfg(None) };
    let err = train_from(&fresh(), &tr, &te, &other, Some(&ck), &mut Record::default()).err().unwrap();
    assert!(err.to_string().contains("batch"), "{err}");
}

#[test]
fn closure_optimizers_refuse_accumulation() {
    let mut rng = Rng::new(0);
    let (tr, te) = (images(100, &mut rng), images(50, &mut rng));
    let m = Mlp::new(Init::TorchDefault, 0.0, &mut rng, &Device::Cpu).unwrap();
    let cfg = TrainConfig { accumulate: 2, ..TrainConfig::new("torch.lbfgs", Some(1.0), 1, 10, Loss::CrossEntropy) };
    let err = train_from(&m, &tr, &te, &cfg, None, &mut Record::default()).err().unwrap().to_string();
    assert!(err.contains("accumulation") && err.contains("torch.lbfgs"), "{err}");
    let zero = TrainConfig { accumulate: 0, ..TrainConfig::new("adam", Some(1.0), 1, 10, Loss::CrossEntropy) };
    let err = train_from(&m, &tr, &te, &zero, None, &mut Record::default()).err().unwrap().to_string();
    assert!(err.contains("accumulate"), "{err}");
}
