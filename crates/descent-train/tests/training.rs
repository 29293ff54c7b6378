//! Short end-to-end runs that must learn.

mod scratch;

use std::path::PathBuf;

use candle_core::Device;
use descent_train::data::Dataset;
use descent_train::mnist;
use descent_train::model::{Init, LinearRegression, Mlp, Model};
use descent_train::rng::Rng;
use descent_train::train::{train, Loss, Stop, TrainConfig};
use serde_json::json;

fn cfg(optimizer: &str, lr: f64, epochs: usize, batch: usize) -> TrainConfig {
    TrainConfig { hparams: json!({}), ..TrainConfig::new(optimizer, Some(lr), epochs, batch, Loss::Mse) }
}

fn regression(seed: u64) -> (Dataset, Dataset, LinearRegression) {
    let mut rng = Rng::new(seed);
    let (tr, te) = (Dataset::regression(1000, &mut rng).unwrap(), Dataset::regression(300, &mut rng).unwrap());
    (tr, te, LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap())
}

fn slope(m: &LinearRegression) -> f32 {
    m.layer.weight.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

#[test]
fn linear_regression_recovers_the_slope() {
    let mut rng = Rng::new(42);
    let (tr, te) = (Dataset::regression(2000, &mut rng).unwrap(), Dataset::regression(500, &mut rng).unwrap());
    let model = LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap();
    let (h, stop) = train(&model, &tr, &te, &cfg("sgd", 0.1, 20, 32), |_| {}).unwrap();
    assert_eq!(stop, Stop::Epochs);
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
        let (h, _) = train(&model, &tr, &te, &cfg("adam", 0.05, 2, 16), |_| {}).unwrap();
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
    let (h, stop) = train(&model, &tr, &te, &c, |_| {}).unwrap();
    assert_eq!(stop, Stop::Steps);
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

#[test]
fn early_stopping_restores_the_best_weights() {
    let (tr, te, model) = regression(5);
    // A learning rate this large makes the test loss bounce; patience 1 stops at the first rise.
    let mut c = cfg("sgd", 0.9, 30, 4);
    c.patience = Some(1);
    let (h, stop) = train(&model, &tr, &te, &c, |_| {}).unwrap();
    let Stop::EarlyStopping { best_epoch } = stop else { panic!("{stop:?} after {} epochs", h.len()) };
    let best = h[best_epoch - 1].test_loss;
    assert!(h.iter().all(|m| m.test_loss >= best));
    assert!(h.len() < 30 && h.last().unwrap().test_loss > best);
    // The model now holds the best epoch's weights: its test loss is the best one.
    let (loss, _) = descent_train::train::evaluate(&model, &te, &Loss::Mse).unwrap();
    assert!((loss - best).abs() < 1e-9, "{loss} vs {best}");
}

#[test]
fn target_accuracy_stops_the_run() {
    let m = mnist::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    let (tr, te) = (Dataset::mnist(&m.train, false).unwrap(), Dataset::mnist(&m.test, false).unwrap());
    let model = Mlp::new(Init::TorchDefault, 0.0, &mut Rng::new(0), &Device::Cpu).unwrap();
    let mut c = TrainConfig::new("adam", Some(1e-3), 5, 1000, Loss::CrossEntropy);
    c.target_accuracy = Some(0.5);
    let (h, stop) = train(&model, &tr, &te, &c, |_| {}).unwrap();
    assert_eq!((stop, h.len()), (Stop::TargetAccuracy, 1));
    // An evaluation where a step limit cuts the epoch is no epoch's: the run stops at its limit,
    // and a resumed one judges the epoch whole.
    let model = Mlp::new(Init::TorchDefault, 0.0, &mut Rng::new(0), &Device::Cpu).unwrap();
    c.max_steps = Some(40);
    let (h, stop) = train(&model, &tr, &te, &c, |_| {}).unwrap();
    assert!(h[0].test_accuracy.unwrap() > 0.5, "{:?}", h[0]);
    assert_eq!((stop, h.len()), (Stop::Steps, 1));
}

#[test]
fn penalties_and_clipping_change_the_result_as_expected() {
    let run = |f: &dyn Fn(&mut TrainConfig)| {
        let (tr, te, model) = regression(9);
        let mut c = cfg("sgd", 0.1, 10, 32);
        f(&mut c);
        train(&model, &tr, &te, &c, |_| {}).unwrap();
        slope(&model)
    };
    let plain = run(&|_| {});
    let l2 = run(&|c| c.l2 = 1.0);
    let l1 = run(&|c| c.l1 = 0.5);
    assert!((plain - 2.0).abs() < 0.1, "{plain}");
    // Ridge: minimizer of E(2x - w x)^2 + w^2/2 with E x^2 = 1/3 is w = 2/3 / (1/3 + 1/2) = 0.8.
    assert!((l2 - 0.8).abs() < 0.1, "{l2}");
    assert!(l1 < plain - 0.3, "{l1} vs {plain}");
    // Clipping every gradient to 1e-4 per element barely moves the weights in 10 epochs.
    let clipped = run(&|c| c.clip_value = Some(1e-4));
    assert!((clipped - plain).abs() > 1.0, "{clipped}");
}

/// A run stopped after an epoch, checkpointed to disk, reloaded into a fresh model and continued
/// gives bit for bit the weights of an uninterrupted run; a mismatched checkpoint is refused whole.
#[test]
fn resume_from_a_checkpoint_is_exact() {
    use descent_train::checkpoint::Checkpoint;
    use descent_train::train::train_from;
    let m = mnist::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    // A small slice of MNIST keeps this fast; dropout exercises the generator state.
    let tr = Dataset::mnist(&m.test, false).unwrap();
    let (x, y) = tr.range(0, 2000).unwrap();
    let tr = Dataset { x, y };
    let te = tr.clone();
    let mut c = TrainConfig::new("adamw", Some(1e-3), 3, 50, Loss::CrossEntropy);
    c.clip_norm = Some(1.0);
    // A plateau scheduler that cuts the rate after any epoch without improvement: its state must
    // travel in the checkpoint too.
    c.schedule = descent_train::train::LrSchedule::Plateau { factor: 0.5, patience: 0 };
    let new_model = || Mlp::new(Init::TorchDefault, 0.3, &mut Rng::new(11), &Device::Cpu).unwrap();
    let weights = |model: &Mlp| {
        model
            .named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect::<Vec<_>>()
    };

    let full = new_model();
    train(&full, &tr, &te, &c, |_| {}).unwrap();

    let dir = scratch::Scratch::new("resume", "checkpoint");
    let path = dir.join("checkpoint.safetensors");
    let first = new_model();
    let mut c1 = c.clone();
    c1.epochs = 1;
    train_from(&first, &tr, &te, &c1, None, |_: &_, end: &mut descent_train::train::EpochEnd| {
        end.checkpoint()?.save(&path)
    })
    .unwrap();
    // Written whole by a rename: no temporary file is left beside it.
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.epoch, 1);
    let resumed = new_model();
    let (h, _) =
        train_from(&resumed, &tr, &te, &c, Some(&ck), |_: &_, _: &mut descent_train::train::EpochEnd| Ok(())).unwrap();
    assert_eq!(h.iter().map(|m| m.epoch).collect::<Vec<_>>(), vec![2, 3]);
    for (a, b) in weights(&full).iter().flatten().zip(weights(&resumed).iter().flatten()) {
        assert_eq!(a.to_bits(), b.to_bits());
    }

    // A checkpoint of another model is refused, and nothing is changed.
    let lr_model = LinearRegression::new(Init::TorchDefault, &mut Rng::new(1), &Device::Cpu).unwrap();
    let before = lr_model.named_vars()[1].1.as_tensor().to_vec2::<f32>().unwrap();
    let mut opt = descent_train::train::optimizer_for(&lr_model, &cfg("adam", 0.1, 1, 8)).unwrap();
    let e = ck.apply(&lr_model, &mut opt).unwrap_err().to_string();
    assert!(e.contains("checkpoint"), "{e}");
    assert_eq!(lr_model.named_vars()[1].1.as_tensor().to_vec2::<f32>().unwrap(), before);

    // A corrupt file is refused with the reason.
    std::fs::write(&path, b"not a checkpoint").unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains("checkpoint.safetensors") && e.contains("not a safetensors file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn schedules_set_the_learning_rate_multiplier() {
    use descent_train::train::LrSchedule;
    let run = |s: LrSchedule, epochs: usize| {
        let (tr, te, model) = regression(2);
        let mut c = cfg("sgd", 0.05, epochs, 100);
        c.schedule = s;
        train(&model, &tr, &te, &c, |_| {}).unwrap().0.iter().map(|m| m.lr_scale).collect::<Vec<_>>()
    };
    // 1000 samples / 100 per batch = 10 steps an epoch; the multiplier shown is the last step's.
    let cos = run(LrSchedule::Cosine, 2);
    assert!((cos[0] - 0.5 * (1.0 + (std::f64::consts::PI * 9.0 / 20.0).cos())).abs() < 1e-12, "{cos:?}");
    assert!(cos[1] < 0.01);
    assert_eq!(run(LrSchedule::Step { every: 2, gamma: 0.5 }, 4), vec![1.0, 1.0, 0.5, 0.5]);
    let exp = run(LrSchedule::Exponential { gamma: 0.9 }, 3);
    assert!((exp[2] - 0.81).abs() < 1e-12);
    let lin = run(LrSchedule::Linear, 1);
    assert!((lin[0] - 0.1).abs() < 1e-12, "{lin:?}");
    assert!(LrSchedule::parse("cosinus").unwrap_err().to_string().contains("warmup_cosine"));
    // Library schedules by name: torch StepLR stepped per epoch, optax linear per step.
    use descent_train::train::SpecSchedule;
    let torch = SpecSchedule::build("torch.StepLR", &json!({"step_size": 1, "gamma": 0.5}), 0.05, true).unwrap();
    assert_eq!(run(LrSchedule::Spec(torch), 3), vec![1.0, 0.5, 0.25]);
    let optax = SpecSchedule::build(
        "optax.linear_schedule",
        &json!({"init_value": 0.05, "end_value": 0.0, "transition_steps": 20}),
        0.05,
        false,
    )
    .unwrap();
    let lin2 = run(LrSchedule::Spec(optax), 2);
    assert!((lin2[0] - 0.55).abs() < 1e-9 && (lin2[1] - 0.05).abs() < 1e-9, "{lin2:?}");
    let e = SpecSchedule::build("torch.StepLR", &json!({}), 0.1, true).unwrap_err().to_string();
    assert!(e.contains("step_size"), "{e}");
}

/// nanoGPT's `get_lr` (train.py) with its CPU recipe: lr 1e-3, 100 warm-up steps, cosine to 1e-4
/// at step 2000 (`WarmupCosineTo`, the multiplier of lr).
#[test]
fn warmup_cosine_to_a_floor_is_nanogpts_get_lr() {
    use descent_train::train::LrSchedule;
    let (lr, min_lr, warmup, decay) = (1e-3, 1e-4, 100u64, 2000u64);
    let get_lr = |it: u64| -> f64 {
        if it < warmup {
            return lr * (it + 1) as f64 / (warmup + 1) as f64;
        }
        if it > decay {
            return min_lr;
        }
        let ratio = (it - warmup) as f64 / (decay - warmup) as f64;
        min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (lr - min_lr)
    };
    for total in [2000, 5000] {
        let s = LrSchedule::WarmupCosineTo { warmup, decay: Some(decay), min_scale: min_lr / lr };
        for it in [0, 1, 50, 99, 100, 101, 1050, 1999, 2000, 2001, 4999] {
            let ours = lr * s.multiplier(it, total, 1);
            assert!((ours - get_lr(it)).abs() <= 1e-15, "step {it} of {total}: {ours} against {}", get_lr(it));
        }
    }
    assert!(
        (LrSchedule::WarmupCosineTo { warmup, decay: Some(decay), min_scale: 0.1 }.multiplier(1050, 9, 1) - 0.55).abs()
            < 1e-12
    );
    // Without an end, the decay ends with the run.
    let to_end = LrSchedule::WarmupCosineTo { warmup: 0, decay: None, min_scale: 0.0 };
    assert!((to_end.multiplier(50, 100, 1) - 0.5).abs() < 1e-12 && to_end.multiplier(100, 100, 1).abs() < 1e-12);
}

/// Groups by name: no weight decay on biases leaves them where plain AdamW would shrink them.
#[test]
fn parameter_groups_by_name() {
    let run = |groups: Vec<(String, serde_json::Value)>| {
        let (tr, te, model) = regression(4);
        let mut c = cfg("adamw", 0.01, 3, 32);
        c.hparams = json!({"weight_decay": 50.0});
        c.groups = groups;
        train(&model, &tr, &te, &c, |_| {}).unwrap();
        let v = model.named_vars();
        (v[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], slope(&model))
    };
    let (b_all, w_all) = run(vec![]);
    let (b_grp, w_grp) = run(vec![("bias".into(), json!({"weight_decay": 0.0}))]);
    // Heavy decay pins both near 0; without decay on the bias it is free, the weight still pinned.
    assert!(b_all.abs() < 0.05 && w_all.abs() < 0.2, "{b_all} {w_all}");
    assert!(w_grp.abs() < 0.2, "{w_grp}");
    assert!((b_grp - b_all).abs() > 1e-4, "{b_grp} vs {b_all}");
    // Works for optax optimizers too, and a bad override is an error naming it.
    let (tr, te, model) = regression(4);
    let mut c = cfg("lion", 1e-3, 1, 32);
    c.groups = vec![("weight".into(), json!({"b1": 0.5}))];
    train(&model, &tr, &te, &c, |_| {}).unwrap();
    c.groups = vec![("weight".into(), json!({"beta1": 0.5}))];
    let e = train(&model, &tr, &te, &c, |_| {}).unwrap_err().to_string();
    assert!(e.contains("beta1") && e.contains("b1"), "{e}");
}

#[test]
fn a_small_loss_change_stops_the_run() {
    let (tr, te, model) = regression(6);
    let mut c = cfg("sgd", 0.1, 50, 32);
    c.min_loss_change = Some(1e-3);
    let (h, stop) = train(&model, &tr, &te, &c, |_| {}).unwrap();
    assert_eq!(stop, Stop::Converged);
    assert!(h.len() < 50);
    let n = h.len();
    assert!((h[n - 1].train_loss - h[n - 2].train_loss).abs() < 1e-3);
}

/// What a run's hooks were called for, in order.
#[derive(Default)]
struct Calls(Vec<&'static str>);

impl descent_train::train::Hooks for &mut Calls {
    fn on_start(&mut self) -> descent_train::Result<()> {
        self.0.push("start");
        Ok(())
    }
    fn on_step(&mut self, _: &descent_train::train::StepMetrics) -> descent_train::train::Control {
        self.0.push("step");
        descent_train::train::Control::Continue
    }
    fn on_epoch(
        &mut self,
        _: &descent_train::train::EpochMetrics,
        _: &mut descent_train::train::EpochEnd,
    ) -> descent_train::Result<()> {
        self.0.push("epoch");
        Ok(())
    }
}

/// `Hooks::on_start` comes once, before the first step, and only once the checkpoint a run
/// resumes from has been applied and found to fit: a resume refused before it trains has not
/// started the hooks (a run folder's files are cut back and rewritten there).
#[test]
fn hooks_start_only_once_a_resume_is_accepted() {
    use descent_train::checkpoint::Checkpoint;
    use descent_train::train::{train_from, EpochEnd, EpochMetrics};
    let (tr, te, model) = regression(4);
    let mut c = cfg("sgd", 0.1, 2, 100);
    let mut calls = Calls::default();
    train_from(&model, &tr, &te, &c, None, &mut calls).unwrap();
    assert_eq!(calls.0[..2], ["start", "step"]);
    assert_eq!(calls.0.iter().filter(|c| **c == "start").count(), 1);
    // Cut inside the second epoch (10 batches an epoch): the checkpoint holds batch 5 of epoch 2.
    c.max_steps = Some(15);
    let mut ck = None;
    train_from(&model, &tr, &te, &c, None, |_: &EpochMetrics, end: &mut EpochEnd| {
        ck = Some(end.checkpoint()?);
        Ok(())
    })
    .unwrap();
    let ck: Checkpoint = ck.unwrap();
    assert_eq!(ck.progress.as_ref().map(|p| p.batch), Some(5));
    c.max_steps = Some(20);
    // A training set of 3 batches an epoch: batch 5 does not exist.
    let (x, y) = tr.range(0, 300).unwrap();
    let small = Dataset { x, y };
    let mut refused = Calls::default();
    let e = train_from(&model, &small, &te, &c, Some(&ck), &mut refused).unwrap_err().to_string();
    assert!(e.contains("batch 5") && e.contains("3 batches"), "{e}");
    assert!(refused.0.is_empty(), "{:?}", refused.0);
    let mut resumed = Calls::default();
    train_from(&model, &tr, &te, &c, Some(&ck), &mut resumed).unwrap();
    assert_eq!(resumed.0[..2], ["start", "step"]);
    assert_eq!(resumed.0.iter().filter(|c| **c == "step").count(), 5);
}

/// At a high temperature the distillation term `α·T²·KL(p_T ‖ q_T)` tends to the logit matching
/// `α·Σᵢ (dᵢ − d̄)² / (2C)` per sample (`d = z_t − z_s`), a positive number: it must not dissolve
/// into rounding (its terms cancel to order `1/T²`).
#[test]
fn distillation_loss_keeps_its_digits_at_a_high_temperature() {
    use candle_core::{DType, Tensor};
    use descent_train::train::Distillation;
    let (b, c) = (4usize, 10usize);
    let mut rng = Rng::new(3);
    let zt: Vec<f32> = (0..b * c).map(|_| rng.uniform() * 20.0 - 10.0).collect();
    let zs: Vec<f32> = (0..b * c).map(|_| rng.uniform() * 20.0 - 10.0).collect();
    let dev = Device::Cpu;
    let student = Tensor::from_vec(zs.clone(), (b, c), &dev).unwrap();
    let y = Tensor::from_vec(vec![0u32; b], b, &dev).unwrap();
    for t in [1e3, 1e4] {
        let teacher_logits = Tensor::from_vec(zt.clone(), (b, c), &dev).unwrap().to_dtype(DType::F64).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&(teacher_logits / t).unwrap()).unwrap();
        let d = Distillation { teachers: &[], alpha: 1.0, temperature: t };
        let loss = d.loss(&student, &p, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        let mut limit = 0.0;
        for i in 0..b {
            let diff: Vec<f64> = (0..c).map(|j| (zt[i * c + j] - zs[i * c + j]) as f64).collect();
            let mean = diff.iter().sum::<f64>() / c as f64;
            limit += diff.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (2.0 * c as f64);
        }
        limit /= b as f64;
        assert!((loss - limit).abs() <= 2e-3 * limit, "T = {t}: loss {loss}, its limit {limit}");
    }
}

/// What a loop cannot honour is refused before any step, naming it: a variable given twice (tied
/// weights would be stepped twice), an empty training or evaluation set, a schedule's factor that
/// is not one, a step of more samples than a count holds.
#[test]
fn what_a_run_cannot_honour_is_refused_before_it_starts() {
    use descent_train::train::LrSchedule;
    use descent_train::{OptimizerConfig, VarOptimizer};
    let (tr, te, model) = regression(5);
    let w = model.layer.weight.clone();
    let tied = VarOptimizer::for_vars(vec![("a".into(), w.clone()), ("b".into(), w)], &OptimizerConfig::default());
    let e = tied.err().expect("a tied weight given twice is refused").to_string();
    assert!(e.contains("`a`") && e.contains("`b`") && e.contains("one variable"), "{e}");

    let before = slope(&model);
    let err = |train_set: &Dataset, test_set: &Dataset, c: &TrainConfig| {
        train(&model, train_set, test_set, c, |_| {}).expect_err("refused").to_string()
    };
    let empty = Dataset::regression(1, &mut Rng::new(1)).unwrap();
    let empty = Dataset { x: empty.x.narrow(0, 0, 0).unwrap(), y: empty.y.narrow(0, 0, 0).unwrap() };
    assert!(err(&empty, &te, &cfg("sgd", 0.1, 1, 8)).contains("training set is empty"));
    assert!(err(&tr, &empty, &cfg("sgd", 0.1, 1, 8)).contains("evaluation set is empty"));
    for (schedule, field) in [
        (LrSchedule::Exponential { gamma: -1.0 }, "`gamma`"),
        (LrSchedule::Step { every: 0, gamma: 0.5 }, "`every`"),
        (LrSchedule::WarmupCosine { warmup: f64::NAN }, "`warmup`"),
        (LrSchedule::WarmupCosineTo { warmup: 3, decay: None, min_scale: -0.5 }, "`min_scale`"),
    ] {
        let c = TrainConfig { schedule, ..cfg("sgd", 0.1, 2, 8) };
        assert!(err(&tr, &te, &c).contains(field), "{field}");
    }
    let c = TrainConfig { accumulate: 2, ..cfg("sgd", 0.1, 1, usize::MAX / 2 + 1) };
    assert!(err(&tr, &te, &c).contains("accumulate"));
    assert_eq!(slope(&model), before, "nothing stepped");
}

/// A composition whose per-parameter lists name every variable (optax `partition` labels) builds
/// with its rates in its links, and a rate of the run's is refused as one it has no argument for:
/// whether it takes a rate of its own is tried on the variables' own shapes, not on one parameter
/// (where the list does not fit, and the rate would reach the build as an unknown keyword).
#[test]
fn a_partition_with_labels_for_every_variable_builds() {
    use descent_train::{OptimizerConfig, VarOptimizer};
    let (_, _, model) = regression(6);
    let named = vec![("w".to_string(), model.layer.weight.clone()), ("b".to_string(), model.layer.bias.clone())];
    let cfg = OptimizerConfig {
        optimizer: "optax.partition".into(),
        lr: Some(0.1),
        hparams: json!({"transforms": {"a": ["adam", {"learning_rate": 0.01}], "b": ["sgd", {"learning_rate": 0.05}]},
                        "param_labels": ["a", "b"]}),
        ..Default::default()
    };
    let err = VarOptimizer::for_vars(named.clone(), &cfg).err().expect("a rate it cannot take").to_string();
    assert!(err.contains("takes no learning rate"), "{err}");
    VarOptimizer::for_vars(named, &OptimizerConfig { lr: None, ..cfg }).expect("the labels fit the two variables");
}

/// `OptimizerConfig::non_finite`: with `Skip`, a step whose gradients hold a NaN leaves the
/// variables as they were and says so; the next finite step goes on.
#[test]
fn a_non_finite_step_is_skipped_when_asked() {
    use candle_core::{Tensor, Var};
    use descent_train::{NonFinite, OptimizerConfig, VarOptimizer};
    let w = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
    let cfg = OptimizerConfig { lr: Some(0.1), non_finite: NonFinite::Skip, ..Default::default() };
    let mut opt = VarOptimizer::for_vars(vec![("w".into(), w.clone())], &cfg).unwrap();
    let loss = |scale: f32| {
        let s = Tensor::from_vec(vec![scale, 1.0], 2, &Device::Cpu).unwrap();
        (w.as_tensor() * s).unwrap().sum_all().unwrap().backward().unwrap()
    };
    assert!(!opt.step(&loss(f32::NAN)).unwrap(), "skipped");
    assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, -2.0]);
    assert!(opt.step(&loss(1.0)).unwrap());
    assert_ne!(w.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, -2.0]);
    let closure = OptimizerConfig { optimizer: "lbfgs".into(), non_finite: NonFinite::Skip, ..Default::default() };
    assert!(VarOptimizer::for_vars(vec![("w".into(), w.clone())], &closure).is_err());
}

/// Mean absolute error, a loss the loop does not have.
fn mae(out: &candle_core::Tensor, y: &candle_core::Tensor) -> descent_train::Result<candle_core::Tensor> {
    Ok(out.broadcast_sub(y)?.abs()?.mean_all()?)
}

/// A loss of the user's own trains through the loop (here the mean absolute error, whose
/// minimum is the same slope): the run learns, the evaluation reports that loss over the test
/// set and no accuracy; a loss that gives more than one value is refused naming its shape.
#[test]
fn a_custom_loss_trains_through_the_loop() {
    let (tr, te, model) = regression(5);
    let c = TrainConfig { loss: Loss::custom(mae), ..cfg("adam", 0.05, 10, 32) };
    let (h, _) = train(&model, &tr, &te, &c, |_| {}).unwrap();
    assert!((slope(&model) - 2.0).abs() < 0.1, "slope {}", slope(&model));
    let last = h.last().unwrap();
    assert_eq!(last.test_accuracy, None);
    let (x, y) = te.range(0, te.len()).unwrap();
    let want = mae(&model.forward(&x, descent_train::model::Mode::Eval, &mut Rng::new(0)).unwrap(), &y).unwrap();
    let want = want.to_scalar::<f32>().unwrap() as f64;
    assert!((last.test_loss - want).abs() <= 1e-6 * want.max(1.0), "{} vs {want}", last.test_loss);
    // One loss object, cloned, is the same loss; two made apart are not (nothing can tell whether
    // two closures compute the same thing).
    assert_eq!(c.loss.clone(), c.loss);
    assert_ne!(Loss::custom(mae), Loss::custom(mae));
    assert_ne!(Loss::custom(mae), Loss::Mse);
    // No accuracy is measured: a target accuracy would never be reached, and is refused.
    let c = TrainConfig { target_accuracy: Some(0.9), ..c };
    let e = train(&model, &tr, &te, &c, |_| {}).unwrap_err().to_string();
    assert!(e.contains("target accuracy"), "{e}");

    fn per_sample(out: &candle_core::Tensor, y: &candle_core::Tensor) -> descent_train::Result<candle_core::Tensor> {
        Ok(out.broadcast_sub(y)?.abs()?)
    }
    let (tr, te, model) = regression(6);
    let c = TrainConfig { loss: Loss::custom(per_sample), ..cfg("adam", 0.05, 1, 32) };
    let e = train(&model, &tr, &te, &c, |_| {}).unwrap_err().to_string();
    assert!(e.contains("custom loss") && e.contains("[32, 1]"), "{e}");
}

/// A custom loss may be a closure holding its own settings (here the Huber loss's δ, as
/// `torch.nn.HuberLoss(delta=…)`): the run uses the captured value, and the evaluation reports
/// that loss, not another δ's.
#[test]
fn a_custom_loss_closure_keeps_its_settings() {
    fn huber(
        out: &candle_core::Tensor,
        y: &candle_core::Tensor,
        delta: f64,
    ) -> descent_train::Result<candle_core::Tensor> {
        let d = out.broadcast_sub(y)?.abs()?;
        let quadratic = d.minimum(delta)?;
        let linear = (&d - &quadratic)?;
        Ok(((quadratic.sqr()? * 0.5)? + (linear * delta)?)?.mean_all()?)
    }
    let (tr, te, model) = regression(7);
    let delta = 0.25;
    let c = TrainConfig { loss: Loss::custom(move |out, y| huber(out, y, delta)), ..cfg("adam", 0.05, 10, 32) };
    let (h, _) = train(&model, &tr, &te, &c, |_| {}).unwrap();
    assert!((slope(&model) - 2.0).abs() < 0.1, "slope {}", slope(&model));
    let (x, y) = te.range(0, te.len()).unwrap();
    let out = model.forward(&x, descent_train::model::Mode::Eval, &mut Rng::new(0)).unwrap();
    let want = huber(&out, &y, delta).unwrap().to_scalar::<f32>().unwrap() as f64;
    let other = huber(&out, &y, 1.0).unwrap().to_scalar::<f32>().unwrap() as f64;
    let got = h.last().unwrap().test_loss;
    assert!((got - want).abs() <= 1e-6 * want.max(1.0), "{got} vs {want}");
    assert!((got - other).abs() > 1e-4, "δ = 0.25 and δ = 1 give {got} and {other}");
}
