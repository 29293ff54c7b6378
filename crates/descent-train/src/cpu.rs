//! The f32 data of candle's CPU storage, borrowed in place: what descent's own ops and the
//! optimizer read. Each error names what was read (`"conv2d input"`, a parameter's name).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Storage};
use rayon::prelude::*;

/// The contiguous f32 elements of a CPU storage under `l`.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: must be an f32 tensor") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: must be contiguous") };
    Ok(&v[a..b])
}

/// [`f32_slice`] of a storage that must be on the CPU.
pub(crate) fn storage_f32s<'a>(s: &'a Storage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Storage::Cpu(s) = s else { candle_core::bail!("{what}: must be on the CPU") };
    f32_slice(s, l, what)
}

/// Whether the CPU has AVX2 and FMA, for which descent's kernels have versions chosen at run time.
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 F (with AVX2 and FMA), for the kernels that have a 512-bit
/// version: on CPUs with two 512-bit FMA units (Intel's server cores) it doubles their width.
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn name(args) -> ret { body }` compiled twice, for AVX2 and FMA (taken at run time
/// where the CPU has them) and for the target's baseline (SSE2 on x86-64, which the build keeps):
/// plain loops over slices, vectorized by the compiler 8 floats (or 4 doubles) wide instead of 4.
/// Rust never fuses a multiply and an add on its own, so both versions give the same bits.
macro_rules! avx2_kernel {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::cpu::has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just now).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use avx2_kernel;

/// A vector of `len` f32 written in place, chunk by chunk in parallel (chunks of `chunk`, the last
/// one shorter), by `fill(k, chunk_k)`: without the zero fill of `vec![0.0; len]`, which costs a
/// memset (or a page fault per 4 KiB) on every tensor an op returns.
///
/// # Safety
///
/// `fill` must write every element of the chunk it is given.
pub(crate) unsafe fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    // SAFETY: the caller's contract is this one's.
    unsafe { par_filled_with(len, chunk, fill).0 }
}

/// [`par_filled`] whose chunks also return a value each, collected in chunk order (a backward's
/// partial sums beside the gradient it writes).
///
/// # Safety
///
/// `fill` must write every element of the chunk it is given.
pub(crate) unsafe fn par_filled_with<R: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    let mut v = Vec::with_capacity(len);
    let results =
        v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().map(|(k, c)| fill(k, c)).collect();
    // SAFETY: the caller's `fill` initialized every element of `..len`, within the capacity.
    unsafe { v.set_len(len) };
    (v, results)
}

/// A parallel task's chunk of a vector's spare capacity (see [`par_filled`]), zeroed and given as
/// floats: the task zeroes the chunk right before it writes it, while the chunk is in its cache,
/// instead of one `memset` streaming the whole vector through memory beforehand. The caller sets
/// the vector's length once every chunk has been through this.
pub(crate) fn zeroed(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    chunk.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was initialized just now; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

thread_local! {
    /// Buffers an op keeps from its forward for its backward (a convolution's padded input, a
    /// linear layer's GELU derivative), given back by the backward: a step's ops take them in the
    /// forward's order and give them back in the reverse order, so each finds a buffer of its own
    /// size again, without the zero fill or the page faults of a fresh allocation.
    static BUFFERS: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers [`BUFFERS`] keeps at most (per thread).
const BUFFERS_KEPT: usize = 32;

/// A buffer of `len` floats from this thread's [`BUFFERS`] (or a new one): its contents are
/// whatever its last user left.
pub(crate) fn take_buffer(len: usize) -> Vec<f32> {
    let mut v = BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_default();
    v.resize(len, 0.0);
    v
}

/// Gives a buffer back to this thread's [`BUFFERS`] (dropped if it holds enough; one that never
/// allocated is not kept: the next taker would find nothing in it).
pub(crate) fn give_back_buffer(v: Vec<f32>) {
    if v.capacity() == 0 {
        return;
    }
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < BUFFERS_KEPT {
            b.push(v);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{give_back_buffer, take_buffer};

    /// Buffers come back last in, first out; one that never allocated is not kept (a regression
    /// made every convolution allocate afresh: the classifier's op gave back its empty buffer,
    /// which the next forward then took).
    #[test]
    fn buffers_come_back_last_in_first_out_and_empty_ones_are_not_kept() {
        std::thread::spawn(|| {
            let (a, b) = (vec![1.0f32; 100], vec![2.0f32; 50]);
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            give_back_buffer(a);
            give_back_buffer(b);
            give_back_buffer(Vec::new());
            let x = take_buffer(50);
            assert_eq!(x.as_ptr(), pb);
            let y = take_buffer(80);
            assert_eq!((y.as_ptr(), y.len()), (pa, 80));
            assert_eq!(take_buffer(3), vec![0.0; 3]);
        })
        .join()
        .unwrap();
    }
}
