//! Per-tensor scalings by norms: the trust ratio of LARS and LAMB, the parameter block RMS of
//! Adafactor, and NovoGrad's per-tensor second moment.

use super::{rms, stateless, zeros};
use crate::error::Result;
use crate::kernel::{global_sum_sq, Elementwise, ParamBufs};
use crate::state::StateVisitor;
use crate::transform::{Shapes, Transform};
use crate::transforms::simd_apply;

/// optax `scale_by_trust_ratio` (LARS/LAMB, You et al. 2017/2019): scales each tensor's update by
/// `coef · ‖p‖ / (‖u‖ + eps)`, or 1 when either norm is zero. Elementwise after a per-tensor
/// reduction of its input, so it costs one read-only pass between two fused ones.
pub struct ScaleByTrustRatio {
    min_norm: f64,
    trust_coefficient: f64,
    eps: f64,
    ratios: Vec<f32>,
}
/// The hyper-parameters of [`ScaleByTrustRatio`], with optax `scale_by_trust_ratio`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByTrustRatioConfig {
    /// Norms at or below this count as this value.
    pub min_norm: f64,
    /// The multiplier `coef` of the ratio.
    pub trust_coefficient: f64,
    /// ε added to the update norm.
    pub eps: f64,
}
impl Default for ScaleByTrustRatioConfig {
    fn default() -> Self {
        ScaleByTrustRatioConfig { min_norm: 0.0, trust_coefficient: 1.0, eps: 0.0 }
    }
}
impl ScaleByTrustRatio {
    /// A `ScaleByTrustRatio` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByTrustRatioConfig) -> Self {
        let ScaleByTrustRatioConfig { min_norm, trust_coefficient, eps } = config;
        ScaleByTrustRatio { min_norm, trust_coefficient, eps, ratios: vec![] }
    }
}
impl ScaleByTrustRatio {
    /// The ratio of each tensor from its squared norms `(‖p‖², ‖u‖²)`.
    fn ratios_of(&self, norms: &[(f64, f64)]) -> Vec<f32> {
        let safe = |sq: f64, min: f64| {
            let n = sq.sqrt();
            if n <= min {
                min
            } else {
                n
            }
        };
        norms
            .iter()
            .map(|&(p_sq, u_sq)| {
                let pn = safe(p_sq, self.min_norm);
                let un = safe(u_sq, self.min_norm);
                (if pn == 0.0 || un == 0.0 { 1.0 } else { self.trust_coefficient * pn / (un + self.eps) }) as f32
            })
            .collect()
    }
}
impl Transform for ScaleByTrustRatio {
    stateless!();
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
}
crate::transforms::prefetch_state!(ScaleByTrustRatio; );
impl Elementwise for ScaleByTrustRatio {
    fn begin_step(&mut self) {}
    simd_apply!(ScaleByTrustRatio, |this, i, off, u, p| {
        let r = this.ratios[i];
        if r != 1.0 {
            for x in u.iter_mut() {
                *x *= r;
            }
        }
    });
    fn needs_prepare(&self) -> bool {
        true
    }
    /// Both norms of a tensor in one pass over the parameters and the input together.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let norms: Vec<(f64, f64)> =
            (0..inputs.len()).map(|i| crate::kernel::global_sum_sq_pair(params[i], inputs[i], None)).collect();
        self.ratios = self.ratios_of(&norms);
    }
    fn takes_norms(&self) -> bool {
        true
    }
    fn prepare_from_norms(&mut self, norms: &[(f64, f64)]) {
        self.ratios = self.ratios_of(norms);
    }
    fn prepare_mapped(&mut self, grads: &[&[f32]], params: &[&[f32]], heads: &[Option<crate::kernel::Head>]) {
        let norms: Vec<(f64, f64)> =
            (0..grads.len()).map(|i| crate::kernel::global_sum_sq_pair(params[i], grads[i], heads[i])).collect();
        self.ratios = self.ratios_of(&norms);
    }
    fn affine(&self, i: usize) -> Option<(f32, f32)> {
        Some((self.ratios[i], 0.0))
    }
}

/// optax `scale_by_param_block_rms`: multiplies each tensor's update by `max(rms(p), min_scale)`.
pub struct ScaleByParamBlockRms {
    min_scale: f64,
}
impl ScaleByParamBlockRms {
    /// A `ScaleByParamBlockRms` with these hyper-parameters (`min_scale`), as described above.
    pub fn new(min_scale: f64) -> Self {
        ScaleByParamBlockRms { min_scale }
    }
    /// The factor of a tensor whose parameters have root mean square `rms`.
    pub(crate) fn factor(&self, rms: f64) -> f32 {
        (if rms <= self.min_scale { self.min_scale } else { rms }) as f32
    }
}
impl Transform for ScaleByParamBlockRms {
    stateless!();
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        for (u, p) in updates.iter_mut().zip(params) {
            let s = self.factor(rms(p));
            u.iter_mut().for_each(|x| *x *= s);
        }
        Ok(())
    }
}

/// optax `scale_by_novograd` (Ginsburg et al. 2019): a per-tensor second moment of the gradient
/// norm, and momentum over the normalized gradient plus weight decay.
///
/// Elementwise after a per-tensor reduction of its input (the squared norm, summed in `prepare`
/// across threads in fixed chunks): one fused pass reads the gradient, the momentum and the
/// parameters and writes the momentum and the parameters.
pub struct ScaleByNovograd {
    b1: f32,
    b2: f64,
    eps: f64,
    eps_root: f64,
    weight_decay: f32,
    count: u64,
    mu: ParamBufs,
    nu: Vec<Vec<f32>>,
    /// This step's `1/(√(ν + ε_root) + ε)` of each tensor (set in `prepare`; not state).
    scale: Vec<f32>,
    /// Whether this step is the first, whose momentum is its input alone (set in `prepare`).
    first: bool,
}
/// The hyper-parameters of [`ScaleByNovograd`], with optax `scale_by_novograd`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByNovogradConfig {
    /// Decay β₁ of the momentum.
    pub b1: f64,
    /// Decay β₂ of the per-tensor second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
    /// Weight decay added to the normalized gradient.
    pub weight_decay: f64,
}
impl Default for ScaleByNovogradConfig {
    fn default() -> Self {
        ScaleByNovogradConfig { b1: 0.9, b2: 0.25, eps: 1e-8, eps_root: 0.0, weight_decay: 0.0 }
    }
}
impl ScaleByNovograd {
    /// A `ScaleByNovograd` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByNovogradConfig) -> Self {
        let ScaleByNovogradConfig { b1, b2, eps, eps_root, weight_decay } = config;
        ScaleByNovograd {
            b1: b1 as f32,
            b2,
            eps,
            eps_root,
            weight_decay: weight_decay as f32,
            count: 0,
            mu: ParamBufs::default(),
            nu: vec![],
            scale: vec![],
            first: false,
        }
    }
}
// The step reads `mu` element by element (`nu` is one value a tensor, read in `prepare`).
crate::transforms::elementwise_transform!(@transform ScaleByNovograd, |s, shapes, _p| {
    s.mu = zeros(shapes).into();
    s.nu = shapes.iter().map(|_| vec![0.0]).collect();
    s.scale = vec![0.0; shapes.len()];
}; bufs: [mu, nu]; counters: [count]; scalars: []);
crate::transforms::prefetch_state!(ScaleByNovograd; mu);
impl Elementwise for ScaleByNovograd {
    fn begin_step(&mut self) {}
    fn needs_prepare(&self) -> bool {
        true
    }
    /// Counts the step, and moves each tensor's second moment by its input's squared norm.
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        self.count += 1;
        self.first = self.count == 1;
        let (first, b2) = (self.first, self.b2 as f32);
        for ((u, nu), scale) in inputs.iter().zip(self.nu.iter_mut()).zip(self.scale.iter_mut()) {
            let g2 = global_sum_sq(&[u]) as f32;
            let nu = &mut nu[0];
            *nu = if first { g2 } else { (1.0 - b2) * g2 + b2 * *nu };
            *scale = 1.0 / (((*nu as f64 + self.eps_root).sqrt() + self.eps) as f32);
        }
    }
    simd_apply!(ScaleByNovograd, |this, i, off, u, p| {
        // The scalars read once, and one loop per case, so that both vectorize.
        let n = u.len();
        let mu = &mut this.mu.slice(i, off, n)[..n];
        let (scale, wd, b1) = (this.scale[i], this.weight_decay, this.b1);
        if this.first {
            for j in 0..n {
                let add = u[j] * scale + wd * p[j];
                mu[j] = add;
                u[j] = add;
            }
        } else {
            for j in 0..n {
                let m = b1 * mu[j] + (u[j] * scale + wd * p[j]);
                mu[j] = m;
                u[j] = m;
            }
        }
    });
}
