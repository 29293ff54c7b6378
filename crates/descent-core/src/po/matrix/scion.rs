//! SCION (pytorch_optimizer `SCION`): momentum steered by a linear minimization oracle (LMO) of a
//! norm chosen per parameter shape. Pethick et al., "Training Deep Learning Models with Norm-
//! Constrained LMOs" (2025), <https://arxiv.org/abs/2502.07529>.
//!
//! Per step, with `g` the gradient:
//!
//! ```text
//! p ← p·(1 − lr·wd)   or   g ← g + wd·p        (not under `constraint`; decoupled or coupled)
//! d ← d + momentum·(g − d)
//! p ← p·(1 − lr)                               (under `constraint` only)
//! p ← p − lr·scale·lmo(d)
//! ```

use serde_json::Value;

use super::linalg::{lerp, newton_schulz_bf16};
use super::{check_lr, lr_of};
use crate::error::{ensure, Error, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{check_init, numel, Shapes, Transform};
use crate::transforms::round_bf16;

/// The oracles of `LMONorm`, with their options (`norm_kwargs`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LmoNorm {
    /// `NONE` (0): the direction itself.
    Identity,
    /// `AUTO` (1): [`LmoNorm::Bias`] for 0-D and 1-D tensors, [`LmoNorm::Spectral`] (defaults) for
    /// matrices, [`LmoNorm::SpectralConv`] (5 steps) for 3-D and 4-D tensors.
    Auto,
    /// `SPECTRAL` (2): Newton–Schulz orthogonalization (bfloat16, `num_steps`), times
    /// `√(d_out/d_in)` (`√d_out` without `normalize`; at least 1 with `max_scale`). Matrices only.
    Spectral {
        /// Scale by the larger of the matrix's dimensions' ratio and 1.
        max_scale: bool,
        /// Normalize by the root of the fan-in.
        normalize: bool,
        /// Newton–Schulz iterations.
        num_steps: usize,
    },
    /// `SPECTRALCONV` (3): the tensor as a `d_out × rest` matrix orthogonalized, times
    /// `√(d_out/d_in) / kernel volume`. At least 2-D.
    SpectralConv {
        /// Newton–Schulz iterations.
        num_steps: usize,
    },
    /// `SIGN` (4): `sign(d)`, divided by `d_in` (the second axis) with `normalize`. At least 2-D.
    Sign {
        /// Divide by the fan-in.
        normalize: bool,
    },
    /// `BIAS` (5): `d / (RMS over the first axis + 1e-8)`.
    Bias,
    /// `COL` (6): each column divided by its RMS (times `d_out` when `normalized`) + 1e-8,
    /// on the transpose with `transpose`. Matrices only.
    Col {
        /// Divide by the root of the fan-in.
        normalized: bool,
        /// Act on the transpose.
        transpose: bool,
    },
    /// `ROW` (7): each row (last axis) divided by its norm (times `√len` when `normalized`) +
    /// 1e-8, on the transpose with `transpose`.
    Row {
        /// Divide by the root of the fan-in.
        normalized: bool,
        /// Act on the transpose.
        transpose: bool,
    },
}

const LMO_EPS: f32 = 1e-8;
const NS_COEFFS: [[f64; 3]; 1] = [[3.4445, -4.7750, 2.0315]];
const NS_EPS: f64 = 1e-7;

impl LmoNorm {
    /// `build_lmo_norm(norm_type, **norm_kwargs)`: the type as its `LMONorm` integer or name.
    pub fn parse(norm_type: &Value, norm_kwargs: Option<&Value>) -> Result<LmoNorm> {
        let names = ["none", "auto", "spectral", "spectralconv", "sign", "bias", "col", "row"];
        let t = match norm_type {
            Value::Number(n) => n.as_u64().map(|x| x as usize),
            Value::String(s) => {
                let s = s.to_ascii_lowercase();
                let s = s.strip_prefix("lmonorm.").unwrap_or(&s).to_string();
                names.iter().position(|n| *n == s)
            }
            _ => None,
        };
        let field = |m: String| Error::Field { context: "po.scion: `norm_type`".into(), message: m };
        let t = t.ok_or_else(|| {
            field(format!("expected an LMONorm value 0..=7 or name ({}), got {norm_type}", names.join(", ")))
        })?;
        let null = Value::Null;
        let mut k = Kwargs::new("po.scion: `norm_kwargs`", norm_kwargs.unwrap_or(&null))?;
        let norm = match t {
            // The library builds these without their keyword arguments.
            0 => return Ok(LmoNorm::Identity),
            1 => return Ok(LmoNorm::Auto),
            5 => return Ok(LmoNorm::Bias),
            2 => LmoNorm::Spectral {
                max_scale: k.bool("max_scale", false)?,
                normalize: k.bool("normalize", true)?,
                num_steps: k.u64("num_steps", 5)? as usize,
            },
            3 => LmoNorm::SpectralConv { num_steps: k.u64("num_steps", 5)? as usize },
            4 => {
                // `zero_init` only changes the library's initialization of the parameters.
                let _ = k.bool("zero_init", false)?;
                LmoNorm::Sign { normalize: k.bool("normalize", true)? }
            }
            6 => LmoNorm::Col { normalized: k.bool("normalized", false)?, transpose: k.bool("transpose", false)? },
            7 => LmoNorm::Row { normalized: k.bool("normalized", true)?, transpose: k.bool("transpose", false)? },
            other => return Err(field(format!("unknown LMONorm value {other}; valid: 0..=7 ({})", names.join(", ")))),
        };
        k.finish()?;
        Ok(norm)
    }

    /// The oracle applied to a tensor of this shape (`Auto` resolved), or why it cannot be.
    fn resolve(self, shape: &[usize]) -> std::result::Result<LmoNorm, String> {
        let nd = shape.len();
        let need = |ok: bool, what: &str| if ok { Ok(()) } else { Err(format!("{what}, got shape {shape:?}")) };
        match self {
            LmoNorm::Auto => match nd {
                0 | 1 => Ok(LmoNorm::Bias),
                2 => Ok(LmoNorm::Spectral { max_scale: false, normalize: true, num_steps: 5 }),
                3 | 4 => Ok(LmoNorm::SpectralConv { num_steps: 5 }),
                _ => Err(format!("the AUTO norm takes tensors of at most 4 dimensions, got shape {shape:?}")),
            },
            LmoNorm::Spectral { .. } | LmoNorm::Col { .. } => {
                need(nd == 2, "this norm takes 2-D tensors").map(|_| self)
            }
            LmoNorm::SpectralConv { .. } | LmoNorm::Sign { .. } => {
                need(nd >= 2, "this norm takes tensors of at least 2 dimensions").map(|_| self)
            }
            LmoNorm::Row { transpose, .. } => {
                need(nd >= if transpose { 2 } else { 1 }, "the ROW norm needs an axis to normalize").map(|_| self)
            }
            LmoNorm::Identity | LmoNorm::Bias => Ok(self),
        }
    }

    /// The oracle's direction for `d` of `shape` (a resolved norm).
    fn lmo(self, d: &[f32], shape: &[usize]) -> Vec<f32> {
        match self {
            LmoNorm::Identity | LmoNorm::Auto => d.to_vec(),
            LmoNorm::Spectral { max_scale, normalize, num_steps } => {
                let (d_out, d_in) = (shape[0], shape[1]);
                let mut s = if normalize { (d_out as f64 / d_in as f64).sqrt() } else { (d_out as f64).sqrt() };
                if max_scale {
                    s = s.max(1.0);
                }
                let o = newton_schulz_bf16(d, d_out, d_in, &NS_COEFFS, num_steps, NS_EPS);
                o.iter().map(|&x| round_bf16(x * s as f32)).collect()
            }
            LmoNorm::SpectralConv { num_steps } => {
                let (d_out, d_in) = (shape[0], shape[1]);
                let kernel: usize = shape[2..].iter().product();
                let s = (d_out as f64 / d_in as f64).sqrt() / kernel as f64;
                let o = newton_schulz_bf16(d, d_out, d.len() / d_out, &NS_COEFFS, num_steps, NS_EPS);
                o.iter().map(|&x| round_bf16(x * s as f32)).collect()
            }
            LmoNorm::Sign { normalize } => {
                let d_in = shape[1] as f32;
                d.iter()
                    .map(|&x| {
                        let s = if x > 0.0 {
                            1.0
                        } else if x < 0.0 {
                            -1.0
                        } else {
                            x * 0.0
                        };
                        if normalize {
                            s / d_in
                        } else {
                            s
                        }
                    })
                    .collect()
            }
            LmoNorm::Bias => {
                // RMS over the first axis, for each position of the others.
                let rows = shape.first().copied().unwrap_or(1);
                let inner = d.len() / rows.max(1);
                let mut out = d.to_vec();
                for j in 0..inner {
                    let ms = (0..rows).map(|r| (d[r * inner + j] as f64).powi(2)).sum::<f64>() / rows as f64;
                    let den = ms.sqrt() as f32 + LMO_EPS;
                    for r in 0..rows {
                        out[r * inner + j] = d[r * inner + j] / den;
                    }
                }
                out
            }
            LmoNorm::Col { normalized, transpose } => {
                // On the transpose, columns are the original rows.
                let (rows, cols) = (shape[0], shape[1]);
                let (d_in, d_out) = if transpose { (cols, rows) } else { (rows, cols) };
                let mut out = d.to_vec();
                for c in 0..d_out {
                    let idx = |r: usize| if transpose { c * cols + r } else { r * cols + c };
                    let ss: f64 = (0..d_in).map(|r| (d[idx(r)] as f64).powi(2)).sum();
                    let mut rms = (ss.sqrt() as f32) / (d_in as f32).sqrt();
                    if normalized {
                        rms *= d_out as f32;
                    }
                    let den = rms + LMO_EPS;
                    for r in 0..d_in {
                        out[idx(r)] = d[idx(r)] / den;
                    }
                }
                out
            }
            LmoNorm::Row { normalized, transpose } => {
                // The rows along the last axis; for a transposed matrix, its columns. (Transposing
                // the first two axes of a higher tensor leaves the last axis as it is.)
                let mut out = d.to_vec();
                let (lines, len, stride): (Vec<usize>, usize, usize) = if transpose && shape.len() == 2 {
                    ((0..shape[1]).collect(), shape[0], shape[1])
                } else {
                    let len = shape.last().copied().unwrap_or(1).max(1);
                    ((0..d.len() / len).map(|l| l * len).collect(), len, 1)
                };
                for start in lines {
                    let ss: f64 = (0..len).map(|e| (d[start + e * stride] as f64).powi(2)).sum();
                    let mut n = ss.sqrt() as f32;
                    if normalized {
                        n *= (len as f32).sqrt();
                    }
                    let den = n + LMO_EPS;
                    for e in 0..len {
                        out[start + e * stride] = d[start + e * stride] / den;
                    }
                }
                out
            }
        }
    }
}

/// `SCION`'s arguments besides its learning rate (given to [`Scion::new`]), with the library's
/// defaults.
#[derive(Clone, Copy, Debug)]
pub struct ScionConfig {
    /// Weight of the new gradient in the momentum average (`1 −` the usual momentum), in (0, 1].
    pub momentum: f64,
    /// Conditional-gradient updates: `p ← (1 − lr)·p − lr·scale·lmo(d)`, no weight decay.
    pub constraint: bool,
    /// The oracle (`norm_type`, `norm_kwargs`).
    pub norm: LmoNorm,
    /// Radius: the oracle's direction is multiplied by it.
    pub scale: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Decoupled (`p ← p·(1 − lr·wd)`) rather than added to the gradient.
    pub weight_decouple: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for ScionConfig {
    fn default() -> Self {
        ScionConfig {
            momentum: 0.1,
            constraint: false,
            norm: LmoNorm::Auto,
            scale: 1.0,
            weight_decay: 0.0,
            weight_decouple: true,
            maximize: false,
        }
    }
}

/// pytorch_optimizer `SCION` (one parameter group).
pub struct Scion {
    lr: LearningRate,
    cfg: ScionConfig,
    step: u64,
    shapes: Vec<Vec<usize>>,
    norms: Vec<LmoNorm>,
    d: Vec<Vec<f32>>,
}

impl Scion {
    /// A `Scion` with these hyper-parameters (`lr`, `cfg`), as described above.
    pub fn new(lr: LearningRate, cfg: ScionConfig) -> Result<Self> {
        check_lr(&lr)?;
        ensure(cfg.momentum > 0.0 && cfg.momentum <= 1.0, || "momentum must be in the range (0.0, 1.0]".into())?;
        ensure(cfg.scale > 0.0, || "scale must be positive".into())?;
        ensure(cfg.weight_decay >= 0.0, || "weight_decay must be non-negative".into())?;
        Ok(Scion { lr, cfg, step: 0, shapes: vec![], norms: vec![], d: vec![] })
    }

    /// From the library's keyword arguments.
    pub fn from_kwargs(k: &mut Kwargs) -> Result<Self> {
        let d = ScionConfig::default();
        // The library's default rate.
        let lr = k.lr("lr", Some(1e-3))?;
        let momentum = k.f64("momentum", d.momentum)?;
        let constraint = k.bool("constraint", d.constraint)?;
        let norm_type = k.present("norm_type")?.cloned().unwrap_or(Value::from(1));
        let norm = LmoNorm::parse(&norm_type, k.value("norm_kwargs"))?;
        let cfg = ScionConfig {
            momentum,
            constraint,
            norm,
            scale: k.f64("scale", d.scale)?,
            weight_decay: k.f64("weight_decay", d.weight_decay)?,
            weight_decouple: k.bool("weight_decouple", d.weight_decouple)?,
            maximize: k.bool("maximize", d.maximize)?,
        };
        // Batching (`foreach`) changes how the tensors are grouped, not the result.
        let _ = k.opt_bool("foreach")?;
        Scion::new(lr, cfg)
    }
}

impl Transform for Scion {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        self.step = 0;
        self.norms = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| self.cfg.norm.resolve(s).map_err(|m| Error::Invalid(format!("SCION parameter {i}: {m}"))))
            .collect::<Result<_>>()?;
        self.shapes = shapes.to_vec();
        self.d = shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = lr_of(&self.lr, self.step);
        self.step += 1;
        let c = self.cfg;
        let (lr32, wd_factor) = (lr as f32, (1.0 - c.weight_decay * lr) as f32);
        let momentum = c.momentum as f32;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            if u.is_empty() {
                continue;
            }
            let decay = !c.constraint && c.weight_decay > 0.0;
            let mut q: Vec<f32> = p.to_vec();
            for ((g, d), q) in u.iter().zip(self.d[i].iter_mut()).zip(q.iter_mut()) {
                let mut g = if c.maximize { -*g } else { *g };
                if decay {
                    if c.weight_decouple {
                        *q *= wd_factor;
                    } else {
                        g += c.weight_decay as f32 * *q;
                    }
                }
                *d = lerp(*d, g, momentum);
            }
            let dir = self.norms[i].lmo(&self.d[i], &self.shapes[i]);
            let scale = c.scale as f32;
            for ((out, q), (x, p)) in u.iter_mut().zip(q.iter_mut()).zip(dir.iter().zip(p.iter())) {
                // The update tensor has the oracle's dtype (bfloat16 for the spectral ones).
                let x = if matches!(self.norms[i], LmoNorm::Spectral { .. } | LmoNorm::SpectralConv { .. }) {
                    round_bf16(x * scale)
                } else {
                    x * scale
                };
                if c.constraint {
                    *q *= 1.0 - lr32;
                }
                *q += -lr32 * x;
                *out = *q - p;
            }
        }
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "d", &mut self.d)?;
        v.counter("step", &mut self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn norm_types_parse_by_number_or_name_and_check_their_options() {
        assert_eq!(LmoNorm::parse(&json!(1), None).unwrap(), LmoNorm::Auto);
        assert_eq!(LmoNorm::parse(&json!("LMONorm.SIGN"), None).unwrap(), LmoNorm::Sign { normalize: true });
        assert_eq!(
            LmoNorm::parse(&json!(2), Some(&json!({"max_scale": true}))).unwrap(),
            LmoNorm::Spectral { max_scale: true, normalize: true, num_steps: 5 }
        );
        assert!(LmoNorm::parse(&json!(2), Some(&json!({"bogus": 1}))).is_err());
        assert!(LmoNorm::parse(&json!(9), None).is_err());
    }

    #[test]
    fn auto_picks_the_oracle_by_dimension() {
        assert_eq!(LmoNorm::Auto.resolve(&[4]).unwrap(), LmoNorm::Bias);
        assert!(matches!(LmoNorm::Auto.resolve(&[4, 3]).unwrap(), LmoNorm::Spectral { .. }));
        assert!(matches!(LmoNorm::Auto.resolve(&[4, 3, 2]).unwrap(), LmoNorm::SpectralConv { .. }));
        assert!(LmoNorm::Auto.resolve(&[1, 1, 1, 1, 1]).is_err());
        assert!(LmoNorm::Col { normalized: false, transpose: false }.resolve(&[3]).is_err());
    }

    #[test]
    fn row_col_and_bias_normalize_their_axis() {
        let d = [3.0f32, 4.0, 0.0, 5.0, 12.0, 0.0];
        // Rows of a 2×3 matrix: norms 5 and 13 (not normalized by length).
        let r = LmoNorm::Row { normalized: false, transpose: false }.lmo(&d, &[2, 3]);
        assert!((r[0] - 0.6).abs() < 1e-6 && (r[4] - 12.0 / 13.0).abs() < 1e-6);
        // The transpose's rows are the columns: column 0 is (3, 5).
        let rt = LmoNorm::Row { normalized: false, transpose: true }.lmo(&d, &[2, 3]);
        assert!((rt[0] - 3.0 / 34f32.sqrt()).abs() < 1e-6 && (rt[3] - 5.0 / 34f32.sqrt()).abs() < 1e-6);
        // Columns with their RMS: column 1 is (4, 12), RMS √80.
        let c = LmoNorm::Col { normalized: false, transpose: false }.lmo(&d, &[2, 3]);
        assert!((c[1] - 4.0 / 80f32.sqrt()).abs() < 1e-6);
        let b = LmoNorm::Bias.lmo(&[3.0, 4.0], &[2]);
        assert!((b[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
    }
}
