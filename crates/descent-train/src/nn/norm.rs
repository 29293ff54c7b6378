//! Layer normalization and batch normalization as candle ops with their own backward (the closed
//! forms below), where candle's composition builds a dozen tensors each way.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use crate::cpu::{avx2_kernel, f32_slice, has_avx2, has_avx512, par_filled, par_filled_with, storage_f32s};
use crate::error::{Error, Result};
use crate::model::Mode;
use crate::nn::ROWS_PER_TASK;

/// Mean and biased variance (over `x.len()`) of `x`, accumulated in f64 ([`sum`],
/// [`sum_sq_dev`]).
fn moments(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = sum(x) / n;
    (mean, sum_sq_dev(x, mean) / n)
}

avx2_kernel! {
    /// One row of layer norm: `y = ((x − m)·r)·w + b` (in f32, as PyTorch's).
    fn layer_norm_row(y: &mut [MaybeUninit<f32>], x: &[f32], m: f32, r: f32, w: &[f32], b: &[f32]) {
        for (((o, &v), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            o.write(((v - m) * r).mul_add(w, b));
        }
    }
}

avx2_kernel! {
    /// One row of layer norm's backward (`x̂ = (x − mean)·rstd`, `ĝ = g·w`): adds `g·x̂` to `gw`
    /// and `g` to `gb`, and writes `gx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, the row's sums in
    /// f64 in 8 interleaved lanes. `xhat` is working space of the row's length.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_grad_row(
        gx: &mut [MaybeUninit<f32>],
        x: &[f32],
        g: &[f32],
        w: &[f32],
        gw: &mut [f64],
        gb: &mut [f64],
        xhat: &mut [f64],
        mean: f64,
        rstd: f64,
    ) {
        for ((((h, &x), &g), gw), gb) in xhat.iter_mut().zip(x).zip(g).zip(gw.iter_mut()).zip(gb.iter_mut()) {
            *h = (x as f64 - mean) * rstd;
            *gw += g as f64 * *h;
            *gb += g as f64;
        }
        let (sg, sgx) = ln_grad_lanes(g, w, xhat);
        let ((_, gt), (_, wt), (_, ht)) = (g.as_chunks::<8>(), w.as_chunks::<8>(), xhat.as_chunks::<8>());
        let (mut tg, mut tgx) = (0.0, 0.0);
        for ((&g, &w), &h) in gt.iter().zip(wt).zip(ht) {
            let gh = g as f64 * w as f64;
            tg += gh;
            tgx += gh * h;
        }
        let c = x.len() as f64;
        let (mg, mgx) = (fold8(sg, tg) / c, fold8(sgx, tgx) / c);
        for (((o, &g), &w), &h) in gx.iter_mut().zip(g).zip(w).zip(xhat.iter()) {
            o.write((rstd * (g as f64 * w as f64 - mg - h * mgx)) as f32);
        }
    }
}

/// The lane sums of `(ĝ, ĝ·x̂)` (`ĝ = g·w`) over the whole 8-chunks of a layer-norm row, by the
/// AVX2 kernel where the CPU has it: the compiler's build of this loop ran scalar.
#[inline(always)]
fn ln_grad_lanes(g: &[f32], w: &[f32], xhat: &[f64]) -> ([f64; 8], [f64; 8]) {
    assert!(w.len() >= g.len() && xhat.len() >= g.len(), "layer norm row: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2; `w` and `xhat` are as long as `g` (asserted).
        return unsafe { avx2::ln_grad_lanes(g, w, xhat) };
    }
    let (mut sg, mut sgx) = ([0.0f64; 8], [0.0f64; 8]);
    let (g8, w8, h8) = (g.as_chunks::<8>().0, w.as_chunks::<8>().0, xhat.as_chunks::<8>().0);
    for ((g8, w8), h8) in g8.iter().zip(w8).zip(h8) {
        for k in 0..8 {
            let gh = g8[k] as f64 * w8[k] as f64;
            sg[k] += gh;
            sgx[k] += gh * h8[k];
        }
    }
    (sg, sgx)
}

/// Lanes of batch norm's channel sums: value `i` of a block goes to lane `i mod LANES` (the
/// values after the last whole chunk to a separate tail), each lane accumulates in f64, and the
/// lanes are added in a fixed order ([`fold_lanes`]). Sixteen independent chains keep two 512-bit
/// (or four 256-bit) adders busy where one chain waits an add's latency per value.
const LANES: usize = 16;

/// `[Σ_j f(xs[LANES·j + k]) for k < LANES]` over the whole chunks of `xs`, in f64.
#[inline(always)]
fn lanes(xs: &[f32], f: impl Fn(f64) -> f64) -> [f64; LANES] {
    let mut acc = [0.0f64; LANES];
    for ch in xs.as_chunks::<LANES>().0 {
        for k in 0..LANES {
            acc[k] += f(ch[k] as f64);
        }
    }
    acc
}

/// The lane sums of `(g', g'·(x − mean))` over the whole chunks, `g' = g` or, with `relu_out`,
/// [`through_relu`]`(g, out)`.
fn lanes2(xs: &[f32], gs: &[f32], relu_out: Option<&[f32]>, mean: f64) -> ([f64; LANES], [f64; LANES]) {
    let (mut sg, mut sgx) = ([0.0f64; LANES], [0.0f64; LANES]);
    for (j, (xc, gc)) in xs.as_chunks::<LANES>().0.iter().zip(gs.as_chunks::<LANES>().0).enumerate() {
        for k in 0..LANES {
            let g = relu_out.map_or(gc[k], |r| through_relu(gc[k], r[LANES * j + k])) as f64;
            sg[k] += g;
            sgx[k] += g * (xc[k] as f64 - mean);
        }
    }
    (sg, sgx)
}

/// The 8 lane sums added up in a fixed order, then the values after the last whole chunk.
fn fold8(a: [f64; 8], tail: f64) -> f64 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
}

/// The [`LANES`] lane sums added up in a fixed order (lane `k` with lane `k + 8` first), then the
/// tail.
fn fold_lanes(a: [f64; LANES], tail: f64) -> f64 {
    fold8(std::array::from_fn(|k| a[k] + a[k + 8]), tail)
}

/// The gradient that reaches a batch norm's output through its ReLU (torch's: where the output is
/// positive; `0.0` where it is `≤ 0` or NaN).
fn through_relu(g: f32, out: f32) -> f32 {
    if out > 0.0 {
        g
    } else {
        0.0
    }
}

/// Where the values after the whole chunks of [`LANES`] start.
fn tail_start(n: usize) -> usize {
    n - n % LANES
}

/// [`lanes`] of `x`, or of `(x − mean)²` when `squared`, by the AVX-512 or AVX2 kernel where the
/// CPU has it (the same bits as the plain loops).
fn lanes_of(xs: &[f32], squared: bool, mean: f64) -> [f64; LANES] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each kernel only where the CPU has its instructions.
        if has_avx512() {
            return unsafe {
                if squared {
                    avx512::lanes::<true>(xs, mean)
                } else {
                    avx512::lanes::<false>(xs, mean)
                }
            };
        }
        if has_avx2() {
            return unsafe {
                if squared {
                    avx2::lanes::<true>(xs, mean)
                } else {
                    avx2::lanes::<false>(xs, mean)
                }
            };
        }
    }
    if squared {
        lanes(xs, |v| (v - mean) * (v - mean))
    } else {
        lanes(xs, |v| v)
    }
}

/// `Σ x` over `xs` in f64.
pub(crate) fn sum(xs: &[f32]) -> f64 {
    fold_lanes(lanes_of(xs, false, 0.0), xs[tail_start(xs.len())..].iter().map(|&v| v as f64).sum())
}

/// `Σ (x − mean)²` over `xs` in f64.
fn sum_sq_dev(xs: &[f32], mean: f64) -> f64 {
    let sq = |v: f64| (v - mean) * (v - mean);
    fold_lanes(lanes_of(xs, true, mean), xs[tail_start(xs.len())..].iter().map(|&v| sq(v as f64)).sum())
}

/// `(Σ g, Σ g·(x − mean))` over a channel's block in f64, `g` first passed back through the ReLU
/// that gave the output `relu_out` (when there is one); the lanes by the AVX-512 or AVX2 kernel
/// where the CPU has it (the same bits as the plain loops).
fn grad_sums(xs: &[f32], gs: &[f32], relu_out: Option<&[f32]>, mean: f64) -> (f64, f64) {
    assert!(gs.len() == xs.len() && relu_out.is_none_or(|r| r.len() == xs.len()), "grad_sums: lengths differ");
    let lanes = || {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: each kernel only where the CPU has its instructions; the lengths are equal
            // (asserted).
            if has_avx512() {
                return unsafe {
                    match relu_out {
                        Some(r) => avx512::lanes2::<true>(xs, gs, r, mean),
                        None => avx512::lanes2::<false>(xs, gs, gs, mean),
                    }
                };
            }
            if has_avx2() {
                return unsafe {
                    match relu_out {
                        Some(r) => avx2::lanes2::<true>(xs, gs, r, mean),
                        None => avx2::lanes2::<false>(xs, gs, gs, mean),
                    }
                };
            }
        }
        lanes2(xs, gs, relu_out, mean)
    };
    let (sg, sgx) = lanes();
    let (mut tg, mut tgx) = (0.0, 0.0);
    for i in tail_start(xs.len())..xs.len() {
        let g = relu_out.map_or(gs[i], |r| through_relu(gs[i], r[i])) as f64;
        tg += g;
        tgx += g * (xs[i] as f64 - mean);
    }
    (fold_lanes(sg, tg), fold_lanes(sgx, tgx))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// Four f64 from the low and high halves of 8 f32.
    #[inline(always)]
    unsafe fn widen(v: __m256) -> (__m256d, __m256d) {
        (_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)))
    }

    /// The 8 gradients at `at`, zero where the output `rs` is not positive when `MASKED`.
    #[inline(always)]
    pub(super) unsafe fn grad_at<const MASKED: bool>(gs: &[f32], rs: &[f32], at: usize) -> __m256 {
        let g = _mm256_loadu_ps(gs.as_ptr().add(at));
        if !MASKED {
            return g;
        }
        let r = _mm256_loadu_ps(rs.as_ptr().add(at));
        _mm256_and_ps(g, _mm256_cmp_ps::<_CMP_GT_OQ>(r, _mm256_setzero_ps()))
    }

    /// Two f64 vectors as the 8 lanes `[lo, hi]`.
    #[inline(always)]
    unsafe fn store(lo: __m256d, hi: __m256d) -> [f64; 8] {
        let mut a = [0.0f64; 8];
        _mm256_storeu_pd(a.as_mut_ptr(), lo);
        _mm256_storeu_pd(a.as_mut_ptr().add(4), hi);
        a
    }

    /// Four f64 vectors as the 16 lanes in order.
    #[inline(always)]
    unsafe fn store4(v: [__m256d; 4]) -> [f64; LANES] {
        let mut a = [0.0f64; LANES];
        for (k, v) in v.into_iter().enumerate() {
            _mm256_storeu_pd(a.as_mut_ptr().add(4 * k), v);
        }
        a
    }

    /// [`super::lanes`] with `f(v) = v`, or `(v − mean)²` when `SQUARED`: the same operations
    /// in each lane (a multiply, then an add; never fused).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn lanes<const SQUARED: bool>(xs: &[f32], mean: f64) -> [f64; LANES] {
        let m = _mm256_set1_pd(mean);
        let mut acc = [_mm256_setzero_pd(); 4];
        for ch in xs.as_chunks::<LANES>().0 {
            for half in 0..2 {
                let (a, b) = widen(_mm256_loadu_ps(ch.as_ptr().add(8 * half)));
                for (k, v) in [(2 * half, a), (2 * half + 1, b)] {
                    acc[k] = if SQUARED {
                        let d = _mm256_sub_pd(v, m);
                        _mm256_add_pd(acc[k], _mm256_mul_pd(d, d))
                    } else {
                        _mm256_add_pd(acc[k], v)
                    };
                }
            }
        }
        store4(acc)
    }

    /// [`super::ln_grad_lanes`]'s portable loop in two vectors of four lanes: the same products
    /// and additions in each lane (never fused), so the same bits.
    ///
    /// # Safety
    ///
    /// AVX2; `ws` and `hs` at least as long as `gs`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn ln_grad_lanes(gs: &[f32], ws: &[f32], hs: &[f64]) -> ([f64; 8], [f64; 8]) {
        let (mut g_lo, mut g_hi, mut gx_lo, mut gx_hi) =
            (_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd());
        for (j, ch) in gs.as_chunks::<8>().0.iter().enumerate() {
            let (ga, gb) = widen(_mm256_loadu_ps(ch.as_ptr()));
            let (wa, wb) = widen(_mm256_loadu_ps(ws.as_ptr().add(8 * j)));
            let (gha, ghb) = (_mm256_mul_pd(ga, wa), _mm256_mul_pd(gb, wb));
            let (ha, hb) = (_mm256_loadu_pd(hs.as_ptr().add(8 * j)), _mm256_loadu_pd(hs.as_ptr().add(8 * j + 4)));
            g_lo = _mm256_add_pd(g_lo, gha);
            g_hi = _mm256_add_pd(g_hi, ghb);
            gx_lo = _mm256_add_pd(gx_lo, _mm256_mul_pd(gha, ha));
            gx_hi = _mm256_add_pd(gx_hi, _mm256_mul_pd(ghb, hb));
        }
        (store(g_lo, g_hi), store(gx_lo, gx_hi))
    }

    /// [`super::lanes2`], `g` masked by `rs > 0` when `MASKED` (`rs` unread otherwise).
    ///
    /// # Safety
    ///
    /// AVX2; `gs` and `rs` at least as long as `xs`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn lanes2<const MASKED: bool>(
        xs: &[f32],
        gs: &[f32],
        rs: &[f32],
        mean: f64,
    ) -> ([f64; LANES], [f64; LANES]) {
        let m = _mm256_set1_pd(mean);
        let (mut sg, mut sgx) = ([_mm256_setzero_pd(); 4], [_mm256_setzero_pd(); 4]);
        for j in 0..xs.len() / LANES {
            for half in 0..2 {
                let at = LANES * j + 8 * half;
                let (ga, gb) = widen(grad_at::<MASKED>(gs, rs, at));
                let (xa, xb) = widen(_mm256_loadu_ps(xs.as_ptr().add(at)));
                for (k, g, x) in [(2 * half, ga, xa), (2 * half + 1, gb, xb)] {
                    sg[k] = _mm256_add_pd(sg[k], g);
                    sgx[k] = _mm256_add_pd(sgx[k], _mm256_mul_pd(g, _mm256_sub_pd(x, m)));
                }
            }
        }
        (store4(sg), store4(sgx))
    }
}

/// The 512-bit forms of [`avx2`]'s batch-norm sums: eight f64 lanes a vector, the same operations
/// in each lane, so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// Eight f64 from 8 f32 at `p`.
    #[inline(always)]
    unsafe fn wide(p: *const f32) -> __m512d {
        _mm512_cvtps_pd(_mm256_loadu_ps(p))
    }

    /// Two f64 vectors as the 16 lanes `[lo, hi]`.
    #[inline(always)]
    unsafe fn store(lo: __m512d, hi: __m512d) -> [f64; LANES] {
        let mut a = [0.0f64; LANES];
        _mm512_storeu_pd(a.as_mut_ptr(), lo);
        _mm512_storeu_pd(a.as_mut_ptr().add(8), hi);
        a
    }

    /// [`super::lanes`] with `f(v) = v`, or `(v − mean)²` when `SQUARED` (never fused).
    ///
    /// # Safety
    ///
    /// AVX-512 F.
    #[target_feature(enable = "avx512f,avx2")]
    pub(super) unsafe fn lanes<const SQUARED: bool>(xs: &[f32], mean: f64) -> [f64; LANES] {
        let m = _mm512_set1_pd(mean);
        let mut acc = [_mm512_setzero_pd(); 2];
        for ch in xs.as_chunks::<LANES>().0 {
            for (k, acc) in acc.iter_mut().enumerate() {
                let v = wide(ch.as_ptr().add(8 * k));
                *acc = if SQUARED {
                    let d = _mm512_sub_pd(v, m);
                    _mm512_add_pd(*acc, _mm512_mul_pd(d, d))
                } else {
                    _mm512_add_pd(*acc, v)
                };
            }
        }
        store(acc[0], acc[1])
    }

    /// [`super::lanes2`], `g` masked by `rs > 0` when `MASKED` (`rs` unread otherwise).
    ///
    /// # Safety
    ///
    /// AVX-512 F; `gs` and `rs` at least as long as `xs`.
    #[target_feature(enable = "avx512f,avx2")]
    pub(super) unsafe fn lanes2<const MASKED: bool>(
        xs: &[f32],
        gs: &[f32],
        rs: &[f32],
        mean: f64,
    ) -> ([f64; LANES], [f64; LANES]) {
        let m = _mm512_set1_pd(mean);
        let (mut sg, mut sgx) = ([_mm512_setzero_pd(); 2], [_mm512_setzero_pd(); 2]);
        for j in 0..xs.len() / LANES {
            for k in 0..2 {
                let at = LANES * j + 8 * k;
                let g = _mm512_cvtps_pd(super::avx2::grad_at::<MASKED>(gs, rs, at));
                let x = wide(xs.as_ptr().add(at));
                sg[k] = _mm512_add_pd(sg[k], g);
                sgx[k] = _mm512_add_pd(sgx[k], _mm512_mul_pd(g, _mm512_sub_pd(x, m)));
            }
        }
        (store(sg[0], sg[1]), store(sgx[0], sgx[1]))
    }
}

avx2_kernel! {
    /// `y = (x − m)·a + b` over a channel's block (`a = w·r`, in f32 as PyTorch's), then
    /// `max(y, 0)` when `relu` (NaN stays NaN, as torch.relu).
    fn normalize(y: &mut [MaybeUninit<f32>], x: &[f32], m: f32, a: f32, b: f32, relu: bool) {
        if relu {
            for (o, &v) in y.iter_mut().zip(x) {
                let t = (v - m).mul_add(a, b);
                o.write(if t < 0.0 { 0.0 } else { t });
            }
        } else {
            for (o, &v) in y.iter_mut().zip(x) {
                o.write((v - m).mul_add(a, b));
            }
        }
    }
}

avx2_kernel! {
    /// `dx = ((g − mean_g) − (x − m)·k)·scale` over a channel's block in f32 (as PyTorch's), `g`
    /// first passed back through the ReLU that gave the output `relu_out` (when there is one).
    #[allow(clippy::too_many_arguments)]
    fn normalize_grad(
        gx: &mut [MaybeUninit<f32>],
        xs: &[f32],
        gs: &[f32],
        relu_out: Option<&[f32]>,
        m: f32,
        k: f32,
        scale: f32,
        mean_g: f32,
    ) {
        let dx = |x: f32, g: f32| (x - m).mul_add(-k, g - mean_g) * scale;
        match relu_out {
            Some(rs) => {
                for (((o, &x), &g), &y) in gx.iter_mut().zip(xs).zip(gs).zip(rs) {
                    o.write(dx(x, through_relu(g, y)));
                }
            }
            None => {
                for ((o, &x), &g) in gx.iter_mut().zip(xs).zip(gs) {
                    o.write(dx(x, g));
                }
            }
        }
    }
}

/// `torch.nn.functional.layer_norm` over the last dimension with weight and bias.
#[derive(Debug, Clone, Copy)]
struct LayerNormOp {
    eps: f64,
}

impl LayerNormOp {
    fn check(&self, x: &[usize], w: &[usize], b: &[usize]) -> candle_core::Result<usize> {
        match x.last() {
            Some(&c) if c > 0 && w == [c] && b == [c] => Ok(c),
            _ => candle_core::bail!("layer_norm: input [.., c] {x:?}, weight [c] {w:?} and bias [c] {b:?} do not fit"),
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "descent-layer-norm"
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
        let c = self.check(l1.dims(), l2.dims(), l3.dims())?;
        let (x, w, b) = (
            f32_slice(s1, l1, "layer_norm input")?,
            f32_slice(s2, l2, "layer_norm weight")?,
            f32_slice(s3, l3, "layer_norm bias")?,
        );
        let rows = c * ROWS_PER_TASK;
        // SAFETY: each task writes all of its rows.
        let y = unsafe {
            par_filled(x.len(), rows, |k, y| {
                for (y, x) in y.chunks_mut(c).zip(x[k * rows..].chunks(c)) {
                    let (mean, var) = moments(x);
                    let rstd = 1.0 / (var + self.eps).sqrt();
                    layer_norm_row(y, x, mean as f32, rstd as f32, w, b);
                }
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// With `x̂ = (x − μ)·r` and `ĝ = g·w` per row: `dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`,
    /// `dw = Σ_rows g·x̂`, `db = Σ_rows g`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let g = grad.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let xs = storage_f32s(&sx, lx, "layer_norm input")?;
        let ws = storage_f32s(&sw, lw, "layer_norm weight")?;
        let gs = storage_f32s(&sg, lg, "layer_norm gradient")?;
        // Each task returns its rows' partial sums of g·x̂ and g, added in task order.
        let rows = c * ROWS_PER_TASK;
        // SAFETY: each task writes all of its rows.
        let (gx, partial) = unsafe {
            par_filled_with(xs.len(), rows, |k, gx| {
                let (xs, gs) = (&xs[k * rows..][..gx.len()], &gs[k * rows..][..gx.len()]);
                let (mut gw, mut gb, mut xhat) = (vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]);
                for ((gx, x), g) in gx.chunks_mut(c).zip(xs.chunks(c)).zip(gs.chunks(c)) {
                    let (mean, var) = moments(x);
                    let rstd = 1.0 / (var + self.eps).sqrt();
                    layer_norm_grad_row(gx, x, g, ws, &mut gw, &mut gb, &mut xhat, mean, rstd);
                }
                (gw, gb)
            })
        };
        let (mut gw, mut gb) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (pw, pb) in partial {
            gw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            gb.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        let f = |v: Vec<f64>| Tensor::from_vec(v.into_iter().map(|v| v as f32).collect::<Vec<f32>>(), c, dev);
        Ok((Some(Tensor::from_vec(gx, x.dims(), dev)?), Some(f(gw)?), Some(f(gb)?)))
    }
}

/// `torch.nn.functional.layer_norm(x, [c], weight, bias, eps)`: each row of the last dimension
/// (size `c`) normalized by its mean and biased variance, then scaled and shifted.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps })?)
}

/// `torch.nn.LayerNorm(c)`: weight (ones) and bias (zeros) of shape `[c]`, eps 1e-5 by default.
#[derive(Clone)]
pub struct LayerNorm {
    /// `[c]`, the scale γ.
    pub weight: Var,
    /// `[c]`, the shift β.
    pub bias: Var,
    /// Added to the variance before its square root.
    pub eps: f64,
}

impl LayerNorm {
    /// A layer norm over `c` channels, γ = 1 and β = 0 (torch's initialization), ε = 1e-5.
    pub fn new(c: usize, dev: &Device) -> Result<Self> {
        Ok(LayerNorm {
            weight: Var::from_tensor(&Tensor::ones(c, candle_core::DType::F32, dev)?)?,
            bias: Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, dev)?)?,
            eps: 1e-5,
        })
    }
    /// `x` normalized over its last axis, then scaled and shifted.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, self.weight.as_tensor(), self.bias.as_tensor(), self.eps)
    }
}

/// Per-channel statistics of one batch-norm forward: mean and `1/√(var + eps)`.
#[derive(Debug, Default)]
struct ChannelStats {
    mean: Vec<f64>,
    rstd: Vec<f64>,
    /// The biased batch variance (training) for the running estimate.
    var: Vec<f64>,
}

/// `torch.nn.functional.batch_norm` on `[n, c, ...]` with weight and bias. Training normalizes by
/// the batch's statistics (kept in `stats` for the backward and the running estimates); evaluation
/// by the given running statistics.
struct BatchNormOp {
    eps: f64,
    /// `Some((running_mean, running_var))` in evaluation mode.
    running: Option<(Vec<f32>, Vec<f32>)>,
    stats: Arc<Mutex<ChannelStats>>,
    /// `relu(batch_norm(x))` in the same pass: the ReLU of a separate op costs a tensor of the
    /// input's size each way, and candle's backward a zero-filled buffer and a sum of that size.
    relu: bool,
}

/// `(outer, c, inner)` of an `[n, c, ...]` input.
fn bn_geom(x: &[usize], w: &[usize], b: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
    if x.len() < 2 || x[1..].contains(&0) || w != [x[1]] || b != [x[1]] {
        candle_core::bail!("batch_norm: input [n, c, ...] {x:?}, weight [c] {w:?} and bias [c] {b:?} do not fit");
    }
    Ok((x[0], x[1], x[2..].iter().product()))
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "descent-batch-norm"
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
        let (n, c, inner) = bn_geom(l1.dims(), l2.dims(), l3.dims())?;
        let (x, w, b) = (
            f32_slice(s1, l1, "batch_norm input")?,
            f32_slice(s2, l2, "batch_norm weight")?,
            f32_slice(s3, l3, "batch_norm bias")?,
        );
        let count = n * inner;
        let (mean, var): (Vec<f64>, Vec<f64>) = match &self.running {
            Some((rm, rv)) => {
                if rm.len() != c || rv.len() != c {
                    candle_core::bail!(
                        "batch_norm: running statistics of {} and {} for {c} channels",
                        rm.len(),
                        rv.len()
                    );
                }
                (rm.iter().map(|&v| v as f64).collect(), rv.iter().map(|&v| v as f64).collect())
            }
            None => {
                if count < 2 {
                    candle_core::bail!(
                        "batch_norm: training needs more than one value per channel, got input {:?}",
                        l1.dims()
                    );
                }
                (0..c)
                    .into_par_iter()
                    .map(|ci| {
                        let blocks = || (0..n).map(|ni| &x[(ni * c + ci) * inner..][..inner]);
                        let mean = blocks().map(sum).sum::<f64>() / count as f64;
                        let var = blocks().map(|b| sum_sq_dev(b, mean)).sum::<f64>() / count as f64;
                        (mean, var)
                    })
                    .unzip()
            }
        };
        let rstd: Vec<f64> = var.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect();
        // One image (all its channels) per task.
        let image = c * inner;
        // SAFETY: each task writes every element of its image, channel block by channel block.
        let y = unsafe {
            par_filled(x.len(), image, |k, y| {
                let x = &x[k * image..][..y.len()];
                for (ci, (y, x)) in y.chunks_mut(inner).zip(x.chunks(inner)).enumerate() {
                    let a = (rstd[ci] * w[ci] as f64) as f32;
                    normalize(y, x, mean[ci] as f32, a, b[ci], self.relu);
                }
            })
        };
        *self.stats.lock().expect("batch_norm stats lock") = ChannelStats { mean, rstd, var };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// Training, with `x̂ = (x − μ)·r` over the `m` values of a channel:
    /// `dx = w·r·(g − mean(g) − x̂·mean(g·x̂))`; evaluation (fixed statistics): `dx = w·r·g`.
    /// Both: `dw = Σ g·x̂`, `db = Σ g` per channel.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, inner) = bn_geom(x.dims(), w.dims(), w.dims())?;
        let g = grad.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let xs = storage_f32s(&sx, lx, "batch_norm input")?;
        let ws = storage_f32s(&sw, lw, "batch_norm weight")?;
        let gs = storage_f32s(&sg, lg, "batch_norm gradient")?;
        // The ReLU's backward (the gradient passes where the output is positive) is done on the
        // fly: `relu_out` is the op's output when it has a ReLU.
        let (sr, lr) = res.storage_and_layout();
        let relu_out = if self.relu { Some(storage_f32s(&sr, lr, "batch_norm output")?) } else { None };
        let block = |at: usize| relu_out.map(|s| &s[at..at + inner]);
        let stats = self.stats.lock().expect("batch_norm stats lock");
        let (mean, rstd) = (&stats.mean, &stats.rstd);
        let count = (n * inner) as f64;
        let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ci| {
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for ni in 0..n {
                    let at = (ni * c + ci) * inner;
                    let (a, b) = grad_sums(&xs[at..at + inner], &gs[at..at + inner], block(at), mean[ci]);
                    sg += a;
                    sgx += b;
                }
                (sg, sgx * rstd[ci])
            })
            .unzip();
        let training = self.running.is_none();
        let image = c * inner;
        // SAFETY: each task writes every element of its image, channel block by channel block.
        let gx = unsafe {
            par_filled(xs.len(), image, |k, gx| {
                for (ci, gx) in gx.chunks_mut(inner).enumerate() {
                    let at = k * image + ci * inner;
                    let (m, r, scale) = (mean[ci], rstd[ci], ws[ci] as f64 * rstd[ci]);
                    let (mg, mgx) = if training { (sum_g[ci] / count, sum_gx[ci] / count) } else { (0.0, 0.0) };
                    let (xs, gs) = (&xs[at..at + inner], &gs[at..at + inner]);
                    let f = |v: f64| v as f32;
                    normalize_grad(gx, xs, gs, block(at), f(m), f(r * mgx), f(scale), f(mg));
                }
            })
        };
        let dev = x.device();
        let f = |v: Vec<f64>| Tensor::from_vec(v.into_iter().map(|v| v as f32).collect::<Vec<f32>>(), c, dev);
        Ok((Some(Tensor::from_vec(gx, x.dims(), dev)?), Some(f(sum_gx)?), Some(f(sum_g)?)))
    }
}

/// `torch.nn.functional.batch_norm`'s `training`, `momentum` and `eps`, with torch's defaults
/// (evaluation, 0.1, 1e-5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Normalize by the batch's statistics and move the running ones (`true`), or normalize by the
    /// running statistics (`false`).
    pub training: bool,
    /// How far the running statistics move towards the batch's at each training call.
    pub momentum: f64,
    /// Added to the variance before its square root.
    pub eps: f64,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions { training: false, momentum: 0.1, eps: 1e-5 }
    }
}

/// `torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
/// eps)` on `[n, c]`, `[n, c, l]` or `[n, c, h, w]`. In training, the running statistics (`[c]`)
/// move towards the batch's mean and unbiased variance by `momentum`, in place; in evaluation they
/// normalize the input and stay as they are.
pub fn batch_norm(
    x: &Tensor,
    running_mean: &Var,
    running_var: &Var,
    weight: &Tensor,
    bias: &Tensor,
    options: BatchNormOptions,
) -> Result<Tensor> {
    batch_norm_with(x, running_mean, running_var, weight, bias, options, false)
}

/// [`batch_norm`], followed by a ReLU in the same op when `relu`.
pub(crate) fn batch_norm_with(
    x: &Tensor,
    running_mean: &Var,
    running_var: &Var,
    weight: &Tensor,
    bias: &Tensor,
    options: BatchNormOptions,
    relu: bool,
) -> Result<Tensor> {
    let BatchNormOptions { training, momentum, eps } = options;
    let read = |v: &Var| -> Result<Vec<f32>> { Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?) };
    let (rm, rv) = (read(running_mean)?, read(running_var)?);
    let stats = Arc::new(Mutex::new(ChannelStats::default()));
    let op = BatchNormOp { eps, running: (!training).then(|| (rm.clone(), rv.clone())), stats: stats.clone(), relu };
    let y = x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    if training {
        let s = stats.lock().expect("batch_norm stats lock");
        if rm.len() != s.mean.len() || rv.len() != s.mean.len() {
            return Err(Error::Param(format!(
                "batch_norm: running statistics of {} and {} values for {} channels",
                rm.len(),
                rv.len(),
                s.mean.len()
            )));
        }
        let count = (x.elem_count() / s.mean.len()) as f64;
        let m = momentum as f32;
        let mean: Vec<f32> = rm.iter().zip(&s.mean).map(|(&r, &b)| (1.0 - m) * r + m * b as f32).collect();
        let unbiased = count / (count - 1.0);
        let var: Vec<f32> = rv.iter().zip(&s.var).map(|(&r, &b)| (1.0 - m) * r + m * (b * unbiased) as f32).collect();
        running_mean.set(&Tensor::from_vec(mean, running_mean.dims(), x.device())?)?;
        running_var.set(&Tensor::from_vec(var, running_var.dims(), x.device())?)?;
    }
    Ok(y)
}

/// `torch.nn.BatchNorm1d` / `BatchNorm2d` (the same layer: `[n, c]`, `[n, c, l]` or `[n, c, h, w]`):
/// weight (ones) and bias (zeros) are parameters; `running_mean` (zeros) and `running_var` (ones)
/// are buffers, not parameters: updated in place by each training-mode forward, read and saved by
/// the caller, and used instead of the batch's statistics in evaluation mode.
#[derive(Clone)]
pub struct BatchNorm {
    /// `[c]`, the scale γ.
    pub weight: Var,
    /// `[c]`, the shift β.
    pub bias: Var,
    /// `[c]`, the running mean (a buffer, not trained).
    pub running_mean: Var,
    /// `[c]`, the running unbiased variance (a buffer, not trained).
    pub running_var: Var,
    /// How far the running statistics move towards a training batch's.
    pub momentum: f64,
    /// Added to the variance before its square root.
    pub eps: f64,
}

/// [`BatchNorm`] on `[n, c]` (or `[n, c, l]`).
pub type BatchNorm1d = BatchNorm;
/// [`BatchNorm`] on `[n, c, h, w]`.
pub type BatchNorm2d = BatchNorm;

impl BatchNorm {
    /// `c` channels, momentum 0.1, eps 1e-5, PyTorch's initial values.
    pub fn new(c: usize, dev: &Device) -> Result<Self> {
        let v = |one: bool| -> Result<Var> {
            let t = if one {
                Tensor::ones(c, candle_core::DType::F32, dev)?
            } else {
                Tensor::zeros(c, candle_core::DType::F32, dev)?
            };
            Ok(Var::from_tensor(&t)?)
        };
        Ok(BatchNorm {
            weight: v(true)?,
            bias: v(false)?,
            running_mean: v(false)?,
            running_var: v(true)?,
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// Batch statistics (and a running-statistics update) in [`Mode::Train`], running statistics in
    /// [`Mode::Eval`].
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, false)
    }

    /// `relu(self.forward(x, mode))` as one op.
    pub fn forward_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, true)
    }

    fn forward_with(&self, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        let options = BatchNormOptions {
            training: mode == Mode::Train,
            // `update_bn`'s cumulative average, while it runs.
            momentum: crate::average::bn_momentum_override().unwrap_or(self.momentum),
            eps: self.eps,
        };
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        batch_norm_with(x, &self.running_mean, &self.running_var, w, b, options, relu)
    }

    /// The buffers with PyTorch's names (under the layer's prefix): `running_mean`, `running_var`.
    pub fn named_buffers(&self) -> Vec<(String, Var)> {
        vec![("running_mean".into(), self.running_mean.clone()), ("running_var".into(), self.running_var.clone())]
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    use super::{batch_norm, layer_norm, BatchNormOptions};
    use crate::rng::Rng;

    fn randn(rng: &mut Rng, shape: &[usize], offset: f32) -> Var {
        let n = shape.iter().product();
        Var::from_vec((0..n).map(|_| offset + 3.0 * rng.normal()).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
    }

    /// The AVX2 and AVX-512 sums give the plain loops' bits, lane for lane, masked or not (NaN
    /// outputs included), whatever the tail.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_sums_match_the_plain_loops_bit_for_bit() {
        let mut rng = Rng::new(3);
        for n in [0, 5, 8, 13, 16, 64, 787] {
            let v = |rng: &mut Rng| (0..n).map(|_| 0.7 + 3.0 * rng.normal()).collect::<Vec<f32>>();
            let (x, g, mut r) = (v(&mut rng), v(&mut rng), v(&mut rng));
            if n > 3 {
                r[3] = f32::NAN;
            }
            let bits = |a: [f64; super::LANES]| a.map(f64::to_bits);
            let pair = |(a, b): ([f64; super::LANES], [f64; super::LANES])| (bits(a), bits(b));
            let sq = |v: f64| (v - 0.3) * (v - 0.3);
            let plain = (
                bits(super::lanes(&x, |v| v)),
                bits(super::lanes(&x, sq)),
                pair(super::lanes2(&x, &g, Some(&r), 0.3)),
                pair(super::lanes2(&x, &g, None, 0.3)),
            );
            if crate::cpu::has_avx2() {
                // SAFETY: AVX2 checked; equal lengths.
                let avx2 = unsafe {
                    (
                        bits(super::avx2::lanes::<false>(&x, 0.0)),
                        bits(super::avx2::lanes::<true>(&x, 0.3)),
                        pair(super::avx2::lanes2::<true>(&x, &g, &r, 0.3)),
                        pair(super::avx2::lanes2::<false>(&x, &g, &g, 0.3)),
                    )
                };
                assert_eq!(avx2, plain, "AVX2, {n} values");
            }
            if crate::cpu::has_avx512() {
                // SAFETY: AVX-512 checked; equal lengths.
                let avx512 = unsafe {
                    (
                        bits(super::avx512::lanes::<false>(&x, 0.0)),
                        bits(super::avx512::lanes::<true>(&x, 0.3)),
                        pair(super::avx512::lanes2::<true>(&x, &g, &r, 0.3)),
                        pair(super::avx512::lanes2::<false>(&x, &g, &g, 0.3)),
                    )
                };
                assert_eq!(avx512, plain, "AVX-512, {n} values");
            }
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    fn close(what: &str, a: &Tensor, b: &Tensor) {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let d = max_diff(a, b);
        assert!(d <= 1e-4 * scale + 1e-6, "{what}: {d} against {scale}");
    }

    /// Layer norm against candle's composition on a 4-D input far from zero mean.
    #[test]
    fn layer_norm_matches_the_composition() {
        let mut rng = Rng::new(4);
        let (x, w, b, probe) = (
            randn(&mut rng, &[2, 3, 4, 10], 50.0),
            randn(&mut rng, &[10], 0.0),
            randn(&mut rng, &[10], 0.0),
            randn(&mut rng, &[2, 3, 4, 10], 0.0),
        );
        let ours = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-3).unwrap();
        let xc = x.as_tensor().broadcast_sub(&x.as_tensor().mean_keepdim(D::Minus1).unwrap()).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composed = xc
            .broadcast_div(&(var + 1e-3).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        close("output", &ours, &composed);
        let g1 = (ours * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (n, v) in [("x", &x), ("w", &w), ("b", &b)] {
            close(n, g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
        }
    }

    /// The batch norm with its ReLU fused gives the values and gradients of the two ops, in
    /// training and in evaluation.
    #[test]
    fn batch_norm_relu_matches_the_separate_ops() {
        let mut rng = Rng::new(13);
        let (x, w, b, probe) = (
            randn(&mut rng, &[6, 3, 5, 7], 1.0),
            randn(&mut rng, &[3], 0.0),
            randn(&mut rng, &[3], 0.0),
            randn(&mut rng, &[6, 3, 5, 7], 0.0),
        );
        for training in [true, false] {
            let options = BatchNormOptions { training, ..Default::default() };
            let run = |relu: bool| {
                let (rm, rv) = (
                    Var::from_vec(vec![0.5f32, -1.0, 2.0], 3, &Device::Cpu).unwrap(),
                    Var::from_vec(vec![1.0f32, 2.0, 0.5], 3, &Device::Cpu).unwrap(),
                );
                let y = super::batch_norm_with(x.as_tensor(), &rm, &rv, w.as_tensor(), b.as_tensor(), options, relu)
                    .unwrap();
                let y = if relu { y } else { y.relu().unwrap() };
                let g = (&y * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g, rm, rv)
            };
            let ((y1, g1, rm1, rv1), (y2, g2, rm2, rv2)) = (run(true), run(false));
            assert_eq!(max_diff(&y1, &y2), 0.0, "training {training}");
            for v in [&x, &w, &b] {
                assert_eq!(max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()), 0.0);
            }
            assert_eq!(max_diff(rm1.as_tensor(), rm2.as_tensor()), 0.0);
            assert_eq!(max_diff(rv1.as_tensor(), rv2.as_tensor()), 0.0);
        }
    }

    /// Batch norm on `[n, c, l]` (BatchNorm1d's other form) against candle's composition, and the
    /// running statistics after two training steps.
    #[test]
    fn batch_norm_matches_the_composition_on_3d_input() {
        let mut rng = Rng::new(9);
        let (x, w, b, probe) = (
            randn(&mut rng, &[5, 3, 7], 4.0),
            randn(&mut rng, &[3], 0.0),
            randn(&mut rng, &[3], 0.0),
            randn(&mut rng, &[5, 3, 7], 0.0),
        );
        let (rm, rv) = (
            Var::from_vec(vec![0.5f32, -1.0, 2.0], 3, &Device::Cpu).unwrap(),
            Var::from_vec(vec![1.0f32, 2.0, 0.5], 3, &Device::Cpu).unwrap(),
        );
        let train = BatchNormOptions { training: true, ..Default::default() };
        let ours = batch_norm(x.as_tensor(), &rm, &rv, w.as_tensor(), b.as_tensor(), train).unwrap();
        let bc = |t: &Tensor| t.reshape((1, 3, 1)).unwrap();
        let mean = x.as_tensor().mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
        let xc = x.as_tensor().broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
        let composed = xc
            .broadcast_div(&(&var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&bc(w.as_tensor()))
            .unwrap()
            .broadcast_add(&bc(b.as_tensor()))
            .unwrap();
        close("output", &ours, &composed);
        let g1 = (ours * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (n, v) in [("x", &x), ("w", &w), ("b", &b)] {
            close(n, g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
        }
        let expect_mean = ((mean.flatten_all().unwrap() * 0.1).unwrap()
            + (Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap() * 0.9).unwrap())
        .unwrap();
        let expect_var = ((var.flatten_all().unwrap() * (0.1 * 35.0 / 34.0)).unwrap()
            + (Tensor::new(&[1.0f32, 2.0, 0.5], &Device::Cpu).unwrap() * 0.9).unwrap())
        .unwrap();
        close("running_mean", rm.as_tensor(), &expect_mean);
        close("running_var", rv.as_tensor(), &expect_var);
        // Evaluation reads them and leaves them alone.
        let before = rm.as_tensor().copy().unwrap();
        batch_norm(x.as_tensor(), &rm, &rv, w.as_tensor(), b.as_tensor(), BatchNormOptions::default()).unwrap();
        assert_eq!(max_diff(rm.as_tensor(), &before), 0.0);
        // A single value per channel has no variance to train on.
        let one = Tensor::zeros((1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(batch_norm(&one, &rm, &rv, w.as_tensor(), b.as_tensor(), train).is_err());
    }
}
