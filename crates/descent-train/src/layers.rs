//! Convolution and pooling layers. Max-pooling is descent's own candle op: its backward routes each
//! window's gradient to the one element PyTorch picks (the first maximum in row-major order), where
//! candle 0.11's `max_pool2d` backward spreads it over `avg_pool(mask)`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use crate::conv::{Conv2dOp, Epilogue};
use crate::error::Result;
use crate::model::Init;
use crate::rng::Rng;

/// 2-D max-pooling of `[n, c, h, w]` with a square window, stride and padding (padded cells never
/// win), as `torch.nn.functional.max_pool2d` (`ceil_mode=False`, `dilation=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Side of the square window.
    pub kernel: usize,
    /// Step of the window (the first is the pooling's).
    pub stride: usize,
    /// Padding on each side (the first is the pooling's).
    pub padding: usize,
}

/// The op instance of one forward call: keeps the argmax of each window for its backward.
struct MaxPoolOp {
    pool: MaxPool2d,
    argmax: std::sync::Mutex<Vec<u32>>,
}

impl MaxPool2d {
    /// A max-pooling with this window, step and padding.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d { kernel, stride, padding }
    }

    pub(crate) fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Checks the window against an input of shape `dims` (`[n, c, h, w]`).
    pub(crate) fn check(&self, dims: &[usize]) -> candle_core::Result<()> {
        if dims.len() != 4 {
            candle_core::bail!("max_pool2d expects [n, c, h, w], got {dims:?}");
        }
        if self.kernel == 0 || self.stride == 0 || 2 * self.padding > self.kernel {
            candle_core::bail!(
                "max_pool2d: kernel {}, stride {}, padding {} (padding at most half the kernel)",
                self.kernel,
                self.stride,
                self.padding
            );
        }
        if dims[2] == 0 || dims[3] == 0 {
            candle_core::bail!("max_pool2d: an empty plane {dims:?} (height and width at least 1)");
        }
        if dims[2] + 2 * self.padding < self.kernel || dims[3] + 2 * self.padding < self.kernel {
            candle_core::bail!("max_pool2d window {} larger than the padded input {dims:?}", self.kernel);
        }
        Ok(())
    }

    /// One `[h, w]` plane: each output's maximum and the flat index of the first maximal element in
    /// row-major window order (PyTorch's choice among ties; NaN wins, as in torch).
    pub(crate) fn plane(&self, xp: &[f32], h: usize, w: usize, out: &mut [f32], idx: &mut [u32]) {
        if self.kernel == 2 && self.stride == 2 && self.padding == 0 {
            self.plane_2x2(xp, h, w, out, idx)
        } else {
            self.plane_general(xp, h, w, out, idx)
        }
    }

    /// [`Self::plane`] for any window.
    pub(crate) fn plane_general(&self, xp: &[f32], h: usize, w: usize, out: &mut [f32], idx: &mut [u32]) {
        let ow = self.out_size(w);
        for (o, (v, at)) in out.iter_mut().zip(idx.iter_mut()).enumerate() {
            let (oy, ox) = (o / ow, o % ow);
            let y0 = (oy * self.stride) as isize - self.padding as isize;
            let x0 = (ox * self.stride) as isize - self.padding as isize;
            let (ylo, yhi) = (y0.max(0) as usize, ((y0 + self.kernel as isize) as usize).min(h));
            let (xlo, xhi) = (x0.max(0) as usize, ((x0 + self.kernel as isize) as usize).min(w));
            let (mut best, mut j) = (xp[ylo * w + xlo], ylo * w + xlo);
            for iy in ylo..yhi {
                for (ix, &c) in xp[iy * w + xlo..iy * w + xhi].iter().enumerate() {
                    if c > best || (c.is_nan() && !best.is_nan()) {
                        best = c;
                        j = iy * w + xlo + ix;
                    }
                }
            }
            *v = best;
            *at = j as u32;
        }
    }

    /// [`Self::plane`] for the common 2×2 window with stride 2 and no padding: no window bounds,
    /// and selects instead of branches (the comparisons of random activations mispredict half the
    /// time).
    fn plane_2x2(&self, xp: &[f32], h: usize, w: usize, out: &mut [f32], idx: &mut [u32]) {
        /// Whether `c` replaces `best`: larger, or the first NaN.
        #[inline(always)]
        fn wins(c: f32, best: f32) -> bool {
            (c > best) | (c.is_nan() & !best.is_nan())
        }
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        for oy in 0..oh {
            let (r0, r1) = (&xp[2 * oy * w..][..2 * ow], &xp[(2 * oy + 1) * w..][..2 * ow]);
            let (outs, ats) = (&mut out[oy * ow..][..ow], &mut idx[oy * ow..][..ow]);
            let top = (2 * oy * w) as u32;
            for (ox, ((o, at), (p0, p1))) in
                outs.iter_mut().zip(ats.iter_mut()).zip(r0.chunks_exact(2).zip(r1.chunks_exact(2))).enumerate()
            {
                let (mut best, mut j) = (p0[0], 0u32);
                for (c, cj) in [(p0[1], 1), (p1[0], w as u32), (p1[1], w as u32 + 1)] {
                    let t = wins(c, best);
                    best = if t { c } else { best };
                    j = if t { cj } else { j };
                }
                *o = best;
                *at = top + 2 * ox as u32 + j;
            }
        }
    }

    /// The pooled input.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let op = MaxPoolOp { pool: *self, argmax: std::sync::Mutex::new(vec![]) };
        Ok(x.contiguous()?.apply_op1(op)?)
    }
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "descent-max-pool2d"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.pool;
        let dims = layout.dims();
        p.check(dims)?;
        let CpuStorage::F32(v) = storage else { candle_core::bail!("max_pool2d: f32 only") };
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("max_pool2d: input not contiguous") };
        let x = &v[a..b];
        let (h, w) = (dims[2], dims[3]);
        let (oh, ow) = (p.out_size(h), p.out_size(w));
        let mut out = vec![0.0f32; dims[0] * dims[1] * oh * ow];
        let mut idx = vec![0u32; out.len()];
        out.par_chunks_mut(oh * ow).zip(idx.par_chunks_mut(oh * ow)).enumerate().for_each(|(k, (o, i))| {
            p.plane(&x[k * h * w..(k + 1) * h * w], h, w, o, i);
        });
        *self.argmax.lock().expect("argmax lock") = idx;
        Ok((CpuStorage::F32(out), Shape::from((dims[0], dims[1], oh, ow))))
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims().to_vec();
        let (h, w) = (dims[2], dims[3]);
        let per_plane = res.dims()[2] * res.dims()[3];
        let g = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let idx = self.argmax.lock().expect("argmax lock");
        let mut gx = vec![0.0f32; arg.elem_count()];
        gx.par_chunks_mut(h * w).enumerate().for_each(|(k, plane)| {
            let gs = &g[k * per_plane..(k + 1) * per_plane];
            for (&gv, &j) in gs.iter().zip(&idx[k * per_plane..(k + 1) * per_plane]) {
                plane[j as usize] += gv;
            }
        });
        Ok(Some(Tensor::from_vec(gx, dims, arg.device())?))
    }
}

/// A 2-D convolution layer with PyTorch's weight layout `[out, in/groups, kh, kw]`.
#[derive(Clone)]
pub struct Conv2d {
    /// `[out, in/groups, kh, kw]`.
    pub weight: Var,
    /// `[out]`.
    pub bias: Var,
    /// Step of the kernel over the input.
    pub stride: usize,
    /// Zeros added on each side of both spatial axes.
    pub padding: usize,
    /// Spacing between the kernel's taps.
    pub dilation: usize,
    /// Independent groups of input and output channels.
    pub groups: usize,
}

impl Conv2d {
    /// A square-kernel convolution initialized like PyTorch (fan_in = in/groups · k²).
    pub fn new(inp: usize, out: usize, k: usize, init: Init, rng: &mut Rng) -> Result<Self> {
        if inp == 0 || out == 0 || k == 0 {
            return Err(crate::Error::Param(format!(
                "Conv2d: {inp} input channels, {out} output channels, kernel {k} (each at least 1)"
            )));
        }
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

    /// The convolution of `x`, `[n, in, h, w]` → `[n, out, h', w']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Epilogue::Identity)
    }

    /// The convolution with an activation (and pooling) fused into its op.
    pub fn forward_with(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let geometry =
            Conv2dGeometry { stride: self.stride, padding: self.padding, dilation: self.dilation, groups: self.groups };
        conv2d_with(x, self.weight.as_tensor(), Some(self.bias.as_tensor()), geometry, epilogue)
    }
}

/// `torch.nn.functional.conv2d`'s `stride`, `padding`, `dilation` and `groups`, with torch's
/// defaults (1, 0, 1, 1); the same in both spatial axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Step of the kernel over the input.
    pub stride: usize,
    /// Zeros added on each side of both spatial axes.
    pub padding: usize,
    /// Spacing between the kernel's taps.
    pub dilation: usize,
    /// Input and output channels are split into this many independent groups.
    pub groups: usize,
}

impl Default for Conv2dGeometry {
    fn default() -> Self {
        Conv2dGeometry { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

/// `torch.nn.functional.conv2d`: input `[n, c, h, w]`, weight `[o, c/groups, kh, kw]`, bias `[o]`,
/// as descent's im2col + GEMM op with its own backward ([`crate::conv::Conv2dOp`]).
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, geometry: Conv2dGeometry) -> Result<Tensor> {
    conv2d_with(x, w, b, geometry, Epilogue::Identity)
}

/// [`conv2d`] followed by the `epilogue` in the same op (e.g. LeNet's conv → ReLU → max-pool).
pub fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    geometry: Conv2dGeometry,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let Conv2dGeometry { stride, padding, dilation, groups } = geometry;
    let (xd, wd) = (x.dims(), w.dims());
    if wd.len() != 4 || xd.len() != 4 {
        return Err(crate::Error::Param(format!(
            "conv2d: input [n, c, h, w] {xd:?} and weight [out, in/groups, kh, kw] {wd:?}"
        )));
    }
    if wd.contains(&0) || xd[1..].contains(&0) {
        return Err(crate::Error::Param(format!(
            "conv2d: a zero-size dimension in input {xd:?} or weight {wd:?} (channels, kernel and image at least 1)"
        )));
    }
    let op = Conv2dOp::new(stride, padding, dilation, groups, epilogue);
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
