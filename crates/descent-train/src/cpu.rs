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
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(k, c)| fill(k, c));
    // SAFETY: the caller's `fill` initialized every element of `..len`, within the capacity.
    unsafe { v.set_len(len) };
    v
}
