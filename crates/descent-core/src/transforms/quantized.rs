//! Optimizer state in 8 bits, block-wise, in the manner of bitsandbytes' 8-bit optimizers
//! (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"): each block of
//! [`BLOCK`] elements keeps its moments in one byte each plus one `f32` scale, so an Adam step
//! moves 16 bytes per parameter instead of 28.
//!
//! Both moments are 8-bit floats relative to their block's maximum, so small entries keep their
//! relative precision (a linear code rounds them to zero and loses their momentum). Each code is
//! a slice of an IEEE half-precision float, so that the AVX2 kernel decodes 8 codes with one F16C
//! conversion; codes are computed from the float's own bits, rounded half up, and values under
//! 2⁻¹⁴ of the block's maximum round to 0 or 2⁻¹⁴:
//! - the first moment `m / max ∈ [−1, 1]`: the sign, then the half's bits 13..7, 4 bits of
//!   exponent (2⁰ down to 2⁻¹⁴) and 3 of mantissa (±6%);
//! - the square root of the second moment, `√v / max ∈ [0, 1]`: the half's bits 13..6, 4 bits of
//!   exponent and 4 of mantissa (±3%).
//!
//! Tensors under 4096 elements keep 32-bit moments, as bitsandbytes does.
//! descent's own scheme: it is not bitsandbytes' dynamic quantization map, so numbers differ from
//! bitsandbytes'.

use super::{elementwise_transform, ParamBufs};
use crate::kernel::{start_inline, Affine, Elementwise, Fold, BLOCK};
use crate::transform::numel;

/// The value of the non-negative finite half-precision float with bits `h` (`vcvtph2ps`).
#[inline(always)]
fn half_to_f32(h: u32) -> f32 {
    let normal = f32::from_bits((h << 13).wrapping_add(112 << 23));
    let subnormal = h as f32 * (1.0 / 16_777_216.0);
    if h >= 0x400 {
        normal
    } else {
        subnormal
    }
}

/// The code of a first moment `m` in a block whose absolute maximum is `1/inv`: the sign, then
/// the exponent and 3 mantissa bits of `|m·inv|` rounded half up, as bits 13..7 of a half, 0 below
/// 2⁻¹⁴. Written on the float's bits the way the AVX2 kernel computes it, in 16-bit lanes.
#[inline(always)]
fn encode_m(m: f32, inv: f32) -> u8 {
    let w = (m * inv).to_bits().wrapping_add(1 << 19) >> 16;
    let mag = ((w & 0x7FFF) >> 4) as i32 - (112 << 3);
    let mag = if mag > 7 { mag as u32 } else { 0 };
    (mag | ((w >> 8) & 0x80)).min(255) as u8
}

/// The value of a first-moment code, relative to its block's maximum.
#[inline(always)]
fn decode_m(q: u8) -> f32 {
    let x = half_to_f32(((q & 0x7F) as u32) << 7);
    f32::from_bits(x.to_bits() | ((q as u32 & 0x80) << 24))
}

/// The code of `x = √v / max ∈ [0, 1]`: its exponent and 4 mantissa bits rounded half up, as
/// bits 13..6 of a half, 0 below 2⁻¹⁴.
#[inline(always)]
fn encode_sqrt_v(x: f32) -> u8 {
    let w = x.to_bits().wrapping_add(1 << 18) >> 16;
    let code = (w >> 3) as i32 - (112 << 4);
    if code > 15 {
        code.min(255) as u8
    } else {
        0
    }
}

/// The value of a `√v` code, relative to its block's maximum.
#[inline(always)]
fn decode_sqrt_v(q: u8) -> f32 {
    half_to_f32((q as u32) << 6)
}

/// `max |x|` in eight independent lanes (max is exact in any order, so this is the plain maximum;
/// the lanes keep the loop vectorized where a single strict-FP reduction would not).
#[inline(always)]
fn lane_max_abs(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] = max_of(acc[k], c[k].abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0.0f32, |a, v| max_of(a, v.abs()));
    acc.iter().fold(tail, |a, &v| max_of(a, v))
}

/// Adam's scaling with 8-bit block-wise moments (`u ← m̂ / (√v̂ + eps)`, the moments quantized
/// after every step). With `add_decayed_weights` and `scale_by_learning_rate` it is AdamW.
pub struct ScaleByAdam8bit {
    /// Tensors with fewer elements keep `f32` moments (bitsandbytes' `min_8bit_size`).
    min_8bit_size: usize,
    /// `f32` moments of the small tensors (empty buffers for quantized ones).
    m32: ParamBufs,
    v32: ParamBufs,
    b1: f32,
    b2: f32,
    eps: f32,
    count: u64,
    /// The codes of `m` and `√v` (the module docs give their format). The names carry the
    /// format: a state saved with the earlier codes (as `m` and `v`) fails to load, naming the
    /// missing buffer, instead of decoding into wrong moments.
    m_code: ParamBufs<u8>,
    sqrt_v_code: ParamBufs<u8>,
    m_scale: ParamBufs,
    sqrt_v_scale: ParamBufs,
    bc1: f32,
    bc2: f32,
    sqrt_bc2: f32,
}

/// The hyper-parameters of [`ScaleByAdam8bit`], with bitsandbytes' `Adam8bit` (torch `Adam`'s defaults)'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByAdam8bitConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator.
    pub eps: f64,
}
impl Default for ScaleByAdam8bitConfig {
    fn default() -> Self {
        ScaleByAdam8bitConfig { b1: 0.9, b2: 0.999, eps: 1e-8 }
    }
}
impl ScaleByAdam8bit {
    /// A `ScaleByAdam8bit` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAdam8bitConfig) -> Self {
        let ScaleByAdam8bitConfig { b1, b2, eps } = config;
        ScaleByAdam8bit {
            min_8bit_size: 4096,
            m32: ParamBufs::default(),
            v32: ParamBufs::default(),
            b1: b1 as f32,
            b2: b2 as f32,
            eps: eps as f32,
            count: 0,
            m_code: ParamBufs::default(),
            sqrt_v_code: ParamBufs::default(),
            m_scale: ParamBufs::default(),
            sqrt_v_scale: ParamBufs::default(),
            bc1: 1.0,
            bc2: 1.0,
            sqrt_bc2: 1.0,
        }
    }
}

impl ScaleByAdam8bit {
    /// Tensors below this many elements keep 32-bit moments (default 4096, as bitsandbytes).
    pub fn min_8bit_size(mut self, n: usize) -> Self {
        self.min_8bit_size = n;
        self
    }
}

elementwise_transform!(ScaleByAdam8bit, |s, shapes, _p| {
    let q = |sh: &Vec<usize>| numel(sh) >= s.min_8bit_size;
    let sized = |sh: &Vec<usize>, yes: bool| if yes { numel(sh) } else { 0 };
    s.m_code = shapes.iter().map(|sh| vec![0u8; sized(sh, q(sh))]).collect::<Vec<_>>().into();
    s.sqrt_v_code = shapes.iter().map(|sh| vec![0u8; sized(sh, q(sh))]).collect::<Vec<_>>().into();
    s.m32 = shapes.iter().map(|sh| vec![0.0f32; sized(sh, !q(sh))]).collect::<Vec<_>>().into();
    s.v32 = shapes.iter().map(|sh| vec![0.0f32; sized(sh, !q(sh))]).collect::<Vec<_>>().into();
    let blocks = |sh: &Vec<usize>| if q(sh) { numel(sh).div_ceil(BLOCK) } else { 0 };
    s.m_scale = shapes.iter().map(|sh| vec![0.0f32; blocks(sh)]).collect::<Vec<_>>().into();
    s.sqrt_v_scale = shapes.iter().map(|sh| vec![0.0f32; blocks(sh)]).collect::<Vec<_>>().into();
}; bufs: [m_code, sqrt_v_code, m_scale, sqrt_v_scale, m32, v32]; counters: [count]; scalars: []);

impl Elementwise for ScaleByAdam8bit {
    fn begin_step(&mut self) {
        self.count += 1;
        let t = self.count as f64;
        self.bc1 = (1.0 / super::bias_correction(self.b1 as f64, t)) as f32;
        self.bc2 = (1.0 / super::bias_correction(self.b2 as f64, t)) as f32;
        self.sqrt_bc2 = (1.0 / super::bias_correction(self.b2 as f64, t)).sqrt() as f32;
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], _p: &[f32]) {
        let mut g = [0.0f32; BLOCK];
        let g = &mut g[..u.len()];
        g.copy_from_slice(u);
        let mut scratch = [0.0f32; 2 * BLOCK];
        let out = Out { p: u.as_mut_ptr(), a: 1.0, b: 0.0 };
        self.block_on::<WRITE>(Self::level(), i, off, g, out, &mut scratch);
    }
    /// Block by block: the update of each element goes straight into the parameter (with the
    /// chain's head and tail folded in), then the block's moments are re-quantized.
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        if fold.map.is_some() || fold.post.is_some() {
            // A sign or clip after Adam, an epilogue: rare enough for the general path.
            return crate::kernel::step_via_apply(self, i, off, g, p, fold);
        }
        #[inline(always)]
        unsafe fn run(
            this: &ScaleByAdam8bit,
            level: Level,
            i: usize,
            off: usize,
            g: &[f32],
            p: &mut [f32],
            fold: Fold,
        ) {
            let mut mapped = [0.0f32; BLOCK];
            let mut scratch = [0.0f32; 2 * BLOCK];
            let s = &mut scratch;
            for (k, (pb, gb)) in p.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).enumerate() {
                let (o, n) = (off + k * BLOCK, pb.len());
                let gb = match fold.head {
                    None => gb,
                    head => {
                        start_inline(&mut mapped[..n], gb, pb, head);
                        &mapped[..n]
                    }
                };
                let p = pb.as_mut_ptr();
                match fold.tail {
                    None => this.block_on::<ADD>(level, i, o, gb, Out { p, a: 1.0, b: 0.0 }, s),
                    Some(Affine { a, b: 0.0 }) => this.block_on::<ADD_SCALED>(level, i, o, gb, Out { p, a, b: 0.0 }, s),
                    Some(Affine { a, b }) => this.block_on::<ADD_AFFINE>(level, i, o, gb, Out { p, a, b }, s),
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn run_avx2(this: &ScaleByAdam8bit, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
                run(this, Level::Avx2, i, off, g, p, fold)
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn run_avx512(this: &ScaleByAdam8bit, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
                run(this, Level::Avx512, i, off, g, p, fold)
            }
            match Self::level() {
                Level::Avx512 => return run_avx512(self, i, off, g, p, fold),
                Level::Avx2 => return run_avx2(self, i, off, g, p, fold),
                Level::Plain => {}
            }
        }
        run(self, Level::Plain, i, off, g, p, fold)
    }
}

/// Where a block's updates go: written out (`apply`), or added into the parameters through the
/// chain's tail: `p ← p + u`, `p ← p + a·u`, `p ← p + (a·u + b·p)`.
const WRITE: u8 = 0;
const ADD: u8 = 1;
const ADD_SCALED: u8 = 2;
const ADD_AFFINE: u8 = 3;

/// A block's destination and tail.
#[derive(Clone, Copy)]
struct Out {
    p: *mut f32,
    a: f32,
    b: f32,
}

/// Element `j`'s update `u` into `out` as `OUT` says.
#[inline(always)]
unsafe fn put<const OUT: u8>(out: Out, j: usize, u: f32) {
    let (o, a, b) = (out.p.add(j), out.a, out.b);
    match OUT {
        WRITE => *o = u,
        ADD => *o += u,
        ADD_SCALED => *o += a * u,
        _ => *o += a * u + b * *o,
    }
}

/// A comparison (not `f32::max`, whose NaN rules block the plain vector max); a NaN moment
/// makes the step NaN anyway, as in f32 Adam.
#[inline(always)]
fn max_of(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// Which block kernel runs: the plain one (the reference), AVX2 + F16C, or AVX-512 (F and BW)
/// + F16C. All three give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Plain,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

impl ScaleByAdam8bit {
    /// The best block kernel this CPU runs ([`Level::Plain`] when [`super::set_simd`] turned the
    /// dispatch off).
    fn level() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if !(super::has_avx2() && has!("f16c")) {
                Level::Plain
            } else if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                Level::Avx512
            } else {
                Level::Avx2
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Level::Plain
        }
    }

    /// The new moments `(m, v)` of one element from its gradient and its codes' values `x`
    /// and `y` (`y` codes `√v`), with the block's decay factors `(b1·m_scale, b2·sqrt_v_scale²)`:
    /// the scales fold into the decays, `b1·m = b1·m_scale·x` and `b2·v = b2·sqrt_v_scale²·y²`.
    #[inline(always)]
    fn moments(&self, g: f32, x: f32, y: f32, (bm, bv): (f32, f32)) -> (f32, f32) {
        let m = (1.0 - self.b1) * g + bm * x;
        let v = (1.0 - self.b2) * g * g + bv * y * y;
        (m, v)
    }

    /// The decay factors of [`Self::moments`] for a block with scales `(m_scale, sqrt_v_scale)`.
    #[inline(always)]
    fn decays(&self, m_scale: f32, v_scale: f32) -> (f32, f32) {
        (self.b1 * m_scale, self.b2 * v_scale * v_scale)
    }

    /// The update from the new moments: one square root serves the code and the step,
    /// `√(v·bc₂) = √v·√bc₂`.
    #[inline(always)]
    fn update(&self, m: f32, s: f32) -> f32 {
        (m * self.bc1) / (s * self.sqrt_bc2 + self.eps)
    }

    /// One block of parameter `i` (at most [`BLOCK`] elements from `off`, a multiple of it): the
    /// update of element `j` goes to `out.p[j]` as `OUT` says, with the tail's `(a, b)`. `level`
    /// picks the kernel; all give the same bits.
    ///
    /// # Safety
    /// As for [`Elementwise::apply`]; `out.p` points to `g.len()` writable floats; `level` at most
    /// what [`Self::level`] says (or found otherwise on this CPU).
    #[inline(always)]
    unsafe fn block_on<const OUT: u8>(
        &self,
        level: Level,
        i: usize,
        off: usize,
        g: &[f32],
        out: Out,
        scratch: &mut [f32; 2 * BLOCK],
    ) {
        if self.m_code.buffers()[i].is_empty() {
            // A small tensor: plain f32 Adam.
            let n = g.len();
            let (m, v) = (self.m32.slice(i, off, n), self.v32.slice(i, off, n));
            for j in 0..n {
                let g = g[j];
                m[j] = (1.0 - self.b1) * g + self.b1 * m[j];
                v[j] = (1.0 - self.b2) * g * g + self.b2 * v[j];
                put::<OUT>(out, j, (m[j] * self.bc1) / ((v[j] * self.bc2).sqrt() + self.eps));
            }
            return;
        }
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => self.block_avx512::<OUT>(i, off, g, out, scratch),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => self.block_avx2::<OUT>(i, off, g, out, scratch),
            _ => self.block::<OUT>(i, off, g, out, scratch),
        }
    }

    /// The codes and scales of the block of parameter `i` at `off`.
    ///
    /// # Safety
    /// As for [`ParamBufs::slice`]: no other live reference to this block's state.
    #[inline(always)]
    #[allow(clippy::type_complexity, clippy::mut_from_ref)]
    unsafe fn codes(&self, i: usize, off: usize, n: usize) -> (&mut [u8], &mut [u8], &mut f32, &mut f32) {
        assert!(off.is_multiple_of(BLOCK) && n <= BLOCK, "8-bit state needs BLOCK-aligned blocks");
        let blk = off / BLOCK;
        let (ms, vs) = (&mut self.m_scale.slice(i, blk, 1)[0], &mut self.sqrt_v_scale.slice(i, blk, 1)[0]);
        (self.m_code.slice(i, off, n), self.sqrt_v_code.slice(i, off, n), ms, vs)
    }

    /// The plain block kernel: decode and update the moments, then the parameters and the
    /// codes against the block's new maxima. The square root waits for the second loop, where it
    /// serves both the update and the code; the block's largest `√v` is `√(max v)` (a rounded
    /// square root is monotonic).
    #[inline(always)]
    unsafe fn block<const OUT: u8>(&self, i: usize, off: usize, g: &[f32], out: Out, scratch: &mut [f32; 2 * BLOCK]) {
        let n = g.len();
        let (mq, vq, ms, vs) = self.codes(i, off, n);
        let (mf, vf) = scratch.split_at_mut(BLOCK);
        let (mf, vf) = (&mut mf[..n], &mut vf[..n]);
        let k = self.decays(*ms, *vs);
        for j in 0..n {
            (mf[j], vf[j]) = self.moments(g[j], decode_m(mq[j]), decode_sqrt_v(vq[j]), k);
        }
        let (m_max, s_max) = (lane_max_abs(mf), lane_max_abs(vf).sqrt());
        let (inv_m, inv_s) = (inverse(m_max), inverse(s_max));
        self.update_and_encode::<OUT>(0..n, out, mf, vf, mq, vq, (inv_m, inv_s));
        *ms = m_max;
        *vs = s_max;
    }

    /// The second pass of [`Self::block`] over `range`: each element's update from its new
    /// moments, and the moments encoded against the block's new scales (the vector kernels'
    /// tails).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn update_and_encode<const OUT: u8>(
        &self,
        range: std::ops::Range<usize>,
        out: Out,
        mf: &[f32],
        vf: &[f32],
        mq: &mut [u8],
        vq: &mut [u8],
        (inv_m, inv_s): (f32, f32),
    ) {
        for j in range {
            let s = vf[j].sqrt();
            put::<OUT>(out, j, self.update(mf[j], s));
            mq[j] = encode_m(mf[j], inv_m);
            vq[j] = encode_sqrt_v(s * inv_s);
        }
    }

    /// The first pass of [`Self::block`] over `range` (the vector kernels' tails): the new moments
    /// into `mf`, `vf`, and the running maxima `(max |m|, max v)` carried on.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn moments_with_maxima(
        &self,
        range: std::ops::Range<usize>,
        g: &[f32],
        (mq, vq): (&[u8], &[u8]),
        mf: &mut [f32],
        vf: &mut [f32],
        k: (f32, f32),
        (mut m_max, mut v_max): (f32, f32),
    ) -> (f32, f32) {
        for j in range {
            let (m, v) = self.moments(g[j], decode_m(mq[j]), decode_sqrt_v(vq[j]), k);
            mf[j] = m;
            vf[j] = v;
            m_max = max_of(m_max, m.abs());
            v_max = max_of(v_max, v);
        }
        (m_max, v_max)
    }

    /// [`Self::block`] in AVX2 + F16C, 16 elements at a time in the first loop and 32 in the
    /// second; the same operations in the same order, so the same bits. The first loop is
    /// integer and multiply work, the second is paced by the divider (square root and
    /// division), with the packing of the codes filling its idle ports.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block_avx2<const OUT: u8>(
        &self,
        i: usize,
        off: usize,
        g: &[f32],
        out: Out,
        scratch: &mut [f32; 2 * BLOCK],
    ) {
        use std::arch::x86_64::*;
        use x86::*;
        let n = g.len();
        let (mq, vq, ms, vs) = self.codes(i, off, n);
        let (mf, vf) = scratch.split_at_mut(BLOCK);
        let k = self.decays(*ms, *vs);
        let sp = |x: f32| _mm256_set1_ps(x);
        let (c1, bm, c2, bv) = (sp(1.0 - self.b1), sp(k.0), sp(1.0 - self.b2), sp(k.1));
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let (mut mmax, mut vmax) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let n16 = n - n % 16;
        for j in (0..n16).step_by(16) {
            _mm_prefetch::<_MM_HINT_T0>(out.p.wrapping_add(j) as *const i8);
            let (x0, x1) = decode16_m(mq.as_ptr().add(j));
            let (y0, y1) = decode16_sqrt_v(vq.as_ptr().add(j));
            for (k, x, y) in [(j, x0, y0), (j + 8, x1, y1)] {
                let g = _mm256_loadu_ps(g.as_ptr().add(k));
                let m = _mm256_add_ps(_mm256_mul_ps(c1, g), _mm256_mul_ps(bm, x));
                let v = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(c2, g), g), _mm256_mul_ps(_mm256_mul_ps(bv, y), y));
                _mm256_storeu_ps(mf.as_mut_ptr().add(k), m);
                _mm256_storeu_ps(vf.as_mut_ptr().add(k), v);
                // `max(x, acc)` keeps `acc` when `x` is NaN, as `max_of(acc, x)` does.
                mmax = _mm256_max_ps(_mm256_and_ps(m, abs), mmax);
                vmax = _mm256_max_ps(v, vmax);
            }
        }
        let mut lanes = [0.0f32; 16];
        _mm256_storeu_ps(lanes.as_mut_ptr(), mmax);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), vmax);
        let lane_maxima =
            (lanes[..8].iter().fold(0.0, |a, &x| max_of(a, x)), lanes[8..].iter().fold(0.0, |a, &x| max_of(a, x)));
        let (m_max, v_max) = self.moments_with_maxima(n16..n, g, (mq, vq), mf, vf, k, lane_maxima);
        let s_max = v_max.sqrt();
        let (inv_m, inv_s) = (inverse(m_max), inverse(s_max));
        let (bc1, sbc2, eps) = (sp(self.bc1), sp(self.sqrt_bc2), sp(self.eps));
        let (a8, b8) = (sp(out.a), sp(out.b));
        let (inv_m8, inv_s8) = (sp(inv_m), sp(inv_s));
        let n32 = n - n % 32;
        for j in (0..n32).step_by(32) {
            let next = |x: *const f32| x.wrapping_add(n + j) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(next(g.as_ptr()));
            _mm_prefetch::<_MM_HINT_T0>(next(g.as_ptr().wrapping_add(16)));
            _mm_prefetch::<_MM_HINT_T0>(mq.as_ptr().wrapping_add(n + j) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(vq.as_ptr().wrapping_add(n + j) as *const i8);
            let mut m = [_mm256_setzero_ps(); 4];
            let mut s = [_mm256_setzero_ps(); 4];
            for r in 0..4 {
                let k = j + 8 * r;
                m[r] = _mm256_loadu_ps(mf.as_ptr().add(k));
                s[r] = _mm256_sqrt_ps(_mm256_loadu_ps(vf.as_ptr().add(k)));
                let u = _mm256_div_ps(_mm256_mul_ps(m[r], bc1), _mm256_add_ps(_mm256_mul_ps(s[r], sbc2), eps));
                put8::<OUT>(out.p.add(k), u, a8, b8);
            }
            encode32_m(m, inv_m8, mq.as_mut_ptr().add(j));
            encode32_sqrt_v(s, inv_s8, vq.as_mut_ptr().add(j));
        }
        self.update_and_encode::<OUT>(n32..n, out, mf, vf, mq, vq, (inv_m, inv_s));
        *ms = m_max;
        *vs = s_max;
    }

    /// [`Self::block`] in AVX-512 (F and BW) + F16C, 32 elements at a time in the first loop and
    /// 64 in the second; the same operations in the same order as the plain kernel, so the same
    /// bits. Twice the elements an instruction of [`Self::block_avx2`]: on a CPU whose 512-bit
    /// operations take two cycles the divider's throughput stays, but the front end issues half
    /// the instructions for the decoding, the moments and the packing of the codes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn block_avx512<const OUT: u8>(
        &self,
        i: usize,
        off: usize,
        g: &[f32],
        out: Out,
        scratch: &mut [f32; 2 * BLOCK],
    ) {
        use std::arch::x86_64::*;
        use x86::*;
        let n = g.len();
        let (mq, vq, ms, vs) = self.codes(i, off, n);
        let (mf, vf) = scratch.split_at_mut(BLOCK);
        let k = self.decays(*ms, *vs);
        let sp = |x: f32| _mm512_set1_ps(x);
        let (c1, bm, c2, bv) = (sp(1.0 - self.b1), sp(k.0), sp(1.0 - self.b2), sp(k.1));
        let (mut mmax, mut vmax) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let n32 = n - n % 32;
        for j in (0..n32).step_by(32) {
            _mm_prefetch::<_MM_HINT_T0>(out.p.wrapping_add(j) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(out.p.wrapping_add(j + 16) as *const i8);
            for h in [j, j + 16] {
                let x = decode16_m_512(mq.as_ptr().add(h));
                let y = decode16_sqrt_v_512(vq.as_ptr().add(h));
                let g = _mm512_loadu_ps(g.as_ptr().add(h));
                let m = _mm512_add_ps(_mm512_mul_ps(c1, g), _mm512_mul_ps(bm, x));
                let v = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(c2, g), g), _mm512_mul_ps(_mm512_mul_ps(bv, y), y));
                _mm512_storeu_ps(mf.as_mut_ptr().add(h), m);
                _mm512_storeu_ps(vf.as_mut_ptr().add(h), v);
                // `max(x, acc)` keeps `acc` when `x` is NaN, as `max_of(acc, x)` does.
                mmax = _mm512_max_ps(_mm512_abs_ps(m), mmax);
                vmax = _mm512_max_ps(v, vmax);
            }
        }
        let mut lanes = [0.0f32; 32];
        _mm512_storeu_ps(lanes.as_mut_ptr(), mmax);
        _mm512_storeu_ps(lanes.as_mut_ptr().add(16), vmax);
        let lane_maxima =
            (lanes[..16].iter().fold(0.0, |a, &x| max_of(a, x)), lanes[16..].iter().fold(0.0, |a, &x| max_of(a, x)));
        let (m_max, v_max) = self.moments_with_maxima(n32..n, g, (mq, vq), mf, vf, k, lane_maxima);
        let s_max = v_max.sqrt();
        let (inv_m, inv_s) = (inverse(m_max), inverse(s_max));
        let (bc1, sbc2, eps) = (sp(self.bc1), sp(self.sqrt_bc2), sp(self.eps));
        let (a16, b16) = (sp(out.a), sp(out.b));
        let (inv_m16, inv_s16) = (sp(inv_m), sp(inv_s));
        let n64 = n - n % 64;
        for j in (0..n64).step_by(64) {
            let next = |x: *const f32, r: usize| x.wrapping_add(n + j + 16 * r) as *const i8;
            let after = |x: *const f32, r: usize| x.wrapping_add(2 * n + j + 16 * r) as *const i8;
            for r in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(next(g.as_ptr(), r));
            }
            _mm_prefetch::<_MM_HINT_T0>(mq.as_ptr().wrapping_add(n + j) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(vq.as_ptr().wrapping_add(n + j) as *const i8);
            // The next block's parameters, and everything of the block after it, into L2: the
            // streams then stay ahead of this divider-paced loop (one block ahead alone, the
            // step ran at 1.0x f32 AdamW on one thread; with these, 1.2x).
            for r in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(next(out.p, r));
                _mm_prefetch::<_MM_HINT_T1>(after(g.as_ptr(), r));
                _mm_prefetch::<_MM_HINT_T1>(after(out.p, r));
            }
            _mm_prefetch::<_MM_HINT_T1>(mq.as_ptr().wrapping_add(2 * n + j) as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(vq.as_ptr().wrapping_add(2 * n + j) as *const i8);
            let mut m = [_mm512_setzero_ps(); 4];
            let mut s = [_mm512_setzero_ps(); 4];
            for r in 0..4 {
                let k = j + 16 * r;
                m[r] = _mm512_loadu_ps(mf.as_ptr().add(k));
                s[r] = _mm512_sqrt_ps(_mm512_loadu_ps(vf.as_ptr().add(k)));
                let u = _mm512_div_ps(_mm512_mul_ps(m[r], bc1), _mm512_add_ps(_mm512_mul_ps(s[r], sbc2), eps));
                put16::<OUT>(out.p.add(k), u, a16, b16);
            }
            encode64_m(m, inv_m16, mq.as_mut_ptr().add(j));
            encode64_sqrt_v(s, inv_s16, vq.as_mut_ptr().add(j));
        }
        self.update_and_encode::<OUT>(n64..n, out, mf, vf, mq, vq, (inv_m, inv_s));
        *ms = m_max;
        *vs = s_max;
    }
}

/// `1/max`, or 0 for an all-zero block (whose codes are then all zero).
#[inline(always)]
fn inverse(max: f32) -> f32 {
    if max > 0.0 {
        1.0 / max
    } else {
        0.0
    }
}

/// The codecs on 16 or 32 elements at a time, with F16C's conversions: the same codes as
/// [`encode_m`] and friends.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `put` on eight elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn put8<const OUT: u8>(o: *mut f32, u: __m256, a: __m256, b: __m256) {
        let r = match OUT {
            super::WRITE => u,
            super::ADD => _mm256_add_ps(_mm256_loadu_ps(o), u),
            super::ADD_SCALED => _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(a, u)),
            _ => {
                let p = _mm256_loadu_ps(o);
                _mm256_add_ps(p, _mm256_add_ps(_mm256_mul_ps(a, u), _mm256_mul_ps(b, p)))
            }
        };
        _mm256_storeu_ps(o, r);
    }

    /// The values of the 16 first-moment codes at `q`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn decode16_m(q: *const u8) -> (__m256, __m256) {
        // Sign-extended, shifted by 7: the sign lands in bit 15 and again in bit 14, which a
        // half below 2 has clear.
        let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(q as *const __m128i));
        let h = _mm256_and_si256(_mm256_slli_epi16::<7>(w), _mm256_set1_epi16(0xBFFFu16 as i16));
        halves(h)
    }

    /// The values of the 16 `√v` codes at `q`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn decode16_sqrt_v(q: *const u8) -> (__m256, __m256) {
        let w = _mm256_cvtepu8_epi16(_mm_loadu_si128(q as *const __m128i));
        halves(_mm256_slli_epi16::<6>(w))
    }

    /// 16 halves as floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn halves(h: __m256i) -> (__m256, __m256) {
        (_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h)))
    }

    /// The high 16 bits of the floats `x·inv` plus `round`, in 16-bit lanes in the order of
    /// `packus_epi32`: elements 0–3 of `x[0]`, 0–3 of `x[1]` | 4–7 of `x[0]`, 4–7 of `x[1]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn high16(x: [__m256; 2], inv: __m256, round: i32) -> __m256i {
        let r = _mm256_set1_epi32(round);
        let lo = _mm256_add_epi32(_mm256_castps_si256(_mm256_mul_ps(x[0], inv)), r);
        let hi = _mm256_add_epi32(_mm256_castps_si256(_mm256_mul_ps(x[1], inv)), r);
        _mm256_packus_epi32(_mm256_srli_epi32::<16>(lo), _mm256_srli_epi32::<16>(hi))
    }

    /// Two vectors of 16 codes in 16-bit lanes (from [`high16`]) as 32 bytes in order at `q`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn store32(a: __m256i, b: __m256i, q: *mut u8) {
        // The two packs interleave 4-byte groups: 0–3, 8–11, 16–19, 24–27 | 4–7, 12–15, …
        let packed = _mm256_packus_epi16(a, b);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256(q as *mut __m256i, _mm256_permutevar8x32_epi32(packed, order));
    }

    /// The codes of 32 first moments in a block whose maximum is `1/inv`, at `q`:
    /// [`super::encode_m`] in 16-bit lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn encode32_m(m: [__m256; 4], inv: __m256, q: *mut u8) {
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn code(w: __m256i) -> __m256i {
            let mag = _mm256_srli_epi16::<4>(_mm256_and_si256(w, _mm256_set1_epi16(0x7FFF)));
            let mag = _mm256_sub_epi16(mag, _mm256_set1_epi16(112 << 3));
            let mag = _mm256_and_si256(mag, _mm256_cmpgt_epi16(mag, _mm256_set1_epi16(7)));
            let sign = _mm256_and_si256(_mm256_srli_epi16::<8>(w), _mm256_set1_epi16(0x80));
            _mm256_or_si256(mag, sign)
        }
        let r = 1 << 19;
        store32(code(high16([m[0], m[1]], inv, r)), code(high16([m[2], m[3]], inv, r)), q);
    }

    /// The codes of 32 values `s·inv ∈ [0, 1]` (square roots of second moments), at `q`:
    /// [`super::encode_sqrt_v`] in 16-bit lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn encode32_sqrt_v(s: [__m256; 4], inv: __m256, q: *mut u8) {
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn code(w: __m256i) -> __m256i {
            let c = _mm256_sub_epi16(_mm256_srli_epi16::<3>(w), _mm256_set1_epi16(112 << 4));
            _mm256_and_si256(c, _mm256_cmpgt_epi16(c, _mm256_set1_epi16(15)))
        }
        let r = 1 << 18;
        store32(code(high16([s[0], s[1]], inv, r)), code(high16([s[2], s[3]], inv, r)), q);
    }
    /// `put` on sixteen elements.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub unsafe fn put16<const OUT: u8>(o: *mut f32, u: __m512, a: __m512, b: __m512) {
        let r = match OUT {
            super::WRITE => u,
            super::ADD => _mm512_add_ps(_mm512_loadu_ps(o), u),
            super::ADD_SCALED => _mm512_add_ps(_mm512_loadu_ps(o), _mm512_mul_ps(a, u)),
            _ => {
                let p = _mm512_loadu_ps(o);
                _mm512_add_ps(p, _mm512_add_ps(_mm512_mul_ps(a, u), _mm512_mul_ps(b, p)))
            }
        };
        _mm512_storeu_ps(o, r);
    }

    /// The values of the 16 first-moment codes at `q`, as [`decode16_m`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub unsafe fn decode16_m_512(q: *const u8) -> __m512 {
        let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(q as *const __m128i));
        _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16::<7>(w), _mm256_set1_epi16(0xBFFFu16 as i16)))
    }

    /// The values of the 16 `√v` codes at `q`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub unsafe fn decode16_sqrt_v_512(q: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_slli_epi16::<6>(_mm256_cvtepu8_epi16(_mm_loadu_si128(q as *const __m128i))))
    }

    /// [`high16`] on 512 bits: the high 16 bits of `x·inv` plus `round`, in 16-bit lanes in the
    /// order of `packus_epi32` (in each 128-bit lane, four elements of `x[0]`, then four of `x[1]`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn high16_512(x: [__m512; 2], inv: __m512, round: i32) -> __m512i {
        let r = _mm512_set1_epi32(round);
        let lo = _mm512_add_epi32(_mm512_castps_si512(_mm512_mul_ps(x[0], inv)), r);
        let hi = _mm512_add_epi32(_mm512_castps_si512(_mm512_mul_ps(x[1], inv)), r);
        _mm512_packus_epi32(_mm512_srli_epi32::<16>(lo), _mm512_srli_epi32::<16>(hi))
    }

    /// Two vectors of 32 codes in 16-bit lanes (from [`high16_512`]) as 64 bytes in order at `q`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn store64(a: __m512i, b: __m512i, q: *mut u8) {
        // In 128-bit lane `l`, the packs leave the 4-byte groups of elements 4l.. of each of the
        // four input vectors in turn: group `4l + k` holds vector `k`'s; element group `d` of
        // the output (vector `d / 4`, lane `d % 4`) is group `4·(d % 4) + d / 4`.
        let packed = _mm512_packus_epi16(a, b);
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_storeu_si512(q as *mut __m512i, _mm512_permutexvar_epi32(order, packed));
    }

    /// The codes of 64 first moments in a block whose maximum is `1/inv`, at `q`:
    /// [`super::encode_m`] in 16-bit lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub unsafe fn encode64_m(m: [__m512; 4], inv: __m512, q: *mut u8) {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        #[inline]
        unsafe fn code(w: __m512i) -> __m512i {
            // Exponent and mantissa as an integer; the offset only where it stays above 7.
            let e = _mm512_and_si512(_mm512_srli_epi16::<4>(w), _mm512_set1_epi16(0x7FF));
            let keep = _mm512_cmpgt_epi16_mask(e, _mm512_set1_epi16((112 << 3) + 7));
            let mag = _mm512_maskz_sub_epi16(keep, e, _mm512_set1_epi16(112 << 3));
            // mag | ((w >> 8) & 0x80)
            _mm512_ternarylogic_epi32::<0xF8>(mag, _mm512_srli_epi16::<8>(w), _mm512_set1_epi16(0x80))
        }
        let r = 1 << 19;
        store64(code(high16_512([m[0], m[1]], inv, r)), code(high16_512([m[2], m[3]], inv, r)), q);
    }

    /// The codes of 64 values `s·inv ∈ [0, 1]` (square roots of second moments), at `q`:
    /// [`super::encode_sqrt_v`] in 16-bit lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub unsafe fn encode64_sqrt_v(s: [__m512; 4], inv: __m512, q: *mut u8) {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        #[inline]
        unsafe fn code(w: __m512i) -> __m512i {
            let e = _mm512_srli_epi16::<3>(w);
            let keep = _mm512_cmpgt_epi16_mask(e, _mm512_set1_epi16((112 << 4) + 15));
            _mm512_maskz_sub_epi16(keep, e, _mm512_set1_epi16(112 << 4))
        }
        let r = 1 << 18;
        store64(code(high16_512([s[0], s[1]], inv, r)), code(high16_512([s[2], s[3]], inv, r)), q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code of `a ≥ 0` with `bits` mantissa bits, by its exponent and mantissa in `f64`:
    /// `(exponent + 15)·2^bits + mantissa`, the mantissa rounded half up, 0 below 2⁻¹⁴.
    fn code_ref(a: f32, bits: i32) -> u32 {
        if a == 0.0 {
            return 0;
        }
        let a = a as f64;
        let mut e = a.log2().floor() as i32;
        let mut q = (a / 2f64.powi(e) * 2f64.powi(bits) + 0.5).floor() as i64 - (1 << bits);
        if q == 1 << bits {
            (e, q) = (e + 1, 0);
        }
        if e < -14 {
            0
        } else {
            ((e + 15) as u32) << bits | q as u32
        }
    }

    /// The value of a half-precision float's magnitude bits, in `f64`.
    fn half_ref(h: u32) -> f64 {
        let (e, m) = ((h >> 10) as i32, (h & 0x3FF) as f64);
        if e == 0 {
            m * 2f64.powi(-24)
        } else {
            (1.0 + m / 1024.0) * 2f64.powi(e - 15)
        }
    }

    /// Floats from 0 to a little above 1 (a sparse walk over their bits), and the ends.
    fn walk() -> impl Iterator<Item = f32> {
        (0..=1.001f32.to_bits()).step_by(997).map(f32::from_bits).chain([0.0, 1.0, 2f32.powi(-14)])
    }

    #[test]
    fn codes_are_the_rounded_exponent_and_mantissa() {
        for a in walk() {
            for inv in [1.0f32, 0.999_999_9] {
                let y = a * inv;
                let m = code_ref(y, 3) as u8;
                assert_eq!(encode_m(a, inv), m, "{a}");
                assert_eq!(encode_m(-a, inv), m | 0x80, "{a}");
            }
            assert_eq!(encode_sqrt_v(a) as u32, code_ref(a, 4), "{a}");
        }
        assert_eq!(encode_sqrt_v(1.0), 240);
        assert_eq!(encode_m(-1.0, 1.0), 0x80 | 120);
    }

    #[test]
    fn codes_decode_as_the_halves_they_stand_for() {
        for q in 0..=255u8 {
            let m = half_ref(((q & 0x7F) as u32) << 7);
            assert_eq!(decode_m(q) as f64, if q & 0x80 != 0 { -m } else { m }, "{q}");
            assert_eq!(decode_sqrt_v(q) as f64, half_ref((q as u32) << 6), "{q}");
        }
        // Each code decodes to the value it was encoded from, to its precision.
        for a in walk() {
            let (m, s) = (decode_m(encode_m(a, 1.0)), decode_sqrt_v(encode_sqrt_v(a)));
            if a >= 2f32.powi(-14) {
                assert!((m - a).abs() <= a / 16.0, "{a} -> {m}");
                assert!((s - a).abs() <= a / 32.0, "{a} -> {s}");
            } else {
                assert!(m == 0.0 || m == 2f32.powi(-14), "{a} -> {m}");
                assert!(s == 0.0 || s == 2f32.powi(-14), "{a} -> {s}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_codecs_equal_the_scalar_ones() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")) {
            return;
        }
        use std::arch::x86_64::*;
        // Every code, decoded 16 at a time.
        let codes: Vec<u8> = (0..=255).collect();
        for c in codes.chunks(16) {
            let mut out = [0.0f32; 32];
            // SAFETY: the CPU has AVX2 and F16C; `c` holds 16 codes, `out` 32 floats.
            unsafe {
                let (a, b) = x86::decode16_m(c.as_ptr());
                let (x, y) = x86::decode16_sqrt_v(c.as_ptr());
                for (k, v) in [a, b, x, y].into_iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), v);
                }
            }
            for j in 0..16 {
                assert_eq!(out[j].to_bits(), decode_m(c[j]).to_bits(), "{}", c[j]);
                assert_eq!(out[16 + j].to_bits(), decode_sqrt_v(c[j]).to_bits(), "{}", c[j]);
            }
        }
        // The walk, both signs, 32 at a time.
        let xs: Vec<f32> = walk().flat_map(|a| [a, -a]).collect();
        for c in xs.chunks_exact(32) {
            let abs: Vec<f32> = c.iter().map(|x| x.abs()).collect();
            let inv = 0.999_999_9f32;
            let (mut qm, mut qs) = ([0u8; 32], [0u8; 32]);
            // SAFETY: as above; 32 floats in, 32 codes out.
            unsafe {
                let load = |x: &[f32]| [0, 8, 16, 24].map(|k| _mm256_loadu_ps(x.as_ptr().add(k)));
                x86::encode32_m(load(c), _mm256_set1_ps(inv), qm.as_mut_ptr());
                x86::encode32_sqrt_v(load(&abs), _mm256_set1_ps(inv), qs.as_mut_ptr());
            }
            for j in 0..32 {
                assert_eq!(qm[j], encode_m(c[j], inv), "{}", c[j]);
                assert_eq!(qs[j], encode_sqrt_v(abs[j] * inv), "{}", abs[j]);
            }
        }
    }

    /// The midpoints between consecutive codes' values (each rounds up to the upper code), the
    /// codes' values themselves and their neighbours, and the special values, with both signs.
    fn hard_values() -> Vec<f32> {
        let mut xs = vec![0.0, f32::NAN, f32::INFINITY, f32::MIN_POSITIVE, 1e-45, 2f32.powi(-15), 1.0, 1.5];
        for q in 0..=127u8 {
            for x in [decode_m(q), decode_sqrt_v(2 * q), decode_sqrt_v(2 * q + 1)] {
                xs.extend([x, f32::from_bits(x.to_bits().saturating_sub(1)), f32::from_bits(x.to_bits() + 1)]);
            }
            for (a, b) in [(decode_m(q), decode_m(q + 1)), (decode_sqrt_v(2 * q), decode_sqrt_v(2 * q + 1))] {
                if q < 127 || b > a {
                    xs.push(0.5 * (a + b));
                }
            }
        }
        xs.iter().flat_map(|&x| [x, -x]).collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_codecs_equal_the_scalar_ones() {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("f16c")) {
            return;
        }
        use std::arch::x86_64::*;
        let codes: Vec<u8> = (0..=255).collect();
        for c in codes.chunks(16) {
            let mut out = [0.0f32; 32];
            // SAFETY: the CPU has AVX-512 F/BW/VL and F16C; `c` holds 16 codes, `out` 32 floats.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr(), x86::decode16_m_512(c.as_ptr()));
                _mm512_storeu_ps(out.as_mut_ptr().add(16), x86::decode16_sqrt_v_512(c.as_ptr()));
            }
            for j in 0..16 {
                assert_eq!(out[j].to_bits(), decode_m(c[j]).to_bits(), "{}", c[j]);
                assert_eq!(out[16 + j].to_bits(), decode_sqrt_v(c[j]).to_bits(), "{}", c[j]);
            }
        }
        // Ties (exactly between two codes, which round up), the special values and the walk,
        // 64 at a time, against a block maximum of 1 and of a little under 1.
        let mut xs = hard_values();
        xs.extend(walk().flat_map(|a| [a, -a]));
        for inv in [1.0f32, 0.999_999_9, 1.000_000_1] {
            for c in xs.chunks_exact(64) {
                let abs: Vec<f32> = c.iter().map(|x| x.abs()).collect();
                let (mut qm, mut qs) = ([0u8; 64], [0u8; 64]);
                // SAFETY: as above; 64 floats in, 64 codes out.
                unsafe {
                    let load = |x: &[f32]| [0, 16, 32, 48].map(|k| _mm512_loadu_ps(x.as_ptr().add(k)));
                    x86::encode64_m(load(c), _mm512_set1_ps(inv), qm.as_mut_ptr());
                    x86::encode64_sqrt_v(load(&abs), _mm512_set1_ps(inv), qs.as_mut_ptr());
                }
                for j in 0..64 {
                    assert_eq!(qm[j], encode_m(c[j], inv), "{} {inv}", c[j]);
                    assert_eq!(qs[j], encode_sqrt_v(abs[j] * inv), "{} {inv}", abs[j]);
                }
            }
        }
    }

    /// Deterministic values from a 64-bit LCG: `(0, 1]` uniform bits.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 11
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 29) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// The state after one block kernel of `level`, started from the given codes and scales: the
    /// updates (or updated parameters), the codes and the scales, as bits.
    #[allow(clippy::too_many_arguments)]
    fn run_block(
        level: Level,
        out_kind: u8,
        cfg: &ScaleByAdam8bitConfig,
        g: &[f32],
        p: &[f32],
        mq: &[u8],
        vq: &[u8],
        scales: (f32, f32),
        (a, b): (f32, f32),
    ) -> (Vec<u32>, Vec<u8>, Vec<u8>, u32, u32) {
        let mut s = ScaleByAdam8bit::new(cfg.clone());
        s.m_code = vec![mq.to_vec()].into();
        s.sqrt_v_code = vec![vq.to_vec()].into();
        s.m_scale = vec![vec![scales.0]].into();
        s.sqrt_v_scale = vec![vec![scales.1]].into();
        s.m32 = vec![vec![]].into();
        s.v32 = vec![vec![]].into();
        for _ in 0..3 {
            s.begin_step();
        }
        let mut p = p.to_vec();
        let mut scratch = [0.0f32; 2 * BLOCK];
        let out = Out { p: p.as_mut_ptr(), a, b };
        // SAFETY: one block of one tensor, `out` holds `g.len()` floats, `level` checked by the
        // caller against this CPU.
        unsafe {
            match out_kind {
                WRITE => s.block_on::<WRITE>(level, 0, 0, g, out, &mut scratch),
                ADD => s.block_on::<ADD>(level, 0, 0, g, out, &mut scratch),
                ADD_SCALED => s.block_on::<ADD_SCALED>(level, 0, 0, g, out, &mut scratch),
                _ => s.block_on::<ADD_AFFINE>(level, 0, 0, g, out, &mut scratch),
            }
        }
        let bits = p.iter().map(|x| x.to_bits()).collect();
        let (mq, vq) = (s.m_code.buffers()[0].clone(), s.sqrt_v_code.buffers()[0].clone());
        (bits, mq, vq, s.m_scale.buffers()[0][0].to_bits(), s.sqrt_v_scale.buffers()[0][0].to_bits())
    }

    /// Every block kernel this CPU runs gives the plain kernel's bits: updates, codes and scales,
    /// on blocks of every length class (full, odd, shorter than a vector, vector tails), every
    /// destination, random codes and gradients of many magnitudes, and blocks with zeros,
    /// infinities and NaNs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_block_kernels_equal_the_plain_one() {
        use std::arch::is_x86_feature_detected as has;
        let mut levels = vec![];
        if has!("avx2") && has!("fma") && has!("f16c") {
            levels.push(Level::Avx2);
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                levels.push(Level::Avx512);
            }
        }
        let mut rng = Lcg(7);
        let cfgs = [
            ScaleByAdam8bitConfig::default(),
            ScaleByAdam8bitConfig { b1: 0.5, b2: 0.9, eps: 0.0 },
            ScaleByAdam8bitConfig { b1: 0.0, b2: 0.0, eps: 1e-3 },
        ];
        let lengths = [BLOCK, BLOCK - 1, 1, 15, 16, 17, 31, 33, 63, 64, 65, 100, 1000, 1023, 2000];
        let mut checked = 0;
        for (t, &n) in lengths.iter().enumerate() {
            for kind in 0..8 {
                let cfg = &cfgs[(t + kind) % cfgs.len()];
                let scale = 10f32.powi(kind as i32 - 4);
                let mut g: Vec<f32> = (0..n).map(|_| rng.unit() * scale).collect();
                let mut mq: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                let mut vq: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                let mut scales = (rng.unit().abs() * scale, rng.unit().abs() * scale);
                match kind {
                    // An all-zero block: zero maxima, all codes zero.
                    0 => {
                        g.fill(0.0);
                        mq.fill(0);
                        vq.fill(0);
                        scales = (0.0, 0.0);
                    }
                    // Zero state, gradients of wildly different magnitudes (subnormal moments).
                    1 => {
                        scales = (0.0, 0.0);
                        for (j, x) in g.iter_mut().enumerate() {
                            *x *= 10f32.powi((j % 80) as i32 - 40);
                        }
                    }
                    // A NaN, an infinity, or both, somewhere in the block.
                    5 => g[n / 2] = f32::NAN,
                    6 => g[n - 1] = f32::INFINITY,
                    7 => {
                        g[0] = f32::NEG_INFINITY;
                        g[n / 3] = f32::NAN;
                    }
                    _ => {}
                }
                let p: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
                for out_kind in [WRITE, ADD, ADD_SCALED, ADD_AFFINE] {
                    let ab = (-1e-3, -1e-5);
                    let want = run_block(Level::Plain, out_kind, cfg, &g, &p, &mq, &vq, scales, ab);
                    for &level in &levels {
                        let got = run_block(level, out_kind, cfg, &g, &p, &mq, &vq, scales, ab);
                        let what = format!("{level:?}, n {n}, kind {kind}, out {out_kind}");
                        assert_eq!(got.0, want.0, "{what}: updates");
                        assert_eq!(got.1, want.1, "{what}: m codes");
                        assert_eq!(got.2, want.2, "{what}: √v codes");
                        assert_eq!((got.3, got.4), (want.3, want.4), "{what}: scales");
                        checked += 1;
                    }
                }
            }
        }
        assert!(levels.is_empty() || checked >= lengths.len() * 8 * 4, "{checked}");
    }
}
