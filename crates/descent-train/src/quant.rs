//! Post-training static int8 quantization of the MLP and LeNet-5: weights per output channel,
//! symmetric, in `[−127, 127]`; each layer's input per tensor, asymmetric `u8` with a zero point,
//! its range calibrated on training batches; Linear and Conv run as int8 GEMMs with exact `i32`
//! accumulation (a convolution through im2col of the quantized input), whose epilogue
//! max-pools, dequantizes with the bias, applies ReLU and quantizes for the next layer.
//!
//! With `x ≈ s_x (q_x − z)` and `w ≈ s_w[o] q_w`, a layer's output is
//! `y[o] = s_x s_w[o] (Σ q_x q_w − z Σ q_w) + b[o]`: the row sums `Σ q_w` are computed once.
//!
//! ## Execution
//! [`QuantModel::run`] splits a batch into tasks of a few images (or rows) run in parallel; in a
//! task each layer's input is u8 (images NHWC), a convolution is an im2col of whole images into
//! u8 rows and one GEMM per block of them, a linear layer one GEMM over the task's rows, and each
//! GEMM's epilogue writes the next layer's u8 input or the f32 logits. The weights are permuted
//! to the activations' order and packed for the kernels once, when the model is built.
//! [`QuantModel::run_reference`] is the unfused layer-by-layer path ([`QLayer::forward`]: f32
//! between layers, NCHW), which the pipeline matches bit for bit.
//!
//! ## Kernels and overflow
//! Three kernels compute `C = A Bᵀ` for `A` u8 `[m × k]` and `B` i8 `[n × k]` in i32, chosen at
//! run time like descent-core's AVX2 kernels. The SIMD ones broadcast four bytes of a row of `A`
//! to every lane and multiply them with a panel of `B` packed at load (8 output columns × 4
//! inputs per register), in register tiles of up to 4 rows × 2 panels, so there is no
//! horizontal sum; one macro generates both from their two differing steps:
//! - AVX-512 VNNI (`vpdpbusd` on 256-bit registers): u8 × i8 products summed four at a time
//!   straight into i32 lanes, without intermediate saturation (`vpdpbusds` would saturate);
//! - AVX2: the four bytes widened to two i16 pairs (`vpshufb`), the weights packed as i16 at
//!   load, multiplied with `vpmaddwd`, which sums two i16 × i16 products into an i32.
//!   `vpmaddubsw` (u8 × i8 summed in pairs into a *saturating* i16) is not used: 2 · 255 · 127 =
//!   64 770 > 32 767 would saturate. With i16 widening a pair is at most 64 770 in magnitude, and
//!   no pair is (−32 768)², the only input `vpmaddwd` wraps on;
//! - a scalar reference on the unpacked rows.
//!
//! Every product is at most 255 · 127 = 32 385 in magnitude, so an i32 sum of up to
//! ⌊(2³¹ − 1)/32 385⌋ = 66 311 products cannot overflow: `k` is limited to 65 536 ([`MAX_K`]).
//! Integer sums are exact whatever their order, so the three kernels agree bit for bit, and so
//! do the dequantized outputs (the same f32 operations follow).

use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layers::MaxPool2d;
use crate::model::{Mode, Model};
use crate::rng::Rng;

/// The longest dot product a kernel accepts (see the module's overflow argument).
pub const MAX_K: usize = 65_536;
/// The inputs of a dot product are padded with zeros to a multiple of this many: the four u8 × i8
/// products one `vpdpbusd` lane sums.
const K_GROUP: usize = 4;
/// Output columns per packed panel of the weights: the eight i32 lanes of a 256-bit register.
pub const PANEL: usize = 8;

/// The int8 GEMM kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The reference kernel, plain Rust on the unpacked rows.
    Scalar,
    /// AVX2: inputs widened to i16 pairs (`vpshufb`), weights packed as i16, `vpmaddwd`.
    Avx2,
    /// AVX-512 VNNI: `vpdpbusd` on u8 × i8.
    Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs (`DESCENT_INT8_KERNEL=scalar|avx2|vnni` chooses one, as
    /// long as the CPU has it).
    pub fn detect() -> Kernel {
        static K: OnceLock<Kernel> = OnceLock::new();
        *K.get_or_init(|| {
            let best = Kernel::available().last().copied().unwrap_or(Kernel::Scalar);
            match std::env::var("DESCENT_INT8_KERNEL").ok().as_deref() {
                Some("scalar") => Kernel::Scalar,
                Some("avx2") if Kernel::available().contains(&Kernel::Avx2) => Kernel::Avx2,
                _ => best,
            }
        })
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        let mut v = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") {
                v.push(Kernel::Vnni);
            }
        }
        v
    }

    /// The kernel's name as reports show it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Vnni => "avx512-vnni",
        }
    }
}

/// `k` rounded up to the padding of a dot product's inputs (a multiple of 4).
pub fn padded(k: usize) -> usize {
    k.div_ceil(K_GROUP) * K_GROUP
}

/// `n` rounded up to whole panels: the row length of a kernel's output.
pub fn padded_cols(n: usize) -> usize {
    n.div_ceil(PANEL) * PANEL
}

/// A weight matrix `[n × k]` quantized for the kernels: the i8 rows padded with zeros to
/// [`padded`]`(k)` (the scalar kernel reads them), and the same values packed once into the
/// panels the SIMD kernels read.
///
/// A panel holds [`PANEL`] output columns (the last one padded with zero columns); within it the
/// weights run in groups of four inputs: VNNI's i8 panel stores, for each group, the four bytes
/// of column 0, then of column 1, … (32 bytes: one register, one `vpdpbusd` against four inputs
/// broadcast to every lane); AVX2's i16 panel stores, for each group, the pairs of inputs 0–1 of
/// the eight columns then the pairs of inputs 2–3 (two registers, two `vpmaddwd`).
#[derive(Debug, Clone)]
pub struct QMatrix {
    /// Rows (output channels).
    pub n: usize,
    /// Columns (inputs per output) before padding.
    pub k: usize,
    /// The int8 rows, padded with zeros.
    pub q: Vec<i8>,
    /// `Σ_k q[j, k]` of each row.
    pub row_sum: Vec<i32>,
    /// VNNI's panels: `[panel][group][column][4]` i8.
    panels_i8: Vec<i8>,
    /// AVX2's panels: `[panel][group][pair][column][2]` i16.
    panels_i16: Vec<i16>,
}

impl QMatrix {
    /// From `[n × k]` i8 values.
    pub fn new(n: usize, k: usize, values: &[i8]) -> Result<QMatrix> {
        if k > MAX_K || values.len() != n * k {
            return Err(Error::Param(format!("int8 matrix {n}×{k} from {} values (k at most {MAX_K})", values.len())));
        }
        let kp = padded(k);
        let mut q = vec![0i8; n * kp];
        for j in 0..n {
            q[j * kp..j * kp + k].copy_from_slice(&values[j * k..(j + 1) * k]);
        }
        let row_sum = (0..n).map(|j| values[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum()).collect();
        let groups = kp / K_GROUP;
        let mut panels_i8 = vec![0i8; padded_cols(n) * kp];
        let mut panels_i16 = vec![0i16; padded_cols(n) * kp];
        for j in 0..n {
            let (p, col) = (j / PANEL, j % PANEL);
            for g in 0..groups {
                let at = (p * groups + g) * PANEL * K_GROUP;
                for t in 0..K_GROUP {
                    let v = q[j * kp + K_GROUP * g + t];
                    panels_i8[at + col * K_GROUP + t] = v;
                    panels_i16[at + (t / 2) * 2 * PANEL + col * 2 + t % 2] = v as i16;
                }
            }
        }
        Ok(QMatrix { n, k, q, row_sum, panels_i8, panels_i16 })
    }
}

/// `c[i, j] = Σ_p a[i, p] · b[j, p]` for `a` `[m × padded(k)]` u8 (the bytes past `k` of a row
/// may hold anything: the weights there are zero) and `c` `[m × padded_cols(n)]` i32 (the columns
/// past `n` receive zeros), with `kernel`.
pub fn gemm_u8i8(kernel: Kernel, a: &[u8], m: usize, b: &QMatrix, c: &mut [i32]) {
    let (kp, np) = (padded(b.k), padded_cols(b.n));
    assert!(a.len() >= m * kp && c.len() >= m * np, "gemm_u8i8 operand sizes");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(std::arch::is_x86_feature_detected!("avx2"));
            // SAFETY: AVX2 is present (checked above); the assert above and the panels' length
            // (np · kp) bound every access.
            unsafe { x86::gemm_avx2(a, m, kp, &b.panels_i16, np / PANEL, c) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => {
            assert!(
                std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl")
            );
            // SAFETY: AVX-512 VNNI and VL are present (checked above); the assert above and the
            // panels' length (np · kp) bound every access.
            unsafe { x86::gemm_vnni(a, m, kp, &b.panels_i8, np / PANEL, c) }
        }
        _ => gemm_scalar(a, m, kp, b, c),
    }
}

/// The reference kernel: a dot product per output on the unpacked rows.
fn gemm_scalar(a: &[u8], m: usize, kp: usize, b: &QMatrix, c: &mut [i32]) {
    let np = padded_cols(b.n);
    for i in 0..m {
        let ai = &a[i * kp..(i + 1) * kp];
        for j in 0..np {
            c[i * np + j] = if j < b.n {
                ai.iter().zip(&b.q[j * kp..(j + 1) * kp]).map(|(&x, &w)| x as i32 * w as i32).sum()
            } else {
                0
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// A register-tiled kernel over packed weights, for an instruction set given by two steps:
    /// `prep` turns four inputs of a row (one u32 broadcast to all eight lanes) into the operand
    /// of `madd`, which adds their products with one panel's group (at pointer `b`) to the
    /// accumulator of eight i32 columns. Tiles of up to four rows × two panels (or eight rows ×
    /// one panel: eight accumulators) run over the whole `k`, so each weight load serves four
    /// rows and each broadcast two panels; panels are the outer loop, so a panel pair stays in L1 while the
    /// rows stream past it.
    macro_rules! packed_kernel {
        ($(#[$attr:meta])* $gemm:ident, $tile:ident, $bt:ty,
         prep: |$x:ident| $prep:expr, madd: |$acc:ident, $p:ident, $b:ident| $madd:expr) => {
            /// One tile: rows `a[r · kp ..]` for `r < R` against panels `b[q · (kp / 4) · 32 ..]`
            /// for `q < P`, written to `c[r · ldc + 8q ..]`.
            $(#[$attr])*
            #[inline]
            unsafe fn $tile<const R: usize, const P: usize>(
                a: *const u8,
                kp: usize,
                b: *const $bt,
                c: *mut i32,
                ldc: usize,
            ) {
                let groups = kp / 4;
                let mut acc = [[_mm256_setzero_si256(); P]; R];
                for g in 0..groups {
                    let bg = b.add(g * 32);
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let $x = _mm256_set1_epi32(a.add(r * kp + 4 * g).cast::<i32>().read_unaligned());
                        let $p = $prep;
                        for (q, acc_rq) in acc_r.iter_mut().enumerate() {
                            let $b = bg.add(q * groups * 32);
                            let $acc = *acc_rq;
                            *acc_rq = $madd;
                        }
                    }
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    for (q, acc_rq) in acc_r.iter().enumerate() {
                        _mm256_storeu_si256(c.add(r * ldc + q * 8).cast(), *acc_rq);
                    }
                }
            }

            /// `c [m × 8 panels] = a [m × kp] · bᵀ` over the packed panels `b`.
            $(#[$attr])*
            pub(super) unsafe fn $gemm(a: &[u8], m: usize, kp: usize, b: &[$bt], panels: usize, c: &mut [i32]) {
                let ldc = panels * 8;
                debug_assert!(a.len() >= m * kp && b.len() >= panels * kp * 8 && c.len() >= m * ldc && kp % 4 == 0);
                let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                let mut p = 0;
                while p < panels {
                    let two = panels - p >= 2;
                    let bp = b.add(p * kp * 8);
                    let mut i = 0;
                    while i < m {
                        // A single panel takes eight rows: eight independent accumulators hide
                        // the latency of the multiply-adds.
                        let rows = if !two && m - i >= 8 { 8 } else { (m - i).min(4) };
                        let (ai, ci) = (a.add(i * kp), c.add(i * ldc + p * 8));
                        match (rows, two) {
                            (8, _) => $tile::<8, 1>(ai, kp, bp, ci, ldc),
                            (4, true) => $tile::<4, 2>(ai, kp, bp, ci, ldc),
                            (3, true) => $tile::<3, 2>(ai, kp, bp, ci, ldc),
                            (2, true) => $tile::<2, 2>(ai, kp, bp, ci, ldc),
                            (1, true) => $tile::<1, 2>(ai, kp, bp, ci, ldc),
                            (4, false) => $tile::<4, 1>(ai, kp, bp, ci, ldc),
                            (3, false) => $tile::<3, 1>(ai, kp, bp, ci, ldc),
                            (2, false) => $tile::<2, 1>(ai, kp, bp, ci, ldc),
                            _ => $tile::<1, 1>(ai, kp, bp, ci, ldc),
                        }
                        i += rows;
                    }
                    p += if two { 2 } else { 1 };
                }
            }
        };
    }

    packed_kernel!(
        #[target_feature(enable = "avx2")]
        gemm_avx2,
        tile_avx2,
        i16,
        // The broadcast bytes x0 x1 x2 x3 as the i16 pairs (x0, x1) and (x2, x3) in every lane.
        prep: |x| (
            _mm256_shuffle_epi8(x, _mm256_set1_epi32(0x8001_8000u32 as i32)),
            _mm256_shuffle_epi8(x, _mm256_set1_epi32(0x8003_8002u32 as i32))
        ),
        madd: |acc, x, b| _mm256_add_epi32(
            _mm256_add_epi32(acc, _mm256_madd_epi16(x.0, _mm256_loadu_si256(b.cast()))),
            _mm256_madd_epi16(x.1, _mm256_loadu_si256(b.add(16).cast()))
        )
    );

    packed_kernel!(
        #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
        gemm_vnni,
        tile_vnni,
        i8,
        prep: |x| x,
        madd: |acc, xb, b| _mm256_dpbusd_epi32(acc, xb, _mm256_loadu_si256(b.cast()))
    );
}

/// The affine map of a layer's input to u8: `q = clamp(round(x / scale) + zero_point, 0, 255)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// The step between quantized values.
    pub scale: f32,
    /// The quantized value of 0.
    pub zero_point: i32,
}

impl QParams {
    /// torch's `MinMaxObserver` for `quint8` (affine): the range widened to hold 0, `scale =
    /// (max − min)/255`, `zero_point = clamp(round(−min/scale), 0, 255)`.
    pub fn from_range(min: f32, max: f32) -> QParams {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = ((hi - lo) / 255.0).max(f32::EPSILON);
        let zero_point = ((-lo / scale).round() as i32).clamp(0, 255);
        QParams { scale, zero_point }
    }

    /// `x` quantized: `⌊x / scale + zero_point + ½⌋` clamped to `[0, 255]` (rounding half up;
    /// a multiply, an add and a truncation, which vectorize where `round` is a library call).
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        Quantizer::of(self).apply(x)
    }
}

/// [`QParams::quantize`] with its reciprocal and offset computed once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantizer {
    inv: f32,
    offset: f32,
}

impl Quantizer {
    pub(crate) fn of(p: &QParams) -> Quantizer {
        Quantizer { inv: 1.0 / p.scale, offset: p.zero_point as f32 + 0.5 }
    }

    #[inline(always)]
    #[allow(clippy::manual_clamp)] // `clamp` keeps NaN, and the unchecked cast below must not see it
    pub(crate) fn apply(self, x: f32) -> u8 {
        // `max` before `min` maps NaN to 0 (`f32::max` returns the other operand), as a clamp
        // then a float-to-integer cast would; the value is then in [0, 255], so truncating it
        // without the cast's checks (which do not vectorize) is exact.
        let t = (x * self.inv + self.offset).max(0.0).min(255.0);
        // SAFETY: t is a number in [0, 255], which fits an i32.
        unsafe { t.to_int_unchecked::<i32>() as u8 }
    }

    /// Whether [`Quantizer::apply`] takes `x` to its rounded value without clamping it to
    /// `[0, 255]` (`⌊x / scale + zero_point + ½⌋` in `[0, 255]`): where quantization-aware
    /// training's straight-through estimator passes the gradient. False for NaN.
    #[inline(always)]
    pub(crate) fn inside(self, x: f32) -> bool {
        let t = x * self.inv + self.offset;
        (0.0..256.0).contains(&t)
    }
}

/// How a calibration turns the observed inputs into a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The `p`-th and `(100 − p)`-th percentiles of the values seen (clipping outliers), `p` in
    /// (50, 100].
    Percentile(f64),
}

/// The largest magnitude of a quantized weight: the grid is `[−127, 127]`, symmetric.
pub const WEIGHT_QMAX: f32 = 127.0;

/// The scale of one output channel's weights: `max|w| / 127` (1 for an all-zero row).
pub fn weight_scale(row: &[f32]) -> f32 {
    let m = row.iter().fold(0f32, |a, v| a.max(v.abs()));
    if m > 0.0 {
        m / WEIGHT_QMAX
    } else {
        1.0
    }
}

/// A weight on the grid of `scale`, before clamping: `round(w / scale)`.
#[inline]
pub fn weight_level(w: f32, scale: f32) -> f32 {
    (w / scale).round()
}

/// Symmetric per-output-channel quantization of a weight `[out × k]`: `scale = max|w| / 127`,
/// `q = round(w / scale)` in `[−127, 127]`.
pub fn quantize_weights(w: &[f32], out: usize) -> (Vec<i8>, Vec<f32>) {
    let k = w.len() / out.max(1);
    let mut q = vec![0i8; w.len()];
    let mut scales = vec![0f32; out];
    for (o, so) in scales.iter_mut().enumerate() {
        let row = &w[o * k..(o + 1) * k];
        let s = weight_scale(row);
        *so = s;
        for (d, &v) in q[o * k..(o + 1) * k].iter_mut().zip(row) {
            *d = weight_level(v, s).clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8;
        }
    }
    (q, scales)
}

/// What a layer does after its product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// No activation.
    Identity,
    /// ReLU.
    Relu,
    /// ReLU then 2×2 max-pooling with stride 2.
    ReluPool2,
}

/// One layer of a quantizable network.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerSpec {
    /// The parameter prefix (`fc1`, `conv2`).
    pub name: String,
    /// `linear` or `conv`.
    pub kind: String,
    /// The activation after the product.
    pub act: Act,
    /// Flatten the input first (the first linear layer after convolutions).
    pub flatten: bool,
}

/// The layers of a model that [`QuantModel::quantize`] handles: `mlp` and `lenet`.
pub fn layers_of(model: &str) -> Result<Vec<LayerSpec>> {
    let l = |name: &str, kind: &str, act, flatten| LayerSpec { name: name.into(), kind: kind.into(), act, flatten };
    Ok(match model {
        "mlp" => vec![l("fc1", "linear", Act::Relu, true), l("fc2", "linear", Act::Identity, false)],
        "lenet" => vec![
            l("conv1", "conv", Act::ReluPool2, false),
            l("conv2", "conv", Act::ReluPool2, false),
            l("fc1", "linear", Act::Relu, true),
            l("fc2", "linear", Act::Relu, false),
            l("fc3", "linear", Act::Identity, false),
        ],
        other => {
            return Err(Error::Param(format!("int8 quantization handles the mlp and lenet models, not `{other}`")))
        }
    })
}

/// A quantized layer.
#[derive(Debug, Clone)]
pub struct QLayer {
    /// What the layer is.
    pub spec: LayerSpec,
    /// The weight's shape (`[out, in]` or `[out, c, kh, kw]`), its int8 rows and scales, the bias.
    pub shape: Vec<usize>,
    /// The quantized weight.
    pub weight: QMatrix,
    /// The scale of each output channel's weights.
    pub weight_scale: Vec<f32>,
    /// The f32 bias.
    pub bias: Vec<f32>,
    /// The quantization of the layer's input.
    pub input: QParams,
}

/// The f32 layer that [`QLayer::forward`] approximates, for calibration: `(weight, bias)`.
pub(crate) fn float_forward(spec: &LayerSpec, w: &Tensor, b: &Tensor, x: &Tensor) -> Result<Tensor> {
    let x = if spec.flatten { x.flatten_from(1)? } else { x.clone() };
    let y = if spec.kind == "conv" {
        let epi = match spec.act {
            Act::Identity => crate::conv::Epilogue::Identity,
            Act::Relu => crate::conv::Epilogue::Relu,
            Act::ReluPool2 => crate::conv::Epilogue::ReluMaxPool(MaxPool2d::new(2, 2, 0)),
        };
        crate::layers::conv2d_with(&x, w, Some(b), crate::layers::Conv2dGeometry::default(), epi)?
    } else {
        let act = if spec.act == Act::Identity {
            crate::linear::Activation::Identity
        } else {
            crate::linear::Activation::Relu
        };
        crate::linear::linear_with(&x, w, b, act)?
    };
    Ok(y)
}

impl QLayer {
    /// The layer on an f32 input (`[n, …]`), through `kernel`: the output in f32 (NCHW for a
    /// convolution). The unfused reference the pipeline of [`QuantModel::run`] is tested
    /// against: it quantizes its input, multiplies, dequantizes, applies ReLU and max-pooling in
    /// f32, image by image.
    pub fn forward(&self, kernel: Kernel, x: &[f32], in_dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        // A linear layer takes `[n, …]` (a convolution's output flattens), a convolution NCHW.
        let rank_ok = if self.spec.kind == "linear" { !in_dims.is_empty() } else { in_dims.len() == 4 };
        if !rank_ok || in_dims.iter().product::<usize>() != x.len() {
            return Err(Error::Param(format!(
                "{}: input dims {in_dims:?} for {} values ({} takes [n, …], a convolution [n, c, h, w])",
                self.spec.name,
                x.len(),
                if self.spec.kind == "linear" { "a linear layer" } else { "it" }
            )));
        }
        let n = in_dims[0];
        let qp = self.input;
        let o = self.weight.n;
        let (kp, np) = (padded(self.weight.k), padded_cols(o));
        let scales: Vec<f32> = self.weight_scale.iter().map(|s| s * qp.scale).collect();
        let zp = qp.zero_point;
        let deq = |acc: i32, j: usize| (acc - zp * self.weight.row_sum[j]) as f32 * scales[j] + self.bias[j];
        let relu = |v: f32| if v < 0.0 { 0.0 } else { v };
        if self.spec.kind == "linear" {
            let k = self.weight.k;
            if x.len() != n * k {
                return Err(Error::Param(format!(
                    "{}: input of {} values for {n} rows of {k}",
                    self.spec.name,
                    x.len()
                )));
            }
            let mut a = vec![0u8; n * kp];
            for i in 0..n {
                for (d, &v) in a[i * kp..i * kp + k].iter_mut().zip(&x[i * k..(i + 1) * k]) {
                    *d = qp.quantize(v);
                }
            }
            let mut c = vec![0i32; n * np];
            gemm_u8i8(kernel, &a, n, &self.weight, &mut c);
            let y = (0..n * o)
                .map(|t| {
                    let v = deq(c[t / o * np + t % o], t % o);
                    if self.spec.act == Act::Identity {
                        v
                    } else {
                        relu(v)
                    }
                })
                .collect();
            return Ok((y, vec![n, o]));
        }
        // A convolution (stride 1, no padding): each output position's patch as one u8 row.
        let (c_in, h, w) = (in_dims[1], in_dims[2], in_dims[3]);
        let (kh, kw) = (self.shape[2], self.shape[3]);
        if self.shape[1] != c_in || h < kh || w < kw {
            return Err(Error::Param(format!("{}: input {in_dims:?} for weight {:?}", self.spec.name, self.shape)));
        }
        let (oh, ow) = (h - kh + 1, w - kw + 1);
        let pool = MaxPool2d::new(2, 2, 0);
        let (ph, pw) = if self.spec.act == Act::ReluPool2 { (pool.out_size(oh), pool.out_size(ow)) } else { (oh, ow) };
        let img = c_in * h * w;
        let mut out = vec![0f32; n * o * ph * pw];
        for (b, dst) in out.chunks_mut(o * ph * pw).enumerate() {
            let xq: Vec<u8> = x[b * img..(b + 1) * img].iter().map(|&v| qp.quantize(v)).collect();
            let mut a = vec![0u8; oh * ow * kp];
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = &mut a[(oy * ow + ox) * kp..][..kp];
                    let mut t = 0;
                    for ci in 0..c_in {
                        for ky in 0..kh {
                            let src = &xq[(ci * h + oy + ky) * w + ox..][..kw];
                            row[t..t + kw].copy_from_slice(src);
                            t += kw;
                        }
                    }
                }
            }
            let mut acc = vec![0i32; oh * ow * np];
            gemm_u8i8(kernel, &a, oh * ow, &self.weight, &mut acc);
            let mut plane = vec![0f32; oh * ow];
            let mut idx = vec![0u32; ph * pw];
            for j in 0..o {
                for (p, v) in plane.iter_mut().enumerate() {
                    *v = deq(acc[p * np + j], j);
                }
                let d = &mut dst[j * ph * pw..(j + 1) * ph * pw];
                match self.spec.act {
                    Act::Identity => d.copy_from_slice(&plane),
                    Act::Relu => d.iter_mut().zip(&plane).for_each(|(d, &v)| *d = relu(v)),
                    Act::ReluPool2 => {
                        pool.plane(&plane, oh, ow, d, &mut idx);
                        d.iter_mut().for_each(|v| *v = relu(*v));
                    }
                }
            }
        }
        Ok((out, vec![n, o, ph, pw]))
    }
}

/// Images per task of the pipeline when the first layer is a convolution.
const IMAGES_PER_TASK: usize = 8;
/// Rows per task of the pipeline when the first layer is linear.
const ROWS_PER_TASK: usize = 32;
/// About how many output positions one convolution GEMM takes (whole images, at least one): its
/// im2col rows and i32 outputs stay in L2.
const CONV_GEMM_ROWS: usize = 1024;
/// Bytes past the end of every u8 buffer of the pipeline: the 8-byte copies of im2col and the
/// 8-byte stores of the epilogue may run past a row's end (into the next row, written later, or
/// into this slack).
const SLACK: usize = 32;

/// A layer as the fused pipeline runs it, built once from the layer and the next one.
#[derive(Debug, Clone)]
struct Plan {
    /// The weight, its inputs in the order of the pipeline's activations, which are NHWC: a
    /// convolution's patch as (ky, kx, c), the inputs of a linear layer after a convolution as
    /// (y, x, c).
    mat: QMatrix,
    /// Per output column (padded to whole panels with zeros): `zero_point · Σ q_w`, the scale
    /// `s_x · s_w` and the bias of the dequantization.
    zr: Vec<i32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
    /// A convolution.
    conv: bool,
    /// ReLU after the dequantization.
    relu: bool,
    /// 2×2 max-pooling (taken on the i32 sums, before the dequantization: it is increasing, as
    /// the scales are positive, so the maximum commutes with it).
    pool: bool,
    /// The next layer's input quantization, applied in the epilogue; none for the last layer,
    /// whose output is f32.
    next: Option<Quantizer>,
}

/// A layer's input or output, per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Channels × height × width.
    Image { c: usize, h: usize, w: usize },
    /// A vector of `k` features.
    Row { k: usize },
}

impl Shape {
    fn len(self) -> usize {
        match self {
            Shape::Image { c, h, w } => c * h * w,
            Shape::Row { k } => k,
        }
    }
}

/// A worker's buffers, kept from one batch to the next: the quantized activations in and out of
/// a layer, the im2col rows and the i32 sums.
#[derive(Default)]
struct Scratch {
    x: Vec<u8>,
    y: Vec<u8>,
    a: Vec<u8>,
    c: Vec<i32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `v[..len]`, grown (with zeros) to hold it.
fn room<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// The im2col rows (`kp` bytes each, patches in (ky, kx, c) order) of the `bn` NHWC images
/// `c × h × w` at the start of `src`, for a `kh × kw` convolution (stride 1, no padding). Each run
/// of `kw · c` bytes is copied 8 bytes at a time: up to 7 bytes past it are read from `src` and
/// overwritten in `rows` (in the next run or row, written after, or in [`SLACK`]).
#[inline(always)]
fn im2col(rows: &mut [u8], kp: usize, src: &[u8], bn: usize, (c, h, w): (usize, usize, usize), kh: usize, kw: usize) {
    let (oh, ow, run) = (h - kh + 1, w - kw + 1, kw * c);
    assert!(src.len() >= bn * c * h * w + 8 && rows.len() >= bn * oh * ow * kp + 8 && kh * run <= kp);
    let (src, rows) = (src.as_ptr(), rows.as_mut_ptr());
    // SAFETY (all accesses below): a run starts at most `run` bytes before its image's end and
    // its row's `kh · run ≤ kp` bytes, so with the 8 spare bytes the assert asks for, the 8-byte
    // accesses at offsets below `run` are in bounds.
    let mut d = rows;
    for b in 0..bn {
        for oy in 0..oh {
            let line = unsafe { src.add((b * h + oy) * w * c) };
            for ox in 0..ow {
                let s = unsafe { line.add(ox * c) };
                for ky in 0..kh {
                    let (s, d) = unsafe { (s.add(ky * w * c), d.add(ky * run)) };
                    if run <= 8 {
                        unsafe { d.cast::<u64>().write_unaligned(s.cast::<u64>().read_unaligned()) };
                    } else {
                        let mut t = 0;
                        while t < run {
                            unsafe { d.add(t).cast::<u64>().write_unaligned(s.add(t).cast::<u64>().read_unaligned()) };
                            t += 8;
                        }
                    }
                }
                d = unsafe { d.add(kp) };
            }
        }
    }
}

/// Where an epilogue writes a layer's outputs.
enum Sink<'a> {
    /// The next layer's u8 input: sample `b`'s position `s` channel `j` at `b · stride + s · n + j`
    /// (NHWC, or a row of a linear layer's input).
    U8 { buf: &'a mut [u8], stride: usize, n: usize, q: Quantizer },
    /// The model's f32 output: sample `b`'s channel `j` at position `s` at
    /// `(b · n + j) · plane + s` (NCHW, or `[n]` per row with `plane` 1).
    F32 { buf: &'a mut [f32], n: usize, plane: usize },
}

impl Sink<'_> {
    /// Sample `b`, position `s`, the eight channels of panel `p`.
    #[inline(always)]
    fn put(&mut self, b: usize, s: usize, p: usize, v: &[f32; PANEL]) {
        match self {
            Sink::U8 { buf, stride, n, q } => {
                let bytes: [u8; PANEL] = std::array::from_fn(|t| q.apply(v[t]));
                // Channels past n run into the next position's bytes (written after) or SLACK.
                let at = b * *stride + s * *n + PANEL * p;
                buf[at..at + PANEL].copy_from_slice(&bytes);
            }
            Sink::F32 { buf, n, plane } => {
                for (t, &x) in v.iter().enumerate().take(*n - PANEL * p) {
                    buf[(b * *n + PANEL * p + t) * *plane + s] = x;
                }
            }
        }
    }
}

impl Plan {
    /// The dequantized outputs of panel `p` for the maximum of the sums in rows `rows` of `c`
    /// (one row without pooling), after ReLU if the layer has it.
    #[inline(always)]
    fn finish(&self, c: &[i32], np: usize, rows: &[usize], p: usize) -> [f32; PANEL] {
        let at = PANEL * p;
        let mut m: [i32; PANEL] = c[rows[0] * np + at..][..PANEL].try_into().expect("a panel");
        for &r in &rows[1..] {
            let row: &[i32; PANEL] = c[r * np + at..][..PANEL].try_into().expect("a panel");
            for (m, &r) in m.iter_mut().zip(row) {
                *m = (*m).max(r);
            }
        }
        let (zr, sc, bi) = (&self.zr[at..at + PANEL], &self.scale[at..at + PANEL], &self.bias[at..at + PANEL]);
        std::array::from_fn(|t| {
            let v = (m[t] - zr[t]) as f32 * sc[t] + bi[t];
            if self.relu && v < 0.0 {
                0.0
            } else {
                v
            }
        })
    }
}

/// An int8 model: its layers in order, run by the kernel chosen at load time.
#[derive(Debug, Clone)]
pub struct QuantModel {
    /// `mlp` or `lenet`.
    pub model: String,
    /// The layers in order.
    layers: Vec<QLayer>,
    /// Each layer as the fused pipeline runs it.
    plans: Vec<Plan>,
    /// The int8 kernel used.
    pub kernel: Kernel,
}

/// Observed values of one layer's input.
enum Observer {
    MinMax(f32, f32),
    Values(Vec<f32>),
}

impl QuantModel {
    /// Quantizes a trained `mlp` or `lenet`: weights per output channel; each layer's input range
    /// calibrated on `batches` (f32 inputs as the model takes them) by `calibration`.
    pub fn quantize(
        model_name: &str,
        model: &dyn Model,
        batches: &[Tensor],
        calibration: Calibration,
    ) -> Result<QuantModel> {
        let specs = layers_of(model_name)?;
        let vars: std::collections::HashMap<String, Var> = model.named_vars().into_iter().collect();
        let get = |n: String| vars.get(&n).cloned().ok_or_else(|| Error::Param(format!("the model has no `{n}`")));
        let params: Vec<(Var, Var)> = specs
            .iter()
            .map(|s| Ok((get(format!("{}.weight", s.name))?, get(format!("{}.bias", s.name))?)))
            .collect::<Result<_>>()?;
        let mut obs: Vec<Observer> = specs
            .iter()
            .map(|_| match calibration {
                Calibration::MinMax => Observer::MinMax(f32::INFINITY, f32::NEG_INFINITY),
                Calibration::Percentile(_) => Observer::Values(vec![]),
            })
            .collect();
        if batches.is_empty() {
            return Err(Error::Param("calibration needs at least one batch".into()));
        }
        if let Calibration::Percentile(p) = calibration {
            if !(p > 50.0 && p <= 100.0) {
                return Err(Error::Param(format!("calibration percentile {p}: in (50, 100]")));
            }
        }
        if let Some(x) = batches.iter().find(|x| x.elem_count() == 0) {
            return Err(Error::Param(format!("calibration batch of shape {:?}: empty", x.dims())));
        }
        for x in batches {
            let mut h = x.clone();
            for ((s, (w, b)), o) in specs.iter().zip(&params).zip(obs.iter_mut()) {
                let v = h.flatten_all()?.to_vec1::<f32>()?;
                match o {
                    Observer::MinMax(lo, hi) => {
                        for &x in &v {
                            *lo = lo.min(x);
                            *hi = hi.max(x);
                        }
                    }
                    Observer::Values(all) => all.extend(v),
                }
                h = float_forward(s, w.as_tensor(), b.as_tensor(), &h)?;
            }
        }
        let ranges = obs
            .into_iter()
            .map(|o| match o {
                Observer::MinMax(lo, hi) => (lo, hi),
                Observer::Values(mut v) => {
                    let Calibration::Percentile(p) = calibration else { unreachable!() };
                    v.sort_by(|a, b| a.total_cmp(b));
                    let at = |q: f64| v[((q / 100.0) * (v.len() - 1) as f64).round() as usize];
                    (at(100.0 - p), at(p))
                }
            })
            .collect::<Vec<_>>();
        QuantModel::from_ranges(model_name, model, &ranges)
    }

    /// Quantizes a trained `mlp` or `lenet` with given input ranges `(min, max)`, one per layer
    /// in order (a quantization-aware run's observers, [`crate::qat::observed_ranges`]): weights
    /// per output channel, each layer's input by [`QParams::from_range`].
    pub fn from_ranges(model_name: &str, model: &dyn Model, ranges: &[(f32, f32)]) -> Result<QuantModel> {
        let specs = layers_of(model_name)?;
        if ranges.len() != specs.len() {
            return Err(Error::Param(format!(
                "{} input ranges for the {} layers of {model_name}",
                ranges.len(),
                specs.len()
            )));
        }
        let vars: std::collections::HashMap<String, Var> = model.named_vars().into_iter().collect();
        let get = |n: String| vars.get(&n).cloned().ok_or_else(|| Error::Param(format!("the model has no `{n}`")));
        let mut layers = vec![];
        for (spec, &(lo, hi)) in specs.into_iter().zip(ranges) {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(Error::Param(format!("{}: input range [{lo}, {hi}] is not a range", spec.name)));
            }
            let (w, b) = (get(format!("{}.weight", spec.name))?, get(format!("{}.bias", spec.name))?);
            let shape = w.dims().to_vec();
            let out = shape[0];
            let wv = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let (q, scales) = quantize_weights(&wv, out);
            layers.push(QLayer {
                weight: QMatrix::new(out, wv.len() / out, &q)?,
                shape,
                weight_scale: scales,
                bias: b.as_tensor().to_vec1::<f32>()?,
                input: QParams::from_range(lo, hi),
                spec,
            });
        }
        QuantModel::new(model_name.to_string(), layers)
    }

    /// The model from its layers: checks that they chain and builds the fused pipeline's plans
    /// (the weights permuted and packed once).
    pub fn new(model: String, layers: Vec<QLayer>) -> Result<QuantModel> {
        let mut plans = vec![];
        for (i, l) in layers.iter().enumerate() {
            let (n, k) = (l.weight.n, l.weight.k);
            let bad = |m: &str| Error::Param(format!("int8 layer {}: {m}", l.spec.name));
            let conv = match l.spec.kind.as_str() {
                "conv" => true,
                "linear" => false,
                other => return Err(bad(&format!("kind `{other}` (linear or conv)"))),
            };
            let want = if conv { 4 } else { 2 };
            if l.shape.len() != want || l.shape[0] != n || l.shape[1..].iter().product::<usize>() != k || n == 0 {
                return Err(bad(&format!("weight shape {:?} for {n}×{k} values", l.shape)));
            }
            if l.weight_scale.len() != n || l.bias.len() != n {
                return Err(bad("one weight scale and one bias per output"));
            }
            // Positive scales make the dequantization increasing (max-pooling of the i32 sums).
            if !l.weight_scale.iter().chain([&l.input.scale]).all(|s| s.is_finite() && *s > 0.0)
                || !(0..=255).contains(&l.input.zero_point)
            {
                return Err(bad("scales must be finite and positive, the zero point in [0, 255]"));
            }
            let prev_conv = i > 0 && layers[i - 1].spec.kind == "conv";
            if i > 0 && conv && !prev_conv {
                return Err(bad("a convolution after a linear layer"));
            }
            if layers[..i].iter().any(|p| p.spec.name == l.spec.name) {
                return Err(bad("listed twice"));
            }
            // Each layer takes what the one before gives: its channels, or (linear after
            // linear) its outputs.
            if let Some(p) = i.checked_sub(1).map(|j| &layers[j]) {
                let (takes, gives) = if conv { (l.shape[1], p.weight.n) } else { (k, p.weight.n) };
                if (conv || !prev_conv) && takes != gives {
                    return Err(bad(&format!(
                        "takes {takes} inputs where the layer before, {}, gives {gives}",
                        p.spec.name
                    )));
                }
            }
            let kp = padded(k);
            // Position of input t of the weight's order in the pipeline's.
            let to: Box<dyn Fn(usize) -> usize> = if conv {
                let (c, kh, kw) = (l.shape[1], l.shape[2], l.shape[3]);
                Box::new(move |t| {
                    let (ci, ky, kx) = (t / (kh * kw), t / kw % kh, t % kw);
                    (ky * kw + kx) * c + ci
                })
            } else if prev_conv {
                let c = layers[i - 1].weight.n;
                if !l.spec.flatten || k % c != 0 {
                    return Err(bad("a linear layer after a convolution flattens its channels"));
                }
                let s = k / c;
                Box::new(move |t| (t % s) * c + t / s)
            } else {
                Box::new(|t| t)
            };
            let mut q = vec![0i8; n * k];
            for j in 0..n {
                for (t, &v) in l.weight.q[j * kp..j * kp + k].iter().enumerate() {
                    q[j * k + to(t)] = v;
                }
            }
            let np = padded_cols(n);
            let col =
                |f: &dyn Fn(usize) -> f32| -> Vec<f32> { (0..np).map(|j| if j < n { f(j) } else { 0.0 }).collect() };
            plans.push(Plan {
                mat: QMatrix::new(n, k, &q)?,
                zr: (0..np).map(|j| if j < n { l.input.zero_point * l.weight.row_sum[j] } else { 0 }).collect(),
                scale: col(&|j| l.weight_scale[j] * l.input.scale),
                bias: col(&|j| l.bias[j]),
                conv,
                relu: l.spec.act != Act::Identity,
                pool: conv && l.spec.act == Act::ReluPool2,
                next: layers.get(i + 1).map(|n| Quantizer::of(&n.input)),
            });
        }
        if layers.is_empty() {
            return Err(Error::Param("an int8 model without layers".into()));
        }
        Ok(QuantModel { model, layers, plans, kernel: Kernel::detect() })
    }

    /// The layers in order.
    pub fn layers(&self) -> &[QLayer] {
        &self.layers
    }

    /// The per-sample input of every layer and the model's output, for input dims `dims`.
    fn shapes(&self, dims: &[usize]) -> Result<Vec<Shape>> {
        let bad = |m: String| Error::Param(format!("int8 {}: {m}", self.model));
        let mut s = match dims {
            [_, c, h, w] if self.plans[0].conv => Shape::Image { c: *c, h: *h, w: *w },
            [_, rest @ ..] if !self.plans[0].conv && (self.layers[0].spec.flatten || rest.len() == 1) => {
                Shape::Row { k: rest.iter().product() }
            }
            _ => return Err(bad(format!("input of dims {dims:?}"))),
        };
        let mut out = vec![s];
        for (l, p) in self.layers.iter().zip(&self.plans) {
            let n = l.weight.n;
            s = match (s, p.conv) {
                (Shape::Image { c, h, w }, true) => {
                    let (kh, kw) = (l.shape[2], l.shape[3]);
                    if c != l.shape[1] || h < kh || w < kw {
                        return Err(bad(format!("{}: input {c}×{h}×{w} for weight {:?}", l.spec.name, l.shape)));
                    }
                    let (oh, ow) = (h - kh + 1, w - kw + 1);
                    if p.pool && (oh < 2 || ow < 2) {
                        return Err(bad(format!("{}: a {oh}×{ow} output to pool 2×2", l.spec.name)));
                    }
                    if p.pool {
                        Shape::Image { c: n, h: oh / 2, w: ow / 2 }
                    } else {
                        Shape::Image { c: n, h: oh, w: ow }
                    }
                }
                (s, false) if s.len() == l.weight.k => Shape::Row { k: n },
                (s, _) => return Err(bad(format!("{}: input {s:?} for weight {:?}", l.spec.name, l.shape))),
            };
            out.push(s);
        }
        Ok(out)
    }

    /// Logits of a batch `x` (`[n, …]` f32), as f32 values and their dims.
    ///
    /// The fused pipeline: the batch in tasks of `IMAGES_PER_TASK` images (or
    /// `ROWS_PER_TASK` rows), run in parallel; within one, every layer's input is u8 (NHWC
    /// for a convolution), a convolution is an im2col of whole images into u8 rows and one GEMM
    /// of the kernel per block of them, a linear layer one GEMM over the task's rows, and the
    /// epilogue of each turns the i32 sums into the next layer's u8 input (max-pooling,
    /// dequantization with bias, ReLU, quantization) or into the f32 output. The same f32
    /// operations as [`QLayer::forward`]'s, so the logits equal [`QuantModel::run_reference`]'s
    /// bit for bit.
    pub fn run(&self, x: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let shapes = self.shapes(dims)?;
        let n = dims[0];
        let (per_in, last) = (shapes[0].len(), *shapes.last().expect("the output"));
        let per_out = last.len();
        let out_dims = match last {
            Shape::Image { c, h, w } => vec![n, c, h, w],
            Shape::Row { k } => vec![n, k],
        };
        if x.len() != n * per_in {
            return Err(Error::Param(format!("int8 {}: {} values for dims {dims:?}", self.model, x.len())));
        }
        let mut out = vec![0f32; n * per_out];
        if n == 0 || per_in == 0 || per_out == 0 {
            return Ok((out, out_dims));
        }
        let block = if self.plans[0].conv { IMAGES_PER_TASK } else { ROWS_PER_TASK };
        let go = |x: &[f32], out: &mut [f32]| {
            SCRATCH.with(|s| self.run_block(&shapes, x, x.len() / per_in, out, &mut s.borrow_mut()))
        };
        if n <= block {
            go(x, &mut out);
        } else {
            out.par_chunks_mut(block * per_out).zip(x.par_chunks(block * per_in)).for_each(|(o, x)| go(x, o));
        }
        Ok((out, out_dims))
    }

    /// [`QuantModel::run`] for the `nb` samples of `x`, into `out`: compiled for AVX2 where the
    /// CPU has it (the same f32 operations, one register per panel in the epilogue).
    fn run_block(&self, shapes: &[Shape], x: &[f32], nb: usize, out: &mut [f32], s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            return unsafe { self.run_block_avx2(shapes, x, nb, out, s) };
        }
        self.run_block_any(shapes, x, nb, out, s)
    }

    /// [`QuantModel::run_block`] compiled with AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_block_avx2(&self, shapes: &[Shape], x: &[f32], nb: usize, out: &mut [f32], s: &mut Scratch) {
        self.run_block_any(shapes, x, nb, out, s)
    }

    /// [`QuantModel::run_block`] for any CPU (inlined into each variant).
    #[inline(always)]
    fn run_block_any(&self, shapes: &[Shape], x: &[f32], nb: usize, out: &mut [f32], s: &mut Scratch) {
        let Scratch { x: xq, y: yq, a, c } = s;
        // The first layer's input, quantized: NHWC images, or rows padded to the kernel's k.
        let q = Quantizer::of(&self.layers[0].input);
        match shapes[0] {
            Shape::Image { c: ch, h, w } if self.plans[0].conv => {
                let (img, hw) = (ch * h * w, h * w);
                let dst = room(xq, nb * img + SLACK);
                for (d, x) in dst.chunks_exact_mut(img).zip(x.chunks_exact(img)) {
                    if ch == 1 {
                        d.iter_mut().zip(x).for_each(|(d, &v)| *d = q.apply(v));
                    } else {
                        for (ci, plane) in x.chunks_exact(hw).enumerate() {
                            for (p, &v) in plane.iter().enumerate() {
                                d[p * ch + ci] = q.apply(v);
                            }
                        }
                    }
                }
            }
            s0 => {
                let (k, kp) = (s0.len(), padded(s0.len()));
                let dst = room(xq, nb * kp + SLACK);
                for (d, x) in dst.chunks_exact_mut(kp).zip(x.chunks_exact(k)) {
                    d[..k].iter_mut().zip(x).for_each(|(d, &v)| *d = q.apply(v));
                    d[k..].fill(0);
                }
            }
        }
        for (i, p) in self.plans.iter().enumerate() {
            let (sin, sout) = (shapes[i], shapes[i + 1]);
            let n = p.mat.n;
            let mut sink = match p.next {
                None => {
                    let plane = if let Shape::Image { h, w, .. } = sout { h * w } else { 1 };
                    Sink::F32 { buf: &mut *out, n, plane }
                }
                Some(q) => {
                    let stride = if self.plans[i + 1].conv { sout.len() } else { padded(sout.len()) };
                    Sink::U8 { buf: room(yq, nb * stride + SLACK), stride, n, q }
                }
            };
            let np = padded_cols(n);
            if let (true, Shape::Image { c: ch, h, w }) = (p.conv, sin) {
                let (kh, kw) = (self.layers[i].shape[2], self.layers[i].shape[3]);
                let (oh, ow) = (h - kh + 1, w - kw + 1);
                let (img, per, kp) = (ch * h * w, oh * ow, padded(p.mat.k));
                let (ph, pw) = if let Shape::Image { h, w, .. } = sout { (h, w) } else { unreachable!() };
                let chunk = (CONV_GEMM_ROWS / per).max(1);
                for b0 in (0..nb).step_by(chunk) {
                    let bn = chunk.min(nb - b0);
                    let m = bn * per;
                    let rows = room(a, m * kp + SLACK);
                    im2col(rows, kp, &xq[b0 * img..], bn, (ch, h, w), kh, kw);
                    let sums = room(c, m * np);
                    gemm_u8i8(self.kernel, &rows[..m * kp], m, &p.mat, sums);
                    for bi in 0..bn {
                        let base = bi * per;
                        for py in 0..ph {
                            for px in 0..pw {
                                let window: &[usize] = if p.pool {
                                    let r = base + 2 * py * ow + 2 * px;
                                    &[r, r + 1, r + ow, r + ow + 1]
                                } else {
                                    &[base + py * ow + px]
                                };
                                for pi in 0..np / PANEL {
                                    sink.put(b0 + bi, py * pw + px, pi, &p.finish(sums, np, window, pi));
                                }
                            }
                        }
                    }
                }
            } else {
                let kp = padded(p.mat.k);
                let sums = room(c, nb * np);
                gemm_u8i8(self.kernel, &xq[..nb * kp], nb, &p.mat, sums);
                for b in 0..nb {
                    for pi in 0..np / PANEL {
                        sink.put(b, 0, pi, &p.finish(sums, np, &[b], pi));
                    }
                }
            }
            std::mem::swap(xq, yq);
        }
    }

    /// The logits by [`QLayer::forward`] layer after layer: the unfused reference of
    /// [`QuantModel::run`].
    pub fn run_reference(&self, x: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        if dims.is_empty() || dims.iter().product::<usize>() != x.len() {
            return Err(Error::Param(format!("input dims {dims:?} for {} values", x.len())));
        }
        let (mut h, mut d) = (x.to_vec(), dims.to_vec());
        for l in &self.layers {
            if l.spec.flatten {
                d = vec![d[0], d[1..].iter().product()];
            }
            (h, d) = l.forward(self.kernel, &h, &d)?;
        }
        Ok((h, d))
    }

    /// Parameters in all (weights and biases).
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.weight.n * l.weight.k + l.bias.len()).sum()
    }

    /// Nonzero weights and biases.
    pub fn nonzeros(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let kp = padded(l.weight.k);
                (0..l.weight.n)
                    .map(|j| l.weight.q[j * kp..j * kp + l.weight.k].iter().filter(|&&v| v != 0).count())
                    .sum::<usize>()
                    + l.bias.iter().filter(|&&v| v != 0.0).count()
            })
            .sum()
    }

    /// The file format: per layer `NAME.weight` (i8, the weight's shape), `NAME.weight_scale` and
    /// `NAME.bias` (f32 `[out]`), `NAME.input_scale` (f32 `[1]`) and `NAME.input_zero_point` (i32
    /// `[1]`); metadata `format` = `descent-int8-1`, `model`, `layers` (JSON of [`LayerSpec`]) and
    /// the record `info` of the folder it goes into.
    pub fn save(&self, path: &std::path::Path, info: &crate::compress::CompressInfo) -> Result<()> {
        use safetensors::tensor::Dtype;
        let mut bufs: Vec<crate::checkpoint::Part> = vec![];
        for l in &self.layers {
            let kp = padded(l.weight.k);
            let w: Vec<u8> = (0..l.weight.n)
                .flat_map(|j| l.weight.q[j * kp..j * kp + l.weight.k].iter().map(|&v| v as u8))
                .collect();
            let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            let n = &l.spec.name;
            bufs.push((format!("{n}.weight"), Dtype::I8, l.shape.clone(), w));
            bufs.push((format!("{n}.weight_scale"), Dtype::F32, vec![l.weight.n], f(&l.weight_scale)));
            bufs.push((format!("{n}.bias"), Dtype::F32, vec![l.bias.len()], f(&l.bias)));
            bufs.push((format!("{n}.input_scale"), Dtype::F32, vec![1], f(&[l.input.scale])));
            bufs.push((
                format!("{n}.input_zero_point"),
                Dtype::I32,
                vec![1],
                l.input.zero_point.to_le_bytes().to_vec(),
            ));
        }
        let e = |m: String| Error::Data { path: path.display().to_string(), message: m };
        let specs: Vec<&LayerSpec> = self.layers.iter().map(|l| &l.spec).collect();
        let meta: std::collections::HashMap<String, String> = [
            ("format".to_string(), "descent-int8-1".to_string()),
            ("model".into(), self.model.clone()),
            ("layers".into(), serde_json::to_string(&specs).map_err(|x| e(x.to_string()))?),
            info.stamp()?,
        ]
        .into_iter()
        .collect();
        crate::checkpoint::save_verified(path, "model", &bufs, meta)
    }

    /// Reads what [`QuantModel::save`] wrote.
    pub fn load(path: &std::path::Path) -> Result<QuantModel> {
        use safetensors::tensor::Dtype;
        let e = |m: String| Error::Data { path: path.display().to_string(), message: m };
        let data = crate::checkpoint::read_regular(path).map_err(|x| e(x.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|x| e(format!("not a safetensors file: {x}")))?;
        let (_, md) = safetensors::SafeTensors::read_metadata(&data).map_err(|x| e(x.to_string()))?;
        let meta = md.metadata().clone().unwrap_or_default();
        if meta.get("format").map(|s| s.as_str()) != Some("descent-int8-1") {
            return Err(e("not a descent int8 model (format descent-int8-1)".into()));
        }
        crate::checkpoint::verify(path, &st, &meta)?;
        let model = meta.get("model").cloned().unwrap_or_default();
        let specs: Vec<LayerSpec> = serde_json::from_str(meta.get("layers").map(|s| s.as_str()).unwrap_or(""))
            .map_err(|x| e(format!("layers: {x}")))?;
        let t = |n: &str, d: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let v = st.tensor(n).map_err(|x| e(format!("{n}: {x}")))?;
            if v.dtype() != d {
                return Err(e(format!("{n}: {} where {d} was expected", v.dtype())));
            }
            Ok((v.shape().to_vec(), v.data().to_vec()))
        };
        let f32s = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let mut layers = vec![];
        for spec in specs {
            let n = spec.name.clone();
            let (shape, w) = t(&format!("{n}.weight"), Dtype::I8)?;
            let out = *shape.first().ok_or_else(|| e(format!("{n}.weight has no shape")))?;
            let q: Vec<i8> = w.iter().map(|&b| b as i8).collect();
            let weight_scale = f32s(t(&format!("{n}.weight_scale"), Dtype::F32)?.1);
            let bias = f32s(t(&format!("{n}.bias"), Dtype::F32)?.1);
            let scale = f32s(t(&format!("{n}.input_scale"), Dtype::F32)?.1);
            let zp = t(&format!("{n}.input_zero_point"), Dtype::I32)?.1;
            if weight_scale.len() != out || bias.len() != out || scale.len() != 1 || zp.len() != 4 || out == 0 {
                return Err(e(format!("{n}: scales, bias or zero point do not fit the weight {shape:?}")));
            }
            layers.push(QLayer {
                weight: QMatrix::new(out, q.len() / out, &q)?,
                shape,
                weight_scale,
                bias,
                input: QParams { scale: scale[0], zero_point: i32::from_le_bytes([zp[0], zp[1], zp[2], zp[3]]) },
                spec,
            });
        }
        QuantModel::new(model, layers).map_err(|x| e(x.to_string()))
    }
}

impl Model for QuantModel {
    fn forward(&self, x: &Tensor, _mode: Mode, _rng: &mut Rng) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        // The input read in place (no copy).
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let (y, d) = self.run(crate::cpu::storage_f32s(&storage, layout, "an int8 model's input")?, &dims)?;
        Ok(Tensor::from_vec(y, d, &Device::Cpu)?)
    }
    /// None: an int8 model is not trained.
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU runs gives the scalar reference's sums bit for bit, on odd shapes
    /// (row tiles of 1–4, panel pairs and a single panel, partial panels, k not a multiple of 4),
    /// on the extreme values (255 × ±127 over long rows) and whatever the padding bytes of the
    /// inputs hold.
    #[test]
    fn kernels_match_the_scalar_reference() {
        let mut rng = Rng::new(7);
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (5, 4, 33),
            (7, 9, 150),
            (2, 130, 784),
            (17, 3, 31),
            (1, 6, 4000),
            (4, 8, 4),
            (6, 16, 25),
            (9, 17, 28),
            (13, 24, 150),
            (33, 120, 256),
            (5, 84, 120),
            (3, 10, 84),
            (10, 33, 3),
            (11, 41, 65),
        ];
        for (m, n, k) in shapes {
            let kp = padded(k);
            let np = padded_cols(n);
            for extreme in [false, true] {
                let mut a = vec![0u8; m * kp];
                for i in 0..m {
                    for p in 0..kp {
                        a[i * kp + p] = if extreme { 255 } else { (rng.uniform() * 256.0).min(255.0) as u8 };
                    }
                }
                let w: Vec<i8> = (0..n * k)
                    .map(|t| {
                        if extreme {
                            if t % 3 == 0 {
                                -127
                            } else {
                                127
                            }
                        } else {
                            (rng.uniform() * 255.0 - 127.0).round() as i8
                        }
                    })
                    .collect();
                let b = QMatrix::new(n, k, &w).unwrap();
                let mut want = vec![0i32; m * np];
                gemm_u8i8(Kernel::Scalar, &a, m, &b, &mut want);
                // The reference itself against a plain triple loop over the unpadded values.
                for i in 0..m {
                    for j in 0..np {
                        let s: i64 =
                            if j < n { (0..k).map(|p| a[i * kp + p] as i64 * w[j * k + p] as i64).sum() } else { 0 };
                        assert_eq!(want[i * np + j] as i64, s, "{m}x{n}x{k} ({i}, {j})");
                    }
                }
                for kernel in Kernel::available() {
                    let mut got = vec![-1i32; m * np];
                    gemm_u8i8(kernel, &a, m, &b, &mut got);
                    assert_eq!(got, want, "{kernel:?} {m}x{n}x{k} extreme={extreme}");
                }
            }
        }
    }

    /// Random int8 layers of the given specs and weight shapes, with input ranges that clip.
    fn random_layers(specs: Vec<LayerSpec>, shapes: &[&[usize]], rng: &mut Rng) -> Vec<QLayer> {
        specs
            .into_iter()
            .zip(shapes)
            .map(|(spec, shape)| {
                let (n, k) = (shape[0], shape[1..].iter().product::<usize>());
                let q: Vec<i8> = (0..n * k).map(|_| (rng.uniform() * 255.0 - 127.0).round() as i8).collect();
                QLayer {
                    weight: QMatrix::new(n, k, &q).unwrap(),
                    shape: shape.to_vec(),
                    weight_scale: (0..n).map(|_| 0.002 + 0.01 * rng.uniform()).collect(),
                    bias: (0..n).map(|_| rng.uniform() - 0.5).collect(),
                    input: QParams::from_range(-0.6 * rng.uniform(), 0.5 + rng.uniform()),
                    spec,
                }
            })
            .collect()
    }

    fn random_model(specs: Vec<LayerSpec>, shapes: &[&[usize]], rng: &mut Rng) -> QuantModel {
        QuantModel::new("test".into(), random_layers(specs, shapes, rng)).unwrap()
    }

    /// The fused pipeline gives the unfused reference's outputs bit for bit with every kernel, for
    /// batches with partial tasks and partial convolution GEMM blocks, on LeNet's layers and on
    /// convolutions without pooling, on several input channels and as the last layer (NCHW out).
    #[test]
    fn fused_pipeline_matches_the_reference() {
        let mut rng = Rng::new(11);
        let l = |name: &str, kind: &str, act, flatten| LayerSpec { name: name.into(), kind: kind.into(), act, flatten };
        let cases: Vec<(QuantModel, Vec<usize>)> = vec![
            (
                random_model(
                    layers_of("lenet").unwrap(),
                    &[&[6, 1, 5, 5], &[16, 6, 5, 5], &[120, 256], &[84, 120], &[10, 84]],
                    &mut rng,
                ),
                vec![1, 28, 28],
            ),
            (random_model(layers_of("mlp").unwrap(), &[&[128, 784], &[10, 128]], &mut rng), vec![1, 28, 28]),
            (
                random_model(
                    vec![
                        l("c1", "conv", Act::Relu, false),
                        l("c2", "conv", Act::ReluPool2, false),
                        l("c3", "conv", Act::Identity, false),
                    ],
                    &[&[5, 3, 3, 2], &[9, 5, 2, 3], &[11, 9, 1, 2]],
                    &mut rng,
                ),
                vec![3, 11, 10],
            ),
            (
                random_model(
                    vec![l("c1", "conv", Act::ReluPool2, false), l("f1", "linear", Act::Relu, true)],
                    &[&[17, 2, 3, 3], &[7, 17 * 3 * 2]],
                    &mut rng,
                ),
                vec![2, 8, 6],
            ),
        ];
        for (mut q, sample) in cases {
            for n in [1, 3, 8, 9, 37, 70] {
                let mut dims = vec![n];
                dims.extend(&sample);
                let x: Vec<f32> = (0..dims.iter().product::<usize>()).map(|_| 2.0 * rng.uniform() - 0.5).collect();
                q.kernel = Kernel::Scalar;
                let (want, wd) = q.run_reference(&x, &dims).unwrap();
                for k in Kernel::available() {
                    q.kernel = k;
                    let (got, gd) = q.run(&x, &dims).unwrap();
                    assert_eq!(gd, wd);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{:?} {k:?} batch {n}", q.layers()[0].spec.name);
                }
            }
        }
        // Layers that do not chain are refused.
        let bad = |specs, shapes: &[&[usize]]| {
            let layers = random_layers(specs, shapes, &mut Rng::new(1));
            assert!(QuantModel::new("test".into(), layers).is_err());
        };
        bad(vec![l("f", "linear", Act::Relu, true), l("c", "conv", Act::Relu, false)], &[&[4, 8], &[2, 1, 2, 2]]);
        bad(vec![l("c", "conv", Act::Relu, false), l("f", "linear", Act::Relu, false)], &[&[2, 1, 2, 2], &[3, 8]]);
    }

    #[test]
    fn weight_and_activation_quantization() {
        let (q, s) = quantize_weights(&[1.0, -0.5, 0.25, 0.0, 0.0, 0.0], 2);
        assert_eq!(q, vec![127, -64, 32, 0, 0, 0]);
        assert_eq!(s, vec![1.0 / 127.0, 1.0]);
        let p = QParams::from_range(-1.0, 3.0);
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(p.zero_point, 64);
        assert_eq!(p.quantize(0.0), 64);
        assert_eq!(p.quantize(-5.0), 0);
        assert_eq!(p.quantize(10.0), 255);
        // A range of positive values still holds 0 exactly.
        assert_eq!(QParams::from_range(0.5, 2.0).zero_point, 0);
    }

    /// A quantized MLP and LeNet give the same logits with every kernel, bit for bit, and close to
    /// the f32 model's.
    #[test]
    fn quantized_models_agree_across_kernels_and_with_f32() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..6 * 784).map(|_| rng.uniform()).collect();
        let xt = Tensor::from_vec(x.clone(), (6, 1, 28, 28), &dev).unwrap();
        let mlp = crate::model::Mlp::new(crate::model::Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
        let lenet = crate::model::LeNet5::new(crate::model::Init::TorchDefault, &mut rng, &dev).unwrap();
        for (name, m) in [("mlp", &mlp as &dyn Model), ("lenet", &lenet as &dyn Model)] {
            let mut q = QuantModel::quantize(name, m, std::slice::from_ref(&xt), Calibration::MinMax).unwrap();
            let f = m.forward(&xt, Mode::Eval, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            q.kernel = Kernel::Scalar;
            let (want, d) = q.run(&x, &[6, 1, 28, 28]).unwrap();
            assert_eq!(d, vec![6, 10]);
            assert_eq!(q.run_reference(&x, &[6, 1, 28, 28]).unwrap().0, want);
            let spread = f.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = f.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(err < 0.05 * spread.max(0.1), "{name}: int8 off by {err} (logits up to {spread})");
            for k in Kernel::available() {
                q.kernel = k;
                let (got, _) = q.run(&x, &[6, 1, 28, 28]).unwrap();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{name} {k:?}"
                );
            }
            let dir = std::env::temp_dir().join(format!("descent-int8-{name}-{}", std::process::id()));
            let info = crate::compress::CompressInfo {
                kind: "int8".into(),
                model: name.to_string(),
                depth: None,
                width: None,
                normalize: false,
                data: "data/mnist".into(),
                data_digest: None,
                source: "run".into(),
                source_run_id: None,
                method: "test".into(),
            };
            q.save(&dir, &info).unwrap();
            let back = QuantModel::load(&dir).unwrap();
            std::fs::remove_file(&dir).ok();
            q.kernel = Kernel::Scalar;
            let mut back = back;
            back.kernel = Kernel::Scalar;
            assert_eq!(back.run(&x, &[6, 1, 28, 28]).unwrap().0, want);
        }
    }
}
