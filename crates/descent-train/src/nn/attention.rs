//! Causal multi-head self-attention (nanoGPT's `CausalSelfAttention`). The attention core is one
//! candle op with its own backward: per (batch, head), the scores `q·kᵀ/√hs`, the causal mask and
//! the softmax in one pass over one `[t, t]` buffer, kept for the backward, which recovers the
//! softmax's gradient from it and `rowsum(dy ∘ y)` (as flash attention does). candle's composition
//! materializes the `[b, h, t, t]` scores, the masked scores, their exponentials and the weights,
//! each again in the backward.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{f32_slice, give_back_buffer, par_filled, storage_f32s, take_buffer};
use crate::error::{Error, Result};
use crate::gemm::{matmul_strided, matmul_strided_new, Strided};
use crate::model::{Init, Linear};
use crate::nn::activation::{row_max, scaled_exp_sum};
use crate::nn::head_products::{has_kernel, product, HeadProduct, Triangle};
use crate::precision::Precision;
use crate::rng::Rng;

/// The attention core on `qkv` `[b, t, 3c]` (q, k, v side by side, head `h` on channels
/// `[h·hs, (h+1)·hs)` of each), giving `[b, t, c]` with the heads side by side.
struct AttentionOp {
    n_head: usize,
    /// The attention weights `[b, n_head, t, t]` of the forward, zero above the diagonal.
    att: Arc<Mutex<Vec<f32>>>,
    /// The products' precision, this thread's when the op was built.
    precision: Precision,
}

/// `(b, t, c, hs)` of a `[b, t, 3c]` input split into `n_head` heads.
fn geom(dims: &[usize], n_head: usize) -> candle_core::Result<(usize, usize, usize, usize)> {
    if dims.len() != 3
        || dims[1] == 0
        || dims[2] == 0
        || !dims[2].is_multiple_of(3)
        || n_head == 0
        || !(dims[2] / 3).is_multiple_of(n_head)
    {
        candle_core::bail!("causal attention: qkv [b, t, 3c] {dims:?} (t > 0) does not split into {n_head} heads");
    }
    let c = dims[2] / 3;
    Ok((dims[0], dims[1], c, c / n_head))
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "descent-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, c, hs) = geom(l.dims(), self.n_head)?;
        let x = f32_slice(s, l, "causal attention qkv")?;
        let (nh, prec) = (self.n_head, self.precision);
        let scale = 1.0 / (hs as f32).sqrt();
        // Every value is written: each task's product fills its `[t, t]` block, then the mask.
        let mut att = take_buffer(b * nh * t * t);
        // Each (batch, head) task: its weights in place, its output block returned.
        let ys: Vec<Vec<f32>> = att
            .par_chunks_mut(t * t)
            .enumerate()
            .map(|(task, p)| {
                let (bi, h) = (task / nh, task % nh);
                let rows = &x[bi * t * 3 * c..][..t * 3 * c];
                // The head's q, k and v (`part` 0, 1, 2), `[t, hs]` blocks read in place.
                let head = |part: usize| Strided { s: &rows[part * c + h * hs..], rs: 3 * c, cs: 1 };
                let f32_heads = prec == Precision::F32 && has_kernel();
                if f32_heads {
                    let kt = transposed(&rows[c + h * hs..], 3 * c, t, hs);
                    let scores = in_place(&rows[h * hs..], 3 * c, &kt, t, (t, t, hs), Triangle::LowerColumns);
                    product(&scores, p, t);
                } else {
                    matmul_strided(prec, p, head(0), head(1).t(), t, t, hs);
                }
                for (i, row) in p.chunks_mut(t).enumerate() {
                    let (seen, masked) = row.split_at_mut(i + 1);
                    masked.fill(0.0);
                    let m = row_max(seen) * scale;
                    let r = 1.0 / scaled_exp_sum(seen, scale, m);
                    seen.iter_mut().for_each(|s| *s *= r);
                }
                if f32_heads {
                    let mut y = vec![0.0f32; t * hs];
                    product(&in_place(p, t, &rows[2 * c + h * hs..], 3 * c, (t, hs, t), Triangle::Lower), &mut y, hs);
                    y
                } else {
                    matmul_strided_new(prec, Strided::rows(p, t), head(2), t, hs, t)
                }
            })
            .collect();
        // SAFETY: each batch's chunk is `t` rows of `nh` heads' `hs` values: all written.
        let out = unsafe {
            par_filled(b * t * c, t * c, |bi, chunk| {
                for (ti, row) in chunk.chunks_mut(c).enumerate() {
                    for (h, dst) in row.chunks_mut(hs).enumerate() {
                        let src = &ys[bi * nh + h][ti * hs..][..hs];
                        dst.iter_mut().zip(src).for_each(|(d, &v)| {
                            d.write(v);
                        });
                    }
                }
            })
        };
        give_back_buffer(std::mem::replace(&mut *self.att.lock().expect("attention weights lock"), att));
        Ok((CpuStorage::F32(out), Shape::from((b, t, c))))
    }

    /// Per head, with `P` the weights and `s` = 1/√hs: `dv = Pᵀ·dy`, `dP = dy·vᵀ`,
    /// `dS = P ∘ (dP − rowsum(dy ∘ y))·s` (the softmax's backward; `rowsum(P ∘ dP) = rowsum(dy ∘ y)`),
    /// `dq = dS·k`, `dk = dSᵀ·q`.
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, t, c, hs) = geom(arg.dims(), self.n_head)?;
        let (nh, prec) = (self.n_head, self.precision);
        let scale = 1.0 / (hs as f32).sqrt();
        let g = grad.contiguous()?;
        let (sx, lx) = arg.storage_and_layout();
        let (sy, ly) = res.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let x = storage_f32s(&sx, lx, "causal attention qkv")?;
        let yall = storage_f32s(&sy, ly, "causal attention output")?;
        let gall = storage_f32s(&sg, lg, "causal attention gradient")?;
        let att = self.att.lock().expect("attention weights lock");
        // Each task returns its `[t, hs]` blocks of dq, dk and dv.
        let blocks: Vec<[Vec<f32>; 3]> = att
            .par_chunks(t * t)
            .enumerate()
            .map(|(task, p)| {
                let (bi, h) = (task / nh, task % nh);
                let rows = &x[bi * t * 3 * c..][..t * 3 * c];
                // The head's q, k, v, output and output gradient, `[t, hs]` blocks read in place.
                let head = |part: usize| Strided { s: &rows[part * c + h * hs..], rs: 3 * c, cs: 1 };
                let (y, dy) = (&yall[bi * t * c + h * hs..], &gall[bi * t * c + h * hs..]);
                let dyb = Strided { s: dy, rs: c, cs: 1 };
                let f32_heads = prec == Precision::F32 && has_kernel();
                let (q, k, v) = (&rows[h * hs..], &rows[c + h * hs..], &rows[2 * c + h * hs..]);
                // `t × hs` products of the weights (`Lower`) or their transposes (`Upper`).
                let block = |a: &[f32], (prs, pcs): (usize, usize), (w, ws): (&[f32], usize), triangle| {
                    let mut z = vec![0.0f32; t * hs];
                    product(&HeadProduct { p: a, prs, pcs, w, ws, m: t, n: hs, kd: t, triangle }, &mut z, hs);
                    z
                };
                let dv = if f32_heads {
                    block(p, (1, t), (dy, c), Triangle::Upper)
                } else {
                    matmul_strided_new(prec, Strided::rows(p, t).t(), dyb, t, hs, t)
                };
                let mut ds = if f32_heads {
                    let mut ds = vec![0.0f32; t * t];
                    let vt = transposed(v, 3 * c, t, hs);
                    product(&in_place(dy, c, &vt, t, (t, t, hs), Triangle::LowerColumns), &mut ds, t);
                    ds
                } else {
                    matmul_strided_new(prec, dyb, head(2).t(), t, t, hs)
                };
                for (i, (dsr, pr)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                    let d = dot(&dy[i * c..][..hs], &y[i * c..][..hs]);
                    dsr.iter_mut().zip(pr).take(i + 1).for_each(|(s, &p)| *s = p * (*s - d) * scale);
                    dsr[i + 1..].fill(0.0);
                }
                let (dq, dk) = if f32_heads {
                    (block(&ds, (t, 1), (k, 3 * c), Triangle::Lower), block(&ds, (1, t), (q, 3 * c), Triangle::Upper))
                } else {
                    (
                        matmul_strided_new(prec, Strided::rows(&ds, t), head(1), t, hs, t),
                        matmul_strided_new(prec, Strided::rows(&ds, t).t(), head(0), t, hs, t),
                    )
                };
                [dq, dk, dv]
            })
            .collect();
        // SAFETY: each batch's chunk is `t` rows of q, k, v parts of `nh` heads' `hs` values: all
        // written.
        let gx = unsafe {
            par_filled(x.len(), t * 3 * c, |bi, chunk| {
                for (ti, row) in chunk.chunks_mut(3 * c).enumerate() {
                    for (part, cols) in row.chunks_mut(c).enumerate() {
                        for (h, dst) in cols.chunks_mut(hs).enumerate() {
                            let src = &blocks[bi * nh + h][part][ti * hs..][..hs];
                            dst.iter_mut().zip(src).for_each(|(d, &v)| {
                                d.write(v);
                            });
                        }
                    }
                }
            })
        };
        Ok(Some(Tensor::from_vec(gx, arg.dims(), arg.device())?))
    }
}

/// A head's `[t, hs]` block of a wider matrix (rows `rs` apart), transposed to a dense `[hs, t]`.
/// (by 8 × 8 register blocks, [`crate::gemm::transpose_columns`]: a scatter of one value at a
/// time cost 1.7% of a GPT step).
fn transposed(x: &[f32], rs: usize, t: usize, hs: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; hs * t];
    crate::gemm::transpose_columns(&mut out, x, rs, hs, t);
    out
}

/// The head product `z[m×n] = a[m×kd] · w[kd×n]` of an operand `a` read in place (rows `ars`
/// apart) and `w` (rows `ws` apart).
fn in_place<'a>(
    a: &'a [f32],
    ars: usize,
    w: &'a [f32],
    ws: usize,
    (m, n, kd): (usize, usize, usize),
    triangle: Triangle,
) -> HeadProduct<'a> {
    HeadProduct { p: a, prs: ars, pcs: 1, w, ws, m, n, kd, triangle }
}

crate::cpu::avx2_kernel! {
    /// `Σ aᵢ·bᵢ` in 8 interleaved lanes, summed pairwise at the end (as
    /// [`scaled_exp_sum`] sums): a running sum was a chain of dependent additions, one a row of
    /// the backward.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut lanes = [0.0f32; 8];
        let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
        for (x, y) in (&mut ca).zip(&mut cb) {
            for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
                *l += x * y;
            }
        }
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        (((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))) + tail
    }
}

impl Drop for AttentionOp {
    /// The weights go back to this thread's buffers, unless a caller of
    /// [`causal_attention_with_weights`] still holds them.
    fn drop(&mut self) {
        if Arc::strong_count(&self.att) == 1 {
            if let Ok(mut w) = self.att.lock() {
                give_back_buffer(std::mem::take(&mut *w));
            }
        }
    }
}

/// The causal attention of `qkv` `[b, t, 3c]` split into `n_head` heads:
/// `softmax(q·kᵀ/√hs, keys after the query masked)·v` per head, heads side by side in `[b, t, c]`.
pub fn causal_attention(qkv: &Tensor, n_head: usize) -> Result<Tensor> {
    Ok(qkv.contiguous()?.apply_op1(AttentionOp {
        n_head,
        att: Arc::new(Mutex::new(Vec::new())),
        precision: crate::precision::current(),
    })?)
}

/// [`causal_attention`] and a copy of its attention weights `[b, n_head, t, t]` (zero above the
/// diagonal), for inspection: the backward does not flow through the copy.
pub fn causal_attention_with_weights(qkv: &Tensor, n_head: usize) -> Result<(Tensor, Tensor)> {
    let att = Arc::new(Mutex::new(Vec::new()));
    let y = qkv.contiguous()?.apply_op1(AttentionOp {
        n_head,
        att: att.clone(),
        precision: crate::precision::current(),
    })?;
    let (b, t, _) = y.dims3()?;
    let w = att.lock().expect("attention weights lock").clone();
    Ok((y, Tensor::from_vec(w, (b, n_head, t, t), qkv.device())?))
}

/// nanoGPT's `CausalSelfAttention` without dropout: `c_attn` (`[3c, c]` weight and bias) makes q, k
/// and v, [`causal_attention`] over `n_head` heads, and `c_proj` (`[c, c]`) mixes the heads.
#[derive(Clone)]
pub struct CausalSelfAttention {
    /// `attn.c_attn`, C → 3C: the queries, keys and values.
    pub c_attn: Linear,
    /// `attn.c_proj`, C → C: the output projection.
    pub c_proj: Linear,
    /// Number of heads; C is a multiple of it.
    pub n_head: usize,
}

impl CausalSelfAttention {
    /// `c` channels in `n_head` heads (`c` a multiple of `n_head`).
    pub fn new(c: usize, n_head: usize, init: Init, rng: &mut Rng, dev: &Device) -> Result<Self> {
        if n_head == 0 || !c.is_multiple_of(n_head) {
            return Err(Error::Param(format!("attention: {c} channels do not split into {n_head} heads")));
        }
        Ok(CausalSelfAttention {
            c_attn: Linear::new(c, 3 * c, init, rng, dev)?,
            c_proj: Linear::new(c, c, init, rng, dev)?,
            n_head,
        })
    }

    /// `x` `[b, t, c]` to `[b, t, c]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = causal_attention(&self.qkv(x)?, self.n_head)?;
        self.project(&y)
    }

    /// [`Self::forward`] and the attention weights `[b, n_head, t, t]`.
    pub fn forward_with_weights(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (y, att) = causal_attention_with_weights(&self.qkv(x)?, self.n_head)?;
        Ok((self.project(&y)?, att))
    }

    /// `c_attn(x)` as `[b, t, 3c]`.
    fn qkv(&self, x: &Tensor) -> Result<Tensor> {
        x.dims3()?;
        self.c_attn.forward(x)
    }

    /// `c_proj(y)` as `[b, t, c]`.
    fn project(&self, y: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(y)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    use super::{causal_attention, causal_attention_with_weights, dot};
    use crate::rng::Rng;

    /// The lane dot product against f64's, on every length class.
    #[test]
    fn dot_is_the_sum_of_products() {
        for n in [0usize, 1, 7, 8, 9, 32, 45] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs()), "{n}");
        }
    }

    /// candle's composition of the same attention, the reference for the fused op.
    fn composed(qkv: &Tensor, n_head: usize) -> Tensor {
        let (b, t, c3) = qkv.dims3().unwrap();
        let (c, hs) = (c3 / 3, c3 / 3 / n_head);
        let part = |i: usize| {
            qkv.narrow(2, i * c, c)
                .unwrap()
                .reshape((b, t, n_head, hs))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() / (hs as f64).sqrt()).unwrap();
        let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let att = candle_nn::ops::softmax(&s.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        att.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t, c)).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Values and gradients of the fused op against candle's composition, over shapes the
    /// reference file does not have: one position, one head, one channel per head, long sequences.
    #[test]
    fn fused_attention_matches_the_composition() {
        let mut rng = Rng::new(11);
        for (b, t, c, nh) in [(1, 1, 4, 2), (2, 5, 6, 1), (3, 33, 24, 4), (1, 7, 8, 8), (2, 70, 64, 4)] {
            let n = b * t * 3 * c;
            let qkv =
                Var::from_vec((0..n).map(|_| 2.0 * rng.normal()).collect::<Vec<f32>>(), (b, t, 3 * c), &Device::Cpu)
                    .unwrap();
            let probe =
                Tensor::from_vec((0..b * t * c).map(|_| rng.normal()).collect::<Vec<f32>>(), (b, t, c), &Device::Cpu)
                    .unwrap();
            let fused = causal_attention(qkv.as_tensor(), nh).unwrap();
            let reference = composed(qkv.as_tensor(), nh);
            let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(max_diff(&fused, &reference) <= 1e-5 * scale + 1e-6, "output {b}x{t}x{c}/{nh}");
            let g1 = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (g1, g2) = (g1.get(qkv.as_tensor()).unwrap(), g2.get(qkv.as_tensor()).unwrap());
            let scale = g2.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let d = max_diff(g1, g2);
            assert!(d <= 1e-5 * scale + 1e-6, "gradient {b}x{t}x{c}/{nh}: {d} against {scale}");
            let (_, att) = causal_attention_with_weights(qkv.as_tensor(), nh).unwrap();
            let rows = att.sum(D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5), "weights sum to one per query");
        }
        let qkv = Tensor::zeros((1, 3, 9), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(causal_attention(&qkv, 2).unwrap_err().to_string().contains("does not split into 2 heads"));
    }
}
