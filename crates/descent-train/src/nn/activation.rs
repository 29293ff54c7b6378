//! GELU, softmax and log-softmax as candle ops with their own backward. candle 0.11's softmax op has
//! no backward, and its composed log-softmax builds four tensors each way; its GELUs are unary ops
//! whose backward is a composition of several more.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{avx2_kernel, f32_slice, has_avx2, has_avx512, storage_f32s};
use crate::error::Result;
use crate::nn::ROWS_PER_TASK;
use descent_core::kernel::exp_neg_f32;

/// Which GELU: `torch.nn.functional.gelu(x, approximate="none" | "tanh")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `x·Φ(x)`, Φ the standard normal CDF, through `erf`.
    Erf,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    Tanh,
}

impl Gelu {
    /// The value and derivative at `x` (in f64, rounded once): the tanh form's path, and the
    /// reference the f32 exact form is tested against.
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

/// Elements per rayon task of the GELU loops.
const GELU_CHUNK: usize = 8192;

/// `erf(x)` in f32 by the rational approximation of Eigen and XLA (`generic_fast_erf_float`): an odd
/// degree-13 numerator over an even degree-8 denominator on `[-4, 4]`, where f32's `erf` reaches ±1.
/// Exactly ±1 from |x| = 3.92 on (where f32's `erf` rounds to ±1), so the GELU of a large negative
/// input is 0. Branch-free, so loops over it vectorize; its error against f64's `erf` is bounded in
/// the tests.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let saturated = x.abs() >= 3.92;
    let sign = 1.0f32.copysign(x);
    let x = x.clamp(-4.0, 4.0);
    // Horner's steps as fused multiply-adds (as Eigen evaluates them): one rounding a step, and
    // half the instructions of a product then a sum.
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_6e-5);
    p = p.mul_add(x2, -7.349_906_6e-4);
    p = p.mul_add(x2, -2.954_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    let r = (x * p / q).clamp(-1.0, 1.0);
    if saturated {
        sign
    } else {
        r
    }
}

avx2_kernel! {
    /// A causal softmax row's numerators in place, `xs[i] = exp(xs[i]·scale − m)` (every
    /// exponent ≤ 0: `m` is the row's largest `x·scale`), and their sum, in 8 interleaved lanes:
    /// vectorized, where `f32::exp` is a call per value and a running sum a chain of additions.
    pub(crate) fn scaled_exp_sum(xs: &mut [f32], scale: f32, m: f32) -> f32 {
        let mut lanes = [0.0f32; 8];
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            for (v, l) in c.iter_mut().zip(lanes.iter_mut()) {
                *v = exp_neg_f32(*v * scale - m);
                *l += *v;
            }
        }
        let mut tail = 0.0f32;
        for v in chunks.into_remainder() {
            *v = exp_neg_f32(*v * scale - m);
            tail += *v;
        }
        (((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))) + tail
    }
}

avx2_kernel! {
    /// The largest value of a row (as a fold of `f32::max`, NaN skipped), in 8 lanes: the
    /// maximum is exact in any order, and the fold's chain of one `max` after another was a
    /// scalar loop. An all-NaN or empty row gives −∞.
    pub(crate) fn row_max(xs: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut chunks = xs.chunks_exact(8);
        for c in &mut chunks {
            for (v, l) in c.iter().zip(lanes.iter_mut()) {
                *l = l.max(*v);
            }
        }
        let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        lanes.iter().fold(tail, |m, &v| m.max(v))
    }
}

/// The exact GELU and its derivative in f32: `x·Φ(x)` and `Φ(x) + x·φ(x)`.
#[inline(always)]
fn gelu_erf_f32(x: f32) -> (f32, f32) {
    let cdf = 0.5 + 0.5 * erf_f32(x * std::f32::consts::FRAC_1_SQRT_2);
    // 1/√(2π)
    let pdf = 0.398_942_3 * exp_neg_f32(-0.5 * x * x);
    (x * cdf, cdf + x * pdf)
}

/// `y = gelu(x)` (exact) over a chunk, vectorized by the compiler.
#[inline(always)]
fn gelu_erf_fwd_body(y: &mut [f32], x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v * (0.5 + 0.5 * erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `gx = g · gelu'(x)` (exact) over a chunk, vectorized by the compiler.
#[inline(always)]
fn gelu_erf_bwd_body(gx: &mut [f32], x: &[f32], g: &[f32]) {
    for ((o, &v), &g) in gx.iter_mut().zip(x).zip(g) {
        *o = g * gelu_erf_f32(v).1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_fwd_avx2(y: &mut [f32], x: &[f32]) {
    gelu_erf_fwd_body(y, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_bwd_avx2(gx: &mut [f32], x: &[f32], g: &[f32]) {
    gelu_erf_bwd_body(gx, x, g)
}

fn gelu_erf_fwd(y: &mut [f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { gelu_erf_fwd_avx2(y, x) };
    }
    gelu_erf_fwd_body(y, x)
}

fn gelu_erf_bwd(gx: &mut [f32], x: &[f32], g: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { gelu_erf_bwd_avx2(gx, x, g) };
    }
    gelu_erf_bwd_body(gx, x, g)
}

/// In place, `z` (plus `bias` added to every row of `bias.len()` values, when given) becomes its
/// exact GELU and `d` the derivative there: the values [`gelu_erf_fwd_body`] and
/// [`gelu_erf_bwd_body`] give, in one pass.
#[inline(always)]
fn gelu_erf_fwd_deriv_body(z: &mut [f32], d: &mut [f32], bias: Option<&[f32]>) {
    match bias {
        Some(bias) => {
            for (z, d) in z.chunks_mut(bias.len()).zip(d.chunks_mut(bias.len())) {
                for ((v, o), &b) in z.iter_mut().zip(d.iter_mut()).zip(bias) {
                    (*v, *o) = gelu_erf_f32(*v + b);
                }
            }
        }
        None => {
            for (v, o) in z.iter_mut().zip(d.iter_mut()) {
                (*v, *o) = gelu_erf_f32(*v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_fwd_deriv_avx2(z: &mut [f32], d: &mut [f32], bias: Option<&[f32]>) {
    gelu_erf_fwd_deriv_body(z, d, bias)
}

/// The same loop 16 floats wide: the GELU's polynomials are arithmetic-bound, and on a CPU with
/// two 512-bit FMA units twice as fast (the same operations per value, so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gelu_erf_fwd_deriv_avx512(z: &mut [f32], d: &mut [f32], bias: Option<&[f32]>) {
    gelu_erf_fwd_deriv_body(z, d, bias)
}

/// The GELU of `z` in place and its derivative into `d` (same length), across rayon tasks of
/// whole rows: for an op that applies the GELU to its own output and keeps the derivative for its
/// backward. With `bias`, `z` is rows of `bias.len()` values to which the bias is added first (a
/// linear layer's product before its bias).
pub(crate) fn gelu_in_place_with_derivative(which: Gelu, z: &mut [f32], d: &mut [f32], bias: Option<&[f32]>) {
    let row = bias.map_or(1, |b| b.len());
    assert!(row > 0 && z.len() == d.len() && z.len().is_multiple_of(row), "gelu rows");
    let rows = (GELU_CHUNK / row).max(1) * row;
    let chunks = z.par_chunks_mut(rows).zip(d.par_chunks_mut(rows));
    match which {
        Gelu::Erf => chunks.for_each(|(z, d)| {
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                // SAFETY: the CPU has AVX-512 F, AVX2 and FMA (checked above).
                return unsafe { gelu_erf_fwd_deriv_avx512(z, d, bias) };
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { gelu_erf_fwd_deriv_avx2(z, d, bias) };
            }
            gelu_erf_fwd_deriv_body(z, d, bias)
        }),
        Gelu::Tanh => chunks.for_each(|(z, d)| {
            for (k, (v, o)) in z.iter_mut().zip(d.iter_mut()).enumerate() {
                let b = bias.map_or(0.0, |b| b[k % row]);
                (*v, *o) = which.eval(if bias.is_some() { *v + b } else { *v });
            }
        }),
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
        let y: Vec<f32> = match self {
            Gelu::Erf => {
                let mut y = vec![0.0f32; x.len()];
                y.par_chunks_mut(GELU_CHUNK).zip(x.par_chunks(GELU_CHUNK)).for_each(|(y, x)| gelu_erf_fwd(y, x));
                y
            }
            Gelu::Tanh => x.par_iter().with_min_len(4096).map(|&v| self.eval(v).0).collect(),
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let (sx, lx) = arg.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let (x, g) = (storage_f32s(&sx, lx, "gelu input")?, storage_f32s(&sg, lg, "gelu gradient")?);
        let gx: Vec<f32> = match self {
            Gelu::Erf => {
                let mut gx = vec![0.0f32; x.len()];
                gx.par_chunks_mut(GELU_CHUNK)
                    .zip(x.par_chunks(GELU_CHUNK).zip(g.par_chunks(GELU_CHUNK)))
                    .for_each(|(gx, (x, g))| gelu_erf_bwd(gx, x, g));
                gx
            }
            Gelu::Tanh => x.par_iter().zip(g).with_min_len(4096).map(|(&v, &g)| g * self.eval(v).1).collect(),
        };
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
                // `(x − m) − ln Σ`, as torch: `x − (m + ln Σ)` would round `m + ln Σ` at the size
                // of the row's maximum (about 1e-3 at 1e4), an error the gradient `exp(y)·Σg` carries.
                let ls = sum.ln();
                y.iter_mut().zip(x).for_each(|(o, &v)| *o = (v - m) - ls);
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

#[cfg(test)]
mod tests {
    use super::{erf_f32, exp_neg_f32, gelu_erf_bwd, gelu_erf_fwd, row_max, scaled_exp_sum, Gelu};

    /// The lane maximum is the fold's, on rows of every length class, with NaN skipped as the
    /// fold skips it.
    #[test]
    fn row_max_is_the_folds_maximum() {
        for n in [0usize, 1, 7, 8, 9, 33, 64] {
            let mut xs: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
            if n > 3 {
                xs[2] = f32::NAN;
            }
            let fold = xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(row_max(&xs).to_bits(), fold.to_bits(), "{n}: {xs:?}");
        }
        assert_eq!(row_max(&[f32::NAN; 9]), f32::NEG_INFINITY);
    }

    /// The GELU-with-derivative pass gives the same bits in every build the CPU runs (baseline,
    /// AVX2, AVX-512), with and without a bias, on a grid with a tail that fills no whole vector.
    #[test]
    fn gelu_builds_give_the_same_bits() {
        let xs: Vec<f32> = (0..4099).map(|i| (i as f32 - 2050.0) * 3.7e-3).collect();
        let bias: Vec<f32> = (0..17).map(|i| i as f32 * 0.1 - 0.8).collect();
        let xs = &xs[..xs.len() / bias.len() * bias.len()];
        for bias in [None, Some(&bias[..])] {
            let (mut z0, mut d0) = (xs.to_vec(), vec![0.0; xs.len()]);
            super::gelu_erf_fwd_deriv_body(&mut z0, &mut d0, bias);
            #[cfg(target_arch = "x86_64")]
            {
                type Build = unsafe fn(&mut [f32], &mut [f32], Option<&[f32]>);
                let mut builds: Vec<(&str, Build)> = vec![];
                if crate::cpu::has_avx2() {
                    builds.push(("avx2", super::gelu_erf_fwd_deriv_avx2));
                }
                if crate::cpu::has_avx512() {
                    builds.push(("avx512", super::gelu_erf_fwd_deriv_avx512));
                }
                for (name, f) in builds {
                    let (mut z, mut d) = (xs.to_vec(), vec![0.0; xs.len()]);
                    // SAFETY: the CPU has the build's features (checked above).
                    unsafe { f(&mut z, &mut d, bias) };
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&z), bits(&z0), "{name} gelu, bias {}", bias.is_some());
                    assert_eq!(bits(&d), bits(&d0), "{name} derivative, bias {}", bias.is_some());
                }
            }
        }
    }

    /// A softmax row's numerators and their sum: each value `exp(x·scale − m)` within 2.4e-7
    /// relative of f64's, and the sum within 1e-6 relative, for rows of every length from 1 to 70
    /// (whole and partial lane groups), with the row's maximum among them giving exactly 1.
    #[test]
    fn scaled_exp_sum_matches_f64() {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
        };
        for len in 1..=70 {
            let xs: Vec<f32> = (0..len).map(|_| next()).collect();
            let scale = 0.176_776_7f32;
            let m = xs.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) * scale;
            let mut ys = xs.clone();
            let sum = scaled_exp_sum(&mut ys, scale, m);
            let mut want = 0.0f64;
            for (&x, &y) in xs.iter().zip(&ys) {
                let e = ((x * scale - m) as f64).exp();
                want += e;
                assert!((y as f64 - e).abs() <= 2.4e-7 * e, "len {len}: exp({}) = {y}, not {e}", x * scale - m);
            }
            assert!(ys.contains(&1.0), "len {len}: the maximum's numerator is 1");
            assert!((sum as f64 - want).abs() <= 1e-6 * want, "len {len}: sum {sum}, not {want}");
        }
    }

    /// The f32 `erf` and `exp` against f64's over a dense grid: `erf` within 5e-7 absolute (the
    /// rational approximation's own error is about 4.4e-7 at worst, a few f32 ulps of 1), `exp`
    /// within 2 ulps relative.
    #[test]
    fn f32_erf_and_exp_are_within_their_bounds() {
        let (mut worst_erf, mut worst_exp) = (0.0f64, 0.0f64);
        for i in -2_000_000i32..=2_000_000 {
            let x = i as f32 * 5e-6;
            let e = candle_core::cpu::erf::erf_f64(x as f64);
            worst_erf = worst_erf.max((erf_f32(x) as f64 - e).abs());
            let z = -(i.abs() as f32) * 4.3e-5;
            let r = (z as f64).exp();
            worst_exp = worst_exp.max((exp_neg_f32(z) as f64 - r).abs() / r);
        }
        assert!(worst_erf <= 5e-7, "erf error {worst_erf}");
        assert!(worst_exp <= 2.4e-7, "exp relative error {worst_exp}");
        assert_eq!(erf_f32(0.0), 0.0);
        assert_eq!((erf_f32(3.92), erf_f32(7.0), erf_f32(-30.0), erf_f32(f32::NEG_INFINITY)), (1.0, 1.0, -1.0, -1.0));
        assert_eq!(exp_neg_f32(0.0), 1.0);
    }

    /// The exact GELU's f32 value and derivative against the f64 evaluation, in absolute terms
    /// (4e-7·max(1, |x|), from the erf bound), also through the vectorized loops.
    #[test]
    fn f32_gelu_matches_f64() {
        let xs: Vec<f32> = (-400_000..=400_000).map(|i| i as f32 * 3e-5).chain([-1e4, 1e4, -40.0, 40.0]).collect();
        let (mut y, mut gx) = (vec![0.0f32; xs.len()], vec![0.0f32; xs.len()]);
        gelu_erf_fwd(&mut y, &xs);
        gelu_erf_bwd(&mut gx, &xs, &vec![1.0f32; xs.len()]);
        for ((&x, &y), &d) in xs.iter().zip(&y).zip(&gx) {
            let (ry, rd) = Gelu::Erf.eval(x);
            let bound = 4e-7 * x.abs().max(1.0);
            assert!((y - ry).abs() <= bound, "gelu({x}) = {y}, f64 gives {ry}");
            assert!((d - rd).abs() <= bound, "gelu'({x}) = {d}, f64 gives {rd}");
        }
    }
}
