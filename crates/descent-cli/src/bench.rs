//! `descent bench step`: optimizer steps against the memory roofline of their access pattern.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use descent_core::kernel::{add_assign, prefetch_range, CHUNK, PARALLEL_MIN, PREFETCH_AHEAD, PREFETCH_MIN};
use descent_core::optimizer::Optimizer;
use descent_core::spec::{build_optimizer, lr_key, resolve_optimizer};
use rayon::prelude::*;
use serde_json::{json, Value};

/// AdamW as an optax chain, for the claim that a chain costs what a hand-fused kernel costs.
const ADAMW_CHAIN: (&str, &str) = (
    "optax.chain",
    r#"{"links": [["clip", {"max_delta": 1.0}], ["scale_by_adam", {}], ["add_decayed_weights", {"weight_decay": 0.01}], ["scale_by_learning_rate", {"learning_rate": 0.001}]]}"#,
);

/// The optimizers `--optimizer all` measures: every elementwise one of the catalogue and the
/// reduction-based ones that apply to flat buffers, each with the settings that make it typical.
pub const ALL: &[(&str, &str)] = &[
    ("sgd", r#"{"lr": 0.01}"#),
    ("sgd", r#"{"lr": 0.01, "momentum": 0.9}"#),
    ("sgd", r#"{"lr": 0.01, "momentum": 0.9, "nesterov": true, "weight_decay": 1e-4}"#),
    ("adam", r#"{"lr": 0.001}"#),
    ("adamw", r#"{"lr": 0.001}"#),
    ("nadam", r#"{"lr": 0.001}"#),
    ("radam", r#"{"lr": 0.001}"#),
    ("adamax", r#"{"lr": 0.001}"#),
    ("adagrad", r#"{"lr": 0.01}"#),
    ("rmsprop", r#"{"lr": 0.001}"#),
    ("adadelta", r#"{"lr": 1.0}"#),
    ("lion", r#"{"learning_rate": 0.0001}"#),
    ("adan", r#"{"learning_rate": 0.001}"#),
    ("adabelief", r#"{"learning_rate": 0.001}"#),
    ("yogi", r#"{"learning_rate": 0.001}"#),
    ("sign_sgd", r#"{"learning_rate": 0.001}"#),
    ("signum", r#"{"learning_rate": 0.001}"#),
    ("schedule_free_adamw", r#"{"learning_rate": 0.001}"#),
    ("schedule_free_sgd", r#"{"learning_rate": 0.1}"#),
    ("descent.adamw8bit", r#"{"lr": 0.001}"#),
    ("optax.adamw", r#"{"learning_rate": 0.001}"#),
    ("optax.adamw", r#"{"learning_rate": 0.001, "mu_dtype": "bfloat16"}"#),
    ("lamb", r#"{"learning_rate": 0.001}"#),
    ("lars", r#"{"learning_rate": 0.1}"#),
    ("optax.adafactor", r#"{"learning_rate": 0.01}"#),
    ("torch.adafactor", r#"{"lr": 0.01}"#),
    ADAMW_CHAIN,
    (
        "optax.chain",
        r#"{"links": [["clip_by_global_norm", {"max_norm": 1.0}], ["scale_by_adam", {}], ["add_decayed_weights", {"weight_decay": 0.01}], ["scale_by_learning_rate", {"learning_rate": 0.001}]]}"#,
    ),
];

/// Settings of one benchmark run.
pub struct StepBench {
    pub optimizer: String,
    /// Keyword arguments for a single `optimizer` (the library's own names).
    pub hparams: Value,
    pub params: usize,
    pub tensors: usize,
    pub threads: usize,
    pub steps: usize,
}

/// Splits `n` parameters over `k` tensors of realistic, uneven sizes (a few large matrices, a tail
/// of small ones), summing to `n`.
fn split_sizes(n: usize, k: usize) -> Vec<usize> {
    if k <= 1 {
        return vec![n];
    }
    // One element each, the rest shared by weights 1, 1/4, 1/9, … repeating every 7 tensors.
    let weights: Vec<f64> = (0..k).map(|i| 1.0 / (1.0 + (i % 7) as f64).powi(2)).collect();
    let total: f64 = weights.iter().sum();
    let rest = n - k;
    let mut sizes: Vec<usize> = weights.iter().map(|w| 1 + ((w / total) * rest as f64) as usize).collect();
    let assigned: usize = sizes.iter().sum();
    sizes[0] += n - assigned;
    sizes
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The roofline kernel: the same buffers read and written as by an optimizer with `k` state
/// buffers (read p, g and the state; write p and the state), with `x += g` as the arithmetic, in
/// one loop over every buffer at once, split across threads in the optimizer's chunks.
fn roofline_step(p: &mut [Vec<f32>], g: &[Vec<f32>], state: &mut [Vec<Vec<f32>>]) {
    for t in 0..p.len() {
        let n = p[t].len();
        let ptrs: Vec<SendPtr> = std::iter::once(SendPtr(p[t].as_mut_ptr()))
            .chain(state.iter_mut().map(|s| SendPtr(s[t].as_mut_ptr())))
            .collect();
        let gp = &g[t];
        // Prefetching as the fused steps do on a tensor this long, so that the roofline streams
        // at least as well as the optimizers it measures.
        let streaming = n >= PREFETCH_MIN;
        let body = |off: usize, len: usize| {
            // SAFETY: each task touches its own disjoint range of every buffer.
            let mut xs: Vec<&mut [f32]> =
                ptrs.iter().map(|ptr| unsafe { std::slice::from_raw_parts_mut(ptr.0.add(off), len) }).collect();
            roofline_chunk(&mut xs, &gp[off..off + len], streaming);
        };
        if n >= PARALLEL_MIN {
            (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|c| body(c * CHUNK, CHUNK.min(n - c * CHUNK)));
        } else {
            body(0, n);
        }
    }
}

/// `x += g` for every buffer `x`, one loop over all of them, vectorized for the CPU at hand;
/// with `streaming`, every buffer prefetched [`PREFETCH_AHEAD`] elements ahead, as the fused
/// steps prefetch on long tensors.
fn roofline_chunk(xs: &mut [&mut [f32]], g: &[f32], streaming: bool) {
    #[inline(always)]
    fn body<const K: usize>(xs: &mut [&mut [f32]], g: &[f32], streaming: bool) {
        let xs: &mut [&mut [f32]; K] = xs.try_into().expect("K buffers");
        let n = g.len();
        let mut xs = xs.each_mut().map(|x| &mut x[..n]);
        // Eight lanes of the gradient in registers, added to each buffer in turn.
        let body = n - n % 8;
        for j in (0..body).step_by(8) {
            if streaming && j % 64 == 0 {
                prefetch_range(g, j + PREFETCH_AHEAD, 64);
                for x in xs.iter() {
                    prefetch_range(x, j + PREFETCH_AHEAD, 64);
                }
            }
            let gv: [f32; 8] = g[j..j + 8].try_into().expect("8 lanes");
            for x in xs.iter_mut() {
                let x: &mut [f32; 8] = (&mut x[j..j + 8]).try_into().expect("8 lanes");
                for l in 0..8 {
                    x[l] += gv[l];
                }
            }
        }
        for j in body..n {
            for x in xs.iter_mut() {
                x[j] += g[j];
            }
        }
    }
    #[inline(always)]
    fn any(xs: &mut [&mut [f32]], g: &[f32], streaming: bool) {
        match xs.len() {
            1 => body::<1>(xs, g, streaming),
            2 => body::<2>(xs, g, streaming),
            3 => body::<3>(xs, g, streaming),
            4 => body::<4>(xs, g, streaming),
            5 => body::<5>(xs, g, streaming),
            _ => xs.iter_mut().for_each(|x| add_assign(x, g)),
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(xs: &mut [&mut [f32]], g: &[f32], streaming: bool) {
            any(xs, g, streaming)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            return unsafe { avx2(xs, g, streaming) };
        }
    }
    any(xs, g, streaming)
}

/// An optimizer that evaluates the objective itself has no step on given gradients to time.
fn refuse_closure(lib: &str, name: &str) -> Result<()> {
    if descent_core::closure::is_closure_optimizer(lib, name) {
        bail!(
            "`{lib}.{name}` evaluates the objective itself (a closure-driven optimizer): `descent bench step` times \
             steps on given gradients; time it with `descent train`"
        );
    }
    Ok(())
}

/// The optimizer `name` with `hparams` (the learning rate 1e-3 unless they give one) over
/// parameters of these shapes and values, for timing steps on given gradients: closure-driven
/// optimizers are refused. Returns it with its qualified name and the arguments it was built with.
pub(crate) fn bench_optimizer(
    name: &str,
    hparams: &Value,
    shapes: &[Vec<usize>],
    params: &[Vec<f32>],
) -> Result<(Optimizer, String, Value)> {
    let (lib, opt_name) = resolve_optimizer(name)?;
    refuse_closure(lib, &opt_name)?;
    if !hparams.is_object() {
        bail!("--hparams must be a JSON object, got {hparams}");
    }
    let mut hparams = hparams.clone();
    // The bench's rate for optimizers that take one (wrappers and chains have theirs inside).
    if hparams.get(lr_key(lib)).is_none() && descent_core::spec::takes_learning_rate(lib, &opt_name, &hparams) {
        hparams[lr_key(lib)] = json!(1e-3);
    }
    let tx = build_optimizer(lib, &opt_name, &hparams, None, shapes).with_context(|| format!("{name} {hparams}"))?;
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let opt = Optimizer::new(tx, shapes.to_vec(), &views)?;
    Ok((opt, format!("{lib}.{opt_name}"), hparams))
}

/// An optimizer on the benchmark's buffers: the optimizer, its parameters and gradients, its label.
struct Setup {
    opt: Optimizer,
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    label: String,
}

fn setup(name: &str, hparams: &Value, cfg: &StepBench) -> Result<Setup> {
    let sizes = split_sizes(cfg.params, cfg.tensors);
    let shapes: Vec<Vec<usize>> = sizes.iter().map(|&s| vec![s]).collect();
    let params: Vec<Vec<f32>> =
        sizes.iter().map(|&s| (0..s).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect()).collect();
    let grads: Vec<Vec<f32>> =
        sizes.iter().map(|&s| (0..s).map(|i| ((i % 777) as f32 - 388.0) * 1e-4).collect()).collect();
    let (opt, qualified, hparams) = bench_optimizer(name, hparams, &shapes, &params)?;
    Ok(Setup { opt, params, grads, label: format!("{qualified} {hparams}") })
}

/// Nanoseconds a parameter of a step of `a` and of `b`, both best of `cfg.steps`, timed
/// alternately so that both see the same machine.
fn interleaved_ns(a: (&str, &str), b: (&str, &str), cfg: &StepBench) -> Result<(f64, f64)> {
    let parse = |h: &str| serde_json::from_str::<Value>(h).expect("valid table");
    let mut x = setup(a.0, &parse(a.1), cfg)?;
    let mut y = setup(b.0, &parse(b.1), cfg)?;
    let (tx, ty) = best_alternating(
        cfg.steps,
        || Ok(x.opt.step_vecs(&mut x.params, &x.grads).map(drop)?),
        || Ok(y.opt.step_vecs(&mut y.params, &y.grads).map(drop)?),
    )?;
    let n = x.params.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    Ok((1e9 * tx / n, 1e9 * ty / n))
}

/// The best of `steps` timings of `a` and of `b`, after one untimed call of each (no page fault
/// lands in a timed one), timed alternately: both see the same machine state, and the minimum
/// is the least disturbed measurement of each.
fn best_alternating(
    steps: usize,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    a()?;
    b()?;
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..steps {
        let t0 = Instant::now();
        a()?;
        ta = ta.min(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        b()?;
        tb = tb.min(t0.elapsed().as_secs_f64());
    }
    Ok((ta, tb))
}

fn bench_one(name: &str, hparams: &Value, cfg: &StepBench) -> Result<Value> {
    let sizes = split_sizes(cfg.params, cfg.tensors);
    let Setup { mut opt, mut params, grads, label } = setup(name, hparams, cfg)?;

    // Full-size state buffers per parameter decide the roofline's access pattern (f32 buffers: for
    // quantized state, the f32 step it replaces); the bytes moved count the state as stored. The
    // state's values per parameter, rounded down, so that per-tensor scalars (and tensors of equal
    // sizes, with many tensors) do not count as buffers.
    let state = opt.state_dict()?;
    let k = state.buffers.values().map(|b| b.len()).sum::<usize>() / cfg.params;
    let state_bytes = opt.stored_state_bytes() as f64 / cfg.params as f64;
    let bytes = 12.0 + 2.0 * state_bytes;

    // The roofline's own buffers, touched once so that no page fault lands in a timed step.
    let mut rstate: Vec<Vec<Vec<f32>>> = (0..k).map(|_| sizes.iter().map(|&s| vec![1.0f32; s]).collect()).collect();
    let mut rparams = params.clone();
    let (step_s, roof_s) = best_alternating(
        cfg.steps,
        || Ok(opt.step_vecs(&mut params, &grads).map(drop)?),
        || {
            roofline_step(&mut rparams, &grads, &mut rstate);
            Ok(())
        },
    )?;
    let n = cfg.params as f64;
    Ok(json!({
        "optimizer": label,
        "params": cfg.params,
        "tensors": sizes.len(),
        "threads": cfg.threads,
        "state_buffers": k,
        "state_bytes_per_param": state_bytes,
        "bytes_per_param": bytes,
        "ns_per_param": step_s * 1e9 / n,
        "params_per_s": n / step_s,
        "gb_per_s": n * bytes / step_s / 1e9,
        "roofline_params_per_s": n / roof_s,
        "fraction_of_roofline": roof_s / step_s,
    }))
}

/// The memory this process can have now: the machine's (`MemAvailable` of `/proc/meminfo`), or
/// less under an address-space limit (`ulimit -v`: the limit less what the process has mapped),
/// where the system says them.
pub(crate) fn available_memory() -> Option<u64> {
    let kib_of = |text: &str, key: &str| -> Option<u64> {
        text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse::<u64>().ok()?.checked_mul(1024)
    };
    let machine = kib_of(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:");
    let limited = address_space_limit().and_then(|limit| {
        let mapped = kib_of(&std::fs::read_to_string("/proc/self/status").ok()?, "VmSize:")?;
        Some(limit.saturating_sub(mapped))
    });
    match (machine, limited) {
        (Some(m), Some(l)) => Some(m.min(l)),
        (m, l) => m.or(l),
    }
}

/// The soft limit of the process's address space (`RLIMIT_AS`), where there is one.
#[cfg(target_os = "linux")]
fn address_space_limit() -> Option<u64> {
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    unsafe extern "C" {
        fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
    }
    const RLIMIT_AS: i32 = 9;
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: `r` is a valid `struct rlimit` (two 64-bit counts on 64-bit Linux) for the call.
    let ok = unsafe { getrlimit(RLIMIT_AS, &mut r) } == 0;
    (ok && r.cur != u64::MAX).then_some(r.cur)
}

#[cfg(not(target_os = "linux"))]
fn address_space_limit() -> Option<u64> {
    None
}

/// Refuses a `--params` whose buffers cannot be held: the parameters, the gradients and the
/// roofline's copy of the parameters (12 bytes a parameter) and the optimizer's state
/// (`state_floats` a parameter, the largest of the optimizers benchmarked), against `available`
/// bytes of memory, instead of an allocation failure's abort.
fn check_memory(params: usize, state_floats: f64, available: Option<u64>) -> Result<()> {
    let need = (params as u64).checked_mul(12).map(|b| b as f64 + 4.0 * state_floats * params as f64);
    match (need, available) {
        (None, _) => bail!("--params {params}: too many parameters to hold in memory"),
        (Some(need), Some(have)) if need > have as f64 => bail!(
            "--params {params}: the parameters, gradients, the roofline's copy and {} floats of optimizer state a \
             parameter take {:.1} GB, more than the {:.1} GB of memory available",
            crate::show::Num(state_floats),
            need / 1e9,
            have as f64 / 1e9
        ),
        _ => Ok(()),
    }
}

/// Runs the benchmark and prints the table and one JSON line per optimizer.
pub fn run(cfg: &StepBench) -> Result<()> {
    crate::flags::at_least_one(&[
        ("--params", cfg.params as u64),
        ("--tensors", cfg.tensors as u64),
        ("--steps", cfg.steps as u64),
        ("--threads", cfg.threads as u64),
    ])?;
    if cfg.tensors > cfg.params {
        bail!("--tensors ({}) cannot exceed --params ({})", cfg.tensors, cfg.params);
    }
    if cfg.optimizer == "all" && cfg.hparams.as_object().is_some_and(|h| !h.is_empty()) {
        bail!("--hparams with --optimizer all: each optimizer of the table runs with its own arguments; name the optimizer the arguments are for");
    }
    let list: Vec<(String, Value)> = if cfg.optimizer == "all" {
        ALL.iter().map(|(n, h)| (n.to_string(), serde_json::from_str(h).expect("valid table"))).collect()
    } else {
        vec![(cfg.optimizer.clone(), cfg.hparams.clone())]
    };
    for (name, _) in &list {
        let (lib, opt_name) = resolve_optimizer(name)?;
        refuse_closure(lib, &opt_name)?;
    }
    let state = list.iter().map(|(n, h)| crate::train::state_floats_per_param(n, h)).fold(0.0, f64::max);
    check_memory(cfg.params, state, available_memory())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cfg.threads).build()?;
    let mut lines = vec![];
    for (name, h) in list {
        let r = pool.install(|| bench_one(&name, &h, cfg))?;
        // The header once the first optimizer has run: a refused one prints its error alone.
        if lines.is_empty() {
            println!(
                "{} parameters in {} tensor(s), {} thread(s), best of {} steps; roofline = same buffers, same pattern, x += g",
                cfg.params, cfg.tensors, cfg.threads, cfg.steps
            );
            println!(
                "{:<34} {:>9} {:>10} {:>8} {:>8} {:>11}",
                "optimizer", "ns/param", "Gparam/s", "B/param", "GB/s", "of roofline"
            );
        }
        // Whole (two rows of one optimizer differ only in their arguments), the columns after a
        // long one pushed right.
        println!(
            "{:<34} {:>9.3} {:>10.3} {:>8.1} {:>8.1} {:>10.0}%",
            r["optimizer"].as_str().unwrap_or(""),
            r["ns_per_param"].as_f64().unwrap_or(0.0),
            r["params_per_s"].as_f64().unwrap_or(0.0) / 1e9,
            r["bytes_per_param"].as_f64().unwrap_or(0.0),
            r["gb_per_s"].as_f64().unwrap_or(0.0),
            100.0 * r["fraction_of_roofline"].as_f64().unwrap_or(0.0)
        );
        lines.push(r);
    }
    // The composability claim and the reduced-precision states, each timed alternately against
    // the f32 step it stands for (a separate run of the table drifts with the machine).
    if cfg.optimizer == "all" {
        let adamw = ("optax.adamw", r#"{"learning_rate": 0.001}"#);
        let pairs = [
            (
                "chain(clip, scale_by_adam, add_decayed_weights, scale_by_learning_rate) / torch.adamw",
                ("torch.adamw", r#"{"lr": 0.001}"#),
                ADAMW_CHAIN,
            ),
            (
                "optax.adamw with bfloat16 first moments / f32",
                adamw,
                ("optax.adamw", r#"{"learning_rate": 0.001, "mu_dtype": "bfloat16"}"#),
            ),
            ("descent.adamw8bit / f32 optax.adamw", adamw, ("descent.adamw8bit", r#"{"lr": 0.001}"#)),
        ];
        println!(
            "pairs timed alternately, best of {} steps each (measured apart from the table, so their ns/param differ from its rows):",
            cfg.steps
        );
        for (what, a, b) in pairs {
            let (na, nb) = pool.install(|| interleaved_ns(a, b, cfg))?;
            let r = nb / na;
            println!("{what}: {nb:.3} / {na:.3} ns/param = {r:.2}x the time ({:.2}x the speed)", 1.0 / r);
        }
    }
    for r in lines {
        println!("{r}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_sum_to_the_total() {
        for (n, k) in [(50_000_000, 1), (50_000_000, 10), (1000, 7), (10, 10)] {
            let s = split_sizes(n, k);
            assert_eq!(s.len(), k);
            assert_eq!(s.iter().sum::<usize>(), n, "{n} over {k}: {s:?}");
            assert!(s.iter().all(|&x| x >= 1));
        }
    }

    #[test]
    fn a_parameter_count_beyond_memory_is_refused() {
        assert!(check_memory(1_000_000, 2.0, Some(1 << 30)).is_ok());
        assert!(check_memory(1_000_000, 2.0, None).is_ok());
        let e = check_memory(100_000_000_000, 0.0, Some(24 << 30)).unwrap_err().to_string();
        assert!(e.contains("--params 100000000000") && e.contains("1200.0 GB"), "{e}");
        // Adam's two floats a parameter count: 2e9 parameters take 40 GB, not 24.
        assert!(check_memory(2_000_000_000, 0.0, Some(24_400_000_000)).is_ok());
        let e = check_memory(2_000_000_000, 2.0, Some(24_400_000_000)).unwrap_err().to_string();
        assert!(e.contains("40.0 GB") && e.contains("2 floats of optimizer state"), "{e}");
        let e = check_memory(usize::MAX, 0.0, None).unwrap_err().to_string();
        assert!(e.contains("--params") && e.contains("too many"), "{e}");
    }
}
