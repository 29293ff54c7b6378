//! GaLore: Adam on gradients projected onto a low-rank subspace of their SVD, the update projected
//! back. Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection"
//! (2024), <https://arxiv.org/abs/2403.03507>. Two libraries' forms:
//!
//! * pytorch_optimizer `GaLore` ([`GaLore`]): AdamW where the 2-D parameters of a group that has
//!   `rank` are projected. With `R = proj(g)` (for `projection_type` `std`: `g·Vᵣᵀ` when
//!   `rows ≥ cols`, else `Uᵣᵀ·g`, from the SVD `g = U·S·Vᵀ` taken at step 1 and every
//!   `update_proj_gap` steps):
//!
//!   ```text
//!   m ← m + (1 − β1)·(R − m) ;  v ← β2·v + (1 − β2)·R²
//!   p ← p − lr·√(1 − β2^t)/(1 − β1^t) · scale·back(m / (√v + ε)) ;  p ← p·(1 − lr·wd)
//!   ```
//!
//! * optax `contrib.galore` ([`ScaleByGalore`] chained with decoupled weight decay and the learning
//!   rate): a base transformation (`scale_by_adam` by default) on `Uᵣᵀ·g` (`rows ≥ cols`) or
//!   `g·Vᵣ`, the projector recomputed when `count % update_proj_gap == 0`, the update
//!   `scale·Uᵣ·u` or `scale·u·Vᵣᵀ`.

use serde_json::{Map, Value};

use super::linalg::{svd, try_zeros, Mat64};
use super::{check_betas, check_lr, lr_of};
use crate::error::{ensure, Error, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{check_init, numel, Shapes, Transform};

/// How pytorch_optimizer's `GaLoreProjector` projects (`projection_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionType {
    /// Right singular vectors when `rows ≥ cols`, else left ones.
    Std,
    /// Left singular vectors when `rows ≥ cols`, else right ones.
    ReverseStd,
    /// Right singular vectors: `g·Vᵣᵀ`.
    Right,
    /// Left singular vectors: `Uᵣᵀ·g`.
    Left,
    /// Both: `Uᵣᵀ·g·Vᵣᵀ`.
    Full,
    /// As `Std` (the library's optimizer takes the SVD here too).
    Random,
}

impl ProjectionType {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "std" => ProjectionType::Std,
            "reverse_std" => ProjectionType::ReverseStd,
            "right" => ProjectionType::Right,
            "left" => ProjectionType::Left,
            "full" => ProjectionType::Full,
            "random" => ProjectionType::Random,
            other => {
                return Err(Error::Unknown {
                    kind: "GaLore projection_type",
                    name: other.into(),
                    accepted: "std, reverse_std, right, left, full, random".into(),
                })
            }
        })
    }
}

/// The side a projection takes for a `rows × cols` gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// `g·B` with `B = Vᵣᵀ` (`r × cols`): low-rank `rows × r`.
    Right,
    /// `Aᵀ·g` with `A = Uᵣ` (`rows × r`): low-rank `r × cols`.
    Left,
    /// `Aᵀ·g·Bᵀ`: low-rank `r × r`.
    Full,
}

/// GaLore's projection settings of a group (`rank` and the keys that go with it).
#[derive(Clone, Copy, Debug)]
pub struct Projection {
    /// Singular vectors kept (`None`: all of them).
    pub rank: Option<usize>,
    /// Recompute the projection when the step is a multiple of it (at least 1).
    pub update_proj_gap: u64,
    /// Multiplies the projected-back update.
    pub scale: f64,
    /// Which side(s) of the gradient are projected (`std`, `reverse_std`, `right`, `left`, `full`, `random`).
    pub projection_type: ProjectionType,
}

impl Projection {
    fn side(&self, rows: usize, cols: usize) -> Side {
        let tall = rows >= cols;
        match self.projection_type {
            ProjectionType::Std | ProjectionType::Random => {
                if tall {
                    Side::Right
                } else {
                    Side::Left
                }
            }
            ProjectionType::ReverseStd => {
                if tall {
                    Side::Left
                } else {
                    Side::Right
                }
            }
            ProjectionType::Right => Side::Right,
            ProjectionType::Left => Side::Left,
            ProjectionType::Full => Side::Full,
        }
    }
}

/// pytorch_optimizer `GaLore`'s arguments, with the library's defaults.
#[derive(Clone, Copy, Debug)]
pub struct GaLoreConfig {
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Decoupled weight decay (`p ← p·(1 − lr·wd)` after the step).
    pub weight_decay: f64,
    /// Added to `√v`.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
    /// Projection of the group's 2-D parameters (`None`: a group without `rank`).
    pub projection: Option<Projection>,
}

impl Default for GaLoreConfig {
    fn default() -> Self {
        GaLoreConfig { betas: (0.9, 0.999), weight_decay: 0.0, eps: 1e-6, maximize: false, projection: None }
    }
}

/// The projector of one parameter: `a` (`rows × r`, left vectors) and/or `b` (`r × cols`, right
/// vectors, as rows), stored in `f32` as the library keeps them.
#[derive(Default)]
struct Projector {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    /// The step whose gradient gave the projector (0: none yet).
    last_svd_step: u64,
}

/// pytorch_optimizer `GaLore` (one parameter group).
pub struct GaLore {
    lr: LearningRate,
    cfg: GaLoreConfig,
    step: u64,
    shapes: Vec<Vec<usize>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    projectors: Vec<Projector>,
}

impl GaLore {
    /// A `GaLore` with these hyper-parameters (`lr`, `cfg`), as described above.
    pub fn new(lr: LearningRate, cfg: GaLoreConfig) -> Result<Self> {
        check_lr(&lr)?;
        check_betas(cfg.betas)?;
        ensure(cfg.weight_decay >= 0.0, || "weight_decay must be non-negative".into())?;
        ensure(cfg.eps >= 0.0, || "eps must be non-negative".into())?;
        if let Some(p) = cfg.projection {
            ensure(p.update_proj_gap >= 1, || "update_proj_gap must be at least 1".into())?;
        }
        Ok(GaLore { lr, cfg, step: 0, shapes: vec![], exp_avg: vec![], exp_avg_sq: vec![], projectors: vec![] })
    }

    /// From the library's keyword arguments (a group's, merged over the constructor's). A
    /// `rank` (even `null`: every singular vector) turns projection on, and then
    /// `update_proj_gap`, `scale` and `projection_type` are required, as the library reads them.
    pub fn from_kwargs(k: &mut Kwargs, has_rank: bool) -> Result<Self> {
        let d = GaLoreConfig::default();
        let lr = k.lr("lr", Some(1e-3))?;
        let betas = k.pair("betas", d.betas)?;
        let weight_decay = k.f64("weight_decay", d.weight_decay)?;
        let eps = k.f64("eps", d.eps)?;
        let maximize = k.bool("maximize", d.maximize)?;
        // Batching (`foreach`) changes how tensors are grouped, not the update.
        let _ = k.opt_bool("foreach")?;
        let rank = k.opt_u64("rank")?;
        let gap = k.opt_u64("update_proj_gap")?;
        let scale = k.opt_f64("scale")?;
        let ptype = k.opt_str("projection_type")?;
        let projection = if has_rank {
            let missing = |key: &str| Error::Field {
                context: format!("po.galore: `{key}`"),
                message: "missing: a group with `rank` needs it".into(),
            };
            Some(Projection {
                rank: rank.map(|r| r as usize),
                update_proj_gap: gap.ok_or_else(|| missing("update_proj_gap"))?,
                scale: scale.ok_or_else(|| missing("scale"))?,
                projection_type: ProjectionType::parse(ptype.ok_or_else(|| missing("projection_type"))?)?,
            })
        } else {
            None
        };
        GaLore::new(lr, GaLoreConfig { betas, weight_decay, eps, maximize, projection })
    }

    fn projected(&self, i: usize) -> bool {
        self.cfg.projection.is_some() && self.shapes[i].len() == 2
    }

    /// Recomputes parameter `i`'s projector from the gradient `g` (`rows × cols`).
    fn refresh(&mut self, i: usize, g: &Mat64) -> Result<()> {
        let proj = self.cfg.projection.expect("a projected parameter");
        let (u, s, vt) = svd(g)?;
        let r = proj.rank.unwrap_or(s.len()).min(s.len());
        let side = proj.side(g.rows, g.cols);
        let pr = &mut self.projectors[i];
        debug_assert_eq!(pr.r, r);
        if side != Side::Right {
            pr.a =
                (0..u.rows).flat_map(|row| (0..r).map(move |c| (row, c))).map(|(row, c)| u.at(row, c) as f32).collect();
        }
        if side != Side::Left {
            pr.b = vt.data[..r * vt.cols].iter().map(|&x| x as f32).collect();
        }
        Ok(())
    }

    /// The low-rank shape of a `rows × cols` gradient.
    fn low_shape(&self, rows: usize, cols: usize, r: usize) -> (usize, usize) {
        match self.cfg.projection.expect("projected").side(rows, cols) {
            Side::Right => (rows, r),
            Side::Left => (r, cols),
            Side::Full => (r, r),
        }
    }
}

/// Builds pytorch_optimizer `GaLore` with optional parameter groups.
pub fn build(hparams: &Value, groups: Option<&Value>) -> Result<Box<dyn Transform>> {
    let one = |h: &Value| -> Result<Box<dyn Transform>> {
        let has_rank = h.as_object().is_some_and(|o| o.contains_key("rank"));
        let mut k = Kwargs::new("po.galore", h)?;
        let tx = GaLore::from_kwargs(&mut k, has_rank)?;
        k.finish()?;
        Ok(Box::new(tx))
    };
    match groups {
        None => one(hparams),
        Some(g) => crate::spec::build_groups("po.galore", hparams, g, |h, _| one(h)),
    }
}

impl Transform for GaLore {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        self.step = 0;
        self.shapes = shapes.to_vec();
        // A projected matrix keeps its moments in the low-rank shape, `r = min(rank, rows, cols)`
        // singular vectors, and its projector.
        let (mut ea, mut es, mut pr) = (vec![], vec![], vec![]);
        for (i, s) in shapes.iter().enumerate() {
            let mut p = Projector::default();
            let n = if self.projected(i) {
                let (rows, cols) = (s[0], s[1]);
                let proj = self.cfg.projection.expect("projected");
                let r = proj.rank.unwrap_or(usize::MAX).min(rows).min(cols);
                let side = proj.side(rows, cols);
                p.r = r;
                if side != Side::Right {
                    p.a = try_zeros(rows * r, "GaLore projector")?;
                }
                if side != Side::Left {
                    p.b = try_zeros(r * cols, "GaLore projector")?;
                }
                let (lr, lc) = self.low_shape(rows, cols, r);
                lr * lc
            } else {
                numel(s)
            };
            ea.push(try_zeros(n, "GaLore")?);
            es.push(try_zeros(n, "GaLore")?);
            pr.push(p);
        }
        self.exp_avg = ea;
        self.exp_avg_sq = es;
        self.projectors = pr;
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = lr_of(&self.lr, self.step);
        self.step += 1;
        let c = self.cfg;
        let t = self.step as f64;
        let (b1, b2) = c.betas;
        let step_size = (lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t))) as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        for i in 0..updates.len() {
            if updates[i].is_empty() {
                continue;
            }
            if c.maximize {
                updates[i].iter_mut().for_each(|g| *g = -*g);
            }
            let projected = self.projected(i);
            let (rows, cols) = if projected { (self.shapes[i][0], self.shapes[i][1]) } else { (0, 0) };
            // The gradient in the optimizer's space.
            let low: Vec<f32> = if projected {
                let proj = c.projection.expect("projected");
                let g = Mat64::from_f32(rows, cols, &updates[i]);
                let pr = &self.projectors[i];
                if pr.last_svd_step == 0 || self.step.is_multiple_of(proj.update_proj_gap) {
                    self.refresh(i, &g)?;
                    self.projectors[i].last_svd_step = self.step;
                }
                let pr = &self.projectors[i];
                let a = || Mat64::from_f32(rows, pr.r, &pr.a);
                let b = || Mat64::from_f32(pr.r, cols, &pr.b);
                let r = match proj.side(rows, cols) {
                    Side::Right => g.mmt(&b()),
                    Side::Left => a().tmm(&g),
                    Side::Full => a().tmm(&g).mmt(&b()),
                };
                r.to_f32()
            } else {
                updates[i].clone()
            };
            let (w1, b2f, w2, eps) = ((1.0 - b1) as f32, b2 as f32, (1.0 - b2) as f32, c.eps as f32);
            let norm: Vec<f32> = low
                .iter()
                .zip(self.exp_avg[i].iter_mut().zip(self.exp_avg_sq[i].iter_mut()))
                .map(|(&g, (m, v))| {
                    *m = super::linalg::lerp(*m, g, w1);
                    *v = *v * b2f + w2 * g * g;
                    *m / (v.sqrt() + eps)
                })
                .collect();
            let dir: Vec<f32> = if projected {
                let proj = c.projection.expect("projected");
                let pr = &self.projectors[i];
                let (lr_rows, lr_cols) = self.low_shape(rows, cols, pr.r);
                let n = Mat64::from_f32(lr_rows, lr_cols, &norm);
                let a = || Mat64::from_f32(rows, pr.r, &pr.a);
                let b = || Mat64::from_f32(pr.r, cols, &pr.b);
                let full = match proj.side(rows, cols) {
                    Side::Right => n.mm(&b()),
                    Side::Left => a().mm(&n),
                    Side::Full => a().mm(&n).mm(&b()),
                };
                full.to_f32().iter().map(|&x| x * proj.scale as f32).collect()
            } else {
                norm
            };
            let (u, p) = (&mut updates[i], params[i]);
            for ((out, &p), d) in u.iter_mut().zip(p).zip(&dir) {
                let mut q = p + -step_size * d;
                if c.weight_decay != 0.0 {
                    q *= decay;
                }
                *out = q - p;
            }
        }
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "exp_avg", &mut self.exp_avg)?;
        crate::state::visit_buffers(v, "exp_avg_sq", &mut self.exp_avg_sq)?;
        for (i, pr) in self.projectors.iter_mut().enumerate() {
            v.buffer(&format!("ortho_a.{i}"), &mut pr.a)?;
            v.buffer(&format!("ortho_b.{i}"), &mut pr.b)?;
            v.counter(&format!("last_svd_step.{i}"), &mut pr.last_svd_step)?;
        }
        v.counter("step", &mut self.step)
    }
}

// ---------------------------------------------------------------------------------------------
// optax contrib.galore

/// Which axes of a tensor form the rows and the columns of the matrix optax's GaLore projects
/// (`GaLoreDimensionNumbers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DimensionNumbers {
    /// The axes the projection reduces (optax `weight_dimension_numbers`).
    pub reduction_axes: Vec<usize>,
    /// The axes the projection keeps.
    pub output_axes: Vec<usize>,
}

impl DimensionNumbers {
    /// `(reduction_axis=0, output_axis=1)`.
    pub fn standard() -> Self {
        DimensionNumbers { reduction_axes: vec![0], output_axes: vec![1] }
    }

    /// From `{"reduction_axis": int | [ints], "output_axis": int | [ints]}` (negative axes count
    /// from the end), for a tensor of `ndim` dimensions: disjoint and covering every axis.
    fn parse(v: &Value, ndim: usize, ctx: &str) -> Result<Self> {
        let err = |m: String| Error::Field { context: ctx.to_string(), message: m };
        let o = v
            .as_object()
            .ok_or_else(|| err(format!("expected {{\"reduction_axis\": …, \"output_axis\": …}} or null, got {v}")))?;
        if let Some(k) = o.keys().find(|k| *k != "reduction_axis" && *k != "output_axis") {
            return Err(err(format!("unknown key `{k}`; accepted: reduction_axis, output_axis")));
        }
        let axes = |key: &str, default: i64| -> Result<Vec<usize>> {
            let list: Vec<i64> = match o.get(key) {
                None => vec![default],
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_i64().ok_or_else(|| err(format!("`{key}`: expected integers, got {x}"))))
                    .collect::<Result<_>>()?,
                Some(x) => {
                    vec![x.as_i64().ok_or_else(|| err(format!("`{key}`: expected an integer or a list, got {x}")))?]
                }
            };
            list.iter()
                .map(|&a| {
                    let n = ndim as i64;
                    if a >= n || a < -n {
                        Err(err(format!("`{key}`: axis {a} is out of range for {ndim} dimensions")))
                    } else {
                        Ok(a.rem_euclid(n) as usize)
                    }
                })
                .collect()
        };
        let d = DimensionNumbers { reduction_axes: axes("reduction_axis", 0)?, output_axes: axes("output_axis", 1)? };
        if d.reduction_axes.iter().any(|a| d.output_axes.contains(a)) {
            return Err(err(format!(
                "Reduction axes {:?} and output axes {:?} must be disjoint",
                d.reduction_axes, d.output_axes
            )));
        }
        let mut all: Vec<usize> = d.reduction_axes.iter().chain(&d.output_axes).copied().collect();
        all.sort_unstable();
        all.dedup();
        if all.len() != ndim {
            return Err(err(format!(
                "All axes must be specified. Got reduction={:?}, output={:?} for tensor with {ndim} dimensions",
                d.reduction_axes, d.output_axes
            )));
        }
        Ok(d)
    }
}

/// A tensor seen as the matrix GaLore projects: the axes in `perm` order (reduction axes, then
/// output axes), `rows × cols`.
#[derive(Clone, Debug)]
struct MatrixView {
    shape: Vec<usize>,
    perm: Vec<usize>,
    rows: usize,
    cols: usize,
}

impl MatrixView {
    fn new(shape: &[usize], d: &DimensionNumbers) -> Self {
        let perm: Vec<usize> = d.reduction_axes.iter().chain(&d.output_axes).copied().collect();
        let rows = d.reduction_axes.iter().map(|&a| shape[a]).product();
        let cols = d.output_axes.iter().map(|&a| shape[a]).product();
        MatrixView { shape: shape.to_vec(), perm, rows, cols }
    }

    /// Strides of the original tensor, row-major.
    fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for k in (0..self.shape.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * self.shape[k + 1];
        }
        s
    }

    /// For each element of the matrix (row-major), its index in the original tensor.
    fn gather_index(&self) -> Vec<usize> {
        let strides = self.strides();
        let pshape: Vec<usize> = self.perm.iter().map(|&a| self.shape[a]).collect();
        let n: usize = pshape.iter().product();
        let mut idx = vec![0usize; pshape.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(idx.iter().zip(&self.perm).map(|(&i, &a)| i * strides[a]).sum());
            for k in (0..idx.len()).rev() {
                idx[k] += 1;
                if idx[k] < pshape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        out
    }

    fn to_matrix(&self, x: &[f32]) -> Mat64 {
        let data = self.gather_index().iter().map(|&j| x[j] as f64).collect();
        Mat64 { rows: self.rows, cols: self.cols, data }
    }

    fn write_matrix(&self, m: &Mat64, out: &mut [f32], scale: f64) {
        for (k, j) in self.gather_index().into_iter().enumerate() {
            out[j] = (scale * m.data[k]) as f32;
        }
    }
}

/// One parameter's projection in optax's GaLore: `left` (`rows ≥ cols`: `Uᵣ`, `rows × r`) or
/// right (`Vᵣ`, `cols × r`).
struct OptaxProjection {
    view: MatrixView,
    left: bool,
    rank: usize,
}

/// The hyper-parameters of [`ScaleByGalore`], with optax `contrib.scale_by_galore`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByGaloreConfig {
    /// Rank of the projection.
    pub rank: usize,
    /// Steps between two recomputations of the projection.
    pub update_proj_gap: u64,
    /// Factor of the update projected back.
    pub scale: f64,
}

impl Default for ScaleByGaloreConfig {
    fn default() -> Self {
        ScaleByGaloreConfig { rank: 128, update_proj_gap: 200, scale: 1.0 }
    }
}

/// optax `contrib.scale_by_galore`: the base transformation on low-rank projections of the
/// matrices (2-D parameters, or the axes `weight_dimension_numbers` names), on the other
/// parameters as they are.
pub struct ScaleByGalore {
    rank: usize,
    update_proj_gap: u64,
    scale: f64,
    base: Box<dyn Transform>,
    /// Per parameter: its dimension numbers (`None`: not projected), given or by default.
    dims: Vec<Option<DimensionNumbers>>,
    projections: Vec<Option<OptaxProjection>>,
    count: u64,
    projectors: Vec<Vec<f32>>,
}

impl ScaleByGalore {
    /// `rank` singular vectors, recomputed every `update_proj_gap` steps; `base` built for the
    /// low-rank shapes by the caller through [`ScaleByGalore::proxy_shapes`].
    pub fn proxy_shapes(shapes: &[Vec<usize>], dims: &[Option<DimensionNumbers>], rank: usize) -> Vec<Vec<usize>> {
        shapes
            .iter()
            .zip(dims)
            .map(|(s, d)| match d {
                None => s.clone(),
                Some(d) => {
                    let v = MatrixView::new(s, d);
                    let r = rank.min(v.rows).min(v.cols);
                    if v.rows >= v.cols {
                        vec![r, v.cols]
                    } else {
                        vec![v.rows, r]
                    }
                }
            })
            .collect()
    }

    /// The dimension numbers of each parameter from `weight_dimension_numbers` (`None`: the
    /// 2-D parameters with the standard axes; one object: every parameter of at least 2
    /// dimensions; a list: one entry per parameter, `null` for those not projected).
    pub fn dimension_numbers(v: Option<&Value>, shapes: &[Vec<usize>]) -> Result<Vec<Option<DimensionNumbers>>> {
        let ctx = "optax.contrib.galore: `weight_dimension_numbers`";
        match v {
            None => Ok(shapes.iter().map(|s| (s.len() == 2).then(DimensionNumbers::standard)).collect()),
            Some(Value::Array(a)) => {
                if a.len() != shapes.len() {
                    return Err(Error::Field {
                        context: ctx.into(),
                        message: format!("has {} entries for {} parameters", a.len(), shapes.len()),
                    });
                }
                a.iter()
                    .zip(shapes)
                    .map(|(x, s)| match x {
                        Value::Null => Ok(None),
                        x => {
                            if s.len() < 2 {
                                return Err(Error::Field {
                                    context: ctx.into(),
                                    message: format!("GaLore requires tensors with rank >= 2, got shape {s:?}"),
                                });
                            }
                            DimensionNumbers::parse(x, s.len(), ctx).map(Some)
                        }
                    })
                    .collect()
            }
            Some(x) => shapes
                .iter()
                .map(|s| if s.len() >= 2 { DimensionNumbers::parse(x, s.len(), ctx).map(Some) } else { Ok(None) })
                .collect(),
        }
    }

    /// A `ScaleByGalore` running `base` on the projections, with the projected axes of each
    /// parameter in `dims` (`None`: kept whole) and the hyper-parameters of `config`.
    pub fn new(
        base: Box<dyn Transform>,
        dims: Vec<Option<DimensionNumbers>>,
        config: ScaleByGaloreConfig,
    ) -> Result<Self> {
        let ScaleByGaloreConfig { rank, update_proj_gap, scale } = config;
        ensure(rank > 0, || format!("`rank` must be positive, got {rank}"))?;
        ensure(update_proj_gap > 0, || "`update_proj_gap` must be positive".into())?;
        Ok(ScaleByGalore {
            rank,
            update_proj_gap,
            scale,
            base,
            dims,
            projections: vec![],
            count: 0,
            projectors: vec![],
        })
    }
}

impl Transform for ScaleByGalore {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.base.visit_learning_rates(f);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        self.count = 0;
        if self.dims.len() != shapes.len() {
            return Err(Error::Shape(format!(
                "GaLore was built for {} parameters, got {}",
                self.dims.len(),
                shapes.len()
            )));
        }
        self.projections = shapes
            .iter()
            .zip(&self.dims)
            .map(|(s, d)| {
                d.as_ref().map(|d| {
                    let view = MatrixView::new(s, d);
                    let rank = self.rank.min(view.rows).min(view.cols);
                    OptaxProjection { left: view.rows >= view.cols, view, rank }
                })
            })
            .collect();
        self.projectors = self
            .projections
            .iter()
            .map(|p| match p {
                None => vec![],
                Some(p) => vec![0.0; if p.left { p.view.rows } else { p.view.cols } * p.rank],
            })
            .collect();
        let proxies = ScaleByGalore::proxy_shapes(shapes, &self.dims, self.rank);
        let zeros: Vec<Vec<f32>> = proxies.iter().map(|s| vec![0.0; numel(s)]).collect();
        let views: Vec<&[f32]> = zeros.iter().map(|z| z.as_slice()).collect();
        self.base.init(&proxies, &views)
    }

    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        let refresh = self.count.is_multiple_of(self.update_proj_gap);
        let mut low: Vec<Vec<f32>> = Vec::with_capacity(updates.len());
        for (i, u) in updates.iter().enumerate() {
            let Some(pj) = self.projections[i].as_ref().filter(|_| !u.is_empty()) else {
                // Not projected, or no elements (nothing to decompose).
                low.push(u.clone());
                continue;
            };
            let g = pj.view.to_matrix(u);
            let (m, n, r) = (pj.view.rows, pj.view.cols, pj.rank);
            if refresh {
                let (uu, _, vt) = svd(&g)?;
                self.projectors[i] = if pj.left {
                    (0..m).flat_map(|row| (0..r).map(move |c| (row, c))).map(|(row, c)| uu.at(row, c) as f32).collect()
                } else {
                    // Vᵣ = (Vᵀ)[:r]ᵀ, cols × r.
                    (0..n).flat_map(|row| (0..r).map(move |c| (row, c))).map(|(row, c)| vt.at(c, row) as f32).collect()
                };
            }
            let p = if pj.left {
                Mat64::from_f32(m, r, &self.projectors[i])
            } else {
                Mat64::from_f32(n, r, &self.projectors[i])
            };
            let lr = if pj.left { p.tmm(&g) } else { g.mm(&p) };
            low.push(lr.to_f32());
        }
        let zeros: Vec<Vec<f32>> = low.iter().map(|l| vec![0.0; l.len()]).collect();
        let views: Vec<&[f32]> = zeros.iter().map(|z| z.as_slice()).collect();
        self.base.update(&mut low, &views)?;
        for (i, (u, l)) in updates.iter_mut().zip(low).enumerate() {
            let Some(pj) = self.projections[i].as_ref().filter(|_| !u.is_empty()) else {
                *u = l;
                continue;
            };
            let (m, n, r) = (pj.view.rows, pj.view.cols, pj.rank);
            let full = if pj.left {
                Mat64::from_f32(m, r, &self.projectors[i]).mm(&Mat64::from_f32(r, n, &l))
            } else {
                Mat64::from_f32(m, r, &l).mmt(&Mat64::from_f32(n, r, &self.projectors[i]))
            };
            pj.view.write_matrix(&full, u, self.scale);
        }
        self.count += 1;
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("count", &mut self.count)?;
        crate::state::visit_buffers(v, "projector", &mut self.projectors)?;
        v.push("base");
        let r = self.base.visit_state(v);
        v.pop();
        r
    }
}

/// optax `contrib.scale_by_galore` from `galore`'s keyword arguments (`rank`, `update_proj_gap`,
/// `scale`, `base_optimizer`, `weight_dimension_numbers`), for parameters of `shapes`.
pub fn optax_scale_by_galore(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let rank = k.u64("rank", 128)? as usize;
    let gap = k.u64("update_proj_gap", 200)?;
    let scale = k.f64("scale", 1.0)?;
    let dims = ScaleByGalore::dimension_numbers(k.value("weight_dimension_numbers"), shapes)?;
    let proxies = ScaleByGalore::proxy_shapes(shapes, &dims, rank.max(1));
    let base = match k.value("base_optimizer") {
        None => crate::spec::build_optimizer("optax", "scale_by_adam", &Value::Object(Map::new()), None, &proxies)?,
        Some(v) => {
            let (name, kw) = match v {
                Value::String(s) => (s.clone(), Value::Null),
                Value::Array(a) if (1..=2).contains(&a.len()) && a[0].is_string() => {
                    (a[0].as_str().unwrap_or_default().to_string(), a.get(1).cloned().unwrap_or(Value::Null))
                }
                other => {
                    return Err(Error::Field {
                        context: "optax.contrib.galore: `base_optimizer`".into(),
                        message: format!("expected [name, {{kwargs}}], got {other}"),
                    })
                }
            };
            crate::spec::build_optimizer("optax", &name, &kw, None, &proxies)?
        }
    };
    Ok(Box::new(ScaleByGalore::new(base, dims, ScaleByGaloreConfig { rank, update_proj_gap: gap, scale })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dimension_numbers_follow_optax() {
        let shapes = vec![vec![4, 3], vec![5], vec![2, 3, 4]];
        let d = ScaleByGalore::dimension_numbers(None, &shapes).unwrap();
        assert_eq!(d, vec![Some(DimensionNumbers::standard()), None, None]);
        let one = json!({"reduction_axis": 0, "output_axis": [1, -1]});
        let d = ScaleByGalore::dimension_numbers(Some(&one), &shapes[2..]).unwrap();
        assert_eq!(d[0], Some(DimensionNumbers { reduction_axes: vec![0], output_axes: vec![1, 2] }));
        // Not every axis named, or an axis twice: errors.
        assert!(ScaleByGalore::dimension_numbers(Some(&json!({"reduction_axis": 0})), &shapes[2..]).is_err());
        assert!(ScaleByGalore::dimension_numbers(Some(&json!({"reduction_axis": 1, "output_axis": 1})), &shapes[..1])
            .is_err());
        // 2 × 12: wider than tall, projected on the right to 2 × r.
        assert_eq!(ScaleByGalore::proxy_shapes(&shapes[2..], &d, 1), vec![vec![2, 1]]);
    }

    #[test]
    fn a_matrix_view_gathers_the_permuted_axes() {
        // (2, 3, 2) with rows = axis 1, cols = axes (0, 2).
        let v = MatrixView::new(&[2, 3, 2], &DimensionNumbers { reduction_axes: vec![1], output_axes: vec![0, 2] });
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let m = v.to_matrix(&x);
        assert_eq!((m.rows, m.cols), (3, 4));
        // Row b, column (a, c) is x[a, b, c].
        assert_eq!(m.at(1, 3), x[6 + 2 + 1] as f64);
        let mut back = vec![0.0; 12];
        v.write_matrix(&m, &mut back, 1.0);
        assert_eq!(back, x);
    }
}
