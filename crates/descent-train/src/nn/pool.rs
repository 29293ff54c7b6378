//! Average pooling. candle 0.11's `avg_pool2d` backward spreads the gradient with
//! `upsample_nearest2d` over the whole input, which is wrong when a size is odd (the last row or
//! column, in no window, gets a share); descent's op routes each window's gradient to its own cells.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{f32_slice, par_filled, storage_f32s};
use crate::error::Result;

/// `torch.nn.functional.avg_pool2d` of `[n, c, h, w]` with a square window and stride, no padding,
/// floor mode: rows and columns past the last whole window are in no window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Side of the square window.
    pub kernel: usize,
    /// Step of the window.
    pub stride: usize,
}

impl AvgPool2d {
    /// An average pooling with this window and step, no padding.
    pub fn new(kernel: usize, stride: usize) -> Self {
        AvgPool2d { kernel, stride }
    }

    /// `(oh, ow)` for an input of shape `dims`.
    fn out(&self, dims: &[usize]) -> candle_core::Result<(usize, usize)> {
        if dims.len() != 4 || self.kernel == 0 || self.stride == 0 || dims[2] < self.kernel || dims[3] < self.kernel {
            candle_core::bail!(
                "avg_pool2d: input [n, c, h, w] {dims:?} with kernel {} and stride {} (at least one window)",
                self.kernel,
                self.stride
            );
        }
        Ok(((dims[2] - self.kernel) / self.stride + 1, (dims[3] - self.kernel) / self.stride + 1))
    }

    /// The pooled input.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1(*self)?)
    }
}

impl CustomOp1 for AvgPool2d {
    fn name(&self) -> &'static str {
        "descent-avg-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (oh, ow) = self.out(dims)?;
        let (h, w, k) = (dims[2], dims[3], self.kernel);
        let x = f32_slice(s, l, "avg_pool2d input")?;
        let scale = 1.0 / (k * k) as f32;
        let mut y = vec![0.0f32; dims[0] * dims[1] * oh * ow];
        y.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(y, x)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (y0, x0) = (oy * self.stride, ox * self.stride);
                    let sum: f32 = (y0..y0 + k).map(|iy| x[iy * w + x0..][..k].iter().sum::<f32>()).sum();
                    y[oy * ow + ox] = sum * scale;
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((dims[0], dims[1], oh, ow))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims();
        let (oh, ow) = self.out(dims)?;
        let (h, w, k) = (dims[2], dims[3], self.kernel);
        let g = grad.contiguous()?;
        let (sg, lg) = g.storage_and_layout();
        let g = storage_f32s(&sg, lg, "avg_pool2d gradient")?;
        let scale = 1.0 / (k * k) as f32;
        let mut gx = vec![0.0f32; arg.elem_count()];
        gx.par_chunks_mut(h * w).zip(g.par_chunks(oh * ow)).for_each(|(gx, g)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (y0, x0, v) = (oy * self.stride, ox * self.stride, g[oy * ow + ox] * scale);
                    for iy in y0..y0 + k {
                        gx[iy * w + x0..][..k].iter_mut().for_each(|a| *a += v);
                    }
                }
            }
        });
        Ok(Some(Tensor::from_vec(gx, dims, arg.device())?))
    }
}

/// `torch.nn.functional.avg_pool2d(x, kernel, stride)` (no padding, floor mode).
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    AvgPool2d::new(kernel, stride).forward(x)
}

/// Global average pooling, `torch.nn.functional.adaptive_avg_pool2d(x, 1)`: `[n, c, h, w]` to
/// `[n, c, 1, 1]`.
pub fn adaptive_avg_pool2d_1x1(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GlobalAvgPool)?)
}

/// `adaptive_avg_pool2d(x, 1)` as one op: each plane's mean (summed in f64), and a backward that
/// writes each plane's share of its gradient, where candle's `mean` backward broadcast it and
/// the gradient store then copied the broadcast element by element.
struct GlobalAvgPool;

impl CustomOp1 for GlobalAvgPool {
    fn name(&self) -> &'static str {
        "descent-global-avg-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!("adaptive_avg_pool2d: input {:?} is not [n, c, h, w]", l.dims());
        };
        if h * w == 0 {
            candle_core::bail!("adaptive_avg_pool2d: an empty plane ({h} × {w}) has no mean");
        }
        let x = f32_slice(s, l, "adaptive_avg_pool2d input")?;
        let y: Vec<f32> =
            x.par_chunks(h * w).with_min_len(64).map(|p| (crate::nn::norm::sum(p) / (h * w) as f64) as f32).collect();
        Ok((CpuStorage::F32(y), Shape::from((n, c, 1, 1))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let (sg, lg) = g.storage_and_layout();
        let g = storage_f32s(&sg, lg, "adaptive_avg_pool2d gradient")?;
        let plane = arg.dims()[2..].iter().product::<usize>();
        let share = 1.0 / plane as f32;
        // Planes per task.
        const PLANES: usize = 64;
        // SAFETY: each task writes every element of its planes.
        let gx = unsafe {
            par_filled(arg.elem_count(), PLANES * plane, |k, planes| {
                for (p, &g) in planes.chunks_mut(plane).zip(&g[k * PLANES..]) {
                    p.fill(MaybeUninit::new(g * share));
                }
            })
        };
        Ok(Some(Tensor::from_vec(gx, arg.dims(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::AvgPool2d;
    use crate::rng::Rng;

    /// Other windows than 2×2 / 2: the forward equals candle's (which is right), and the backward
    /// is the forward's adjoint, `⟨pool(x), g⟩ = ⟨x, poolᵀ(g)⟩`.
    #[test]
    fn avg_pool_is_candles_forward_and_its_adjoint() {
        let mut rng = Rng::new(6);
        for (k, s, h, w) in [(3, 2, 7, 8), (2, 1, 4, 5), (2, 2, 5, 5), (3, 3, 3, 10)] {
            let n = 2 * 3 * h * w;
            let x =
                Var::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f32>>(), (2, 3, h, w), &Device::Cpu).unwrap();
            let y = AvgPool2d::new(k, s).forward(x.as_tensor()).unwrap();
            let theirs = x.as_tensor().avg_pool2d_with_stride(k, s).unwrap();
            let d = (&y - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "forward k{k} s{s} {h}x{w}: {d}");
            let g: Vec<f32> = (0..y.elem_count()).map(|_| rng.normal()).collect();
            let g = Tensor::from_vec(g, y.dims(), &Device::Cpu).unwrap();
            let lhs = (&y * &g).unwrap().sum_all().unwrap();
            let gx = lhs.backward().unwrap();
            let rhs = (x.as_tensor() * gx.get(x.as_tensor()).unwrap()).unwrap().sum_all().unwrap();
            let (l, r) = (lhs.to_scalar::<f32>().unwrap(), rhs.to_scalar::<f32>().unwrap());
            assert!((l - r).abs() <= 1e-5 * l.abs().max(1.0), "adjoint k{k} s{s} {h}x{w}: {l} vs {r}");
        }
        let small = Tensor::zeros((1, 1, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(AvgPool2d::new(2, 2).forward(&small).is_err());
    }
}
