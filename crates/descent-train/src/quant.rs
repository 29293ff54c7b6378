//! Post-training static int8 quantization of the MLP and LeNet-5: weights per output channel,
//! symmetric, in `[−127, 127]`; each layer's input per tensor, asymmetric `u8` with a zero point,
//! its range calibrated on training batches; Linear and Conv run as int8 GEMMs with exact `i32`
//! accumulation (a convolution through im2col of the quantized input), then dequantized to f32
//! for the bias, ReLU and max-pooling.
//!
//! With `x ≈ s_x (q_x − z)` and `w ≈ s_w[o] q_w`, a layer's output is
//! `y[o] = s_x s_w[o] (Σ q_x q_w − z Σ q_w) + b[o]`: the row sums `Σ q_w` are computed once.
//!
//! ## Kernels and overflow
//! Three kernels compute `C = A Bᵀ` for `A` u8 `[m × k]` and `B` i8 `[n × k]` in i32, chosen at
//! run time like descent-core's AVX2 kernels:
//! - AVX-512 VNNI (`vpdpbusd` on 256-bit registers): u8 × i8 products summed four at a time
//!   straight into i32 lanes, without intermediate saturation (`vpdpbusds` would saturate);
//! - AVX2: both operands widened to i16 (`vpmovzxbw`, the weights once at load) and multiplied
//!   with `vpmaddwd`, which sums two i16 × i16 products into an i32. `vpmaddubsw` (u8 × i8 summed
//!   in pairs into a *saturating* i16) is not used: 2 · 255 · 127 = 64 770 > 32 767 would
//!   saturate. With i16 widening a pair is at most 64 770 in magnitude, and no pair is
//!   (−32 768)², the only input `vpmaddwd` wraps on;
//! - a scalar reference.
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
/// Rows of the operands are padded with zeros to a multiple of this many bytes.
const PAD: usize = 32;

/// The int8 GEMM kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The reference kernel, plain Rust.
    Scalar,
    /// AVX2: inputs and weights widened to i16, `vpmaddwd`.
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

/// `k` rounded up to the padding of the operands' rows.
pub fn padded(k: usize) -> usize {
    k.div_ceil(PAD) * PAD
}

/// A weight matrix `[n × k]` quantized for the kernels: i8 rows padded with zeros to
/// [`padded`]`(k)`, and the same values widened to i16 for the AVX2 kernel.
#[derive(Debug, Clone)]
pub struct QMatrix {
    /// Rows (output channels).
    pub n: usize,
    /// Columns (inputs per output) before padding.
    pub k: usize,
    /// The int8 rows, padded with zeros.
    pub q: Vec<i8>,
    /// The same rows widened to i16 (the AVX2 kernel).
    pub q16: Vec<i16>,
    /// `Σ_k q[j, k]` of each row.
    pub row_sum: Vec<i32>,
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
        let q16 = q.iter().map(|&v| v as i16).collect();
        let row_sum = (0..n).map(|j| values[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum()).collect();
        Ok(QMatrix { n, k, q, q16, row_sum })
    }
}

/// `c[i, j] = Σ_p a[i, p] · b[j, p]` for `a` `[m × kp]` u8 (rows padded like `b`'s) with `kernel`.
pub fn gemm_u8i8(kernel: Kernel, a: &[u8], m: usize, b: &QMatrix, c: &mut [i32]) {
    let kp = padded(b.k);
    assert!(a.len() >= m * kp && c.len() >= m * b.n, "gemm_u8i8 operand sizes");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(std::arch::is_x86_feature_detected!("avx2"));
            // SAFETY: AVX2 is present (checked above); the asserts bound every access.
            unsafe { x86::gemm_avx2(a, m, kp, &b.q16, b.n, c) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => {
            assert!(
                std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl")
            );
            // SAFETY: AVX-512 VNNI and VL are present (checked above); the asserts bound every access.
            unsafe { x86::gemm_vnni(a, m, kp, &b.q, b.n, c) }
        }
        _ => gemm_scalar(a, m, kp, &b.q, b.n, c),
    }
}

/// The reference kernel.
fn gemm_scalar(a: &[u8], m: usize, kp: usize, b: &[i8], n: usize, c: &mut [i32]) {
    for i in 0..m {
        let ai = &a[i * kp..(i + 1) * kp];
        for j in 0..n {
            let bj = &b[j * kp..(j + 1) * kp];
            c[i * n + j] = ai.iter().zip(bj).map(|(&x, &w)| x as i32 * w as i32).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The sum of the eight i32 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// AVX2: a row of `a` widened to i16 once, then four rows of `b` (already i16) at a time
    /// through `vpmaddwd`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm_avx2(a: &[u8], m: usize, kp: usize, b: &[i16], n: usize, c: &mut [i32]) {
        let mut row = vec![0i16; kp];
        for i in 0..m {
            for (r, &x) in row.iter_mut().zip(&a[i * kp..(i + 1) * kp]) {
                *r = x as i16;
            }
            let ap = row.as_ptr();
            let mut j = 0;
            while j + 4 <= n {
                let (b0, b1, b2, b3) = (
                    b.as_ptr().add(j * kp),
                    b.as_ptr().add((j + 1) * kp),
                    b.as_ptr().add((j + 2) * kp),
                    b.as_ptr().add((j + 3) * kp),
                );
                let (mut s0, mut s1, mut s2, mut s3) =
                    (_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256());
                let mut p = 0;
                while p < kp {
                    let x = _mm256_loadu_si256(ap.add(p) as *const __m256i);
                    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(x, _mm256_loadu_si256(b0.add(p) as *const __m256i)));
                    s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(x, _mm256_loadu_si256(b1.add(p) as *const __m256i)));
                    s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(x, _mm256_loadu_si256(b2.add(p) as *const __m256i)));
                    s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(x, _mm256_loadu_si256(b3.add(p) as *const __m256i)));
                    p += 16;
                }
                let out = &mut c[i * n + j..i * n + j + 4];
                out[0] = hsum(s0);
                out[1] = hsum(s1);
                out[2] = hsum(s2);
                out[3] = hsum(s3);
                j += 4;
            }
            while j < n {
                let bj = b.as_ptr().add(j * kp);
                let mut s = _mm256_setzero_si256();
                let mut p = 0;
                while p < kp {
                    let x = _mm256_loadu_si256(ap.add(p) as *const __m256i);
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(x, _mm256_loadu_si256(bj.add(p) as *const __m256i)));
                    p += 16;
                }
                c[i * n + j] = hsum(s);
                j += 1;
            }
        }
    }

    /// AVX-512 VNNI on 256-bit registers: `vpdpbusd` takes 32 u8 of `a` and 32 i8 of `b` and adds
    /// the sums of each four products into eight i32 lanes; four rows of `b` at a time.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn gemm_vnni(a: &[u8], m: usize, kp: usize, b: &[i8], n: usize, c: &mut [i32]) {
        // Blocks of 4 rows × 4 columns: 16 accumulators, each 32-byte load of `a` or `b` used
        // four times.
        let m4 = m / 4 * 4;
        let n4 = n / 4 * 4;
        for i in (0..m4).step_by(4) {
            let ap: [*const u8; 4] = std::array::from_fn(|r| a.as_ptr().add((i + r) * kp));
            for j in (0..n4).step_by(4) {
                let bp: [*const i8; 4] = std::array::from_fn(|q| b.as_ptr().add((j + q) * kp));
                let mut s = [[_mm256_setzero_si256(); 4]; 4];
                let mut p = 0;
                while p < kp {
                    let w: [__m256i; 4] = std::array::from_fn(|q| _mm256_loadu_si256(bp[q].add(p) as *const __m256i));
                    for (sr, a_r) in s.iter_mut().zip(ap) {
                        let x = _mm256_loadu_si256(a_r.add(p) as *const __m256i);
                        for (acc, wq) in sr.iter_mut().zip(w) {
                            *acc = _mm256_dpbusd_epi32(*acc, x, wq);
                        }
                    }
                    p += 32;
                }
                for (r, sr) in s.iter().enumerate() {
                    for (q, acc) in sr.iter().enumerate() {
                        c[(i + r) * n + j + q] = hsum(*acc);
                    }
                }
            }
            // The last columns, one at a time.
            for (r, a_r) in ap.iter().enumerate() {
                for j in n4..n {
                    let bj = b.as_ptr().add(j * kp);
                    let mut acc = _mm256_setzero_si256();
                    let mut p = 0;
                    while p < kp {
                        let x = _mm256_loadu_si256(a_r.add(p) as *const __m256i);
                        acc = _mm256_dpbusd_epi32(acc, x, _mm256_loadu_si256(bj.add(p) as *const __m256i));
                        p += 32;
                    }
                    c[(i + r) * n + j] = hsum(acc);
                }
            }
        }
        for i in m4..m {
            let ap = a.as_ptr().add(i * kp);
            let mut j = 0;
            while j + 4 <= n {
                let (b0, b1, b2, b3) = (
                    b.as_ptr().add(j * kp),
                    b.as_ptr().add((j + 1) * kp),
                    b.as_ptr().add((j + 2) * kp),
                    b.as_ptr().add((j + 3) * kp),
                );
                let (mut s0, mut s1, mut s2, mut s3) =
                    (_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256());
                let mut p = 0;
                while p < kp {
                    let x = _mm256_loadu_si256(ap.add(p) as *const __m256i);
                    s0 = _mm256_dpbusd_epi32(s0, x, _mm256_loadu_si256(b0.add(p) as *const __m256i));
                    s1 = _mm256_dpbusd_epi32(s1, x, _mm256_loadu_si256(b1.add(p) as *const __m256i));
                    s2 = _mm256_dpbusd_epi32(s2, x, _mm256_loadu_si256(b2.add(p) as *const __m256i));
                    s3 = _mm256_dpbusd_epi32(s3, x, _mm256_loadu_si256(b3.add(p) as *const __m256i));
                    p += 32;
                }
                let out = &mut c[i * n + j..i * n + j + 4];
                out[0] = hsum(s0);
                out[1] = hsum(s1);
                out[2] = hsum(s2);
                out[3] = hsum(s3);
                j += 4;
            }
            while j < n {
                let bj = b.as_ptr().add(j * kp);
                let mut s = _mm256_setzero_si256();
                let mut p = 0;
                while p < kp {
                    let x = _mm256_loadu_si256(ap.add(p) as *const __m256i);
                    s = _mm256_dpbusd_epi32(s, x, _mm256_loadu_si256(bj.add(p) as *const __m256i));
                    p += 32;
                }
                c[i * n + j] = hsum(s);
                j += 1;
            }
        }
    }
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
        let t = x * (1.0 / self.scale) + (self.zero_point as f32 + 0.5);
        // NaN → 0, as the clamp of a float to an integer does.
        t.clamp(0.0, 255.0) as u8
    }
}

/// How a calibration turns the observed inputs into a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The `p`-th and `(100 − p)`-th percentiles of the values seen (clipping outliers).
    Percentile(f64),
}

/// Symmetric per-output-channel quantization of a weight `[out × k]`: `scale = max|w| / 127`,
/// `q = round(w / scale)` in `[−127, 127]`.
pub fn quantize_weights(w: &[f32], out: usize) -> (Vec<i8>, Vec<f32>) {
    let k = w.len() / out.max(1);
    let mut q = vec![0i8; w.len()];
    let mut scales = vec![0f32; out];
    for (o, so) in scales.iter_mut().enumerate() {
        let row = &w[o * k..(o + 1) * k];
        let m = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
        *so = s;
        for (d, &v) in q[o * k..(o + 1) * k].iter_mut().zip(row) {
            *d = (v / s).round().clamp(-127.0, 127.0) as i8;
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

/// The layers of a model that [`quantize`] handles: `mlp` and `lenet`.
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
fn float_forward(spec: &LayerSpec, w: &Tensor, b: &Tensor, x: &Tensor) -> Result<Tensor> {
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
    /// The layer on an f32 input (`[n, …]`), through `kernel`: the output in f32.
    pub fn forward(&self, kernel: Kernel, x: &[f32], in_dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let n = in_dims[0];
        let qp = self.input;
        let o = self.weight.n;
        let kp = padded(self.weight.k);
        let scales: Vec<f32> = self.weight_scale.iter().map(|s| s * qp.scale).collect();
        let zp = qp.zero_point;
        let deq = |acc: i32, j: usize| (acc - zp * self.weight.row_sum[j]) as f32 * scales[j] + self.bias[j];
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
            let mut c = vec![0i32; n * o];
            let rows = 64;
            c.par_chunks_mut(rows * o).zip(a.par_chunks(rows * kp)).for_each(|(c, a)| {
                gemm_u8i8(kernel, a, a.len() / kp, &self.weight, c);
            });
            let relu = self.spec.act != Act::Identity;
            let y = c
                .iter()
                .enumerate()
                .map(|(t, &acc)| {
                    let v = deq(acc, t % o);
                    if relu && v < 0.0 {
                        0.0
                    } else {
                        v
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
        out.par_chunks_mut(o * ph * pw).enumerate().for_each(|(b, dst)| {
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
            let mut acc = vec![0i32; oh * ow * o];
            gemm_u8i8(kernel, &a, oh * ow, &self.weight, &mut acc);
            let mut plane = vec![0f32; oh * ow];
            let mut idx = vec![0u32; ph * pw];
            for j in 0..o {
                for (p, v) in plane.iter_mut().enumerate() {
                    *v = deq(acc[p * o + j], j);
                }
                let d = &mut dst[j * ph * pw..(j + 1) * ph * pw];
                match self.spec.act {
                    Act::Identity => d.copy_from_slice(&plane),
                    Act::Relu => d.iter_mut().zip(&plane).for_each(|(d, &v)| *d = if v < 0.0 { 0.0 } else { v }),
                    Act::ReluPool2 => {
                        pool.plane(&plane, oh, ow, d, &mut idx);
                        d.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
                    }
                }
            }
        });
        Ok((out, vec![n, o, ph, pw]))
    }
}

/// An int8 model: its layers in order, run by the kernel chosen at load time.
#[derive(Debug, Clone)]
pub struct QuantModel {
    /// `mlp` or `lenet`.
    pub model: String,
    /// The layers in order.
    pub layers: Vec<QLayer>,
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
        let mut layers = vec![];
        for ((spec, (w, b)), o) in specs.into_iter().zip(&params).zip(obs) {
            let (lo, hi) = match o {
                Observer::MinMax(lo, hi) => (lo, hi),
                Observer::Values(mut v) => {
                    let Calibration::Percentile(p) = calibration else { unreachable!() };
                    v.sort_by(|a, b| a.total_cmp(b));
                    let at = |q: f64| v[((q / 100.0) * (v.len() - 1) as f64).round() as usize];
                    (at(100.0 - p), at(p))
                }
            };
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
        Ok(QuantModel { model: model_name.to_string(), layers, kernel: Kernel::detect() })
    }

    /// Logits of a batch `x` (`[n, …]` f32), as f32 values and their dims.
    pub fn run(&self, x: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
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
    /// `[1]`); metadata `format` = `descent-int8-1`, `model`, `layers` (JSON of [`LayerSpec`]).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![];
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
        let views = bufs
            .iter()
            .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(|x| e(x.to_string()))?)))
            .collect::<Result<Vec<_>>>()?;
        let specs: Vec<&LayerSpec> = self.layers.iter().map(|l| &l.spec).collect();
        let meta: std::collections::HashMap<String, String> = [
            ("format".to_string(), "descent-int8-1".to_string()),
            ("model".into(), self.model.clone()),
            ("layers".into(), serde_json::to_string(&specs).map_err(|x| e(x.to_string()))?),
        ]
        .into_iter()
        .collect();
        let data = safetensors::serialize(views, Some(meta)).map_err(|x| e(x.to_string()))?;
        std::fs::write(path, data).map_err(|x| e(x.to_string()))
    }

    /// Reads what [`QuantModel::save`] wrote.
    pub fn load(path: &std::path::Path) -> Result<QuantModel> {
        use safetensors::tensor::Dtype;
        let e = |m: String| Error::Data { path: path.display().to_string(), message: m };
        let data = std::fs::read(path).map_err(|x| e(x.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|x| e(format!("not a safetensors file: {x}")))?;
        let (_, md) = safetensors::SafeTensors::read_metadata(&data).map_err(|x| e(x.to_string()))?;
        let meta = md.metadata().clone().unwrap_or_default();
        if meta.get("format").map(|s| s.as_str()) != Some("descent-int8-1") {
            return Err(e("not a descent int8 model (format descent-int8-1)".into()));
        }
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
        Ok(QuantModel { model, layers, kernel: Kernel::detect() })
    }
}

impl Model for QuantModel {
    fn forward(&self, x: &Tensor, _mode: Mode, _rng: &mut Rng) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let (y, d) = self.run(&v, &dims)?;
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

    /// Every kernel this CPU runs gives the scalar reference's sums bit for bit, on odd shapes and
    /// on the extreme values (255 × ±127 over long rows).
    #[test]
    fn kernels_match_the_scalar_reference() {
        let mut rng = Rng::new(7);
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (5, 4, 33), (7, 9, 150), (2, 130, 784), (17, 3, 31), (1, 6, 4000)] {
            let kp = padded(k);
            for extreme in [false, true] {
                let mut a = vec![0u8; m * kp];
                for i in 0..m {
                    for p in 0..k {
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
                let mut want = vec![0i32; m * n];
                gemm_u8i8(Kernel::Scalar, &a, m, &b, &mut want);
                // The reference itself against a plain triple loop over the unpadded values.
                for i in 0..m {
                    for j in 0..n {
                        let s: i64 = (0..k).map(|p| a[i * kp + p] as i64 * w[j * k + p] as i64).sum();
                        assert_eq!(want[i * n + j] as i64, s);
                    }
                }
                for kernel in Kernel::available() {
                    let mut got = vec![0i32; m * n];
                    gemm_u8i8(kernel, &a, m, &b, &mut got);
                    assert_eq!(got, want, "{kernel:?} {m}x{n}x{k} extreme={extreme}");
                }
            }
        }
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
            q.save(&dir).unwrap();
            let back = QuantModel::load(&dir).unwrap();
            std::fs::remove_file(&dir).ok();
            q.kernel = Kernel::Scalar;
            let mut back = back;
            back.kernel = Kernel::Scalar;
            assert_eq!(back.run(&x, &[6, 1, 28, 28]).unwrap().0, want);
        }
    }
}
