//! Optimizer state in 8 bits, block-wise, in the manner of bitsandbytes' 8-bit optimizers
//! (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"): each block of
//! [`BLOCK`] elements keeps its moments in one byte each plus one `f32` scale, so an Adam step
//! moves 16 bytes per parameter instead of 28.
//!
//! Both moments are 8-bit floats relative to their block's maximum, so small entries keep their
//! relative precision (a linear code rounds them to zero and loses their momentum): the first
//! moment with a sign bit, 4 bits of exponent (2⁰ down to 2⁻¹⁴) and 3 of mantissa (±6%); the square
//! root of the second moment with 4 bits of exponent and 4 of mantissa (±3%). Tensors under 4096
//! elements keep 32-bit moments, as bitsandbytes does.
//! descent's own scheme: it is not bitsandbytes' dynamic quantization map, so numbers differ from
//! bitsandbytes'.

use super::{elementwise_transform, simd_apply, ParamBufs};
use crate::transform::{numel, start_inline, Affine, Elementwise, Fold, BLOCK};

/// The signed 8-bit float code of a first moment `m` in a block whose absolute maximum is
/// `1/inv`: sign bit, 4 bits of exponent (2⁰ down to 2⁻¹⁴), 3 of mantissa; low bits 0 = zero.
/// With the mantissa rounded to 3 bits (a carry moves into the exponent by itself), the code is
/// the float's bits from the exponent down, shifted so that 2⁻¹⁴ maps to 1, clamped to 0..=127.
#[inline(always)]
fn encode_m(m: f32, inv: f32) -> u8 {
    let r = (m.abs() * inv).to_bits().wrapping_add(1 << 19);
    let low = ((r >> 20) as i32 - ((127 - 14) << 3) + 1).clamp(0, 127) as u32;
    (low | ((m.to_bits() >> 24) & 0x80)) as u8
}

#[inline(always)]
fn decode_m(q: u8, scale: f32) -> f32 {
    let low = (q & 0x7F) as u32;
    // Code c ≥ 1 stands for the float with bits (c − 1 + (127 − 14)·8) << 20.
    let x = f32::from_bits((low.wrapping_sub(1).wrapping_add((127 - 14) << 3)) << 20) * scale;
    let signed = f32::from_bits(x.to_bits() | ((q as u32 & 0x80) << 24));
    // Code 0 is +0 whatever its sign bit.
    if low == 0 {
        0.0
    } else {
        signed
    }
}

/// The 8-bit float code of `x = √v / max ∈ [0, 1]`: 4 bits of exponent, 4 of mantissa.
#[inline(always)]
fn encode_sqrt_v(x: f32) -> u8 {
    let r = x.to_bits().wrapping_add(1 << 18);
    ((r >> 19) as i32 - ((127 - 14) << 4) + 1).clamp(0, 255) as u8
}

#[inline(always)]
fn decode_sqrt_v(q: u8) -> f32 {
    if q == 0 {
        0.0
    } else {
        f32::from_bits((q as u32 - 1 + ((127 - 14) << 4)) << 19)
    }
}

/// `max |x|` in eight independent lanes (max is exact in any order, so this is the plain maximum;
/// the lanes keep the loop vectorized where a single strict-FP reduction would not).
#[inline(always)]
fn lane_max_abs(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    // A comparison (not `f32::max`, whose NaN rules block the plain vector max); a NaN moment
    // makes the step NaN anyway, as in f32 Adam.
    let mx = |a: f32, b: f32| if b > a { b } else { a };
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] = mx(acc[k], c[k].abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0.0f32, |a, v| mx(a, v.abs()));
    acc.iter().fold(tail, |a, &v| mx(a, v))
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
    m: ParamBufs<u8>,
    v: ParamBufs<u8>,
    m_scale: ParamBufs,
    v_scale: ParamBufs,
    bc1: f32,
    bc2: f32,
    sqrt_bc2: f32,
}

impl ScaleByAdam8bit {
    pub fn new(b1: f64, b2: f64, eps: f64) -> Self {
        ScaleByAdam8bit {
            min_8bit_size: 4096,
            m32: ParamBufs::default(),
            v32: ParamBufs::default(),
            b1: b1 as f32,
            b2: b2 as f32,
            eps: eps as f32,
            count: 0,
            m: ParamBufs::default(),
            v: ParamBufs::default(),
            m_scale: ParamBufs::default(),
            v_scale: ParamBufs::default(),
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
    s.m = shapes.iter().map(|sh| vec![0u8; sized(sh, q(sh))]).collect::<Vec<_>>().into();
    s.v = shapes.iter().map(|sh| vec![0u8; sized(sh, q(sh))]).collect::<Vec<_>>().into();
    s.m32 = shapes.iter().map(|sh| vec![0.0f32; sized(sh, !q(sh))]).collect::<Vec<_>>().into();
    s.v32 = shapes.iter().map(|sh| vec![0.0f32; sized(sh, !q(sh))]).collect::<Vec<_>>().into();
    let blocks = |sh: &Vec<usize>| if q(sh) { numel(sh).div_ceil(BLOCK) } else { 0 };
    s.m_scale = shapes.iter().map(|sh| vec![0.0f32; blocks(sh)]).collect::<Vec<_>>().into();
    s.v_scale = shapes.iter().map(|sh| vec![0.0f32; blocks(sh)]).collect::<Vec<_>>().into();
}; bufs: [m, v, m_scale, v_scale, m32, v32]; counters: [count]; scalars: []);

impl Elementwise for ScaleByAdam8bit {
    fn begin_step(&mut self) {
        self.count += 1;
        let t = self.count as f64;
        self.bc1 = (1.0 / (1.0 - (self.b1 as f64).powf(t))) as f32;
        self.bc2 = (1.0 / (1.0 - (self.b2 as f64).powf(t))) as f32;
        self.sqrt_bc2 = (1.0 / (1.0 - (self.b2 as f64).powf(t))).sqrt() as f32;
    }
    simd_apply!(@apply ScaleByAdam8bit, |this, i, off, u, p| {
        let n = u.len();
        let mut g = [0.0f32; BLOCK];
        let g = &mut g[..n];
        g.copy_from_slice(u);
        let mut scratch = [0.0f32; 2 * BLOCK];
        this.block(i, off, g, &mut scratch, |j, x| u[j] = x);
    });
    /// Block by block: the update of each element goes straight into the parameter (with the
    /// chain's head and tail folded in), then the block's moments are re-quantized.
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        if fold.map.is_some() || fold.post.is_some() {
            // A sign or clip after Adam, an epilogue: rare enough for the general path.
            return crate::transform::step_via_apply(self, i, off, g, p, fold);
        }
        #[inline(always)]
        unsafe fn run(this: &ScaleByAdam8bit, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
            let mut scratch = [0.0f32; 3 * BLOCK];
            let (scratch, mapped) = scratch.split_at_mut(2 * BLOCK);
            for (k, (pb, gb)) in p.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).enumerate() {
                let (o, n) = (off + k * BLOCK, pb.len());
                let gb = match fold.head {
                    None => gb,
                    head => {
                        start_inline(&mut mapped[..n], gb, pb, head);
                        &mapped[..n]
                    }
                };
                match fold.tail {
                    None => this.block(i, o, gb, scratch, |j, x| pb[j] += x),
                    Some(Affine { a, b: 0.0 }) => this.block(i, o, gb, scratch, |j, x| pb[j] += a * x),
                    Some(Affine { a, b }) => this.block(i, o, gb, scratch, |j, x| pb[j] += a * x + b * pb[j]),
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn run_avx2(this: &ScaleByAdam8bit, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
                run(this, i, off, g, p, fold)
            }
            if super::has_avx2() {
                return run_avx2(self, i, off, g, p, fold);
            }
        }
        run(self, i, off, g, p, fold)
    }
}

impl ScaleByAdam8bit {
    /// The new moments `(m, √v)` and the update of one element, from its gradient and its stored
    /// moments.
    #[inline(always)]
    fn element(&self, g: f32, m: f32, sv: f32) -> (f32, f32, f32) {
        let (b1, b2) = (self.b1, self.b2);
        let m = (1.0 - b1) * g + b1 * m;
        let v = (1.0 - b2) * g * g + b2 * sv * sv;
        // One square root serves the code and the step: √(v·bc₂) = √v·√bc₂.
        let s = v.sqrt();
        (m, s, (m * self.bc1) / (s * self.sqrt_bc2 + self.eps))
    }

    /// One block of parameter `i` (at most [`BLOCK`] elements from `off`, a multiple of it): the
    /// update of element `j` goes to `out(j, u)`. `scratch` holds `2·BLOCK` floats.
    ///
    /// # Safety
    /// As for [`Elementwise::apply`].
    #[inline(always)]
    unsafe fn block(&self, i: usize, off: usize, g: &[f32], scratch: &mut [f32], mut out: impl FnMut(usize, f32)) {
        let n = g.len();
        if self.m.buffers()[i].is_empty() {
            // A small tensor: plain f32 Adam.
            let (m, v) = (self.m32.slice(i, off, n), self.v32.slice(i, off, n));
            for j in 0..n {
                let g = g[j];
                m[j] = (1.0 - self.b1) * g + self.b1 * m[j];
                v[j] = (1.0 - self.b2) * g * g + self.b2 * v[j];
                out(j, (m[j] * self.bc1) / ((v[j] * self.bc2).sqrt() + self.eps));
            }
            return;
        }
        assert!(off.is_multiple_of(BLOCK) && n <= BLOCK, "8-bit state needs BLOCK-aligned blocks");
        let blk = off / BLOCK;
        let (mq, vq) = (self.m.slice(i, off, n), self.v.slice(i, off, n));
        let (ms, vs) = (&mut self.m_scale.slice(i, blk, 1)[0], &mut self.v_scale.slice(i, blk, 1)[0]);
        let (mf, sf) = scratch.split_at_mut(BLOCK);
        let (mf, sf) = (&mut mf[..n], &mut sf[..n]);
        let (msc, vsc) = (*ms, *vs);
        for j in 0..n {
            let (m, s, u) = self.element(g[j], decode_m(mq[j], msc), decode_sqrt_v(vq[j]) * vsc);
            mf[j] = m;
            sf[j] = s;
            out(j, u);
        }
        let (m_max, s_max) = (lane_max_abs(mf), lane_max_abs(sf));
        let inv_m = if m_max > 0.0 { 1.0 / m_max } else { 0.0 };
        let inv_s = if s_max > 0.0 { 1.0 / s_max } else { 0.0 };
        for j in 0..n {
            mq[j] = encode_m(mf[j], inv_m);
            vq[j] = encode_sqrt_v(sf[j] * inv_s);
        }
        *ms = m_max;
        *vs = s_max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The codes written out step by step (exponent, mantissa, cases), against which the
    // branch-free forms above are checked.
    /// The signed 8-bit float code of a first moment `m` in a block whose absolute maximum is
    /// `1/inv`: sign bit, 4 bits of exponent (2⁰ down to 2⁻¹⁴), 3 of mantissa; low bits 0 = zero.
    fn encode_m_ref(m: f32, inv: f32) -> u8 {
        let x = m.abs() * inv;
        let r = x.to_bits().wrapping_add(1 << 19);
        let k = (r >> 23) as i32 - 127;
        let low = if k < -14 || x <= 0.0 { 0 } else { ((((k + 14) as u32) << 3 | ((r >> 20) & 0x7)) + 1).min(127) };
        (low | ((m.to_bits() >> 24) & 0x80)) as u8
    }

    fn decode_m_ref(q: u8, scale: f32) -> f32 {
        let low = (q & 0x7F) as u32;
        if low == 0 {
            return 0.0;
        }
        let c = low - 1;
        let k = (c >> 3) as i32 - 14;
        let x = f32::from_bits((((k + 127) as u32) << 23) | ((c & 0x7) << 20));
        let v = x * scale;
        if q & 0x80 != 0 {
            -v
        } else {
            v
        }
    }

    /// The 8-bit float code of `x = √v / max ∈ [0, 1]`.
    fn encode_sqrt_v_ref(x: f32) -> u8 {
        // Round the mantissa to 4 bits; a carry moves into the exponent by itself.
        let r = x.to_bits().wrapping_add(1 << 18);
        let k = (r >> 23) as i32 - 127;
        if k < -14 || x <= 0.0 {
            0
        } else {
            ((((k + 14) as u32) << 4 | ((r >> 19) & 0xF)) + 1).min(255) as u8
        }
    }

    fn decode_sqrt_v_ref(q: u8) -> f32 {
        if q == 0 {
            return 0.0;
        }
        let c = (q - 1) as u32;
        let k = (c >> 4) as i32 - 14;
        f32::from_bits((((k + 127) as u32) << 23) | ((c & 0xF) << 19))
    }

    #[test]
    fn branch_free_codes_equal_the_step_by_step_ones() {
        for q in 0..=255u8 {
            for scale in [1.0f32, 0.37, 3.5e-3] {
                assert_eq!(decode_m(q, scale).to_bits(), decode_m_ref(q, scale).to_bits(), "{q}");
            }
            assert_eq!(decode_sqrt_v(q).to_bits(), decode_sqrt_v_ref(q).to_bits(), "{q}");
        }
        // Every float in [0, 1.001] with a sparse mantissa walk, both signs, and exact zeros.
        let mut x = 0u32;
        while x <= 1.001f32.to_bits() {
            let f = f32::from_bits(x);
            for inv in [1.0f32, 0.999_999_9] {
                assert_eq!(encode_m(f, inv), encode_m_ref(f, inv), "{f}");
                assert_eq!(encode_m(-f, inv), encode_m_ref(-f, inv), "{f}");
            }
            assert_eq!(encode_sqrt_v(f), encode_sqrt_v_ref(f), "{f}");
            x += 997;
        }
        assert_eq!(encode_m(-0.0, 1.0), encode_m_ref(-0.0, 1.0));
    }

    #[test]
    fn codes_round_trip_within_their_precision() {
        for k in 0..2000 {
            let x = (k as f32 / 2000.0).powi(3);
            let y = decode_sqrt_v(encode_sqrt_v(x));
            if x >= 2f32.powi(-14) {
                assert!((y - x).abs() <= 0.035 * x, "{x} -> {y}");
            } else {
                assert!(y == 0.0 || (y - x).abs() <= 0.035 * x, "{x} -> {y}");
            }
        }
        assert_eq!(decode_sqrt_v(encode_sqrt_v(1.0)), 1.0);
        assert_eq!(encode_sqrt_v(0.0), 0);
        for k in -2000..2000 {
            let m = (k as f32 / 2000.0).powi(3);
            let y = decode_m(encode_m(m, 1.0), 1.0);
            assert!((y - m).abs() <= 0.07 * m.abs() || (y == 0.0 && m.abs() < 2f32.powi(-14)), "{m} -> {y}");
        }
        assert_eq!(decode_m(encode_m(-1.0, 1.0), 1.0), -1.0);
    }
}
