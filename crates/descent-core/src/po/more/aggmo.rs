//! pytorch_optimizer `AggMo` (Lucas et al. 2019, "Aggregated Momentum: Stability Through Passive
//! Damping").

use super::common::{check_betas, check_lr, maximize_and_foreach, PoWeightDecay};
use crate::error::Result;
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};
use crate::transforms::{simd_apply, zeros, ParamBufs};

/// `AggMo`'s arguments, with its defaults.
pub struct AggMoConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// The decays of the momentum buffers (at least two).
    pub betas: Vec<f64>,
    /// Weight decay, L2 or decoupled.
    pub weight_decay: PoWeightDecay,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AggMoConfig {
    fn default() -> Self {
        AggMoConfig {
            lr: LearningRate::Constant(1e-3),
            betas: vec![0.0, 0.9, 0.99],
            weight_decay: PoWeightDecay::NONE,
            maximize: false,
        }
    }
}

impl AggMoConfig {
    /// The class's keyword arguments.
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        Ok(AggMoConfig {
            lr: k.lr("lr", Some(1e-3))?,
            betas: k.f64s("betas")?.unwrap_or_else(|| AggMoConfig::default().betas),
            weight_decay: PoWeightDecay::parse(k, 0.0, false, Some(false))?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// AggMo: one heavy-ball buffer per decay βₖ, `bₖ ← βₖbₖ + g`, and the parameters move by each in
/// turn, `p ← p − (lr/K)·bₖ` for k = 1…K.
///
/// As in the class, the buffers are keyed by their decay: a decay listed twice shares one buffer,
/// which is then updated (and applied) twice a step.
pub struct AggMo {
    lr: LearningRate,
    /// Each listed decay, as an index into `decays`.
    order: Vec<usize>,
    /// The distinct decays, in order of first appearance.
    decays: Vec<f32>,
    decay: PoWeightDecay,
    maximize: bool,
    step: u64,
    buffers: Vec<ParamBufs>,
    /// This step's [factor, l2, −lr/K].
    k: [f32; 3],
}

impl AggMo {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: AggMoConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        check_betas(&c.betas)?;
        let mut decays: Vec<f64> = vec![];
        let order = c
            .betas
            .iter()
            .map(|b| match decays.iter().position(|d| d == b) {
                Some(i) => i,
                None => {
                    decays.push(*b);
                    decays.len() - 1
                }
            })
            .collect();
        Ok(AggMo {
            lr: c.lr,
            order,
            decays: decays.iter().map(|&d| d as f32).collect(),
            decay: c.weight_decay,
            maximize: c.maximize,
            step: 0,
            buffers: vec![],
            k: [0.0; 3],
        })
    }
}

impl Transform for AggMo {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.buffers = self.decays.iter().map(|_| zeros(shapes).into()).collect();
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        for (k, b) in self.buffers.iter_mut().enumerate() {
            b.visit(v, &format!("momentum_buffer{k}"))?;
        }
        v.counter("step", &mut self.step)
    }
}

crate::transforms::prefetch_state!(AggMo; buffers);
impl Elementwise for AggMo {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let (factor, l2) = self.decay.terms(lr, 1.0);
        self.k = [factor, l2, (-lr / self.order.len() as f64) as f32];
    }
    simd_apply!(AggMo, |this, i, off, u, p| {
        let n = u.len();
        let [factor, l2, step_size] = this.k;
        // Read once: the loops write through the state buffers, which the compiler cannot tell
        // apart from `this`.
        let maximize = this.maximize;
        // In pieces of a fused step's sub-block: the weights' accumulator stays in L1, and is
        // not a zeroed block-sized array per call.
        const PIECE: usize = crate::kernel::SUB_BLOCK;
        for start in (0..n).step_by(PIECE) {
            let len = PIECE.min(n - start);
            let (u, p) = (&mut u[start..start + len], &p[start..start + len]);
            let mut w = [0.0f32; PIECE];
            let w = &mut w[..len];
            for j in 0..len {
                let mut g = if maximize { -u[j] } else { u[j] };
                if l2 != 0.0 {
                    g += l2 * p[j];
                }
                u[j] = g;
                w[j] = p[j] * factor;
            }
            for &k in &this.order {
                let beta = this.decays[k];
                let buf = &mut this.buffers[k].slice(i, off + start, len)[..len];
                for j in 0..len {
                    buf[j] = buf[j] * beta + u[j];
                    w[j] += step_size * buf[j];
                }
            }
            for j in 0..len {
                u[j] = w[j] - p[j];
            }
        }
    });
}
