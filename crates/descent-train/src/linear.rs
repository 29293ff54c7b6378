//! A fully connected layer as one candle op with its own backward: `y = x Wᵀ + b` by one GEMM,
//! and in the backward `dW = dYᵀ x` (one GEMM), `db` = column sums of `dY`, `dx = dY W` (one GEMM,
//! skipped when `x` is data). candle's path builds a transposed copy, a separate bias add and a
//! `sum_keepdim` for the bias gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::cpu::{avx2_kernel, f32_slice, give_back_buffer, storage_f32s, take_buffer};
use crate::gemm::{matmul_in, matmul_new};
use crate::nn::activation::{gelu_in_place_with_derivative, Gelu};
use crate::precision::Precision;

/// Products at least this large (multiply-adds) run the GEMM across threads.
const PARALLEL_FLOPS: usize = 1 << 22;

/// The activation applied by the linear op to its output, in the same pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: `x Wᵀ + b`.
    Identity,
    /// `relu(x Wᵀ + b)`: candle's separate ReLU costs its backward a zero-filled buffer, a
    /// comparison, a product and a sum the size of the output.
    Relu,
    /// `gelu(x Wᵀ + b)` (the MLP of a transformer): the op keeps the GELU's derivative at the
    /// pre-activation for its backward, where candle's separate op would keep the pre-activation,
    /// evaluate the derivative again in the backward, and zero-fill and add a gradient of the
    /// output's size in between.
    Gelu(Gelu),
}

/// `torch.nn.functional.linear`, followed by an [`Activation`], its products (forward and
/// backward) in a [`Precision`].
#[derive(Debug, Clone)]
pub struct LinearOp {
    act: Activation,
    precision: Precision,
    /// The activation's derivative at the pre-activation, from the forward (GELU only).
    derivative: Arc<Mutex<Vec<f32>>>,
}

impl LinearOp {
    /// The op for `act` with products in `precision`.
    pub fn new(act: Activation, precision: Precision) -> Self {
        LinearOp { act, precision, derivative: Arc::new(Mutex::new(Vec::new())) }
    }
}

impl Drop for LinearOp {
    /// The GELU derivative's buffer goes back to this thread's buffers for the next forward
    /// (unless a clone of the op still holds it).
    fn drop(&mut self) {
        if Arc::strong_count(&self.derivative) == 1 {
            if let Ok(mut d) = self.derivative.lock() {
                give_back_buffer(std::mem::take(&mut *d));
            }
        }
    }
}

/// The widest input of a linear + GELU whose bias is added after the product (in the GELU's
/// pass): a product summing at most this many terms does so in one block of the `gemm` crate.
const GELU_BIAS_AFTER_MAX_IN: usize = 256;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "descent-linear"
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
        let (xd, wd) = (l1.dims(), l2.dims());
        if xd.len() < 2 || wd.len() != 2 || xd[xd.len() - 1] != wd[1] || l3.dims() != [wd[0]] || wd.contains(&0) {
            candle_core::bail!(
                "linear: input [.., n, in] {xd:?}, weight [out, in] {wd:?}, bias [out] {:?} do not fit (in, out at least 1)",
                l3.dims()
            );
        }
        // Leading dimensions are rows: `[b, t, in]` is one product over `b·t` rows, without the
        // reshapes (and their zero-filled gradients in candle's backward) around the op.
        let (n, inp, out) = (xd[..xd.len() - 1].iter().product::<usize>(), wd[1], wd[0]);
        let mut shape = xd.to_vec();
        *shape.last_mut().expect("two or more dimensions") = out;
        let (x, w, b) = (
            f32_slice(s1, l1, "linear input")?,
            f32_slice(s2, l2, "linear weight")?,
            f32_slice(s3, l3, "linear bias")?,
        );
        let par = n * out * inp >= PARALLEL_FLOPS;
        let y = match self.act {
            // The product alone, then the bias added in the GELU's pass (which writes every value
            // of the derivative), where the product sums its `inp` terms in one block: then
            // `(Σ) + b` are the sums the bias-first product makes, `b + Σ` (above
            // [`GELU_BIAS_AFTER_MAX_IN`], the product's blocks would add to the bias in turn).
            Activation::Gelu(which) if inp <= GELU_BIAS_AFTER_MAX_IN && out > 0 => {
                let mut y = matmul_new(self.precision, x, false, w, true, n, out, inp, par);
                let mut d = take_buffer(y.len());
                gelu_in_place_with_derivative(which, &mut y, &mut d, Some(b));
                *self.derivative.lock().expect("linear derivative lock") = d;
                y
            }
            _ => {
                // The bias in every row, then the product added to it.
                let mut y = Vec::with_capacity(n * out);
                for _ in 0..n {
                    y.extend_from_slice(b);
                }
                matmul_in(self.precision, &mut y, true, x, false, w, true, n, out, inp, par);
                match self.act {
                    Activation::Identity => {}
                    Activation::Relu => y.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v }),
                    Activation::Gelu(which) => {
                        // Every value is written.
                        let mut d = take_buffer(y.len());
                        gelu_in_place_with_derivative(which, &mut y, &mut d, None);
                        *self.derivative.lock().expect("linear derivative lock") = d;
                    }
                }
                y
            }
        };
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (inp, out) = (w.dims()[1], w.dims()[0]);
        let n = x.elem_count() / inp;
        // The operands are read in place (the op made them contiguous); only a ReLU's gradient,
        // which is masked, is a new buffer.
        let g = grad.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let xs = storage_f32s(&sx, lx, "linear input")?;
        let ws = storage_f32s(&sw, lw, "linear weight")?;
        let gs = storage_f32s(&sg, lg, "linear gradient")?;
        // The activation's backward into a buffer given back at the end (every value written),
        // and the bias gradient (the column sums of that) in the same pass.
        let mut masked = Vec::new();
        let mut gb = vec![0.0f32; out];
        let gy: &[f32] = match self.act {
            _ if out == 0 => gs,
            Activation::Identity => {
                column_sums(&mut gb, gs);
                gs
            }
            Activation::Relu => {
                // The gradient passes where the output is positive (as torch's ReLU backward).
                let (s, l) = res.storage_and_layout();
                let r = storage_f32s(&s, l, "linear output")?;
                masked = take_buffer(gs.len());
                mask_rows_relu(&mut masked, &mut gb, gs, r);
                &masked
            }
            Activation::Gelu(_) => {
                let d = self.derivative.lock().expect("linear derivative lock");
                if d.len() != gs.len() {
                    candle_core::bail!("linear: backward without its GELU forward");
                }
                masked = take_buffer(gs.len());
                mask_rows_scaled(&mut masked, &mut gb, gs, &d);
                &masked
            }
        };
        let par = n * out * inp >= PARALLEL_FLOPS;
        let gw = matmul_new(self.precision, gy, true, xs, false, out, inp, n, par);
        let gx =
            if x.track_op() { Some(matmul_new(self.precision, gy, false, ws, false, n, inp, out, par)) } else { None };
        give_back_buffer(masked);
        let dev = x.device();
        let gx = gx.map(|gx| Tensor::from_vec(gx, x.dims(), dev)).transpose()?;
        Ok((gx, Some(Tensor::from_vec(gw, (out, inp), dev)?), Some(Tensor::from_vec(gb, out, dev)?)))
    }
}

/// `masked = f(g, o)` row by row (`o` what the forward kept), summed into the bias gradient `gb`
/// (rows of `gb.len()` values).
#[inline(always)]
fn mask_rows(masked: &mut [f32], gb: &mut [f32], gs: &[f32], kept: &[f32], f: impl Fn(f32, f32) -> f32) {
    let out = gb.len();
    for ((m, g), o) in masked.chunks_mut(out).zip(gs.chunks(out)).zip(kept.chunks(out)) {
        for (((m, &g), &o), a) in m.iter_mut().zip(g).zip(o).zip(gb.iter_mut()) {
            *m = f(g, o);
            *a += *m;
        }
    }
}

// The backward's elementwise passes, built for AVX2 where the CPU has it (the baseline build ran
// them four floats at a time); the same operations in the same order on every build.
avx2_kernel! {
    /// `masked = g·d` (a GELU's derivative), its column sums added to `gb`.
    fn mask_rows_scaled(masked: &mut [f32], gb: &mut [f32], gs: &[f32], d: &[f32]) {
        mask_rows(masked, gb, gs, d, |g, d| g * d)
    }
}

avx2_kernel! {
    /// `masked = g` where the ReLU's output is positive, else 0; its column sums added to `gb`.
    fn mask_rows_relu(masked: &mut [f32], gb: &mut [f32], gs: &[f32], y: &[f32]) {
        mask_rows(masked, gb, gs, y, |g, y| if y > 0.0 { g } else { 0.0 })
    }
}

avx2_kernel! {
    /// The column sums of `gs` (rows of `gb.len()` values) added to `gb`.
    fn column_sums(gb: &mut [f32], gs: &[f32]) {
        for row in gs.chunks(gb.len()) {
            gb.iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
    }
}

/// `y = x Wᵀ + b` for `x` of shape `[n, in]` (or `[.., n, in]`, every leading index a row).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    linear_with(x, w, b, Activation::Identity)
}

/// `act(x Wᵀ + b)` as one op, its products in this thread's precision
/// ([`crate::precision::current`]).
pub fn linear_with(x: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> crate::Result<Tensor> {
    let op = LinearOp::new(act, crate::precision::current());
    Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::{linear, linear_with, Activation};
    use crate::nn::{gelu, Gelu};
    use crate::rng::Rng;

    /// `linear_with(.., Relu)` gives candle's `relu(linear(..))` values and gradients.
    #[test]
    fn fused_relu_matches_the_separate_op() {
        let mut rng = Rng::new(2);
        let mut var = |shape: &[usize]| {
            let n = shape.iter().product();
            Var::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
        };
        let (x, w, b, probe) = (var(&[5, 7]), var(&[4, 7]), var(&[4]), var(&[5, 4]));
        let fused = linear_with(x.as_tensor(), w.as_tensor(), b.as_tensor(), Activation::Relu).unwrap();
        let separate = linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap().relu().unwrap();
        let diff =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&fused, &separate), 0.0);
        let g1 = (fused * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (separate * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            assert!(diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()) < 1e-5);
        }
    }

    /// `linear_with(.., Gelu)` gives the same values and gradients as `gelu(linear(..))`, for both
    /// GELUs, over more elements than one rayon task takes.
    #[test]
    fn fused_gelu_matches_the_separate_op() {
        let mut rng = Rng::new(3);
        let mut var = |shape: &[usize]| {
            let n = shape.iter().product();
            Var::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
        };
        let diff =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // Inputs of 33 (the bias added after the product) and 700 (before it, as the separate op
        // does), so both orders of the sums are checked.
        for (inp, which) in [(33, Gelu::Erf), (33, Gelu::Tanh), (700, Gelu::Erf), (700, Gelu::Tanh)] {
            let (x, w, b, probe) = (var(&[130, inp]), var(&[70, inp]), var(&[70]), var(&[130, 70]));
            let fused = linear_with(x.as_tensor(), w.as_tensor(), b.as_tensor(), Activation::Gelu(which)).unwrap();
            let separate = gelu(&linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap(), which).unwrap();
            assert_eq!(diff(&fused, &separate), 0.0, "{which:?}");
            let g1 = (fused * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (separate * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &b] {
                assert_eq!(diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()), 0.0, "{which:?}");
            }
        }
    }
}
