//! GELU, softmax and log-softmax as candle ops with their own backward. candle 0.11's softmax op has
//! no backward, and its composed log-softmax builds four tensors each way; its GELUs are unary ops
//! whose backward is a composition of several more.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{f32_slice, storage_f32s};
use crate::error::Result;
use crate::nn::ROWS_PER_TASK;

/// Which GELU: `torch.nn.functional.gelu(x, approximate="none" | "tanh")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `x·Φ(x)`, Φ the standard normal CDF, through `erf`.
    Erf,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    Tanh,
}

impl Gelu {
    /// The value and derivative at `x` (in f64, rounded once).
    fn eval(self, x: f32) -> (f32, f32) {
        let x = x as f64;
        match self {
            Gelu::Erf => {
                let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2));
                let pdf =
                    (-0.5 * x * x).exp() * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
                ((x * cdf) as f32, (cdf + x * pdf) as f32)
            }
            Gelu::Tanh => {
                const K: f64 = 0.044_715;
                let s = (2.0 / std::f64::consts::PI).sqrt();
                let t = (s * (x + K * x * x * x)).tanh();
                let dy = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * s * (1.0 + 3.0 * K * x * x);
                ((0.5 * x * (1.0 + t)) as f32, dy as f32)
            }
        }
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        match self {
            Gelu::Erf => "descent-gelu-erf",
            Gelu::Tanh => "descent-gelu-tanh",
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu input")?;
        let y: Vec<f32> = x.par_iter().with_min_len(4096).map(|&v| self.eval(v).0).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let (sx, lx) = arg.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let (x, g) = (storage_f32s(&sx, lx, "gelu input")?, storage_f32s(&sg, lg, "gelu gradient")?);
        let gx: Vec<f32> = x.par_iter().zip(g).with_min_len(4096).map(|(&v, &g)| g * self.eval(v).1).collect();
        Ok(Some(Tensor::from_vec(gx, arg.dims(), arg.device())?))
    }
}

/// `torch.nn.functional.gelu` of any shape.
pub fn gelu(x: &Tensor, which: Gelu) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(which)?)
}

/// Softmax or log-softmax along the last dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SoftmaxOp {
    log: bool,
}

/// The last dimension's size of a tensor with at least one dimension.
fn last_dim(dims: &[usize], what: &str) -> candle_core::Result<usize> {
    match dims.last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!("{what}: needs a non-empty last dimension, got shape {dims:?}"),
    }
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        if self.log {
            "descent-log-softmax"
        } else {
            "descent-softmax"
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = self.name();
        let n = last_dim(l.dims(), what)?;
        let x = f32_slice(s, l, what)?;
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(n).zip(x.par_chunks(n)).with_min_len(ROWS_PER_TASK).for_each(|(y, x)| {
            let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            // A row of −∞ (all masked) has no maximum to shift by; its result is NaN, as in torch.
            let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
            let mut sum = 0.0f32;
            for (o, &v) in y.iter_mut().zip(x) {
                *o = (v - m).exp();
                sum += *o;
            }
            if self.log {
                let lse = m + sum.ln();
                y.iter_mut().zip(x).for_each(|(o, &v)| *o = v - lse);
            } else {
                let r = 1.0 / sum;
                y.iter_mut().for_each(|o| *o *= r);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = last_dim(res.dims(), self.name())?;
        let g = grad.contiguous()?;
        let (sy, ly) = res.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let (y, g) = (storage_f32s(&sy, ly, "softmax output")?, storage_f32s(&sg, lg, "softmax gradient")?);
        let mut gx = vec![0.0f32; y.len()];
        gx.par_chunks_mut(n).zip(y.par_chunks(n).zip(g.par_chunks(n))).with_min_len(ROWS_PER_TASK).for_each(
            |(gx, (y, g))| {
                if self.log {
                    // d/dx of log-softmax: g − softmax·Σg.
                    let s: f32 = g.iter().sum();
                    gx.iter_mut().zip(y.iter().zip(g)).for_each(|(o, (&y, &g))| *o = g - y.exp() * s);
                } else {
                    // d/dx of softmax: y·(g − Σ y·g).
                    let s: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    gx.iter_mut().zip(y.iter().zip(g)).for_each(|(o, (&y, &g))| *o = y * (g - s));
                }
            },
        );
        Ok(Some(Tensor::from_vec(gx, res.dims(), res.device())?))
    }
}

/// `torch.softmax(x, dim=-1)`, stable for large and offset inputs.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(SoftmaxOp { log: false })?)
}

/// `torch.log_softmax(x, dim=-1)`, computed around each row's maximum.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(SoftmaxOp { log: true })?)
}
