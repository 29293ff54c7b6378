//! descent's optimizers on candle variables, updated in place.
//!
//! candle hands out mutable access to a tensor's storage one tensor at a time (`inplace_op2`). To
//! run one optimizer step over all parameters together (global norms, trust ratios need them all),
//! the in-place ops are nested: each level holds one variable's write lock, and the innermost level
//! runs the core step on every parameter's storage. No parameter or state is copied.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var};
use candle_nn::VarMap;
use descent_core::transform::{Optimizer, Transform};

use crate::cpu::{f32_slice, storage_f32s};
use crate::error::{Error, Result};

/// An optimizer over a fixed list of named candle variables.
pub struct VarOptimizer {
    names: Vec<String>,
    vars: Vec<Var>,
    opt: Optimizer,
}

/// One level of the nested in-place ops: takes the write lock of variable `k`, records its slice,
/// and descends; the last level runs the step.
struct Level<'a> {
    k: usize,
    run: &'a std::cell::RefCell<Run<'a>>,
}

struct Run<'a> {
    vars: &'a [Var],
    names: &'a [String],
    grads: Vec<Tensor>,
    /// Raw (pointer, length) of each locked parameter storage, valid while its level is on the stack.
    slots: Vec<(*mut f32, usize)>,
    opt: &'a mut Optimizer,
    result: Option<descent_core::Result<bool>>,
}

impl candle_core::InplaceOp2 for Level<'_> {
    fn name(&self) -> &'static str {
        "descent-optimizer-step"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (vars, name) = {
            let r = self.run.borrow();
            (r.vars, r.names[self.k].clone())
        };
        let CpuStorage::F32(v) = s1 else { candle_core::bail!("{name}: descent optimizes f32 tensors") };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("{name}: parameter is not contiguous")
        };
        let _ = f32_slice(s2, l2, &name)?;
        self.run.borrow_mut().slots.push((v[start..end].as_mut_ptr(), end - start));
        if self.k + 1 < vars.len() {
            let next = Level { k: self.k + 1, run: self.run };
            // The gradient tensor only serves as the op's second operand (never read here).
            let g = self.run.borrow().grads[self.k + 1].clone();
            vars[self.k + 1].as_tensor().inplace_op2(&g, &next)?;
        } else {
            let mut r = self.run.borrow_mut();
            let grads = r.grads.clone();
            let guards: Vec<_> = grads.iter().map(|g| g.storage_and_layout()).collect();
            let mut gslices = Vec::with_capacity(guards.len());
            for (i, (s, l)) in guards.iter().enumerate() {
                gslices.push(storage_f32s(s, l, &r.names[i])?);
            }
            // SAFETY: every slot points into a storage whose write lock is held by an enclosing
            // level of this recursion, and the slots are distinct tensors.
            let mut params: Vec<&mut [f32]> =
                r.slots.iter().map(|&(p, n)| unsafe { std::slice::from_raw_parts_mut(p, n) }).collect();
            let res = r.opt.step(&mut params, &gslices);
            r.result = Some(res);
        }
        Ok(())
    }
}

impl VarOptimizer {
    /// Builds an optimizer for named variables (kept in the given order).
    pub fn new(named: Vec<(String, Var)>, tx: Box<dyn Transform>) -> Result<Self> {
        let mut shapes = vec![];
        let mut init = vec![];
        for (n, v) in &named {
            if v.dtype() != DType::F32 {
                return Err(Error::Param(format!("parameter `{n}` is {:?}; descent optimizes f32", v.dtype())));
            }
            if !matches!(v.device(), Device::Cpu) {
                return Err(Error::Param(format!("parameter `{n}` is not on the CPU")));
            }
            shapes.push(v.dims().to_vec());
            init.push(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
        let opt = Optimizer::new(tx, shapes, &views)?;
        let (names, vars) = named.into_iter().unzip();
        Ok(VarOptimizer { names, vars, opt })
    }

    /// Every variable of a `VarMap`, sorted by name (its `HashMap` order is unspecified).
    pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
        let data = varmap.data().lock().expect("VarMap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The variables' names, in optimizer order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The core optimizer (state, step counts).
    pub fn core(&mut self) -> &mut Optimizer {
        &mut self.opt
    }

    /// One step from the gradients of a backward pass. A variable without gradient (unused in the
    /// loss) gets a zero gradient, as torch skips nothing in its state either.
    pub fn step(&mut self, grads: &GradStore) -> Result<bool> {
        if self.vars.is_empty() {
            return Ok(true);
        }
        let mut gs = Vec::with_capacity(self.vars.len());
        for (n, v) in self.names.iter().zip(&self.vars) {
            let g = match grads.get(v.as_tensor()) {
                Some(g) => g.contiguous()?,
                None => v.as_tensor().zeros_like()?,
            };
            if g.dims() != v.dims() {
                return Err(Error::Param(format!(
                    "gradient of `{n}` has shape {:?}, parameter {:?}",
                    g.dims(),
                    v.dims()
                )));
            }
            gs.push(g);
        }
        let run = std::cell::RefCell::new(Run {
            vars: &self.vars,
            names: &self.names,
            grads: gs,
            slots: Vec::with_capacity(self.vars.len()),
            opt: &mut self.opt,
            result: None,
        });
        let first = Level { k: 0, run: &run };
        let g0 = run.borrow().grads[0].clone();
        self.vars[0].as_tensor().inplace_op2(&g0, &first)?;
        let result = run.borrow_mut().result.take();
        Ok(result.ok_or_else(|| Error::Param("optimizer step did not run".into()))??)
    }

    /// The global L2 norm of the variables' gradients (before any clipping), accumulated in f64
    /// over eight lanes (one serial chain of f64 adds cost a fifth of a small model's step).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0f64;
        for v in &self.vars {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
            let (storage, layout) = g.storage_and_layout();
            match (&*storage, layout.contiguous_offsets()) {
                (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(s)), Some((a, b))) => {
                    sum += descent_core::transforms::sum_sq(&s[a..b]);
                }
                _ => {
                    drop(storage);
                    sum += g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
                }
            }
        }
        Ok(sum.sqrt())
    }

    /// `loss.backward()` then [`VarOptimizer::step`].
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<bool> {
        let grads = loss.backward()?;
        self.step(&grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use descent_core::spec::build_optimizer;
    use serde_json::json;

    /// The same optimizer on candle variables and on plain buffers gives the same numbers, bit for
    /// bit, and the variables are updated in place (same storage).
    #[test]
    fn candle_step_equals_core_step() {
        let dev = Device::Cpu;
        let shapes = vec![vec![3, 4], vec![4]];
        let init: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s: &Vec<usize>| (0..s.iter().product::<usize>()).map(|i| (i as f32 * 0.7).sin()).collect())
            .collect();
        let vars: Vec<(String, Var)> = init
            .iter()
            .zip(&shapes)
            .enumerate()
            .map(|(i, (v, s))| {
                (format!("p{i}"), Var::from_tensor(&Tensor::from_vec(v.clone(), s.as_slice(), &dev).unwrap()).unwrap())
            })
            .collect();
        let h = json!({"lr": 0.05, "weight_decay": 0.1});
        let mut vo =
            VarOptimizer::new(vars.clone(), build_optimizer("torch", "adamw", &h, None, &shapes).unwrap()).unwrap();
        let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
        let mut core =
            Optimizer::new(build_optimizer("torch", "adamw", &h, None, &shapes).unwrap(), shapes.clone(), &views)
                .unwrap();
        let mut plain = init.clone();
        for step in 0..3 {
            // loss = Σ w ⊙ p² with fixed weights: gradient 2 w ⊙ p.
            let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
            let mut grads = vec![];
            for (k, (_, v)) in vars.iter().enumerate() {
                let w: Vec<f32> =
                    (0..shapes[k].iter().product::<usize>()).map(|i| 1.0 + (i + step) as f32 * 0.1).collect();
                let wt = Tensor::from_vec(w.clone(), shapes[k].as_slice(), &dev).unwrap();
                loss = (loss + (v.as_tensor().sqr().unwrap() * &wt).unwrap().sum_all().unwrap()).unwrap();
                grads.push(plain[k].iter().zip(&w).map(|(p, w)| 2.0 * w * p).collect::<Vec<f32>>());
            }
            vo.backward_step(&loss).unwrap();
            core.step_vecs(&mut plain, &grads).unwrap();
        }
        for (k, (_, v)) in vars.iter().enumerate() {
            let got = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in got.iter().zip(&plain[k]) {
                assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
            }
        }
    }
}
