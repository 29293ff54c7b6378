//! Transformations that need a reduction over a whole tensor (or all of them) before the
//! elementwise part: norms, means, factored moments, orthogonalization.

use super::{state, sum_sq, zeros};
use crate::error::Result;
use crate::state::StateVisitor;
use crate::transform::{numel, Elementwise, Shapes, Transform, CHUNK, PARALLEL_MIN};
use crate::transforms::simd_apply;
use rayon::prelude::*;

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

/// optax `centralize` (Gradient Centralization, Yong et al. 2020): for tensors of rank > 1,
/// subtracts the mean over all axes but the first.
#[derive(Default)]
pub struct Centralize {
    shapes: Vec<Vec<usize>>,
}
impl Transform for Centralize {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.shapes = shapes.to_vec();
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        for (u, s) in updates.iter_mut().zip(&self.shapes) {
            if s.len() > 1 && !u.is_empty() {
                let row = u.len() / s[0];
                for r in u.chunks_mut(row) {
                    let mean = (r.iter().map(|&x| x as f64).sum::<f64>() / row as f64) as f32;
                    r.iter_mut().for_each(|x| *x -= mean);
                }
            }
        }
        Ok(())
    }
    fn visit_state(&mut self, _v: &mut dyn StateVisitor) -> Result<()> {
        Ok(())
    }
}

/// optax `clip_by_global_norm`: if the norm of all updates together exceeds `max_norm`, scales them
/// all by `max_norm / norm` (one norm over every parameter, not one per tensor). Elementwise after a
/// reduction of its input, so at the head of a chain it costs one read of the gradient.
pub struct ClipByGlobalNorm {
    max_norm: f64,
    scale: f32,
}
impl ClipByGlobalNorm {
    pub fn new(max_norm: f64) -> Self {
        ClipByGlobalNorm { max_norm, scale: 1.0 }
    }
}
/// The L2 norm of all buffers together.
pub fn global_norm(bufs: &[Vec<f32>]) -> f64 {
    let views: Vec<&[f32]> = bufs.iter().map(|b| b.as_slice()).collect();
    crate::transform::global_sum_sq(&views).sqrt()
}
impl Transform for ClipByGlobalNorm {
    stateless!();
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
}
impl Elementwise for ClipByGlobalNorm {
    fn begin_step(&mut self) {}
    fn head(&self, _i: usize) -> Option<crate::transform::Head> {
        Some(crate::transform::Head::affine(self.scale, 0.0))
    }
    simd_apply!(ClipByGlobalNorm, |this, i, off, u, p| {
        if this.scale != 1.0 {
            for x in u.iter_mut() {
                *x *= this.scale;
            }
        }
    });
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        let norm = crate::transform::global_sum_sq(inputs).sqrt();
        self.scale = if norm >= self.max_norm { (self.max_norm / norm) as f32 } else { 1.0 };
    }
}

/// The group of each element for optax's `unitwise_norm`: rank ≤ 1 (after squeezing) one group,
/// rank 2–3 one per index of the trailing axes, rank 4–5 one per index of the last axis.
fn unit_groups(shape: &[usize]) -> (usize, Box<dyn Fn(usize) -> usize>) {
    let n = numel(shape);
    let squeezed = shape.iter().filter(|&&d| d != 1).count();
    // An empty tensor has no units to norm, however long its other axes.
    if n == 0 || squeezed <= 1 || shape.len() <= 1 {
        (1, Box::new(|_| 0))
    } else if shape.len() <= 3 {
        let inner = n / shape[0].max(1);
        (inner, Box::new(move |e| e % inner))
    } else {
        let last = *shape.last().unwrap_or(&1);
        (last, Box::new(move |e| e % last))
    }
}

fn unit_norms(x: &[f32], groups: usize, key: &dyn Fn(usize) -> usize) -> Vec<f64> {
    let mut s = vec![0.0f64; groups];
    for (e, &v) in x.iter().enumerate() {
        s[key(e)] += (v as f64) * (v as f64);
    }
    s.iter_mut().for_each(|v| *v = v.sqrt());
    s
}

/// optax `adaptive_grad_clip` (AGC, Brock et al. 2021): clips each unit's gradient norm to
/// `clipping · max(‖param unit‖, eps)`.
pub struct AdaptiveGradClip {
    clipping: f64,
    eps: f64,
    shapes: Vec<Vec<usize>>,
}
impl AdaptiveGradClip {
    pub fn new(clipping: f64, eps: f64) -> Self {
        AdaptiveGradClip { clipping, eps, shapes: vec![] }
    }
}
impl Transform for AdaptiveGradClip {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.shapes = shapes.to_vec();
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        for ((u, p), s) in updates.iter_mut().zip(params).zip(&self.shapes) {
            let (groups, key) = unit_groups(s);
            let gn = unit_norms(u, groups, &*key);
            let pn = unit_norms(p, groups, &*key);
            for (e, x) in u.iter_mut().enumerate() {
                let k = key(e);
                let max_norm = self.clipping * pn[k].max(self.eps);
                if gn[k] >= max_norm {
                    *x = (*x as f64 * (max_norm / gn[k].max(1e-6))) as f32;
                }
            }
        }
        Ok(())
    }
    fn visit_state(&mut self, _v: &mut dyn StateVisitor) -> Result<()> {
        Ok(())
    }
}

/// optax `scale_by_trust_ratio` (LARS/LAMB, You et al. 2017/2019): scales each tensor's update by
/// `coef · ‖p‖ / (‖u‖ + eps)`, or 1 when either norm is zero. Elementwise after a per-tensor
/// reduction of its input, so it costs one read-only pass between two fused ones.
pub struct ScaleByTrustRatio {
    min_norm: f64,
    trust_coefficient: f64,
    eps: f64,
    ratios: Vec<f32>,
}
impl ScaleByTrustRatio {
    pub fn new(min_norm: f64, trust_coefficient: f64, eps: f64) -> Self {
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
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let norms: Vec<(f64, f64)> = (0..inputs.len())
            .map(|i| (crate::transform::global_sum_sq(&[params[i]]), crate::transform::global_sum_sq(&[inputs[i]])))
            .collect();
        self.ratios = self.ratios_of(&norms);
    }
    fn prepare_mapped(&mut self, grads: &[&[f32]], params: &[&[f32]], heads: &[Option<crate::transform::Head>]) {
        let norms: Vec<(f64, f64)> = (0..grads.len())
            .map(|i| {
                (
                    crate::transform::global_sum_sq(&[params[i]]),
                    crate::transform::global_sum_sq_mapped(grads[i], params[i], heads[i]),
                )
            })
            .collect();
        self.ratios = self.ratios_of(&norms);
    }
    fn affine(&self, i: usize) -> Option<(f32, f32)> {
        Some((self.ratios[i], 0.0))
    }
}

/// The root mean square of a tensor, summed over fixed chunks across threads (the same value
/// for any thread count; see [`crate::transform::global_sum_sq`]).
fn rms(x: &[f32]) -> f64 {
    rms_of(crate::transform::global_sum_sq(&[x]), x.len())
}

/// The root mean square of `n` values whose squares sum to `sum_sq` (0 for none).
fn rms_of(sum_sq: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        (sum_sq / n as f64).sqrt()
    }
}

/// optax `clip_by_block_rms`: divides each tensor by `max(1, rms(u)/threshold)`.
pub struct ClipByBlockRms {
    threshold: f64,
}
impl ClipByBlockRms {
    pub fn new(threshold: f64) -> Self {
        ClipByBlockRms { threshold }
    }
    /// What a tensor whose update has root mean square `rms` is divided by.
    fn divisor(&self, rms: f64) -> f32 {
        (rms / self.threshold).max(1.0) as f32
    }
}
impl Transform for ClipByBlockRms {
    stateless!();
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        for u in updates.iter_mut() {
            let d = self.divisor(rms(u));
            u.iter_mut().for_each(|x| *x /= d);
        }
        Ok(())
    }
}

/// optax `scale_by_param_block_rms`: multiplies each tensor's update by `max(rms(p), min_scale)`.
pub struct ScaleByParamBlockRms {
    min_scale: f64,
}
impl ScaleByParamBlockRms {
    pub fn new(min_scale: f64) -> Self {
        ScaleByParamBlockRms { min_scale }
    }
    /// The factor of a tensor whose parameters have root mean square `rms`.
    fn factor(&self, rms: f64) -> f32 {
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

/// How a tensor's second moment is kept by Adafactor.
#[derive(Clone, Debug)]
enum Factoring {
    /// Full per-element moment.
    Full,
    /// Row and column moments over the two axes `d1` (kept in `v_row`) and `d0` (kept in `v_col`)
    /// with the other axes as batch.
    Factored { d0: usize, d1: usize },
}

/// Iterates a row-major shape: for each flat index, its multi-index.
fn unravel(mut e: usize, shape: &[usize], out: &mut [usize]) {
    for k in (0..shape.len()).rev() {
        out[k] = e % shape[k];
        e /= shape[k];
    }
}

/// Flat index into `shape` with axis `skip` removed.
fn ravel_without(idx: &[usize], shape: &[usize], skip: usize) -> usize {
    let mut f = 0;
    for k in 0..shape.len() {
        if k != skip {
            f = f * shape[k] + idx[k];
        }
    }
    f
}

/// Calls `f(e, r, c)` for every element `e` of a tensor of shape `s` in order, with `r` its
/// multi-index without axis `d0` and `c` without axis `d1`, flattened. Matrices go by two plain
/// loops; other ranks unravel each index.
fn for_each_row_col(s: &[usize], d0: usize, d1: usize, mut f: impl FnMut(usize, usize, usize)) {
    if let [n0, n1] = *s {
        for a in 0..n0 {
            for b in 0..n1 {
                let pick = |axis: usize| if axis == 0 { a } else { b };
                f(a * n1 + b, pick(d1), pick(d0));
            }
        }
        return;
    }
    let mut idx = vec![0; s.len()];
    for e in 0..numel(s) {
        unravel(e, s, &mut idx);
        f(e, ravel_without(&idx, s, d0), ravel_without(&idx, s, d1));
    }
}

/// optax `scale_by_factored_rms` (Adafactor, Shazeer & Stern 2018): the second moment of tensors
/// whose two largest axes are at least `min_dim_size_to_factor` is kept as row and column means.
pub struct ScaleByFactoredRms {
    factored: bool,
    decay_rate: f64,
    step_offset: u64,
    min_dim_size_to_factor: usize,
    epsilon: f32,
    count: u64,
    shapes: Vec<Vec<usize>>,
    kinds: Vec<Factoring>,
    v_row: Vec<Vec<f32>>,
    v_col: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}
impl ScaleByFactoredRms {
    pub fn new(factored: bool, decay_rate: f64, step_offset: u64, min_dim_size_to_factor: usize, epsilon: f64) -> Self {
        ScaleByFactoredRms {
            factored,
            decay_rate,
            step_offset,
            min_dim_size_to_factor,
            epsilon: epsilon as f32,
            count: 0,
            shapes: vec![],
            kinds: vec![],
            v_row: vec![],
            v_col: vec![],
            v: vec![],
        }
    }
}
impl Transform for ScaleByFactoredRms {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.shapes = shapes.to_vec();
        self.kinds.clear();
        self.v_row.clear();
        self.v_col.clear();
        self.v.clear();
        for s in shapes {
            // An empty tensor keeps a full (empty) moment: no per-axis state for axes that may be
            // long, and no division by a zero axis.
            let kind = if !self.factored || s.len() < 2 || numel(s) == 0 {
                Factoring::Full
            } else {
                // numpy argsort is stable: ties keep axis order.
                let mut order: Vec<usize> = (0..s.len()).collect();
                order.sort_by_key(|&k| s[k]);
                let (d1, d0) = (order[s.len() - 2], order[s.len() - 1]);
                if s[d1] < self.min_dim_size_to_factor {
                    Factoring::Full
                } else {
                    Factoring::Factored { d0, d1 }
                }
            };
            match kind {
                Factoring::Full => {
                    self.v_row.push(vec![0.0]);
                    self.v_col.push(vec![0.0]);
                    self.v.push(vec![0.0; numel(s)]);
                }
                Factoring::Factored { d0, d1 } => {
                    self.v_row.push(vec![0.0; numel(s) / s[d0]]);
                    self.v_col.push(vec![0.0; numel(s) / s[d1]]);
                    self.v.push(vec![0.0]);
                }
            }
            self.kinds.push(kind);
        }
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        let decay = self.decay();
        for (i, u) in updates.iter_mut().enumerate() {
            match self.kinds[i].clone() {
                Factoring::Full => {
                    full_moment(&mut self.v[i], u, None, None, decay, self.epsilon);
                }
                Factoring::Factored { d0, d1 } => self.factored(i, u, decay, d0, d1),
            }
        }
        self.count += 1;
        Ok(())
    }
    state!(ScaleByFactoredRms; bufs: [v_row, v_col, v]; counters: [count]; scalars: []);
}

impl ScaleByFactoredRms {
    /// This step's decay `1 − t^(−decay_rate)` (`t` counted from `step_offset`).
    fn decay(&self) -> f32 {
        let t = (self.count as f64 - self.step_offset as f64 + 1.0) as f32;
        1.0 - t.powf(-(self.decay_rate as f32))
    }

    /// A factored tensor's step in place: the row and column means of `u² + eps` update the row
    /// and column moments, and `u` is divided by their rank-one estimate of `√v`.
    fn factored(&mut self, i: usize, u: &mut [f32], decay: f32, d0: usize, d1: usize) {
        let s = &self.shapes[i];
        // Row index of an element: its multi-index without axis d0; column index:
        // without axis d1. A matrix needs no index arithmetic per element.
        // Means of g² + eps over axis d0 (rows) and axis d1 (columns).
        let mut row = vec![0.0f64; self.v_row[i].len()];
        let mut col = vec![0.0f64; self.v_col[i].len()];
        let eps = self.epsilon;
        for_each_row_col(s, d0, d1, |e, r, c| {
            let g = u[e];
            let g2 = (g * g + eps) as f64;
            row[r] += g2;
            col[c] += g2;
        });
        for (v, r) in self.v_row[i].iter_mut().zip(&row) {
            *v = decay * *v + (1.0 - decay) * (*r / s[d0] as f64) as f32;
        }
        for (v, c) in self.v_col[i].iter_mut().zip(&col) {
            *v = decay * *v + (1.0 - decay) * (*c / s[d1] as f64) as f32;
        }
        // Mean of v_row over its axis d1 (d1 shifted when d0 was removed before it).
        let row_shape: Vec<usize> = (0..s.len()).filter(|&k| k != d0).map(|k| s[k]).collect();
        let rd1 = if d1 > d0 { d1 - 1 } else { d1 };
        let mut rmean = vec![0.0f64; self.v_row[i].len() / row_shape[rd1]];
        let mut ridx = vec![0; row_shape.len()];
        for (e, v) in self.v_row[i].iter().enumerate() {
            unravel(e, &row_shape, &mut ridx);
            rmean[ravel_without(&ridx, &row_shape, rd1)] += *v as f64 / row_shape[rd1] as f64;
        }
        // The factors of each row and each column, once.
        let row_factor: Vec<f32> = (0..self.v_row[i].len())
            .map(|r| {
                unravel(r, &row_shape, &mut ridx);
                let rm = rmean[ravel_without(&ridx, &row_shape, rd1)] as f32;
                1.0 / (self.v_row[i][r] / rm).sqrt()
            })
            .collect();
        let col_factor: Vec<f32> = self.v_col[i].iter().map(|v| 1.0 / v.sqrt()).collect();
        for_each_row_col(s, d0, d1, |e, r, c| u[e] = u[e] * row_factor[r] * col_factor[c]);
    }

    /// [`Transform::update`] reading the gradients from `grads` into `updates`; the moment of a
    /// full tensor in one threaded pass, which also gives its `(Σu², Σp²)` (`None` for factored
    /// ones).
    fn update_from(
        &mut self,
        grads: &[&[f32]],
        updates: &mut [Vec<f32>],
        params: &[&[f32]],
    ) -> Vec<Option<(f64, f64)>> {
        let decay = self.decay();
        let mut sums = vec![];
        for (i, (g, u)) in grads.iter().zip(updates.iter_mut()).enumerate() {
            sums.push(match self.kinds[i].clone() {
                Factoring::Full => full_moment(&mut self.v[i], u, Some(g), Some(params[i]), decay, self.epsilon),
                Factoring::Factored { d0, d1 } => {
                    u.copy_from_slice(g);
                    self.factored(i, u, decay, d0, d1);
                    None
                }
            });
        }
        self.count += 1;
        sums
    }
}

/// A full (unfactored) Adafactor moment: `v ← decay·v + (1 − decay)·(g² + eps)`, `u ← g/√v`,
/// split across threads for large tensors; `g: None` reads the gradient from `u` (in place).
/// With the parameters `p`, also returns `(Σu², Σp²)`, summed chunk by chunk while each chunk is
/// in cache: the parts and their order of `global_sum_sq`, so the same bits as the root mean
/// squares taken afterwards.
fn full_moment(
    v: &mut [f32],
    u: &mut [f32],
    g: Option<&[f32]>,
    p: Option<&[f32]>,
    decay: f32,
    eps: f32,
) -> Option<(f64, f64)> {
    #[inline(always)]
    fn kernel(v: &mut [f32], g: Option<&[f32]>, u: &mut [f32], decay: f32, eps: f32) {
        let moment = |v: &mut f32, g: f32| {
            *v = decay * *v + (1.0 - decay) * (g * g + eps);
            g / v.sqrt()
        };
        match g {
            Some(g) => v.iter_mut().zip(g).zip(u.iter_mut()).for_each(|((v, &g), u)| *u = moment(v, g)),
            None => v.iter_mut().zip(u.iter_mut()).for_each(|(v, u)| *u = moment(v, *u)),
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel_avx2(v: &mut [f32], g: Option<&[f32]>, u: &mut [f32], decay: f32, eps: f32) {
        kernel(v, g, u, decay, eps)
    }
    fn chunk(x: &[f32], k: usize) -> &[f32] {
        &x[k * CHUNK..x.len().min((k + 1) * CHUNK)]
    }
    let run = |k: usize, v: &mut [f32], u: &mut [f32]| {
        let g = g.map(|g| chunk(g, k));
        #[cfg(target_arch = "x86_64")]
        if crate::transforms::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { kernel_avx2(v, g, u, decay, eps) };
            return p.map(|p| (sum_sq(u), sum_sq(chunk(p, k))));
        }
        kernel(v, g, u, decay, eps);
        p.map(|p| (sum_sq(u), sum_sq(chunk(p, k))))
    };
    let parts: Vec<Option<(f64, f64)>> = if v.len() >= PARALLEL_MIN {
        v.par_chunks_mut(CHUNK).zip(u.par_chunks_mut(CHUNK)).enumerate().map(|(k, (v, u))| run(k, v, u)).collect()
    } else {
        v.chunks_mut(CHUNK).zip(u.chunks_mut(CHUNK)).enumerate().map(|(k, (v, u))| run(k, v, u)).collect()
    };
    let parts: Vec<(f64, f64)> = parts.into_iter().collect::<Option<_>>()?;
    Some((parts.iter().map(|x| x.0).sum::<f64>(), parts.iter().map(|x| x.1).sum::<f64>()))
}

/// `p ← p + (((u / d)·lr)·s)·flip`, each factor present or not: Adafactor's last pass, with the
/// operations of its links in their order.
#[inline(always)]
fn scaled_add(p: &mut [f32], u: &[f32], [d, lr, s]: [Option<f32>; 3], flip: f32) {
    for (p, &u) in p.iter_mut().zip(u) {
        let mut x = u;
        if let Some(d) = d {
            x /= d;
        }
        if let Some(lr) = lr {
            x *= lr;
        }
        if let Some(s) = s {
            x *= s;
        }
        *p += x * flip;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scaled_add_avx2(p: &mut [f32], u: &[f32], f: [Option<f32>; 3], flip: f32) {
    scaled_add(p, u, f, flip)
}

/// optax `adafactor` without momentum or weight decay (its defaults): `scale_by_factored_rms →
/// clip_by_block_rms → scale_by_learning_rate → scale_by_param_block_rms → scale(−1)`, as one
/// transformation whose step is two passes over an unfactored tensor: the moments, writing the
/// update and summing `u²` and `p²` while each chunk is in cache, then `p ← p − ((u/d)·lr)·s`
/// (a factored tensor takes its row and column sums, and the root mean squares in read passes
/// of their own). `update` runs the links one by one (the reference path), with the same
/// operations in the same order, and the state carries the chain's names.
pub struct Adafactor {
    rms: ScaleByFactoredRms,
    clip: Option<ClipByBlockRms>,
    lr: Option<crate::transforms::ScaleByLearningRate>,
    param_scale: Option<ScaleByParamBlockRms>,
    flip: crate::transforms::Scale,
}

impl Adafactor {
    pub fn new(
        rms: ScaleByFactoredRms,
        clip: Option<ClipByBlockRms>,
        lr: Option<crate::transforms::ScaleByLearningRate>,
        param_scale: Option<ScaleByParamBlockRms>,
    ) -> Self {
        Adafactor { rms, clip, lr, param_scale, flip: crate::transforms::Scale::new(-1.0) }
    }
}

impl Transform for Adafactor {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut crate::transform::LearningRate)) {
        if let Some(l) = &mut self.lr {
            Transform::visit_learning_rates(l, f);
        }
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.rms.init(shapes, params)?;
        if let Some(l) = &mut self.lr {
            l.init(shapes, params)?;
        }
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        self.rms.update(updates, params)?;
        if let Some(c) = &mut self.clip {
            c.update(updates, params)?;
        }
        if let Some(l) = &mut self.lr {
            l.update(updates, params)?;
        }
        if let Some(s) = &mut self.param_scale {
            s.update(updates, params)?;
        }
        self.flip.update(updates, params)
    }
    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        let sums = {
            let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
            self.rms.update_from(grads, updates, &views)
        };
        let lr = self.lr.as_mut().map(|l| {
            l.begin_step();
            l.affine(0).expect("a learning rate is affine").0
        });
        let flip = self.flip.step_size;
        for ((u, p), sum) in updates.iter().zip(params.iter_mut()).zip(sums) {
            // `rms(u)` and `rms(p)`, from the moment pass's sums where it gave them.
            let d = self.clip.as_ref().map(|c| c.divisor(sum.map_or_else(|| rms(u), |s| rms_of(s.0, u.len()))));
            let s = self.param_scale.as_ref().map(|m| m.factor(sum.map_or_else(|| rms(p), |s| rms_of(s.1, p.len()))));
            let body = |p: &mut [f32], u: &[f32]| {
                #[cfg(target_arch = "x86_64")]
                if crate::transforms::has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { scaled_add_avx2(p, u, [d, lr, s], flip) };
                }
                scaled_add(p, u, [d, lr, s], flip)
            };
            crate::transform::for_chunks(p, |off, p| body(p, &u[off..off + p.len()]));
        }
        Ok(())
    }
    /// The chain's names: link 0 the moments, the learning rate at its index among the links.
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.push("0");
        self.rms.visit_state(v)?;
        v.pop();
        if let Some(l) = &mut self.lr {
            v.push(&(1 + self.clip.is_some() as usize).to_string());
            l.visit_state(v)?;
            v.pop();
        }
        Ok(())
    }
}

/// optax `scale_by_novograd` (Ginsburg et al. 2019): a per-tensor second moment of the gradient
/// norm, and momentum over the normalized gradient plus weight decay.
pub struct ScaleByNovograd {
    b1: f32,
    b2: f64,
    eps: f64,
    eps_root: f64,
    weight_decay: f32,
    count: u64,
    mu: Vec<Vec<f32>>,
    nu: Vec<Vec<f32>>,
}
impl ScaleByNovograd {
    pub fn new(b1: f64, b2: f64, eps: f64, eps_root: f64, weight_decay: f64) -> Self {
        ScaleByNovograd {
            b1: b1 as f32,
            b2,
            eps,
            eps_root,
            weight_decay: weight_decay as f32,
            count: 0,
            mu: vec![],
            nu: vec![],
        }
    }
}
impl Transform for ScaleByNovograd {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.mu = zeros(shapes);
        self.nu = shapes.iter().map(|_| vec![0.0]).collect();
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        self.count += 1;
        let first = self.count == 1;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let g2 = sum_sq(u) as f32;
            let nu = &mut self.nu[i][0];
            *nu = if first { g2 } else { (1.0 - self.b2 as f32) * g2 + self.b2 as f32 * *nu };
            let scale = 1.0 / (((*nu as f64 + self.eps_root).sqrt() + self.eps) as f32);
            for ((g, m), &w) in u.iter_mut().zip(self.mu[i].iter_mut()).zip(p.iter()) {
                let add = *g * scale + self.weight_decay * w;
                *m = if first { add } else { self.b1 * *m + add };
                *g = *m;
            }
        }
        Ok(())
    }
    state!(ScaleByNovograd; bufs: [mu, nu]; counters: [count]; scalars: []);
}

/// optax `scale_by_sm3` (Anil et al. 2019): memory-efficient AdaGrad with one accumulator per
/// index of each axis, followed by momentum.
pub struct ScaleBySm3 {
    b1: f32,
    b2: f32,
    eps: f32,
    shapes: Vec<Vec<usize>>,
    /// Per parameter, the accumulators of each axis concatenated.
    mu: Vec<Vec<f32>>,
    nu: Vec<Vec<f32>>,
}
impl ScaleBySm3 {
    pub fn new(b1: f64, b2: f64, eps: f64) -> Self {
        ScaleBySm3 { b1: b1 as f32, b2: b2 as f32, eps: eps as f32, shapes: vec![], mu: vec![], nu: vec![] }
    }
}
impl Transform for ScaleBySm3 {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.shapes = shapes.to_vec();
        // One accumulator per index of each axis; an empty tensor needs none of them (its axes
        // may be long).
        self.mu =
            shapes.iter().map(|s| vec![0.0; if numel(s) == 0 { 1 } else { s.iter().sum::<usize>().max(1) }]).collect();
        self.nu = zeros(shapes);
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        let (c0, c1) = (if self.b2 != 1.0 { 1.0 - self.b2 } else { 1.0 }, self.b2);
        for (i, u) in updates.iter_mut().enumerate() {
            let s = &self.shapes[i];
            let offsets: Vec<usize> = s
                .iter()
                .scan(0, |acc, &d| {
                    let o = *acc;
                    *acc += d;
                    Some(o)
                })
                .collect();
            let mut idx = vec![0; s.len()];
            let mut new_mu = vec![f32::NEG_INFINITY; self.mu[i].len()];
            for (e, g) in u.iter_mut().enumerate() {
                let accum = if s.len() < 2 {
                    c0 * *g * *g + c1 * self.mu[i][e.min(self.mu[i].len() - 1)]
                } else {
                    unravel(e, s, &mut idx);
                    let m = (0..s.len()).map(|k| self.mu[i][offsets[k] + idx[k]]).fold(f32::INFINITY, f32::min);
                    c0 * *g * *g + c1 * m
                };
                if s.len() < 2 {
                    let last = new_mu.len() - 1;
                    new_mu[e.min(last)] = accum;
                } else {
                    for k in 0..s.len() {
                        let slot = &mut new_mu[offsets[k] + idx[k]];
                        *slot = slot.max(accum);
                    }
                }
                let inv = if accum > 0.0 { 1.0 / (accum + self.eps).sqrt() } else { 0.0 };
                let up = *g * inv;
                let nu = &mut self.nu[i][e];
                *nu = (1.0 - self.b1) * up + self.b1 * *nu;
                *g = *nu;
            }
            self.mu[i] = new_mu;
        }
        Ok(())
    }
    state!(ScaleBySm3; bufs: [mu, nu]; counters: []; scalars: []);
}

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
/// `X ← aX + (bA + cA²)X` with `A = XXᵀ`, in the arithmetic `precision` names.
pub fn newton_schulz(
    x: &[f32],
    rows: usize,
    cols: usize,
    coeffs: [f64; 3],
    steps: usize,
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
    let d = match precision {
        NsPrecision::F32 => (sum_sq(&x).sqrt() + eps) as f32,
        NsPrecision::TorchBf16 => r(sum_sq(&x).sqrt() as f32).max(eps as f32),
    };
    x.iter_mut().for_each(|v| *v = r(*v / d));
    let [a, b, c] = coeffs.map(|v| v as f32);
    for _ in 0..steps {
        let xt = transpose(&x, m, n);
        let mut gram = matmul(&x, &xt, m, n, m);
        gram.iter_mut().for_each(|v| *v = r(*v));
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

/// optax `contrib.scale_by_muon`: momentum (`μ ← βμ + (1−β)g`, bias-corrected, Nesterov by
/// default) orthogonalized by Newton–Schulz; for 2-D parameters.
pub struct ScaleByMuon {
    coeffs: [f64; 3],
    steps: usize,
    beta: f32,
    eps: f64,
    nesterov: bool,
    count: u64,
    shapes: Vec<Vec<usize>>,
    mu: Vec<Vec<f32>>,
}
impl ScaleByMuon {
    pub fn new(coeffs: [f64; 3], steps: usize, beta: f64, eps: f64, nesterov: bool) -> Self {
        ScaleByMuon { coeffs, steps, beta: beta as f32, eps, nesterov, count: 0, shapes: vec![], mu: vec![] }
    }
}
impl Transform for ScaleByMuon {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        if let Some(s) = shapes.iter().find(|s| s.len() != 2) {
            return Err(crate::error::invalid(format!("Muon orthogonalizes 2-D parameters only, got shape {s:?}")));
        }
        self.shapes = shapes.to_vec();
        self.mu = zeros(shapes);
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        self.count += 1;
        let b = self.beta as f64;
        let bc = (1.0 - b.powf(self.count as f64)) as f32;
        let bc_next = (1.0 - b.powf(self.count as f64 + 1.0)) as f32;
        let beta = self.beta;
        for (i, u) in updates.iter_mut().enumerate() {
            for (g, m) in u.iter_mut().zip(self.mu[i].iter_mut()) {
                *m = (1.0 - beta) * *g + beta * *m;
                *g = if self.nesterov { beta * (*m / bc_next) + (1.0 - beta) * (*g / bc) } else { *m / bc };
            }
            let s = &self.shapes[i];
            *u = newton_schulz(u, s[0], s[1], self.coeffs, self.steps, self.eps, NsPrecision::F32);
        }
        Ok(())
    }
    state!(ScaleByMuon; bufs: [mu]; counters: [count]; scalars: []);
}

/// optax `contrib.scale_by_shape`: scales a 2-D update by `√max(1, fan_out/fan_in)` (fan_in the
/// first axis), Muon's width transfer.
#[derive(Default)]
pub struct ScaleByShape {
    shapes: Vec<Vec<usize>>,
}
impl Transform for ScaleByShape {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.shapes = shapes.to_vec();
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        for (u, s) in updates.iter_mut().zip(&self.shapes) {
            let fan_in = s.first().map_or(1.0, |&d| d as f64);
            let fan_out = s.iter().skip(1).map(|&d| d as f64).product::<f64>();
            let scale = (fan_out / fan_in).max(1.0).sqrt() as f32;
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
