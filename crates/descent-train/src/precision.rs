//! Mixed precision: the matrix products of the fused ops (linear, convolution, attention) in
//! bfloat16 with f32 accumulation, as `torch.autocast("cpu", dtype=torch.bfloat16)` runs them,
//! while the parameters (the master weights), the gradients, the optimizer's state, the loss and
//! everything else (bias, activations, norms, softmax) stay f32.
//!
//! The precision is a per-thread setting ([`Autocast`], like torch's autocast context) that each
//! op reads once when it is built, on the thread that builds it, and keeps for its backward:
//! the backward's products (the gradients with respect to the weights and the inputs) run in the
//! precision of their forward.
//!
//! A product `C (+)= A·B` rounds `A` and `B` to bfloat16 (round to nearest even; subnormals to
//! zero, as the hardware reads them), packs them in pairs along `k`, and sums the pair products in
//! f32: with AVX-512 BF16 (`vdpbf16ps`, detected at run time) sixteen columns at a time, otherwise
//! by the scalar kernel [`tile_scalar`], which does the same operations in the same order (each
//! pair adds its odd product, then its even one, each one fused multiply-add rounded to nearest
//! even with subnormal results flushed to zero), so both give the same bits.

use std::cell::Cell;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gemm::Strided;

/// The arithmetic of the matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// Products of bfloat16 operands summed in f32 (see the module documentation).
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::Param(format!("precision `{other}`: accepted: f32, bf16"))),
        }
    }

    /// The name [`Precision::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this precision runs at its intended speed on this CPU: always for f32; for bf16
    /// only with AVX-512 BF16 (otherwise the scalar kernel gives the same results, slowly).
    pub fn is_fast(self) -> bool {
        self == Precision::F32 || simd_available()
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision the ops built on this thread use now.
pub fn current() -> Precision {
    CURRENT.with(|c| c.get())
}

/// Sets this thread's precision until dropped (then the previous one comes back), like
/// `with torch.autocast(...)`.
#[must_use = "the precision holds while the guard lives"]
pub struct Autocast {
    previous: Precision,
}

impl Autocast {
    /// Ops built on this thread while the guard lives use `precision`.
    pub fn enter(precision: Precision) -> Autocast {
        Autocast { previous: CURRENT.with(|c| c.replace(precision)) }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Whether the CPU has AVX-512 BF16 (`vdpbf16ps`).
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bfloat16 (its bits): to nearest, ties to even; NaN stays a (quiet) NaN; a
/// subnormal `x` becomes a zero of its sign (`vdpbf16ps` reads subnormal inputs as zero anyway).
pub fn to_bf16(x: f32) -> u16 {
    (round_bits(x.to_bits()) >> 16) as u16
}

/// [`to_bf16`] on the bits of an f32, giving the bfloat16 in the high half (the low half zero).
/// Branch-free, so that the packing loops vectorize.
#[inline(always)]
fn round_bits(b: u32) -> u32 {
    let nan = b & 0x7fff_ffff > 0x7f80_0000;
    let subnormal = b & 0x7f80_0000 == 0;
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    let r = if nan {
        b | 0x0040_0000
    } else if subnormal {
        b & 0x8000_0000
    } else {
        rounded
    };
    r & 0xffff_0000
}

/// The packed pair of two f32 (bits): `even` rounded in the low half, `odd` in the high half.
#[inline(always)]
fn pair(even: u32, odd: u32) -> u32 {
    (round_bits(even) >> 16) | round_bits(odd)
}

/// The f32 of a bfloat16's bits (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Rows of a packed `A` panel (the kernel's tile height).
pub const MR: usize = 8;
/// Columns of a packed `B` panel (two AVX-512 vectors; the tile width).
pub const NR: usize = 32;

/// A matrix operand read as `[rows × k]`: element `(i, kk)` at `s[i·rs + kk·ks]`.
#[derive(Clone, Copy)]
struct View<'a> {
    s: &'a [f32],
    rs: usize,
    ks: usize,
}

/// Packs the `rows × k` operand `v` into panels of `w` rows in `out` (grown as needed, its
/// first `rows.div_ceil(w)·kp·w` values written whatever they held): panel `q`, pair `p`, row `r`
/// is the u32 at `(q·kp + p)·w + r` holding `(v[q·w+r, 2p], v[q·w+r, 2p+1])` in bfloat16, low
/// half first; the rows past `rows` and the element past an odd `k` are zero. `simd`: by
/// [`pack_panel_avx512`] (the same bits as [`pack_panel`]).
fn pack(v: View, rows: usize, k: usize, w: usize, parallel: bool, simd: bool, out: &mut Vec<u32>) {
    let kp = k.div_ceil(2);
    let len = rows.div_ceil(w) * kp * w;
    if out.len() < len {
        out.resize(len, 0);
    }
    let fill = |(q, panel): (usize, &mut [u32])| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            assert!(pack_simd_available(), "the AVX-512 packing on a CPU without it");
            // SAFETY: the features were detected; `panel` is `kp·w` long.
            return unsafe { pack_panel_avx512(v, rows, k, w, q, panel) };
        }
        pack_panel(v, rows, k, w, q, panel)
    };
    let out = &mut out[..len];
    if parallel {
        out.par_chunks_mut(kp * w).enumerate().for_each(fill);
    } else {
        out.chunks_mut(kp * w).enumerate().for_each(fill);
    }
}

/// Whether the CPU runs [`pack_panel_avx512`] (AVX-512 F, BW, VL and BF16).
fn pack_simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_available()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`pack_panel`] by AVX-512: `vcvtne2ps2bf16` rounds two vectors of f32 into one of bfloat16
/// (to nearest even, subnormals to zero, NaN quieted: [`to_bf16`]'s rule, bit for bit), and the
/// pairs go to the panel by vector stores: an operand contiguous along `k` is transposed in
/// registers, eight rows of sixteen pairs at a time; one with its rows side by side at each `k`
/// has its two `k`'s interleaved by `vpermw`. Every element of the panel is written (the rows
/// past `rows` and the element past an odd `k` as zero), so the buffer may hold anything before.
///
/// # Safety
/// The CPU must have AVX-512F, BW, VL and BF16; `v` holds the `rows × k` operand and `panel` is
/// `kp·w` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_panel_avx512(v: View, rows: usize, k: usize, w: usize, q: usize, panel: &mut [u32]) {
    use std::arch::x86_64::*;
    let kp = k.div_ceil(2);
    assert!(panel.len() >= kp * w && w.is_multiple_of(8));
    let r_end = (rows - q * w).min(w);
    let out = panel.as_mut_ptr();
    let bf = |x: __m512bh| std::mem::transmute::<__m512bh, __m512i>(x);
    if v.ks == 1 {
        // Rows along k: per row, 32 k's round into 16 pairs; eight rows' pairs transpose to
        // sixteen 8-row stripes.
        let lo64 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
        let hi64 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
        for r0 in (0..w).step_by(8) {
            for p0 in (0..kp).step_by(16) {
                let k0 = 2 * p0;
                let kn = (k - k0).min(32);
                let m0: __mmask16 = if kn >= 16 { 0xffff } else { (1u32 << kn) as u16 - 1 };
                let m1: __mmask16 = if kn >= 32 {
                    0xffff
                } else if kn <= 16 {
                    0
                } else {
                    (1u32 << (kn - 16)) as u16 - 1
                };
                let mut rw = [_mm512_setzero_si512(); 8];
                for (i, x) in rw.iter_mut().enumerate() {
                    let r = r0 + i;
                    if r < r_end {
                        let src = v.s.as_ptr().add((q * w + r) * v.rs + k0);
                        let a = _mm512_maskz_loadu_ps(m0, src);
                        let b = _mm512_maskz_loadu_ps(m1, src.wrapping_add(16));
                        *x = bf(_mm512_cvtne2ps_pbh(b, a));
                    }
                }
                // rw[i] lane L (pairs 4L..4L+3) of row i; after two unpack stages u[j] lane L
                // holds pair 4L+j of rows 0–3 and u[4+j] the same of rows 4–7.
                let t = [
                    _mm512_unpacklo_epi32(rw[0], rw[1]),
                    _mm512_unpackhi_epi32(rw[0], rw[1]),
                    _mm512_unpacklo_epi32(rw[2], rw[3]),
                    _mm512_unpackhi_epi32(rw[2], rw[3]),
                    _mm512_unpacklo_epi32(rw[4], rw[5]),
                    _mm512_unpackhi_epi32(rw[4], rw[5]),
                    _mm512_unpacklo_epi32(rw[6], rw[7]),
                    _mm512_unpackhi_epi32(rw[6], rw[7]),
                ];
                let u = [
                    _mm512_unpacklo_epi64(t[0], t[2]),
                    _mm512_unpackhi_epi64(t[0], t[2]),
                    _mm512_unpacklo_epi64(t[1], t[3]),
                    _mm512_unpackhi_epi64(t[1], t[3]),
                    _mm512_unpacklo_epi64(t[4], t[6]),
                    _mm512_unpackhi_epi64(t[4], t[6]),
                    _mm512_unpacklo_epi64(t[5], t[7]),
                    _mm512_unpackhi_epi64(t[5], t[7]),
                ];
                let pn = (kp - p0).min(16);
                let put = |p: usize, x: __m256i| {
                    if p < pn {
                        _mm256_storeu_si256(out.add((p0 + p) * w + r0) as *mut __m256i, x);
                    }
                };
                for j in 0..4 {
                    // Pairs j and 4 + j (low), 8 + j and 12 + j (high), rows 0–7 each.
                    let lo = _mm512_permutex2var_epi64(u[j], lo64, u[4 + j]);
                    let hi = _mm512_permutex2var_epi64(u[j], hi64, u[4 + j]);
                    put(j, _mm512_castsi512_si256(lo));
                    put(4 + j, _mm512_extracti64x4_epi64::<1>(lo));
                    put(8 + j, _mm512_castsi512_si256(hi));
                    put(12 + j, _mm512_extracti64x4_epi64::<1>(hi));
                }
            }
        }
    } else {
        // Rows side by side at each k: two k's of 16 rows round into one vector, then `vpermw`
        // interleaves them into 16 pairs.
        assert_eq!(v.rs, 1, "an operand with neither stride 1");
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
            1, 16, 0,
        );
        let base = v.s.as_ptr().add(q * w);
        for r0 in (0..w).step_by(16) {
            let rn = (r_end.saturating_sub(r0)).min(16);
            let lm: __mmask16 = if rn >= 16 { 0xffff } else { (1u32 << rn) as u16 - 1 };
            let sm: __mmask16 = if w - r0 >= 16 { 0xffff } else { 0xff };
            for p in 0..kp {
                let e = _mm512_maskz_loadu_ps(lm, base.wrapping_add(2 * p * v.ks + r0));
                let o = if 2 * p + 1 < k {
                    _mm512_maskz_loadu_ps(lm, base.wrapping_add((2 * p + 1) * v.ks + r0))
                } else {
                    _mm512_setzero_ps()
                };
                let x = _mm512_permutexvar_epi16(idx, bf(_mm512_cvtne2ps_pbh(o, e)));
                _mm512_mask_storeu_epi32(out.add(p * w + r0) as *mut i32, sm, x);
            }
        }
    }
}

/// Panel `q` of [`pack`].
#[inline(always)]
fn pack_panel(v: View, rows: usize, k: usize, w: usize, q: usize, panel: &mut [u32]) {
    let kp = k.div_ceil(2);
    let r_end = (rows - q * w).min(w);
    let bits = |x: f32| x.to_bits();
    if r_end < w {
        // The rows past the operand's end (the buffer is reused: they may hold anything).
        for p in 0..kp {
            panel[p * w + r_end..(p + 1) * w].fill(0);
        }
    }
    if v.ks == 1 {
        // Each row contiguous along k: its pairs side by side, then written down the panel.
        let mut row = vec![0u32; kp];
        for r in 0..r_end {
            let src = &v.s[(q * w + r) * v.rs..][..k];
            let (whole, tail) = src.split_at(k - k % 2);
            for (d, e) in row.iter_mut().zip(whole.chunks_exact(2)) {
                *d = pair(bits(e[0]), bits(e[1]));
            }
            if let Some(&last) = tail.first() {
                row[kp - 1] = pair(bits(last), 0);
            }
            for (p, &x) in row.iter().enumerate() {
                panel[p * w + r] = x;
            }
        }
    } else {
        // Rows side by side at each k (a transposed operand): two k's make a pair for all rows.
        let at = |kk: usize| &v.s[kk * v.ks + q * w * v.rs..][..r_end];
        for p in 0..kp {
            let dst = &mut panel[p * w..][..r_end];
            if 2 * p + 1 < k {
                for ((d, &e), &o) in dst.iter_mut().zip(at(2 * p)).zip(at(2 * p + 1)) {
                    *d = pair(bits(e), bits(o));
                }
            } else {
                for (d, &e) in dst.iter_mut().zip(at(2 * p)) {
                    *d = pair(bits(e), 0);
                }
            }
        }
    }
}

/// `x` with a subnormal read as zero of its sign (the hardware's DAZ and FTZ).
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// The scalar reference of one tile: `c[r·NR + j] += Σ_p a(r, p) · b(p, j)` over the `kp` pairs
/// of the packed `a` (`[kp × MR]`) and `b` (`[kp × NR]`), each pair `vdpbf16ps`'s way: the odd
/// product first, then the even one, each a fused multiply-add in f32 (exact, since the product of
/// two bfloat16 is exact in f32's precision), subnormals flushed to zero.
pub fn tile_scalar(a: &[u32], b: &[u32], kp: usize, c: &mut [f32; MR * NR]) {
    for r in 0..MR {
        for j in 0..NR {
            let mut acc = flush(c[r * NR + j]);
            for p in 0..kp {
                let (x, y) = (a[p * MR + r], b[p * NR + j]);
                acc = flush(from_bf16((x >> 16) as u16).mul_add(from_bf16((y >> 16) as u16), acc));
                acc = flush(from_bf16(x as u16).mul_add(from_bf16(y as u16), acc));
            }
            c[r * NR + j] = acc;
        }
    }
}

/// [`tile_scalar`] by `vdpbf16ps`: each row's two accumulators of 16 columns take the row's pair
/// broadcast against the panel's two vectors of pairs.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16; `a` holds `kp·MR` and `b` `kp·NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn tile_avx512(a: &[u32], b: &[u32], kp: usize, c: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for (r, row) in acc.iter_mut().enumerate() {
        row[0] = _mm512_loadu_ps(c.as_ptr().add(r * NR));
        row[1] = _mm512_loadu_ps(c.as_ptr().add(r * NR + 16));
    }
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        let b0 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pb.add(p * NR) as *const _));
        let b1 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pb.add(p * NR + 16) as *const _));
        for (r, row) in acc.iter_mut().enumerate() {
            let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*pa.add(p * MR + r) as i32));
            row[0] = _mm512_dpbf16_ps(row[0], x, b0);
            row[1] = _mm512_dpbf16_ps(row[1], x, b1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.as_mut_ptr().add(r * NR), row[0]);
        _mm512_storeu_ps(c.as_mut_ptr().add(r * NR + 16), row[1]);
    }
}

/// [`tile_avx512`] reading and writing its `rows × cols` corner of the output in place
/// (`c[r·ldc + j]`, masked to the columns that exist), from zero when not `accumulate`.
///
/// # Safety
/// As [`tile_avx512`]; `c` is valid for the rows below `rows` and the columns below `cols`
/// (≤ [`MR`], [`NR`]) at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512_at(
    a: &[u32],
    b: &[u32],
    kp: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kp * MR && b.len() >= kp * NR && rows <= MR && cols <= NR);
    let m0: __mmask16 = if cols >= 16 { 0xffff } else { ((1u32 << cols) - 1) as u16 };
    let m1: __mmask16 = if cols >= 32 {
        0xffff
    } else if cols <= 16 {
        0
    } else {
        ((1u32 << (cols - 16)) - 1) as u16
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate().take(rows) {
            row[0] = _mm512_maskz_loadu_ps(m0, c.wrapping_add(r * ldc));
            row[1] = _mm512_maskz_loadu_ps(m1, c.wrapping_add(r * ldc + 16));
        }
    }
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        let b0 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pb.add(p * NR) as *const _));
        let b1 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pb.add(p * NR + 16) as *const _));
        for (r, row) in acc.iter_mut().enumerate() {
            let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*pa.add(p * MR + r) as i32));
            row[0] = _mm512_dpbf16_ps(row[0], x, b0);
            row[1] = _mm512_dpbf16_ps(row[1], x, b1);
        }
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        _mm512_mask_storeu_ps(c.wrapping_add(r * ldc), m0, row[0]);
        _mm512_mask_storeu_ps(c.wrapping_add(r * ldc + 16), m1, row[1]);
    }
}

/// Which tile kernel a product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// [`tile_scalar`].
    Scalar,
    /// [`tile_avx512`] (only where [`simd_available`]).
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        if simd_available() {
            Kernel::Avx512
        } else {
            Kernel::Scalar
        }
    }

    fn tile(self, a: &[u32], b: &[u32], kp: usize, c: &mut [f32; MR * NR]) {
        match self {
            Kernel::Scalar => tile_scalar(a, b, kp, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                assert!(simd_available(), "the AVX-512 BF16 kernel on a CPU without it");
                // SAFETY: the features were detected; the tile reads only its panels' lengths.
                unsafe { tile_avx512(a, b, kp, c) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => panic!("the AVX-512 BF16 kernel on a CPU without it"),
        }
    }
}

/// Shares the output among the tile tasks: each writes its own rows and columns only.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tiles write disjoint elements (see `matmul_bf16_with`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `dst[m×n] (= or +=) lhs[m×k] · rhs[k×n]` (row-major; `lhs_t` / `rhs_t`: the operand's storage
/// is transposed) with both operands rounded to bfloat16 and the products summed in f32 by
/// `kernel`, in tiles of `MR × NR` (across rayon threads when `parallel`). Each output is one
/// running sum over `k` in order, so the result does not depend on the tiling or the threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16_with(
    kernel: Kernel,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n, "matmul operand sizes");
    let (lhs, rhs) = (Strided::of(lhs, lhs_t, m, k), Strided::of(rhs, rhs_t, k, n));
    matmul_bf16_strided(kernel, dst, accumulate, lhs, rhs, m, n, k, parallel)
}

/// [`matmul_bf16_with`] on operands read in place through their strides (one of each
/// operand's strides 1); `dst` is dense, `m × n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_bf16_strided(
    kernel: Kernel,
    dst: &mut [f32],
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert!(dst.len() >= m * n && lhs.holds(m, k) && rhs.holds(k, n), "matmul operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(2);
    // A as [m × k]; B as its transpose [n × k], so that both pack as rows along k.
    let a = View { s: lhs.s, rs: lhs.rs, ks: lhs.cs };
    let bt = View { s: rhs.s, rs: rhs.cs, ks: rhs.rs };
    // This thread's packing buffers, taken out while in use (a nested product on the same thread,
    // as rayon may run one while this one waits, finds none and uses its own).
    let (mut pa, mut pb) = PACKED.with(|c| c.take());
    let simd = kernel == Kernel::Avx512;
    pack(a, m, k, MR, parallel, simd, &mut pa);
    pack(bt, n, k, NR, parallel, simd, &mut pb);
    let (mb, nb) = (m.div_ceil(MR), n.div_ceil(NR));
    let out = Out(dst.as_mut_ptr());
    // Tiles column panel by column panel: consecutive tasks share their B panel.
    let tile = |t: usize| {
        let (jb, ib) = (t / mb, t % mb);
        let (i0, j0) = (ib * MR, jb * NR);
        let (rows, cols) = ((m - i0).min(MR), (n - j0).min(NR));
        let (ta, tb) = (&pa[ib * kp * MR..][..kp * MR], &pb[jb * kp * NR..][..kp * NR]);
        let o = out;
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx512 {
            assert!(simd_available(), "the AVX-512 BF16 kernel on a CPU without it");
            // SAFETY: the features were detected; the tile's rows and columns are inside dst,
            // and no other tile touches them.
            unsafe { tile_avx512_at(ta, tb, kp, o.0.add(i0 * n + j0), n, rows, cols, accumulate) };
            return;
        }
        let mut c = [0.0f32; MR * NR];
        if accumulate {
            for r in 0..rows {
                for j in 0..cols {
                    // SAFETY: (i0 + r, j0 + j) is inside dst; no other tile touches it.
                    c[r * NR + j] = unsafe { *o.0.add((i0 + r) * n + j0 + j) };
                }
            }
        }
        kernel.tile(ta, tb, kp, &mut c);
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: as above.
                unsafe { *o.0.add((i0 + r) * n + j0 + j) = c[r * NR + j] };
            }
        }
    };
    if parallel {
        (0..mb * nb).into_par_iter().with_min_len(4).for_each(tile);
    } else {
        (0..mb * nb).for_each(tile);
    }
    PACKED.with(|c| {
        // Keep the larger buffers (a nested product may have put back its own).
        let (ka, kb) = c.take();
        c.set((if ka.len() > pa.len() { ka } else { pa }, if kb.len() > pb.len() { kb } else { pb }));
    });
}

thread_local! {
    /// The packed `A` and `B` of this thread's last product: reused, grown, never shrunk, so that
    /// a training step's products do not page-fault fresh buffers in.
    static PACKED: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: ties to the even one above.
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20))), 1.0 + 2f32.powi(-7));
        assert_eq!(to_bf16(-0.0), 0x8000);
        assert_eq!(to_bf16(f32::MIN_POSITIVE / 4.0), 0);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::NEG_INFINITY)), f32::NEG_INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::MIN_POSITIVE)), f32::MIN_POSITIVE);
    }

    /// `vcvtne2ps2bf16` rounds as [`to_bf16`]: ties, NaN (quieted, payload kept), infinities,
    /// overflow to infinity, subnormals to a zero of their sign, and random bits.
    #[test]
    fn simd_packing_equals_the_scalar_one() {
        if !pack_simd_available() {
            return;
        }
        let mut rng = Rng::new(3);
        let special = [
            0.0f32,
            -0.0,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            -(1.0 + 2f32.powi(-8)),
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc1_2345),
            f32::MIN_POSITIVE,
            f32::MIN_POSITIVE / 3.0,
            -f32::MIN_POSITIVE / 5.0,
            f32::from_bits(0x007f_ffff),
            f32::from_bits(0x0080_7fff),
            f32::from_bits(0x0080_8000),
        ];
        for &(rows, k) in &[(1, 1), (3, 5), (8, 32), (9, 33), (31, 64), (33, 31), (40, 67), (7, 129)] {
            // Half random bits (every exponent, NaN payloads), half special values, half normal.
            let s: Vec<f32> = (0..rows * k)
                .map(|i| match i % 3 {
                    0 => f32::from_bits(rng.next_u64() as u32),
                    1 => special[i / 3 % special.len()],
                    _ => rng.normal(),
                })
                .collect();
            for transposed in [false, true] {
                let v = if transposed { View { s: &s, rs: 1, ks: rows } } else { View { s: &s, rs: k, ks: 1 } };
                for w in [MR, NR] {
                    for parallel in [false, true] {
                        let (mut a, mut b) = (vec![0xdead_beef; 7], vec![0xdead_beef; 5000]);
                        pack(v, rows, k, w, parallel, false, &mut a);
                        pack(v, rows, k, w, parallel, true, &mut b);
                        let len = rows.div_ceil(w) * k.div_ceil(2) * w;
                        assert_eq!(a.len(), len);
                        for i in 0..len {
                            assert_eq!(a[i], b[i], "{rows}x{k} transposed {transposed} w {w} [{i}]");
                        }
                        // The pairs are the rounded operand's, rows past the end zero.
                        for (i, &x) in a.iter().enumerate() {
                            let (q, p, r) = (i / (w * k.div_ceil(2)), i / w % k.div_ceil(2), i % w);
                            let at = |kk: usize| {
                                let row = q * w + r;
                                if row >= rows || kk >= k {
                                    0
                                } else if transposed {
                                    to_bf16(s[kk * rows + row]) as u32
                                } else {
                                    to_bf16(s[row * k + kk]) as u32
                                }
                            };
                            assert_eq!(x, at(2 * p) | at(2 * p + 1) << 16, "{rows}x{k} [{i}]");
                        }
                    }
                }
            }
        }
    }

    /// The plain definition of the product in f64: bfloat16 operands, exact sums.
    #[allow(clippy::too_many_arguments)]
    fn exact(lhs: &[f32], lhs_t: bool, rhs: &[f32], rhs_t: bool, m: usize, n: usize, k: usize) -> Vec<f64> {
        let q = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|kk| {
                        let a = if lhs_t { lhs[kk * m + i] } else { lhs[i * k + kk] };
                        let b = if rhs_t { rhs[j * k + kk] } else { rhs[kk * n + j] };
                        q(a) * q(b)
                    })
                    .sum();
            }
        }
        out
    }

    /// Odd shapes (tails of rows, columns and an odd k), every transposition, accumulating and
    /// not: the scalar kernel is within f32 rounding of the exact sums of the rounded operands,
    /// and the AVX-512 kernel gives the scalar kernel's bits (same operations in the same order).
    #[test]
    fn simd_kernel_equals_the_scalar_one_on_odd_shapes() {
        let mut rng = Rng::new(7);
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 32, 2),
            (9, 33, 3),
            (17, 31, 64),
            (13, 70, 129),
            (64, 100, 255),
            (5, 1, 1000),
            (20, 45, 17),
            (2, 130, 34),
            (41, 9, 33),
        ] {
            for (lhs_t, rhs_t, accumulate, parallel) in [
                (false, false, false, false),
                (true, false, true, true),
                (false, true, false, true),
                (true, true, true, false),
            ] {
                let lhs: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
                let rhs: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
                let init: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
                let run = |kernel| {
                    let mut d = init.clone();
                    matmul_bf16_with(kernel, &mut d, accumulate, &lhs, lhs_t, &rhs, rhs_t, m, n, k, parallel);
                    d
                };
                let scalar = run(Kernel::Scalar);
                let want = exact(&lhs, lhs_t, &rhs, rhs_t, m, n, k);
                let mag = exact(
                    &lhs.iter().map(|x| x.abs()).collect::<Vec<_>>(),
                    lhs_t,
                    &rhs.iter().map(|x| x.abs()).collect::<Vec<_>>(),
                    rhs_t,
                    m,
                    n,
                    k,
                );
                for i in 0..m * n {
                    let base = if accumulate { init[i] as f64 } else { 0.0 };
                    // Sequential f32 sums of k terms: at most k·2^-24 of the sum of magnitudes.
                    let tol = (k as f64 + 1.0) * 2f64.powi(-24) * (mag[i] + base.abs());
                    assert!(
                        (scalar[i] as f64 - want[i] - base).abs() <= tol,
                        "{m}x{n}x{k} [{i}]: {} vs {}",
                        scalar[i],
                        want[i] + base
                    );
                }
                if simd_available() {
                    let simd = run(Kernel::Avx512);
                    for i in 0..m * n {
                        assert_eq!(
                            simd[i].to_bits(),
                            scalar[i].to_bits(),
                            "{m}x{n}x{k} lhs_t {lhs_t} rhs_t {rhs_t} [{i}]: {} vs {}",
                            simd[i],
                            scalar[i]
                        );
                    }
                }
            }
        }
    }

    /// The pair's order and rounding: `acc + odd` is rounded before `+ even` is added. With
    /// `acc = 1`, even product 1 and odd product 2^24: odd first, 2^24 + 1 ties to 2^24 and so
    /// does 2^24 + 1 again; even first (or one exact sum) would give 2^24 + 2.
    #[test]
    fn pairs_add_the_odd_product_first() {
        let (a, b) = ([1.0f32, 4096.0], [1.0f32, 4096.0]);
        for kernel in [Kernel::Scalar, Kernel::Avx512] {
            if kernel == Kernel::Avx512 && !simd_available() {
                continue;
            }
            let mut d = vec![1.0f32];
            matmul_bf16_with(kernel, &mut d, true, &a, false, &b, false, 1, 1, 2, false);
            assert_eq!(d[0], 16_777_216.0, "{kernel:?}");
        }
    }

    /// The products of the GPT (768 tokens; 128 channels, 4× in its MLP, 65 characters) and of
    /// the MLP at batch 128 (784 → 128 → 10), forward and backward (`gW = gYᵀ·X`, `gX = gY·W`),
    /// in f32 (the `gemm` crate) and in bfloat16: GFLOP/s of each, on one thread and on all.
    /// `cargo test --release -p descent-train --lib precision::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn speed_on_the_models_shapes() {
        // (name, m, n, k, lhs_t, rhs_t) as the linear op calls the product.
        let mut shapes = vec![];
        for (name, n, inp, out) in [
            ("gpt qkv", 768, 128, 384),
            ("gpt proj", 768, 128, 128),
            ("gpt fc", 768, 128, 512),
            ("gpt fc proj", 768, 512, 128),
            ("gpt head", 768, 128, 65),
            ("mlp fc1", 128, 784, 128),
            ("mlp fc2", 128, 128, 10),
        ] {
            shapes.push((format!("{name} fwd"), n, out, inp, false, true));
            shapes.push((format!("{name} gW"), out, inp, n, true, false));
            shapes.push((format!("{name} gX"), n, inp, out, false, false));
        }
        let mut rng = Rng::new(1);
        // The fastest of the calls in 0.1 s (the machine may be shared: the minimum is the
        // call that nothing interrupted).
        let time = |f: &mut dyn FnMut()| {
            f();
            let (start, mut best) = (std::time::Instant::now(), f64::INFINITY);
            while start.elapsed().as_secs_f64() < 0.1 {
                let t = std::time::Instant::now();
                f();
                best = best.min(t.elapsed().as_secs_f64());
            }
            best
        };
        let (mut total32, mut total16) = ([0.0; 2], [0.0; 2]);
        for (name, m, n, k, lt, rt) in shapes {
            let lhs: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let rhs: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            let mut d = vec![0.0f32; m * n];
            let flop = 2.0 * (m * n * k) as f64 * 1e-9;
            let mut line = format!("{name:>16} {m:>4}x{n:>4}x{k:>4}");
            for (i, par) in [false, true].into_iter().enumerate() {
                let t32 = time(&mut || crate::gemm::matmul(&mut d, true, &lhs, lt, &rhs, rt, m, n, k, par));
                let t16 =
                    time(&mut || matmul_bf16_with(Kernel::best(), &mut d, true, &lhs, lt, &rhs, rt, m, n, k, par));
                total32[i] += t32;
                total16[i] += t16;
                line += &format!(
                    " | {}: f32 {:6.1} bf16 {:6.1} GFLOP/s {:5.2}x ({:7.1} us)",
                    if par { "par" } else { "one" },
                    flop / t32,
                    flop / t16,
                    t32 / t16,
                    t16 * 1e6
                );
            }
            println!("{line}");
        }
        println!(
            "sum of times: one thread f32 {:.0} us bf16 {:.0} us ({:.2}x); parallel f32 {:.0} us bf16 {:.0} us ({:.2}x)",
            total32[0] * 1e6,
            total16[0] * 1e6,
            total32[0] / total16[0],
            total32[1] * 1e6,
            total16[1] * 1e6,
            total32[1] / total16[1]
        );
    }

    #[test]
    fn autocast_is_scoped() {
        assert_eq!(current(), Precision::F32);
        {
            let _g = Autocast::enter(Precision::Bf16);
            assert_eq!(current(), Precision::Bf16);
        }
        assert_eq!(current(), Precision::F32);
        assert!(Precision::parse("fp8").is_err());
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
    }
}
