//! Magnitude pruning with the semantics of `torch.nn.utils.prune`: `l1_unstructured`,
//! `global_unstructured` (with `L1Unstructured`) and `ln_structured`, masks kept through
//! fine-tuning ([`Pruner`]), gradual pruning on Zhu & Gupta's polynomial schedule, and the removal
//! of structurally pruned units from an MLP or LeNet-5 ([`crate::compress::shrink`]).
//!
//! As in torch:
//! - an amount is a fraction in `[0, 1]` of the weights (or channels) to prune, turned into a
//!   count with Python's `round` (half to even: 0.5 of 5 weights prunes 2), or an integer count,
//!   which may not exceed the number of weights (`_validate_pruning_amount_init`,
//!   `_validate_pruning_amount`, `_compute_nparams_toprune`);
//! - `l1_unstructured` zeroes the `k` weights of smallest magnitude of one tensor;
//!   `global_unstructured` the `k` smallest over the concatenation of all the tensors;
//!   `ln_structured` keeps the `size − k` slices along `dim` of largest `n`-norm (the norm over all
//!   the other dimensions) and zeroes the rest.
//!
//! Ties: torch takes whatever `torch.topk` returns among equal values; here the order is fixed:
//! among equal magnitudes the lower flat index is pruned first, and among channels of equal norm
//! the lower index is kept first.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Tensor, Var};

use crate::error::{Error, Result};
use crate::model::Model;

/// How much to prune: a fraction of the weights, or a count (torch's float or int `amount`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// A fraction of the weights, in [0, 1] (rounded half to even, as Python's `round`).
    Fraction(f64),
    /// A number of weights.
    Count(usize),
}

impl Amount {
    /// `0.3` is a fraction, `30` a count (an integer written without a point or exponent, as a
    /// Python int); a fraction outside `[0, 1]` or a negative count is refused naming `flag`.
    pub fn parse(flag: &str, s: &str) -> Result<Amount> {
        let bad = || {
            Error::Param(format!(
                "{flag} {s}: a fraction in [0, 1] (e.g. 0.5) or a non-negative integer count of weights (e.g. 100)"
            ))
        };
        let t = s.trim();
        if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
            return t.parse::<usize>().map(Amount::Count).map_err(|_| bad());
        }
        let f: f64 = t.parse().map_err(|_| bad())?;
        if !(0.0..=1.0).contains(&f) {
            return Err(bad());
        }
        Ok(Amount::Fraction(f))
    }

    /// The number of weights (or channels) to prune of `size` (torch's `_compute_nparams_toprune`
    /// then `_validate_pruning_amount`): a fraction is rounded half to even like Python's `round`.
    pub fn count(&self, size: usize) -> Result<usize> {
        match *self {
            Amount::Count(k) if k > size => {
                Err(Error::Param(format!("amount={k} should be smaller than the number of parameters to prune={size}")))
            }
            Amount::Count(k) => Ok(k),
            Amount::Fraction(f) if !(0.0..=1.0).contains(&f) => Err(Error::Param(format!(
                "amount={f} should either be a float in the range [0, 1] or a non-negative integer"
            ))),
            Amount::Fraction(f) => Ok(((f * size as f64).round_ties_even() as usize).min(size)),
        }
    }
}

/// The indices of the `k` smallest of `scores`, ties to the lower index.
fn smallest(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn check_finite(w: &[f32]) -> Result<()> {
    match w.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Param(format!("weight {i} is {}: cannot rank it for pruning", w[i]))),
        None => Ok(()),
    }
}

/// `prune.l1_unstructured`: a mask (1 kept, 0 pruned) zeroing the `amount` weights of smallest
/// magnitude.
pub fn l1_unstructured(w: &[f32], amount: Amount) -> Result<Vec<f32>> {
    check_finite(w)?;
    let k = amount.count(w.len())?;
    let scores: Vec<f64> = w.iter().map(|v| v.abs() as f64).collect();
    let mut mask = vec![1.0f32; w.len()];
    for i in smallest(&scores, k) {
        mask[i] = 0.0;
    }
    Ok(mask)
}

/// `prune.global_unstructured(…, pruning_method=L1Unstructured, amount)`: one mask per tensor,
/// the `amount` (of all the tensors' weights together) smallest magnitudes over all of them zeroed.
pub fn global_unstructured(ws: &[&[f32]], amount: Amount) -> Result<Vec<Vec<f32>>> {
    let all: Vec<f32> = ws.iter().flat_map(|w| w.iter().copied()).collect();
    let flat = l1_unstructured(&all, amount)?;
    let mut out = vec![];
    let mut at = 0;
    for w in ws {
        out.push(flat[at..at + w.len()].to_vec());
        at += w.len();
    }
    Ok(out)
}

/// The `n` of `ln_structured` (`torch.norm`'s `p`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Norm {
    /// `(Σ|x|^p)^(1/p)` for `p > 0`; the count of nonzeros for `p = 0`.
    P(f64),
    /// `max |x|`.
    Inf,
    /// `min |x|`.
    NegInf,
}

impl Norm {
    /// `2`, `1`, `0.5`, `inf`, `-inf`, `fro` (= 2).
    pub fn parse(s: &str) -> Result<Norm> {
        Ok(match s.trim() {
            "inf" => Norm::Inf,
            "-inf" => Norm::NegInf,
            "fro" => Norm::P(2.0),
            t => match t.parse::<f64>() {
                Ok(p) if p.is_finite() && p >= 0.0 => Norm::P(p),
                _ => {
                    return Err(Error::Param(format!(
                        "--n {s}: the norm's order, a number at least 0, inf, -inf or fro"
                    )))
                }
            },
        })
    }

    fn of(&self, xs: impl Iterator<Item = f32>) -> f64 {
        let a = xs.map(|x| x.abs() as f64);
        match *self {
            Norm::Inf => a.fold(0.0, f64::max),
            Norm::NegInf => a.fold(f64::INFINITY, f64::min),
            Norm::P(0.0) => a.filter(|&x| x != 0.0).count() as f64,
            Norm::P(1.0) => a.sum(),
            Norm::P(2.0) => a.map(|x| x * x).sum::<f64>().sqrt(),
            Norm::P(p) => a.map(|x| x.powf(p)).sum::<f64>().powf(1.0 / p),
        }
    }
}

/// Each slice's norm along `dim` of a tensor of `shape` (torch's `_compute_norm`); an error when
/// `dim` is not an axis of `shape` or `w` does not hold `shape`'s elements.
pub fn slice_norms(w: &[f32], shape: &[usize], n: Norm, dim: usize) -> Result<Vec<f64>> {
    if dim >= shape.len() || shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(w.len()) {
        return Err(Error::Param(format!(
            "slice norms along dim {dim} of shape {shape:?} over {} values: no such axis, or not that many values",
            w.len()
        )));
    }
    let inner: usize = shape[dim + 1..].iter().product();
    let size = shape[dim];
    let outer: usize = shape[..dim].iter().product();
    let norms = (0..size)
        .map(|c| n.of((0..outer).flat_map(move |o| (0..inner).map(move |i| (o * size + c) * inner + i)).map(|j| w[j])))
        .collect::<Vec<_>>();
    Ok(norms)
}

/// `prune.ln_structured(…, amount, n, dim)`: a mask keeping the `size − k` slices along `dim`
/// with the largest `n`-norm (`dim` may be negative, from the end, as in torch).
pub fn ln_structured(w: &[f32], shape: &[usize], amount: Amount, n: Norm, dim: isize) -> Result<Vec<f32>> {
    check_finite(w)?;
    if shape.len() <= 1 {
        return Err(Error::Param(format!(
            "Structured pruning can only be applied to multidimensional tensors. Found tensor of shape {shape:?} with {} dims",
            shape.len()
        )));
    }
    let nd = shape.len() as isize;
    if dim >= nd || dim < -nd {
        return Err(Error::Param(format!(
            "--dim {dim}: the weights have {nd} dimensions (accepted: {} to {})",
            -nd,
            nd - 1
        )));
    }
    let d = if dim < 0 { (nd + dim) as usize } else { dim as usize };
    let size = shape[d];
    let k = amount.count(size)?;
    let norms = slice_norms(w, shape, n, d)?;
    // Keep the largest: prune the smallest, ties pruning the higher index first.
    let neg: Vec<f64> = norms.iter().map(|v| -v).collect();
    let keep = smallest(&neg, size - k);
    let mut kept = vec![false; size];
    for c in keep {
        kept[c] = true;
    }
    let inner: usize = shape[d + 1..].iter().product();
    Ok((0..w.len()).map(|j| if kept[(j / inner) % size] { 1.0 } else { 0.0 }).collect())
}

/// The weights pruning applies to by default: every Linear and Conv weight (a tensor named
/// `…weight` with at least two dimensions; batch norm's one-dimensional weights are not).
pub fn prunable(model: &dyn Model) -> Vec<(String, Var)> {
    model.named_vars().into_iter().filter(|(n, v)| n.ends_with("weight") && v.dims().len() >= 2).collect()
}

/// Zhu & Gupta (2017)'s gradual pruning: at steps `t = t0, t0 + Δt, …, t0 + nΔt` each pruned
/// tensor's sparsity is raised to `s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³` by zeroing its
/// smallest weights (pruned ones stay pruned); from `t0 + nΔt` on it stays `s_f`. The end step
/// is a pruning step even when `Δt` does not divide `end − t0` (the last interval is shorter), so
/// that the sparsity asked for is reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradualPruning {
    /// `s_i` and `s_f`.
    pub initial: f64,
    /// The final sparsity `s_f`.
    pub target: f64,
    /// `t0` and `t0 + nΔt`, in optimizer steps; `Δt`.
    pub start: u64,
    /// The step the sparsity reaches `s_f`, `t0 + nΔt`.
    pub end: u64,
    /// Steps between pruning steps, `Δt`.
    pub frequency: u64,
}

impl GradualPruning {
    /// The sparsity to prune to after optimizer step `t` (`None` when `t` is no pruning step).
    pub fn sparsity_at(&self, t: u64) -> Option<f64> {
        if t < self.start || t > self.end || (t < self.end && !(t - self.start).is_multiple_of(self.frequency.max(1))) {
            return None;
        }
        let span = (self.end - self.start) as f64;
        let frac = if span > 0.0 { (t - self.start) as f64 / span } else { 1.0 };
        Some(self.target + (self.initial - self.target) * (1.0 - frac).powi(3))
    }

    /// The sparsity in force after step `t`.
    pub fn sparsity_after(&self, t: u64) -> f64 {
        if t < self.start {
            return 0.0;
        }
        let last = if t >= self.end {
            self.end
        } else {
            self.start + ((t - self.start) / self.frequency.max(1)) * self.frequency.max(1)
        };
        self.sparsity_at(last).unwrap_or(0.0)
    }
}

/// Masks over a model's weights, applied after every optimizer step so that pruned weights stay
/// exactly zero while the rest train (`torch.nn.utils.prune`'s forward pre-hook multiplies the
/// weight by its mask at every forward; applying it to the stored weight after each step gives
/// the same forwards and leaves the pruning permanent in every checkpoint).
#[derive(Debug, Default)]
pub struct Pruner {
    masks: Mutex<HashMap<String, Vec<f32>>>,
    gradual: Option<GradualPruning>,
    /// The tensors gradual pruning applies to.
    targets: Vec<String>,
}

impl Pruner {
    /// Fixed masks by parameter name.
    pub fn fixed(masks: Vec<(String, Vec<f32>)>) -> Pruner {
        Pruner { masks: Mutex::new(masks.into_iter().collect()), gradual: None, targets: vec![] }
    }

    /// Gradual pruning of these tensors (each to its own sparsity, as Zhu & Gupta prune each layer).
    pub fn gradual(g: GradualPruning, targets: Vec<String>) -> Pruner {
        Pruner { masks: Mutex::new(HashMap::new()), gradual: Some(g), targets }
    }

    /// At the start of a run: gradual pruning's masks are the run's own, made as it goes, so a
    /// pruner given to a second run (a config cloned for another seed) starts it without the
    /// first run's; fixed masks are the caller's and stay.
    pub(crate) fn begin_run(&self) {
        if self.gradual.is_some() {
            self.masks.lock().expect("mask lock").clear();
        }
    }

    /// Masks from the zeros of the model's prunable weights (a pruned run resumed from its
    /// checkpoint, where pruning was made permanent).
    pub fn from_zeros(&self, model: &dyn Model) -> Result<()> {
        let mut m = self.masks.lock().expect("mask lock");
        for (n, v) in prunable(model) {
            if self.gradual.is_some() && !self.targets.contains(&n) {
                continue;
            }
            let w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            if w.contains(&0.0) {
                m.insert(n, w.iter().map(|&x| if x == 0.0 { 0.0 } else { 1.0 }).collect());
            }
        }
        Ok(())
    }

    /// Whether gradual pruning prunes further after step `step` (its masks change there).
    pub fn prunes_at(&self, step: u64) -> bool {
        self.gradual.is_some_and(|g| g.sparsity_at(step).is_some())
    }

    /// Whether this is gradual pruning (masks made as the run goes), not fixed masks.
    pub fn is_gradual(&self) -> bool {
        self.gradual.is_some()
    }

    /// After optimizer step `step` (0: before the first): prunes further when gradual pruning
    /// says so, then multiplies each masked weight by its mask.
    pub fn after_step(&self, model: &dyn Model, step: u64) -> Result<()> {
        let vars: HashMap<String, Var> = model.named_vars().into_iter().collect();
        let mut masks = self.masks.lock().expect("mask lock");
        if let Some(s) = self.gradual.and_then(|g| g.sparsity_at(step)) {
            for n in &self.targets {
                if s == 0.0 && !masks.contains_key(n) {
                    // Nothing pruned yet and nothing to prune: no mask of ones to apply every step.
                    continue;
                }
                let v = vars.get(n).ok_or_else(|| Error::Param(format!("no parameter `{n}` to prune")))?;
                let mut w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                if let Some(m) = masks.get(n) {
                    w.iter_mut().zip(m).for_each(|(x, &k)| *x *= k);
                }
                masks.insert(n.clone(), l1_unstructured(&w, Amount::Fraction(s))?);
            }
        }
        for (n, m) in masks.iter() {
            let v = vars.get(n).ok_or_else(|| Error::Param(format!("no parameter `{n}` to mask")))?;
            apply_mask(v, m)?;
        }
        Ok(())
    }

    /// Multiplies each masked weight by its mask (no further pruning).
    pub fn apply(&self, model: &dyn Model) -> Result<()> {
        let vars: HashMap<String, Var> = model.named_vars().into_iter().collect();
        for (n, m) in self.masks.lock().expect("mask lock").iter() {
            let v = vars.get(n).ok_or_else(|| Error::Param(format!("no parameter `{n}` to mask")))?;
            apply_mask(v, m)?;
        }
        Ok(())
    }

    /// The masks now, by name.
    pub fn masks(&self) -> HashMap<String, Vec<f32>> {
        self.masks.lock().expect("mask lock").clone()
    }
}

/// Sets the pruned weights of `v` to zero (kept ones unchanged, bit for bit).
pub fn apply_mask(v: &Var, mask: &[f32]) -> Result<()> {
    let mut w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    if w.len() != mask.len() {
        return Err(Error::Param(format!("mask of {} for a weight of {}", mask.len(), w.len())));
    }
    w.iter_mut().zip(mask).for_each(|(x, &k)| {
        if k == 0.0 {
            *x = 0.0
        }
    });
    v.set(&Tensor::from_vec(w, v.dims(), v.device())?)?;
    Ok(())
}

/// The channels (slices along dim 0) of a weight with any nonzero, in order.
pub fn live_channels(w: &[f32], out: usize) -> Vec<usize> {
    let per = w.len() / out.max(1);
    (0..out).filter(|&c| w[c * per..(c + 1) * per].iter().any(|&x| x != 0.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_torch() {
        // round() is half to even: 0.5·5 = 2.5 → 2, 0.5·7 = 3.5 → 4, 0.3·10 = 3.
        assert_eq!(Amount::Fraction(0.5).count(5).unwrap(), 2);
        assert_eq!(Amount::Fraction(0.5).count(7).unwrap(), 4);
        assert_eq!(Amount::Fraction(0.3).count(10).unwrap(), 3);
        assert_eq!(Amount::Fraction(0.25).count(6).unwrap(), 2); // 1.5 → 2
        assert_eq!(Amount::Fraction(0.0).count(6).unwrap(), 0);
        assert_eq!(Amount::Fraction(1.0).count(6).unwrap(), 6);
        assert_eq!(Amount::Count(6).count(6).unwrap(), 6);
        assert!(Amount::Count(7).count(6).is_err());
        assert_eq!(Amount::parse("--amount", "3").unwrap(), Amount::Count(3));
        assert_eq!(Amount::parse("--amount", "1").unwrap(), Amount::Count(1));
        assert_eq!(Amount::parse("--amount", "1.0").unwrap(), Amount::Fraction(1.0));
        for bad in ["1.5", "-0.1", "-3", "nan", "x"] {
            let e = Amount::parse("--amount", bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--amount {bad}:")), "{e}");
        }
    }

    #[test]
    fn l1_unstructured_prunes_the_smallest_magnitudes() {
        let w = [0.5, -0.1, 0.3, -0.7, 0.1, 0.0];
        // 0.5 of 6 = 3: 0.0, then the tie −0.1 (index 1) and 0.1 (index 4), lower index first.
        assert_eq!(l1_unstructured(&w, Amount::Fraction(0.5)).unwrap(), vec![1., 0., 1., 1., 0., 0.]);
        assert_eq!(l1_unstructured(&w, Amount::Count(2)).unwrap(), vec![1., 0., 1., 1., 1., 0.]);
        assert_eq!(l1_unstructured(&w, Amount::Count(0)).unwrap(), vec![1.; 6]);
    }

    #[test]
    fn global_differs_from_per_layer() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [0.1, 0.2, 5.0, 6.0];
        let g = global_unstructured(&[&a, &b], Amount::Fraction(0.5)).unwrap();
        // The 4 smallest of 8 overall: 0.1, 0.2, 1.0, 2.0.
        assert_eq!(g, vec![vec![0., 0., 1., 1.], vec![0., 0., 1., 1.]]);
        let g = global_unstructured(&[&a, &b], Amount::Count(3)).unwrap();
        assert_eq!(g, vec![vec![0., 1., 1., 1.], vec![0., 0., 1., 1.]]);
        assert!(global_unstructured(&[&a, &b], Amount::Count(9)).is_err());
    }

    #[test]
    fn ln_structured_keeps_the_largest_norms() {
        // 3 rows of 2: L2 norms 5, 1, √2·3≈4.24; L1 norms 7, 1, 6; inf norms 4, 1, 3.
        let w = [3.0, -4.0, 1.0, 0.0, 3.0, -3.0];
        let s = [3, 2];
        assert_eq!(ln_structured(&w, &s, Amount::Count(1), Norm::P(2.0), 0).unwrap(), vec![1., 1., 0., 0., 1., 1.]);
        // 2 of 3 channels: only row 0 stays under L2.
        assert_eq!(
            ln_structured(&w, &s, Amount::Fraction(0.6), Norm::P(2.0), 0).unwrap(),
            vec![1., 1., 0., 0., 0., 0.]
        );
        // Columns (dim 1 = -1): L1 norms 7, 7 (a tie: the lower index is kept).
        assert_eq!(ln_structured(&w, &s, Amount::Count(1), Norm::P(1.0), -1).unwrap(), vec![1., 0., 1., 0., 1., 0.]);
        // inf norm on columns: 3, 4 → column 0 goes.
        assert_eq!(ln_structured(&w, &s, Amount::Count(1), Norm::Inf, 1).unwrap(), vec![0., 1., 0., 1., 0., 1.]);
        assert!(ln_structured(&w, &[6], Amount::Count(1), Norm::P(2.0), 0).is_err());
        assert!(ln_structured(&w, &s, Amount::Count(4), Norm::P(2.0), 0).is_err());
        assert!(ln_structured(&w, &s, Amount::Count(1), Norm::P(2.0), 2).is_err());
        // A 4-D conv weight [2, 1, 1, 2]: channel norms over the other three dims.
        let c = [1.0, 1.0, 0.5, 0.5];
        assert_eq!(ln_structured(&c, &[2, 1, 1, 2], Amount::Count(1), Norm::P(2.0), 0).unwrap(), vec![1., 1., 0., 0.]);
    }

    #[test]
    fn polynomial_schedule() {
        let g = GradualPruning { initial: 0.0, target: 0.8, start: 100, end: 500, frequency: 100 };
        assert_eq!(g.sparsity_at(50), None);
        assert_eq!(g.sparsity_at(150), None);
        assert_eq!(g.sparsity_at(100), Some(0.0));
        // t = 300: (1 − 0.5)³ = 0.125 → 0.8 − 0.8·0.125 = 0.7.
        assert!((g.sparsity_at(300).unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(g.sparsity_at(500), Some(0.8));
        assert_eq!(g.sparsity_at(600), None);
        assert!((g.sparsity_after(350) - 0.7).abs() < 1e-12);
        assert_eq!(g.sparsity_after(10_000), 0.8);
        // Δt not dividing end − t0: the end is a pruning step all the same (a shorter interval),
        // so the final sparsity is reached; before it, the steps t0 + kΔt.
        let g = GradualPruning { initial: 0.0, target: 0.9, start: 0, end: 2, frequency: 100 };
        assert_eq!(g.sparsity_at(1), None);
        assert_eq!(g.sparsity_at(2), Some(0.9));
        assert_eq!(g.sparsity_after(1), 0.0);
        assert_eq!(g.sparsity_after(3), 0.9);
        let g = GradualPruning { initial: 0.0, target: 0.8, start: 100, end: 450, frequency: 100 };
        assert!(g.sparsity_at(400).is_some() && g.sparsity_at(450) == Some(0.8));
        assert_eq!(g.sparsity_at(425), None);
        assert!(g.sparsity_after(449) < 0.8 && g.sparsity_after(450) == 0.8);
    }

    /// Fixed masks and gradual pruning through the training loop: pruned weights stay exactly zero
    /// after every step of Adam with momentum, the others train.
    #[test]
    fn masks_keep_zeros_through_training() {
        use crate::data::Dataset;
        use crate::model::{Init, Mlp};
        use crate::train::{train, Loss, TrainConfig};
        use candle_core::Device;
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(1);
        let x: Vec<f32> = (0..64 * 784).map(|_| rng.uniform()).collect();
        let y: Vec<u32> = (0..64).map(|i| i % 10).collect();
        let data = Dataset {
            x: Tensor::from_vec(x, (64, 1, 28, 28), &dev).unwrap(),
            y: Tensor::from_vec(y, 64, &dev).unwrap(),
        };
        let values = |v: &Var| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Fixed masks: 70% of fc1 by magnitude, 30% of fc2.
        let m = Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
        let before1 = values(&m.fc1.weight);
        let mask1 = l1_unstructured(&before1, Amount::Fraction(0.7)).unwrap();
        let mask2 = l1_unstructured(&values(&m.fc2.weight), Amount::Fraction(0.3)).unwrap();
        let pruner = Pruner::fixed(vec![("fc1.weight".into(), mask1.clone()), ("fc2.weight".into(), mask2.clone())]);
        let mut cfg = TrainConfig::new("adam", Some(1e-2), 2, 16, Loss::CrossEntropy);
        cfg.pruner = Some(std::sync::Arc::new(pruner));
        train(&m, &data, &data, &cfg, |_| {}).unwrap();
        let (after1, after2) = (values(&m.fc1.weight), values(&m.fc2.weight));
        for (w, mask) in [(&after1, &mask1), (&after2, &mask2)] {
            for (x, k) in w.iter().zip(mask.iter()) {
                assert!(*k == 1.0 || *x == 0.0, "a pruned weight is {x}");
            }
        }
        let moved = after1.iter().zip(&before1).zip(&mask1).filter(|((a, b), k)| **k == 1.0 && a != b).count();
        assert!(moved > 1000, "only {moved} kept weights trained");
        // Gradual: 8 steps, pruning every 2 from step 0 to 6 to 80% sparsity.
        let m = Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
        let g = GradualPruning { initial: 0.0, target: 0.8, start: 0, end: 6, frequency: 2 };
        let mut cfg = TrainConfig::new("adam", Some(1e-2), 2, 16, Loss::CrossEntropy);
        cfg.pruner = Some(std::sync::Arc::new(Pruner::gradual(g, vec!["fc1.weight".into(), "fc2.weight".into()])));
        train(&m, &data, &data, &cfg, |_| {}).unwrap();
        for v in [&m.fc1.weight, &m.fc2.weight] {
            let w = values(v);
            let zeros = w.iter().filter(|&&x| x == 0.0).count();
            assert_eq!(zeros, (0.8 * w.len() as f64).round_ties_even() as usize);
        }
        // The same pruner in a second run (of another model) prunes that model by its own
        // weights, as a new pruner does, not by the first run's masks.
        let second = Mlp::new(Init::TorchDefault, 0.0, &mut rng.clone(), &dev).unwrap();
        let again = Mlp::new(Init::TorchDefault, 0.0, &mut rng.clone(), &dev).unwrap();
        train(&second, &data, &data, &cfg, |_| {}).unwrap();
        let mut own = cfg.clone();
        own.pruner = Some(std::sync::Arc::new(Pruner::gradual(g, vec!["fc1.weight".into(), "fc2.weight".into()])));
        train(&again, &data, &data, &own, |_| {}).unwrap();
        assert_eq!(values(&second.fc1.weight), values(&again.fc1.weight));
        assert_eq!(values(&second.fc2.weight), values(&again.fc2.weight));

        // Pruning that ends at step 0 prunes before the first step; an EMA of the weights is
        // pruned with them (its run evaluates it); a stopping rule that could end the run before
        // the pruning does is refused.
        use crate::average::{AverageConfig, AverageKind};
        let m = Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
        let g = GradualPruning { initial: 0.0, target: 0.8, start: 0, end: 0, frequency: 2 };
        let mut cfg = TrainConfig::new("adam", Some(1e-2), 1, 16, Loss::CrossEntropy);
        cfg.max_steps = Some(1);
        cfg.pruner = Some(std::sync::Arc::new(Pruner::gradual(g, vec!["fc1.weight".into()])));
        let before = values(&m.fc1.weight);
        train(&m, &data, &data, &cfg, |_| {}).unwrap();
        let w = values(&m.fc1.weight);
        assert_eq!(w.iter().filter(|&&x| x == 0.0).count(), (0.8 * w.len() as f64).round_ties_even() as usize);
        // Pruned by magnitude before the step: the smallest of the initial weights are the zeros.
        let mask = l1_unstructured(&before, Amount::Fraction(0.8)).unwrap();
        assert!(w.iter().zip(&mask).all(|(x, k)| (*x == 0.0) == (*k == 0.0)));
        // Pruning at step 2 of 4 under an EMA of the weights.
        let m = Mlp::new(Init::TorchDefault, 0.0, &mut rng, &dev).unwrap();
        let g = GradualPruning { initial: 0.0, target: 0.8, start: 0, end: 2, frequency: 2 };
        let mut cfg = TrainConfig::new("adam", Some(1e-2), 1, 16, Loss::CrossEntropy);
        cfg.pruner = Some(std::sync::Arc::new(Pruner::gradual(g, vec!["fc1.weight".into()])));
        cfg.average = Some(AverageConfig { kind: AverageKind::Ema { decay: 0.9, warmup: false }, use_buffers: false });
        let mut average = None;
        crate::train::train_from(&m, &data, &data, &cfg, None, |_: &_, e: &mut crate::train::EpochEnd| {
            average = e.checkpoint()?.average.map(|a| a.weights);
            Ok(())
        })
        .unwrap();
        let w = values(&m.fc1.weight);
        assert_eq!(w.iter().filter(|&&x| x == 0.0).count(), (0.8 * w.len() as f64).round_ties_even() as usize);
        let avg = average.expect("an average");
        let (_, _, fc1) = avg.iter().find(|(n, ..)| n == "fc1.weight").expect("fc1.weight averaged");
        for (a, x) in fc1.iter().zip(&w) {
            assert!(*x != 0.0 || *a == 0.0, "an averaged pruned weight is {a}");
        }
        let g = GradualPruning { initial: 0.0, target: 0.8, start: 0, end: 4, frequency: 2 };
        cfg.pruner = Some(std::sync::Arc::new(Pruner::gradual(g, vec!["fc1.weight".into()])));
        cfg.patience = Some(1);
        let e = train(&m, &data, &data, &cfg, |_| {}).unwrap_err().to_string();
        assert!(e.contains("gradual pruning") && e.contains("patience"), "{e}");
    }
}
