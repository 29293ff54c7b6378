//! bf16 products (`TrainConfig::precision`, `precision::Autocast`): the fused ops follow f32
//! within bfloat16's rounding, their operands rounded as the module says, and an MLP trains to
//! f32's accuracy with the same seed.

use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use descent_train::data::Dataset;
use descent_train::layers::{conv2d, Conv2dGeometry};
use descent_train::linear::linear;
use descent_train::mnist;
use descent_train::model::{Init, Mlp};
use descent_train::nn::attention::causal_attention;
use descent_train::precision::{from_bf16, to_bf16, Autocast, Precision};
use descent_train::rng::Rng;
use descent_train::train::{train_from, Control, EpochEnd, EpochMetrics, Hooks, Loss, StepMetrics, Stop, TrainConfig};

/// Keeps each step's batch loss.
struct Losses(Vec<f32>);

impl Hooks for &mut Losses {
    fn on_step(&mut self, s: &StepMetrics) -> Control {
        self.0.push(s.loss);
        Control::Continue
    }
    fn on_epoch(&mut self, _: &EpochMetrics, _: &mut EpochEnd) -> descent_train::Result<()> {
        Ok(())
    }
}

fn var(shape: &[usize], rng: &mut Rng) -> Var {
    let n = shape.iter().product();
    Var::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `t` with its values rounded to bfloat16.
fn rounded(t: &Tensor) -> Tensor {
    let v: Vec<f32> = values(t).iter().map(|&x| from_bf16(to_bf16(x))).collect();
    Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
}

/// The largest difference relative to the largest magnitude of `want`.
fn rel(got: &Tensor, want: &Tensor) -> f32 {
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

/// Output and gradients of `f` (a sum against a fixed probe) in `precision`.
fn run(precision: Precision, vars: &[&Var], f: &dyn Fn() -> Tensor) -> (Tensor, Vec<Tensor>) {
    let _g = Autocast::enter(precision);
    let y = f();
    let probe = Tensor::from_vec(
        (0..y.elem_count()).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect::<Vec<f32>>(),
        y.dims(),
        &Device::Cpu,
    )
    .unwrap();
    let grads = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    (y, vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect())
}

/// bf16 differs from f32 (the setting took effect) by no more than bfloat16's rounding of the
/// operands (relative 2^-8 each) summed over a row allows; the gradients numbered in `f32_only`
/// (a bias's: a column sum, no product) are f32's exactly.
fn check_close(name: &str, vars: &[&Var], f32_only: &[usize], f: &dyn Fn() -> Tensor) {
    let (y32, g32) = run(Precision::F32, vars, f);
    let (y16, g16) = run(Precision::Bf16, vars, f);
    let e = rel(&y16, &y32);
    assert!(e > 0.0 && e < 2e-2, "{name}: output {e}");
    for (i, (a, b)) in g16.iter().zip(&g32).enumerate() {
        let e = rel(a, b);
        if f32_only.contains(&i) {
            assert_eq!(e, 0.0, "{name}: gradient {i}");
        } else {
            assert!(e > 0.0 && e < 2e-2, "{name}: gradient {i}: {e}");
        }
    }
}

#[test]
fn linear_products_take_rounded_operands_and_sum_in_f32() {
    let mut rng = Rng::new(1);
    let (x, w, b) = (var(&[37, 75], &mut rng), var(&[19, 75], &mut rng), var(&[19], &mut rng));
    let y16 = {
        let _g = Autocast::enter(Precision::Bf16);
        linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap()
    };
    // The same product in f32 of the rounded operands: equal up to f32 summation order.
    let want = linear(&rounded(x.as_tensor()), &rounded(w.as_tensor()), b.as_tensor()).unwrap();
    assert!(rel(&y16, &want) < 1e-5, "{}", rel(&y16, &want));
    check_close("linear", &[&x, &w, &b], &[2], &|| linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap());
}

#[test]
fn convolution_and_attention_follow_f32() {
    let mut rng = Rng::new(2);
    let (x, w, b) = (var(&[3, 2, 9, 9], &mut rng), var(&[5, 2, 3, 3], &mut rng), var(&[5], &mut rng));
    check_close("conv2d", &[&x, &w, &b], &[2], &|| {
        let geometry = Conv2dGeometry { padding: 1, ..Default::default() };
        conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), geometry).unwrap()
    });
    let qkv = var(&[2, 13, 24], &mut rng);
    check_close("attention", &[&qkv], &[], &|| causal_attention(qkv.as_tensor(), 2).unwrap());
}

/// The acceptance in small: the MLP on MNIST, 300 steps of Adam with the same seed in
/// f32 and bf16: both learn, the bf16 loss falls as f32's, accuracies within half a point.
#[test]
fn bf16_trains_the_mlp_as_f32_does() {
    let m = mnist::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    let tr = Dataset::mnist(&m.train, false).unwrap();
    let te = Dataset::mnist(&m.test, false).unwrap();
    let run = |precision| {
        let mut rng = Rng::new(0);
        let model = Mlp::new(Init::TorchDefault, 0.2, &mut rng, &Device::Cpu).unwrap();
        let cfg = TrainConfig {
            max_steps: Some(300),
            precision,
            ..TrainConfig::new("adam", Some(1e-3), 1, 64, Loss::CrossEntropy)
        };
        let mut losses = Losses(vec![]);
        let (h, stop) = train_from(&model, &tr, &te, &cfg, None, &mut losses).unwrap();
        assert_eq!(stop, Stop::Steps);
        (h.last().unwrap().clone(), losses.0)
    };
    let (f32_run, _) = run(Precision::F32);
    let (bf16_run, losses) = run(Precision::Bf16);
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    assert!(last < 0.5 * first, "bf16 batch loss {first} → {last}");
    let (a16, a32) = (bf16_run.test_accuracy.unwrap(), f32_run.test_accuracy.unwrap());
    assert!(a16 > 0.88, "{bf16_run:?}");
    assert!((a16 - a32).abs() < 0.005, "bf16 {a16} f32 {a32}");
    assert!((bf16_run.test_loss - f32_run.test_loss).abs() < 0.03, "{bf16_run:?} {f32_run:?}");
}
