//! `descent bench step --model`: one optimizer step on a model's parameter set (its tensors'
//! names and shapes, random gradients), for optimizers whose cost depends on the shapes (matrix
//! preconditioners, orthogonalization), each timed alternately against AdamW.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;
use descent_core::optimizer::Optimizer;
use descent_core::spec::resolve_optimizer;
use descent_train::gpt::{Gpt, GptConfig};
use descent_train::model::{Init, Model};
use descent_train::rng::Rng;
use descent_train::text::CharCorpus;
use serde_json::{json, Value};

use crate::train::{model_of, Arch, DEFAULT_TEXT};

/// The models whose parameter sets `--model` takes.
pub const MODELS: &[&str] = &["gpt", "lenet", "mlp"];

/// What `--model` times by default: AdamW (the baseline), then the shape-aware optimizers.
pub const DEFAULT_OPTIMIZERS: &[&str] = &["torch.adamw", "po.kron", "po.soap", "po.shampoo", "optax.contrib.muon"];

/// The optimizer every row is timed against.
const BASELINE: &str = "torch.adamw";

/// Settings of `descent bench step --model`.
pub struct ModelBench {
    pub model: String,
    /// Registry names (`all`: [`DEFAULT_OPTIMIZERS`]).
    pub optimizers: Vec<String>,
    /// Keyword arguments given to every optimizer of the list but AdamW's baseline (the library's
    /// own names); the learning rate defaults to 1e-3.
    pub hparams: Value,
    pub threads: usize,
    /// Timed steps of each optimizer (each after one untimed first step).
    pub steps: usize,
}

/// The parameters of `model` by PyTorch's names, with their shapes: the GPT of nanoGPT's CPU
/// recipe (4 layers, 4 heads, 128 wide, block 64, the bundled text's characters), LeNet-5 and
/// the MNIST MLP at their training defaults.
pub fn model_shapes(model: &str) -> Result<Vec<(String, Vec<usize>)>> {
    let mut rng = Rng::new(0);
    let vars = match model {
        "gpt" => {
            let corpus = CharCorpus::load(DEFAULT_TEXT)?;
            Gpt::new(GptConfig::new(corpus.vocab_size(), 64, 4, 4, 128), &mut rng, &Device::Cpu)?.named_vars()
        }
        "lenet" | "mlp" => model_of(model, Arch::default(), Init::TorchDefault, 0.0, &mut rng)?.named_vars(),
        other => bail!("--model {other}: unknown model; accepted: {}", MODELS.join(", ")),
    };
    Ok(vars.into_iter().map(|(name, v)| (name, v.dims().to_vec())).collect())
}

/// An optimizer on the model's shapes with its own parameters and a few sets of random
/// gradients, used in turn.
struct Run {
    opt: Optimizer,
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<Vec<f32>>>,
    next: usize,
    label: String,
    /// Seconds of each timed step.
    times: Vec<f64>,
}

impl Run {
    fn new(name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> Result<Run> {
        let mut rng = Rng::new(1);
        let mut random = |scale: f32| -> Vec<Vec<f32>> {
            shapes.iter().map(|s| (0..s.iter().product::<usize>()).map(|_| scale * rng.normal()).collect()).collect()
        };
        let params = random(0.02);
        let grads: Vec<Vec<Vec<f32>>> = (0..4).map(|_| random(1e-2)).collect();
        let (opt, label, _) = crate::bench::bench_optimizer(name, hparams, shapes, &params)?;
        Ok(Run { opt, params, grads, next: 0, label, times: vec![] })
    }

    /// One step on the next set of gradients, timed when `timed`.
    fn step(&mut self, timed: bool) -> Result<()> {
        let g = &self.grads[self.next % self.grads.len()];
        self.next += 1;
        let t0 = Instant::now();
        self.opt.step_vecs(&mut self.params, g)?;
        if timed {
            self.times.push(t0.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// The mean of the timed steps, in ms: the amortized cost, preconditioner updates included.
    fn mean_ms(&self) -> f64 {
        1e3 * self.times.iter().sum::<f64>() / self.times.len().max(1) as f64
    }

    /// The median of the timed steps, in ms: for AdamW, whose steps all do the same work, the
    /// cost without the preemptions of a shared machine.
    fn median_ms(&self) -> f64 {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        match t.len() {
            0 => 0.0,
            n if !n.is_multiple_of(2) => 1e3 * t[n / 2],
            n => 1e3 * (t[n / 2 - 1] + t[n / 2]) / 2.0,
        }
    }
}

/// How often each optimizer of the default list updates its preconditioner by default (the
/// library's defaults, which the benchmark keeps).
fn frequency_note(label: &str, hparams: &serde_json::Value) -> Option<String> {
    // The optimizer's own setting where --hparams gives it, else the library's default.
    let given = |key: &str, default: u64| hparams.get(key).and_then(|v| v.as_u64()).unwrap_or(default);
    Some(match label {
        "po.kron" => match hparams.get("pre_conditioner_update_probability") {
            Some(p) => format!("preconditioner updated with probability {p} at each step (pre_conditioner_update_probability)"),
            None => "preconditioner updated with probability 1 for the first 500 steps (pre_conditioner_update_probability: \
                     the library's schedule, decaying to 0.03 after), so every timed step updates it"
                .into(),
        },
        "po.soap" => {
            let f = given("precondition_frequency", 10);
            format!("eigenbases refreshed every {f} steps (precondition_frequency {f}), Adam in the rotated basis every step")
        }
        "po.shampoo" => {
            let k = given("preconditioning_compute_steps", 1);
            format!("preconditioners recomputed every {k} step(s) (preconditioning_compute_steps {k})")
        }
        "optax.contrib.muon" => {
            let n = given("ns_steps", 5);
            format!("Newton-Schulz orthogonalization (ns_steps {n}) every step on matrices, Adam elsewhere")
        }
        _ => return None,
    })
}

/// Runs the benchmark and prints the table and one JSON line per optimizer.
pub fn run(cfg: &ModelBench) -> Result<()> {
    crate::flags::at_least_one(&[("--steps", cfg.steps as u64), ("--threads", cfg.threads as u64)])?;
    let named = model_shapes(&cfg.model)?;
    let shapes: Vec<Vec<usize>> = named.iter().map(|(_, s)| s.clone()).collect();
    let params: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let all = cfg.optimizers.iter().any(|o| o == "all");
    if all && cfg.optimizers.len() > 1 {
        bail!(
            "--optimizer {}: `all` is the default list ({}); give it alone, or name each optimizer",
            cfg.optimizers.join(","),
            DEFAULT_OPTIMIZERS.join(", ")
        );
    }
    if all && cfg.hparams.as_object().is_some_and(|h| !h.is_empty()) {
        bail!("--hparams with --optimizer all: each optimizer of the list runs with its library's defaults; name the optimizers the arguments are for");
    }
    let names: Vec<String> =
        if all { DEFAULT_OPTIMIZERS.iter().map(|s| s.to_string()).collect() } else { cfg.optimizers.clone() };
    // One row an optimizer: an alias of one already listed (adam, torch.adam) is the same row.
    let mut seen: Vec<(String, String)> = vec![];
    for name in &names {
        let resolved = resolve_optimizer(name)?;
        let key = (resolved.0.to_string(), resolved.1.to_string());
        if let Some(k) = seen.iter().position(|s| *s == key) {
            bail!("--optimizer: {name} is {} again (both {}.{}); name each optimizer once", names[k], key.0, key.1);
        }
        seen.push(key);
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cfg.threads).build()?;
    // Every optimizer built once with its arguments before the table starts, so that a bad name
    // or argument is an error alone, not one after a header.
    for name in &names {
        pool.install(|| Run::new(name, &cfg.hparams, &shapes).map(drop))?;
    }
    let largest = named.iter().max_by_key(|(_, s)| s.iter().product::<usize>()).expect("a model has parameters");
    println!(
        "{}: {} parameters in {} tensors (largest {} {:?}), {} thread(s), random gradients; ms/step = mean of {} \
         steps after one untimed step (preconditioner updates included), each optimizer alternating with \
         {BASELINE} (its median step the unit of the ratio)",
        cfg.model,
        params,
        shapes.len(),
        largest.0,
        largest.1,
        cfg.threads,
        cfg.steps
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "optimizer", "ms/step", "median", "AdamW ms", "x AdamW", "state MB"
    );
    let mut lines = vec![];
    let empty = json!({});
    for name in &names {
        let r = pool.install(|| -> Result<Value> {
            let mut base = Run::new(BASELINE, &empty, &shapes)?;
            // The baseline with its defaults; each optimizer listed with the --hparams given.
            let mut x = Run::new(name, &cfg.hparams, &shapes)?;
            base.step(false)?;
            x.step(false)?;
            for _ in 0..cfg.steps {
                base.step(true)?;
                x.step(true)?;
            }
            let state = x.opt.stored_state_bytes();
            Ok(json!({
                "model": cfg.model,
                "optimizer": x.label,
                "hparams": cfg.hparams,
                "params": params,
                "tensors": shapes.len(),
                "threads": cfg.threads,
                "steps": cfg.steps,
                "ms_per_step": x.mean_ms(),
                "median_ms_per_step": x.median_ms(),
                "adamw_ms_per_step": base.median_ms(),
                "ratio_to_adamw": x.mean_ms() / base.median_ms(),
                "state_bytes": state,
                "state_bytes_per_param": state as f64 / params as f64,
                "frequency": frequency_note(&x.label, &cfg.hparams),
            }))
        })?;
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        // The arguments given are part of the row's name (there is one optimizer when there are any).
        let label = match cfg.hparams.as_object().filter(|h| !h.is_empty()) {
            Some(_) => format!("{} {}", r["optimizer"].as_str().unwrap_or(""), cfg.hparams),
            None => r["optimizer"].as_str().unwrap_or("").to_string(),
        };
        println!(
            "{:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.2} {:>12.2}",
            label,
            f("ms_per_step"),
            f("median_ms_per_step"),
            f("adamw_ms_per_step"),
            f("ratio_to_adamw"),
            f("state_bytes") / 1e6
        );
        lines.push(r);
    }
    for r in &lines {
        if let Some(note) = r["frequency"].as_str() {
            println!("{}: {note}", r["optimizer"].as_str().unwrap_or(""));
        }
        // SOAP's refreshes are most of its cost: a run shorter than their period times none.
        if r["optimizer"] == "po.soap" {
            let every = cfg.hparams.get("precondition_frequency").and_then(|v| v.as_u64()).unwrap_or(10);
            if (cfg.steps as u64) < every {
                println!(
                    "warning: po.soap: --steps {} is shorter than its refresh period ({every} steps): no eigenbasis refresh was timed; give --steps {every} or more",
                    cfg.steps
                );
            }
        }
    }
    for r in lines {
        println!("{r}");
    }
    Ok(())
}
