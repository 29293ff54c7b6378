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
