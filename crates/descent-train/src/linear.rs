//! A fully connected layer as one candle op with its own backward: `y = x Wᵀ + b` by one GEMM,
//! and in the backward `dW = dYᵀ x` (one GEMM), `db` = column sums of `dY`, `dx = dY W` (one GEMM,
//! skipped when `x` is data). candle's path builds a transposed copy, a separate bias add and a
//! `sum_keepdim` for the bias gradient.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::conv::f32s;
use crate::gemm::matmul;

/// Products at least this large (multiply-adds) run the GEMM across threads.
const PARALLEL_FLOPS: usize = 1 << 22;

/// `torch.nn.functional.linear`.
#[derive(Debug, Clone, Copy)]
pub struct LinearOp;

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
        if xd.len() != 2 || wd.len() != 2 || xd[1] != wd[1] || l3.dims() != [wd[0]] {
            candle_core::bail!(
                "linear: input [n, in] {xd:?}, weight [out, in] {wd:?}, bias [out] {:?} do not fit",
                l3.dims()
            );
        }
        let (n, inp, out) = (xd[0], xd[1], wd[0]);
        let (x, w, b) = (f32s(s1, l1, "input")?, f32s(s2, l2, "weight")?, f32s(s3, l3, "bias")?);
        let mut y = vec![0.0f32; n * out];
        for row in y.chunks_mut(out) {
            row.copy_from_slice(b);
        }
        matmul(&mut y, true, x, false, w, true, n, out, inp, n * out * inp >= PARALLEL_FLOPS);
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, inp, out) = (x.dims()[0], x.dims()[1], w.dims()[0]);
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.flatten_all()?.to_vec1::<f32>()?;
        let gy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let par = n * out * inp >= PARALLEL_FLOPS;
        let mut gw = vec![0.0f32; out * inp];
        matmul(&mut gw, false, &gy, true, &xs, false, out, inp, n, par);
        let mut gb = vec![0.0f32; out];
        for row in gy.chunks(out) {
            gb.iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
        let gx = if x.track_op() {
            let mut gx = vec![0.0f32; n * inp];
            matmul(&mut gx, false, &gy, false, &ws, false, n, inp, out, par);
            Some(Tensor::from_vec(gx, (n, inp), x.device())?)
        } else {
            None
        };
        let dev = x.device();
        Ok((gx, Some(Tensor::from_vec(gw, (out, inp), dev)?), Some(Tensor::from_vec(gb, out, dev)?)))
    }
}

/// `y = x Wᵀ + b` for `x` of shape `[n, in]`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp)?)
}
