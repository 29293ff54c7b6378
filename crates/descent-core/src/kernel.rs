//! The machinery of fused elementwise steps: the [`Elementwise`] rule and the [`Fold`] of maps a
//! chain puts around it (head, map, affine tail, epilogue), the drivers that run a rule over
//! blocks and chunks across threads, per-parameter state buffers ([`ParamBufs`]), deterministic
//! sums of squares, and the run-time dispatch to AVX2 + FMA builds ([`has_avx2`]).
//!
//! A step reads and writes each buffer once: the kernel runs on L1-sized sub-blocks and its
//! result is added into the parameters in the same pass.

use crate::learning_rate::LearningRate;
use rayon::prelude::*;

/// The run-time dispatch of a kernel: calls `$f($args)` compiled for AVX2 + FMA when the CPU
/// has them and [`set_simd`] allows, the portable build otherwise, and returns its value from the
/// enclosing function. `$f` must be `#[inline(always)]` so that its body is compiled into the
/// AVX2 build; the arguments come with their types because that build is a function of its own.
/// `unsafe $f(…)` calls an unsafe `$f` (the caller's contract covers it).
macro_rules! dispatch_simd {
    // `wide`: the AVX-512 build first where the CPU has it, for compute-bound kernels (a cube
    // root, an exp per value). Streaming kernels stay on AVX2: their 64-byte loads, most of them
    // across two cache lines, measured 5–10% slower from memory (AdamW, Yogi, SGD, Adafactor).
    (wide unsafe $f:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            unsafe fn avx512($($a: $t),*) $(-> $r)? {
                unsafe { $f($($a),*) }
            }
            if $crate::kernel::has_avx512() {
                // SAFETY: the CPU supports AVX-512; the caller upholds `$f`'s contract.
                return unsafe { avx512($($a),*) };
            }
        }
        $crate::kernel::dispatch_simd!(unsafe $f($($a: $t),*) $(-> $r)?)
    }};
    (unsafe $f:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) $(-> $r)? {
                unsafe { $f($($a),*) }
            }
            if $crate::kernel::has_avx2() {
                // SAFETY: the CPU supports AVX2 and FMA; the caller upholds `$f`'s contract.
                return unsafe { avx2($($a),*) };
            }
        }
        unsafe { $f($($a),*) }
    }};
    ($f:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) $(-> $r)? {
                $f($($a),*)
            }
            if $crate::kernel::has_avx2() {
                // SAFETY: the CPU supports AVX2 and FMA.
                return unsafe { avx2($($a),*) };
            }
        }
        $f($($a),*)
    }};
}
pub(crate) use dispatch_simd;

/// `x` clipped to `[lo, hi]` the way `torch.clamp` and `jnp.clip` do it, `min(max(x, lo), hi)`:
/// a NaN stays NaN, and bounds given the wrong way round (`lo > hi`, a user's `step_sizes` or a
/// negative `max_delta`) give `hi` instead of the panic of `f32::clamp`. The same value as
/// `f32::clamp` whenever `lo ≤ hi`.
#[inline(always)]
pub(crate) fn clip(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

/// Number of elements processed by every link of an elementwise chain before moving on.
pub const BLOCK: usize = 2048;

/// Elements per pass of a kernel's fused step: every buffer's slice of it stays in L1.
pub const SUB_BLOCK: usize = 64;

/// Elements per task when a tensor is split across threads.
pub const CHUNK: usize = 64 * 1024;

/// Tensors smaller than this stay on the calling thread (no pool overhead for a bias).
pub const PARALLEL_MIN: usize = 2 * CHUNK;

/// A transformation whose update of element `j` reads only element `j` of each buffer.
pub trait Elementwise: Sync {
    /// Called once per step before any `apply`: advance counters, compute per-step scalars.
    fn begin_step(&mut self);
    /// Visits the learning rates this rule holds (see [`crate::Transform::visit_learning_rates`]).
    fn visit_learning_rates(&mut self, _f: &mut dyn FnMut(&mut LearningRate)) {}
    /// Transforms `u` (elements `off..off+u.len()` of parameter `i`) in place; `p` is the same slice
    /// of the parameter. Several threads may call it at once on different ranges. The drivers call
    /// it on blocks of at most [`BLOCK`] elements starting at multiples of [`BLOCK`] (block-wise
    /// quantized state relies on this).
    ///
    /// # Safety
    /// Concurrent calls must cover disjoint element ranges of each parameter, within its bounds.
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]);
    /// Whether `apply` and `step` must be given whole blocks of [`BLOCK`] elements starting at
    /// multiples of it (block-wise quantized state does; so does, by default, any rule not known
    /// otherwise). Rules that read and write element `j` at offset `j` alone say `false`, and a
    /// chain of them runs its links on the first one's sub-blocks, which stay in L1.
    fn needs_whole_blocks(&self) -> bool {
        true
    }
    /// Prefetches elements `off..off + n` of parameter `i` in every per-parameter buffer `apply`
    /// reads ([`PrefetchState`]), for a caller that runs `apply` on memory-bound sub-blocks: a
    /// chain's links after its first. Nothing by default.
    fn prefetch_state_of(&self, _i: usize, _off: usize, _n: usize) {}
    /// Whether the rule needs a reduction of its input (a global norm) before the elementwise pass.
    /// Such a transformation stays fusable only at the head of a chain, where its input is the
    /// gradient itself.
    fn needs_prepare(&self) -> bool {
        false
    }
    /// Reads the input (what `apply` will receive as `u`) before `begin_step`.
    fn prepare(&mut self, _inputs: &[&[f32]], _params: &[&[f32]]) {}
    /// [`Elementwise::prepare`] for the input `heads[i](grads[i])`, a chain's head map of the
    /// gradients: rules override it to read the gradients without materializing the map.
    fn prepare_mapped(&mut self, grads: &[&[f32]], params: &[&[f32]], heads: &[Option<Head>]) {
        let mapped: Vec<Vec<f32>> = grads
            .iter()
            .zip(params)
            .zip(heads)
            .map(|((g, p), h)| {
                let mut u = vec![0.0; g.len()];
                start(&mut u, g, p, *h);
                u
            })
            .collect();
        let inputs: Vec<&[f32]> = mapped.iter().map(|u| u.as_slice()).collect();
        self.prepare(&inputs, params);
    }
    /// Whether the reduction `prepare` takes is, for each tensor, the pair `(Σp², Σu²)` of its
    /// parameters and its input (the trust ratio), so that the pass writing the input can sum
    /// them while each block is in cache and hand them to [`Elementwise::prepare_from_norms`].
    fn takes_norms(&self) -> bool {
        false
    }
    /// [`Elementwise::prepare`] from each tensor's `(Σp², Σu²)`, summed as
    /// [`global_sum_sq_pair`] sums them (the same bits).
    fn prepare_from_norms(&mut self, _norms: &[(f64, f64)]) {
        unreachable!("prepare_from_norms without takes_norms")
    }
    /// For a rule `u ← α·u + β·p` with per-step, per-parameter `α`, `β` (scaling, weight decay,
    /// trust ratios): `(α, β)` for parameter `i` this step, after `begin_step`. A chain folds a run
    /// of such links into one pass.
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        None
    }
    /// The rule as a map of the incoming update alone (`u ← a·u + b·p`, or clipping), which a
    /// chain folds into the copy of the gradient ahead of its kernel. Affine rules by default.
    fn head(&self, i: usize) -> Option<Head> {
        self.affine(i).map(|(a, b)| Head::affine(a, b))
    }
    /// One fused optimizer step on elements `off..off+p.len()` of parameter `i`:
    /// `p ← p + tail(rule(head(g)))`, with `head` and `tail` the maps a chain folds around this
    /// rule (identity when `None`). `off` is a multiple of [`BLOCK`]. The default runs `apply` on
    /// block-sized copies of `g`; kernels override it with a loop that keeps each sub-block in L1.
    ///
    /// # Safety
    /// As for [`Elementwise::apply`]; `g.len() == p.len()`.
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        step_via_apply(self, i, off, g, p, fold)
    }
    /// [`Elementwise::step`] as the rule's own single loop over its buffers, for a rule so light
    /// that the sub-block scratch of the generic step would cost more than the rule itself (plain
    /// SGD, momentum): the same operations in the same order, so the same bits. Returns `false`,
    /// having done nothing, where the rule has no such loop for this `fold`.
    ///
    /// # Safety
    /// As for [`Elementwise::step`].
    unsafe fn step_plain(&self, _i: usize, _off: usize, _g: &[f32], _p: &mut [f32], _fold: &Fold) -> bool {
        false
    }
    /// The rule as a pointwise map of the update alone (sign, clipping), which a chain folds
    /// between its kernel and its affine tail.
    fn map(&self, _i: usize) -> Option<Map> {
        None
    }
}

/// [`Elementwise::step`] through `apply`: block-sized copies of `g`, transformed, added to `p`.
///
/// # Safety
/// As for [`Elementwise::step`].
pub(crate) unsafe fn step_via_apply<E: Elementwise + ?Sized>(
    e: &E,
    i: usize,
    off: usize,
    g: &[f32],
    p: &mut [f32],
    fold: Fold,
) {
    let mut scratch = [0.0f32; BLOCK];
    for (k, (pb, gb)) in p.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).enumerate() {
        let u = &mut scratch[..pb.len()];
        start(u, gb, pb, fold.head);
        e.apply(i, off + k * BLOCK, u, pb);
        finish_fold(pb, u, &fold, i, off + k * BLOCK);
    }
}

/// The composition of affine rules, `u ← a·u + b·p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    /// The factor of the update.
    pub a: f32,
    /// The factor of the parameter.
    pub b: f32,
}

/// A map of the gradient alone that a chain applies ahead of its kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Head {
    /// `u ← s₂·(s₁·(a·g + b·p))`, in that order (weight decay, then trust ratio and learning
    /// rate: each link rounds as it would alone). A scale of 1 is no scaling.
    Affine {
        /// The affine map.
        map: Affine,
        /// Scalars multiplying the result, applied in order (1 when unused).
        scales: [f32; 2],
    },
    /// `u ← clamp(g, −δ, δ)` (optax `clip`).
    Clip(f32),
}

impl Head {
    /// `u ← a·g + b·p`.
    pub fn affine(a: f32, b: f32) -> Head {
        Head::Affine { map: Affine { a, b }, scales: [1.0, 1.0] }
    }
    /// This map followed by the link `u ← a·u + b·p`, if it can be written as one head.
    pub(crate) fn then(self, a: f32, b: f32) -> Option<Head> {
        match self {
            Head::Affine { map, scales: [s1, s2] } if b == 0.0 => match (s1 == 1.0, s2 == 1.0) {
                (true, _) => Some(Head::Affine { map, scales: [a, s2] }),
                (false, true) => Some(Head::Affine { map, scales: [s1, a] }),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A pointwise map of the update that a chain applies between its kernel and its tail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Map {
    /// `u ← sign(u)` (optax `scale_by_sign`).
    Sign,
    /// `u ← clamp(u, −δ, δ)` (optax `clip`).
    Clip(f32),
}

/// The maps folded around a rule's fused step: `head` on the gradient, then `map` and `tail` on
/// the update, and `post` in place of the final `p ← p + u`.
#[derive(Clone, Copy, Default)]
pub struct Fold<'a> {
    /// The map of the gradient ahead of the kernel.
    pub head: Option<Head>,
    /// The pointwise map after the kernel.
    pub map: Option<Map>,
    /// The affine map after that.
    pub tail: Option<Affine>,
    /// What writes the result into the parameters instead of `p += u` (Schedule-Free).
    pub post: Option<&'a dyn Epilogue>,
    /// Whether the step prefetches the gradient and the parameters ahead of its sub-blocks (the
    /// tensor streams from memory; see [`PREFETCH_MIN`]).
    pub prefetch: bool,
}

impl Fold<'_> {
    /// Whether nothing is folded around the rule: its step is `p ← p + rule(g)`.
    pub fn is_plain(&self) -> bool {
        self.head.is_none() && self.map.is_none() && self.tail.is_none() && self.post.is_none()
    }
    /// Nothing folded, for a step over a tensor of `n` elements: it prefetches when the tensor is
    /// at least [`PREFETCH_MIN`] long.
    pub fn for_len(n: usize) -> Self {
        Fold { prefetch: n >= PREFETCH_MIN, ..Fold::default() }
    }
}

/// A rule that ends a fused step in place of `p ← p + u` (Schedule-Free's interpolation between
/// its sequences), called once per sub-block.
pub trait Epilogue: Sync {
    /// Moves elements `off..off+p.len()` of parameter `i` by the final update `u`.
    ///
    /// # Safety
    /// As for [`Elementwise::apply`].
    unsafe fn finish(&self, i: usize, off: usize, u: &mut [f32], p: &mut [f32]);
}

/// The end of a fused step on elements `off..` of parameter `i`: [`finish_inline`], or the map
/// and tail applied to `u` and the fold's epilogue.
///
/// # Safety
/// As for [`Elementwise::apply`].
#[inline(always)]
pub unsafe fn finish_fold(p: &mut [f32], u: &mut [f32], fold: &Fold, i: usize, off: usize) {
    let Some(post) = fold.post else {
        return finish_inline(p, u, fold.map, fold.tail);
    };
    let u = &mut u[..p.len()];
    map_inline(u, fold.map);
    if let Some(Affine { a, b }) = fold.tail {
        affine_inline(u, p, a, b);
    }
    post.finish(i, off, u, p);
}

/// `u ← head(g)`: the first operation of a fused step, vectorized for the CPU at hand.
pub fn start(u: &mut [f32], g: &[f32], p: &[f32], head: Option<Head>) {
    dispatch_simd!(start_inline(u: &mut [f32], g: &[f32], p: &[f32], head: Option<Head>))
}

/// [`start`] for inlining into a kernel compiled for a given target. Gives the bits of the rules
/// it stands for (`1·g` is `g`; a zero `b` multiplies nothing by `p`).
#[inline(always)]
pub fn start_inline(u: &mut [f32], g: &[f32], p: &[f32], head: Option<Head>) {
    let (g, p) = (&g[..u.len()], &p[..u.len()]);
    match head {
        None => u.copy_from_slice(g),
        Some(Head::Affine { map: Affine { a, b }, scales }) => {
            if b == 0.0 {
                u.iter_mut().zip(g).for_each(|(x, g)| *x = g * a);
            } else {
                u.iter_mut().zip(g).zip(p).for_each(|((x, g), w)| *x = a * g + b * w);
            }
            for s in scales {
                if s != 1.0 {
                    u.iter_mut().for_each(|x| *x *= s);
                }
            }
        }
        Some(Head::Clip(d)) => u.iter_mut().zip(g).for_each(|(x, g)| *x = clip(*g, -d, d)),
    }
}

/// `p ← p + tail(map(u))`: the last operation of a fused step (identity `map` and `tail` when
/// `None`), inlined into a kernel compiled for a given target. Gives the bits of `u ← map(u)`,
/// `u ← a·u + b·p`, `p ← p + u`.
#[inline(always)]
pub fn finish_inline(p: &mut [f32], u: &mut [f32], map: Option<Map>, tail: Option<Affine>) {
    let u = &mut u[..p.len()];
    map_inline(u, map);
    match tail {
        None => p.iter_mut().zip(u).for_each(|(x, d)| *x += *d),
        // A zero `b` multiplies nothing by `p` (an infinite parameter stays infinite, not NaN).
        Some(Affine { a, b: 0.0 }) => p.iter_mut().zip(u).for_each(|(x, d)| *x += a * *d),
        Some(Affine { a, b }) => p.iter_mut().zip(u).for_each(|(x, d)| *x += a * *d + b * *x),
    }
}

/// `p ← p + tail(map(head(g)))` for a chain of maps alone (plain SGD, sign SGD), in sub-blocks
/// that stay in L1, vectorized for the CPU at hand.
///
/// # Safety
/// As for [`Elementwise::step`].
pub(crate) unsafe fn pointwise_step(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
    if let Some(a) = AffineFold::of(&fold) {
        return affine_step(g, p, a);
    }
    #[inline(always)]
    unsafe fn run<const PREFETCH: bool>(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        let mut scratch = [0.0f32; SUB_BLOCK];
        for (k, (pb, gb)) in p.chunks_mut(SUB_BLOCK).zip(g.chunks(SUB_BLOCK)).enumerate() {
            if PREFETCH {
                prefetch_range(g, k * SUB_BLOCK + PREFETCH_AHEAD, SUB_BLOCK);
                // `p` from this sub-block on: `g.len() - k·SUB_BLOCK` elements.
                prefetch_raw(pb.as_ptr(), g.len() - k * SUB_BLOCK, PREFETCH_AHEAD, SUB_BLOCK);
            }
            let u = &mut scratch[..pb.len()];
            start_inline(u, gb, pb, fold.head);
            finish_fold(pb, u, &fold, i, off + k * SUB_BLOCK);
        }
    }
    #[inline(always)]
    unsafe fn streaming(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        run::<true>(i, off, g, p, fold)
    }
    #[inline(always)]
    unsafe fn cached(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        run::<false>(i, off, g, p, fold)
    }
    if fold.prefetch {
        dispatch_simd!(unsafe streaming(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold))
    }
    dispatch_simd!(unsafe cached(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold))
}

/// [`pointwise_step`] of affine maps alone (`p ← p + tail(head(g))`: plain SGD through a chain,
/// the second pass of LAMB) as one loop: the operations of [`start_inline`] and [`finish_inline`]
/// in their order, a scale of 1 multiplying exactly; the sub-block scratch's passes were most of
/// the work.
fn affine_step(g: &[f32], p: &mut [f32], a: AffineFold) {
    #[inline(always)]
    fn run<const HEAD_P: bool, const TAIL_P: bool>(p: &mut [f32], g: &[f32], a: AffineFold) {
        let g = &g[..p.len()];
        for (w, &g) in p.iter_mut().zip(g) {
            let u = a.start::<HEAD_P>(g, *w);
            *w += a.tail_of::<TAIL_P>(u, *w);
        }
    }
    macro_rules! variant {
        ($hp:literal, $tp:literal) => {{
            #[inline(never)]
            fn go(p: &mut [f32], g: &[f32], a: AffineFold) {
                #[inline(always)]
                fn body(p: &mut [f32], g: &[f32], a: AffineFold) {
                    run::<$hp, $tp>(p, g, a)
                }
                dispatch_simd!(body(p: &mut [f32], g: &[f32], a: AffineFold))
            }
            go
        }};
    }
    type Loop = fn(&mut [f32], &[f32], AffineFold);
    let f: Loop = match (a.head.b != 0.0, a.tail.b != 0.0) {
        (false, false) => variant!(false, false),
        (false, true) => variant!(false, true),
        (true, false) => variant!(true, false),
        (true, true) => variant!(true, true),
    };
    f(p, g, a)
}

/// A fold of affine maps alone around a rule (no map, no epilogue, no clipping head), for the
/// single loops that stand for the sub-block scratch ([`affine_step`], momentum's
/// `step_plain`): absent maps are identities, which give the same bits (`1·x` is `x`).
#[derive(Clone, Copy)]
pub(crate) struct AffineFold {
    /// The head's affine map of the gradient and the parameter, then its two scalings.
    pub(crate) head: Affine,
    pub(crate) scales: [f32; 2],
    /// The tail: `p ← p + (a·u + b·p)`.
    pub(crate) tail: Affine,
}

impl AffineFold {
    /// `fold` as affine maps, or `None` where it holds anything else.
    pub(crate) fn of(fold: &Fold) -> Option<AffineFold> {
        if fold.post.is_some() || fold.map.is_some() {
            return None;
        }
        let (head, scales) = match fold.head {
            None => (Affine { a: 1.0, b: 0.0 }, [1.0, 1.0]),
            Some(Head::Affine { map, scales }) => (map, scales),
            Some(Head::Clip(_)) => return None,
        };
        Some(AffineFold { head, scales, tail: fold.tail.unwrap_or(Affine { a: 1.0, b: 0.0 }) })
    }
    /// [`start_inline`] of one gradient value `g` at parameter `w` (`HEAD_P`: the head's `b` is
    /// not 0).
    #[inline(always)]
    pub(crate) fn start<const HEAD_P: bool>(&self, g: f32, w: f32) -> f32 {
        let mut u = if HEAD_P { self.head.a * g + self.head.b * w } else { g * self.head.a };
        u *= self.scales[0];
        u *= self.scales[1];
        u
    }
    /// What [`finish_inline`] adds to the parameter `w` for the update `u` (`TAIL_P`: the
    /// tail's `b` is not 0).
    #[inline(always)]
    pub(crate) fn tail_of<const TAIL_P: bool>(&self, u: f32, w: f32) -> f32 {
        if TAIL_P {
            self.tail.a * u + self.tail.b * w
        } else {
            self.tail.a * u
        }
    }
}

/// How far ahead of the sub-block it works on a fused step prefetches each buffer, in elements.
///
/// The hardware prefetchers alone keep too few lines in flight for a loop over several streams
/// from memory: on a Sapphire Rapids core, 50 M parameters, plain SGD and Yogi reached 60–77%
/// of the roofline without this and 75–92% with it, AdamW 83% and 86–98%.
pub const PREFETCH_AHEAD: usize = 1024;

/// The tensor length from which fused steps prefetch (4 Mi elements, 16 MiB a buffer). Below it
/// the buffers come from cache and the prefetches only cost instructions: AdamW on 2 M
/// parameters and 2 threads ran 3–15% slower with them, on 4 M 20% faster.
pub const PREFETCH_MIN: usize = 1 << 22;

/// Prefetches into L1 the cache lines of elements `off..off + n` of `x`, none past its end.
#[inline(always)]
pub fn prefetch_range<T>(x: &[T], off: usize, n: usize) {
    prefetch_raw(x.as_ptr(), x.len(), off, n)
}

/// [`prefetch_range`] of the `len` elements at `base` (a buffer borrowed elsewhere).
#[inline(always)]
pub fn prefetch_raw<T>(base: *const T, len: usize, off: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
        let end = len.min(off + n);
        let mut j = off;
        while j < end {
            // SAFETY: a prefetch is a hint that never faults; `j < len` keeps it inside the buffer.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(j) as *const i8) };
            j += step;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, len, off, n);
}

/// Buffers a fused step prefetches ahead of the sub-block it works on.
pub trait Prefetch {
    /// Prefetches elements `off..off + n` of parameter `i`'s buffer (nothing when there is none).
    fn prefetch(&self, i: usize, off: usize, n: usize);
}
impl<T> Prefetch for ParamBufs<T> {
    #[inline(always)]
    fn prefetch(&self, i: usize, off: usize, n: usize) {
        if let Some(b) = self.data.get(i) {
            prefetch_range(b, off, n);
        }
    }
}
impl Prefetch for Vec<ParamBufs> {
    #[inline(always)]
    fn prefetch(&self, i: usize, off: usize, n: usize) {
        self.iter().for_each(|b| b.prefetch(i, off, n));
    }
}
impl Prefetch for Vec<Vec<f32>> {
    #[inline(always)]
    fn prefetch(&self, i: usize, off: usize, n: usize) {
        if let Some(b) = self.get(i) {
            prefetch_range(b, off, n);
        }
    }
}

/// The state a rule's fused step prefetches when its tensor streams from memory
/// ([`Fold::prefetch`]): every per-parameter buffer it reads element by element.
pub trait PrefetchState {
    /// Prefetches elements `off..off + n` of parameter `i` in every state buffer.
    fn prefetch_state(&self, i: usize, off: usize, n: usize);
}

/// `updates ← grads`, split across threads for large tensors.
pub(crate) fn copy_into(updates: &mut [Vec<f32>], grads: &[&[f32]]) {
    for (u, g) in updates.iter_mut().zip(grads) {
        for_blocks(u, |off, b| b.copy_from_slice(&g[off..off + b.len()]));
    }
}

/// `updates ← run(input)` block by block, the input being the gradients (`from_grads`) or the
/// updates themselves.
pub(crate) fn apply_into(
    run: &dyn Elementwise,
    updates: &mut [Vec<f32>],
    grads: &[&[f32]],
    params: &[&[f32]],
    from_grads: bool,
) {
    for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
        let g = grads[i];
        // SAFETY: `for_blocks` hands out disjoint blocks of parameter `i`.
        for_blocks(u, |off, ub| unsafe {
            if from_grads {
                ub.copy_from_slice(&g[off..off + ub.len()]);
            }
            run.apply(i, off, ub, &p[off..off + ub.len()])
        });
    }
}

/// `(Σp², Σu²)` of sub-blocks added in order (the lanes of [`sum_sq`]), dispatched to the
/// AVX2 build where the CPU has it.
pub(crate) fn add_sum_sq2(sp: &mut SumSq, su: &mut SumSq, p: &[f32], u: &[f32]) {
    #[inline(always)]
    fn body(sp: &mut SumSq, su: &mut SumSq, p: &[f32], u: &[f32]) {
        SumSq::add_pair(sp, su, p, u);
    }
    dispatch_simd!(body(sp: &mut SumSq, su: &mut SumSq, p: &[f32], u: &[f32]))
}

/// The end of a fused step that writes its update `u` into a buffer instead of adding it to the
/// parameters, and sums `(Σp², Σu²)` of the sub-blocks it sees, in order: one task's chunk.
struct WriteAndSum {
    /// Element 0 of the parameter's update buffer.
    out: *mut f32,
    /// Whether the buffer is written with non-temporal stores ([`stream_copy`]).
    streaming: bool,
    sums: std::cell::UnsafeCell<(SumSq, SumSq)>,
}
// SAFETY: each task builds its own and hands it only to its own chunk's step.
unsafe impl Sync for WriteAndSum {}
impl Epilogue for WriteAndSum {
    unsafe fn finish(&self, _i: usize, off: usize, u: &mut [f32], p: &mut [f32]) {
        if !(self.streaming && stream_copy(self.out.add(off), u)) {
            std::ptr::copy_nonoverlapping(u.as_ptr(), self.out.add(off), u.len());
        }
        let (sp, su) = &mut *self.sums.get();
        add_sum_sq2(sp, su, p, u);
    }
}

/// Copies `src` to `dst` with non-temporal stores, which do not read the destination's lines
/// into the cache first (a buffer written whole and read back a pass later, from memory: LAMB's
/// updates), where `dst` is 16-byte aligned (what the system allocator gives a large buffer) and
/// `src` a multiple of 4 values; `false`, having written nothing, otherwise. The writer calls
/// [`store_fence`] before another thread reads the buffer.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` values.
unsafe fn stream_copy(dst: *mut f32, src: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        if (dst as usize).is_multiple_of(16) && src.len().is_multiple_of(4) {
            for k in (0..src.len()).step_by(4) {
                // SAFETY: `k + 4 ≤ src.len()` (a multiple of 4), `dst + k` 16-byte aligned and
                // valid for 4 writes (the caller's); SSE is part of x86-64.
                unsafe { _mm_stream_ps(dst.add(k), _mm_loadu_ps(src.as_ptr().add(k))) };
            }
            return true;
        }
    }
    let _ = (dst, src);
    false
}

/// Orders this thread's non-temporal stores ([`stream_copy`]) before its later stores, so that a
/// thread that synchronizes with it afterwards reads them.
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// A buffer that the chunks of [`chunked_sums_mut`] (or other tasks) write in disjoint ranges.
pub(crate) struct SendPtr(*mut f32);
// SAFETY: the tasks write disjoint ranges through it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The buffer, to be written in disjoint ranges.
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        SendPtr(buf.as_mut_ptr())
    }
    /// The pointer (a method, so that closures capture the wrapper, not its field).
    fn get(&self) -> *mut f32 {
        self.0
    }
    /// Elements `off..off + n` of the buffer.
    ///
    /// # Safety
    /// The range lies in the buffer, which outlives the slice, and no other live reference
    /// overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice<'a>(&self, off: usize, n: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), n)
    }
}

/// `(Σ part.0, Σ part.1)` of `part(base, chunk)` over the [`CHUNK`]-sized chunks of `data` (`base`
/// the chunk's offset), across threads for a large buffer, the parts added in chunk order: the
/// same value on any number of threads. The fused passes that write a tensor and sum over it on
/// the way (norms, Prodigy's and D-Adaptation's estimates, Lamb's trust ratio) share it.
pub(crate) fn chunked_sums_mut<T: Send>(
    data: &mut [T],
    part: impl Fn(usize, &mut [T]) -> (f64, f64) + Sync,
) -> (f64, f64) {
    let parts: Vec<(f64, f64)> = if data.len() >= PARALLEL_MIN {
        data.par_chunks_mut(CHUNK).enumerate().map(|(c, chunk)| part(c * CHUNK, chunk)).collect()
    } else {
        data.chunks_mut(CHUNK).enumerate().map(|(c, chunk)| part(c * CHUNK, chunk)).collect()
    };
    (parts.iter().map(|x| x.0).sum::<f64>(), parts.iter().map(|x| x.1).sum::<f64>())
}

/// `updates ← run(grads)` as the run's fused step (every buffer streaming at once, sub-block by
/// sub-block, as in a step into the parameters), the parameters left as they are, returning each
/// tensor's `(Σp², Σu²)` summed on the way: bit for bit the updates of [`apply_into`] and the
/// norms of [`global_sum_sq_pair`]`(p, u, None)` (the same chunks, sub-blocks in order).
pub(crate) fn step_into_norms(
    run: &dyn Elementwise,
    params: &mut [&mut [f32]],
    grads: &[&[f32]],
    updates: &mut [Vec<f32>],
) -> Vec<(f64, f64)> {
    let mut norms = Vec::with_capacity(params.len());
    for (i, p) in params.iter_mut().enumerate() {
        let g = grads[i];
        let out = SendPtr(updates[i].as_mut_ptr());
        assert_eq!(updates[i].len(), p.len(), "an update buffer per parameter");
        // A tensor that streams from memory: its updates are read back from memory too.
        let streaming = g.len() >= PREFETCH_MIN;
        let part = |base: usize, chunk: &mut [f32]| -> (f64, f64) {
            let w = WriteAndSum { out: out.get(), streaming, sums: Default::default() };
            let fold = Fold { post: Some(&w), ..Fold::for_len(g.len()) };
            // SAFETY: chunks are disjoint ranges of parameter `i`; the epilogue writes the same
            // range of its update buffer, and leaves the parameters unchanged.
            unsafe { run.step(i, base, &g[base..base + chunk.len()], chunk, fold) };
            if streaming {
                store_fence();
            }
            let (sp, su) = w.sums.into_inner();
            (sp.total(), su.total())
        };
        norms.push(chunked_sums_mut(p, part));
    }
    norms
}

/// [`apply_into`], returning each tensor's `(Σp², Σu²)` of the parameters and the new updates,
/// summed block by block while each is in L1: bit for bit [`global_sum_sq_pair`]`(p, u, None)`
/// (the same chunks, blocks in the same order), without a second read of either buffer.
pub(crate) fn apply_into_norms(
    run: &dyn Elementwise,
    updates: &mut [Vec<f32>],
    grads: &[&[f32]],
    params: &[&[f32]],
    from_grads: bool,
) -> Vec<(f64, f64)> {
    let mut norms = Vec::with_capacity(updates.len());
    for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
        let g = grads[i];
        let part = |base: usize, chunk: &mut [f32]| -> (f64, f64) {
            let (mut sp, mut su) = (SumSq::default(), SumSq::default());
            for (k, ub) in chunk.chunks_mut(BLOCK).enumerate() {
                let off = base + k * BLOCK;
                let pb = &p[off..off + ub.len()];
                if from_grads {
                    ub.copy_from_slice(&g[off..off + ub.len()]);
                }
                // SAFETY: the chunks, and their blocks, are disjoint ranges of parameter `i`.
                unsafe { run.apply(i, off, ub, pb) };
                add_sum_sq2(&mut sp, &mut su, pb, ub);
            }
            (sp.total(), su.total())
        };
        norms.push(chunked_sums_mut(u, part));
    }
    norms
}

/// `p += u` for every parameter, split across threads for large ones.
pub(crate) fn add_updates<U: AsRef<[f32]> + Sync>(params: &mut [&mut [f32]], updates: &[U]) {
    for (p, u) in params.iter_mut().zip(updates) {
        let u = u.as_ref();
        for_blocks(p, |off, b| add_assign(b, &u[off..off + b.len()]));
    }
}

/// Runs `f(off, chunk)` over `data` in chunks of [`CHUNK`], across threads when the buffer is
/// large, on the calling thread otherwise.
pub(crate) fn for_chunks<T: Send, F>(data: &mut [T], f: F)
where
    F: Fn(usize, &mut [T]) + Sync,
{
    if data.len() >= PARALLEL_MIN {
        data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| f(c * CHUNK, chunk));
    } else {
        for (c, chunk) in data.chunks_mut(CHUNK).enumerate() {
            f(c * CHUNK, chunk);
        }
    }
}

/// Runs `f(off, block)` over `data` in blocks of [`BLOCK`], splitting large buffers across threads
/// in chunks of [`CHUNK`].
pub(crate) fn for_blocks<T: Send, F>(data: &mut [T], f: F)
where
    F: Fn(usize, &mut [T]) + Sync,
{
    for_chunks(data, |base, chunk| {
        for (k, b) in chunk.chunks_mut(BLOCK).enumerate() {
            f(base + k * BLOCK, b);
        }
    });
}

/// [`global_sum_sq`] of one tensor's `head(g)`, without materializing it (bit for bit the same).
pub fn global_sum_sq_mapped(g: &[f32], p: &[f32], head: Option<Head>) -> f64 {
    chunked_sum(g.len(), |r| crate::transforms::sum_sq_mapped(&g[r.clone()], &p[r], head))
}

/// The squared L2 norm of all buffers together, computed in `f64` over fixed chunks and summed in
/// order, so the result does not depend on the number of threads.
pub fn global_sum_sq(bufs: &[&[f32]]) -> f64 {
    bufs.iter().map(|b| chunked_sum(b.len(), |r| crate::transforms::sum_sq(&b[r]))).sum()
}

/// `Σ a·b` over all parameters, each product and the sum in `f64`, tensor after tensor in order
/// (optax's `tree_vdot` in double precision).
pub(crate) fn vdot(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>()).sum()
}

/// `(Σ p², Σ head(g)²)` of one tensor in a single pass over both buffers: each bit for bit
/// [`global_sum_sq`] of `p` and [`global_sum_sq_mapped`] of `g` (the same chunks, the same lanes,
/// summed in the same order), at the cost of one read of each.
pub fn global_sum_sq_pair(p: &[f32], g: &[f32], head: Option<Head>) -> (f64, f64) {
    chunked_sum2(g.len(), |r| sum_sq_pair(&p[r.clone()], &g[r], head))
}

/// [`chunked_sum`] of two parts at once: `(Σ part(chunk).0, Σ part(chunk).1)`, each added in
/// chunk order as [`chunked_sum`] adds them.
pub(crate) fn chunked_sum2(n: usize, part: impl Fn(std::ops::Range<usize>) -> (f64, f64) + Sync) -> (f64, f64) {
    let range = |c: usize| c * CHUNK..n.min((c + 1) * CHUNK);
    let chunks = n.div_ceil(CHUNK);
    let parts: Vec<(f64, f64)> = if n >= PARALLEL_MIN {
        (0..chunks).into_par_iter().map(|c| part(range(c))).collect()
    } else {
        (0..chunks).map(|c| part(range(c))).collect()
    };
    (parts.iter().map(|x| x.0).sum::<f64>(), parts.iter().map(|x| x.1).sum::<f64>())
}

/// `Σ part(chunk)` over the [`CHUNK`]-sized ranges of `0..n`, the parts computed across threads
/// for large `n` and added in order.
pub(crate) fn chunked_sum(n: usize, part: impl Fn(std::ops::Range<usize>) -> f64 + Sync) -> f64 {
    let range = |c: usize| c * CHUNK..n.min((c + 1) * CHUNK);
    let chunks = n.div_ceil(CHUNK);
    let parts: Vec<f64> = if n >= PARALLEL_MIN {
        (0..chunks).into_par_iter().map(|c| part(range(c))).collect()
    } else {
        (0..chunks).map(|c| part(range(c))).collect()
    };
    parts.iter().sum::<f64>()
}

/// Applies an elementwise transformation to all updates: block by block, large tensors split
/// across threads.
pub fn run_elementwise(e: &dyn Elementwise, updates: &mut [Vec<f32>], params: &[&[f32]]) {
    for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
        // SAFETY: `for_blocks` hands out disjoint blocks of parameter `i`.
        for_blocks(u, |off, ub| unsafe { e.apply(i, off, ub, &p[off..off + ub.len()]) });
    }
}

/// One fused pass for an elementwise optimizer: each chunk of each parameter goes through the
/// rule's [`Elementwise::step`], so a step reads the gradient, the state and the parameters once
/// and writes the state and the parameters once.
pub(crate) fn fused_step(e: &dyn Elementwise, params: &mut [&mut [f32]], grads: &[&[f32]]) {
    for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
        // SAFETY: chunks are disjoint ranges of parameter `i`, each with its own gradient range.
        let fold = Fold::for_len(p.len());
        for_chunks(p, |base, chunk| unsafe { e.step(i, base, &g[base..base + chunk.len()], chunk, fold) });
    }
}

/// `p += u`, vectorized for the CPU at hand (the fused step's last operation; benchmarks use it as
/// the roofline's arithmetic).
pub fn add_assign(p: &mut [f32], u: &[f32]) {
    #[inline(always)]
    fn body(p: &mut [f32], u: &[f32]) {
        for (x, d) in p.iter_mut().zip(u) {
            *x += d;
        }
    }
    dispatch_simd!(body(p: &mut [f32], u: &[f32]))
}

/// `u ← a·u + b·p`, vectorized for the CPU at hand.
pub(crate) fn affine_pass(u: &mut [f32], p: &[f32], a: f32, b: f32) {
    dispatch_simd!(affine_inline(u: &mut [f32], p: &[f32], a: f32, b: f32))
}

/// [`affine_pass`] for inlining into a kernel compiled for a given target (a zero `b`
/// multiplies nothing by `p`).
#[inline(always)]
pub(crate) fn affine_inline(u: &mut [f32], p: &[f32], a: f32, b: f32) {
    let p = &p[..u.len()];
    if b == 0.0 {
        u.iter_mut().for_each(|x| *x *= a);
    } else {
        u.iter_mut().zip(p).for_each(|(x, w)| *x = a * *x + b * w);
    }
}

/// `u ← map(u)` (identity when `None`), for inlining into a kernel.
#[inline(always)]
pub(crate) fn map_inline(u: &mut [f32], map: Option<Map>) {
    match map {
        None => {}
        Some(Map::Sign) => u.iter_mut().for_each(|x| *x = crate::transforms::sign(*x)),
        Some(Map::Clip(d)) => u.iter_mut().for_each(|x| *x = clip(*x, -d, d)),
    }
}

/// One state buffer per parameter, writable from several threads at once on disjoint ranges.
///
/// Elementwise transformations keep their state here so that a step can run block by block, with
/// the blocks of a large tensor split across threads (see [`crate::kernel::Elementwise`]).
/// `T` is `f32` for full-precision state, `u8` for quantized state.
pub struct ParamBufs<T = f32> {
    data: Vec<Vec<T>>,
    ptrs: Vec<*mut T>,
    /// The element counts of the parameters `init` set this state up for (allocated, or left
    /// empty when unused); `None` before `init`.
    init_for: Option<Vec<usize>>,
}

impl<T> Default for ParamBufs<T> {
    fn default() -> Self {
        ParamBufs { data: vec![], ptrs: vec![], init_for: None }
    }
}

// SAFETY: the raw pointers point into `data`, which `ParamBufs` owns; concurrent writes go through
// `slice`, whose contract requires disjoint ranges.
unsafe impl<T: Send> Send for ParamBufs<T> {}
unsafe impl<T: Sync> Sync for ParamBufs<T> {}

impl<T> From<Vec<Vec<T>>> for ParamBufs<T> {
    fn from(data: Vec<Vec<T>>) -> Self {
        let mut b = ParamBufs { data, ptrs: vec![], init_for: None };
        b.refresh();
        b
    }
}

/// What a state buffer knows of the `init` that set it up.
pub(crate) enum InitMark<'a> {
    /// Set up by `init` for parameters of these element counts (allocated, or left empty).
    Init(&'a [usize]),
    /// Not set up yet.
    NotInit,
    /// A buffer that does not record it.
    Unknown,
}

/// The state buffers of an elementwise transformation, as its `init` left them: what
/// [`Transform::update`](crate::Transform::update) called directly (without
/// [`crate::Optimizer`], which checks the parameters against its shapes) checks before the
/// kernels index them ([`check_init_marks`]), so that an update before `init`, or of other
/// sizes, is an error rather than an index out of range.
pub(crate) trait InitState {
    /// Marks the state as set up by `init` for parameters of these element counts.
    fn mark_init(&mut self, numels: &[usize]);
    /// What the state knows of its `init`.
    fn init_mark(&self) -> InitMark<'_>;
}

impl<T> InitState for ParamBufs<T> {
    fn mark_init(&mut self, numels: &[usize]) {
        self.init_for = Some(numels.to_vec());
    }
    fn init_mark(&self) -> InitMark<'_> {
        match &self.init_for {
            Some(n) => InitMark::Init(n),
            None => InitMark::NotInit,
        }
    }
}

impl InitState for Vec<ParamBufs> {
    fn mark_init(&mut self, numels: &[usize]) {
        self.iter_mut().for_each(|b| b.mark_init(numels));
    }
    fn init_mark(&self) -> InitMark<'_> {
        self.first().map_or(InitMark::Unknown, |b| b.init_mark())
    }
}

impl InitState for Vec<Vec<f32>> {
    fn mark_init(&mut self, _numels: &[usize]) {}
    fn init_mark(&self) -> InitMark<'_> {
        InitMark::Unknown
    }
}

/// That updates of these element counts fit the state whose buffers say `marks`: the counts
/// `init` was given, if any buffer recorded them; an error when every buffer says it was never
/// set up.
pub(crate) fn check_init_marks(marks: &[InitMark<'_>], sizes: &[usize]) -> crate::error::Result<()> {
    use crate::error::Error;
    if let Some(numels) = marks.iter().find_map(|m| if let InitMark::Init(n) = m { Some(*n) } else { None }) {
        if numels.len() != sizes.len() {
            return Err(Error::Shape(format!(
                "the state was set up by init for {} parameters, {} updates given",
                numels.len(),
                sizes.len()
            )));
        }
        return match numels.iter().zip(sizes).position(|(a, b)| a != b) {
            Some(i) => Err(Error::Shape(format!(
                "update {i} has {} elements, and init set up its state for {}",
                sizes[i], numels[i]
            ))),
            None => Ok(()),
        };
    }
    if !marks.is_empty() && marks.iter().all(|m| matches!(m, InitMark::NotInit)) {
        return Err(Error::Invalid("update before init: the transformation's state was never set up".into()));
    }
    Ok(())
}

impl<T> ParamBufs<T> {
    fn refresh(&mut self) {
        self.ptrs = self.data.iter_mut().map(|v| v.as_mut_ptr()).collect();
    }
    /// No buffers (the transformation does not use this one).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Elements `off..off+n` of buffer `i`.
    ///
    /// # Safety
    /// No other live reference may overlap these elements: concurrent callers must use disjoint
    /// ranges, and nothing may hold `&mut self` meanwhile.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, i: usize, off: usize, n: usize) -> &mut [T] {
        assert!(off + n <= self.data[i].len(), "state range out of bounds");
        std::slice::from_raw_parts_mut(self.ptrs[i].add(off), n)
    }
    /// The buffers, for reading.
    pub fn buffers(&self) -> &[Vec<T>] {
        &self.data
    }
    /// Mutable access to the buffers (the pointers are refreshed afterwards).
    pub fn with_buffers<R>(&mut self, f: impl FnOnce(&mut Vec<Vec<T>>) -> R) -> R {
        let r = f(&mut self.data);
        self.refresh();
        r
    }
}

impl ParamBufs<f32> {
    /// Visits every buffer as `name.i`.
    pub fn visit(&mut self, v: &mut dyn crate::state::StateVisitor, name: &str) -> crate::error::Result<()> {
        self.with_buffers(|d| crate::state::visit_buffers(v, name, d))
    }
}

/// A sum of squares in `f64` over eight independent lanes (so the adds pipeline and vectorize),
/// combined in a fixed order, so the result is deterministic. Slices added one after another give
/// the sum of their concatenation, as long as all but the last have a length divisible by 8.
#[derive(Default)]
pub(crate) struct SumSq {
    acc: [f64; 8],
    tail: f64,
}
impl SumSq {
    #[inline(always)]
    pub(crate) fn add(&mut self, x: &[f32]) {
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for (a, &v) in self.acc.iter_mut().zip(c) {
                *a += (v as f64) * (v as f64);
            }
        }
        for &v in chunks.remainder() {
            self.tail += (v as f64) * (v as f64);
        }
    }
    /// `a.add(x)` and `b.add(y)` (`x` and `y` of one length) in one loop: the same lanes in the
    /// same order, so the same bits, with the two sums' chains of additions interleaved (one
    /// after the other, each waited on its own latency over a block of 2048: torch Adafactor's
    /// norm sums were 15% of its step).
    #[inline(always)]
    pub(crate) fn add_pair(a: &mut SumSq, b: &mut SumSq, x: &[f32], y: &[f32]) {
        let y = &y[..x.len()];
        let (mut cx, mut cy) = (x.chunks_exact(8), y.chunks_exact(8));
        for (u, v) in (&mut cx).zip(&mut cy) {
            for k in 0..8 {
                a.acc[k] += (u[k] as f64) * (u[k] as f64);
                b.acc[k] += (v[k] as f64) * (v[k] as f64);
            }
        }
        for &v in cx.remainder() {
            a.tail += (v as f64) * (v as f64);
        }
        for &v in cy.remainder() {
            b.tail += (v as f64) * (v as f64);
        }
    }
    #[inline(always)]
    pub(crate) fn total(&self) -> f64 {
        fold_lanes(self.acc) + self.tail
    }
}

/// Eight f64 lane sums added up in the fixed order of [`SumSq`].
#[inline(always)]
pub(crate) fn fold_lanes(a: [f64; 8]) -> f64 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Adds `term(k)` for every index `k` of `x` to eight lanes, element `k` to lane `k % 8`:
/// independent chains of f64 additions a loop need not wait on, where one running sum is a
/// single chain ([`SumSq`] for any term; [`fold_lanes`] adds the lanes up). `term` reads `x`
/// and slices as long; given the slice rather than its length, the compiler drops their bounds
/// checks (with the length alone, DoWG's distance ran 2.3 → 3.1 ns a parameter).
#[inline(always)]
pub(crate) fn lane_sums(lanes: &mut [f64; 8], x: &[f32], term: impl Fn(usize) -> f64) {
    let n = x.len();
    let whole = n - n % 8;
    for base in (0..whole).step_by(8) {
        for (k, l) in lanes.iter_mut().enumerate() {
            *l += term(base + k);
        }
    }
    for (k, l) in (whole..n).zip(lanes.iter_mut()) {
        *l += term(k);
    }
}

/// `Σ (a[k] − b[k])²` over `a` (`b` at least as long): each difference in f32, its square and
/// the sum in f64, in eight lanes as [`lane_sums`] adds them (element `k` to lane `k % 8`, folded
/// by [`fold_lanes`]), so the same bits on every build. The distance travelled from the initial
/// parameters (DoG, DoWG).
pub(crate) fn sq_distance(a: &[f32], b: &[f32]) -> f64 {
    let b = &b[..a.len()];
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above); `b` is as long as `a`.
        return unsafe { sq_distance_avx2(a, b) };
    }
    let mut lanes = [0.0f64; 8];
    lane_sums(&mut lanes, a, |k| ((a[k] - b[k]) as f64).powi(2));
    fold_lanes(lanes)
}

/// [`sq_distance`] with its lanes from [`square_lanes_avx2`] over the whole groups of eight,
/// then the tail's terms into lanes `0..` as [`lane_sums`] adds them.
///
/// # Safety
/// The CPU must have AVX2; `b.len() == a.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sq_distance_avx2(a: &[f32], b: &[f32]) -> f64 {
    let whole = a.len() - a.len() % 8;
    // SAFETY: AVX2 (the caller's); `b` as long as `a`.
    let mut lanes = unsafe { square_lanes_avx2::<true>(&a[..whole], b) };
    for (k, l) in (whole..a.len()).zip(lanes.iter_mut()) {
        *l += ((a[k] - b[k]) as f64).powi(2);
    }
    fold_lanes(lanes)
}

/// The eight f64 lanes of `Σ x²` (with `DIFF`, `x = a − b` in f32) over `a`, a whole number of
/// groups of eight, element `k` to lane `k % 8`: two vectors of four lanes, each group widened
/// in two halves, a product then an addition (never fused), so the bits of the portable lanes
/// ([`SumSq`], [`lane_sums`]). The compiler's builds of those loops widened two floats at a time
/// through shuffles, or ran scalar.
///
/// # Safety
/// The CPU must have AVX2; `a.len()` a multiple of 8; with `DIFF`, `b` at least as long as `a`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn square_lanes_avx2<const DIFF: bool>(a: &[f32], b: &[f32]) -> [f64; 8] {
    use std::arch::x86_64::{
        _mm256_add_pd, _mm256_cvtps_pd, _mm256_mul_pd, _mm256_setzero_pd, _mm256_storeu_pd, _mm_loadu_ps, _mm_sub_ps,
    };
    debug_assert!(a.len().is_multiple_of(8) && (!DIFF || b.len() >= a.len()));
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for k in (0..a.len()).step_by(8) {
        // SAFETY: `k + 8 ≤ a.len()`, and with `DIFF` `b` is as long.
        let (x0, x1) = unsafe {
            let (mut x0, mut x1) = (_mm_loadu_ps(pa.add(k)), _mm_loadu_ps(pa.add(k + 4)));
            if DIFF {
                x0 = _mm_sub_ps(x0, _mm_loadu_ps(pb.add(k)));
                x1 = _mm_sub_ps(x1, _mm_loadu_ps(pb.add(k + 4)));
            }
            (_mm256_cvtps_pd(x0), _mm256_cvtps_pd(x1))
        };
        lo = _mm256_add_pd(lo, _mm256_mul_pd(x0, x0));
        hi = _mm256_add_pd(hi, _mm256_mul_pd(x1, x1));
    }
    let mut lanes = [0.0f64; 8];
    // SAFETY: `lanes` holds 8 `f64`s: two stores of 4.
    unsafe {
        _mm256_storeu_pd(lanes.as_mut_ptr(), lo);
        _mm256_storeu_pd(lanes.as_mut_ptr().add(4), hi);
    }
    lanes
}

/// Sum of squares in `f64` over eight lanes combined in a fixed order, for norms: deterministic.
pub fn sum_sq(x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { sum_sq_avx2(x) };
    }
    let mut s = SumSq::default();
    s.add(x);
    s.total()
}

/// [`sum_sq`] with [`SumSq`]'s lanes from [`square_lanes_avx2`] over the whole groups of eight,
/// then its tail: 0.24 → 0.08 ns a value in cache, 1.0–1.3 → 0.65–0.78 from memory, one thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_sq_avx2(x: &[f32]) -> f64 {
    let whole = x.len() - x.len() % 8;
    // SAFETY: AVX2 (the caller's); `b` is unread without `DIFF`.
    let acc = unsafe { square_lanes_avx2::<false>(&x[..whole], &[]) };
    let mut s = SumSq { acc, tail: 0.0 };
    s.add(&x[whole..]);
    s.total()
}

/// `(sum_sq(p), sum_sq_mapped(g, p, head))` in one pass over both slices, bit for bit: the
/// lanes of each sum see the same elements in the same order.
pub fn sum_sq_pair(p: &[f32], g: &[f32], head: Option<crate::kernel::Head>) -> (f64, f64) {
    #[inline(always)]
    fn body(p: &[f32], g: &[f32], head: Option<crate::kernel::Head>) -> (f64, f64) {
        // Sub-blocks, so that both buffers stream at once; they are multiples of the 8 lanes:
        // adding piece by piece is adding the whole slice.
        const B: usize = crate::kernel::SUB_BLOCK;
        let (mut sp, mut sg) = (SumSq::default(), SumSq::default());
        let mut u = [0.0f32; B];
        for (gb, pb) in g.chunks(B).zip(p.chunks(B)) {
            sp.add(pb);
            match head {
                None => sg.add(gb),
                head => {
                    let u = &mut u[..gb.len()];
                    crate::kernel::start_inline(u, gb, pb, head);
                    sg.add(u);
                }
            }
        }
        (sp.total(), sg.total())
    }
    dispatch_simd!(body(p: &[f32], g: &[f32], head: Option<Head>) -> (f64, f64))
}

/// [`sum_sq`] of `head(g)` (the head map of a chain, with `p` the parameters), without
/// materializing it: the same value, bit for bit.
pub fn sum_sq_mapped(g: &[f32], p: &[f32], head: Option<crate::kernel::Head>) -> f64 {
    #[inline(always)]
    fn body(g: &[f32], p: &[f32], head: Option<crate::kernel::Head>) -> f64 {
        const B: usize = crate::kernel::BLOCK;
        let mut s = SumSq::default();
        let mut u = [0.0f32; B];
        for (gb, pb) in g.chunks(B).zip(p.chunks(B)) {
            let u = &mut u[..gb.len()];
            crate::kernel::start_inline(u, gb, pb, head);
            s.add(u);
        }
        s.total()
    }
    dispatch_simd!(body(g: &[f32], p: &[f32], head: Option<Head>) -> f64)
}

static SIMD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the run-time dispatch to AVX2 kernels on (the default) or off, for the whole process:
/// off, every kernel runs its baseline build, the reference the AVX2 build is tested against.
pub fn set_simd(enabled: bool) {
    SIMD.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether kernels run their AVX-512 build: the CPU has AVX-512 F, VL, BW and DQ besides AVX2
/// and FMA, and [`set_simd`] has not turned the dispatch off.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether kernels run their AVX2 + FMA build: the CPU has both (checked once, cached by the
/// standard library) and [`set_simd`] has not turned the dispatch off.
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        SIMD.load(std::sync::atomic::Ordering::Relaxed)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `exp(x)` in f32 for `x ≤ 0` (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial in `r`,
/// `2ⁿ` built in the exponent bits). Below −87 it returns `exp(−87)` (the smallest normal range)
/// rather than a subnormal. Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn exp_neg_f32(x: f32) -> f32 {
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // ln 2 in two parts: the f32 nearest 0.693_359_4 is 355/512 exactly, so `n·` it is exact.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut y = 1.987_569_1e-4 * r + 1.398_2e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 0.166_666_65;
    y = y * r + 0.5;
    y = y * r * r + r + 1.0;
    let bits = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    y * f32::from_bits(bits as u32)
}

/// `∛x` in f32 for `x ≥ 0` (NaN below 0, as `powf(x, 1/3)`), branch-free and without a
/// division, so loops over it vectorize where `f32::cbrt` and `powf` are a call per value; all in
/// f32, with fused multiply-adds (so every build gives the same bits).
/// - Newton's iteration for the inverse root, `r ← (4/3)·r − (x/3)·r⁴`, from a first guess in the
///   exponent bits (`(4/3)·bias − bits/3`, within 10%): three steps, within 10⁻⁶.
/// - `y = x·r²`, then one Newton step for the root itself, `y ← y + (x − y³)·r²/3`, with the
///   residual `x − y³` formed exactly enough in f32: `y³ = q + f + e·y` by two exact products
///   (`y² = p + e`, `p·y = q + f`, their errors from fused multiply-adds), and `x − q` exact as the
///   two are within a factor of 2. The step's last fused multiply-add rounds once: within one ulp,
///   nearly always the nearest float.
///
/// Values under 10⁻³⁰ (subnormals included) are scaled by 2⁹⁶ first and their root by 2⁻³² after,
/// values over 10³⁰ by 2⁻⁹⁶ and 2³² (so that `y³` stays finite); 0 and ∞ are their own roots.
#[inline(always)]
pub fn cbrt_f32(x: f32) -> f32 {
    const TWO_96: f32 = 79_228_162_514_264_337_593_543_950_336.0;
    const TWO_32: f32 = 4_294_967_296.0;
    const THIRD: f32 = 1.0 / 3.0;
    let (tiny, huge) = (x < 1.0e-30, x > 1.0e30);
    let xs = if tiny {
        x * TWO_96
    } else if huge {
        x * (1.0 / TWO_96)
    } else {
        x
    };
    // `bits/3` through a float (three vector instructions where the integer quotient takes
    // seven): the guess needs 10%, not the exact quotient.
    // SAFETY: any `i32` times 1/3, in f32, is finite and within `i32`'s range.
    let third_of_bits = unsafe { (xs.to_bits() as i32 as f32 * THIRD).to_int_unchecked::<i32>() } as u32;
    let mut r = f32::from_bits(0x54a2_0000u32.wrapping_sub(third_of_bits));
    let (x3, r43) = (xs * THIRD, 4.0 / 3.0);
    for _ in 0..3 {
        let r2 = r * r;
        r = (-x3 * r2).mul_add(r2, r43 * r);
    }
    let r2_3 = r * r * THIRD;
    let y = xs * (r * r);
    let p = y * y;
    let e = y.mul_add(y, -p);
    let q = p * y;
    let f = p.mul_add(y, -q);
    let residual = (-e).mul_add(y, (xs - q) - f);
    let y = residual.mul_add(r2_3, y);
    let root = if tiny {
        y * (1.0 / TWO_32)
    } else if huge {
        y * TWO_32
    } else {
        y
    };
    if x > 0.0 && x < f32::INFINITY {
        root
    } else if x == 0.0 || x == f32::INFINITY {
        x
    } else {
        f32::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::{cbrt_f32, sum_sq, SumSq};

    /// The vector build of `sq_distance` gives the portable lanes' sum bit for bit.
    #[test]
    fn sq_distance_equals_its_portable_lanes_bit_for_bit() {
        for n in [0usize, 5, 8, 9, 1000, 12_345] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 * 1e-3 - 0.5).collect();
            let b: Vec<f32> = (0..n + 3).map(|i| ((i * 104_729) % 997) as f32 * 1e-4 * (1.0 + i as f32)).collect();
            let mut lanes = [0.0f64; 8];
            super::lane_sums(&mut lanes, &a, |k| ((a[k] - b[k]) as f64).powi(2));
            assert_eq!(super::sq_distance(&a, &b).to_bits(), super::fold_lanes(lanes).to_bits(), "{n} values");
        }
    }

    /// The vector build of `sum_sq` gives the portable lanes' sum bit for bit, over lengths with
    /// and without a tail and values of many magnitudes.
    #[test]
    fn sum_sq_equals_its_portable_lanes_bit_for_bit() {
        for n in [0usize, 5, 8, 9, 1000, 12_345] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1013) as f32 * 1e-3 - 0.5)
                .map(|v| v * 10f32.powi((v * 40.0) as i32))
                .collect();
            let mut s = SumSq::default();
            s.add(&x);
            assert_eq!(sum_sq(&x).to_bits(), s.total().to_bits(), "{n} values");
        }
    }

    /// `cbrt_f32` against f64's cube root over every binade of f32 (subnormals included): within
    /// one ulp everywhere, the nearest float in nearly every case; its special values as `powf`'s.
    #[test]
    fn cbrt_is_within_one_ulp_over_every_binade() {
        let (mut worst, mut off, mut n) = (0.0f64, 0usize, 0usize);
        // Every 97th float from the smallest subnormal to the largest finite.
        let mut bits = 1u32;
        while bits < f32::INFINITY.to_bits() {
            let x = f32::from_bits(bits);
            let exact = (x as f64).cbrt();
            let got = cbrt_f32(x);
            let ulp = (f32::from_bits((exact as f32).to_bits() + 1) - exact as f32) as f64;
            worst = worst.max((got as f64 - exact).abs() / ulp);
            off += usize::from(got != exact as f32);
            n += 1;
            bits += 97;
        }
        assert!(worst < 1.0, "worst error {worst} ulp");
        assert!(off * 100_000 < n, "{off} of {n} not the nearest float");
        assert_eq!(cbrt_f32(0.0), 0.0);
        assert_eq!(cbrt_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(cbrt_f32(27.0), 3.0);
        assert_eq!(cbrt_f32(1.0), 1.0);
        assert_eq!(cbrt_f32(f32::MAX), (f32::MAX as f64).cbrt() as f32);
        assert_eq!(cbrt_f32(f32::from_bits(1)), (f32::from_bits(1) as f64).cbrt() as f32);
        assert!(cbrt_f32(f32::NAN).is_nan() && cbrt_f32(-8.0).is_nan());
    }
}
