//! Quantization-aware training (QAT) of the MLP and LeNet-5, as `torch.ao.quantization`'s eager
//! QAT: during training the model computes what its int8 form ([`crate::quant::QuantModel`])
//! will, in f32, so that the weights learn to live with the rounding.
//!
//! - Each Linear and Conv weight is fake-quantized per output channel, symmetric, on the grid of
//!   [`crate::quant::quantize_weights`] (`scale = max|w| / 127`, `q = round(w / scale)` in
//!   `[−127, 127]`, the value `q · scale`): the same helpers, so that `descent quantize` gives
//!   exactly the integers the training ran with. The scale is the current weight's (torch's
//!   `PerChannelMinMaxObserver` on the weight itself) rather than a moving average of past
//!   weights (`MovingAveragePerChannelMinMaxObserver`): a moving average would give the int8
//!   model other weights than the trained ones.
//! - The input of each quantized layer (where the int8 pipeline quantizes it: the image, and
//!   each hidden layer's output after its ReLU and pooling) is fake-quantized per tensor to u8,
//!   affine, with [`crate::quant::QParams::from_range`] and the int8 pipeline's rounding, from the
//!   range of a moving-average min/max observer (torch's `MovingAverageMinMaxObserver`,
//!   `averaging_constant` 0.01: the first batch sets the range, each later one moves it by 1% of
//!   the way to its own min and max). Observers move in training mode only; evaluation uses the
//!   stored ranges. They are model buffers (`LAYER.input_observer.min_val` / `.max_val`), saved
//!   in checkpoints with the weights.
//! - Backward, both are straight-through estimators (torch's `fake_quantize` backward): the
//!   gradient passes unchanged where the input was rounded into the grid, and is zero where it
//!   was clamped outside it. Scales and zero points get no gradient.
//!
//! The MLP's dropout follows the fake-quantized hidden layer (torch's order: the observer sees
//! the activations that evaluation will see).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor, Var};

use crate::cpu::{f32_slice, storage_f32s};
use crate::error::{Error, Result};
use crate::model::{dropout, Mode, Model};
use crate::quant::{float_forward, layers_of, weight_level, weight_scale, LayerSpec, QParams, Quantizer, WEIGHT_QMAX};
use crate::rng::Rng;

/// torch's `MovingAverageMinMaxObserver` default `averaging_constant`.
pub const AVERAGING_CONSTANT: f32 = 0.01;

/// The buffer names of a layer's input observer: `(min, max)`.
pub fn observer_names(layer: &str) -> (String, String) {
    (format!("{layer}.input_observer.min_val"), format!("{layer}.input_observer.max_val"))
}

/// An observer that has seen nothing holds `min > max` (torch's `+inf` and `−inf`, which a
/// checkpoint would refuse as non-finite).
const EMPTY: (f32, f32) = (f32::MAX, -f32::MAX);

/// Per-tensor affine u8 fake quantization with a straight-through backward.
#[derive(Debug, Clone, Copy)]
struct FakeQuantAct(QParams);

impl FakeQuantAct {
    fn value(q: Quantizer, p: QParams, x: f32) -> f32 {
        (q.apply(x) as i32 - p.zero_point) as f32 * p.scale
    }
}

impl CustomOp1 for FakeQuantAct {
    fn name(&self) -> &'static str {
        "descent-fake-quantize-per-tensor"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "fake quantization input")?;
        let q = Quantizer::of(&self.0);
        let y = x.iter().map(|&v| Self::value(q, self.0, v)).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let q = Quantizer::of(&self.0);
        let (arg, grad) = (arg.contiguous()?, grad.contiguous()?);
        let (sx, lx) = arg.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (x, g) = (storage_f32s(&sx, lx, "fake quantization input")?, storage_f32s(&sg, lg, "its gradient")?);
        let d: Vec<f32> = x.iter().zip(g).map(|(&x, &g)| if q.inside(x) { g } else { 0.0 }).collect();
        Ok(Some(Tensor::from_vec(d, arg.dims(), arg.device())?))
    }
}

/// Per-output-channel symmetric int8 fake quantization of a weight (`[out, …]`) with a
/// straight-through backward.
#[derive(Debug, Clone, Copy)]
struct FakeQuantWeight;

/// The rows of a weight and each one's scale.
fn rows_and_scales(w: &[f32], dims: &[usize]) -> (usize, Vec<f32>) {
    let out = dims.first().copied().unwrap_or(1).max(1);
    let k = w.len() / out;
    (k, (0..out).map(|o| weight_scale(&w[o * k..(o + 1) * k])).collect())
}

impl CustomOp1 for FakeQuantWeight {
    fn name(&self) -> &'static str {
        "descent-fake-quantize-per-channel"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = f32_slice(s, l, "fake quantization weight")?;
        let (k, scales) = rows_and_scales(w, l.dims());
        let y = w
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let s = scales[i / k.max(1)];
                weight_level(v, s).clamp(-WEIGHT_QMAX, WEIGHT_QMAX) * s
            })
            .collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (arg, grad) = (arg.contiguous()?, grad.contiguous()?);
        let (sx, lx) = arg.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (w, g) = (storage_f32s(&sx, lx, "fake quantization weight")?, storage_f32s(&sg, lg, "its gradient")?);
        let (k, scales) = rows_and_scales(w, arg.dims());
        let d: Vec<f32> = w
            .iter()
            .zip(g)
            .enumerate()
            .map(|(i, (&v, &g))| {
                let q = weight_level(v, scales[i / k.max(1)]);
                if (-WEIGHT_QMAX..=WEIGHT_QMAX).contains(&q) {
                    g
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Some(Tensor::from_vec(d, arg.dims(), arg.device())?))
    }
}

/// `x` fake-quantized per tensor to u8 with `p` (the int8 pipeline's rounding): forward
/// `(clamp(⌊x / s + z + ½⌋, 0, 255) − z) · s`, backward the gradient where that integer was not
/// clamped, zero elsewhere.
pub fn fake_quantize_input(x: &Tensor, p: QParams) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(FakeQuantAct(p))?)
}

/// A weight `[out, …]` fake-quantized per output channel on the grid of
/// [`crate::quant::quantize_weights`]: forward `clamp(round(w / s), −127, 127) · s` with
/// `s = max|w_row| / 127`, backward the gradient where `round(w / s)` was in `[−127, 127]`.
pub fn fake_quantize_weight(w: &Tensor) -> Result<Tensor> {
    Ok(w.contiguous()?.apply_op1(FakeQuantWeight)?)
}

/// The smallest and largest of a tensor's values.
fn min_max(x: &Tensor) -> Result<(f32, f32)> {
    let x = x.contiguous()?;
    let (s, l) = x.storage_and_layout();
    let v = storage_f32s(&s, l, "an observed activation")?;
    Ok(v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x))))
}

/// An MLP or LeNet-5 trained with fake quantization: the model's own parameters (same names),
/// its layers run as the int8 pipeline sees them ([`layers_of`]), and one input observer per
/// layer as buffers.
pub struct QatModel {
    name: String,
    inner: Box<dyn Model>,
    specs: Vec<LayerSpec>,
    params: Vec<(Var, Var)>,
    observers: Vec<(Var, Var)>,
    dropout: f32,
}

impl QatModel {
    /// The `mlp` or `lenet` `inner` (any width) for quantization-aware training; `dropout` is the
    /// MLP's (0 for LeNet-5).
    pub fn new(model_name: &str, inner: Box<dyn Model>, dropout: f32) -> Result<QatModel> {
        crate::nn::dropout::check_probability(dropout)?;
        let specs = layers_of(model_name).map_err(|_| {
            Error::Param(format!("quantization-aware training handles mlp and lenet, not `{model_name}`"))
        })?;
        let vars: std::collections::HashMap<String, Var> = inner.named_vars().into_iter().collect();
        let get = |n: String| vars.get(&n).cloned().ok_or_else(|| Error::Param(format!("the model has no `{n}`")));
        let params = specs
            .iter()
            .map(|s| Ok((get(format!("{}.weight", s.name))?, get(format!("{}.bias", s.name))?)))
            .collect::<Result<Vec<_>>>()?;
        let dev = Device::Cpu;
        let scalar = |v: f32| -> Result<Var> { Ok(Var::from_tensor(&Tensor::from_vec(vec![v], 1, &dev)?)?) };
        let observers = specs.iter().map(|_| Ok((scalar(EMPTY.0)?, scalar(EMPTY.1)?))).collect::<Result<Vec<_>>>()?;
        Ok(QatModel { name: model_name.to_string(), inner, specs, params, observers, dropout })
    }

    /// The model's name (`mlp` or `lenet`).
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// Each layer's observed input range `(min, max)`, `None` for an observer that has seen no
    /// training batch.
    pub fn ranges(&self) -> Result<Vec<Option<(f32, f32)>>> {
        self.observers.iter().map(|(lo, hi)| Ok(range_of(scalar_of(lo)?, scalar_of(hi)?))).collect()
    }

    /// Layer `i`'s input: observed (training mode) and fake-quantized with the observer's range;
    /// unchanged while the observer has seen nothing (evaluation before any training step).
    fn quantize_input(&self, i: usize, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (lo_v, hi_v) = &self.observers[i];
        let (mut lo, mut hi) = (scalar_of(lo_v)?, scalar_of(hi_v)?);
        if mode == Mode::Train {
            let (cur_lo, cur_hi) = min_max(x)?;
            if lo > hi {
                (lo, hi) = (cur_lo, cur_hi);
            } else {
                lo += AVERAGING_CONSTANT * (cur_lo - lo);
                hi += AVERAGING_CONSTANT * (cur_hi - hi);
            }
            lo_v.set(&Tensor::from_vec(vec![lo], 1, x.device())?)?;
            hi_v.set(&Tensor::from_vec(vec![hi], 1, x.device())?)?;
        }
        match range_of(lo, hi) {
            Some((lo, hi)) => fake_quantize_input(x, QParams::from_range(lo, hi)),
            None => Ok(x.clone()),
        }
    }
}

fn scalar_of(v: &Var) -> Result<f32> {
    Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?[0])
}

fn range_of(lo: f32, hi: f32) -> Option<(f32, f32)> {
    (lo <= hi).then_some((lo, hi))
}

impl Model for QatModel {
    fn forward(&self, x: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (spec, (w, b))) in self.specs.iter().zip(&self.params).enumerate() {
            h = self.quantize_input(i, &h, mode)?;
            if i > 0 && mode == Mode::Train {
                h = dropout(&h, self.dropout, rng)?;
            }
            h = float_forward(spec, &fake_quantize_weight(w.as_tensor())?, b.as_tensor(), &h)?;
        }
        Ok(h)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        self.inner.named_vars()
    }
    fn named_buffers(&self) -> Vec<(String, Var)> {
        let mut v = self.inner.named_buffers();
        for (s, (lo, hi)) in self.specs.iter().zip(&self.observers) {
            let (nl, nh) = observer_names(&s.name);
            v.push((nh, hi.clone()));
            v.push((nl, lo.clone()));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The input ranges of a quantization-aware `model_name` (an [`QatModel`], found by its buffers),
/// one per layer of [`layers_of`]: `Ok(None)` for a model without observers; an error when an
/// observer has seen no training batch.
pub fn observed_ranges(model_name: &str, model: &dyn Model) -> Result<Option<Vec<(f32, f32)>>> {
    let buffers: std::collections::HashMap<String, Var> = model.named_buffers().into_iter().collect();
    let specs = layers_of(model_name)?;
    let mut out = vec![];
    for s in &specs {
        let (nl, nh) = observer_names(&s.name);
        let (Some(lo), Some(hi)) = (buffers.get(&nl), buffers.get(&nh)) else { return Ok(None) };
        match range_of(scalar_of(lo)?, scalar_of(hi)?) {
            Some(r) => out.push(r),
            None => return Err(Error::Param(format!("the input observer of `{}` has seen no training batch", s.name))),
        }
    }
    Ok(Some(out))
}

/// Whether stored buffers are a quantization-aware model's (they hold input observers).
pub fn has_observers<'a>(mut buffer_names: impl Iterator<Item = &'a str>) -> bool {
    buffer_names.any(|n| n.ends_with(".input_observer.min_val"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Init, LeNet5, Mlp};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Activations: the values of the direct formula (round half up on `x / s + z`, clamp to
    /// [0, 255], back to `(q − z) s`), and the gradient 1 inside the range and 0 where clamped.
    #[test]
    fn activation_fake_quantization_and_its_straight_through_gradient() {
        let p = QParams::from_range(-1.0, 3.0);
        let (s, z) = (p.scale, p.zero_point);
        let xs = vec![-5.0f32, -1.0, -0.3, 0.0, 0.01, 0.5, 1.234, 2.99, 3.0, 3.01, 7.5, -1.05];
        let x = Var::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        let y = fake_quantize_input(x.as_tensor(), p).unwrap();
        for (&v, &got) in xs.iter().zip(&values(&y)) {
            let q = (v / s + z as f32 + 0.5).floor().clamp(0.0, 255.0);
            let want = (q - z as f32) * s;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{v}: {got} against {want}");
            // The same integer as the int8 pipeline's quantization.
            assert_eq!(got, (p.quantize(v) as i32 - z) as f32 * s, "{v}");
        }
        // Values off the grid move by at most half a step; the range's ends are on it.
        assert!((values(&y)[6] - 1.234).abs() <= s / 2.0 + 1e-6);
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = values(g.get(x.as_tensor()).unwrap());
        let inside: Vec<f32> = xs
            .iter()
            .map(|&v| {
                let t = v / s + z as f32 + 0.5;
                if (0.0..256.0).contains(&t) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(gx, inside);
        assert_eq!(gx, vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        // The gradient is the incoming one, masked (not just ones).
        let probe = Tensor::from_vec((0..xs.len()).map(|i| i as f32 - 3.0).collect::<Vec<_>>(), xs.len(), &Device::Cpu)
            .unwrap();
        let g =
            (fake_quantize_input(x.as_tensor(), p).unwrap() * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let want: Vec<f32> = values(&probe).iter().zip(&inside).map(|(a, b)| a * b).collect();
        assert_eq!(values(g.get(x.as_tensor()).unwrap()), want);
    }

    /// Weights: exactly the int8 values `descent quantize` stores times their scales, gradient 1
    /// everywhere (the symmetric grid spans each row's largest magnitude, nothing is clamped).
    #[test]
    fn weight_fake_quantization_is_the_int8_grid() {
        let mut rng = Rng::new(5);
        let w: Vec<f32> = (0..6 * 7).map(|_| rng.normal()).collect();
        let mut w = w;
        w[7..14].iter_mut().for_each(|v| *v = 0.0);
        let var = Var::from_vec(w.clone(), (6, 7), &Device::Cpu).unwrap();
        let y = fake_quantize_weight(var.as_tensor()).unwrap();
        let (q, s) = crate::quant::quantize_weights(&w, 6);
        let want: Vec<f32> = q.iter().enumerate().map(|(i, &q)| q as f32 * s[i / 7]).collect();
        assert_eq!(values(&y), want);
        for o in 0..6 {
            let m = w[o * 7..(o + 1) * 7].iter().fold(0f32, |a, v| a.max(v.abs()));
            let direct: Vec<f32> = w[o * 7..(o + 1) * 7]
                .iter()
                .map(|&v| if m == 0.0 { 0.0 } else { (v / (m / 127.0)).round().clamp(-127.0, 127.0) * (m / 127.0) })
                .collect();
            assert_eq!(&values(&y)[o * 7..(o + 1) * 7], direct.as_slice());
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(values(g.get(var.as_tensor()).unwrap()), vec![1.0; 42]);
    }

    fn batch(seed: u64, n: usize) -> Tensor {
        let mut rng = Rng::new(seed);
        Tensor::from_vec((0..n * 784).map(|_| rng.uniform()).collect::<Vec<f32>>(), (n, 1, 28, 28), &Device::Cpu)
            .unwrap()
    }

    /// Observers take the first training batch's range, then move by 1% towards each later
    /// batch's; evaluation leaves them as they are (and uses them).
    #[test]
    fn observers_move_in_training_only() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(1);
        let mlp = Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
        let m = QatModel::new("mlp", Box::new(mlp), 0.0).unwrap();
        assert_eq!(m.ranges().unwrap(), vec![None, None]);
        assert!(observed_ranges("mlp", &m).unwrap_err().to_string().contains("fc1"));
        let x1 = batch(2, 4);
        // Evaluation before any training leaves them empty.
        m.forward(&x1, Mode::Eval, &mut rng).unwrap();
        assert_eq!(m.ranges().unwrap(), vec![None, None]);
        m.forward(&x1, Mode::Train, &mut rng).unwrap();
        let (lo1, hi1) = min_max(&x1).unwrap();
        let r1 = m.ranges().unwrap();
        assert_eq!(r1[0], Some((lo1, hi1)));
        let x2 = (batch(3, 4) * 3.0).unwrap();
        let before = m.ranges().unwrap();
        let e1 = values(&m.forward(&x2, Mode::Eval, &mut rng).unwrap());
        assert_eq!(m.ranges().unwrap(), before, "evaluation moved an observer");
        // Evaluation is deterministic with frozen observers.
        assert_eq!(values(&m.forward(&x2, Mode::Eval, &mut rng).unwrap()), e1);
        m.forward(&x2, Mode::Train, &mut rng).unwrap();
        let (lo2, hi2) = min_max(&x2).unwrap();
        let r2 = m.ranges().unwrap()[0].unwrap();
        assert_eq!(r2, (lo1 + 0.01 * (lo2 - lo1), hi1 + 0.01 * (hi2 - hi1)));
        assert!(r2.1 > hi1);
        // The hidden layer's observer moved too, and the buffers are what the ranges say.
        assert_ne!(m.ranges().unwrap()[1], r1[1]);
        let names: Vec<String> = m.named_buffers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "fc1.input_observer.max_val",
                "fc1.input_observer.min_val",
                "fc2.input_observer.max_val",
                "fc2.input_observer.min_val"
            ]
        );
        assert_eq!(
            observed_ranges("mlp", &m).unwrap().unwrap(),
            m.ranges().unwrap().into_iter().map(|r| r.unwrap()).collect::<Vec<_>>()
        );
    }

    /// The int8 model built from a QAT model's observers computes what the QAT model does in
    /// evaluation (the same integers; f32 rounding aside): the same predictions, close logits.
    #[test]
    fn the_int8_model_of_the_observers_computes_the_qat_model() {
        let dev = Device::Cpu;
        for name in ["mlp", "lenet"] {
            let mut rng = Rng::new(4);
            let inner: Box<dyn Model> = if name == "mlp" {
                Box::new(Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap())
            } else {
                Box::new(LeNet5::new(Init::TorchDefault, &mut rng, &dev).unwrap())
            };
            let m = QatModel::new(name, inner, 0.0).unwrap();
            for s in 0..3 {
                m.forward(&batch(10 + s, 16), Mode::Train, &mut rng).unwrap();
            }
            let ranges = observed_ranges(name, &m).unwrap().unwrap();
            let q = crate::quant::QuantModel::from_ranges(name, &m, &ranges).unwrap();
            let x = batch(20, 64);
            let a = m.forward(&x, Mode::Eval, &mut rng).unwrap();
            let b = q.forward(&x, Mode::Eval, &mut rng).unwrap();
            let (va, vb) = (values(&a), values(&b));
            let spread = va.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = va.iter().zip(&vb).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            println!("{name}: int8 logits off the QAT model's by {err:.2e} at most (logits up to {spread:.2})");
            assert!(err < 1e-3 * spread.max(1.0), "{name}: int8 off the QAT model by {err} (logits up to {spread})");
            let (pa, pb) = (
                values(&a.argmax(1).unwrap().to_dtype(candle_core::DType::F32).unwrap()),
                values(&b.argmax(1).unwrap().to_dtype(candle_core::DType::F32).unwrap()),
            );
            assert_eq!(pa, pb, "{name}");
        }
    }
}
