//! AdaMuon (pytorch_optimizer `AdaMuon`): Muon's orthogonalized momentum with an Adam-like second
//! moment of the orthogonalized update, rescaled to a fixed RMS; AdamW for the groups that do not
//! use Muon. Si et al., "AdaMuon: Adaptive Muon Optimizer" (2025),
//! <https://arxiv.org/abs/2507.11005>.
//!
//! For a parameter of a `use_muon` group (at least 2-D, seen as `rows × rest`), per step `t`:
//!
//! ```text
//! m ← m + (1 − β1)·(g − m)
//! o ← NewtonSchulz(m)                      (bfloat16, as the library)
//! v ← β2·v + (1 − β2)·o²
//! o ← o / (√(v / (1 − β2^t)) + ε)
//! o ← o · √min(rows, rest) / (‖o‖ + ε)
//! p ← p − lr·0.2·√max(rows, rest)·o        (`use_adjusted_lr`; else lr·√max(1, rows/rest))
//! ```
//!
//! Each group is built on its own: the constructor's `lr`, `betas` and `weight_decay` are the
//! Muon groups' defaults, `adamw_lr`, `adamw_betas` and `adamw_wd` the AdamW groups'.

use serde_json::{Map, Value};

use super::linalg::{lerp, newton_schulz_bf16, ns_preset};
use super::{check_betas, check_lr, lr_of};
use crate::error::{ensure, Error, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{check_init, numel, Shapes, Transform};
use crate::transforms::round_bf16;

/// One parameter group of `AdaMuon`, with the group's settings resolved.
#[derive(Clone, Debug)]
pub struct AdaMuonGroupConfig {
    /// Orthogonalized updates (`true`) or AdamW (`false`).
    pub use_muon: bool,
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Weight decay.
    pub weight_decay: f64,
    /// Decoupled (`p ← p·(1 − lr·wd)`) rather than added to the gradient.
    pub weight_decouple: bool,
    /// Added to the denominators.
    pub eps: f64,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Newton–Schulz coefficients per iteration (the last repeats).
    pub ns_coeffs: Vec<[f64; 3]>,
    /// Moonlight's `0.2·√max(rows, rest)` learning-rate scale (else `√max(1, rows/rest)`).
    pub use_adjusted_lr: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

/// One `AdaMuon` parameter group.
pub struct AdaMuonGroup {
    lr: LearningRate,
    cfg: AdaMuonGroupConfig,
    step: u64,
    shapes: Vec<Vec<usize>>,
    first: Vec<Vec<f32>>,
    second: Vec<Vec<f32>>,
}

impl AdaMuonGroup {
    /// A `AdaMuonGroup` with these hyper-parameters (`lr`, `cfg`), as described above.
    pub fn new(lr: LearningRate, cfg: AdaMuonGroupConfig) -> Result<Self> {
        check_lr(&lr)?;
        check_betas(cfg.betas)?;
        ensure(cfg.weight_decay >= 0.0, || "weight_decay must be non-negative".into())?;
        ensure(cfg.eps >= 0.0, || "eps must be non-negative".into())?;
        ensure(cfg.ns_steps > 0, || "ns_steps must be positive".into())?;
        ensure(!cfg.ns_coeffs.is_empty(), || "`weights` schedule must not be empty.".into())?;
        Ok(AdaMuonGroup { lr, cfg, step: 0, shapes: vec![], first: vec![], second: vec![] })
    }
}

/// `ns_coeffs`: a preset name, one `[a, b, c]` or a list of them.
fn ns_coeffs(v: &Value, ctx: &str) -> Result<Vec<[f64; 3]>> {
    let err = |m: String| Error::Field { context: format!("{ctx}: `ns_coeffs`"), message: m };
    let triple = |x: &Value| -> Option<[f64; 3]> {
        let a = x.as_array()?;
        if a.len() != 3 {
            return None;
        }
        let f: Vec<f64> = a.iter().filter_map(|y| y.as_f64()).filter(|y| y.is_finite()).collect();
        (f.len() == 3).then(|| [f[0], f[1], f[2]])
    };
    match v {
        Value::String(s) => ns_preset(s).ok_or_else(|| {
            err(format!("unknown preset `{s}`; valid: original, quintic, polar_express, polar_express_safer"))
        }),
        Value::Array(a) if a.len() == 3 && a.iter().all(|x| x.is_number()) => {
            triple(v).map(|t| vec![t]).ok_or_else(|| err("expected finite numbers".into()))
        }
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| triple(x).ok_or_else(|| err(format!("expected [a, b, c] coefficient triples, got {x}"))))
            .collect(),
        other => Err(err(format!("expected a preset name, [a, b, c] or a list of them, got {other}"))),
    }
}

/// The constructor's arguments that groups inherit.
struct Defaults {
    lr: Value,
    betas: Value,
    weight_decay: Value,
    weight_decouple: Value,
    ns_steps: Value,
    ns_coeffs: Value,
    use_adjusted_lr: Value,
    adamw_lr: Value,
    adamw_betas: Value,
    adamw_wd: Value,
    eps: Value,
    maximize: bool,
}

/// Builds `AdaMuon` for `groups` (required: the library needs `use_muon` in every group).
pub fn build(hparams: &Value, groups: Option<&Value>) -> Result<Box<dyn Transform>> {
    let mut k = Kwargs::new("po.adamuon", hparams)?;
    // Read (and type-check) every constructor argument with its default, as values a group may
    // override.
    let val = |k: &mut Kwargs, key: &'static str, default: Value| -> Result<Value> {
        Ok(k.present(key)?.cloned().unwrap_or(default))
    };
    let d = Defaults {
        lr: val(&mut k, "lr", Value::from(2e-2))?,
        betas: val(&mut k, "betas", serde_json::json!([0.9, 0.95]))?,
        weight_decay: val(&mut k, "weight_decay", Value::from(0.0))?,
        weight_decouple: val(&mut k, "weight_decouple", Value::from(true))?,
        ns_steps: val(&mut k, "ns_steps", Value::from(5))?,
        ns_coeffs: val(&mut k, "ns_coeffs", Value::from("original"))?,
        use_adjusted_lr: val(&mut k, "use_adjusted_lr", Value::from(true))?,
        adamw_lr: val(&mut k, "adamw_lr", Value::from(3e-4))?,
        adamw_betas: val(&mut k, "adamw_betas", serde_json::json!([0.9, 0.999]))?,
        adamw_wd: val(&mut k, "adamw_wd", Value::from(0.0))?,
        eps: val(&mut k, "eps", Value::from(1e-10))?,
        maximize: k.bool("maximize", false)?,
    };
    // Batching (`foreach`) changes how tensors are grouped, not the update.
    let _ = k.opt_bool("foreach")?;
    // A group's key, given for all parameters: the one group of a run without param_groups
    // (descent's `--group`s each build their own), or the default of groups that leave it out.
    let use_muon = k.opt_bool("use_muon")?;
    k.finish()?;
    // The constructor's values are checked as the library checks them, groups or not.
    let check = |muon: bool| -> Result<()> { group(&d, &Map::new(), Some(muon)).map(|_| ()) };
    check(true)?;
    check(false)?;
    let Some(groups) = groups else {
        return match use_muon {
            Some(m) => Ok(Box::new(group(&d, &Map::new(), Some(m))?)),
            None => Err(Error::Field {
                context: "po.adamuon".into(),
                message: "needs `use_muon` for every parameter (`use_muon` must be set.): in param_groups, or \
                          for all of them as an argument (true: Muon, for matrices; false: AdamW)"
                    .into(),
            }),
        };
    };
    crate::spec::build_groups("po.adamuon", &Value::Null, groups, |g, _| {
        let g = g.as_object().cloned().unwrap_or_default();
        let given = g.get("use_muon").is_some();
        Ok(Box::new(group(&d, &g, if given { None } else { use_muon })?) as Box<dyn Transform>)
    })
}

/// One group from its own arguments over the constructor's (`use_muon` forced when checking the
/// constructor alone).
fn group(d: &Defaults, g: &Map<String, Value>, use_muon: Option<bool>) -> Result<AdaMuonGroup> {
    let mut merged = Map::new();
    let use_muon = match use_muon {
        Some(m) => m,
        None => match g.get("use_muon") {
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::Field {
                    context: "po.adamuon: param_groups: `use_muon`".into(),
                    message: format!("expected true or false, got {other}"),
                })
            }
            None => return Err(crate::error::invalid("`use_muon` must be set.")),
        },
    };
    merged.insert("use_muon".into(), Value::Bool(use_muon));
    let (lr, betas, wd) =
        if use_muon { (&d.lr, &d.betas, &d.weight_decay) } else { (&d.adamw_lr, &d.adamw_betas, &d.adamw_wd) };
    for (key, v) in [
        ("lr", lr),
        ("betas", betas),
        ("weight_decay", wd),
        ("weight_decouple", &d.weight_decouple),
        ("eps", &d.eps),
        ("ns_steps", &d.ns_steps),
        ("ns_coeffs", &d.ns_coeffs),
        ("use_adjusted_lr", &d.use_adjusted_lr),
    ] {
        merged.insert(key.into(), v.clone());
    }
    for (key, v) in g {
        merged.insert(key.clone(), v.clone());
    }
    let merged = Value::Object(merged);
    let ctx = if use_muon { "po.adamuon (use_muon group)" } else { "po.adamuon (AdamW group)" };
    let mut k = Kwargs::new(ctx, &merged)?;
    let _ = k.bool("use_muon", use_muon)?;
    let lr = k.lr("lr", None)?;
    let betas = k.pair("betas", (0.9, 0.95))?;
    let weight_decay = k.req_f64("weight_decay")?;
    let weight_decouple = k.bool("weight_decouple", true)?;
    let eps = k.req_f64("eps")?;
    let ns_steps = crate::spec::ns_steps(k.req_u64("ns_steps")?)?;
    let coeffs_value = k.present("ns_coeffs")?.cloned().unwrap_or(Value::from("original"));
    let use_adjusted_lr = k.bool("use_adjusted_lr", true)?;
    let _ = k.opt_bool("foreach")?;
    k.finish()?;
    let cfg = AdaMuonGroupConfig {
        use_muon,
        betas,
        weight_decay,
        weight_decouple,
        eps,
        ns_steps,
        ns_coeffs: ns_coeffs(&coeffs_value, ctx)?,
        use_adjusted_lr,
        maximize: d.maximize,
    };
    AdaMuonGroup::new(lr, cfg)
}

/// `rows` and `rest` of a parameter seen as a matrix (its first axis against the others).
fn matrix_dims(shape: &[usize]) -> (usize, usize) {
    let rows = shape[0];
    (rows, shape[1..].iter().product())
}

impl Transform for AdaMuonGroup {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        self.step = 0;
        if self.cfg.use_muon {
            if let Some((i, s)) = shapes.iter().enumerate().find(|(_, s)| s.len() < 2) {
                return Err(Error::Invalid(format!(
                    "AdaMuon orthogonalizes tensors of at least 2 dimensions (input must be over 2-dimensional); parameter {i} of a use_muon group has shape {s:?}"
                )));
            }
        }
        self.shapes = shapes.to_vec();
        self.first = shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        self.second = shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = lr_of(&self.lr, self.step);
        self.step += 1;
        let c = &self.cfg;
        let (b1, b2) = c.betas;
        let t = self.step as f64;
        let (bc1, bc2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
        let (w1, w2) = ((1.0 - b1) as f32, (1.0 - b2) as f32);
        let eps = c.eps as f32;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            if u.is_empty() {
                continue;
            }
            // Maximization and weight decay on the gradient (coupled) or the parameter.
            let mut q = p.to_vec();
            let decay_factor = (1.0 - c.weight_decay * lr) as f32;
            for (g, q) in u.iter_mut().zip(q.iter_mut()) {
                if c.maximize {
                    *g = -*g;
                }
                if c.weight_decay != 0.0 {
                    if c.weight_decouple {
                        *q *= decay_factor;
                    } else if c.weight_decay > 0.0 {
                        *g += c.weight_decay as f32 * *q;
                    }
                }
            }
            let (m, v) = (&mut self.first[i], &mut self.second[i]);
            if c.use_muon {
                m.iter_mut().zip(u.iter()).for_each(|(m, g)| *m = lerp(*m, *g, w1));
                let (rows, rest) = matrix_dims(&self.shapes[i]);
                let mut o = newton_schulz_bf16(m, rows, rest, &c.ns_coeffs, c.ns_steps, 1e-7);
                let inv_bc2 = bc2 as f32;
                for (o, v) in o.iter_mut().zip(v.iter_mut()) {
                    *v = *v * b2 as f32 + w2 * *o * *o;
                    let den = (*v / inv_bc2).sqrt() + eps;
                    *o = round_bf16(*o / den);
                }
                let norm = round_bf16(o.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32);
                let norm = round_bf16(norm + eps);
                let scale = (rows.min(rest) as f64).sqrt();
                let s = round_bf16((scale / norm as f64) as f32);
                let ratio = if c.use_adjusted_lr {
                    0.2 * (rows.max(rest) as f64).sqrt()
                } else {
                    (rows as f64 / rest as f64).max(1.0).sqrt()
                };
                let alpha = -(lr * ratio) as f32;
                for ((out, q), (o, p)) in u.iter_mut().zip(q.iter_mut()).zip(o.iter().zip(p.iter())) {
                    *q += alpha * round_bf16(o * s);
                    *out = *q - p;
                }
            } else {
                let sq_bc2 = bc2.sqrt() as f32;
                let step = (-lr / bc1) as f32;
                for (((out, q), p), (m, v)) in
                    u.iter_mut().zip(q.iter_mut()).zip(p.iter()).zip(m.iter_mut().zip(v.iter_mut()))
                {
                    let g = *out;
                    *m = lerp(*m, g, w1);
                    *v = lerp(*v, g * g, w2);
                    let den = v.sqrt() / sq_bc2 + eps;
                    *q += step * (*m / den);
                    *out = *q - p;
                }
            }
        }
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        let (a, b) = if self.cfg.use_muon { ("m", "v") } else { ("exp_avg", "exp_avg_sq") };
        crate::state::visit_buffers(v, a, &mut self.first)?;
        crate::state::visit_buffers(v, b, &mut self.second)?;
        v.counter("step", &mut self.step)
    }
}
