//! The optimizer sharded across the ranks of a data-parallel run (ZeRO stage 1, Rajbhandari et
//! al. 2020; PyTorch's `ZeroRedundancyOptimizer`): each rank owns a contiguous range of the flat
//! parameter space ([`shard_bounds`]), keeps optimizer state for its range alone and steps it on
//! its part of the reduce-scattered gradient; the ranks then all-gather the parameters. State
//! memory per rank falls by the number of ranks.
//!
//! Only elementwise optimizers are sharded (see [`Optimizer::is_elementwise`]): their step on a
//! range gives the values of the step on the whole, whatever the cut. Those whose step reads
//! whole tensors or all of them (LAMB, LARS, Adafactor, Muon, Shampoo, SOAP, Kron, Prodigy, …)
//! are refused rather than cut on tensor boundaries, where a global reduction (D-Adaptation's,
//! Prodigy's) would still be wrong. Clipping by the global norm is taken out of the chain and
//! applied with the norm of the whole gradient (the ranks' sums of squares all-reduced).
//!
//! Checkpoints hold the whole state, as a single process writes it: the ranks' state is
//! gathered on rank 0, and a checkpoint's state is cut into each rank's range when loaded, so
//! a run resumes on any number of ranks, sharded or not.

use std::collections::BTreeMap;
use std::ops::Range;

use super::*;
use crate::parallel::{any, shard_bounds, Communicator};

/// The flag that asks for a sharded optimizer, for messages.
pub const FLAG: &str = "--shard-optimizer";

/// A sharded optimizer: the core optimizer over this rank's pieces of every tensor (a tensor
/// outside the range has an empty piece, so state names and groups are the whole optimizer's).
pub(crate) struct Sharded {
    pub(super) opt: Optimizer,
    rank: usize,
    /// Every rank's range of the flat parameter space.
    bounds: Vec<Range<usize>>,
    /// Where each tensor starts in the flat space, then its end.
    starts: Vec<usize>,
    clip_norm: Option<f64>,
    /// Each state buffer's length on every rank (the ranks' pieces end to end are the buffer).
    lens: BTreeMap<String, Vec<usize>>,
    /// The whole state gathered on rank 0 by [`VarOptimizer::gather_state`], for a checkpoint.
    gathered: Option<StateDict>,
    /// The flat parameters of a step's all-gather: this rank's range after its step, the other
    /// ranges after the all-gather (kept from step to step).
    params: Vec<f32>,
    /// Each variable's piece in this rank's range, in the variable's own indices.
    local_pieces: Vec<Range<usize>>,
}

impl Sharded {
    /// This rank's range of the flat parameter space.
    fn mine(&self) -> Range<usize> {
        self.bounds[self.rank].clone()
    }

    /// Tensor `i`'s piece in this rank's range, in flat coordinates (empty when outside: then its
    /// bounds mean nothing).
    fn piece(&self, i: usize) -> Range<usize> {
        piece(&self.starts, i, &self.mine())
    }
}

fn piece(starts: &[usize], i: usize, mine: &Range<usize>) -> Range<usize> {
    let (a, b) = (starts[i].max(mine.start), starts[i + 1].min(mine.end));
    if a < b {
        a..b
    } else {
        a..a
    }
}

/// The optimizer of `cfg` without its global-norm clipping over parameters of these shapes, and
/// why it cannot be sharded when it cannot.
fn build_checked(
    cfg: &OptimizerConfig,
    names: &[String],
    shapes: Vec<Vec<usize>>,
    init: &[&[f32]],
) -> Result<Optimizer> {
    let (lib, name) = resolve_optimizer(&cfg.optimizer)?;
    let full = format!("{lib}.{name}");
    if is_closure_optimizer(lib, &name) {
        return Err(Error::Param(format!(
            "{FLAG}: `{full}` evaluates the objective itself (a closure-driven optimizer), which a data-parallel run does not step; run it without {FLAG}"
        )));
    }
    let tx = cfg.transform_clipping(names, &shapes, false)?;
    let mut opt = Optimizer::new(tx, shapes, init)?;
    if !opt.is_elementwise() {
        return Err(Error::Param(format!(
            "{FLAG}: `{full}` is not elementwise (its step reads whole tensors or all of them: norms, trust ratios, factored or matrix statistics), so its state cannot be cut into ranges of the parameters; run it without {FLAG}"
        )));
    }
    let values: Vec<Vec<f32>> = init.iter().map(|v| v.to_vec()).collect();
    if opt.eval_params(&values)?.is_some() {
        return Err(Error::Param(format!(
            "{FLAG}: `{full}` evaluates other weights than it steps (schedule-free's average, Lookahead's slow weights), which a sharded optimizer does not gather; run it without {FLAG}"
        )));
    }
    Ok(opt)
}

/// Whether `cfg`'s optimizer over these variables can be sharded ([`VarOptimizer::for_vars_sharded`]
/// refuses it otherwise): a one-line error naming the optimizer and the flag when not. Builds it
/// once over the whole parameters, on one process.
pub fn check_shardable(named: &[(String, Var)], cfg: &OptimizerConfig) -> Result<()> {
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let shapes: Vec<Vec<usize>> = named.iter().map(|(_, v)| v.dims().to_vec()).collect();
    let init = VarOptimizer::checked_values(named)?;
    let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
    build_checked(cfg, &names, shapes, &views).map(|_| ())
}

impl VarOptimizer {
    /// The optimizer of `cfg` over named variables (kept in the given order), sharded across the
    /// ranks of `comm` (every rank calls it, with the same variables): this rank keeps state for
    /// its range of the flat parameter space alone. Refuses one rank, and optimizers that are not
    /// elementwise, evaluate the objective or other weights (see the module's notes). Step it
    /// with [`VarOptimizer::step_shard`]; call [`VarOptimizer::gather_state`] on every rank before
    /// rank 0 takes a checkpoint.
    pub fn for_vars_sharded(named: Vec<(String, Var)>, cfg: &OptimizerConfig, comm: &dyn Communicator) -> Result<Self> {
        let (rank, size) = (comm.rank(), comm.size());
        if size < 2 {
            return Err(Error::Param(format!(
                "{FLAG} cuts the optimizer state across the ranks of `mpirun -n N` (N ≥ 2); this run is one process"
            )));
        }
        let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(Error::Param(format!("two parameters are named `{dup}`")));
        }
        let lens: Vec<usize> = named.iter().map(|(_, v)| v.elem_count()).collect();
        let bounds = shard_bounds(&lens, size);
        let mut starts = vec![0];
        for l in &lens {
            starts.push(starts.last().expect("starts at 0") + l);
        }
        let mine = bounds[rank].clone();
        let init = Self::checked_values(&named)?;
        let mut shapes = vec![];
        let mut values = vec![];
        for (i, (_, v)) in named.iter().enumerate() {
            let p = piece(&starts, i, &mine);
            shapes.push(if p.len() == lens[i] { v.dims().to_vec() } else { vec![p.len()] });
            values.push(if p.is_empty() { &[][..] } else { &init[i][p.start - starts[i]..p.end - starts[i]] });
        }
        let built = build_checked(cfg, &names, shapes, &values);
        drop(init);
        // The same answer on every rank, or none goes on.
        let refused = any(comm, built.is_err())?;
        let mut opt = match (built, refused) {
            (Ok(o), false) => o,
            (Err(e), _) => return Err(e),
            (Ok(_), true) => {
                return Err(Error::Param(format!("{FLAG}: another rank refused `{}` (see its message)", cfg.optimizer)))
            }
        };
        // Each state buffer's length on every rank; the names must agree.
        let dict = opt.state_dict()?;
        let keys: Vec<&String> = dict.buffers.keys().collect();
        let mut listed = serde_json::to_vec(&keys).map_err(|e| Error::Param(e.to_string()))?;
        let own = listed.clone();
        comm.broadcast_bytes(&mut listed, 0)?;
        if any(comm, listed != own)? {
            return Err(Error::Param(format!("{FLAG}: the ranks' optimizer states have different buffers")));
        }
        let mut table = vec![0.0f64; keys.len() * size];
        for (k, key) in keys.iter().enumerate() {
            table[k * size + rank] = dict.buffers[*key].len() as f64;
        }
        comm.all_reduce_sum_f64(&mut table)?;
        let lens_of: BTreeMap<String, Vec<usize>> = keys
            .iter()
            .enumerate()
            .map(|(k, key)| ((*key).clone(), (0..size).map(|r| table[k * size + r] as usize).collect()))
            .collect();
        let local_pieces = (0..lens.len())
            .map(|i| {
                let p = piece(&starts, i, &mine);
                if p.is_empty() {
                    0..0
                } else {
                    p.start - starts[i]..p.end - starts[i]
                }
            })
            .collect();
        let engine = Sharded {
            opt,
            rank,
            bounds,
            starts,
            clip_norm: cfg.clip_norm,
            lens: lens_of,
            gathered: None,
            params: vec![],
            local_pieces,
        };
        let (names, vars): (Vec<String>, Vec<_>) = named.into_iter().unzip();
        let mut vo = VarOptimizer {
            names,
            vars,
            opt: Engine::Sharded(Box::new(engine)),
            base_rates: None,
            scale: 1.0,
            schedule: None,
            reported: 0,
        };
        vo.reported = super::own_rate_index(&vo.names, &cfg.groups, vo.opt.learning_rates().len());
        let rates: Option<Vec<f64>> = vo.opt.learning_rates().into_iter().collect();
        vo.base_rates = rates.filter(|r| !r.is_empty());
        if cfg.schedule.is_some() && vo.base_rates.is_none() {
            return Err(Error::Param(format!(
                "`{}` has no constant learning rate a schedule can scale",
                cfg.optimizer
            )));
        }
        vo.schedule = cfg.schedule.clone();
        Ok(vo)
    }

    /// Every rank's range of the flat parameter space when the optimizer is sharded.
    pub fn shard_bounds(&self) -> Option<&[Range<usize>]> {
        match &self.opt {
            Engine::Sharded(s) => Some(&s.bounds),
            _ => None,
        }
    }

    /// The sum of squares of each variable's gradient in `shard` (this rank's range of the
    /// reduce-scattered gradient), 0 for a variable outside it.
    pub fn shard_sums_of_squares(&self, shard: &[f32]) -> Result<Vec<f64>> {
        let Engine::Sharded(s) = &self.opt else { return Err(Error::Param("the optimizer is not sharded".into())) };
        let at = s.mine().start;
        Ok((0..self.vars.len())
            .map(|i| {
                let p = s.piece(i);
                if p.is_empty() {
                    0.0
                } else {
                    descent_core::transforms::sum_sq(&shard[p.start - at..p.end - at])
                }
            })
            .collect())
    }

    /// One step of a sharded optimizer from this rank's range of the step's gradient (summed
    /// over the ranks), whose global L2 norm over all ranks is `norm`: the clipping by that norm,
    /// the optimizer's step on this rank's range of the parameters, and the all-gather of the
    /// parameters into every rank's variables. Every rank calls it. With a schedule in the
    /// config, sets the learning-rate multiplier first.
    pub fn step_shard(&mut self, comm: &dyn Communicator, shard: &mut [f32], norm: f64) -> Result<bool> {
        let bounds = self.shard_bounds().map(|b| b.to_vec()).unwrap_or_default();
        let params = self.step_shard_local(shard, norm)?;
        comm.all_gather(params, &bounds)?;
        self.write_gathered()?;
        Ok(true)
    }

    /// The first half of [`VarOptimizer::step_shard`], without communication: the clipping and
    /// the optimizer's step on this rank's range of the variables, in place. Returns the flat
    /// parameters holding this rank's range of the stepped values (the other ranges as the last
    /// all-gather left them), to all-gather over [`VarOptimizer::shard_bounds`] and write into
    /// the variables with [`VarOptimizer::write_gathered`].
    pub fn step_shard_local(&mut self, shard: &mut [f32], norm: f64) -> Result<&mut [f32]> {
        self.apply_schedule()?;
        let n = self.flat_len();
        let Engine::Sharded(s) = &mut self.opt else {
            return Err(Error::Param("the optimizer is not sharded: step it with VarOptimizer::step_flat".into()));
        };
        let mine = s.mine();
        if shard.len() != mine.len() {
            return Err(Error::Param(format!(
                "{} gradient values for this rank's {} parameters",
                shard.len(),
                mine.len()
            )));
        }
        if let Some(max) = s.clip_norm {
            // As optax's clip_by_global_norm (ClipByGlobalNorm): g · max/‖g‖ unless ‖g‖ < max
            // (a NaN norm clips, to NaN).
            let within = norm < max;
            if !within {
                let scale = (max / norm) as f32;
                shard.iter_mut().for_each(|g| *g *= scale);
            }
        }
        // The pieces are this rank's range end to end: its gradient is the shard, read in place.
        let stepped =
            Self::step_pieces(&self.vars, &self.names, &mut s.opt, StepGrads::Flat(shard), Some(&s.local_pieces))?;
        if !stepped {
            // (Not under the loop's policy, which passes non-finite values on.) This rank fails,
            // which ends every rank, rather than leave the ranks' parameters apart.
            return Err(Error::Param(
                "this rank skipped its step (non-finite gradients): the ranks would disagree".into(),
            ));
        }
        s.params.resize(n, 0.0);
        for (i, (v, name)) in self.vars.iter().zip(&self.names).enumerate() {
            let p = s.local_pieces[i].clone();
            if p.is_empty() {
                continue;
            }
            let (storage, layout) = v.as_tensor().storage_and_layout();
            let values = storage_f32s(&storage, layout, name)?;
            let at = s.starts[i] + p.start;
            s.params[at..at + p.len()].copy_from_slice(&values[p]);
        }
        Ok(&mut s.params)
    }

    /// The second half of [`VarOptimizer::step_shard`], after the all-gather of the flat
    /// parameters [`VarOptimizer::step_shard_local`] returned: the other ranks' ranges written
    /// into the variables (this rank's are there already).
    pub fn write_gathered(&self) -> Result<()> {
        let Engine::Sharded(s) = &self.opt else { return Err(Error::Param("the optimizer is not sharded".into())) };
        if s.params.len() != self.flat_len() {
            return Err(Error::Param("write_gathered before step_shard_local".into()));
        }
        for (i, (v, name)) in self.vars.iter().zip(&self.names).enumerate() {
            let (start, len) = (s.starts[i], v.elem_count());
            let own = &s.local_pieces[i];
            // The variable's values before this rank's piece and after it (all of them when it
            // has none).
            let (head, tail) = if own.is_empty() { (0..len, len..len) } else { (0..own.start, own.end..len) };
            for r in [head, tail] {
                if !r.is_empty() {
                    let values = &s.params[start + r.start..start + r.end];
                    v.as_tensor().inplace_op1(&WriteValues { values, at: Some(r.start), name })?;
                }
            }
        }
        Ok(())
    }

    /// Gathers a sharded optimizer's whole state on rank 0, as one process holds it, for the
    /// checkpoint rank 0 takes next ([`VarOptimizer::state_dict`] returns it once); every rank
    /// calls it. Checks that the ranks agree on the state's scalars and counters. Nothing for an
    /// optimizer that is not sharded.
    pub fn gather_state(&mut self, comm: &dyn Communicator) -> Result<()> {
        let Engine::Sharded(s) = &mut self.opt else { return Ok(()) };
        let mut dict = s.opt.state_dict()?;
        let size = s.bounds.len();
        let mut send = vec![];
        for (key, lens) in &s.lens {
            let b = dict.buffers.remove(key).ok_or_else(|| Error::Param(format!("state buffer `{key}` is gone")))?;
            if b.len() != lens[s.rank] {
                return Err(Error::Param(format!("state buffer `{key}` changed its length")));
            }
            send.extend_from_slice(&b);
        }
        let counts: Vec<usize> = (0..size).map(|r| s.lens.values().map(|l| l[r]).sum()).collect();
        let all = comm.gather_to(&send, &counts, 0)?;
        // Scalars and counters: the same on every rank (the step's, not the data's).
        let own = serde_json::to_vec(&(&dict.scalars, &dict.counters)).map_err(|e| Error::Param(e.to_string()))?;
        let mut first = own.clone();
        comm.broadcast_bytes(&mut first, 0)?;
        if any(comm, first != own)? {
            return Err(Error::Param(format!("{FLAG}: the ranks' optimizer scalars or counters differ")));
        }
        if s.rank == 0 {
            let mut at = 0;
            let mut parts: Vec<Vec<&[f32]>> = vec![vec![]; s.lens.len()];
            for r in 0..size {
                for (k, lens) in s.lens.values().enumerate() {
                    parts[k].push(&all[at..at + lens[r]]);
                    at += lens[r];
                }
            }
            for (key, p) in s.lens.keys().zip(parts) {
                dict.buffers.insert(key.clone(), p.concat());
            }
            s.gathered = Some(dict);
        }
        Ok(())
    }

    /// This rank's part of a whole state (as one process saves it) for a sharded optimizer.
    pub(super) fn shard_state(s: &Sharded, dict: &StateDict) -> Result<StateDict> {
        let mut out =
            StateDict { buffers: BTreeMap::new(), scalars: dict.scalars.clone(), counters: dict.counters.clone() };
        if let Some(extra) = dict.buffers.keys().find(|k| !s.lens.contains_key(*k)) {
            return Err(descent_core::Error::State(format!("unexpected state buffer `{extra}`")).into());
        }
        for (key, lens) in &s.lens {
            let whole = dict
                .buffers
                .get(key)
                .ok_or_else(|| descent_core::Error::State(format!("missing state buffer `{key}`")))?;
            let total: usize = lens.iter().sum();
            if whole.len() != total {
                return Err(descent_core::Error::State(format!(
                    "state buffer `{key}` holds {} values, the optimizer {total}",
                    whole.len()
                ))
                .into());
            }
            let from: usize = lens[..s.rank].iter().sum();
            out.buffers.insert(key.clone(), whole[from..from + lens[s.rank]].to_vec());
        }
        Ok(out)
    }

    /// Frees the state [`VarOptimizer::gather_state`] gathered on rank 0 (after its checkpoint),
    /// so that rank 0 too holds only its range between checkpoints.
    pub fn release_gathered(&mut self) {
        if let Engine::Sharded(s) = &mut self.opt {
            s.gathered = None;
        }
    }

    /// The state gathered by [`VarOptimizer::gather_state`].
    pub(super) fn gathered_state(s: &Sharded) -> Result<StateDict> {
        s.gathered.clone().ok_or_else(|| {
            Error::Param(format!(
                "{FLAG}: the optimizer state is cut across the ranks: gather it on rank 0 (VarOptimizer::gather_state on every rank) before taking its state"
            ))
        })
    }
}
