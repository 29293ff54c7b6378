//! Direct convolution kernels for stride-1 f32 convolutions (dilation 1, one group), used by
//! [`super::Conv2dOp`] instead of im2col + GEMM: with 16–32 channels im2col's `kh·kw`-fold copy of
//! the input (made in the forward and again in the backward) and col2im's scatter cost more than
//! the products themselves.
//!
//! # Layout
//!
//! Every operand is a set of zero-padded planes whose rows are `stride` floats apart (`stride` at
//! least the padded width) and whose planes are `plane` floats apart (at least the padded rows ×
//! `stride`, plus a zero tail, [`slack`]). Output position `(y, x)` is position `q = y·stride + x`
//! of a *wide* grid with the same row stride, and tap `(ky, kx)` of it reads the padded input at
//! `q + ky·stride + kx`: a fixed offset, so `TILE` consecutive positions read `TILE` consecutive
//! floats for every tap. The columns `x ≥ ow` of the wide grid (and the positions rounded up to a
//! whole tile) are garbage: computed from the zeros and the neighbouring row, and dropped by the
//! caller. The zero tail of each plane keeps every read inside its own plane.
//!
//! # Kernels
//!
//! - [`forward`]: `out[o][q] = Σ_c Σ_t wt[c][t][o] · x[c][q + off(t)]`. Register tile: 6 output
//!   channels × 16 positions (12 AVX2 accumulators, 2 input vectors loaded per tap and reused by
//!   the 6 channels, each weight one broadcast from `wt`, arranged `[c][tap][o]` so that the 6 are
//!   adjacent: 15 of the 16 registers, where 4 × 24 needs all 16 and the compiler then keeps an
//!   accumulator on the stack). The input gradient is the same kernel run on the zero-padded
//!   output gradient with the weights flipped and transposed (a full correlation).
//! - [`weight_grad`]: `gw[o][c][t] += Σ_q dy[o][q] · x[c][q + off(t)]`, the products accumulated
//!   over the positions in the 8 lanes of a register, kept as 8 lane sums per weight across the
//!   images of a task and added together once at its end ([`sum_lanes`]: fewer roundings than a
//!   sum per image added to the weight's running total). Register tile:
//!   4 output channels × 3 taps (12 accumulators; per 8 positions 4 output-gradient and 3 input
//!   loads). `dy` must be zero at the garbage positions.
//!
//! On CPUs with AVX-512 F the same kernels run on 512-bit registers (`avx512`): the forward tile
//! up to 12 channels × 32 positions (24 accumulators), the weight-gradient tile 4 × 3 on 16
//! positions a step, its lanes `l` and `l + 8` added before they join the 8 lane sums.
//!
//! Each has a plain scalar reference beside it ([`forward_scalar`], [`weight_grad_scalar`]), used
//! on CPUs without AVX2 and FMA and by the tests, which check every kernel the CPU runs.

use crate::cpu::{has_avx2, has_avx512};

/// Positions per tile of the forward kernel (2 AVX2 vectors): the wide grids are rounded up to it.
pub(crate) const TILE: usize = 16;

/// Positions per step of the weight-gradient kernel: its grids are rounded up to it.
pub(crate) const LANES: usize = 8;

/// A `kh × kw` kernel's taps on planes whose rows are `stride` apart: dense (a stride-1
/// convolution, or a sub-kernel of a stride-2 one's input gradient), or on the four parity planes
/// of a stride-2 convolution's input ([`Taps::parity`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taps {
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// 1, or 2 for the parity layout.
    step: usize,
    /// The parity layout's distance between the planes of one channel (0 when dense).
    sub: usize,
}

impl Taps {
    /// Taps `(ky, kx)` at offset `ky·stride + kx`.
    pub(crate) fn dense(kh: usize, kw: usize, stride: usize) -> Taps {
        Taps { kh, kw, stride, step: 1, sub: 0 }
    }

    /// The taps of a stride-2 convolution on its input split into parity planes: plane
    /// `(a, b)` (at `(2a + b)·sub` within its channel) holds the padded input's rows `2i + a`
    /// and columns `2j + b`, so that tap `(ky, kx)` of output position `(y, x)` reads position
    /// `(y + ky/2, x + kx/2)` of plane `(ky mod 2, kx mod 2)`: a fixed offset again.
    pub(crate) fn parity(kh: usize, kw: usize, stride: usize, sub: usize) -> Taps {
        Taps { kh, kw, stride, step: 2, sub }
    }

    pub(crate) fn len(&self) -> usize {
        self.kh * self.kw
    }
    /// The offset of tap `t` (row-major `(ky, kx)`) from the position it contributes to.
    fn off(&self, t: usize) -> usize {
        let (ky, kx) = (t / self.kw, t % self.kw);
        ((ky % self.step) * self.step + kx % self.step) * self.sub + (ky / self.step) * self.stride + kx / self.step
    }
    /// The largest tap offset.
    fn span(&self) -> usize {
        (0..self.len()).map(|t| self.off(t)).max().unwrap_or(0)
    }
}

/// The zero tail a plane needs beyond its `rows × stride` floats so that every read of a
/// `positions`-long wide grid (rounded up to whole tiles) stays inside the plane.
pub(crate) fn slack(kw: usize) -> usize {
    TILE + kw
}

/// Writes `ch` zero-padded planes into `dst` (planes `plane` apart, rows `stride` apart): row `y`
/// of plane `c` at `(top + y)·stride + left`, filled by `row(c, y, dst_row)` (`w` floats), and
/// zeros everywhere else (padding, the columns right of `left + w`, the plane's tail).
// A flat list of sizes, as the layout is described in the module documentation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_planes(
    dst: &mut [f32],
    ch: usize,
    h: usize,
    w: usize,
    plane: usize,
    stride: usize,
    top: usize,
    left: usize,
    mut row: impl FnMut(usize, usize, &mut [f32]),
) {
    assert!(left + w <= stride && (top + h) * stride <= plane && dst.len() >= ch * plane, "pad_planes sizes");
    for (c, p) in dst.chunks_exact_mut(plane).take(ch).enumerate() {
        let mut at = 0;
        for y in 0..h {
            let start = (top + y) * stride + left;
            zero(&mut p[at..start]);
            row(c, y, &mut p[start..start + w]);
            at = start + w;
        }
        zero(&mut p[at..]);
    }
}

/// `xs.fill(0.0)` without a call to `memset` for the short runs of the padding.
#[inline]
fn zero(xs: &mut [f32]) {
    if xs.len() >= 64 {
        xs.fill(0.0);
    } else {
        xs.iter_mut().for_each(|v| *v = 0.0);
    }
}

/// Checks the operand sizes of [`forward`].
#[allow(clippy::too_many_arguments)]
fn forward_bounds(taps: Taps, x: &[f32], ci: usize, plane: usize, wt: &[f32], co: usize, out: &[f32], npos: usize) {
    assert!(npos.is_multiple_of(TILE), "forward: {npos} positions not whole tiles");
    assert!(plane >= npos + taps.span(), "forward: plane of {plane} too short for {npos} positions");
    assert!(ci >= 1 && x.len() >= (ci - 1) * plane + npos + taps.span(), "forward: input too short");
    assert!(wt.len() >= ci * taps.len() * co, "forward: weights too short");
    assert!(out.len() >= co * npos, "forward: output too short");
}

/// `out[o·npos + q] = Σ_c Σ_t wt[(c·T + t)·co + o] · x[c·plane + q + off(t)]` for `o < co`,
/// `q < npos` (`npos` a multiple of [`TILE`]), by the best kernel the CPU has.
// The operands and their sizes, flat: the layout is the module documentation's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    taps: Taps,
    x: &[f32],
    ci: usize,
    plane: usize,
    wt: &[f32],
    co: usize,
    out: &mut [f32],
    npos: usize,
) {
    forward_on(Kernel::best(), taps, x, ci, plane, wt, co, out, npos)
}

/// The kernels of this module: the plain reference, AVX2 + FMA, AVX-512 F.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Scalar,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU runs.
    pub(crate) fn best() -> Kernel {
        if has_avx512() {
            Kernel::Avx512
        } else if has_avx2() {
            Kernel::Avx2
        } else {
            Kernel::Scalar
        }
    }

    /// Every kernel this CPU runs, the plain one first.
    #[cfg(test)]
    fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        if has_avx2() {
            all.push(Kernel::Avx2);
        }
        if has_avx512() {
            all.push(Kernel::Avx512);
        }
        all
    }
}

/// [`forward`] by `kernel`, which the CPU must run (else the plain loops).
#[allow(clippy::too_many_arguments)]
fn forward_on(
    kernel: Kernel,
    taps: Taps,
    x: &[f32],
    ci: usize,
    plane: usize,
    wt: &[f32],
    co: usize,
    out: &mut [f32],
    npos: usize,
) {
    forward_bounds(taps, x, ci, plane, wt, co, out, npos);
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && has_avx512() {
        // SAFETY: the CPU has AVX-512 F, AVX2 and FMA; `forward_bounds` bounds every access.
        return unsafe { avx512::forward(taps, x.as_ptr(), ci, plane, wt.as_ptr(), co, out.as_mut_ptr(), npos) };
    }
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar && has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA; `forward_bounds` bounds every access.
        return unsafe { avx2::forward(taps, x.as_ptr(), ci, plane, wt.as_ptr(), co, out.as_mut_ptr(), npos) };
    }
    forward_scalar(taps, x, ci, plane, wt, co, out, npos)
}

/// [`forward`] in plain loops: the reference of the vector kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_scalar(
    taps: Taps,
    x: &[f32],
    ci: usize,
    plane: usize,
    wt: &[f32],
    co: usize,
    out: &mut [f32],
    npos: usize,
) {
    forward_bounds(taps, x, ci, plane, wt, co, out, npos);
    for o in 0..co {
        for q in 0..npos {
            let mut acc = 0.0f32;
            for c in 0..ci {
                for t in 0..taps.len() {
                    acc += wt[(c * taps.len() + t) * co + o] * x[c * plane + q + taps.off(t)];
                }
            }
            out[o * npos + q] = acc;
        }
    }
}

/// Checks the operand sizes of [`weight_grad`].
#[allow(clippy::too_many_arguments)]
fn weight_grad_bounds(
    taps: Taps,
    dy: &[f32],
    co: usize,
    dplane: usize,
    x: &[f32],
    ci: usize,
    xplane: usize,
    npos: usize,
    gw: &[f32],
) {
    assert!(npos.is_multiple_of(LANES), "weight_grad: {npos} positions not whole vectors");
    assert!(co >= 1 && dy.len() >= (co - 1) * dplane + npos, "weight_grad: output gradient too short");
    assert!(xplane >= npos + taps.span(), "weight_grad: plane of {xplane} too short for {npos} positions");
    assert!(ci >= 1 && x.len() >= (ci - 1) * xplane + npos + taps.span(), "weight_grad: input too short");
    assert!(gw.len() >= co * ci * taps.len() * LANES, "weight_grad: gradient too short");
}

/// `gw[((o·ci + c)·T + t)·8 + l] += Σ_{q < npos, q ≡ l mod 8} dy[o·dplane + q] · x[c·xplane + q + off(t)]`
/// (`npos` a multiple of [`LANES`]): the lane sums of the weight gradient, by the best kernel the
/// CPU has; [`sum_lanes`] adds them up.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grad(
    taps: Taps,
    dy: &[f32],
    co: usize,
    dplane: usize,
    x: &[f32],
    ci: usize,
    xplane: usize,
    npos: usize,
    gw: &mut [f32],
) {
    weight_grad_on(Kernel::best(), taps, dy, co, dplane, x, ci, xplane, npos, gw)
}

/// [`weight_grad`] by `kernel`, which the CPU must run (else the plain loops).
#[allow(clippy::too_many_arguments)]
fn weight_grad_on(
    kernel: Kernel,
    taps: Taps,
    dy: &[f32],
    co: usize,
    dplane: usize,
    x: &[f32],
    ci: usize,
    xplane: usize,
    npos: usize,
    gw: &mut [f32],
) {
    weight_grad_bounds(taps, dy, co, dplane, x, ci, xplane, npos, gw);
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && has_avx512() {
        // SAFETY: the CPU has AVX-512 F, AVX2 and FMA; `weight_grad_bounds` bounds every access.
        return unsafe {
            weight_grad_tiles(
                taps,
                dy.as_ptr(),
                co,
                dplane,
                x.as_ptr(),
                ci,
                xplane,
                npos,
                gw.as_mut_ptr(),
                avx512::grad_tile,
            )
        };
    }
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar && has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA; `weight_grad_bounds` bounds every access.
        return unsafe {
            weight_grad_tiles(
                taps,
                dy.as_ptr(),
                co,
                dplane,
                x.as_ptr(),
                ci,
                xplane,
                npos,
                gw.as_mut_ptr(),
                avx2::grad_tile,
            )
        };
    }
    weight_grad_scalar(taps, dy, co, dplane, x, ci, xplane, npos, gw)
}

/// Output channels per register tile of the weight-gradient kernels.
#[cfg(target_arch = "x86_64")]
const NO: usize = 4;
/// Taps per register tile of the weight-gradient kernels.
#[cfg(target_arch = "x86_64")]
const NT: usize = 3;

/// A weight-gradient register tile: output channels `0..M` of `dy` (planes `dplane` apart)
/// against taps `offs` of the input plane `x`, over `npos` positions, each of its lane sums added
/// to the 8 at `gw[(j·gw_stride + k)·8]`.
#[cfg(target_arch = "x86_64")]
type GradTile = unsafe fn(&[usize], *const f32, usize, *const f32, usize, *mut f32, usize);

/// [`weight_grad`] in register tiles of at most [`NO`] output channels × [`NT`] taps, each run by
/// the vector kernel `tile(m, k)` picks.
///
/// # Safety
/// [`weight_grad_bounds`] holds for the operands; the CPU has the features of `tile`'s kernels.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_tiles(
    taps: Taps,
    dy: *const f32,
    co: usize,
    dplane: usize,
    x: *const f32,
    ci: usize,
    xplane: usize,
    npos: usize,
    gw: *mut f32,
    tile: fn(usize, usize) -> GradTile,
) {
    let nt = taps.len();
    let offs: Vec<usize> = (0..nt).map(|t| taps.off(t)).collect();
    let mut o0 = 0;
    while o0 < co {
        let m = NO.min(co - o0);
        for c in 0..ci {
            let mut t0 = 0;
            while t0 < nt {
                let k = NT.min(nt - t0);
                // SAFETY: as this function's contract; the tile reads `m` planes of `dy` from
                // `o0`, taps `t0..t0 + k` of plane `c` and writes its rows of `gw`.
                unsafe {
                    tile(m, k)(
                        &offs[t0..t0 + k],
                        dy.add(o0 * dplane),
                        dplane,
                        x.add(c * xplane),
                        npos,
                        gw.add(((o0 * ci + c) * nt + t0) * LANES),
                        ci * nt,
                    )
                };
                t0 += k;
            }
        }
        o0 += m;
    }
}

/// [`weight_grad`] in plain loops: the reference of the vector kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grad_scalar(
    taps: Taps,
    dy: &[f32],
    co: usize,
    dplane: usize,
    x: &[f32],
    ci: usize,
    xplane: usize,
    npos: usize,
    gw: &mut [f32],
) {
    weight_grad_bounds(taps, dy, co, dplane, x, ci, xplane, npos, gw);
    for o in 0..co {
        let d = &dy[o * dplane..][..npos];
        for c in 0..ci {
            for t in 0..taps.len() {
                let xs = &x[c * xplane + taps.off(t)..][..npos];
                let mut lanes = [0.0f32; LANES];
                for (q, (&a, &b)) in d.iter().zip(xs).enumerate() {
                    lanes[q % LANES] += a * b;
                }
                let g = &mut gw[((o * ci + c) * taps.len() + t) * LANES..][..LANES];
                g.iter_mut().zip(lanes).for_each(|(g, l)| *g += l);
            }
        }
    }
}

/// `gw[i] = Σ_l lanes[i·8 + l]`, the lane sums of [`weight_grad`] added up in a fixed order.
pub(crate) fn sum_lanes(lanes: &[f32], gw: &mut [f32]) {
    for (g, l) in gw.iter_mut().zip(lanes.chunks_exact(LANES)) {
        *g = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    }
}

#[cfg(target_arch = "x86_64")]
/// `grad_tile(m, k)`: the kernel of a weight-gradient register tile of `m` channels × `k` taps
/// (at most [`NO`] × [`NT`]) for [`weight_grad_tiles`], the `weight_grad_tile::<M, K>` of the
/// module it is expanded in.
macro_rules! grad_tile_table {
    () => {
        /// The kernel of a weight-gradient register tile of `m` channels × `k` taps (at most
        /// [`super::NO`] × [`super::NT`]), for [`super::weight_grad_tiles`].
        pub(super) fn grad_tile(m: usize, k: usize) -> super::GradTile {
            match (m, k) {
                (4, 3) => weight_grad_tile::<4, 3>,
                (4, 2) => weight_grad_tile::<4, 2>,
                (4, 1) => weight_grad_tile::<4, 1>,
                (3, 3) => weight_grad_tile::<3, 3>,
                (3, 2) => weight_grad_tile::<3, 2>,
                (3, 1) => weight_grad_tile::<3, 1>,
                (2, 3) => weight_grad_tile::<2, 3>,
                (2, 2) => weight_grad_tile::<2, 2>,
                (2, 1) => weight_grad_tile::<2, 1>,
                (1, 3) => weight_grad_tile::<1, 3>,
                (1, 2) => weight_grad_tile::<1, 2>,
                _ => weight_grad_tile::<1, 1>,
            }
        }
    };
}

mod avx2 {
    use super::{Taps, LANES, TILE};
    use std::arch::x86_64::*;

    /// Output channels per register tile of the forward kernel.
    const FO: usize = 6;

    /// [`super::forward`]; the caller has checked the bounds.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn forward(
        taps: Taps,
        x: *const f32,
        ci: usize,
        plane: usize,
        wt: *const f32,
        co: usize,
        out: *mut f32,
        npos: usize,
    ) {
        let offs: Vec<usize> = (0..taps.len()).map(|t| taps.off(t)).collect();
        let taps = &offs[..];
        // Tiles of positions outside, output channels inside: the tile's input rows (all channels,
        // `kh` rows) stay in L1 across the output channels.
        // Whole tiles of FO channels, then the rest; a rest of 7–9 (after a last whole tile
        // given back) as two tiles of 4 or 5, whose 8–10 accumulators keep both FMA pipes busy
        // where a tile of 1–3 channels (2–6 accumulators) waits on the FMA latency.
        let mut tiles = vec![FO; co / FO];
        let rest = co % FO;
        if (1..=3).contains(&rest) && !tiles.is_empty() {
            tiles.pop();
            tiles.extend([(FO + rest).div_ceil(2), (FO + rest) / 2]);
        } else if rest > 0 {
            tiles.push(rest);
        }
        for q0 in (0..npos).step_by(TILE) {
            let mut o0 = 0;
            for &m in &tiles {
                match m {
                    1 => forward_tile::<1>(taps, x, ci, plane, wt, co, out, npos, o0, q0),
                    2 => forward_tile::<2>(taps, x, ci, plane, wt, co, out, npos, o0, q0),
                    3 => forward_tile::<3>(taps, x, ci, plane, wt, co, out, npos, o0, q0),
                    4 => forward_tile::<4>(taps, x, ci, plane, wt, co, out, npos, o0, q0),
                    5 => forward_tile::<5>(taps, x, ci, plane, wt, co, out, npos, o0, q0),
                    _ => forward_tile::<FO>(taps, x, ci, plane, wt, co, out, npos, o0, q0),
                }
                o0 += m;
            }
        }
    }

    /// Output channels `o0..o0 + M` at positions `q0..q0 + TILE`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_tile<const M: usize>(
        offs: &[usize],
        x: *const f32,
        ci: usize,
        plane: usize,
        wt: *const f32,
        co: usize,
        out: *mut f32,
        npos: usize,
        o0: usize,
        q0: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        let nt = offs.len();
        for c in 0..ci {
            let xc = x.add(c * plane + q0);
            let wc = wt.add(c * nt * co + o0);
            for (t, &off) in offs.iter().enumerate() {
                let xs = xc.add(off);
                let v = [_mm256_loadu_ps(xs), _mm256_loadu_ps(xs.add(8))];
                let wk = wc.add(t * co);
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*wk.add(j));
                    for (a, v) in a.iter_mut().zip(v) {
                        *a = _mm256_fmadd_ps(wv, v, *a);
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let o = out.add((o0 + j) * npos + q0);
            for (i, a) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(8 * i), *a);
            }
        }
    }

    grad_tile_table!();

    /// Output channels `0..M` of `dy` (planes `dplane` apart) against taps `t0..t0 + K` of the
    /// input plane `x`; adds each vector of lane sums to the 8 at `gw[(j·gw_stride + k)·8]`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weight_grad_tile<const M: usize, const K: usize>(
        offs: &[usize],
        dy: *const f32,
        dplane: usize,
        x: *const f32,
        npos: usize,
        gw: *mut f32,
        gw_stride: usize,
    ) {
        let offs: [usize; K] = std::array::from_fn(|k| offs[k]);
        let mut acc = [[_mm256_setzero_ps(); K]; M];
        for q in (0..npos).step_by(LANES) {
            let xv: [__m256; K] = std::array::from_fn(|k| _mm256_loadu_ps(x.add(q + offs[k])));
            for (j, a) in acc.iter_mut().enumerate() {
                let d = _mm256_loadu_ps(dy.add(j * dplane + q));
                for (a, v) in a.iter_mut().zip(xv) {
                    *a = _mm256_fmadd_ps(d, v, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            for (k, a) in a.iter().enumerate() {
                let g = gw.add((j * gw_stride + k) * LANES);
                _mm256_storeu_ps(g, _mm256_add_ps(_mm256_loadu_ps(g), *a));
            }
        }
    }
}

/// The kernels of [`avx2`] on 512-bit registers: twice the positions an instruction, and the
/// 32 registers hold bigger tiles. On a CPU with two 512-bit FMA units they run at up to twice
/// the AVX2 kernels' rate; where 512-bit operations take two passes (Zen 4) at about the same.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Taps, LANES, TILE};
    use std::arch::x86_64::*;

    /// The most output channels in a register tile of the forward kernel: 12 channels × 2
    /// vectors of 16 positions are 24 accumulators, with 2 input vectors loaded per tap and each
    /// weight broadcast from memory into its multiply-add (14 loads per 24 multiply-adds).
    const FO: usize = 12;

    /// [`super::forward`]; the caller has checked the bounds.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn forward(
        taps: Taps,
        x: *const f32,
        ci: usize,
        plane: usize,
        wt: *const f32,
        co: usize,
        out: *mut f32,
        npos: usize,
    ) {
        let offs: Vec<usize> = (0..taps.len()).map(|t| taps.off(t)).collect();
        let taps = &offs[..];
        // The channels in the fewest tiles of at most FO, as even as they go (16 as 8 + 8, 32 as
        // 11 + 11 + 10): no tile so narrow that its accumulators wait on the FMA latency.
        let n = co.div_ceil(FO);
        let tiles: Vec<usize> = (0..n).map(|i| co / n + usize::from(i < co % n)).collect();
        // Pairs of tiles of positions (32, two registers an accumulator row), then the odd one.
        let pairs = npos / (2 * TILE);
        for q0 in (0..pairs).map(|p| p * 2 * TILE).chain((!npos.is_multiple_of(2 * TILE)).then_some(pairs * 2 * TILE)) {
            let two = q0 + 2 * TILE <= npos;
            let mut o0 = 0;
            for &m in &tiles {
                macro_rules! tile {
                    ($($m:literal)*) => {
                        match m {
                            $($m => if two {
                                forward_tile::<$m, 2>(taps, x, ci, plane, wt, co, out, npos, o0, q0)
                            } else {
                                forward_tile::<$m, 1>(taps, x, ci, plane, wt, co, out, npos, o0, q0)
                            },)*
                            _ => unreachable!("a tile of {m} channels"),
                        }
                    };
                }
                tile!(1 2 3 4 5 6 7 8 9 10 11 12);
                o0 += m;
            }
        }
    }

    /// Output channels `o0..o0 + M` at positions `q0..q0 + P·16`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_tile<const M: usize, const P: usize>(
        offs: &[usize],
        x: *const f32,
        ci: usize,
        plane: usize,
        wt: *const f32,
        co: usize,
        out: *mut f32,
        npos: usize,
        o0: usize,
        q0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); P]; M];
        let nt = offs.len();
        for c in 0..ci {
            let xc = x.add(c * plane + q0);
            let wc = wt.add(c * nt * co + o0);
            for (t, &off) in offs.iter().enumerate() {
                let xs = xc.add(off);
                let v: [__m512; P] = std::array::from_fn(|i| _mm512_loadu_ps(xs.add(16 * i)));
                let wk = wc.add(t * co);
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wk.add(j));
                    for (a, v) in a.iter_mut().zip(v) {
                        *a = _mm512_fmadd_ps(wv, v, *a);
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let o = out.add((o0 + j) * npos + q0);
            for (i, a) in a.iter().enumerate() {
                _mm512_storeu_ps(o.add(16 * i), *a);
            }
        }
    }

    grad_tile_table!();

    /// [`super::avx2`]'s weight-gradient tile on 16 positions a step (a last 8 in the lower
    /// half): lanes `l` and `l + 8` summed into the weight's 8 lane sums at the end.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weight_grad_tile<const M: usize, const K: usize>(
        offs: &[usize],
        dy: *const f32,
        dplane: usize,
        x: *const f32,
        npos: usize,
        gw: *mut f32,
        gw_stride: usize,
    ) {
        let offs: [usize; K] = std::array::from_fn(|k| offs[k]);
        let mut acc = [[_mm512_setzero_ps(); K]; M];
        let n16 = npos - npos % 16;
        for q in (0..n16).step_by(16) {
            let xv: [__m512; K] = std::array::from_fn(|k| _mm512_loadu_ps(x.add(q + offs[k])));
            for (j, a) in acc.iter_mut().enumerate() {
                let d = _mm512_loadu_ps(dy.add(j * dplane + q));
                for (a, v) in a.iter_mut().zip(xv) {
                    *a = _mm512_fmadd_ps(d, v, *a);
                }
            }
        }
        let mut lanes = [[_mm256_setzero_ps(); K]; M];
        for (l, a) in lanes.iter_mut().zip(&acc) {
            for (l, a) in l.iter_mut().zip(a) {
                let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)));
                *l = _mm256_add_ps(_mm512_castps512_ps256(*a), high);
            }
        }
        if n16 < npos {
            // npos is a multiple of 8: one half-vector step left.
            let xv: [__m256; K] = std::array::from_fn(|k| _mm256_loadu_ps(x.add(n16 + offs[k])));
            for (j, l) in lanes.iter_mut().enumerate() {
                let d = _mm256_loadu_ps(dy.add(j * dplane + n16));
                for (l, v) in l.iter_mut().zip(xv) {
                    *l = _mm256_fmadd_ps(d, v, *l);
                }
            }
        }
        for (j, l) in lanes.iter().enumerate() {
            for (k, l) in l.iter().enumerate() {
                let g = gw.add((j * gw_stride + k) * LANES);
                _mm256_storeu_ps(g, _mm256_add_ps(_mm256_loadu_ps(g), *l));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn randn(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * scale, "{what} [{i}]: {x} vs {y}");
        }
    }

    /// Every kernel this CPU runs (AVX2 + FMA, AVX-512) against the scalar references
    /// on odd shapes: planes whose widths and heights are not multiples of 8, channel counts that
    /// do not fill a register tile, 1×1, 3×3, 5×5 and rectangular kernels, paddings 0–2.
    #[test]
    fn kernels_match_the_scalar_references() {
        let mut rng = Rng::new(17);
        for (ci, co, h, w, kh, kw, pad) in [
            (1, 16, 28, 28, 3, 3, 1),
            (16, 16, 13, 11, 3, 3, 1),
            (3, 17, 9, 7, 5, 5, 2),
            (17, 3, 10, 5, 1, 1, 0),
            (32, 32, 14, 14, 3, 3, 1),
            (16, 1, 7, 9, 3, 3, 2),
            (1, 3, 6, 13, 5, 5, 0),
            (3, 5, 8, 8, 1, 1, 1),
            (2, 6, 7, 10, 3, 5, 1),
            (4, 25, 6, 6, 3, 3, 1),
            (8, 64, 5, 9, 3, 3, 1),
        ] {
            let case = (ci, co, h, w, kh, kw, pad);
            let stride = w + 2 * pad + 1;
            let taps = Taps::dense(kh, kw, stride);
            let (oh, rows) = (h + 2 * pad + 1 - kh, h + 2 * pad);
            let npos = (oh * stride).div_ceil(TILE) * TILE;
            let plane = rows * stride + slack(kw);
            let mut x = vec![f32::NAN; ci * plane];
            let src = randn(ci * h * w, &mut rng);
            pad_planes(&mut x, ci, h, w, plane, stride, pad, pad, |c, y, row| {
                row.copy_from_slice(&src[(c * h + y) * w..][..w])
            });
            let wt = randn(ci * taps.len() * co, &mut rng);
            let mut slow = vec![0.0; co * npos];
            forward_scalar(taps, &x, ci, plane, &wt, co, &mut slow, npos);
            for kernel in Kernel::available() {
                let mut fast = vec![0.0; co * npos];
                forward_on(kernel, taps, &x, ci, plane, &wt, co, &mut fast, npos);
                assert_close(&fast, &slow, &format!("{case:?} {kernel:?} forward"));
            }

            // An output gradient zero at the garbage positions, as the convolution op gives it.
            let gpos = (oh * stride).div_ceil(LANES) * LANES;
            let dplane = gpos + 3;
            let mut dy = vec![0.0; co * dplane];
            for o in 0..co {
                for q in 0..oh * stride {
                    if q % stride < w + 2 * pad + 1 - kw {
                        dy[o * dplane + q] = rng.normal();
                    }
                }
            }
            let init = randn(co * ci * taps.len() * LANES, &mut rng);
            let mut slow = init.clone();
            weight_grad_scalar(taps, &dy, co, dplane, &x, ci, plane, gpos, &mut slow);
            for kernel in Kernel::available() {
                let mut fast = init.clone();
                weight_grad_on(kernel, taps, &dy, co, dplane, &x, ci, plane, gpos, &mut fast);
                assert_close(&fast, &slow, &format!("{case:?} {kernel:?} weight gradient"));
            }
        }
        // Stride-2 taps on parity planes (any data: the kernels only follow the offsets).
        for (ci, co, kh, kw, stride, sub) in [(16, 32, 3, 3, 15, 241), (3, 5, 5, 3, 9, 100), (2, 3, 1, 1, 7, 60)] {
            let case = (ci, co, kh, kw, stride, sub);
            let taps = Taps::parity(kh, kw, stride, sub);
            let npos = (sub - stride * (kh / 2) - kw / 2 - 1) / TILE * TILE;
            let plane = 4 * sub;
            assert!(npos >= TILE && plane >= npos + taps.span(), "{case:?} sizes");
            let x = randn(ci * plane, &mut rng);
            let wt = randn(ci * taps.len() * co, &mut rng);
            let mut slow = vec![0.0; co * npos];
            forward_scalar(taps, &x, ci, plane, &wt, co, &mut slow, npos);
            let dy = randn(co * npos, &mut rng);
            let init = randn(co * ci * taps.len() * LANES, &mut rng);
            let mut slow_gw = init.clone();
            weight_grad_scalar(taps, &dy, co, npos, &x, ci, plane, npos, &mut slow_gw);
            for kernel in Kernel::available() {
                let mut fast = vec![0.0; co * npos];
                forward_on(kernel, taps, &x, ci, plane, &wt, co, &mut fast, npos);
                assert_close(&fast, &slow, &format!("{case:?} {kernel:?} parity forward"));
                let mut fast = init.clone();
                weight_grad_on(kernel, taps, &dy, co, npos, &x, ci, plane, npos, &mut fast);
                assert_close(&fast, &slow_gw, &format!("{case:?} {kernel:?} parity weight gradient"));
            }
        }
    }
}
