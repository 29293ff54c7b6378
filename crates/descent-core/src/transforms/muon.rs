//! Muon's linear algebra and transformations (optax `contrib/_muon.py`): the matrix product,
//! Newton–Schulz orthogonalization in float32 or bfloat16 arithmetic, `scale_by_muon` and
//! `scale_by_shape`.

use super::{bf16_to_f32, decayed_bf16, f32_to_bf16, state, sum_sq, zeros, MomentDtype, ParamBufs};
use crate::error::Result;
use crate::state::StateVisitor;
use crate::transform::{Shapes, Transform};

/// Products with at least this many multiply-adds go to the blocked, threaded GEMM.
const GEMM_MIN: usize = 1 << 18;

/// Dense matrix product `C[m×n] = A[m×k]·B[k×n]`, row-major, accumulating in `f32` like the
/// libraries' GEMMs: in order of `k` for small products (the reference problems' sizes, where
/// this order reproduces torch's bfloat16 Newton–Schulz bit for bit), through the `gemm` crate
/// (blocked, vectorized, on rayon's threads) for large ones.
pub(crate) fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(a.len() == m * k && b.len() == k * n, "matmul operand sizes");
    let mut c = vec![0.0f32; m * n];
    if m * k * n >= GEMM_MIN {
        // SAFETY: the strides describe the row-major operands whose sizes are asserted above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        return c;
    }
    for r in 0..m {
        let crow = &mut c[r * n..(r + 1) * n];
        for t in 0..k {
            let av = a[r * k + t];
            let brow = &b[t * n..(t + 1) * n];
            for (cv, bv) in crow.iter_mut().zip(brow) {
                *cv += av * bv;
            }
        }
    }
    c
}

pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    if x.is_empty() {
        // No element to move, however long the other axis: no loop over it.
        return vec![];
    }
    let mut t = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// The arithmetic of a Newton–Schulz iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsPrecision {
    /// `f32` throughout, the norm added to `eps` (optax on float32 parameters).
    F32,
    /// As `torch.optim.Muon` (PyTorch 2.15): the matrix cast to bfloat16, the norm clamped at
    /// `eps`, and each of `A = XXᵀ`, `B = bA + c·A·A` and `X = aX + B·X` accumulated in `f32` and
    /// rounded to bfloat16 once (torch's `addmm`). Reproduces torch's result bit for bit.
    TorchBf16,
}

/// Rounds an `f32` to the nearest bfloat16 (ties to even), kept in an `f32`.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    f32::from_bits(b.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

/// Newton–Schulz orthogonalization of a `rows × cols` matrix (Muon, Jordan et al. 2024): the matrix
/// is transposed to be wide, normalized by its Frobenius norm, then iterated
/// `X ← aX + (bA + cA²)X` with `A = XXᵀ`, in the arithmetic `precision` names. `x` must hold
/// the `rows × cols` values.
pub fn newton_schulz(
    x: &[f32],
    rows: usize,
    cols: usize,
    coeffs: [f64; 3],
    steps: usize,
    eps: f64,
    precision: NsPrecision,
) -> crate::error::Result<Vec<f32>> {
    if rows.checked_mul(cols) != Some(x.len()) {
        return Err(crate::error::Error::Shape(format!(
            "newton_schulz: {} values for a {rows} × {cols} matrix",
            x.len()
        )));
    }
    Ok(orthogonalize(x, rows, cols, &vec![coeffs; steps], NsPreconditioning::Frobenius, eps, precision))
}

/// How the Newton–Schulz iteration's input is brought to a spectral norm of at most about 1
/// (optax `contrib.scale_by_muon`'s `preconditioning`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NsPreconditioning {
    /// `X / (‖X‖_F + ε)` before the first iteration (Muon's own).
    #[default]
    Frobenius,
    /// `X / (‖X‖₂ + ε)`, the largest singular value (exact, by an SVD).
    Spectral,
    /// "Almost orthogonal layer" rescaling (Boissin et al. 2025, Turbo-Muon): no division before;
    /// the first iteration scales row `i` of `X` by `1/√max(Σ_j |A_ij|, 1e-8)` and `A = XXᵀ` on
    /// both sides to match (optax clamps at 1e-8 whatever `eps`).
    Aol,
    /// Schatten-4 rescaling (Grishina et al. 2025): the first iteration divides `X` by
    /// `√max(‖A‖_F, 1e-8)` (`‖X‖` in the Schatten-4 norm) and `A` by its square.
    Schatten,
}

impl NsPreconditioning {
    /// optax's name of a preconditioning.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "frobenius" => Self::Frobenius,
            "spectral" => Self::Spectral,
            "aol" => Self::Aol,
            "schatten" => Self::Schatten,
            _ => return None,
        })
    }
}

/// The largest singular value of a `rows × cols` matrix (NaN where it has a non-finite entry, as
/// the library's SVD gives).
fn spectral_norm(x: &[f32], rows: usize, cols: usize) -> f64 {
    use crate::po::matrix::linalg::{svd, Mat64};
    svd(&Mat64::from_f32(rows, cols, x)).map_or(f64::NAN, |(_, s, _)| s.into_iter().fold(0.0, f64::max))
}

/// [`newton_schulz`] with one coefficient triple `(a, b, c)` per iteration and the input scaled as
/// `preconditioning` says (optax `orthogonalize_via_newton_schulz`).
pub fn orthogonalize(
    x: &[f32],
    rows: usize,
    cols: usize,
    coeffs: &[[f64; 3]],
    preconditioning: NsPreconditioning,
    eps: f64,
    precision: NsPrecision,
) -> Vec<f32> {
    if x.is_empty() {
        return vec![];
    }
    let r: fn(f32) -> f32 = match precision {
        NsPrecision::F32 => |v| v,
        NsPrecision::TorchBf16 => round_bf16,
    };
    let tall = rows > cols;
    let (m, n, mut x) = if tall { (cols, rows, transpose(x, rows, cols)) } else { (rows, cols, x.to_vec()) };
    x.iter_mut().for_each(|v| *v = r(*v));
    let divisor = match (preconditioning, precision) {
        (NsPreconditioning::Frobenius, NsPrecision::F32) => Some((sum_sq(&x).sqrt() + eps) as f32),
        (NsPreconditioning::Frobenius, NsPrecision::TorchBf16) => Some(r(sum_sq(&x).sqrt() as f32).max(eps as f32)),
        (NsPreconditioning::Spectral, _) => Some((spectral_norm(&x, m, n) + eps) as f32),
        (NsPreconditioning::Aol | NsPreconditioning::Schatten, _) => None,
    };
    if let Some(d) = divisor {
        x.iter_mut().for_each(|v| *v = r(*v / d));
    }
    for (i, c) in coeffs.iter().enumerate() {
        let [a, b, c] = c.map(|v| v as f32);
        let xt = transpose(&x, m, n);
        let mut gram = matmul(&x, &xt, m, n, m);
        gram.iter_mut().for_each(|v| *v = r(*v));
        if i == 0 {
            // optax calls these first iterations without `eps`: their clamp is always 1e-8.
            first_iteration_rescaling(preconditioning, &mut x, &mut gram, m, n, 1e-8);
        }
        let gram2 = matmul(&gram, &gram, m, m, m);
        let poly: Vec<f32> = gram.iter().zip(&gram2).map(|(g, g2)| r(b * g + c * g2)).collect();
        let px = matmul(&poly, &x, m, m, n);
        x.iter_mut().zip(&px).for_each(|(v, p)| *v = r(a * *v + p));
    }
    if tall {
        transpose(&x, m, n)
    } else {
        x
    }
}

/// AOL's and Schatten-4's scaling of the wide `m × n` matrix `x` and its Gram matrix `gram`
/// (`m × m`) in the first iteration; nothing for the others.
fn first_iteration_rescaling(p: NsPreconditioning, x: &mut [f32], gram: &mut [f32], m: usize, n: usize, eps: f32) {
    match p {
        NsPreconditioning::Aol => {
            let s: Vec<f32> = gram
                .chunks_exact(m)
                .map(|row| 1.0 / row.iter().map(|v| v.abs()).sum::<f32>().max(eps).sqrt())
                .collect();
            for (row, si) in x.chunks_exact_mut(n).zip(&s) {
                row.iter_mut().for_each(|v| *v *= si);
            }
            for (row, si) in gram.chunks_exact_mut(m).zip(&s) {
                row.iter_mut().zip(&s).for_each(|(v, sj)| *v = *v * si * sj);
            }
        }
        NsPreconditioning::Schatten => {
            let s = 1.0 / (sum_sq(gram).sqrt() as f32).max(eps).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
            gram.iter_mut().for_each(|v| *v *= s * s);
        }
        NsPreconditioning::Frobenius | NsPreconditioning::Spectral => {}
    }
}

/// The Newton–Schulz coefficients `(a, b, c)` of optax `contrib.scale_by_muon`'s `ns_coeffs`.
#[derive(Clone, Debug, PartialEq)]
pub enum NsCoeffs {
    /// One triple for every one of the `ns_steps` iterations.
    Fixed([f64; 3]),
    /// One triple per iteration, at most `ns_steps` of them (optax then runs exactly these).
    PerStep(Vec<[f64; 3]>),
}
impl Default for NsCoeffs {
    fn default() -> Self {
        NsCoeffs::Fixed(MUON_NS_COEFFS)
    }
}
impl NsCoeffs {
    /// optax's presets: `standard` (Jordan's `(3.4445, −4.7750, 2.0315)`) and `dion` (five
    /// per-iteration triples, Ahn et al. 2025).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "standard" => Some(NsCoeffs::Fixed(MUON_NS_COEFFS)),
            "dion" => Some(NsCoeffs::PerStep(DION_NS_COEFFS.to_vec())),
            _ => None,
        }
    }
    /// The triple of each iteration.
    fn per_iteration(&self, steps: usize) -> Result<Vec<[f64; 3]>> {
        match self {
            NsCoeffs::Fixed(c) => Ok(vec![*c; steps]),
            NsCoeffs::PerStep(rows) if rows.len() <= steps => Ok(rows.clone()),
            NsCoeffs::PerStep(rows) => Err(crate::error::invalid(format!(
                "ns_coeffs: {} rows of coefficients for ns_steps = {steps} (at most one row per step)",
                rows.len()
            ))),
        }
    }
}

/// Jordan's Newton–Schulz coefficients, the default of optax and torch.
pub const MUON_NS_COEFFS: [f64; 3] = [3.4445, -4.7750, 2.0315];
/// optax's `dion` preset.
const DION_NS_COEFFS: [[f64; 3]; 5] = [
    [4.0848, -6.8946, 2.9270],
    [3.9505, -6.3029, 2.6377],
    [3.7418, -5.5913, 2.3037],
    [2.8769, -3.1427, 1.2046],
    [2.8366, -3.0525, 1.2012],
];

/// Which axes of a parameter form the rows (reduction axes, fan-in) and the columns (output axes,
/// fan-out) of the matrix Muon orthogonalizes; every other axis is a batch axis, each of whose
/// matrices is orthogonalized alone (optax `contrib.MuonDimensionNumbers`). Negative axes count
/// from the end. The default is a 2-D parameter's rows and columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MuonDims {
    /// The reduction axes (`reduction_axis`): the matrix's rows.
    pub reduction: Vec<isize>,
    /// The output axes (`output_axis`): the matrix's columns.
    pub output: Vec<isize>,
}
impl Default for MuonDims {
    fn default() -> Self {
        MuonDims { reduction: vec![0], output: vec![1] }
    }
}

/// A parameter seen as a batch of `fan_in × fan_out` matrices: its axes permuted to batch,
/// reduction, output order (`perm`), and back (`inverse`).
#[derive(Clone, Debug, Default)]
struct MatrixLayout {
    shape: Vec<usize>,
    perm: Vec<usize>,
    inverse: Vec<usize>,
    batch: usize,
    fan_in: usize,
    fan_out: usize,
}

impl MuonDims {
    /// Whether these dimension numbers apply to a parameter of `shape` (the error says why not).
    pub fn check(&self, shape: &[usize]) -> Result<()> {
        self.layout(shape).map(drop)
    }

    fn layout(&self, shape: &[usize]) -> Result<MatrixLayout> {
        let nd = shape.len();
        if nd < 2 {
            return Err(crate::error::invalid(format!(
                "Muon orthogonalizes parameters of rank 2 or more, got shape {shape:?}"
            )));
        }
        let norm = |axes: &[isize]| -> Result<Vec<usize>> {
            axes.iter()
                .map(|&a| {
                    let k = if a < 0 { a + nd as isize } else { a };
                    usize::try_from(k).ok().filter(|&k| k < nd).ok_or_else(|| {
                        crate::error::invalid(format!(
                            "Muon dimension numbers: axis {a} out of range for shape {shape:?}"
                        ))
                    })
                })
                .collect()
        };
        let (red, out) = (norm(&self.reduction)?, norm(&self.output)?);
        let mut seen = vec![false; nd];
        for &k in red.iter().chain(&out) {
            if std::mem::replace(&mut seen[k], true) {
                return Err(crate::error::invalid(format!(
                    "Muon dimension numbers: reduction axes {:?} and output axes {:?} must be distinct, for shape {shape:?}",
                    self.reduction, self.output
                )));
            }
        }
        if red.is_empty() || out.is_empty() {
            return Err(crate::error::invalid(
                "Muon dimension numbers: need at least one reduction and one output axis",
            ));
        }
        let batch_axes: Vec<usize> = (0..nd).filter(|&k| !seen[k]).collect();
        let perm: Vec<usize> = batch_axes.iter().chain(&red).chain(&out).copied().collect();
        let mut inverse = vec![0; nd];
        for (i, &k) in perm.iter().enumerate() {
            inverse[k] = i;
        }
        let prod = |axes: &[usize]| axes.iter().map(|&k| shape[k]).product::<usize>();
        Ok(MatrixLayout {
            shape: shape.to_vec(),
            batch: prod(&batch_axes),
            fan_in: prod(&red),
            fan_out: prod(&out),
            perm,
            inverse,
        })
    }
}

impl MatrixLayout {
    /// `f` applied to each `fan_in × fan_out` matrix of `x`, the result in `x`'s layout.
    fn map_matrices(&self, x: &[f32], f: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
        use crate::po::matrix::linalg::permute_axes;
        let identity = self.perm.iter().enumerate().all(|(i, &k)| i == k);
        let flat = if identity { x.to_vec() } else { permute_axes(x, &self.shape, &self.perm) };
        let size = self.fan_in * self.fan_out;
        let mut out = Vec::with_capacity(flat.len());
        for m in flat.chunks_exact(size.max(1)).take(self.batch) {
            out.extend(f(m));
        }
        if identity {
            return out;
        }
        let permuted: Vec<usize> = self.perm.iter().map(|&k| self.shape[k]).collect();
        permute_axes(&out, &permuted, &self.inverse)
    }
}

/// The layouts of `shapes` under `dims` (one per parameter), or the default 2-D rule.
fn layouts(shapes: &Shapes, dims: Option<&[MuonDims]>) -> Result<Vec<MatrixLayout>> {
    if let Some(d) = dims {
        if d.len() != shapes.len() {
            return Err(crate::error::invalid(format!(
                "Muon dimension numbers: {} entries for {} parameters",
                d.len(),
                shapes.len()
            )));
        }
    }
    let default = MuonDims::default();
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| match dims {
            Some(d) => d[i].layout(s),
            None if s.len() == 2 => default.layout(s),
            None => Err(crate::error::invalid(format!("Muon orthogonalizes 2-D parameters only, got shape {s:?}"))),
        })
        .collect()
}

/// optax `contrib.scale_by_muon`: momentum (`μ ← βμ + (1−β)g`, bias-corrected, Nesterov by
/// default) orthogonalized by Newton–Schulz, matrix by matrix; with `adaptive`, the result `O`
/// scaled by `⟨μ̂, O⟩` (Bernstein & Newhouse 2024, the dual norm of the momentum).
pub struct ScaleByMuon {
    coeffs: NsCoeffs,
    steps: usize,
    per_iteration: Vec<[f64; 3]>,
    beta: f32,
    /// `1 − β` in double precision, then f32, as optax computes it from the Python float.
    one_minus_beta: f32,
    eps: f64,
    nesterov: bool,
    adaptive: bool,
    preconditioning: NsPreconditioning,
    mu_dtype: MomentDtype,
    dims: Option<Vec<MuonDims>>,
    layouts: Vec<MatrixLayout>,
    count: u64,
    mu: Vec<Vec<f32>>,
    mu_bf16: ParamBufs<u16>,
}
/// The hyper-parameters of [`ScaleByMuon`], with optax `contrib.scale_by_muon`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByMuonConfig {
    /// Coefficients (a, b, c) of the Newton–Schulz iterations.
    pub ns_coeffs: NsCoeffs,
    /// Newton–Schulz iterations (for [`NsCoeffs::PerStep`], an upper bound on the rows).
    pub ns_steps: usize,
    /// Decay β of the momentum.
    pub beta: f64,
    /// ε of the normalization before the iteration.
    pub eps: f64,
    /// Nesterov-corrected momentum.
    pub nesterov: bool,
    /// Scale the orthogonalized update by its inner product with the momentum.
    pub adaptive: bool,
    /// How the iteration's input is scaled.
    pub preconditioning: NsPreconditioning,
    /// The type the momentum is stored in between steps (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// One [`MuonDims`] per parameter; `None`: every parameter is a 2-D matrix.
    pub weight_dimension_numbers: Option<Vec<MuonDims>>,
}
impl Default for ScaleByMuonConfig {
    fn default() -> Self {
        ScaleByMuonConfig {
            ns_coeffs: NsCoeffs::default(),
            ns_steps: 5,
            beta: 0.95,
            eps: 1e-8,
            nesterov: true,
            adaptive: false,
            preconditioning: NsPreconditioning::Frobenius,
            mu_dtype: MomentDtype::F32,
            weight_dimension_numbers: None,
        }
    }
}
impl ScaleByMuon {
    /// A `ScaleByMuon` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByMuonConfig) -> Self {
        let ScaleByMuonConfig {
            ns_coeffs,
            ns_steps,
            beta,
            eps,
            nesterov,
            adaptive,
            preconditioning,
            mu_dtype,
            weight_dimension_numbers,
        } = config;
        ScaleByMuon {
            coeffs: ns_coeffs,
            steps: ns_steps,
            per_iteration: vec![],
            beta: beta as f32,
            one_minus_beta: (1.0 - beta) as f32,
            eps,
            nesterov,
            adaptive,
            preconditioning,
            mu_dtype,
            dims: weight_dimension_numbers,
            layouts: vec![],
            count: 0,
            mu: vec![],
            mu_bf16: ParamBufs::default(),
        }
    }
}
impl Transform for ScaleByMuon {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.count = 0;
        self.per_iteration = self.coeffs.per_iteration(self.steps)?;
        self.layouts = layouts(shapes, self.dims.as_deref())?;
        (self.mu, self.mu_bf16) = match self.mu_dtype {
            MomentDtype::F32 => (zeros(shapes), ParamBufs::default()),
            MomentDtype::Bf16 => {
                (vec![], shapes.iter().map(|s| vec![0u16; s.iter().product()]).collect::<Vec<_>>().into())
            }
        };
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        self.count += 1;
        let b = self.beta as f64;
        let bc = super::bias_correction(b, self.count as f64) as f32;
        let bc_next = super::bias_correction(b, self.count as f64 + 1.0) as f32;
        let beta = self.beta;
        let one_minus = self.one_minus_beta;
        for (i, u) in updates.iter_mut().enumerate() {
            let bf16 = self.mu_dtype == MomentDtype::Bf16;
            let momentum = |g: &mut f32, m: f32| -> f32 {
                let m = one_minus * *g + if bf16 { decayed_bf16(beta, m) } else { beta * m };
                *g = if self.nesterov { beta * (m / bc_next) + one_minus * (*g / bc) } else { m / bc };
                m
            };
            match self.mu_dtype {
                MomentDtype::F32 => u.iter_mut().zip(self.mu[i].iter_mut()).for_each(|(g, m)| *m = momentum(g, *m)),
                MomentDtype::Bf16 => self.mu_bf16.with_buffers(|mu| {
                    u.iter_mut().zip(mu[i].iter_mut()).for_each(|(g, m)| *m = f32_to_bf16(momentum(g, bf16_to_f32(*m))))
                }),
            }
            let l = &self.layouts[i];
            let o = l.map_matrices(u, |m| {
                orthogonalize(
                    m,
                    l.fan_in,
                    l.fan_out,
                    &self.per_iteration,
                    self.preconditioning,
                    self.eps,
                    NsPrecision::F32,
                )
            });
            if self.adaptive {
                let dual = u.iter().zip(&o).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
                u.iter_mut().zip(&o).for_each(|(v, &x)| *v = dual * x);
            } else {
                *u = o;
            }
        }
        Ok(())
    }
    state!(ScaleByMuon; bufs: [mu, mu_bf16]; counters: [count]; scalars: []);
}

/// optax `contrib.scale_by_shape`: scales an update by `√max(1, fan_out/fan_in)` (Muon's width
/// transfer) or, with `consistent_rms = r`, by `r·√max(fan_in, fan_out)` (Liu et al. 2025, an
/// update RMS like AdamW's). Fan-in and fan-out are the sizes of [`MuonDims`]' axes (without
/// them: the first axis and the product of the others).
#[derive(Default)]
pub struct ScaleByShape {
    consistent_rms: Option<f64>,
    dims: Option<Vec<MuonDims>>,
    scales: Vec<f32>,
}
impl ScaleByShape {
    /// A `ScaleByShape` with `consistent_rms` and one [`MuonDims`] per parameter, as described above.
    pub fn new(consistent_rms: Option<f64>, weight_dimension_numbers: Option<Vec<MuonDims>>) -> Self {
        ScaleByShape { consistent_rms, dims: weight_dimension_numbers, scales: vec![] }
    }
}
impl Transform for ScaleByShape {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        let fans: Vec<(f64, f64)> = match &self.dims {
            Some(_) => {
                layouts(shapes, self.dims.as_deref())?.iter().map(|l| (l.fan_in as f64, l.fan_out as f64)).collect()
            }
            None => shapes
                .iter()
                .map(|s| (s.first().map_or(1.0, |&d| d as f64), s.iter().skip(1).map(|&d| d as f64).product::<f64>()))
                .collect(),
        };
        self.scales = fans
            .into_iter()
            .map(|(fan_in, fan_out)| match self.consistent_rms {
                Some(r) => (fan_in.max(fan_out).sqrt() * r) as f32,
                None => (fan_out / fan_in).max(1.0).sqrt() as f32,
            })
            .collect();
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        for (u, &scale) in updates.iter_mut().zip(&self.scales) {
            u.iter_mut().for_each(|x| *x *= scale);
        }
        Ok(())
    }
    fn visit_state(&mut self, _v: &mut dyn StateVisitor) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{matmul, round_bf16, GEMM_MIN};

    /// Large products go through the blocked GEMM: the same values as the in-order sum, to `f32`
    /// rounding of the sum of absolute products.
    #[test]
    fn large_products_use_the_gemm_and_agree_with_the_plain_sum() {
        let (m, k, n) = (70, 90, 50);
        assert!(m * k * n >= GEMM_MIN);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
        let c = matmul(&a, &b, m, k, n);
        for r in 0..m {
            for j in 0..n {
                let (mut sum, mut mag) = (0.0f64, 0.0f64);
                for t in 0..k {
                    let p = a[r * k + t] as f64 * b[t * n + j] as f64;
                    sum += p;
                    mag += p.abs();
                }
                let got = c[r * n + j] as f64;
                assert!((got - sum).abs() <= 2.0 * k as f64 * f32::EPSILON as f64 * mag, "{r},{j}: {got} vs {sum}");
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties go to the even 1.
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 1.0 + 2f32.powi(-7));
        assert_eq!(round_bf16(-2.5), -2.5);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(0.1).to_bits() & 0xffff, 0);
    }
}
