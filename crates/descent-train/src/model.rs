//! Models with their parameters as named candle variables (PyTorch's names: `fc1.weight`, …),
//! initialized from a seed.

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::linear::Activation;
use crate::rng::Rng;

/// Weight initialization schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's default for `Linear`/`Conv2d`: weights and biases `U(−1/√fan_in, 1/√fan_in)`
    /// (kaiming_uniform with a = √5).
    TorchDefault,
    /// Glorot & Bengio 2010, uniform: `U(±√(6/(fan_in + fan_out)))`.
    XavierUniform,
    /// Glorot normal: `N(0, 2/(fan_in + fan_out))`.
    XavierNormal,
    /// He et al. 2015, uniform for ReLU: `U(±√(6/fan_in))`.
    KaimingUniform,
    /// He normal for ReLU: `N(0, 2/fan_in)`.
    KaimingNormal,
}

impl Init {
    /// The names [`Init::parse`] accepts.
    pub const NAMES: &'static [&'static str] =
        &["torch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"];

    /// The initialization of a name of [`Init::NAMES`] (`default` is `torch`).
    pub fn parse(s: &str) -> Result<Init> {
        Ok(match s {
            "torch" | "default" => Init::TorchDefault,
            "xavier_uniform" | "glorot_uniform" => Init::XavierUniform,
            "xavier_normal" | "glorot_normal" => Init::XavierNormal,
            "kaiming_uniform" | "he_uniform" => Init::KaimingUniform,
            "kaiming_normal" | "he_normal" => Init::KaimingNormal,
            other => return Err(Error::Param(format!("unknown init `{other}`; accepted: {}", Init::NAMES.join(", ")))),
        })
    }

    /// Weight values for a tensor with these fans.
    pub(crate) fn weights(self, n: usize, fan_in: usize, fan_out: usize, rng: &mut Rng) -> Vec<f32> {
        let (fi, fo) = (fan_in as f32, fan_out as f32);
        match self {
            Init::TorchDefault => {
                let b = 1.0 / fi.sqrt();
                (0..n).map(|_| rng.range(-b, b)).collect()
            }
            Init::XavierUniform => {
                let b = (6.0 / (fi + fo)).sqrt();
                (0..n).map(|_| rng.range(-b, b)).collect()
            }
            Init::XavierNormal => {
                let s = (2.0 / (fi + fo)).sqrt();
                (0..n).map(|_| s * rng.normal()).collect()
            }
            Init::KaimingUniform => {
                let b = (6.0 / fi).sqrt();
                (0..n).map(|_| rng.range(-b, b)).collect()
            }
            Init::KaimingNormal => {
                let s = (2.0 / fi).sqrt();
                (0..n).map(|_| s * rng.normal()).collect()
            }
        }
    }

    /// Bias values: PyTorch's `U(±1/√fan_in)` for the default scheme, zeros otherwise.
    pub(crate) fn biases(self, n: usize, fan_in: usize, rng: &mut Rng) -> Vec<f32> {
        match self {
            Init::TorchDefault => {
                let b = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.range(-b, b)).collect()
            }
            _ => vec![0.0; n],
        }
    }
}

fn var(values: Vec<f32>, shape: &[usize], dev: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::from_vec(values, shape, dev)?)?)
}

/// A fully connected layer `y = x Wᵀ + b` with `W` of shape `[out, in]` (PyTorch's layout).
#[derive(Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Var,
    /// `[out]`.
    pub bias: Var,
}

impl Linear {
    /// A layer from `inp` to `out` features, initialized by `init`.
    pub fn new(inp: usize, out: usize, init: Init, rng: &mut Rng, dev: &Device) -> Result<Self> {
        if inp == 0 || out == 0 {
            return Err(Error::Param(format!("Linear: {inp} input and {out} output features (each at least 1)")));
        }
        let w = init.weights(inp * out, inp, out, rng);
        let b = init.biases(out, inp, rng);
        Ok(Linear { weight: var(w, &[out, inp], dev)?, bias: var(b, &[out], dev)? })
    }
    /// `x Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Activation::Identity)
    }
    /// The layer and its activation as one op.
    pub fn forward_with(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        crate::linear::linear_with(x, self.weight.as_tensor(), self.bias.as_tensor(), act)
    }
}

/// Inverted dropout with a mask drawn from the seeded generator (candle's own RNG is not seedable);
/// `p` in `[0, 1]`.
pub fn dropout(x: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    crate::nn::dropout::check_probability(p)?;
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.uniform() < keep { 1.0 / keep } else { 0.0 }).collect();
    let m = Tensor::from_vec(mask, x.dims(), x.device())?;
    Ok((x * m)?)
}

/// Whether a forward pass trains (dropout on) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: dropout on, batch norm by batch statistics.
    Train,
    /// Evaluation: dropout off, batch norm by running statistics.
    Eval,
}

/// A model: a forward pass and its parameters by name.
pub trait Model {
    /// Logits (or predictions) for a batch.
    fn forward(&self, x: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor>;
    /// Parameters with PyTorch's names, in a fixed order.
    fn named_vars(&self) -> Vec<(String, Var)>;
    /// State that is not trained by the optimizer but belongs to the model (batch norm's running
    /// statistics), with PyTorch's names, in a fixed order: saved in checkpoints with the
    /// parameters, so f32 tensors. None by default.
    fn named_buffers(&self) -> Vec<(String, Var)> {
        vec![]
    }
}

/// Linear regression `y = w·x + b` on one feature.
pub struct LinearRegression {
    /// The 1 → 1 layer.
    pub layer: Linear,
}

impl LinearRegression {
    /// The model, initialized by `init`.
    pub fn new(init: Init, rng: &mut Rng, dev: &Device) -> Result<Self> {
        Ok(LinearRegression { layer: Linear::new(1, 1, init, rng, dev)? })
    }
}

impl Model for LinearRegression {
    fn forward(&self, x: &Tensor, _mode: Mode, _rng: &mut Rng) -> Result<Tensor> {
        self.layer.forward(x)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("bias".into(), self.layer.bias.clone()), ("weight".into(), self.layer.weight.clone())]
    }
}

/// Flatten → Linear(784, 128) → ReLU → Dropout(p) → Linear(128, 10).
pub struct Mlp {
    /// 784 → 128.
    pub fc1: Linear,
    /// 128 → 10.
    pub fc2: Linear,
    /// Dropout probability after the hidden layer.
    pub dropout: f32,
}

impl Mlp {
    /// The model with this dropout, initialized by `init`.
    pub fn new(init: Init, dropout: f32, rng: &mut Rng, dev: &Device) -> Result<Self> {
        Self::with_hidden(128, init, dropout, rng, dev)
    }

    /// The MLP with `hidden` units instead of 128 (a small student for distillation, a
    /// structurally pruned one).
    pub fn with_hidden(hidden: usize, init: Init, dropout: f32, rng: &mut Rng, dev: &Device) -> Result<Self> {
        if hidden == 0 {
            return Err(Error::Param("mlp: at least one hidden unit".into()));
        }
        crate::nn::dropout::check_probability(dropout)?;
        Ok(Mlp {
            fc1: Linear::new(784, hidden, init, rng, dev)?,
            fc2: Linear::new(hidden, 10, init, rng, dev)?,
            dropout,
        })
    }
}

impl Model for Mlp {
    fn forward(&self, x: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        let x = x.flatten_from(1)?;
        let h = self.fc1.forward_with(&x, Activation::Relu)?;
        let h = if mode == Mode::Train { dropout(&h, self.dropout, rng)? } else { h };
        self.fc2.forward(&h)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![
            ("fc1.bias".into(), self.fc1.bias.clone()),
            ("fc1.weight".into(), self.fc1.weight.clone()),
            ("fc2.bias".into(), self.fc2.bias.clone()),
            ("fc2.weight".into(), self.fc2.weight.clone()),
        ]
    }
}

/// Mean cross-entropy of logits `[n, classes]` against class indices `[n]` (u8, u32 or i64, each
/// in `[0, classes)`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(logits.contiguous()?.apply_op2(&targets.contiguous()?, crate::loss::CrossEntropyOp)?)
}

/// Mean squared error.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok((pred - target)?.sqr()?.mean_all()?)
}

/// Mean binary cross-entropy with logits, in the stable form `max(x,0) − x·y + log(1 + e^{−|x|})`.
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let relu = logits.relu()?;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((relu - (logits * target)?)? + soft)?.mean_all()?)
}

/// Number of correct predictions (argmax of logits against class indices, of any integer type
/// [`cross_entropy`] takes: u8, u32 or i64).
pub fn correct(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let targets = if targets.dtype() == DType::U32 { targets.clone() } else { targets.to_dtype(DType::U32)? };
    Ok(pred.eq(&targets)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize)
}

/// LeNet-5 (LeCun et al. 1998) as PyTorch tutorials write it: Conv(1→6, 5) → ReLU → MaxPool(2) →
/// Conv(6→16, 5) → ReLU → MaxPool(2) → Linear(256, 120) → ReLU → Linear(120, 84) → ReLU →
/// Linear(84, 10).
pub struct LeNet5 {
    /// 1 → 6 channels, 5×5.
    pub conv1: crate::layers::Conv2d,
    /// 6 → 16 channels, 5×5.
    pub conv2: crate::layers::Conv2d,
    /// 256 → 120.
    pub fc1: Linear,
    /// 120 → 84.
    pub fc2: Linear,
    /// 84 → 10.
    pub fc3: Linear,
}

impl LeNet5 {
    /// The model, initialized by `init`.
    pub fn new(init: Init, rng: &mut Rng, dev: &Device) -> Result<Self> {
        Self::with_widths([6, 16, 120, 84], init, rng, dev)
    }

    /// LeNet-5 with every layer's width scaled by `width/6` (rounded, at least 1): `width` 6 is
    /// LeNet-5 (6, 16, 120, 84), 3 a narrow one (3, 8, 60, 42), a small student for distillation.
    pub fn with_width(width: usize, init: Init, rng: &mut Rng, dev: &Device) -> Result<Self> {
        if width == 0 {
            return Err(Error::Param("lenet: width at least 1".into()));
        }
        let scale = |n: usize| ((n * width) as f64 / 6.0).round().max(1.0) as usize;
        Self::with_widths([scale(6), scale(16), scale(120), scale(84)], init, rng, dev)
    }

    /// LeNet-5 with these channels of conv1 and conv2 and units of fc1 and fc2 (a structurally
    /// pruned one, say).
    pub fn with_widths(w: [usize; 4], init: Init, rng: &mut Rng, dev: &Device) -> Result<Self> {
        Ok(LeNet5 {
            conv1: crate::layers::Conv2d::new(1, w[0], 5, init, rng)?,
            conv2: crate::layers::Conv2d::new(w[0], w[1], 5, init, rng)?,
            fc1: Linear::new(w[1] * 16, w[2], init, rng, dev)?,
            fc2: Linear::new(w[2], w[3], init, rng, dev)?,
            fc3: Linear::new(w[3], 10, init, rng, dev)?,
        })
    }
}

impl Model for LeNet5 {
    fn forward(&self, x: &Tensor, _mode: Mode, _rng: &mut Rng) -> Result<Tensor> {
        // conv → ReLU → max-pool as one op each (the same values and gradients as three).
        let block = crate::conv::Epilogue::ReluMaxPool(crate::layers::MaxPool2d::new(2, 2, 0));
        let h = self.conv1.forward_with(x, block)?;
        let h = self.conv2.forward_with(&h, block)?;
        let h = h.flatten_from(1)?;
        let h = self.fc1.forward_with(&h, Activation::Relu)?;
        let h = self.fc2.forward_with(&h, Activation::Relu)?;
        self.fc3.forward(&h)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![
            ("conv1.bias".into(), self.conv1.bias.clone()),
            ("conv1.weight".into(), self.conv1.weight.clone()),
            ("conv2.bias".into(), self.conv2.bias.clone()),
            ("conv2.weight".into(), self.conv2.weight.clone()),
            ("fc1.bias".into(), self.fc1.bias.clone()),
            ("fc1.weight".into(), self.fc1.weight.clone()),
            ("fc2.bias".into(), self.fc2.bias.clone()),
            ("fc2.weight".into(), self.fc2.weight.clone()),
            ("fc3.bias".into(), self.fc3.bias.clone()),
            ("fc3.weight".into(), self.fc3.weight.clone()),
        ]
    }
}
