//! A residual CNN (He et al. 2016, the CIFAR form with BasicBlocks) for MNIST-sized images, and a
//! plain CNN of the same depth without batch norm or skip connections, to compare how gradients
//! reach the first layers of each.
//!
//! Layout, with `width` channels in the first stage and twice as many in each next one: a 3×3 stem
//! convolution (padding 1), then per stage `blocks` BasicBlocks (the first of each stage after the
//! first with stride 2), global average pooling and a linear classifier. A BasicBlock is
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, both convolutions 3×3 with padding 1
//! and no bias; the shortcut is the identity, or a strided 1×1 convolution and batch norm
//! (`downsample.0`, `downsample.1`) where the size or the channels change. The depth counts the
//! weighted layers on the main path: the stem, two per block and the classifier, `2·stages·blocks
//! + 2`; two stages of one block each (depth 6, width 16) is the smallest, PyTorch's
//! `resnet_mnist` reference.
//!
//! Names are PyTorch's for this layout: `conv1`, `bn1`, then `layer{s}` for stage `s` (from 1)
//! holding a single block, or `layer{s}.{i}` for block `i` (from 0) of a stage of several (a
//! `Sequential`, as torchvision's ResNets), then `fc`. Parameters and buffers come in PyTorch's
//! registration order.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor, Var};

use crate::conv::Epilogue;
use crate::cpu::{avx2_kernel, f32_slice, par_filled, storage_f32s};
use crate::error::{Error, Result};
use crate::layers::{conv2d_with, Conv2dGeometry};
use crate::model::{Init, Linear, Mode, Model};
use crate::nn::{adaptive_avg_pool2d_1x1, BatchNorm2d};
use crate::rng::Rng;

/// The shape of a [`ResNet`] or [`PlainCnn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CnnConfig {
    /// Channels of the input images (1 for MNIST).
    pub in_channels: usize,
    /// Channels of the first stage; each next stage has twice as many.
    pub width: usize,
    /// Stages; each after the first halves the image's height and width.
    pub stages: usize,
    /// Blocks (two 3×3 convolutions each) per stage.
    pub blocks: usize,
    /// Outputs of the classifier.
    pub classes: usize,
}

impl CnnConfig {
    /// Depths this layout has for MNIST (two stages, one input channel, ten classes): `4n + 2`
    /// for `n` blocks per stage, from 6.
    pub fn mnist(depth: usize, width: usize) -> Result<CnnConfig> {
        if depth < 6 || !(depth - 2).is_multiple_of(4) {
            return Err(Error::Param(format!(
                "depth {depth}: the depth is 4n + 2 for n ≥ 1 residual blocks per stage (6, 10, 14, 18, …)"
            )));
        }
        if width == 0 {
            return Err(Error::Param("width 0: a stage has at least 1 channel".into()));
        }
        Ok(CnnConfig { in_channels: 1, width, stages: 2, blocks: (depth - 2) / 4, classes: 10 })
    }

    /// Weighted layers on the main path: the stem, two per block, the classifier.
    pub fn depth(&self) -> usize {
        2 * self.stages * self.blocks + 2
    }

    /// Each block's name prefix (with the trailing dot), input and output channels and stride.
    fn blocks(&self) -> Vec<(String, usize, usize, usize)> {
        let mut v = vec![];
        let mut c = self.width;
        for s in 0..self.stages {
            let out = self.width << s;
            for i in 0..self.blocks {
                let prefix = if self.blocks == 1 { format!("layer{}.", s + 1) } else { format!("layer{}.{i}.", s + 1) };
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                v.push((prefix, c, out, stride));
                c = out;
            }
        }
        v
    }

    /// Channels of stage `s`'s blocks, `width·2ˢ`, saturating.
    fn stage_width(&self, s: usize) -> u128 {
        (self.width as u128).saturating_mul(1u128.checked_shl(s as u32).unwrap_or(u128::MAX))
    }

    /// Each stage's block channels and output positions for an `h × w` image (its first block
    /// halves the image after the first stage).
    fn stages_on(&self, h: usize, w: usize) -> impl Iterator<Item = (u128, u128)> + '_ {
        (0..self.stages).scan((h as u128, w as u128), move |(h, w), s| {
            if s > 0 {
                (*h, *w) = (h.div_ceil(2), w.div_ceil(2));
            }
            Some((self.stage_width(s), h.saturating_mul(*w)))
        })
    }

    /// Floats the main path's convolutions output for one `h × w` image: the stem and the two of
    /// every block (stride 1 or 2, padding 1), not a residual network's shortcuts. A training
    /// step keeps at least these for its backward, per image of the batch. In closed form and
    /// saturating, so that a memory check on an absurd shape costs nothing and cannot wrap.
    pub fn conv_outputs(&self, h: usize, w: usize) -> u128 {
        let stem = (self.width as u128).saturating_mul(h as u128 * w as u128);
        self.stages_on(h, w).fold(stem, |n, (out, pos)| {
            n.saturating_add(out.saturating_mul(pos).saturating_mul(2).saturating_mul(self.blocks as u128))
        })
    }

    /// Floats of the largest of those outputs for one `h × w` image. Its gradient exists during
    /// the backward while every output kept for the backward is still held.
    pub fn largest_output(&self, h: usize, w: usize) -> u128 {
        let stem = (self.width as u128).saturating_mul(h as u128 * w as u128);
        let blocks = self.stages_on(h, w).map(|(out, pos)| if self.blocks > 0 { out.saturating_mul(pos) } else { 0 });
        blocks.fold(stem, u128::max)
    }

    /// Weights of the main path's 3×3 convolutions (the stem and two per block): all but the
    /// batch norms, the shortcuts and the classifier, a lower bound of the parameters. In closed
    /// form and saturating, as [`CnnConfig::conv_outputs`].
    pub fn conv_weights(&self) -> u128 {
        let stem = (self.in_channels as u128).saturating_mul(self.width as u128).saturating_mul(9);
        (0..self.stages).fold(stem, |n, s| {
            if self.blocks == 0 {
                return n;
            }
            let out = self.stage_width(s);
            let inp = if s == 0 { self.width as u128 } else { self.stage_width(s - 1) };
            let square = out.saturating_mul(out);
            let first = inp.saturating_mul(out).saturating_add(square);
            let rest = square.saturating_mul(2).saturating_mul(self.blocks as u128 - 1);
            n.saturating_add(first.saturating_add(rest).saturating_mul(9))
        })
    }

    /// Channels into the classifier.
    fn features(&self) -> usize {
        self.width << (self.stages - 1)
    }

    fn check(&self) -> Result<()> {
        if self.in_channels == 0 || self.width == 0 || self.stages == 0 || self.blocks == 0 || self.classes == 0 {
            return Err(Error::Param(format!("{self:?}: every size must be at least 1")));
        }
        Ok(())
    }
}

/// A square convolution's weight `[out, inp, k, k]` (and bias `[out]` when wanted), fans as
/// [`crate::layers::Conv2d`] has them.
fn conv_vars(
    inp: usize,
    out: usize,
    k: usize,
    bias: bool,
    init: Init,
    rng: &mut Rng,
    dev: &Device,
) -> Result<(Var, Option<Var>)> {
    let fan_in = inp * k * k;
    let w = init.weights(out * fan_in, fan_in, out * k * k, rng);
    let w = Var::from_tensor(&Tensor::from_vec(w, (out, inp, k, k), dev)?)?;
    let b =
        if bias { Some(Var::from_tensor(&Tensor::from_vec(init.biases(out, fan_in, rng), out, dev)?)?) } else { None };
    Ok((w, b))
}

/// The convolution of a square kernel with "same" padding (`k / 2`).
fn conv(x: &Tensor, w: &Var, b: Option<&Var>, stride: usize, epilogue: Epilogue) -> Result<Tensor> {
    let pad = w.dims()[2] / 2;
    let geometry = Conv2dGeometry { stride, padding: pad, ..Default::default() };
    conv2d_with(x, w.as_tensor(), b.map(|b| b.as_tensor()), geometry, epilogue)
}

/// `relu(a + b)`, a residual block's output, as one op: the sum and the ReLU in one pass, and a
/// backward that passes the gradient where the output is positive, as PyTorch's (candle's ReLU
/// passes it where the input is `≥ 0`, zero included), the same tensor to both operands.
struct AddReluOp;

avx2_kernel! {
    /// `y = max(a + b, 0)` (NaN stays NaN, as torch.relu).
    fn add_relu_chunk(y: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            let v = a + b;
            y.write(if v < 0.0 { 0.0 } else { v });
        }
    }
}

avx2_kernel! {
    /// `gx = g` where the output `y` is positive, `0` elsewhere.
    fn relu_grad_chunk(gx: &mut [MaybeUninit<f32>], y: &[f32], g: &[f32]) {
        for ((d, &y), &g) in gx.iter_mut().zip(y).zip(g) {
            d.write(if y > 0.0 { g } else { 0.0 });
        }
    }
}

/// Elements per task of the elementwise ops.
const CHUNK: usize = 1 << 14;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "descent-add-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("add_relu: operands {:?} and {:?} differ in shape", l1.dims(), l2.dims());
        }
        let (a, b) = (f32_slice(s1, l1, "add_relu input")?, f32_slice(s2, l2, "add_relu input")?);
        // SAFETY: `add_relu_chunk` writes its whole chunk (the operands are as long as the output).
        let y = unsafe {
            par_filled(a.len(), CHUNK, |k, y| add_relu_chunk(y, &a[k * CHUNK..][..y.len()], &b[k * CHUNK..][..y.len()]))
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (sr, lr) = res.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (r, g) = (storage_f32s(&sr, lr, "add_relu output")?, storage_f32s(&sg, lg, "add_relu gradient")?);
        // SAFETY: `relu_grad_chunk` writes its whole chunk (output and gradient as long as it).
        let gx = unsafe {
            par_filled(r.len(), CHUNK, |k, gx| {
                relu_grad_chunk(gx, &r[k * CHUNK..][..gx.len()], &g[k * CHUNK..][..gx.len()])
            })
        };
        let gx = Tensor::from_vec(gx, a.dims(), a.device())?;
        Ok((Some(gx.clone()), Some(gx)))
    }
}

/// `relu(a + b)` by [`AddReluOp`].
fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)?)
}

fn push_bn(v: &mut Vec<(String, Var)>, prefix: &str, bn: &BatchNorm2d) {
    v.push((format!("{prefix}weight"), bn.weight.clone()));
    v.push((format!("{prefix}bias"), bn.bias.clone()));
}

fn push_buffers(v: &mut Vec<(String, Var)>, prefix: &str, bn: &BatchNorm2d) {
    v.extend(bn.named_buffers().into_iter().map(|(n, b)| (format!("{prefix}{n}"), b)));
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
#[derive(Clone)]
pub struct BasicBlock {
    /// The name prefix (`layer1.`, `layer2.0.`, …).
    pub prefix: String,
    /// The first 3×3 convolution's weight (no bias: batch norm follows).
    pub conv1: Var,
    /// The batch norm after `conv1`.
    pub bn1: BatchNorm2d,
    /// The second 3×3 convolution's weight.
    pub conv2: Var,
    /// The batch norm after `conv2`.
    pub bn2: BatchNorm2d,
    /// The 1×1 convolution and batch norm of the shortcut, where it is not the identity.
    pub downsample: Option<(Var, BatchNorm2d)>,
    /// The first convolution's (and the shortcut's) stride.
    pub stride: usize,
}

impl BasicBlock {
    /// The block's output; batch norm by batch statistics in [`Mode::Train`].
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        // The batch norm and its ReLU as one op.
        let h = self.bn1.forward_relu(&conv(x, &self.conv1, None, self.stride, Epilogue::Identity)?, mode)?;
        let h = self.bn2.forward(&conv(&h, &self.conv2, None, 1, Epilogue::Identity)?, mode)?;
        let shortcut = match &self.downsample {
            Some((w, bn)) => bn.forward(&conv(x, w, None, self.stride, Epilogue::Identity)?, mode)?,
            None => x.clone(),
        };
        add_relu(&h, &shortcut)
    }
}

/// The residual CNN described in the [module](self) documentation.
#[derive(Clone)]
pub struct ResNet {
    /// The shape.
    pub config: CnnConfig,
    /// The stem convolution's weight.
    pub conv1: Var,
    /// The stem's batch norm.
    pub bn1: BatchNorm2d,
    /// The residual blocks, stage by stage.
    pub blocks: Vec<BasicBlock>,
    /// The classifier after global average pooling.
    pub fc: Linear,
}

impl ResNet {
    /// The MNIST ResNet of `depth` weighted layers (`4n + 2`: 6, 10, 14, …) with `width` channels
    /// in its first stage; depth 6 and width 16 is the `resnet_mnist` reference's.
    pub fn new(depth: usize, width: usize, init: Init, rng: &mut Rng, dev: &Device) -> Result<ResNet> {
        Self::with_config(CnnConfig::mnist(depth, width)?, init, rng, dev)
    }

    /// Any layout. Convolution and classifier weights from `init`; batch norms as PyTorch's
    /// (weight 1, bias 0, running mean 0, running variance 1, momentum 0.1, eps 1e-5).
    pub fn with_config(config: CnnConfig, init: Init, rng: &mut Rng, dev: &Device) -> Result<ResNet> {
        config.check()?;
        let (conv1, _) = conv_vars(config.in_channels, config.width, 3, false, init, rng, dev)?;
        let bn1 = BatchNorm2d::new(config.width, dev)?;
        let mut blocks = vec![];
        for (prefix, inp, out, stride) in config.blocks() {
            let (c1, _) = conv_vars(inp, out, 3, false, init, rng, dev)?;
            let (c2, _) = conv_vars(out, out, 3, false, init, rng, dev)?;
            let downsample = if stride != 1 || inp != out {
                Some((conv_vars(inp, out, 1, false, init, rng, dev)?.0, BatchNorm2d::new(out, dev)?))
            } else {
                None
            };
            blocks.push(BasicBlock {
                prefix,
                conv1: c1,
                bn1: BatchNorm2d::new(out, dev)?,
                conv2: c2,
                bn2: BatchNorm2d::new(out, dev)?,
                downsample,
                stride,
            });
        }
        let fc = Linear::new(config.features(), config.classes, init, rng, dev)?;
        Ok(ResNet { config, conv1, bn1, blocks, fc })
    }

    /// Every batch norm with its name prefix, in registration order.
    fn batch_norms(&self) -> Vec<(String, &BatchNorm2d)> {
        let mut v = vec![("bn1.".to_string(), &self.bn1)];
        for b in &self.blocks {
            v.push((format!("{}bn1.", b.prefix), &b.bn1));
            v.push((format!("{}bn2.", b.prefix), &b.bn2));
            if let Some((_, bn)) = &b.downsample {
                v.push((format!("{}downsample.1.", b.prefix), bn));
            }
        }
        v
    }
}

impl Model for ResNet {
    /// In [`Mode::Train`] the batch norms normalize with the batch's statistics and move their
    /// running statistics; in [`Mode::Eval`] they use the running statistics and leave them.
    fn forward(&self, x: &Tensor, mode: Mode, _rng: &mut Rng) -> Result<Tensor> {
        let mut h = self.bn1.forward_relu(&conv(x, &self.conv1, None, 1, Epilogue::Identity)?, mode)?;
        for b in &self.blocks {
            h = b.forward(&h, mode)?;
        }
        let h = adaptive_avg_pool2d_1x1(&h)?.flatten_from(1)?;
        self.fc.forward(&h)
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![("conv1.weight".to_string(), self.conv1.clone())];
        push_bn(&mut v, "bn1.", &self.bn1);
        for b in &self.blocks {
            let p = &b.prefix;
            v.push((format!("{p}conv1.weight"), b.conv1.clone()));
            push_bn(&mut v, &format!("{p}bn1."), &b.bn1);
            v.push((format!("{p}conv2.weight"), b.conv2.clone()));
            push_bn(&mut v, &format!("{p}bn2."), &b.bn2);
            if let Some((w, bn)) = &b.downsample {
                v.push((format!("{p}downsample.0.weight"), w.clone()));
                push_bn(&mut v, &format!("{p}downsample.1."), bn);
            }
        }
        v.push(("fc.weight".into(), self.fc.weight.clone()));
        v.push(("fc.bias".into(), self.fc.bias.clone()));
        v
    }

    /// Each batch norm's `running_mean` and `running_var`.
    fn named_buffers(&self) -> Vec<(String, Var)> {
        let mut v = vec![];
        for (prefix, bn) in self.batch_norms() {
            push_buffers(&mut v, &prefix, bn);
        }
        v
    }
}

/// The [`ResNet`] layout without batch norm and without skip connections: the same convolutions
/// (with biases), each followed by ReLU, then global average pooling and the classifier, so the
/// same depth. Names as the ResNet's: `conv1`, `layer{s}[.{i}].conv1`, `.conv2`, `fc`.
#[derive(Clone)]
pub struct PlainCnn {
    /// The shape.
    pub config: CnnConfig,
    /// `(name prefix, weight, bias, stride)` of each convolution in order, the stem first.
    pub convs: Vec<(String, Var, Var, usize)>,
    /// The classifier after global average pooling.
    pub fc: Linear,
}

impl PlainCnn {
    /// The plain counterpart of [`ResNet::new`]: the same depth and width.
    pub fn new(depth: usize, width: usize, init: Init, rng: &mut Rng, dev: &Device) -> Result<PlainCnn> {
        Self::with_config(CnnConfig::mnist(depth, width)?, init, rng, dev)
    }

    /// The plain CNN of a [`CnnConfig`], initialized by `init`.
    pub fn with_config(config: CnnConfig, init: Init, rng: &mut Rng, dev: &Device) -> Result<PlainCnn> {
        config.check()?;
        let mut convs = vec![];
        let mut add = |prefix: String, inp: usize, out: usize, stride: usize, rng: &mut Rng| -> Result<()> {
            let (w, b) = conv_vars(inp, out, 3, true, init, rng, dev)?;
            convs.push((prefix, w, b.expect("a bias was asked for"), stride));
            Ok(())
        };
        add("conv1.".into(), config.in_channels, config.width, 1, rng)?;
        for (prefix, inp, out, stride) in config.blocks() {
            add(format!("{prefix}conv1."), inp, out, stride, rng)?;
            add(format!("{prefix}conv2."), out, out, 1, rng)?;
        }
        let fc = Linear::new(config.features(), config.classes, init, rng, dev)?;
        Ok(PlainCnn { config, convs, fc })
    }
}

impl Model for PlainCnn {
    fn forward(&self, x: &Tensor, _mode: Mode, _rng: &mut Rng) -> Result<Tensor> {
        let mut h = x.clone();
        for (_, w, b, stride) in &self.convs {
            h = conv(&h, w, Some(b), *stride, Epilogue::Relu)?;
        }
        let h = adaptive_avg_pool2d_1x1(&h)?.flatten_from(1)?;
        self.fc.forward(&h)
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![];
        for (p, w, b, _) in &self.convs {
            v.push((format!("{p}weight"), w.clone()));
            v.push((format!("{p}bias"), b.clone()));
        }
        v.push(("fc.weight".into(), self.fc.weight.clone()));
        v.push(("fc.bias".into(), self.fc.bias.clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::add_relu;
    use crate::rng::Rng;

    /// The sizes the memory check counts, by hand for two layouts: outputs of the stem and of
    /// each block's two convolutions, the largest of them, and the main path's weights.
    #[test]
    fn conv_sizes_count_the_main_path() {
        let c = super::CnnConfig::mnist(6, 16).unwrap();
        // Stem and stage 1: 16 × 28 × 28; stage 2: 32 × 14 × 14.
        assert_eq!(c.conv_outputs(28, 28), 12_544 + 2 * 12_544 + 2 * 6_272);
        assert_eq!(c.largest_output(28, 28), 12_544);
        assert_eq!(c.conv_weights(), 16 * 9 + (16 * 16 + 16 * 16) * 9 + (16 * 32 + 32 * 32) * 9);
        // Two blocks a stage, width 8, and an odd image: stage 2 is 16 × 8 × 8.
        let c = super::CnnConfig::mnist(10, 8).unwrap();
        assert_eq!(c.conv_outputs(15, 15), 8 * 225 * 5 + 16 * 64 * 4);
        assert_eq!(c.largest_output(15, 15), 8 * 225);
        let per_block = |i: u128, o: u128| (i * o + o * o) * 9;
        assert_eq!(c.conv_weights(), 8 * 9 + per_block(8, 8) * 2 + per_block(8, 16) + per_block(16, 16));
        // Absurd shapes saturate instead of wrapping, at once, without building any layer.
        let c = super::CnnConfig::mnist(4_000_000_002, usize::MAX).unwrap();
        assert_eq!(c.conv_weights(), u128::MAX);
        assert!(c.conv_outputs(28, 28) > 1u128 << 90 && c.largest_output(28, 28) > 1u128 << 70);
    }

    /// The add-ReLU op against candle's sum and ReLU away from zero (the same bits), and its
    /// gradient, to both operands, zero where the sum is zero (PyTorch's).
    #[test]
    fn add_relu_matches_candle_and_torch_at_zero() {
        let mut rng = Rng::new(3);
        let n = 40_000;
        let v = |rng: &mut Rng| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
        let (mut a, b, p) = (v(&mut rng), v(&mut rng), v(&mut rng));
        a[7] = -b[7];
        let var = |v: Vec<f32>| Var::from_vec(v, (4, 10_000), &Device::Cpu).unwrap();
        let (a, b) = (var(a), var(b));
        let probe = Tensor::from_vec(p, (4, 10_000), &Device::Cpu).unwrap();
        let ours = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&theirs));
        let g1 = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for x in [&a, &b] {
            let (mut ours, theirs) = (flat(g1.get(x.as_tensor()).unwrap()), flat(g2.get(x.as_tensor()).unwrap()));
            assert_eq!(ours[7], 0.0);
            ours[7] = theirs[7];
            assert_eq!(ours, theirs);
        }
    }
}
