//! Average pooling. candle 0.11's `avg_pool2d` backward spreads the gradient with
//! `upsample_nearest2d` over the whole input, which is wrong when a size is odd (the last row or
//! column, in no window, gets a share); descent's op routes each window's gradient to its own cells.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{f32_slice, par_filled, storage_f32s};
use crate::error::Result;

/// How the output size of a pooling rounds when the windows do not tile the (padded) input:
/// torch's `ceil_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// Only whole windows (torch's default, `ceil_mode=False`): rows and columns past the last one
    /// are in no window.
    #[default]
    Floor,
    /// One more window where cells are left over (`ceil_mode=True`), as long as it starts inside
    /// the input or its left padding.
    Ceil,
}

/// What an average pooling divides each window's sum by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Divisor {
    /// The window's cells, the padding's included, the window clipped at the padded input's edge
    /// (torch's default, `count_include_pad=True`).
    #[default]
    Window,
    /// The window's cells inside the input (`count_include_pad=False`).
    InputCells,
    /// This number, for every window (`divisor_override`); at least 1.
    Fixed(usize),
}

/// `torch.nn.AvgPool2d` (`torch.nn.functional.avg_pool2d`) of `[n, c, h, w]` or `[c, h, w]`: the
/// mean of each window (`kernel` rows × columns, `stride` apart, over the input with `padding`
/// zeros on each side), as torch computes it: the window's cells summed row by row in f32, then
/// divided by the [`Divisor`]. Build one with [`AvgPool2d::new`] and change what differs:
/// `AvgPool2d { padding: (1, 1), ..AvgPool2d::new(3, 2) }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// The window's rows and columns.
    pub kernel: (usize, usize),
    /// The window's step down and across (torch's default: the kernel).
    pub stride: (usize, usize),
    /// Zeros on the top and bottom, and on the left and right: at most half the window.
    pub padding: (usize, usize),
    /// How the output size rounds (torch's `ceil_mode`).
    pub rounding: Rounding,
    /// What a window's sum is divided by (torch's `count_include_pad` and `divisor_override`).
    pub divisor: Divisor,
}

/// One spatial dimension of a pooling: input size, window, step, padding.
#[derive(Debug, Clone, Copy)]
struct Axis {
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
}

impl Axis {
    /// The number of windows (torch's `pooling_output_shape`), if at least one.
    fn windows(&self, rounding: Rounding) -> Option<usize> {
        let (size, k, s, p) = (self.size as i64, self.kernel as i64, self.stride as i64, self.pad as i64);
        let span = size + 2 * p - (k - 1) - 1 + if rounding == Rounding::Ceil { s - 1 } else { 0 };
        let mut out = span.div_euclid(s) + 1;
        // The last window starts inside the input or its left padding.
        if rounding == Rounding::Ceil && (out - 1) * s >= size + p {
            out -= 1;
        }
        (out >= 1).then_some(out as usize)
    }

    /// Window `o`'s cells inside the input, and its length up to the padded input's edge.
    fn window(&self, o: usize) -> (std::ops::Range<usize>, usize) {
        let start = (o * self.stride) as i64 - self.pad as i64;
        let end = (start + self.kernel as i64).min((self.size + self.pad) as i64);
        let padded = (end - start) as usize;
        let first = start.max(0);
        (first as usize..end.min(self.size as i64).max(first) as usize, padded)
    }
}

impl AvgPool2d {
    /// A square window of `kernel` cells a side, moved `stride` cells at a time, without padding,
    /// floor rounding, dividing by the window's size.
    pub fn new(kernel: usize, stride: usize) -> Self {
        AvgPool2d {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (0, 0),
            rounding: Rounding::Floor,
            divisor: Divisor::Window,
        }
    }

    /// The rows' and columns' axes and the output's `(oh, ow)` for an input of shape `dims`, or
    /// torch's refusal.
    fn geometry(&self, dims: &[usize]) -> candle_core::Result<(Axis, Axis, usize, usize)> {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        if !(dims.len() == 3 || dims.len() == 4) || dims.contains(&0) {
            candle_core::bail!("avg_pool2d: input {dims:?}: must be [n, c, h, w] or [c, h, w], none of them 0");
        }
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            candle_core::bail!("avg_pool2d: kernel {:?} and stride {:?} must be at least 1", self.kernel, self.stride);
        }
        if ph > kh / 2 || pw > kw / 2 {
            candle_core::bail!(
                "avg_pool2d: padding {:?} must be at most half the kernel {:?} (as torch requires)",
                self.padding,
                self.kernel
            );
        }
        if self.divisor == Divisor::Fixed(0) {
            candle_core::bail!("avg_pool2d: a fixed divisor must be at least 1");
        }
        let r = dims.len();
        let rows = Axis { size: dims[r - 2], kernel: kh, stride: sh, pad: ph };
        let cols = Axis { size: dims[r - 1], kernel: kw, stride: sw, pad: pw };
        match (rows.windows(self.rounding), cols.windows(self.rounding)) {
            (Some(oh), Some(ow)) => Ok((rows, cols, oh, ow)),
            _ => candle_core::bail!(
                "avg_pool2d: input {dims:?} with kernel {:?}, stride {:?} and padding {:?} has no whole window",
                self.kernel,
                self.stride,
                self.padding
            ),
        }
    }

    /// What window `(oy, ox)`'s sum is divided by, and its cells inside the input.
    fn window(
        &self,
        rows: &Axis,
        cols: &Axis,
        oy: usize,
        ox: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>, f32) {
        let ((ry, py), (rx, px)) = (rows.window(oy), cols.window(ox));
        let divisor = match self.divisor {
            Divisor::Window => py * px,
            Divisor::InputCells => ry.len() * rx.len(),
            Divisor::Fixed(d) => d,
        };
        (ry, rx, divisor as f32)
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
        let (rows, cols, oh, ow) = self.geometry(dims)?;
        let (h, w) = (rows.size, cols.size);
        let x = f32_slice(s, l, "avg_pool2d input")?;
        let mut y = vec![0.0f32; x.len() / (h * w) * oh * ow];
        y.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(y, x)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (ry, rx, divisor) = self.window(&rows, &cols, oy, ox);
                    if ry.is_empty() || rx.is_empty() {
                        // A window wholly in the padding is 0, as in torch (none is, within torch's
                        // limits on the padding).
                        continue;
                    }
                    let mut sum = 0.0f32;
                    for iy in ry {
                        for &v in &x[iy * w + rx.start..iy * w + rx.end] {
                            sum += v;
                        }
                    }
                    y[oy * ow + ox] = sum / divisor;
                }
            }
        });
        let mut shape = dims[..dims.len() - 2].to_vec();
        shape.extend([oh, ow]);
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims();
        let (rows, cols, oh, ow) = self.geometry(dims)?;
        let (h, w) = (rows.size, cols.size);
        let g = grad.contiguous()?;
        let (sg, lg) = g.storage_and_layout();
        let g = storage_f32s(&sg, lg, "avg_pool2d gradient")?;
        let mut gx = vec![0.0f32; arg.elem_count()];
        gx.par_chunks_mut(h * w).zip(g.par_chunks(oh * ow)).for_each(|(gx, g)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (ry, rx, divisor) = self.window(&rows, &cols, oy, ox);
                    let v = g[oy * ow + ox] / divisor;
                    for iy in ry {
                        gx[iy * w + rx.start..iy * w + rx.end].iter_mut().for_each(|a| *a += v);
                    }
                }
            }
        });
        Ok(Some(Tensor::from_vec(gx, dims, arg.device())?))
    }
}

/// `torch.nn.functional.avg_pool2d(x, kernel, stride)`: a square window, no padding, floor mode
/// (the other arguments through [`AvgPool2d`]).
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
