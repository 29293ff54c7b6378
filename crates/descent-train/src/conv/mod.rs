//! 2-D convolution as a candle op with its own backward: im2col + GEMM (the `gemm` crate candle
//! itself uses) for the output and both gradients, a few images per GEMM and tasks split across
//! threads, and the bias gradient summed directly. candle 0.11's path (conv_transpose2d for the
//! input gradient, a `sum_keepdim([0, 2, 3])` for the bias) takes most of LeNet-5's step.
//!
//! Padded stride-1 f32 convolutions (dilation 1, one group, padding from 1 to the kernel's size
//! less 1, e.g. the ResNet's 3×3 ones) and stride-2 ones (padding below the kernel's size) take
//! direct convolution kernels instead (module `direct`): each image copied once into zero-padded
//! planes (for stride 2, its four parity planes), no im2col or col2im, whose copies of the input
//! (`kh·kw` of it, made in the forward and again in the backward) and scatter cost more than
//! the products with 16–32 channels.
//!
//! The op can also apply ReLU, or ReLU then max-pooling, to its output in the same pass
//! ([`Epilogue`]): the values and gradients of `max_pool2d(relu(conv2d(x)))` without the full-size
//! activation and its gradient ever becoming candle tensors (each one costs candle's backward a
//! zero-filled buffer, a comparison, a product and a sum the size of the convolution's output).

mod direct;

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::cpu::{f32_slice, give_back_buffer, storage_f32s, take_buffer, zeroed};
use crate::gemm::matmul_in;
use crate::layers::MaxPool2d;
use crate::precision::Precision;
use rayon::prelude::*;

/// Images per task (their columns side by side in one GEMM): fixed, so the reduction order of the
/// weight gradient (and so its bits) does not depend on the number of threads.
const IMAGES_PER_TASK: usize = 8;

/// What the convolution op applies to its output (after the bias) before returning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// The convolution as is.
    Identity,
    /// `relu(conv2d(x))`.
    Relu,
    /// `max_pool2d(relu(conv2d(x)))`, which equals pooling first and then ReLU, gradients included:
    /// a window whose maximum is positive routes its gradient to that maximum, others to nothing.
    ReluMaxPool(MaxPool2d),
}

/// `torch.nn.functional.conv2d` arguments, and the epilogue fused into the op.
#[derive(Debug)]
pub struct Conv2dOp {
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
    epilogue: Epilogue,
    /// For [`Epilogue::ReluMaxPool`]: each pooled output's winner, as an index into its `[oh, ow]`
    /// plane of the convolution's output, kept from the forward for the backward.
    argmax: Mutex<Vec<u32>>,
    /// The products' precision, this thread's when the op was built.
    precision: Precision,
    /// Always im2col + GEMM, even where the direct kernels apply (to compare the two).
    im2col_only: bool,
    /// The direct path's padded input planes, `[n][c][xplane]`, from the forward for the backward
    /// (which would otherwise pad the input again), then given back ([`give_back_buffer`]).
    planes: Mutex<Vec<f32>>,
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
    /// Stride 1, dilation 1, no padding: each column-matrix row of an image is then one contiguous
    /// run of the input (output position `(oy, ox)` at column `oy·w + ox`, the `w − ow` columns
    /// between rows unused), copied with one `memcpy`, at the cost of GEMMs `w/ow` wider.
    wide: bool,
}

impl Geom {
    /// Rows of an image's column matrix per group: `cg · kh · kw`.
    fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }
    fn hw(&self) -> usize {
        self.oh * self.ow
    }
    fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Columns of one image's column matrix.
    fn seg(&self) -> usize {
        if self.wide {
            (self.oh - 1) * self.w + self.ow
        } else {
            self.hw()
        }
    }
    /// The column of output position `(oy, ox)` in an image's column matrix.
    fn col(&self, oy: usize, ox: usize) -> usize {
        oy * if self.wide { self.w } else { self.ow } + ox
    }
}

/// The layout of the direct kernels' operands ([`direct`]'s module documentation): the input
/// padded by `p` on every side, the output gradient by `top` rows and `left` columns, both with
/// rows `taps.stride` apart so that one wide grid serves the forward, the weight gradient and the
/// input gradient.
#[derive(Debug, Clone, Copy)]
struct DirectGeom {
    /// The kernel's taps on the input's planes.
    taps: direct::Taps,
    /// Stride 1, or stride 2 on parity planes.
    layout: DirectLayout,
    /// The forward's padding.
    p: usize,
    /// Where the output gradient starts in its padded planes.
    top: usize,
    left: usize,
    /// The plane sizes of the padded input (all its parity planes) and the padded output gradient.
    xplane: usize,
    dplane: usize,
    /// The wide grids' positions: the output (whole tiles), the input gradient (whole tiles; of
    /// each parity plane for stride 2), the weight gradient's sum (whole vectors).
    fpos: usize,
    bpos: usize,
    wpos: usize,
}

/// How a direct convolution reads its input.
#[derive(Debug, Clone, Copy)]
enum DirectLayout {
    /// Stride 1: rows `stride = w + max(p, kw − 1 − p)` apart, the input gradient a full
    /// correlation of the output gradient (padded by `kh − 1 − p`, `kw − 1 − p`) with the flipped
    /// kernel. One run of zeros between two rows serves as the right padding of one and the left
    /// padding of the next: a tap past a row's end reads the next row's left padding (the input's
    /// `p` columns, the output gradient's `kw − 1 − p`), never its data.
    Dense,
    /// Stride 2: the padded input split into its four (row, column) parity planes of `rows × cols`
    /// ([`direct::Taps::parity`]), `sub` floats apart. The input gradient of parity plane
    /// `(a, b)` is a stride-1 full correlation of the output gradient with the flipped sub-kernel
    /// `w[.., .., a + 2u, b + 2v]` (for 3×3: 2×2, 2×1, 1×2 and 1×1 taps), on the same wide grid.
    Parity { rows: usize, cols: usize, sub: usize },
}

impl DirectGeom {
    /// Stride 1.
    fn dense(g: &Geom, p: usize) -> Self {
        let stride = g.w + p.max(g.kw - 1 - p);
        let slack = direct::slack(g.kw);
        DirectGeom {
            taps: direct::Taps::dense(g.kh, g.kw, stride),
            layout: DirectLayout::Dense,
            p,
            top: g.kh - 1 - p,
            left: g.kw - 1 - p,
            xplane: (g.h + 2 * p) * stride + slack,
            dplane: ((g.h + g.kh - 1) * stride + slack).next_multiple_of(ALIGN_FLOATS),
            fpos: (g.oh * stride).div_ceil(direct::TILE) * direct::TILE,
            bpos: (g.h * stride).div_ceil(direct::TILE) * direct::TILE,
            wpos: (g.oh * stride).div_ceil(direct::LANES) * direct::LANES,
        }
    }

    /// Stride 2: rows `stride = max(cols, ow + ⌈kw/2⌉ − 1)` apart, so that no output position's
    /// tap reaches into the next row, and no input-gradient position's tap into the next row's
    /// data (only into its zero padding).
    fn stride2(g: &Geom, p: usize) -> Self {
        let (rows, cols) = ((g.h + 2 * p).div_ceil(2), (g.w + 2 * p).div_ceil(2));
        let (half_h, half_w) = (g.kh.div_ceil(2), g.kw.div_ceil(2));
        let stride = cols.max(g.ow + half_w - 1);
        let slack = direct::slack(g.kw);
        let sub = rows * stride + slack;
        DirectGeom {
            taps: direct::Taps::parity(g.kh, g.kw, stride, sub),
            layout: DirectLayout::Parity { rows, cols, sub },
            p,
            top: half_h - 1,
            left: half_w - 1,
            xplane: 4 * sub,
            dplane: ((rows + half_h) * stride + slack).next_multiple_of(ALIGN_FLOATS),
            fpos: (g.oh * stride).div_ceil(direct::TILE) * direct::TILE,
            bpos: (rows * stride).div_ceil(direct::TILE) * direct::TILE,
            wpos: (g.oh * stride).div_ceil(direct::LANES) * direct::LANES,
        }
    }

    /// Writes image `x` (`[c, h, w]`) into `xp` as zero-padded planes (or parity planes).
    fn pad_input(&self, g: &Geom, x: &[f32], xp: &mut [f32]) {
        let (s, p) = (self.taps.stride, self.p);
        match self.layout {
            DirectLayout::Dense => direct::pad_planes(xp, g.c, g.h, g.w, self.xplane, s, p, p, |c, y, row| {
                row.copy_from_slice(&x[(c * g.h + y) * g.w..][..g.w])
            }),
            DirectLayout::Parity { rows, cols, sub } => {
                for (c, planes) in xp.chunks_exact_mut(self.xplane).take(g.c).enumerate() {
                    let xc = &x[c * g.h * g.w..][..g.h * g.w];
                    for (ab, plane) in planes.chunks_exact_mut(sub).take(4).enumerate() {
                        let (a, b) = (ab / 2, ab % 2);
                        let ((i0, y0, ni), (j0, x0, nj)) = (parity_span(a, p, g.h, rows), parity_span(b, p, g.w, cols));
                        // Everything but the copied runs is zero, written up to each run.
                        let mut at = 0;
                        for (i, y) in (i0..i0 + ni).zip((y0..).step_by(2)) {
                            let start = i * s + j0;
                            plane[at..start].fill(0.0);
                            let src = xc[y * g.w + x0..(y + 1) * g.w].iter().step_by(2);
                            plane[start..start + nj].iter_mut().zip(src).for_each(|(d, &v)| *d = v);
                            at = start + nj;
                        }
                        plane[at..].fill(0.0);
                    }
                }
            }
        }
    }

    /// The weights of the input gradient, `[o][tap][c]`: the kernel flipped in both spatial
    /// dimensions and transposed (tap `t` takes the original's `kh·kw − 1 − t`); for stride 2 the
    /// four parities' sub-kernels one after the other, each flipped and transposed.
    fn input_grad_weights(&self, g: &Geom, ws: &[f32]) -> Vec<f32> {
        let taps = g.kh * g.kw;
        let mut wtb = vec![0.0f32; ws.len()];
        match self.layout {
            DirectLayout::Dense => {
                for (oc, wo) in ws.chunks_exact(g.c * taps).enumerate() {
                    for (ci, wc) in wo.chunks_exact(taps).enumerate() {
                        for (t, &v) in wc.iter().rev().enumerate() {
                            wtb[(oc * taps + t) * g.c + ci] = v;
                        }
                    }
                }
            }
            DirectLayout::Parity { .. } => {
                let mut at = 0;
                for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let (kha, kwb) = Self::sub_kernel(g, a, b);
                    let part = &mut wtb[at..][..g.o * kha * kwb * g.c];
                    for oc in 0..g.o {
                        for ci in 0..g.c {
                            for u in 0..kha {
                                for v in 0..kwb {
                                    let (ky, kx) = (2 * (kha - 1 - u) + a, 2 * (kwb - 1 - v) + b);
                                    part[((oc * kha + u) * kwb + v) * g.c + ci] =
                                        ws[((oc * g.c + ci) * g.kh + ky) * g.kw + kx];
                                }
                            }
                        }
                    }
                    at += part.len();
                }
            }
        }
        wtb
    }

    /// The taps `(rows, columns)` of a stride-2 kernel that read parity plane `(a, b)`.
    fn sub_kernel(g: &Geom, a: usize, b: usize) -> (usize, usize) {
        ((g.kh + 1 - a) / 2, (g.kw + 1 - b) / 2)
    }

    /// Writes one image's input gradient `gx` (`[c, h, w]`, every element) from its padded
    /// output gradient `dp`, with `wtb` from [`Self::input_grad_weights`] and `dx` (`c · bpos`)
    /// as working space.
    /// Every element of `gx` that some tap reaches is written; the others (only where a stride-2
    /// kernel has a single row or column of taps) are left as they are, zero.
    fn input_grad(&self, g: &Geom, dp: &[f32], wtb: &[f32], dx: &mut [f32], gx: &mut [MaybeUninit<f32>]) {
        let s = self.taps.stride;
        match self.layout {
            DirectLayout::Dense => {
                direct::forward(self.taps, dp, g.o, self.dplane, wtb, g.c, dx, self.bpos);
                assert_eq!(gx.len(), g.c * g.h * g.w, "input_grad: the image's gradient");
                for (gxc, dxc) in gx.chunks_exact_mut(g.h * g.w).zip(dx.chunks_exact(self.bpos)) {
                    for (gr, dr) in gxc.chunks_exact_mut(g.w).zip(dxc.chunks(s)) {
                        gr.iter_mut().zip(&dr[..g.w]).for_each(|(o, &v)| {
                            o.write(v);
                        });
                    }
                }
            }
            DirectLayout::Parity { rows, cols, .. } => {
                // Positions no tap reaches keep the zeros.
                let gx = zeroed(gx);
                let mut at = 0;
                for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let (kha, kwb) = Self::sub_kernel(g, a, b);
                    if kha == 0 || kwb == 0 {
                        continue;
                    }
                    let part = &wtb[at..][..g.o * kha * kwb * g.c];
                    at += part.len();
                    // The sub-kernel's padding is `kha − 1`, `kwb − 1`; the planes have `top`, `left`.
                    let base = (self.top + 1 - kha) * s + (self.left + 1 - kwb);
                    let taps = direct::Taps::dense(kha, kwb, s);
                    direct::forward(taps, &dp[base..], g.o, self.dplane, part, g.c, dx, self.bpos);
                    let ((i0, y0, ni), (j0, x0, nj)) =
                        (parity_span(a, self.p, g.h, rows), parity_span(b, self.p, g.w, cols));
                    for (gxc, dxc) in gx.chunks_exact_mut(g.h * g.w).zip(dx.chunks_exact(self.bpos)) {
                        for (i, y) in (i0..i0 + ni).zip((y0..).step_by(2)) {
                            let (gr, dr) = (&mut gxc[y * g.w + x0..(y + 1) * g.w], &dxc[i * s + j0..][..nj]);
                            gr.iter_mut().step_by(2).zip(dr).for_each(|(d, &v)| *d = v);
                        }
                    }
                }
            }
        }
    }
}

/// One axis of a stride-2 parity plane: its index `j` holds padded position `2j + b`, image
/// position `2j + b − p` (the image `len` long, padded by `p` before it). Returns the first index
/// inside the image `j0`, the image position `x0` it holds, and how many of the plane's `count`
/// indices from `j0` are inside (they hold `x0, x0 + 2, …`).
fn parity_span(b: usize, p: usize, len: usize, count: usize) -> (usize, usize, usize) {
    let j0 = p.saturating_sub(b).div_ceil(2);
    let x0 = 2 * j0 + b - p;
    let n = if x0 < len { (len - x0).div_ceil(2).min(count.saturating_sub(j0)) } else { 0 };
    (j0, x0, n)
}

thread_local! {
    /// Per-thread working buffers of the convolution tasks, kept between calls: a fresh
    /// zero-filled allocation per task costs page faults and a memset the size of the columns.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Floats in 64 bytes, a cache line and an AVX-512 vector.
const ALIGN_FLOATS: usize = 16;

/// Where to start in a buffer at `p` (with [`ALIGN_FLOATS`] floats to spare) so that the float
/// `at` after the start lies on a 64-byte boundary.
fn aligned_start(p: *const f32, at: usize) -> usize {
    (ALIGN_FLOATS - (p as usize / 4 + at) % ALIGN_FLOATS) % ALIGN_FLOATS
}

/// Runs `f` on `N` (at most 3) buffers of the given lengths from this thread's scratch. Their
/// contents are whatever the last user left: `f` writes before it reads.
fn with_scratch<const N: usize, R>(lens: [usize; N], f: impl FnOnce([&mut [f32]; N]) -> R) -> R {
    let run = |bufs: &mut [Vec<f32>; 3]| {
        for (b, &n) in bufs.iter_mut().zip(&lens) {
            if b.len() < n {
                b.resize(n, 0.0);
            }
        }
        let mut it = bufs.iter_mut().zip(lens).map(|(b, n)| &mut b[..n]);
        f(std::array::from_fn(|_| it.next().expect("at most 3 scratch buffers")))
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut bufs) => run(&mut bufs),
        // Re-entered (a task inside a task): fresh buffers.
        Err(_) => run(&mut Default::default()),
    })
}

impl Drop for Conv2dOp {
    /// The padded input planes a forward kept (and no backward took) go back to this thread's
    /// buffers.
    fn drop(&mut self) {
        if let Ok(mut p) = self.planes.lock() {
            give_back_buffer(std::mem::take(&mut *p));
        }
    }
}

impl Conv2dOp {
    /// The op of a convolution with this geometry, followed by `epilogue`, its products in this
    /// thread's precision ([`crate::precision::current`]).
    pub fn new(stride: usize, padding: usize, dilation: usize, groups: usize, epilogue: Epilogue) -> Self {
        let precision = crate::precision::current();
        Conv2dOp {
            stride,
            padding,
            dilation,
            groups,
            epilogue,
            argmax: Mutex::new(Vec::new()),
            precision,
            im2col_only: false,
            planes: Mutex::new(Vec::new()),
        }
    }

    /// This op on the im2col + GEMM path whatever its geometry.
    #[cfg(test)]
    fn im2col_only(mut self) -> Self {
        self.im2col_only = true;
        self
    }

    /// The direct kernels' layout for this convolution, where they apply: f32 products (bfloat16
    /// ones keep im2col + GEMM), dilation 1, one group, a padding smaller than the kernel (so that
    /// the input gradient is a full correlation of the output gradient padded by
    /// `k − 1 − padding`), and stride 1 with a padding of at least 1 (without padding im2col
    /// already copies whole runs, [`Geom::wide`], and LeNet-5's 5×5 convolutions gain nothing from
    /// the direct kernels) or stride 2 with at least 2×2 taps (on parity planes,
    /// [`DirectLayout::Parity`]).
    fn direct(&self, g: &Geom) -> Option<DirectGeom> {
        let p = self.padding;
        let applies = !self.im2col_only
            && self.precision == Precision::F32
            && self.dilation == 1
            && self.groups == 1
            && p < g.kh
            && p < g.kw;
        match self.stride {
            1 if applies && p >= 1 => Some(DirectGeom::dense(g, p)),
            // A 1×1 kernel reads one parity plane of four: im2col's subsampling copies less.
            2 if applies && g.kh >= 2 && g.kw >= 2 => Some(DirectGeom::stride2(g, p)),
            _ => None,
        }
    }

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
        if self.stride == 0 || self.dilation == 0 {
            candle_core::bail!(
                "conv2d: stride {} and dilation {}: each must be at least 1",
                self.stride,
                self.dilation
            );
        }
        let span = |k: usize| self.dilation * (k - 1) + 1;
        if h + 2 * self.padding < span(kh) || wd + 2 * self.padding < span(kw) {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} (dilation {}) larger than the padded input {x:?}",
                self.dilation
            );
        }
        let oh = (h + 2 * self.padding - span(kh)) / self.stride + 1;
        let ow = (wd + 2 * self.padding - span(kw)) / self.stride + 1;
        if let Epilogue::ReluMaxPool(p) = self.epilogue {
            p.check(&[n, o, oh, ow])?;
        }
        let wide = self.stride == 1 && self.dilation == 1 && self.padding == 0;
        Ok(Geom { n, c, h, w: wd, o, kh, kw, oh, ow, cg, og: o / g, wide })
    }

    /// The `[oh', ow']` size of one output plane (pooled or not).
    fn out_plane(&self, g: &Geom) -> (usize, usize) {
        match self.epilogue {
            Epilogue::ReluMaxPool(p) => (p.out_size(g.oh), p.out_size(g.ow)),
            _ => (g.oh, g.ow),
        }
    }

    /// Writes the column matrix of group `gi` of one image `x` (`[c, h, w]`): row `r` of the
    /// `cg·kh·kw` rows goes to `cols[r·ld + off ..][.. oh·ow]`, so several images sit side by side.
    fn im2col(&self, g: &Geom, x: &[f32], gi: usize, cols: &mut [f32], ld: usize, off: usize) {
        let (hw, seg) = (g.hw(), g.seg());
        if g.wide {
            for ci in 0..g.cg {
                let plane = &x[(gi * g.cg + ci) * g.h * g.w..][..g.h * g.w];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = &mut cols[((ci * g.kh + ky) * g.kw + kx) * ld + off..][..seg];
                        row.copy_from_slice(&plane[ky * g.w + kx..][..seg]);
                    }
                }
            }
            return;
        }
        for ci in 0..g.cg {
            let plane = &x[(gi * g.cg + ci) * g.h * g.w..][..g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &mut cols[((ci * g.kh + ky) * g.kw + kx) * ld + off..][..hw];
                    for oy in 0..g.oh {
                        let iy = (oy * self.stride + ky * self.dilation) as isize - self.padding as isize;
                        let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                        if iy < 0 || iy >= g.h as isize {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let x0 = (kx * self.dilation) as isize - self.padding as isize;
                        if self.stride == 1 {
                            // Output columns `lo..hi` read one contiguous run of the input row;
                            // those left and right of it fall in the padding.
                            let (lo, hi) = stride1_span(x0, g.ow, g.w);
                            out[..lo].fill(0.0);
                            out[hi..].fill(0.0);
                            if lo < hi {
                                let s0 = (lo as isize + x0) as usize;
                                out[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                            }
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

    /// Adds a column matrix gradient (laid out as [`Self::im2col`] writes it) back into the image
    /// gradient: the adjoint of `im2col`.
    fn col2im(&self, g: &Geom, cols: &[f32], gi: usize, gx: &mut [f32], ld: usize, off: usize) {
        let (hw, seg) = (g.hw(), g.seg());
        if g.wide {
            // The unused columns carry zero gradient, so whole runs can be added.
            for ci in 0..g.cg {
                let plane = &mut gx[(gi * g.cg + ci) * g.h * g.w..][..g.h * g.w];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = &cols[((ci * g.kh + ky) * g.kw + kx) * ld + off..][..seg];
                        let dst = &mut plane[ky * g.w + kx..][..seg];
                        dst.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                    }
                }
            }
            return;
        }
        for ci in 0..g.cg {
            let plane = &mut gx[(gi * g.cg + ci) * g.h * g.w..][..g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &cols[((ci * g.kh + ky) * g.kw + kx) * ld + off..][..hw];
                    for oy in 0..g.oh {
                        let iy = (oy * self.stride + ky * self.dilation) as isize - self.padding as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let x0 = (kx * self.dilation) as isize - self.padding as isize;
                        if self.stride == 1 {
                            // Columns in the padding have no input to add to.
                            let (lo, hi) = stride1_span(x0, g.ow, g.w);
                            if lo < hi {
                                let s0 = (lo as isize + x0) as usize;
                                let d = &mut dst[s0..s0 + hi - lo];
                                d.iter_mut().zip(&row[oy * g.ow + lo..oy * g.ow + hi]).for_each(|(a, b)| *a += b);
                            }
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

    /// The column matrices of `nb` images `xs` side by side (`[cg·kh·kw, nb·oh·ow]`) for group `gi`.
    fn columns(&self, g: &Geom, xs: &[f32], nb: usize, gi: usize, cols: &mut [f32]) {
        let (seg, img) = (g.seg(), g.image());
        for b in 0..nb {
            self.im2col(g, &xs[b * img..(b + 1) * img], gi, cols, nb * seg, b * seg);
        }
    }
}

/// For stride 1, the output columns `lo..hi` (within `0..ow`) whose input column `ox + x0` lies
/// inside a row of `w`: a contiguous run of the input, the columns outside it in the padding.
fn stride1_span(x0: isize, ow: usize, w: usize) -> (usize, usize) {
    let lo = (-x0).clamp(0, ow as isize) as usize;
    let hi = (w as isize - x0).clamp(0, ow as isize) as usize;
    (lo, hi.max(lo))
}

/// A sum in 8 interleaved partial sums: vectorizes, where a plain `sum` is one long chain of
/// dependent additions (the same bits on every run either way).
/// Only the `xs` whose `mask` entry is positive count (all of them without a mask).
fn sum_lanes_where(xs: &[f32], mask: Option<&[f32]>) -> f32 {
    let pick = |v: f32, m: Option<f32>| if m.is_none_or(|m| m > 0.0) { v } else { 0.0 };
    let mut acc = [0.0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    let mut tail = 0.0f32;
    match mask {
        None => {
            for c in &mut chunks {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
            }
            tail += chunks.remainder().iter().sum::<f32>();
        }
        Some(mask) => {
            let mut masks = mask[..xs.len()].chunks_exact(8);
            for (c, m) in (&mut chunks).zip(&mut masks) {
                for ((a, &v), &m) in acc.iter_mut().zip(c).zip(m) {
                    *a += pick(v, Some(m));
                }
            }
            tail += chunks.remainder().iter().zip(masks.remainder()).map(|(&v, &m)| pick(v, Some(m))).sum::<f32>();
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Writes `f` of the valid columns of a wide grid `src` (rows `s` apart, the first `ow` of each
/// valid) into the dense rows of `dst`.
#[inline]
fn valid_rows(dst: &mut [f32], src: &[f32], ow: usize, s: usize, f: impl Fn(f32) -> f32) {
    for (dr, sr) in dst.chunks_exact_mut(ow).zip(src.chunks(s)) {
        dr.iter_mut().zip(sr).for_each(|(o, &v)| *o = f(v));
    }
}

/// [`valid_rows`] into memory not yet written: every element of `dst` (`src` holds a row of `s`
/// for each of its rows of `ow`).
fn valid_rows_into(dst: &mut [MaybeUninit<f32>], src: &[f32], ow: usize, s: usize, f: impl Fn(f32) -> f32) {
    let rows = dst.len() / ow;
    assert!(
        dst.len() == rows * ow && (rows == 0 || src.len() + s >= rows * s + ow),
        "valid_rows_into: {} values in rows of {s} for {} in rows of {ow}",
        src.len(),
        dst.len()
    );
    for (dr, sr) in dst.chunks_exact_mut(ow).zip(src.chunks(s)) {
        dr.iter_mut().zip(sr).for_each(|(o, &v)| {
            o.write(f(v));
        });
    }
}

/// ReLU keeping NaN (as `torch.relu`).
#[inline]
fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
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
        let (x, w, b) = (
            f32_slice(s1, l1, "conv2d input")?,
            f32_slice(s2, l2, "conv2d weight")?,
            f32_slice(s3, l3, "conv2d bias")?,
        );
        if b.len() != g.o {
            candle_core::bail!("conv2d: bias has {} elements for {} output channels", b.len(), g.o);
        }
        let (k, hw, img) = (g.k(), g.hw(), g.image());
        let (ph, pw) = self.out_plane(&g);
        let out_img = g.o * ph * pw;
        // Written task by task (the im2col path's chunks zeroed first by `zeroed`); the length
        // set at the end.
        let mut out: Vec<f32> = Vec::with_capacity(g.n * out_img);
        let pool = match self.epilogue {
            Epilogue::ReluMaxPool(p) => Some(p),
            _ => None,
        };
        let mut argmax = vec![0u32; if pool.is_some() { g.n * out_img } else { 0 }];
        let tasks = g.n.div_ceil(IMAGES_PER_TASK);
        let idx_chunks: Vec<&mut [u32]> = if pool.is_some() {
            argmax.chunks_mut(IMAGES_PER_TASK * out_img).collect()
        } else {
            (0..tasks).map(|_| &mut [][..]).collect()
        };
        if let Some(d) = self.direct(&g) {
            // The weights as `[c][tap][o]`: the 4 output channels of a register tile adjacent.
            let taps = g.kh * g.kw;
            let mut wt = vec![0.0f32; w.len()];
            for (oc, wo) in w.chunks_exact(g.c * taps).enumerate() {
                for (ct, &v) in wo.iter().enumerate() {
                    wt[ct * g.o + oc] = v;
                }
            }
            // Every element of the planes is written (padding included) before it is read.
            let mut planes = take_buffer(g.n * g.c * d.xplane);
            let task_planes = planes.par_chunks_mut(IMAGES_PER_TASK * g.c * d.xplane);
            out.spare_capacity_mut()[..g.n * out_img]
                .par_chunks_mut(IMAGES_PER_TASK * out_img)
                .zip(idx_chunks)
                .zip(task_planes)
                .enumerate()
                .for_each(|(t, ((outs, idx), xps))| {
                    let xs = &x[t * IMAGES_PER_TASK * img..][..outs.len() / out_img * img];
                    self.direct_forward_task(&g, &d, xs, xps, &wt, b, outs, idx);
                });
            // SAFETY: `direct_forward_task` writes every element of its chunk of `..g.n·out_img`.
            unsafe { out.set_len(g.n * out_img) };
            *self.planes.lock().expect("planes lock") = planes;
            if pool.is_some() {
                *self.argmax.lock().expect("argmax lock") = argmax;
            }
            return Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, ph, pw))));
        }
        out.spare_capacity_mut()[..g.n * out_img]
            .par_chunks_mut(IMAGES_PER_TASK * out_img)
            .zip(idx_chunks)
            .enumerate()
            .for_each(|(t, (outs, idx))| {
                let outs = zeroed(outs);
                let nb = outs.len() / out_img;
                let ld = nb * g.seg();
                let xs = &x[t * IMAGES_PER_TASK * img..][..nb * img];
                with_scratch([k * ld, g.o * ld], |[cols, y]| {
                    for gi in 0..self.groups {
                        self.columns(&g, xs, nb, gi, cols);
                        let (wg, yg) = (&w[gi * g.og * k..][..g.og * k], &mut y[gi * g.og * ld..][..g.og * ld]);
                        matmul_in(self.precision, yg, false, wg, false, cols, false, g.og, ld, k, false);
                    }
                    for bi in 0..nb {
                        for oc in 0..g.o {
                            let plane = &mut y[oc * ld + bi * g.seg()..][..g.seg()];
                            if g.wide {
                                for oy in 1..g.oh {
                                    plane.copy_within(oy * g.w..oy * g.w + g.ow, oy * g.ow);
                                }
                            }
                            let plane = &mut plane[..hw];
                            let dst = &mut outs[(bi * g.o + oc) * ph * pw..][..ph * pw];
                            match pool {
                                None if self.epilogue == Epilogue::Relu => {
                                    dst.iter_mut().zip(plane.iter()).for_each(|(d, v)| *d = relu(v + b[oc]))
                                }
                                None => dst.iter_mut().zip(plane.iter()).for_each(|(d, v)| *d = v + b[oc]),
                                Some(p) => {
                                    plane.iter_mut().for_each(|v| *v += b[oc]);
                                    let at = &mut idx[(bi * g.o + oc) * ph * pw..][..ph * pw];
                                    p.plane(plane, g.oh, g.ow, dst, at);
                                    dst.iter_mut().for_each(|v| *v = relu(*v));
                                }
                            }
                        }
                    }
                })
            });
        // SAFETY: every chunk of `..g.n·out_img` was initialized by `zeroed`.
        unsafe { out.set_len(g.n * out_img) };
        if pool.is_some() {
            *self.argmax.lock().expect("argmax lock") = argmax;
        }
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, ph, pw))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geom(x.dims(), w.dims())?;
        let grad = grad.contiguous()?;
        let ((sx, lx), (sw, lw), (sg, lg), (sr, lr)) =
            (x.storage_and_layout(), w.storage_and_layout(), grad.storage_and_layout(), res.storage_and_layout());
        let io = BackwardIo {
            xs: storage_f32s(&sx, lx, "conv2d input")?,
            ws: storage_f32s(&sw, lw, "conv2d weight")?,
            gy: storage_f32s(&sg, lg, "conv2d gradient")?,
            res: storage_f32s(&sr, lr, "conv2d output")?,
            argmax: &self.argmax.lock().expect("argmax lock"),
            // A bias that is no variable (the zeros standing in for none): no gradient to sum.
            need_gb: b.track_op(),
        };
        let img = g.image();
        // The input of a first layer is data: no gradient to compute for it.
        let need_gx = x.track_op();
        // Written task by task (zeroed first by `zeroed` for the im2col path); the length set at
        // the end.
        let gx_len = if need_gx { g.n * img } else { 0 };
        let mut gx: Vec<f32> = Vec::with_capacity(gx_len);
        let gx_chunks: Vec<&mut [MaybeUninit<f32>]> = if need_gx {
            gx.spare_capacity_mut()[..gx_len].chunks_mut(IMAGES_PER_TASK * img).collect()
        } else {
            (0..g.n.div_ceil(IMAGES_PER_TASK)).map(|_| &mut [][..]).collect()
        };
        // Per task: its images' input gradients (disjoint) and a partial weight and bias gradient,
        // reduced afterwards in task order.
        let direct = self.direct(&g);
        // For the direct input gradient: the weights flipped in both spatial dimensions and
        // transposed, `[o][tap][c]` with tap `t` taking the original's `kh·kw − 1 − t`.
        let wtb = match &direct {
            Some(d) if need_gx => d.input_grad_weights(&g, io.ws),
            _ => Vec::new(),
        };
        // The forward's padded input planes; padded again if they are gone (a second backward
        // through the same forward).
        let planes = match &direct {
            Some(d) => {
                let len = g.n * g.c * d.xplane;
                let mut p = std::mem::take(&mut *self.planes.lock().expect("planes lock"));
                if p.len() != len {
                    p = take_buffer(len);
                    p.par_chunks_mut(g.c * d.xplane)
                        .zip(io.xs.par_chunks(img))
                        .for_each(|(xp, x)| d.pad_input(&g, x, xp));
                }
                p
            }
            None => Vec::new(),
        };
        let partials: Vec<(Vec<f32>, Vec<f32>)> = gx_chunks
            .into_par_iter()
            .enumerate()
            .map(|(t, gxs)| {
                let n0 = t * IMAGES_PER_TASK;
                match &direct {
                    Some(d) => self.direct_backward_task(&g, d, &io, &wtb, &planes, n0, need_gx.then_some(gxs)),
                    None => self.backward_task(&g, &io, n0, need_gx.then(|| zeroed(gxs))),
                }
            })
            .collect();
        // SAFETY: every chunk of `..gx_len` was written by `direct_backward_task` or zeroed by
        // `zeroed` for `backward_task` (none when it is 0).
        unsafe { gx.set_len(gx_len) };
        give_back_buffer(planes);
        let mut gw = vec![0.0f32; io.ws.len()];
        let mut gb = vec![0.0f32; g.o];
        for (pw, pb) in &partials {
            gw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            gb.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((
            if need_gx { Some(Tensor::from_vec(gx, x.dims(), dev)?) } else { None },
            Some(Tensor::from_vec(gw, w.dims(), dev)?),
            if io.need_gb { Some(Tensor::from_vec(gb, g.o, dev)?) } else { None },
        ))
    }
}

/// The data the backward reads: input, weight, the output's gradient, the output, the argmax.
struct BackwardIo<'a> {
    xs: &'a [f32],
    ws: &'a [f32],
    gy: &'a [f32],
    res: &'a [f32],
    argmax: &'a [u32],
    /// Whether the bias takes a gradient.
    need_gb: bool,
}

impl Conv2dOp {
    /// The backward of images `n0..` of one task: adds their input gradients into `gxs` (when
    /// wanted) and returns their weight and bias gradients.
    fn backward_task(&self, g: &Geom, io: &BackwardIo, n0: usize, gxs: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
        let (k, img, seg) = (g.k(), g.image(), g.seg());
        let (ph, pw) = self.out_plane(g);
        let nb = IMAGES_PER_TASK.min(g.n - n0);
        let ld = nb * seg;
        let mut gw = vec![0.0f32; io.ws.len()];
        let gk = if gxs.is_some() { k * ld } else { 0 };
        with_scratch([g.o * ld, k * ld, gk], |[gyt, cols, gcols]| {
            // The gradient of the convolution's output, images side by side.
            if g.wide || matches!(self.epilogue, Epilogue::ReluMaxPool(_)) {
                gyt.fill(0.0);
            }
            for bi in 0..nb {
                for oc in 0..g.o {
                    let at = ((n0 + bi) * g.o + oc) * ph * pw;
                    let (src, r) = (&io.gy[at..][..ph * pw], &io.res[at..][..ph * pw]);
                    let dst = &mut gyt[oc * ld + bi * seg..][..seg];
                    match self.epilogue {
                        Epilogue::Identity | Epilogue::Relu => {
                            let relu = self.epilogue == Epilogue::Relu;
                            for oy in 0..g.oh {
                                let d = &mut dst[g.col(oy, 0)..][..g.ow];
                                let (s, rr) = (&src[oy * g.ow..][..g.ow], &r[oy * g.ow..][..g.ow]);
                                for ((d, &gv), &rv) in d.iter_mut().zip(s).zip(rr) {
                                    *d = if !relu || rv > 0.0 { gv } else { 0.0 };
                                }
                            }
                        }
                        Epilogue::ReluMaxPool(_) => {
                            for ((&gv, &rv), &j) in src.iter().zip(r).zip(&io.argmax[at..][..ph * pw]) {
                                if rv > 0.0 {
                                    dst[g.col(j as usize / g.ow, j as usize % g.ow)] += gv;
                                }
                            }
                        }
                    }
                }
            }
            let gb = self.bias_grad(g, io, n0, nb);
            let xs = &io.xs[n0 * img..][..nb * img];
            let mut gxs = gxs;
            for gi in 0..self.groups {
                let gyg = &gyt[gi * g.og * ld..][..g.og * ld];
                self.columns(g, xs, nb, gi, cols);
                // dW_g = dY_g [og × ld] · colsᵀ [ld × k]
                let gwg = &mut gw[gi * g.og * k..][..g.og * k];
                matmul_in(self.precision, gwg, false, gyg, false, cols, true, g.og, k, ld, false);
                if let Some(gxs) = gxs.as_deref_mut() {
                    // dcols = W_gᵀ [k × og] · dY_g [og × ld]
                    let wg = &io.ws[gi * g.og * k..][..g.og * k];
                    matmul_in(self.precision, gcols, false, wg, true, gyg, false, k, ld, g.og, false);
                    for bi in 0..nb {
                        self.col2im(g, gcols, gi, &mut gxs[bi * img..][..img], ld, bi * seg);
                    }
                }
            }
            (gw, gb)
        })
    }
}

impl Conv2dOp {
    /// The bias gradient of images `n0..n0 + nb`: per channel the sum of each image's output
    /// gradient (where the output is positive, after a ReLU; for a pooled output, its gradient
    /// goes to one convolution output), the images in order. The same sums on both paths, so
    /// that the bias gradient does not depend on the path (nor on the products' precision).
    fn bias_grad(&self, g: &Geom, io: &BackwardIo, n0: usize, nb: usize) -> Vec<f32> {
        let (ph, pw) = self.out_plane(g);
        let masked = self.epilogue != Epilogue::Identity;
        let mut gb = vec![0.0f32; g.o];
        if !io.need_gb {
            return gb;
        }
        for n in n0..n0 + nb {
            for (oc, gb) in gb.iter_mut().enumerate() {
                let at = (n * g.o + oc) * ph * pw;
                let gy = &io.gy[at..][..ph * pw];
                *gb += sum_lanes_where(gy, masked.then(|| &io.res[at..][..ph * pw]));
            }
        }
        gb
    }

    /// The forward of one task's images `xs` by the direct kernel, image by image: pads the
    /// image into its planes in `xps` (kept for the backward), convolves it into the wide grid,
    /// then writes the valid columns through the epilogue: every element of `outs`.
    // The task's slices, flat, as the im2col task has them.
    #[allow(clippy::too_many_arguments)]
    fn direct_forward_task(
        &self,
        g: &Geom,
        d: &DirectGeom,
        xs: &[f32],
        xps: &mut [f32],
        wt: &[f32],
        b: &[f32],
        outs: &mut [MaybeUninit<f32>],
        idx: &mut [u32],
    ) {
        let (img, s) = (g.image(), d.taps.stride);
        let (ph, pw) = self.out_plane(g);
        let pool_len = if matches!(self.epilogue, Epilogue::ReluMaxPool(_)) { g.hw() } else { 0 };
        with_scratch([g.o * d.fpos, pool_len], |[y, plane]| {
            for (bi, (x, xp)) in xs.chunks_exact(img).zip(xps.chunks_exact_mut(g.c * d.xplane)).enumerate() {
                d.pad_input(g, x, xp);
                direct::forward(d.taps, xp, g.c, d.xplane, wt, g.o, y, d.fpos);
                for (oc, &bias) in b.iter().enumerate() {
                    let src = &y[oc * d.fpos..][..d.fpos];
                    let dst = &mut outs[(bi * g.o + oc) * ph * pw..][..ph * pw];
                    match self.epilogue {
                        Epilogue::Identity => valid_rows_into(dst, src, g.ow, s, |v| v + bias),
                        Epilogue::Relu => valid_rows_into(dst, src, g.ow, s, |v| relu(v + bias)),
                        Epilogue::ReluMaxPool(p) => {
                            let dst = zeroed(dst);
                            valid_rows(plane, src, g.ow, s, |v| v + bias);
                            let at = &mut idx[(bi * g.o + oc) * ph * pw..][..ph * pw];
                            p.plane(plane, g.oh, g.ow, dst, at);
                            dst.iter_mut().for_each(|v| *v = relu(*v));
                        }
                    }
                }
            }
        })
    }

    /// The backward of images `n0..` of one task by the direct kernels, image by image: pads the
    /// output gradient (through the epilogue's backward; the input's padded planes `planes` are
    /// the forward's, `[n][c][xplane]`), adds the image's weight
    /// and bias gradients to the task's, and writes its input gradient into `gxs` (when wanted)
    /// as the convolution of the padded output gradient with the flipped weights `wtb`.
    // The task's slices, flat, as the forward task has them.
    #[allow(clippy::too_many_arguments)]
    fn direct_backward_task(
        &self,
        g: &Geom,
        d: &DirectGeom,
        io: &BackwardIo,
        wtb: &[f32],
        planes: &[f32],
        n0: usize,
        mut gxs: Option<&mut [MaybeUninit<f32>]>,
    ) -> (Vec<f32>, Vec<f32>) {
        let (img, s) = (g.image(), d.taps.stride);
        let (ph, pw) = self.out_plane(g);
        let nb = IMAGES_PER_TASK.min(g.n - n0);
        let mut lanes = vec![0.0f32; io.ws.len() * direct::LANES];
        let gb = self.bias_grad(g, io, n0, nb);
        let gx_len = if gxs.is_some() { g.c * d.bpos } else { 0 };
        with_scratch([g.o * d.dplane + ALIGN_FLOATS, gx_len], |[dp, dx]| {
            // The weight-gradient kernel loads whole vectors of the output gradient at every
            // position: started on a 64-byte boundary (and planes a multiple of 16 floats apart)
            // none of them straddles two cache lines (16% faster on 16 channels).
            let lead = aligned_start(dp.as_ptr(), d.top * s + d.left);
            let dp = &mut dp[lead..][..g.o * d.dplane];
            for bi in 0..nb {
                let n = n0 + bi;
                let xp = &planes[n * g.c * d.xplane..][..g.c * d.xplane];
                let at0 = n * g.o * ph * pw;
                match self.epilogue {
                    Epilogue::Identity | Epilogue::Relu => {
                        let masked = self.epilogue == Epilogue::Relu;
                        direct::pad_planes(dp, g.o, g.oh, g.ow, d.dplane, s, d.top, d.left, |oc, y, row| {
                            let at = at0 + oc * ph * pw + y * g.ow;
                            let (gy, r) = (&io.gy[at..][..g.ow], &io.res[at..][..g.ow]);
                            if masked {
                                for ((d, &gv), &rv) in row.iter_mut().zip(gy).zip(r) {
                                    *d = if rv > 0.0 { gv } else { 0.0 };
                                }
                            } else {
                                row.copy_from_slice(gy);
                            }
                        });
                    }
                    Epilogue::ReluMaxPool(_) => {
                        dp[..g.o * d.dplane].fill(0.0);
                        for (oc, dpo) in dp.chunks_exact_mut(d.dplane).take(g.o).enumerate() {
                            let at = at0 + oc * ph * pw;
                            let (gy, r, j) = (&io.gy[at..][..ph * pw], &io.res[at..][..ph * pw], &io.argmax[at..]);
                            for ((&gv, &rv), &j) in gy.iter().zip(r).zip(j) {
                                if rv > 0.0 {
                                    let (y, x) = (j as usize / g.ow, j as usize % g.ow);
                                    dpo[(d.top + y) * s + d.left + x] += gv;
                                }
                            }
                        }
                    }
                }
                let dy = &dp[d.top * s + d.left..];
                direct::weight_grad(d.taps, dy, g.o, d.dplane, xp, g.c, d.xplane, d.wpos, &mut lanes);
                if let Some(gxs) = gxs.as_deref_mut() {
                    d.input_grad(g, dp, wtb, dx, &mut gxs[bi * img..][..img]);
                }
            }
            let mut gw = vec![0.0f32; io.ws.len()];
            direct::sum_lanes(&lanes, &mut gw);
            (gw, gb)
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::layers::{conv2d, Conv2dGeometry};
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
            // Stride 1 with padding: rows that read a run of the input between zeros of the padding,
            // and (kernel wider than the input) rows that are all padding.
            (1, 1, 1, 1, 3, 4, 7, 8, 3),
            (1, 3, 1, 1, 2, 2, 5, 2, 5),
            (1, 2, 1, 1, 1, 2, 4, 1, 5),
        ] {
            let case = (stride, padding, dilation, groups);
            let x = randn(&[2, c, h, w], &mut rng);
            let wt = randn(&[o, c / groups, k, k], &mut rng);
            let conv = |x: &Tensor, w: &Tensor| {
                conv2d(x, w, None, Conv2dGeometry { stride, padding, dilation, groups }).unwrap()
            };
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

    /// The fused epilogues give the values and gradients of the separate ops (conv, then candle's
    /// ReLU, then descent's max-pool), over batches that do not fill the last task, groups, and
    /// inputs with ties so that the pooling's choice among equal maxima matters.
    #[test]
    fn fused_epilogues_match_the_separate_ops() {
        use crate::conv::Epilogue;
        use crate::layers::{conv2d_with, Conv2dGeometry, MaxPool2d};
        let mut rng = Rng::new(11);
        for (n, c, o, groups, h, w, k, pool) in [
            (11, 1, 6, 1, 14, 14, 5, MaxPool2d::new(2, 2, 0)),
            (9, 4, 6, 2, 9, 11, 3, MaxPool2d::new(3, 2, 1)),
            (3, 2, 3, 1, 8, 8, 1, MaxPool2d::new(2, 2, 0)),
        ] {
            let x = randn(&[n, c, h, w], &mut rng);
            // Quantized weights and inputs make equal outputs (ties in the pooling windows) common.
            let round = |v: &Var| {
                Var::from_tensor(&(v.as_tensor() * 2.0).unwrap().round().unwrap().affine(0.5, 0.0).unwrap()).unwrap()
            };
            let (x, wt, b) = (round(&x), round(&randn(&[o, c / groups, k, k], &mut rng)), randn(&[o], &mut rng));
            let geometry = Conv2dGeometry { groups, ..Default::default() };
            for epilogue in [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluMaxPool(pool)] {
                let fused =
                    conv2d_with(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor()), geometry, epilogue).unwrap();
                let y = conv2d_with(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor()), geometry, Epilogue::Identity)
                    .unwrap();
                let separate = match epilogue {
                    Epilogue::Identity => y,
                    Epilogue::Relu => y.relu().unwrap(),
                    Epilogue::ReluMaxPool(p) => p.forward(&y.relu().unwrap()).unwrap(),
                };
                assert_eq!(fused.dims(), separate.dims(), "{epilogue:?}");
                assert_eq!(max_diff(&fused, &separate), 0.0, "{epilogue:?} values");
                let probe: Vec<f32> = (0..fused.elem_count()).map(|_| rng.normal()).collect();
                let probe = Tensor::from_vec(probe, fused.dims(), &Device::Cpu).unwrap();
                let g1 = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (separate * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for v in [&x, &wt, &b] {
                    let (a, e) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                    assert!(max_diff(a, e) < 1e-4, "{epilogue:?} gradient of {:?}", v.dims());
                }
            }
        }
    }

    /// The backward reads the forward's padded planes; a second backward through the same
    /// forward (which no longer has them) pads the input again and gives the same gradients.
    #[test]
    fn a_second_backward_gives_the_same_gradients() {
        use super::{Conv2dOp, Epilogue};
        let mut rng = Rng::new(5);
        for stride in [1, 2] {
            let (x, w, b) = (randn(&[3, 4, 9, 9], &mut rng), randn(&[5, 4, 3, 3], &mut rng), randn(&[5], &mut rng));
            let y = x.as_tensor().apply_op3(
                w.as_tensor(),
                b.as_tensor(),
                Conv2dOp::new(stride, 1, 1, 1, Epilogue::Identity),
            );
            let loss = y.unwrap().sqr().unwrap().sum_all().unwrap();
            let (g1, g2) = (loss.backward().unwrap(), loss.backward().unwrap());
            for v in [&x, &w, &b] {
                let flat = |g: &candle_core::backprop::GradStore| {
                    g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                };
                assert_eq!(flat(&g1), flat(&g2), "stride {stride}");
            }
        }
    }

    /// The direct kernels against the im2col + GEMM path, values and all three gradients, within
    /// a relative 1e-5: over strides 1 and 2, 2×2, 3×3, 5×5 and rectangular kernels, paddings 0–2, channel counts
    /// that do not fill a register tile, sizes that are not multiples of 8, batches that do not
    /// fill the last task, and the three epilogues.
    #[test]
    fn direct_path_matches_im2col() {
        use super::{Conv2dOp, Epilogue};
        use crate::layers::MaxPool2d;
        let mut rng = Rng::new(23);
        let pool = Epilogue::ReluMaxPool(MaxPool2d::new(2, 2, 0));
        for (n, c, o, h, w, kh, kw, padding, stride, epilogue) in [
            (3, 1, 16, 28, 28, 3, 3, 1, 1, Epilogue::Identity),
            (10, 16, 16, 14, 14, 3, 3, 1, 1, Epilogue::Identity),
            (9, 17, 3, 9, 11, 3, 3, 1, 1, Epilogue::Relu),
            (2, 3, 17, 7, 13, 5, 5, 2, 1, Epilogue::Relu),
            (2, 32, 32, 6, 5, 3, 3, 2, 1, Epilogue::Identity),
            (11, 1, 6, 16, 16, 5, 5, 1, 1, pool),
            (4, 6, 5, 12, 10, 3, 5, 1, 1, pool),
            (2, 2, 3, 5, 9, 3, 3, 2, 1, Epilogue::Identity),
            (2, 3, 2, 6, 3, 5, 3, 1, 1, Epilogue::Relu),
            // Stride 2 (parity planes): the residual CNN's 3×3 convolution, odd sizes, no padding,
            // 2×2, 5×5 and rectangular kernels (sub-kernels of 3, 2 and 1 taps a side).
            (9, 16, 32, 28, 28, 3, 3, 1, 2, Epilogue::Identity),
            (3, 16, 32, 28, 28, 2, 2, 0, 2, Epilogue::Identity),
            (2, 3, 5, 9, 11, 3, 3, 1, 2, Epilogue::Relu),
            (2, 5, 7, 8, 7, 5, 5, 2, 2, Epilogue::Identity),
            (3, 2, 3, 7, 6, 3, 3, 0, 2, Epilogue::Identity),
            (2, 3, 4, 11, 9, 3, 5, 1, 2, Epilogue::Relu),
            (2, 3, 4, 12, 12, 3, 3, 1, 2, pool),
        ] {
            let case = (n, c, o, h, w, kh, kw, padding, stride, epilogue);
            let (x, wt, b) = (randn(&[n, c, h, w], &mut rng), randn(&[o, c, kh, kw], &mut rng), randn(&[o], &mut rng));
            let run = |op: Conv2dOp| x.as_tensor().apply_op3(wt.as_tensor(), b.as_tensor(), op).unwrap();
            let direct = run(Conv2dOp::new(stride, padding, 1, 1, epilogue));
            let im2col = run(Conv2dOp::new(stride, padding, 1, 1, epilogue).im2col_only());
            let op = Conv2dOp::new(stride, padding, 1, 1, epilogue);
            assert!(op.direct(&op.geom(x.dims(), wt.dims()).unwrap()).is_some(), "{case:?} takes the direct path");
            let close = |a: &Tensor, e: &Tensor, what: &str| {
                let scale = e.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
                assert!(max_diff(a, e) <= 1e-5 * scale, "{case:?} {what}: {} (scale {scale})", max_diff(a, e));
            };
            close(&direct, &im2col, "output");
            let probe: Vec<f32> = (0..direct.elem_count()).map(|_| rng.normal()).collect();
            let probe = Tensor::from_vec(probe, direct.dims(), &Device::Cpu).unwrap();
            let g1 = (direct * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (im2col * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, what) in [(&x, "input gradient"), (&wt, "weight gradient"), (&b, "bias gradient")] {
                close(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap(), what);
            }
        }
    }

    /// The 2×2 stride-2 fast path of max-pooling picks the same maxima and indices as the general
    /// one, with ties and NaN.
    #[test]
    fn max_pool_fast_path_matches_the_general_one() {
        let mut rng = Rng::new(3);
        let (h, w) = (10, 12);
        let mut x: Vec<f32> = (0..h * w).map(|_| (rng.normal() * 2.0).round()).collect();
        x[5] = f32::NAN;
        x[40] = f32::NAN;
        x[41] = f32::NAN;
        let fast = crate::layers::MaxPool2d::new(2, 2, 0);
        let (mut o1, mut i1, mut o2, mut i2) = (vec![0.0; 30], vec![0u32; 30], vec![0.0; 30], vec![0u32; 30]);
        fast.plane(&x, h, w, &mut o1, &mut i1);
        fast.plane_general(&x, h, w, &mut o2, &mut i2);
        assert_eq!(i1, i2);
        assert_eq!(format!("{o1:?}"), format!("{o2:?}"));
    }
}
