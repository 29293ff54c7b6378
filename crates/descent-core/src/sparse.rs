//! Sparse gradients: a gradient that holds only some rows (slices along the first axis) of its
//! parameter, as torch's sparse gradients of an embedding table do, and `torch.optim.SparseAdam`,
//! which updates only the rows present.
//!
//! A sparse gradient travels as the dense buffer plus a [`SparseRows`] presence mask: the values
//! of the absent rows are never read. An optimizer takes it through
//! [`crate::Optimizer::step_sparse`]; those that do not support sparse gradients refuse it, as
//! torch's dense optimizers refuse a sparse gradient.

use crate::error::{ensure, Error, Result};
use crate::kernel::{Elementwise, BLOCK};
use crate::transform::{numel, Shapes, Transform};

use crate::learning_rate::LearningRate;
use crate::transforms::{bias_correction, simd_apply, state, zeros, ParamBufs};

/// The number of rows of a parameter and the elements in each: a scalar is one row of one
/// element; a parameter with no elements has no rows (however long its first axis).
pub fn row_layout(shape: &[usize]) -> (usize, usize) {
    let n = numel(shape);
    match shape.first() {
        _ if n == 0 => (0, 0),
        None => (1, 1),
        Some(&rows) => (rows, n / rows),
    }
}

/// Which rows of each parameter a sparse gradient holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseRows {
    present: Vec<Vec<bool>>,
}

impl SparseRows {
    /// One presence flag per row of each parameter (see [`row_layout`]), checked against the
    /// shapes.
    pub fn new(shapes: &Shapes, present: Vec<Vec<bool>>) -> Result<Self> {
        let rows = SparseRows { present };
        rows.check(shapes)?;
        Ok(rows)
    }

    /// The rows of dense gradients that are not entirely zero: what a row-sparse gradient
    /// (torch's `to_sparse(1)` of the dense one, an embedding's gradient) holds. A row holding a
    /// NaN is present.
    pub fn nonzero_rows(shapes: &Shapes, grads: &[&[f32]]) -> Result<Self> {
        if grads.len() != shapes.len() {
            return Err(Error::Shape(format!("expected {} gradient tensors, got {}", shapes.len(), grads.len())));
        }
        let mut present = Vec::with_capacity(shapes.len());
        for (i, (s, g)) in shapes.iter().zip(grads).enumerate() {
            let (rows, len) = row_layout(s);
            if g.len() != rows * len {
                return Err(Error::Shape(format!(
                    "gradient {i} has {} elements, expected {} (shape {s:?})",
                    g.len(),
                    rows * len
                )));
            }
            present.push(if len == 0 { vec![] } else { g.chunks(len).map(|r| r.iter().any(|&x| x != 0.0)).collect() });
        }
        Ok(SparseRows { present })
    }

    /// Every row of every parameter present: a dense gradient.
    pub fn all(shapes: &Shapes) -> Self {
        SparseRows { present: shapes.iter().map(|s| vec![true; row_layout(s).0]).collect() }
    }

    /// The presence flags of parameter `i`'s rows.
    pub fn rows(&self, i: usize) -> &[bool] {
        &self.present[i]
    }

    /// The masks of the parameters `idx`, in that order (a parameter group's).
    pub fn select(&self, idx: &[usize]) -> SparseRows {
        SparseRows { present: idx.iter().map(|&i| self.present[i].clone()).collect() }
    }

    /// One flag per row of each of these parameters.
    pub fn check(&self, shapes: &Shapes) -> Result<()> {
        if self.present.len() != shapes.len() {
            return Err(Error::Shape(format!(
                "sparse gradient rows given for {} tensors, there are {}",
                self.present.len(),
                shapes.len()
            )));
        }
        for (i, (s, p)) in shapes.iter().zip(&self.present).enumerate() {
            let rows = row_layout(s).0;
            if p.len() != rows {
                return Err(Error::Shape(format!(
                    "sparse gradient {i} flags {} rows, shape {s:?} has {rows}",
                    p.len()
                )));
            }
        }
        Ok(())
    }

    /// The element ranges of parameter `i` covered by its present rows, consecutive rows merged.
    pub fn ranges(&self, i: usize, shape: &[usize]) -> Vec<std::ops::Range<usize>> {
        let (_, len) = row_layout(shape);
        let mut out: Vec<std::ops::Range<usize>> = vec![];
        for (r, _) in self.present[i].iter().enumerate().filter(|(_, &on)| on) {
            let (start, end) = (r * len, (r + 1) * len);
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
        out
    }
}

/// `torch.optim.SparseAdam`: Adam on the rows a sparse gradient holds. Absent rows keep their
/// parameter and both moments; every step counts in the bias corrections, and ε is added to
/// `√v`, not to the bias-corrected root. A dense gradient is a sparse one with every row present.
pub struct SparseAdam {
    lr: LearningRate,
    betas: (f64, f64),
    /// `(1 − β1, 1 − β2)`, rounded from the `f64` differences as torch's scalars are.
    one_minus: (f32, f32),
    eps: f32,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    shapes: Vec<Vec<usize>>,
    step_size: f32,
}

/// `torch.optim.SparseAdam`'s arguments, with its defaults.
pub struct SparseAdamConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for SparseAdamConfig {
    fn default() -> Self {
        SparseAdamConfig { lr: LearningRate::Constant(1e-3), betas: (0.9, 0.999), eps: 1e-8, maximize: false }
    }
}

impl SparseAdam {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: SparseAdamConfig) -> Result<Self> {
        let SparseAdamConfig { lr, betas, eps, maximize } = config;
        if let Some(x) = lr.constant() {
            ensure(x > 0.0, || format!("Invalid learning rate: {x}"))?;
        }
        ensure(eps > 0.0, || format!("Invalid epsilon value: {eps}"))?;
        for (i, b) in [betas.0, betas.1].into_iter().enumerate() {
            ensure((0.0..1.0).contains(&b), || format!("Invalid beta parameter at index {i}: {b}"))?;
        }
        Ok(SparseAdam {
            lr,
            betas,
            one_minus: ((1.0 - betas.0) as f32, (1.0 - betas.1) as f32),
            eps: eps as f32,
            maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            shapes: vec![],
            step_size: 0.0,
        })
    }

    /// The step of elements `off..off+u.len()` of parameter `i`, all present: `u` holds their
    /// gradient and receives the update.
    ///
    /// # Safety
    /// As for [`Elementwise::apply`].
    #[inline(always)]
    unsafe fn rule(&self, i: usize, off: usize, u: &mut [f32]) {
        let n = u.len();
        let m = self.exp_avg.slice(i, off, n);
        let v = self.exp_avg_sq.slice(i, off, n);
        let ((c1, c2), eps, step_size, maximize) = (self.one_minus, self.eps, self.step_size, self.maximize);
        for j in 0..n {
            let g = if maximize { -u[j] } else { u[j] };
            // torch: old += (new − old)·(1 − β), the sum formed again for the numerator.
            let dm = (g - m[j]) * c1;
            let dv = (g * g - v[j]) * c2;
            m[j] += dm;
            v[j] += dv;
            u[j] = -step_size * (m[j] / (v[j].sqrt() + eps));
        }
    }
}

impl Transform for SparseAdam {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.exp_avg = zeros(shapes).into();
        self.exp_avg_sq = zeros(shapes).into();
        self.shapes = shapes.to_vec();
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    fn supports_sparse(&self) -> bool {
        true
    }
    /// The step on the present rows alone: their gradient copied into a block-sized scratch,
    /// transformed, added to the parameters; the absent rows' parameters and moments untouched.
    fn step_sparse(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], rows: &SparseRows) -> Result<()> {
        rows.check(&self.shapes)?;
        self.begin_step();
        let mut scratch = [0.0f32; BLOCK];
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            for range in rows.ranges(i, &self.shapes[i]) {
                let mut off = range.start;
                while off < range.end {
                    let n = (range.end - off).min(BLOCK);
                    let u = &mut scratch[..n];
                    u.copy_from_slice(&g[off..off + n]);
                    // SAFETY: `&mut self` excludes any other access to the moments.
                    unsafe { self.rule(i, off, u) };
                    crate::kernel::add_assign(&mut p[off..off + n], u);
                    off += n;
                }
            }
        }
        Ok(())
    }
    state!(SparseAdam; bufs: [exp_avg, exp_avg_sq]; counters: [step]; scalars: []);
}

crate::transforms::prefetch_state!(SparseAdam; exp_avg, exp_avg_sq);
impl Elementwise for SparseAdam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = self.betas;
        self.step_size = (lr * bias_correction(b2, t).sqrt() / bias_correction(b1, t)) as f32;
    }
    simd_apply!(SparseAdam, |this, i, off, u, p| {
        this.rule(i, off, u);
    });
}
