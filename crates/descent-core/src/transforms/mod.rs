//! The gradient transformations, named as in optax (`scale_by_*`, `add_*`, `clip_*`, …).
//!
//! Each one is small: a struct holding its hyper-parameters and state, an `init` that allocates
//! state per parameter, and an update rule. The docs give the rule and the optax function matched.

mod adaptive;
mod basic;
mod clipping;
mod contrib;
mod factorized;
mod learning_rate_free;
mod muon;
mod quantized;
mod trust_ratio;
mod wrappers;

pub use adaptive::*;
pub use basic::*;
pub use clipping::*;
pub use contrib::*;
pub use factorized::*;
pub use learning_rate_free::*;
pub use muon::*;
pub use quantized::*;
pub use trust_ratio::*;
pub use wrappers::*;

pub use crate::kernel::{has_avx2, set_simd, sum_sq, sum_sq_mapped, ParamBufs};
use crate::transform::{numel, Shapes};

/// Adam's bias correction `1 − βᵗ` (Kingma & Ba 2015, Algorithm 1) of an exponential moving
/// average with decay `beta` after `t` steps, in `f64`: every optimizer's debiasing goes through
/// it (as products or quotients of it).
pub fn bias_correction(beta: f64, t: f64) -> f64 {
    1.0 - beta.powf(t)
}

/// `1 − β`, a moving average's weight, as torch and optax compute it: in double precision from
/// the β given (a Python float), then rounded to `f32` for the `f32` state. `1 − f32(β)` is
/// another number: 0.00099998713 for β = 0.999, 1.19e-7 for β = 0.9999999 (19% off).
pub(crate) fn one_minus(beta: f64) -> f32 {
    (1.0 - beta) as f32
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

/// Sets the counters of a [`state!`] list to 0: the first thing an `init` does, so that `init`
/// called again starts afresh (a counter that starts elsewhere is set in the `init` body).
macro_rules! reset_counters {
    ($this:ident; bufs: [$($b:ident),*]; counters: [$($c:ident),*]; scalars: [$($s:ident),*]) => {
        $( $this.$c = 0; )*
    };
}
pub(crate) use reset_counters;

/// Implements `Elementwise::apply` and `Elementwise::step` from a kernel body, compiled twice: for
/// the baseline target and with AVX2 + FMA, chosen at run time. The body sees `this` (the
/// transformation), `i`, `off`, `u` and `p` (resliced to `u.len()` so the compiler drops bounds
/// checks). Both versions compute bit-identical results: Rust never contracts `a * b + c` into an
/// FMA on its own.
///
/// `step` runs the inlined body on sub-blocks of [`crate::kernel::SUB_BLOCK`] elements: copy the gradient into a scratch that stays in L1, transform it, add it to `p`.
/// Each state buffer is then read and written once, in short sequential bursts, as in a single
/// loop; whole-block passes over 2048 elements fall out of L1 and cost a third of the bandwidth.
/// `simd_apply!(@apply …)` implements `apply` alone, for a rule with its own `step`;
/// `simd_apply!(wide …)` adds an AVX-512 build, chosen first where the CPU has it, for a
/// compute-bound body (see [`crate::kernel::dispatch_simd`]).
macro_rules! simd_apply {
    (@apply $t:ty, |$this:ident, $i:ident, $off:ident, $u:ident, $p:ident| $body:block) => {
        $crate::transforms::simd_apply!(@apply_in [] $t, |$this, $i, $off, $u, $p| $body);
    };
    (@apply_in [$($tier:ident)?] $t:ty, |$this:ident, $i:ident, $off:ident, $u:ident, $p:ident| $body:block) => {
        unsafe fn apply(&self, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]) {
            #[inline(always)]
            #[allow(unused_variables, unused_unsafe)]
            unsafe fn kernel($this: &$t, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]) {
                let $p = &$p[..$u.len()];
                $body
            }
            let this = self;
            $crate::kernel::dispatch_simd!($($tier)? unsafe kernel(this: &$t, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]))
        }
    };
    (wide $t:ty, |$this:ident, $i:ident, $off:ident, $u:ident, $p:ident| $body:block) => {
        $crate::transforms::simd_apply!(@full [wide] $t, |$this, $i, $off, $u, $p| $body);
    };
    ($t:ty, |$this:ident, $i:ident, $off:ident, $u:ident, $p:ident| $body:block) => {
        $crate::transforms::simd_apply!(@full [] $t, |$this, $i, $off, $u, $p| $body);
    };
    (@full [$($tier:ident)?] $t:ty, |$this:ident, $i:ident, $off:ident, $u:ident, $p:ident| $body:block) => {
        $crate::transforms::simd_apply!(@apply_in [$($tier)?] $t, |$this, $i, $off, $u, $p| $body);
        fn needs_whole_blocks(&self) -> bool {
            false
        }
        #[inline]
        fn prefetch_state_of(&self, i: usize, off: usize, n: usize) {
            $crate::kernel::PrefetchState::prefetch_state(self, i, off, n)
        }
        unsafe fn step(
            &self,
            i: usize,
            off: usize,
            g: &[f32],
            p: &mut [f32],
            fold: $crate::kernel::Fold,
        ) {
            #[inline(always)]
            #[allow(unused_variables, unused_unsafe)]
            unsafe fn kernel($this: &$t, $i: usize, $off: usize, $u: &mut [f32], $p: &[f32]) {
                let $p = &$p[..$u.len()];
                $body
            }
            #[inline(always)]
            unsafe fn run<const PREFETCH: bool>(this: &$t, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: $crate::kernel::Fold) {
                use $crate::kernel::{PrefetchState, PREFETCH_AHEAD};
                const SUB: usize = $crate::kernel::SUB_BLOCK;
                let mut scratch = [0.0f32; SUB];
                for (k, (pb, gb)) in p.chunks_mut(SUB).zip(g.chunks(SUB)).enumerate() {
                    if PREFETCH {
                        $crate::kernel::prefetch_range(g, k * SUB + PREFETCH_AHEAD, SUB);
                        // `p` from this sub-block on: `g.len() - k·SUB` elements.
                        $crate::kernel::prefetch_raw(pb.as_ptr(), g.len() - k * SUB, PREFETCH_AHEAD, SUB);
                        this.prefetch_state(i, off + k * SUB + PREFETCH_AHEAD, SUB);
                    }
                    let u = &mut scratch[..pb.len()];
                    $crate::kernel::start_inline(u, gb, pb, fold.head);
                    kernel(this, i, off + k * SUB, u, pb);
                    $crate::kernel::finish_fold(pb, u, &fold, i, off + k * SUB);
                }
            }
            #[inline(always)]
            unsafe fn streaming(this: &$t, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: $crate::kernel::Fold) {
                run::<true>(this, i, off, g, p, fold)
            }
            #[inline(always)]
            unsafe fn cached(this: &$t, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: $crate::kernel::Fold) {
                run::<false>(this, i, off, g, p, fold)
            }
            let this = self;
            if $crate::kernel::Elementwise::step_plain(this, i, off, g, p, &fold) {
                return;
            }
            if fold.prefetch {
                $crate::kernel::dispatch_simd!($($tier)? unsafe streaming(this: &$t, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: $crate::kernel::Fold))
            }
            $crate::kernel::dispatch_simd!($($tier)? unsafe cached(this: &$t, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: $crate::kernel::Fold))
        }
    };
}
pub(crate) use simd_apply;

/// Implements `Transform` for an elementwise transformation whose `init` is given as a closure
/// body over `shapes` and `params`.
macro_rules! elementwise_transform {
    ($t:ty, |$this:ident, $shapes:ident, $params:ident| $init:block; bufs: [$($b:ident),*]; $($st:tt)*) => {
        $crate::transforms::prefetch_state!($t; $($b),*);
        $crate::transforms::elementwise_transform!(@transform $t, |$this, $shapes, $params| $init; bufs: [$($b),*]; $($st)*);
    };
    (@transform $t:ty, |$this:ident, $shapes:ident, $params:ident| $init:block; bufs: [$($b:ident),*]; $($rest:tt)*) => {
        impl $crate::transform::Transform for $t {
            fn init(&mut self, $shapes: &$crate::transform::Shapes, $params: &[&[f32]]) -> $crate::error::Result<()> {
                $crate::transform::check_init($shapes, $params)?;
                #[allow(clippy::redundant_closure_call)]
                (|$this: &mut Self| -> $crate::error::Result<()> {
                    let _ = &$params;
                    let _ = &$shapes;
                    $crate::transforms::reset_counters!($this; bufs: [$($b),*]; $($rest)*);
                    $init
                    Ok(())
                })(self)?;
                let numels: Vec<usize> = $params.iter().map(|p| p.len()).collect();
                $( $crate::kernel::InitState::mark_init(&mut self.$b, &numels); )*
                let _ = &numels;
                Ok(())
            }
            fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> $crate::error::Result<()> {
                $crate::transform::check_updates(updates, params)?;
                let sizes: Vec<usize> = updates.iter().map(|u| u.len()).collect();
                $crate::kernel::check_init_marks(&[$( $crate::kernel::InitState::init_mark(&self.$b) ),*], &sizes)?;
                $crate::transform::update_elementwise(self, updates, params)
            }
            fn as_elementwise(&mut self) -> Option<&mut dyn $crate::kernel::Elementwise> {
                Some(self)
            }
            fn elementwise(&self) -> Option<&dyn $crate::kernel::Elementwise> {
                Some(self)
            }
            $crate::transforms::state!($t; bufs: [$($b),*]; $($rest)*);
        }
    };
}
pub(crate) use elementwise_transform;

/// Implements [`crate::kernel::PrefetchState`] over the named state buffers.
macro_rules! prefetch_state {
    ($t:ty; $($b:ident),*) => {
        impl $crate::kernel::PrefetchState for $t {
            #[inline(always)]
            fn prefetch_state(&self, i: usize, off: usize, n: usize) {
                let _ = (i, off, n);
                $( $crate::kernel::Prefetch::prefetch(&self.$b, i, off, n); )*
            }
        }
    };
}
pub(crate) use prefetch_state;

macro_rules! stateless {
    () => {
        fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
            crate::transform::check_init(shapes, params)?;
            Ok(())
        }
        fn visit_state(&mut self, _v: &mut dyn StateVisitor) -> Result<()> {
            Ok(())
        }
    };
}
pub(crate) use stateless;

/// The root mean square of a tensor, summed over fixed chunks across threads (the same value
/// for any thread count; see [`crate::kernel::global_sum_sq`]).
pub(crate) fn rms(x: &[f32]) -> f64 {
    rms_of(crate::kernel::global_sum_sq(&[x]), x.len())
}

/// The root mean square of `n` values whose squares sum to `sum_sq` (0 for none).
pub(crate) fn rms_of(sum_sq: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        (sum_sq / n as f64).sqrt()
    }
}
