//! Clipping, normalization and centralization: optax's `clipping.py` (`clip_by_global_norm`,
//! `adaptive_grad_clip`, `clip_by_block_rms`), `normalize_by_update_norm` and `centralize`. Each
//! needs a norm or mean of a whole tensor (or of all of them) before its elementwise part.

use super::{elementwise_transform, rms, stateless};
use crate::error::Result;
use crate::kernel::{global_sum_sq, Elementwise};
use crate::state::StateVisitor;
use crate::transform::{numel, Shapes, Transform};
use crate::transforms::simd_apply;

/// optax `centralize` (Gradient Centralization, Yong et al. 2020): for tensors of rank > 1,
/// subtracts the mean over all axes but the first (pytorch_optimizer's `use_gc` too).
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
        crate::transform::check_against_init(&self.shapes, updates, _params)?;
        for (u, s) in updates.iter_mut().zip(&self.shapes) {
            if s.len() > 1 && !u.is_empty() {
                let row = u.len() / s[0];
                for r in u.chunks_mut(row) {
                    let mean = slice_mean(r, 1.0);
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

/// The mean of a slice's entries each times `scale` (in f32; summed in f64, then f32): gradient
/// centralization's, here and in the fused steps of pytorch_optimizer's optimizers that
/// centralize (Adan after its clipping factor; 1 elsewhere, exact).
pub(crate) fn slice_mean(x: &[f32], scale: f32) -> f32 {
    (x.iter().map(|&v| (v * scale) as f64).sum::<f64>() / x.len() as f64) as f32
}

/// optax `clip_by_global_norm`: if the norm of all updates together exceeds `max_norm`, scales them
/// all by `max_norm / norm` (one norm over every parameter, not one per tensor). Elementwise after a
/// reduction of its input, so at the head of a chain it costs one read of the gradient.
pub struct ClipByGlobalNorm {
    max_norm: f64,
    scale: f32,
}
impl ClipByGlobalNorm {
    /// A `ClipByGlobalNorm` with these hyper-parameters (`max_norm`), as described above.
    pub fn new(max_norm: f64) -> Self {
        ClipByGlobalNorm { max_norm, scale: 1.0 }
    }
}
/// The L2 norm of all buffers together.
pub fn global_norm(bufs: &[Vec<f32>]) -> f64 {
    let views: Vec<&[f32]> = bufs.iter().map(|b| b.as_slice()).collect();
    crate::kernel::global_sum_sq(&views).sqrt()
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
crate::transforms::prefetch_state!(ClipByGlobalNorm; );
impl Elementwise for ClipByGlobalNorm {
    fn begin_step(&mut self) {}
    fn head(&self, _i: usize) -> Option<crate::kernel::Head> {
        Some(crate::kernel::Head::affine(self.scale, 0.0))
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
        let norm = crate::kernel::global_sum_sq(inputs).sqrt();
        // optax's `g_norm < max_norm` test: a NaN norm or bound clips, to NaN, as optax's does.
        self.scale = if norm < self.max_norm { 1.0 } else { (self.max_norm / norm) as f32 };
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

/// The groups of optax's `unitwise_norm(x, axis)` with reduction axes given: elements that differ
/// only along `axes` share a group (the index along the other axes, raveled).
fn axis_groups(shape: &[usize], axes: &[usize]) -> (usize, Box<dyn Fn(usize) -> usize>) {
    // For each axis: its stride in the tensor, and in the group index (0 for a reduced axis).
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let mut group_strides = vec![0usize; shape.len()];
    let mut groups = 1usize;
    for d in (0..shape.len()).rev() {
        if !axes.contains(&d) {
            group_strides[d] = groups;
            groups *= shape[d];
        }
    }
    let shape = shape.to_vec();
    (
        groups.max(1),
        Box::new(move |e| {
            (0..shape.len()).map(|d| (e / strides[d]) % shape[d].max(1) * group_strides[d]).sum::<usize>()
        }),
    )
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
    /// optax's `axis`: the axes each unit's norm is summed over (negative ones from the end);
    /// `None`, the units of optax's default by rank.
    axis: Option<Vec<isize>>,
    shapes: Vec<Vec<usize>>,
}
impl AdaptiveGradClip {
    /// A `AdaptiveGradClip` with these hyper-parameters (`clipping`, `eps`), as described above.
    pub fn new(clipping: f64, eps: f64) -> Self {
        AdaptiveGradClip { clipping, eps, axis: None, shapes: vec![] }
    }
    /// The axes the unit-wise norms sum over (optax's `axis`), for every parameter.
    pub fn with_axis(mut self, axis: Option<Vec<isize>>) -> Self {
        self.axis = axis;
        self
    }
    /// `axis` resolved against a tensor of rank `rank`, as numpy resolves it.
    fn axes_of(&self, rank: usize) -> Result<Option<Vec<usize>>> {
        let Some(axis) = &self.axis else { return Ok(None) };
        let mut out = vec![];
        for &a in axis {
            let d = if a < 0 { a + rank as isize } else { a };
            if d < 0 || d >= rank as isize {
                return Err(crate::error::Error::Invalid(format!(
                    "optax.adaptive_grad_clip: `axis` {a} is out of range for a parameter of rank {rank}"
                )));
            }
            if out.contains(&(d as usize)) {
                return Err(crate::error::Error::Invalid(format!(
                    "optax.adaptive_grad_clip: `axis` names axis {d} twice"
                )));
            }
            out.push(d as usize);
        }
        Ok(Some(out))
    }
}
impl Transform for AdaptiveGradClip {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        for s in shapes.iter() {
            self.axes_of(s.len())?;
        }
        self.shapes = shapes.to_vec();
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        for ((u, p), s) in updates.iter_mut().zip(params).zip(&self.shapes) {
            let (groups, key) = match self.axes_of(s.len())? {
                Some(axes) => axis_groups(s, &axes),
                None => unit_groups(s),
            };
            let gn = unit_norms(u, groups, &*key);
            let pn = unit_norms(p, groups, &*key);
            for (e, x) in u.iter_mut().enumerate() {
                let k = key(e);
                let max_norm = self.clipping * pn[k].max(self.eps);
                // optax's `where(g_norm < max_norm, g, clipped)`: a NaN norm clips.
                let within = gn[k] < max_norm;
                if !within {
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

/// optax `clip_by_block_rms`: divides each tensor by `max(1, rms(u)/threshold)`.
pub struct ClipByBlockRms {
    threshold: f64,
}
impl ClipByBlockRms {
    /// A `ClipByBlockRms` with these hyper-parameters (`threshold`), as described above.
    pub fn new(threshold: f64) -> Self {
        ClipByBlockRms { threshold }
    }
    /// What a tensor whose update has root mean square `rms` is divided by.
    pub(crate) fn divisor(&self, rms: f64) -> f32 {
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

/// optax `normalize_by_update_norm`: `u ← u / ((‖u‖ + eps) / scale_factor)`, the norm taken
/// over all parameters together.
pub struct NormalizeByUpdateNorm {
    scale_factor: f64,
    eps: f64,
    divisor: f32,
}
impl NormalizeByUpdateNorm {
    /// A `NormalizeByUpdateNorm` with these hyper-parameters (`scale_factor`, `eps`), as described above.
    pub fn new(scale_factor: f64, eps: f64) -> Self {
        NormalizeByUpdateNorm { scale_factor, eps, divisor: 1.0 }
    }
}
elementwise_transform!(NormalizeByUpdateNorm, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for NormalizeByUpdateNorm {
    fn begin_step(&mut self) {}
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        let norm = global_sum_sq(inputs).sqrt();
        self.divisor = ((norm + self.eps) / self.scale_factor) as f32;
    }
    simd_apply!(NormalizeByUpdateNorm, |this, i, off, u, p| {
        let d = this.divisor;
        for x in u.iter_mut() {
            *x /= d;
        }
    });
}
