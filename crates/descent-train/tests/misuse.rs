//! A library user's mistakes with the layers and helpers (a zero-size layer, an empty image, a
//! scalar dataset, a shape that does not fit the values, a 0-based epoch) are errors or sensible
//! values, never panics.

use candle_core::{Device, Tensor};
use descent_train::data::Dataset;
use descent_train::layers::{conv2d, Conv2d, Conv2dGeometry, MaxPool2d};
use descent_train::model::{Init, LeNet5, Linear};
use descent_train::prune::{slice_norms, Norm};
use descent_train::rng::Rng;
use descent_train::train::LrSchedule;

#[test]
fn zero_size_layers_are_refused() {
    let (mut rng, dev) = (Rng::new(0), Device::Cpu);
    for (i, o) in [(0, 4), (4, 0)] {
        let e = Linear::new(i, o, Init::TorchDefault, &mut rng, &dev).err().expect("refused").to_string();
        assert!(e.contains("at least 1"), "{e}");
    }
    for (i, o, k) in [(0, 4, 3), (1, 0, 3), (1, 4, 0)] {
        let e = Conv2d::new(i, o, k, Init::TorchDefault, &mut rng).err().expect("refused").to_string();
        assert!(e.contains("at least 1"), "{e}");
    }
    assert!(LeNet5::with_widths([0, 16, 120, 84], Init::TorchDefault, &mut rng, &dev).is_err());
    assert!(LeNet5::with_widths([6, 0, 120, 84], Init::TorchDefault, &mut rng, &dev).is_err());
    // The functional forms with zero-size weights or inputs.
    let x = Tensor::zeros((2, 1, 8, 8), candle_core::DType::F32, &dev).unwrap();
    let w = Tensor::zeros((0, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w, None, Conv2dGeometry::default()).is_err());
    let x0 = Tensor::zeros((2, 0, 8, 8), candle_core::DType::F32, &dev).unwrap();
    let w1 = Tensor::zeros((4, 0, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let padded = Conv2dGeometry { padding: 1, ..Default::default() };
    assert!(conv2d(&x0, &w1, None, padded).is_err());
    let scalar = Tensor::new(1f32, &dev).unwrap();
    assert!(conv2d(&x, &scalar, None, Conv2dGeometry::default()).is_err());
    let lx = Tensor::zeros((3, 0), candle_core::DType::F32, &dev).unwrap();
    let lw = Tensor::zeros((2, 0), candle_core::DType::F32, &dev).unwrap();
    let lb = Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap();
    assert!(descent_train::linear::linear(&lx, &lw, &lb).is_err());
}

#[test]
fn an_empty_image_and_a_scalar_dataset_are_errors() {
    let dev = Device::Cpu;
    let empty = Tensor::zeros((1, 1, 0, 0), candle_core::DType::F32, &dev).unwrap();
    assert!(MaxPool2d::new(2, 2, 1).forward(&empty).is_err());
    let d = Dataset { x: Tensor::new(1f32, &dev).unwrap(), y: Tensor::new(3u32, &dev).unwrap() };
    let e = d.batch(&[0]).expect_err("refused").to_string();
    assert!(e.contains("scalar"), "{e}");
}

#[test]
fn slice_norms_check_the_shape_against_the_values() {
    assert!(slice_norms(&[1.0; 6], &[2, 3], Norm::P(2.0), 2).is_err());
    assert!(slice_norms(&[1.0; 5], &[2, 3], Norm::P(2.0), 0).is_err());
    let n = slice_norms(&[3.0, 4.0, 0.0, 0.0], &[2, 2], Norm::P(2.0), 0).unwrap();
    assert_eq!(n, vec![5.0, 0.0]);
}

/// Epochs count from 1; an epoch 0 reads as the first, not as a wrapped-around count.
#[test]
fn an_epoch_zero_multiplier_is_the_first_epochs() {
    let step = LrSchedule::Step { every: 1, gamma: 0.5 };
    assert_eq!(step.multiplier(0, 10, 0), step.multiplier(0, 10, 1));
    let exp = LrSchedule::Exponential { gamma: 0.5 };
    assert_eq!(exp.multiplier(0, 10, 0), exp.multiplier(0, 10, 1));
}

/// Average pooling refuses what torch's `avg_pool2d` refuses (a padding over half the window, a
/// zero window or step, a zero divisor, an input without a whole window, a 2-D input), with an
/// error that names the pooling.
#[test]
fn average_pooling_refuses_what_torch_refuses() {
    use descent_train::nn::{AvgPool2d, Divisor, Rounding};
    let x = Tensor::zeros((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let refused = [
        AvgPool2d { padding: (2, 0), ..AvgPool2d::new(3, 1) },
        AvgPool2d { kernel: (0, 2), ..AvgPool2d::new(2, 2) },
        AvgPool2d { stride: (1, 0), ..AvgPool2d::new(2, 2) },
        AvgPool2d { divisor: Divisor::Fixed(0), ..AvgPool2d::new(2, 2) },
        AvgPool2d::new(6, 1),
    ];
    for pool in refused {
        let e = pool.forward(&x).err().unwrap_or_else(|| panic!("{pool:?} accepted")).to_string();
        assert!(e.contains("avg_pool2d"), "{e}");
    }
    let flat = Tensor::zeros((5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(AvgPool2d::new(2, 2).forward(&flat).is_err());
    // Ceil mode adds the window that starts inside the input: 5 → 3 windows of 2, not 2.
    let ceil = AvgPool2d { rounding: Rounding::Ceil, ..AvgPool2d::new(2, 2) };
    assert_eq!(ceil.forward(&x).unwrap().dims(), [1, 2, 3, 3]);
    assert_eq!(AvgPool2d::new(2, 2).forward(&x).unwrap().dims(), [1, 2, 2, 2]);
}

/// A dropout probability outside [0, 1] (or NaN) is refused on every path, as torch's `Dropout`
/// refuses it (it made a dead layer: every unit dropped).
#[test]
fn a_dropout_probability_outside_0_1_is_refused() {
    let (mut rng, dev) = (Rng::new(0), Device::Cpu);
    let x = Tensor::ones((2, 3), candle_core::DType::F32, &dev).unwrap();
    for p in [1.5f32, -0.1, f32::NAN] {
        let e = descent_train::model::dropout(&x, p, &mut rng).expect_err("refused").to_string();
        assert!(e.contains("dropout") && e.contains("[0, 1]"), "{p}: {e}");
        assert!(descent_train::model::Mlp::with_hidden(8, Init::TorchDefault, p, &mut rng, &dev).is_err(), "{p}");
        assert!(descent_train::nn::dropout::Dropout::new(p).is_err(), "{p}");
    }
    for p in [0.0f32, 0.5, 1.0] {
        descent_train::model::dropout(&x, p, &mut rng).unwrap();
    }
    let all =
        descent_train::model::dropout(&x, 1.0, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(all.iter().all(|&v| v == 0.0), "{all:?}");
}

fn regression(seed: u64) -> (Dataset, Dataset, descent_train::model::LinearRegression) {
    let mut rng = Rng::new(seed);
    let (tr, te) = (Dataset::regression(200, &mut rng).unwrap(), Dataset::regression(50, &mut rng).unwrap());
    (tr, te, descent_train::model::LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap())
}

/// Settings the loop cannot honour are refused before a step, naming the field: as the command
/// line refuses them, not silently ineffective (a target accuracy of 98 as a percentage that
/// never stops the run, a negative penalty that rewards large weights, a library schedule
/// shorter than the run that would climb back up).
#[test]
fn a_config_the_loop_cannot_honour_is_refused() {
    use descent_train::train::{train, EvalAt, Loss, SpecSchedule, TrainConfig};
    let (tr, te, model) = regression(1);
    let base = TrainConfig::new("adam", Some(0.01), 2, 32, Loss::Mse);
    let classify = TrainConfig::new("adam", Some(0.01), 2, 32, Loss::CrossEntropy);
    let cases: Vec<(TrainConfig, &str)> = vec![
        (TrainConfig { target_accuracy: Some(98.0), ..classify.clone() }, "target_accuracy"),
        (TrainConfig { target_accuracy: Some(0.0), ..classify }, "target_accuracy"),
        (TrainConfig { l1: -0.1, ..base.clone() }, "l1"),
        (TrainConfig { l2: f64::NAN, ..base.clone() }, "l2"),
        (TrainConfig { min_delta: 0.1, ..base.clone() }, "min_delta"),
        (TrainConfig { min_delta: f64::NAN, patience: Some(1), ..base.clone() }, "min_delta"),
        (TrainConfig { min_loss_change: Some(-1.0), ..base.clone() }, "min_loss_change"),
        (TrainConfig { eval_at: EvalAt::Every(0), ..base.clone() }, "eval_at"),
        (TrainConfig { accumulate: 0, ..base.clone() }, "accumulate"),
        (
            TrainConfig {
                schedule: LrSchedule::Spec(
                    SpecSchedule::build(
                        "torch.OneCycleLR",
                        &serde_json::json!({"max_lr": 0.01, "total_steps": 5}),
                        0.01,
                        false,
                    )
                    .unwrap(),
                ),
                ..base.clone()
            },
            "OneCycleLR",
        ),
    ];
    for (c, field) in cases {
        let e = train(&model, &tr, &te, &c, |_| {}).expect_err(field).to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    // An augmentation built in code with numbers `parse` would refuse.
    let nan = descent_train::augment::Affine {
        translate: f32::NAN,
        ..descent_train::augment::Affine::parse("rotate=5", 0.0).unwrap()
    };
    assert!(nan.check_image(28, 28).unwrap_err().to_string().contains("translate"));
    let wide = descent_train::augment::Affine { rotate: 270.0, ..nan };
    assert!(wide.check_image(28, 28).is_err());
}

/// A test loss that is not a number never counts as the best epoch: early stopping does not
/// stop at, and restore, an epoch of NaN figures, and every checkpoint the run writes loads.
#[test]
fn a_nan_test_loss_is_never_the_best_epoch() {
    use descent_train::train::{train_from, EpochEnd, EpochMetrics, Loss, Stop, TrainConfig};
    let (tr, te, model) = regression(2);
    let dev = Device::Cpu;
    let n = te.len();
    let y = Tensor::from_vec(vec![f32::NAN; n], te.y.dims(), &dev).unwrap();
    let te = Dataset { x: te.x.clone(), y };
    let c = TrainConfig { patience: Some(1), ..TrainConfig::new("adam", Some(0.01), 3, 32, Loss::Mse) };
    let dir = std::env::temp_dir().join(format!("descent-nan-best-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let (h, stop) = train_from(&model, &tr, &te, &c, None, |_: &EpochMetrics, e: &mut EpochEnd| {
        e.checkpoint()?.save(&path)?;
        descent_train::checkpoint::Checkpoint::load(&path).map(drop)
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(h.iter().all(|m| m.test_loss.is_nan()));
    assert_eq!(stop, Stop::Epochs);
}

/// Class indices of every type the cross-entropy takes (u8, u32, i64) are counted right.
#[test]
fn class_targets_of_any_integer_type_are_counted() {
    let dev = Device::Cpu;
    let logits = Tensor::new(&[[0.1f32, 2.0, 0.3], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]], &dev).unwrap();
    for y in [
        Tensor::new(&[1u32, 0, 0], &dev).unwrap(),
        Tensor::new(&[1i64, 0, 0], &dev).unwrap(),
        Tensor::new(&[1u8, 0, 0], &dev).unwrap(),
    ] {
        assert_eq!(descent_train::model::correct(&logits, &y).unwrap(), 2, "{:?}", y.dtype());
        descent_train::model::cross_entropy(&logits, &y).unwrap();
    }
}

/// Two buffers of one name (two batch norms' unprefixed `running_mean`) would collide in a
/// checkpoint: refused before the run trains, naming the name.
#[test]
fn a_model_naming_two_tensors_alike_is_refused() {
    use descent_train::model::{Mode, Model};
    use descent_train::nn::BatchNorm;
    use descent_train::train::{train, Loss, TrainConfig};
    struct Two {
        lin: Linear,
        a: BatchNorm,
        b: BatchNorm,
    }
    impl Model for Two {
        fn forward(&self, x: &Tensor, mode: Mode, _: &mut Rng) -> descent_train::Result<Tensor> {
            let h = self.a.forward(&self.lin.forward(x)?, mode)?;
            self.b.forward(&h, mode)
        }
        fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
            let mut v =
                vec![("lin.weight".into(), self.lin.weight.clone()), ("lin.bias".into(), self.lin.bias.clone())];
            for (k, bn) in [("a", &self.a), ("b", &self.b)] {
                v.push((format!("{k}.weight"), bn.weight.clone()));
                v.push((format!("{k}.bias"), bn.bias.clone()));
            }
            v
        }
        fn named_buffers(&self) -> Vec<(String, candle_core::Var)> {
            let mut v = self.a.named_buffers();
            v.extend(self.b.named_buffers());
            v
        }
    }
    let (mut rng, dev) = (Rng::new(3), Device::Cpu);
    let (tr, te, _) = regression(3);
    let m = Two {
        lin: Linear::new(1, 1, Init::TorchDefault, &mut rng, &dev).unwrap(),
        a: BatchNorm::new(1, &dev).unwrap(),
        b: BatchNorm::new(1, &dev).unwrap(),
    };
    let e = train(&m, &tr, &te, &TrainConfig::new("adam", Some(0.01), 1, 32, Loss::Mse), |_| {})
        .expect_err("refused")
        .to_string();
    assert!(e.contains("running_mean") && e.contains("twice"), "{e}");
}

/// Geometry and index values that cannot be honoured are errors, not garbage or a panic: a
/// convolution's dilation or stride 0 (torch refuses them), a text window past any split, more
/// samples than a `u32` index reaches, a calibration percentile outside (50, 100].
#[test]
fn impossible_geometry_and_indices_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::ones((1, 1, 6, 6), candle_core::DType::F32, &dev).unwrap();
    let w = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
    for g in [Conv2dGeometry { dilation: 0, ..Default::default() }, Conv2dGeometry { stride: 0, ..Default::default() }]
    {
        let e = conv2d(&x, &w, None, g).expect_err("refused").to_string();
        assert!(e.contains("at least 1"), "{e}");
    }
    let c = descent_train::text::CharCorpus::from_text(&"to be or not to be. ".repeat(10), "t").unwrap();
    use descent_train::text::TextSplit;
    assert!(c.batch_at(TextSplit::Train, &[usize::MAX], 4).is_err());
    assert!(c.batch_at(TextSplit::Train, &[0], usize::MAX).is_err());
    assert!(c.batch_at(TextSplit::Train, &[0], 4).is_ok());
    let many = u32::MAX as usize + 5;
    assert!(descent_train::dataset::EpochSampler::new(many, 8, &mut Rng::new(0)).is_err());
    assert!(descent_train::dataset::RandomSampler::new(many, 8).is_err());
    let mut rng = Rng::new(4);
    let mlp = descent_train::model::Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
    let batch = Tensor::ones((2, 1, 28, 28), candle_core::DType::F32, &dev).unwrap();
    use descent_train::quant::{Calibration, QuantModel};
    for p in [150.0, -1.0, 50.0, f64::NAN] {
        let e = QuantModel::quantize("mlp", &mlp, std::slice::from_ref(&batch), Calibration::Percentile(p))
            .map(drop)
            .expect_err("refused");
        assert!(e.to_string().contains("percentile"), "{e}");
    }
    let q = QuantModel::quantize("mlp", &mlp, &[batch], Calibration::Percentile(99.0)).unwrap();
    // The unfused reference path checks its input's dims against its values.
    let x = vec![0.5f32; 2 * 784];
    for dims in [vec![], vec![3, 784], vec![2, 1, 28]] {
        assert!(q.run_reference(&x, &dims).is_err(), "{dims:?}");
    }
    let (y, d) = q.run_reference(&x, &[2, 1, 28, 28]).unwrap();
    assert_eq!((y.len(), d), (20, vec![2, 10]));
}
