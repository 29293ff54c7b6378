//! 2-D convolution as a candle op with its own backward: im2col + GEMM (the `gemm` crate candle
//! itself uses) for the output and both gradients, images split across threads, and the bias
//! gradient summed directly. candle 0.11's path (conv_transpose2d for the input gradient, a
//! `sum_keepdim([0, 2, 3])` for the bias) takes most of LeNet-5's step.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::gemm::matmul;
use rayon::prelude::*;

/// Images per task: fixed, so the reduction order of the weight gradient (and so its bits) does not
/// depend on the number of threads.
const IMAGES_PER_TASK: usize = 8;

/// `torch.nn.functional.conv2d` arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    /// Input channels per group, output channels per group.
    cg: usize,
    og: usize,
}

impl Geom {
    /// Rows of an image's column matrix per group: `cg · kh · kw`.
    fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }
    fn hw(&self) -> usize {
        self.oh * self.ow
    }
}

impl Conv2dOp {
    fn geom(&self, x: &[usize], w: &[usize]) -> candle_core::Result<Geom> {
        if x.len() != 4 || w.len() != 4 {
            candle_core::bail!(
                "conv2d expects input [n, c, h, w] and weight [o, c/groups, kh, kw], got {x:?} and {w:?}"
            );
        }
        let (n, c, h, wd) = (x[0], x[1], x[2], x[3]);
        let (o, cg, kh, kw) = (w[0], w[1], w[2], w[3]);
        let g = self.groups;
        if g == 0 || c % g != 0 || o % g != 0 || cg != c / g {
            candle_core::bail!(
                "conv2d: {c} input and {o} output channels do not split into {g} groups of weight {w:?}"
            );
        }
        let span = |k: usize| self.dilation * (k - 1) + 1;
        if h + 2 * self.padding < span(kh) || wd + 2 * self.padding < span(kw) || self.stride == 0 {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} (dilation {}) larger than the padded input {x:?}",
                self.dilation
            );
        }
        let oh = (h + 2 * self.padding - span(kh)) / self.stride + 1;
        let ow = (wd + 2 * self.padding - span(kw)) / self.stride + 1;
        Ok(Geom { n, c, h, w: wd, o, kh, kw, oh, ow, cg, og: o / g })
    }

    /// The column matrix `[cg·kh·kw, oh·ow]` of group `gi` of one image `x` (`[c, h, w]`).
    fn im2col(&self, g: &Geom, x: &[f32], gi: usize, cols: &mut [f32]) {
        let hw = g.hw();
        for ci in 0..g.cg {
            let plane = &x[(gi * g.cg + ci) * g.h * g.w..][..g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &mut cols[((ci * g.kh + ky) * g.kw + kx) * hw..][..hw];
                    for oy in 0..g.oh {
                        let iy = (oy * self.stride + ky * self.dilation) as isize - self.padding as isize;
                        let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                        if iy < 0 || iy >= g.h as isize {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let x0 = (kx * self.dilation) as isize - self.padding as isize;
                        if self.stride == 1 && x0 >= 0 && x0 as usize + g.ow <= g.w {
                            // The whole output row reads one contiguous run of the input row.
                            out.copy_from_slice(&src[x0 as usize..x0 as usize + g.ow]);
                            continue;
                        }
                        for (ox, v) in out.iter_mut().enumerate() {
                            let ix = (ox * self.stride + kx * self.dilation) as isize - self.padding as isize;
                            *v = if ix < 0 || ix >= g.w as isize { 0.0 } else { src[ix as usize] };
                        }
                    }
                }
            }
        }
    }

    /// Adds the column matrix gradient back into the image gradient (the adjoint of `im2col`).
    fn col2im(&self, g: &Geom, cols: &[f32], gi: usize, gx: &mut [f32]) {
        let hw = g.hw();
        for ci in 0..g.cg {
            let plane = &mut gx[(gi * g.cg + ci) * g.h * g.w..][..g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &cols[((ci * g.kh + ky) * g.kw + kx) * hw..][..hw];
                    for oy in 0..g.oh {
                        let iy = (oy * self.stride + ky * self.dilation) as isize - self.padding as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let x0 = (kx * self.dilation) as isize - self.padding as isize;
                        if self.stride == 1 && x0 >= 0 && x0 as usize + g.ow <= g.w {
                            let d = &mut dst[x0 as usize..x0 as usize + g.ow];
                            d.iter_mut().zip(&row[oy * g.ow..(oy + 1) * g.ow]).for_each(|(a, b)| *a += b);
                            continue;
                        }
                        for (ox, v) in row[oy * g.ow..(oy + 1) * g.ow].iter().enumerate() {
                            let ix = (ox * self.stride + kx * self.dilation) as isize - self.padding as isize;
                            if ix >= 0 && (ix as usize) < g.w {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("conv2d: {what} must be f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("conv2d: {what} must be contiguous") };
    Ok(&v[a..b])
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "descent-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geom(l1.dims(), l2.dims())?;
        let (x, w, b) = (f32s(s1, l1, "input")?, f32s(s2, l2, "weight")?, f32s(s3, l3, "bias")?);
        if b.len() != g.o {
            candle_core::bail!("conv2d: bias has {} elements for {} output channels", b.len(), g.o);
        }
        let (k, hw) = (g.k(), g.hw());
        let mut out = vec![0.0f32; g.n * g.o * hw];
        out.par_chunks_mut(g.o * hw).enumerate().for_each(|(ni, y)| {
            let xi = &x[ni * g.c * g.h * g.w..(ni + 1) * g.c * g.h * g.w];
            let mut cols = vec![0.0f32; k * hw];
            for gi in 0..self.groups {
                self.im2col(&g, xi, gi, &mut cols);
                let yg = &mut y[gi * g.og * hw..(gi + 1) * g.og * hw];
                matmul(yg, false, &w[gi * g.og * k..(gi + 1) * g.og * k], false, &cols, false, g.og, hw, k, false);
            }
            for (oc, plane) in y.chunks_mut(hw).enumerate() {
                plane.iter_mut().for_each(|v| *v += b[oc]);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geom(x.dims(), w.dims())?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.flatten_all()?.to_vec1::<f32>()?;
        let gy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (k, hw, img) = (g.k(), g.hw(), g.c * g.h * g.w);
        // The input of a first layer is data: no gradient to compute for it.
        let need_gx = x.track_op();
        let mut gx = vec![0.0f32; xs.len()];
        // Per task of IMAGES_PER_TASK images: its input gradients (disjoint) and a partial weight
        // and bias gradient, reduced afterwards in task order.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = gx
            .par_chunks_mut(IMAGES_PER_TASK * img)
            .enumerate()
            .map(|(t, gxs)| {
                let mut gw = vec![0.0f32; ws.len()];
                let mut gb = vec![0.0f32; g.o];
                let mut cols = vec![0.0f32; k * hw];
                let mut gcols = vec![0.0f32; k * hw];
                for (j, gxi) in gxs.chunks_mut(img).enumerate() {
                    let ni = t * IMAGES_PER_TASK + j;
                    let xi = &xs[ni * img..(ni + 1) * img];
                    let gyi = &gy[ni * g.o * hw..(ni + 1) * g.o * hw];
                    for gi in 0..self.groups {
                        let gyg = &gyi[gi * g.og * hw..(gi + 1) * g.og * hw];
                        self.im2col(&g, xi, gi, &mut cols);
                        // dW_g += dY_g [og × hw] · colsᵀ [hw × k]
                        matmul(
                            &mut gw[gi * g.og * k..(gi + 1) * g.og * k],
                            true,
                            gyg,
                            false,
                            &cols,
                            true,
                            g.og,
                            k,
                            hw,
                            false,
                        );
                        if need_gx {
                            // dcols = W_gᵀ [k × og] · dY_g [og × hw]
                            let wg = &ws[gi * g.og * k..(gi + 1) * g.og * k];
                            matmul(&mut gcols, false, wg, true, gyg, false, k, hw, g.og, false);
                            self.col2im(&g, &gcols, gi, gxi);
                        }
                    }
                    for (oc, plane) in gyi.chunks(hw).enumerate() {
                        gb[oc] += plane.iter().sum::<f32>();
                    }
                }
                (gw, gb)
            })
            .collect();
        let mut gw = vec![0.0f32; ws.len()];
        let mut gb = vec![0.0f32; g.o];
        for (pw, pb) in &partials {
            gw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            gb.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((
            if need_gx { Some(Tensor::from_vec(gx, x.dims(), dev)?) } else { None },
            Some(Tensor::from_vec(gw, w.dims(), dev)?),
            Some(Tensor::from_vec(gb, g.o, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::layers::conv2d;
    use crate::rng::Rng;

    fn randn(shape: &[usize], rng: &mut Rng) -> Var {
        let n = shape.iter().product();
        Var::from_tensor(
            &Tensor::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap(),
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// descent's convolution against candle's forward (an independent implementation checked
    /// against PyTorch) and its gradients against finite differences, which are exact up to
    /// rounding because a convolution is linear in each operand; over strides, paddings,
    /// dilations, groups and odd sizes, without bias. (candle 0.11.1's own backward fails on the
    /// second case: its input gradient comes out 10×12 for a 10×11 input.)
    #[test]
    fn forward_matches_candle_and_gradients_match_finite_differences() {
        let mut rng = Rng::new(5);
        for (stride, padding, dilation, groups, c, o, h, w, k) in [
            (1, 0, 1, 1, 3, 4, 9, 7, 3),
            (2, 1, 1, 1, 2, 3, 10, 11, 3),
            (1, 2, 2, 1, 2, 2, 9, 9, 3),
            (2, 0, 1, 2, 4, 6, 8, 9, 2),
            (3, 1, 2, 3, 6, 3, 13, 12, 3),
            (1, 1, 1, 4, 4, 4, 5, 6, 1),
        ] {
            let case = (stride, padding, dilation, groups);
            let x = randn(&[2, c, h, w], &mut rng);
            let wt = randn(&[o, c / groups, k, k], &mut rng);
            let conv = |x: &Tensor, w: &Tensor| conv2d(x, w, None, stride, padding, dilation, groups).unwrap();
            let ours = conv(x.as_tensor(), wt.as_tensor());
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), padding, stride, dilation, groups).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-4, "{case:?} output");
            let probe: Vec<f32> = (0..ours.elem_count()).map(|_| rng.normal()).collect();
            let probe = Tensor::from_vec(probe, ours.dims(), &Device::Cpu).unwrap();
            let loss = |x: &Tensor, w: &Tensor| -> f64 {
                (conv(x, w) * &probe).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
            };
            let grads = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let base = loss(x.as_tensor(), wt.as_tensor());
            for (which, v) in [(0, &x), (1, &wt)] {
                let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let vals = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for _ in 0..12 {
                    let i = rng.below(vals.len());
                    let mut bumped = vals.clone();
                    bumped[i] += 1.0;
                    let t = Tensor::from_vec(bumped, v.dims(), &Device::Cpu).unwrap();
                    let fd = if which == 0 { loss(&t, wt.as_tensor()) } else { loss(x.as_tensor(), &t) } - base;
                    assert!(
                        (fd - g[i] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                        "{case:?} operand {which} [{i}]: {fd} vs {}",
                        g[i]
                    );
                }
            }
        }
    }
}
