//! The f32 data of candle's CPU storage, borrowed in place: what descent's own ops and the
//! optimizer read. Each error names what was read (`"conv2d input"`, a parameter's name).

use candle_core::{CpuStorage, Layout, Storage};

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
