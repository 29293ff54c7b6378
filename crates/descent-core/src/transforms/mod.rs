//! The gradient transformations, named as in optax (`scale_by_*`, `add_*`, `clip_*`, …).
//!
//! Each one is small: a struct holding its hyper-parameters and state, an `init` that allocates
//! state per parameter, and an update rule. The docs give the rule and the optax function matched.

mod adaptive;
mod basic;
mod contrib;
mod contrib2;
mod quantized;
mod reduce;
mod wrappers;

pub use adaptive::*;
pub use basic::*;
pub use contrib::*;
pub use contrib2::*;
pub use quantized::*;
pub use reduce::*;
pub use wrappers::*;

use crate::transform::{numel, Shapes};

/// One state buffer per parameter, writable from several threads at once on disjoint ranges.
///
/// Elementwise transformations keep their state here so that a step can run block by block, with
/// the blocks of a large tensor split across threads (see [`crate::transform::Elementwise`]).
/// `T` is `f32` for full-precision state, `u8` for quantized state.
pub struct ParamBufs<T = f32> {
    data: Vec<Vec<T>>,
    ptrs: Vec<*mut T>,
}

impl<T> Default for ParamBufs<T> {
    fn default() -> Self {
        ParamBufs { data: vec![], ptrs: vec![] }
    }
}

// SAFETY: the raw pointers point into `data`, which `ParamBufs` owns; concurrent writes go through
// `slice`, whose contract requires disjoint ranges.
unsafe impl<T: Send> Send for ParamBufs<T> {}
unsafe impl<T: Sync> Sync for ParamBufs<T> {}

impl<T> From<Vec<Vec<T>>> for ParamBufs<T> {
    fn from(data: Vec<Vec<T>>) -> Self {
        let mut b = ParamBufs { data, ptrs: vec![] };
        b.refresh();
        b
    }
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

/// One zero-filled buffer per parameter.
pub(crate) fn zeros(shapes: &Shapes) -> Vec<Vec<f32>> {
    full(shapes, 0.0)
}

/// One buffer per parameter filled with `v`.
pub(crate) fn full(shapes: &Shapes, v: f32) -> Vec<Vec<f32>> {
    shapes.iter().map(|s| vec![v; numel(s)]).collect()
}

/// `jnp.sign` / `torch.sign`: 0 at 0 (unlike `f32::signum`), NaN stays NaN.
#[inline(always)]
pub(crate) fn sign(x: f32) -> f32 {
    // Branch-free so that loops over it vectorize: ±1 with the sign bit of `x`, except 0 and NaN.
    let unit = f32::from_bits((x.to_bits() & 0x8000_0000) | 0x3f80_0000);
    if x == 0.0 || x.is_nan() {
        x
    } else {
        unit
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
    #[inline(always)]
    pub(crate) fn total(&self) -> f64 {
        let a = &self.acc;
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + self.tail
    }
}

/// Sum of squares in `f64` over eight lanes combined in a fixed order, for norms: deterministic.
pub fn sum_sq(x: &[f32]) -> f64 {
    #[inline(always)]
    fn body(x: &[f32]) -> f64 {
        let mut s = SumSq::default();
        s.add(x);
        s.total()
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(x: &[f32]) -> f64 {
            body(x)
        }
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA.
            return unsafe { avx2(x) };
        }
    }
    body(x)
}

/// [`sum_sq`] of `head(g)` (the head map of a chain, with `p` the parameters), without
/// materializing it: the same value, bit for bit.
pub fn sum_sq_mapped(g: &[f32], p: &[f32], head: Option<crate::transform::Head>) -> f64 {
    #[inline(always)]
    fn body(g: &[f32], p: &[f32], head: Option<crate::transform::Head>) -> f64 {
        const B: usize = crate::transform::BLOCK;
        let mut s = SumSq::default();
        let mut u = [0.0f32; B];
        for (gb, pb) in g.chunks(B).zip(p.chunks(B)) {
            let u = &mut u[..gb.len()];
            crate::transform::start_inline(u, gb, pb, head);
            s.add(u);
        }
        s.total()
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(g: &[f32], p: &[f32], head: Option<crate::transform::Head>) -> f64 {
            body(g, p, head)
        }
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA.
            return unsafe { avx2(g, p, head) };
        }
    }
    body(g, p, head)
}

/// Implements `visit_state` from a list of per-parameter buffer fields and counter fields.
macro_rules! state {
    ($t:ty; bufs: [$($b:ident),*]; counters: [$($c:ident),*]; scalars: [$($s:ident),*]) => {
        fn visit_state(&mut self, v: &mut dyn $crate::state::StateVisitor) -> $crate::error::Result<()> {
            let _ = &v;
            $( $crate::state::VisitBuffers::visit_as(&mut self.$b, v, stringify!($b))?; )*
            $( v.counter(stringify!($c), &mut self.$c)?; )*
            $( v.scalar(stringify!($s), &mut self.$s)?; )*
            Ok(())
        }
    };
}
pub(crate) use state;

static SIMD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the run-time dispatch to AVX2 kernels on (the default) or off, for the whole process:
/// off, every kernel runs its baseline build, the reference the AVX2 build is tested against.
pub fn set_simd(enabled: bool) {
    SIMD.store(enabled, std::sync::atomic::Ordering::Relaxed);
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

/// Implements `Elementwise::apply` and `Elementwise::step` from a kernel body, compiled twice: for
/// the baseline target and with AVX2 + FMA, chosen at run time. The body sees `this` (the
/// transformation), `i`, `off`, `u` and `p` (resliced to `u.len()` so the compiler drops bounds
/// checks). Both versions compute bit-identical results: Rust never contracts `a * b + c` into an
/// FMA on its own.
///
/// `step` runs the inlined body on sub-blocks of [`crate::transform::SUB_BLOCK`] elements: copy the gradient into a scratch that stays in L1, transform it, add it to `p`.
/// Each state buffer is then read and written once, in short sequential bursts, as in a single
/// loop; whole-block passes over 2048 elements fall out of L1 and cost a third of the bandwidth.
/// `simd_apply!(@apply …)` implements `apply` alone, for a rule with its own `step`.
macro_rules! simd_apply {
    (@apply $t:ty, |$this:ident, $i:ident, $off:ident, $u:ident, $p:ident| $body:block) => {
        unsafe fn apply(&self, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]) {
            #[inline(always)]
            #[allow(unused_variables, unused_unsafe)]
            unsafe fn kernel($this: &$t, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]) {
                let $p = &$p[..$u.len()];
                $body
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn kernel_avx2($this: &$t, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]) {
                    kernel($this, $i, $off, $u, $p)
                }
                if $crate::transforms::has_avx2() {
                    return kernel_avx2(self, $i, $off, $u, $p);
                }
            }
            kernel(self, $i, $off, $u, $p)
        }
    };
    ($t:ty, |$this:ident, $i:ident, $off:ident, $u:ident, $p:ident| $body:block) => {
        $crate::transforms::simd_apply!(@apply $t, |$this, $i, $off, $u, $p| $body);
        unsafe fn step(
            &self,
            i: usize,
            off: usize,
            g: &[f32],
            p: &mut [f32],
            fold: $crate::transform::Fold,
        ) {
            #[inline(always)]
            #[allow(unused_variables, unused_unsafe)]
            unsafe fn kernel($this: &$t, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]) {
                let $p = &$p[..$u.len()];
                $body
            }
            #[inline(always)]
            unsafe fn run(this: &$t, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: $crate::transform::Fold) {
                const SUB: usize = $crate::transform::SUB_BLOCK;
                let mut scratch = [0.0f32; SUB];
                for (k, (pb, gb)) in p.chunks_mut(SUB).zip(g.chunks(SUB)).enumerate() {
                    let u = &mut scratch[..pb.len()];
                    $crate::transform::start_inline(u, gb, pb, fold.head);
                    kernel(this, i, off + k * SUB, u, pb);
                    $crate::transform::finish_fold(pb, u, &fold, i, off + k * SUB);
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn run_avx2(this: &$t, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: $crate::transform::Fold) {
                    run(this, i, off, g, p, fold)
                }
                if $crate::transforms::has_avx2() {
                    return run_avx2(self, i, off, g, p, fold);
                }
            }
            run(self, i, off, g, p, fold)
        }
    };
}
pub(crate) use simd_apply;

/// Implements `Transform` for an elementwise transformation whose `init` is given as a closure
/// body over `shapes` and `params`.
macro_rules! elementwise_transform {
    ($t:ty, |$this:ident, $shapes:ident, $params:ident| $init:block; $($st:tt)*) => {
        impl $crate::transform::Transform for $t {
            fn init(&mut self, $shapes: &$crate::transform::Shapes, $params: &[&[f32]]) -> $crate::error::Result<()> {
                $crate::transform::check_init($shapes, $params)?;
                let $this = self;
                let _ = &$params;
                let _ = &$shapes;
                $init
                Ok(())
            }
            fn as_elementwise(&mut self) -> Option<&mut dyn $crate::transform::Elementwise> {
                Some(self)
            }
            fn elementwise(&self) -> Option<&dyn $crate::transform::Elementwise> {
                Some(self)
            }
            $crate::transforms::state!($t; $($st)*);
        }
    };
}
pub(crate) use elementwise_transform;
