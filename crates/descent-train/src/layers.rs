//! Convolution and pooling layers. Max-pooling is descent's own candle op: its backward routes each
//! window's gradient to the one element PyTorch picks (the first maximum in row-major order), where
//! candle 0.11's `max_pool2d` backward spreads it over `avg_pool(mask)`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var};

use crate::error::Result;
use crate::model::Init;
use crate::rng::Rng;

/// 2-D max-pooling of `[n, c, h, w]` with a square window, stride and zero... (−∞) padding, as
/// `torch.nn.functional.max_pool2d` (`ceil_mode=False`, `dilation=1`).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl MaxPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d { kernel, stride, padding }
    }

    fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// For each output element, the flat index (within its `[h, w]` plane) of the chosen maximum.
    fn argmax(&self, x: &[f32], dims: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let mut out = vec![0.0f32; n * c * oh * ow];
        let mut idx = vec![0usize; n * c * oh * ow];
        for plane in 0..n * c {
            let xp = &x[plane * h * w..(plane + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut at) = (f32::NEG_INFINITY, usize::MAX);
                    for ky in 0..self.kernel {
                        let iy = (oy * self.stride + ky) as isize - self.padding as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..self.kernel {
                            let ix = (ox * self.stride + kx) as isize - self.padding as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let j = iy as usize * w + ix as usize;
                            let v = xp[j];
                            // Strictly greater keeps the first maximum; NaN propagates as in torch.
                            if v > best || v.is_nan() && !best.is_nan() || at == usize::MAX {
                                best = v;
                                at = j;
                            }
                        }
                    }
                    let o = plane * oh * ow + oy * ow + ox;
                    out[o] = best;
                    idx[o] = at;
                }
            }
        }
        (out, idx)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1(*self)?)
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "descent-max-pool2d"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        if dims.len() != 4 {
            candle_core::bail!("max_pool2d expects [n, c, h, w], got {dims:?}");
        }
        if dims[2] + 2 * self.padding < self.kernel || dims[3] + 2 * self.padding < self.kernel {
            candle_core::bail!("max_pool2d window {} larger than the padded input {dims:?}", self.kernel);
        }
        let CpuStorage::F32(v) = storage else { candle_core::bail!("max_pool2d: f32 only") };
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("max_pool2d: input not contiguous") };
        let (out, _) = self.argmax(&v[a..b], dims);
        Ok((CpuStorage::F32(out), Shape::from((dims[0], dims[1], self.out_size(dims[2]), self.out_size(dims[3])))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims().to_vec();
        let x = arg.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let (_, idx) = self.argmax(&x, &dims);
        let (h, w) = (dims[2], dims[3]);
        let per_plane = g.len() / (dims[0] * dims[1]);
        let mut gx = vec![0.0f32; x.len()];
        for (o, (&gv, &j)) in g.iter().zip(&idx).enumerate() {
            let plane = o / per_plane;
            gx[plane * h * w + j] += gv;
        }
        Ok(Some(Tensor::from_vec(gx, dims, arg.device())?))
    }
}

/// A 2-D convolution layer with PyTorch's weight layout `[out, in/groups, kh, kw]`.
#[derive(Clone)]
pub struct Conv2d {
    pub weight: Var,
    pub bias: Var,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Conv2d {
    /// A square-kernel convolution initialized like PyTorch (fan_in = in/groups · k²).
    pub fn new(inp: usize, out: usize, k: usize, init: Init, rng: &mut Rng) -> Result<Self> {
        let fan_in = inp * k * k;
        let w = init.weights(out * fan_in, fan_in, out * k * k, rng);
        let b = init.biases(out, fan_in, rng);
        let dev = candle_core::Device::Cpu;
        Ok(Conv2d {
            weight: Var::from_tensor(&Tensor::from_vec(w, (out, inp, k, k), &dev)?)?,
            bias: Var::from_tensor(&Tensor::from_vec(b, out, &dev)?)?,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(
            x,
            self.weight.as_tensor(),
            Some(self.bias.as_tensor()),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
    }
}

/// `torch.nn.functional.conv2d`: input `[n, c, h, w]`, weight `[o, c/groups, kh, kw]`, bias `[o]`,
/// as descent's im2col + GEMM op with its own backward ([`crate::conv::Conv2dOp`]).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let op = crate::conv::Conv2dOp { stride, padding, dilation, groups };
    let zeros;
    let b = match b {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(w.dims()[0], w.dtype(), w.device())?;
            &zeros
        }
    };
    Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)?)
}
