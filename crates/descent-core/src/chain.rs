//! optax `chain`: transformations applied in sequence, with runs of elementwise links fused into
//! one pass (the fusion planner folds affine links, maps and clipping around one kernel).

use crate::error::{Error, Result};
use crate::kernel::*;
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;
use crate::transform::{Shapes, Transform};

/// Applies transformations in sequence (optax `chain`). Runs of elementwise links are fused: each
/// block of each parameter goes through all of them while it is in cache.
pub struct Chain {
    links: Vec<Box<dyn Transform>>,
    /// The parameters' shapes given to `init`, which a direct `update` is checked against.
    shapes: Option<Vec<Vec<usize>>>,
}

impl Chain {
    /// A `Chain` with these hyper-parameters (`links`), as described above.
    pub fn new(links: Vec<Box<dyn Transform>>) -> Self {
        Chain { links, shapes: None }
    }

    /// One fused elementwise pass covers the whole chain: every link is elementwise and only the
    /// first may need a reduction of its input.
    fn fusable(&self) -> bool {
        self.links.iter().enumerate().all(|(k, l)| l.elementwise().is_some_and(|e| k == 0 || !e.needs_prepare()))
    }
}

/// Shorthand for [`Chain::new`].
pub fn chain(links: Vec<Box<dyn Transform>>) -> Box<dyn Transform> {
    Box::new(Chain::new(links))
}

impl Chain {
    /// The end of the fused run of elementwise links that starts at link `k`: it extends while
    /// the links are elementwise and need no reduction of their input.
    fn run_end(&self, k: usize) -> usize {
        k + 1 + self.links[k + 1..].iter().take_while(|l| l.elementwise().is_some_and(|e| !e.needs_prepare())).count()
    }

    /// Starts the fused run of links `k..end`: the reduction its first link needs of `inputs`
    /// (if any), then every link's `begin_step`.
    /// `norms`: each tensor's `(Σp², Σu²)` of the parameters and `inputs`, when the pass that
    /// wrote the inputs summed them for a first link that [`Elementwise::takes_norms`].
    fn begin_run(&mut self, k: usize, end: usize, inputs: &[&[f32]], params: &[&[f32]], norms: Option<&[(f64, f64)]>) {
        let head = self.links[k].as_elementwise().expect("elementwise link");
        if head.needs_prepare() {
            match norms {
                Some(norms) if head.takes_norms() => head.prepare_from_norms(norms),
                _ => head.prepare(inputs, params),
            }
        }
        for l in self.links[k..end].iter_mut() {
            l.as_elementwise().expect("elementwise link").begin_step();
        }
    }

    /// The rest of a step whose first link is the map `heads[i]` of the gradients (begun
    /// already): the second link's reduction reads the mapped gradients on the fly, then the
    /// remaining links run as one fused step with the map as their head.
    fn step_after_head(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], heads: &[Option<Head>]) -> Result<()> {
        {
            let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
            let e = self.links[1].as_elementwise().expect("elementwise link");
            e.prepare_mapped(grads, &views, heads);
        }
        for l in self.links[1..].iter_mut() {
            l.as_elementwise().expect("elementwise link").begin_step();
        }
        let run = ChainRun(&self.links[1..]);
        for (i, p) in params.iter_mut().enumerate() {
            let g = grads[i];
            let fold = Fold { head: heads[i], ..Fold::for_len(p.len()) };
            // SAFETY: chunks are disjoint ranges of parameter `i`.
            for_chunks(p, |base, chunk| unsafe { run.step(i, base, &g[base..base + chunk.len()], chunk, fold) });
        }
        Ok(())
    }
}

impl Transform for Chain {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        for l in &mut self.links {
            l.visit_learning_rates(f);
        }
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.links.iter_mut().try_for_each(|l| l.init(shapes, params))?;
        self.shapes = Some(shapes.to_vec());
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_updates(updates, params)?;
        // Updates of other parameters than `init` was given would index the links' state out of
        // its ranges.
        let Some(shapes) = &self.shapes else {
            return Err(Error::Invalid("update before init: initialize the transformation first".into()));
        };
        crate::transform::check_sizes("update", shapes, updates)?;
        let mut k = 0;
        while k < self.links.len() {
            if self.links[k].elementwise().is_none() {
                self.links[k].update(updates, params)?;
                k += 1;
                continue;
            }
            let end = self.run_end(k);
            let inputs: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
            self.begin_run(k, end, &inputs, params, None);
            run_elementwise(&ChainRun(&self.links[k..end]), updates, params);
            k = end;
        }
        Ok(())
    }

    /// The runs of [`Chain::update`], with the traffic of the first and last cut: the first
    /// elementwise run reads the gradients themselves (no copy into `updates` first), and a last
    /// elementwise run adds into the parameters in its fused step (no separate add pass).
    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        // Whether `updates` holds the current updates yet; before that they are the gradients.
        let mut materialized = false;
        // The norms the last pass summed for the next run's first link.
        let mut norms: Option<Vec<(f64, f64)>> = None;
        let mut k = 0;
        while k < self.links.len() {
            if self.links[k].elementwise().is_none() {
                if !materialized {
                    copy_into(updates, grads);
                    materialized = true;
                }
                let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
                self.links[k].update(updates, &views)?;
                k += 1;
                continue;
            }
            let end = self.run_end(k);
            // A lone map of the gradient (weight decay in LARS) ahead of a run that needs a
            // reduction of its output and ends the chain: not materialized, but folded into the
            // reduction's read and the last run's step as their head.
            if k == 0
                && end == 1
                && self.links.len() > 1
                && !self.links[0].elementwise().is_some_and(|e| e.needs_prepare())
            {
                let rest = &self.links[1..];
                let last_run = rest.iter().all(|l| l.elementwise().is_some())
                    && rest.iter().skip(1).all(|l| l.elementwise().is_some_and(|e| !e.needs_prepare()));
                if last_run && rest[0].elementwise().is_some_and(|e| e.needs_prepare()) {
                    self.links[0].as_elementwise().expect("elementwise link").begin_step();
                    let first = link(self.links[0].as_ref());
                    let heads: Vec<Option<Head>> = (0..params.len()).map(|i| first.head(i)).collect();
                    if heads.iter().all(|h| h.is_some()) {
                        return self.step_after_head(params, grads, &heads);
                    }
                    // Some parameter has no head form: the link (already begun) runs into `updates`.
                    let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
                    apply_into(first, updates, grads, &views, true);
                    materialized = true;
                    k = 1;
                    continue;
                }
            }
            {
                let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
                let inputs: Vec<&[f32]> =
                    if materialized { updates.iter().map(|u| u.as_slice()).collect() } else { grads.to_vec() };
                self.begin_run(k, end, &inputs, &views, norms.take().as_deref());
            }
            let run = ChainRun(&self.links[k..end]);
            if end == self.links.len() {
                for (i, p) in params.iter_mut().enumerate() {
                    let input: &[f32] = if materialized { &updates[i] } else { grads[i] };
                    // SAFETY: chunks are disjoint ranges of parameter `i`.
                    let fold = Fold::for_len(p.len());
                    for_chunks(p, |base, chunk| unsafe {
                        run.step(i, base, &input[base..base + chunk.len()], chunk, fold)
                    });
                }
                return Ok(());
            }
            let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
            if self.links[end].elementwise().is_some_and(|e| e.needs_prepare() && e.takes_norms()) {
                // LAMB's trust ratio: the norms of the updates and parameters while they are in
                // cache; from the gradients, the run as one fused pass writing the updates.
                norms = Some(if materialized {
                    apply_into_norms(&run, updates, grads, &views, false)
                } else {
                    drop(views);
                    step_into_norms(&run, params, grads, updates)
                });
            } else {
                apply_into(&run, updates, grads, &views, !materialized);
            }
            materialized = true;
            k = end;
        }
        if materialized {
            add_updates(params, updates);
        } else {
            add_updates(params, grads);
        }
        Ok(())
    }

    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        if self.fusable() {
            Some(self)
        } else {
            None
        }
    }

    fn elementwise(&self) -> Option<&dyn Elementwise> {
        if self.fusable() {
            Some(self)
        } else {
            None
        }
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        for (k, l) in self.links.iter_mut().enumerate() {
            v.push(&k.to_string());
            l.visit_state(v)?;
            v.pop();
        }
        Ok(())
    }

    fn eval_params(&self, params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        self.links.iter().rev().find_map(|l| l.eval_params(params))
    }
}

impl Elementwise for Chain {
    fn begin_step(&mut self) {
        for l in self.links.iter_mut() {
            l.as_elementwise().expect("all links are elementwise").begin_step();
        }
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]) {
        ChainRun(&self.links).apply(i, off, u, p)
    }
    fn needs_prepare(&self) -> bool {
        self.links.first().and_then(|l| l.elementwise()).is_some_and(|e| e.needs_prepare())
    }
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        if let Some(e) = self.links.first_mut().and_then(|l| l.as_elementwise()) {
            e.prepare(inputs, params);
        }
    }
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        ChainRun(&self.links).step(i, off, g, p, fold)
    }
    fn needs_whole_blocks(&self) -> bool {
        self.links.iter().any(|l| link(l.as_ref()).needs_whole_blocks())
    }
}

/// The elementwise form of a link of a run known to be elementwise.
fn link(l: &dyn Transform) -> &dyn Elementwise {
    l.elementwise().expect("elementwise link")
}

/// The end of a chain's first link's fused step: the update of each sub-block through the
/// chain's other links in turn, then its map and affine tail, and into the parameters. The same
/// operations in the same order as the block path, so the same bits.
struct ThenLinks<'a> {
    links: &'a [Box<dyn Transform>],
    map: Option<Map>,
    tail: Option<Affine>,
    /// Whether the step prefetches ([`Fold::prefetch`]): then each link's state too.
    prefetch: bool,
}

impl Epilogue for ThenLinks<'_> {
    unsafe fn finish(&self, i: usize, off: usize, u: &mut [f32], p: &mut [f32]) {
        for l in self.links {
            let l = link(l.as_ref());
            if self.prefetch {
                // As the first link's step prefetches its own.
                l.prefetch_state_of(i, off + PREFETCH_AHEAD, u.len());
            }
            l.apply(i, off, u, p);
        }
        #[inline(always)]
        fn end(p: &mut [f32], u: &mut [f32], map: Option<Map>, tail: Option<Affine>) {
            finish_inline(p, u, map, tail)
        }
        let (map, tail) = (self.map, self.tail);
        dispatch_simd!(end(p: &mut [f32], u: &mut [f32], map: Option<Map>, tail: Option<Affine>))
    }
}

/// A run of elementwise links applied one after the other to each block; a tail of affine links
/// (`u ← α·u + β·p`) is composed into one `(α, β)` and applied in a single loop.
struct ChainRun<'a>(&'a [Box<dyn Transform>]);

impl Elementwise for ChainRun<'_> {
    fn begin_step(&mut self) {}
    /// The chain as `prologue → kernel → map → affine tail`: the tail and a pointwise map before
    /// it (sign, clipping) fold into the kernel's fused step, and so does a prologue of maps of
    /// the gradient alone (affine links, or one clip). Any other prologue turns the chain inside
    /// out: the first link's fused step, whose sub-blocks go through the other links as its
    /// epilogue ([`ThenLinks`]); or, where a link needs whole blocks (8-bit state), every link
    /// in turn on block-sized copies of the gradient.
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        let n = self.0.len();
        let k = self.0.iter().rev().take_while(|l| link(l.as_ref()).affine(i).is_some()).count();
        if fold.map.is_some() && k > 0 {
            // The caller's map comes after this chain's tail: no single fold expresses that.
            return step_via_apply(self, i, off, g, p, fold);
        }
        // The chain's tail composed with the caller's: u ← a₂(a₁u + b₁p) + b₂p.
        let own = self.0[n - k..].iter().fold(None, |t: Option<Affine>, l| {
            let (a2, b2) = link(l.as_ref()).affine(i).expect("affine link");
            let (a, b) = t.map_or((1.0, 0.0), |t| (t.a, t.b));
            Some(Affine { a: a2 * a, b: a2 * b + b2 })
        });
        let tail = match (own, fold.tail) {
            (Some(t), Some(o)) => Some(Affine { a: o.a * t.a, b: o.a * t.b + o.b }),
            (t, None) | (None, t) => t,
        };
        let mut end = n - k;
        let mut map = fold.map;
        if map.is_none() && end > 0 {
            map = link(self.0[end - 1].as_ref()).map(i);
            if map.is_some() {
                end -= 1;
            }
        }
        let (kernel, prologue) = match end {
            0 => (None, &self.0[..0]),
            m => (Some(link(self.0[m - 1].as_ref())), &self.0[..m - 1]),
        };
        // The prologue as one head map: an affine link and up to two scalings after it, or one
        // clip; anything else leaves `None` (the block path).
        let head: Option<Option<Head>> = prologue.iter().try_fold(fold.head, |h, l| {
            let e = link(l.as_ref());
            match (h, e.affine(i)) {
                (None, Some((a, b))) => Some(Some(Head::affine(a, b))),
                (Some(head), Some((a, b))) => head.then(a, b).map(Some),
                (None, None) => e.head(i).map(Some),
                _ => None,
            }
        });
        match (kernel, head) {
            (Some(kernel), Some(head)) => return kernel.step(i, off, g, p, Fold { head, map, tail, ..fold }),
            (None, _) => return pointwise_step(i, off, g, p, Fold { map, tail, ..fold }),
            _ => {}
        }
        let (links, whole) = (&self.0[..end], self.0[..end].iter().any(|l| link(l.as_ref()).needs_whole_blocks()));
        if fold.post.is_none() && !whole {
            // The first link's fused step (its sub-blocks in L1, its buffers prefetched), each
            // sub-block of its update then through the other links and the maps after them.
            let then = ThenLinks { links: &links[1..], map, tail, prefetch: fold.prefetch };
            let first = link(links[0].as_ref());
            return first.step(
                i,
                off,
                g,
                p,
                Fold { head: fold.head, map: None, tail: None, post: Some(&then), ..fold },
            );
        }
        let mut scratch = [0.0f32; BLOCK];
        for (b, (pb, gb)) in p.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).enumerate() {
            let u = &mut scratch[..pb.len()];
            start(u, gb, pb, fold.head);
            for l in prologue {
                link(l.as_ref()).apply(i, off + b * BLOCK, u, pb);
            }
            if let Some(kernel) = kernel {
                kernel.step(i, off + b * BLOCK, u, pb, Fold { head: None, map, tail, ..fold });
            }
        }
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]) {
        let n = self.0.len();
        let tail = self.0.iter().rev().take_while(|l| link(l.as_ref()).affine(i).is_some()).count();
        let head = if tail < 2 { n } else { n - tail };
        for l in &self.0[..head] {
            link(l.as_ref()).apply(i, off, u, p);
        }
        if head < n {
            // (α, β) of the composition: u ← α₂(α₁u + β₁p) + β₂p.
            let (a, b) = self.0[head..].iter().fold((1.0f32, 0.0f32), |(a, b), l| {
                let (a2, b2) = link(l.as_ref()).affine(i).expect("affine link");
                (a2 * a, a2 * b + b2)
            });
            affine_pass(u, p, a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::Optimizer;
    use crate::transform::{numel, Transform};
    use crate::transforms::{
        AddDecayedWeights, Clip, ClipByGlobalNorm, ScaleByAdam, ScaleByAdam8bit, ScaleByAdamConfig,
        ScaleByLearningRate, ScaleByOptimisticGradient, Trace,
    };

    fn links() -> Vec<Box<dyn Transform>> {
        vec![
            Box::new(Clip::new(0.8)),
            Box::new(ScaleByAdam::new(ScaleByAdamConfig { nesterov: true, ..Default::default() })),
            Box::new(AddDecayedWeights::new(0.01)),
            Box::new(ClipByGlobalNorm::new(3.0)),
            Box::new(Trace::new(0.5, false)),
            Box::new(ScaleByLearningRate::new(0.1, true)),
        ]
    }

    /// A fused chain (block by block, large tensors across threads) gives exactly what running each
    /// link over whole buffers gives, for sizes that are not multiples of the block or chunk and a
    /// reduction in the middle.
    #[test]
    fn fused_chain_equals_link_by_link() {
        let shapes = vec![vec![3 * BLOCK + 17], vec![5], vec![BLOCK], vec![PARALLEL_MIN + 3 * CHUNK / 2 + 7]];
        let params: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..numel(s)).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect()).collect();
        let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        let mut fused = Chain::new(links());
        let mut separate = links();
        fused.init(&shapes, &views).unwrap();
        for l in separate.iter_mut() {
            l.init(&shapes, &views).unwrap();
        }
        for step in 0..4 {
            let grads: Vec<Vec<f32>> = params
                .iter()
                .map(|p| {
                    p.iter().enumerate().map(|(i, x)| (x * (step + 1) as f32 + (i % 13) as f32 * 0.1).sin()).collect()
                })
                .collect();
            let mut a = grads.clone();
            fused.update(&mut a, &views).unwrap();
            let mut b = grads.clone();
            for l in separate.iter_mut() {
                l.update(&mut b, &views).unwrap();
            }
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert_eq!(x.to_bits(), y.to_bits(), "step {step}: {x} vs {y}");
            }
        }
    }

    /// Stateful links ahead of a chain's kernel (optax's optimistic Adam) run on the first link's
    /// sub-blocks, with the bits of the links one by one; 8-bit state keeps whole blocks.
    #[test]
    fn stateful_links_before_the_kernel_run_on_the_first_ones_sub_blocks_with_the_same_bits() {
        // Adam, then the optimistic step, with a map ahead and a trace after.
        let shapes = vec![vec![PARALLEL_MIN + CHUNK + 5], vec![7], vec![BLOCK + 1], vec![3 * BLOCK]];
        let init: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..numel(s)).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect()).collect();
        for eight_bit in [false, true] {
            let links = || -> Vec<Box<dyn Transform>> {
                let adam: Box<dyn Transform> = if eight_bit {
                    Box::new(ScaleByAdam8bit::new(Default::default()).min_8bit_size(0))
                } else {
                    Box::new(ScaleByAdam::new(ScaleByAdamConfig { nesterov: true, ..Default::default() }))
                };
                vec![
                    Box::new(Clip::new(0.8)),
                    adam,
                    Box::new(ScaleByOptimisticGradient::new(0.3, 0.2)),
                    Box::new(Trace::new(0.5, false)),
                    Box::new(ScaleByLearningRate::new(0.01, true)),
                ]
            };
            let chain = Chain::new(links());
            assert_eq!(chain.elementwise().map(|e| e.needs_whole_blocks()), Some(eight_bit));
            assert_fused_step_equals_links(chain, links(), &shapes, &init, 2);
        }
    }

    /// The optimizer's single fused pass (copy, transform, add per block, across threads) equals
    /// the unfused path that materializes full update buffers.
    #[test]
    fn fused_optimizer_step_equals_unfused() {
        let shapes = vec![vec![PARALLEL_MIN + CHUNK + 5], vec![7], vec![BLOCK + 1]];
        let init: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..numel(s)).map(|i| ((i * 31) % 97) as f32 / 48.0 - 1.0).collect()).collect();
        let views: Vec<&[f32]> = init.iter().map(|p| p.as_slice()).collect();
        let make = |fused: bool| {
            let mut l: Vec<Box<dyn Transform>> = vec![
                Box::new(ScaleByAdam::new(ScaleByAdamConfig::default())),
                Box::new(AddDecayedWeights::new(0.01)),
                Box::new(ScaleByLearningRate::new(0.01, true)),
            ];
            if !fused {
                // A no-op whole-tensor transformation (centralizing 1-D tensors) forces the full-buffer path.
                l.insert(0, Box::new(crate::transforms::Centralize::default()));
            }
            let mut c = Chain::new(l);
            assert_eq!(c.as_elementwise().is_some(), fused);
            Optimizer::new(Box::new(c), shapes.clone(), &views).unwrap()
        };
        let (mut a, mut b) = (make(true), make(false));
        let (mut pa, mut pb) = (init.clone(), init.clone());
        for step in 0..3 {
            let g: Vec<Vec<f32>> =
                init.iter().map(|p| p.iter().map(|x| (x * (step + 2) as f32).cos()).collect()).collect();
            a.step_vecs(&mut pa, &g).unwrap();
            b.step_vecs(&mut pb, &g).unwrap();
        }
        for (x, y) in pa.iter().flatten().zip(pb.iter().flatten()) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    /// Global-norm clipping at the head of a chain runs fused (a read-only norm pass, then one
    /// pass) and gives exactly what the link-by-link path gives; elsewhere in a chain it splits
    /// the fused runs.
    #[test]
    fn global_norm_clip_fuses_at_the_head_of_a_chain() {
        let shapes = vec![vec![PARALLEL_MIN + 11], vec![3]];
        let init: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..numel(s)).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect()).collect();
        let links = || -> Vec<Box<dyn Transform>> {
            vec![
                Box::new(ClipByGlobalNorm::new(1.0)),
                Box::new(ScaleByAdam::new(ScaleByAdamConfig::default())),
                Box::new(ScaleByLearningRate::new(0.01, true)),
            ]
        };
        let mut head = Chain::new(links());
        assert!(head.as_elementwise().is_some());
        let mut tail = links();
        tail.rotate_left(1);
        assert!(Chain::new(tail).as_elementwise().is_none());

        assert_fused_step_equals_links(head, links(), &shapes, &init, 3);
    }

    /// Three optimizer steps of `chain` fused (one pass from the gradients into the parameters)
    /// give bit for bit what its `links` give one by one through full update buffers, on
    /// gradients `sin(p·(step + phase))`.
    fn assert_fused_step_equals_links(
        chain: Chain,
        mut links: Vec<Box<dyn Transform>>,
        shapes: &[Vec<usize>],
        init: &[Vec<f32>],
        phase: usize,
    ) {
        let views: Vec<&[f32]> = init.iter().map(|p| p.as_slice()).collect();
        let mut fused = Optimizer::new(Box::new(chain), shapes.to_vec(), &views).unwrap();
        for l in links.iter_mut() {
            l.init(shapes, &views).unwrap();
        }
        let (mut pa, mut pb) = (init.to_vec(), init.to_vec());
        for step in 0..3 {
            let g: Vec<Vec<f32>> =
                init.iter().map(|p| p.iter().map(|x| (x * (step + phase) as f32).sin()).collect()).collect();
            fused.step_vecs(&mut pa, &g).unwrap();
            let mut u = g.clone();
            let pv: Vec<&[f32]> = pb.iter().map(|p| p.as_slice()).collect();
            for l in links.iter_mut() {
                l.update(&mut u, &pv).unwrap();
            }
            for (p, d) in pb.iter_mut().zip(&u) {
                p.iter_mut().zip(d).for_each(|(x, d)| *x += d);
            }
        }
        for (x, y) in pa.iter().flatten().zip(pb.iter().flatten()) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    /// A tail of affine links (weight decay, learning rate) is folded into one pass; the result
    /// equals applying them one by one up to rounding (a few ulps).
    #[test]
    fn folded_affine_tail_matches_link_by_link() {
        let shapes = vec![vec![BLOCK * 2 + 3]];
        let init: Vec<Vec<f32>> = vec![(0..numel(&shapes[0])).map(|i| (i as f32 * 0.37).sin()).collect()];
        let views: Vec<&[f32]> = init.iter().map(|p| p.as_slice()).collect();
        let links = || -> Vec<Box<dyn Transform>> {
            vec![
                Box::new(ScaleByAdam::new(ScaleByAdamConfig::default())),
                Box::new(AddDecayedWeights::new(0.05)),
                Box::new(ScaleByLearningRate::new(0.01, true)),
            ]
        };
        let mut folded = Chain::new(links());
        let mut separate = links();
        folded.init(&shapes, &views).unwrap();
        separate.iter_mut().for_each(|l| l.init(&shapes, &views).unwrap());
        let g: Vec<Vec<f32>> = init.iter().map(|p| p.iter().map(|x| x.cos()).collect()).collect();
        let (mut a, mut b) = (g.clone(), g.clone());
        folded.update(&mut a, &views).unwrap();
        separate.iter_mut().for_each(|l| l.update(&mut b, &views).unwrap());
        for (x, y) in a[0].iter().zip(&b[0]) {
            assert!((x - y).abs() <= 4.0 * f32::EPSILON * y.abs().max(1e-30), "{x} vs {y}");
        }
    }

    #[test]
    fn an_all_elementwise_chain_is_itself_elementwise() {
        let mut c = Chain::new(vec![Box::new(Clip::new(1.0)), Box::new(ScaleByLearningRate::new(0.1, true))]);
        assert!(c.as_elementwise().is_some());
        let mut c = Chain::new(links());
        assert!(c.as_elementwise().is_none());
    }
}
