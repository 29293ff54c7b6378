//! The optimizer on a candle model of one's own (a `VarMap`), without descent's models or loop:
//! parameter groups by name, clipping, schedules and checkpoints.

mod scratch;

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use descent_train::optim::{OptimizerConfig, VarOptimizer};
use serde_json::json;

fn tmpdir(tag: &str) -> scratch::Scratch {
    scratch::Scratch::new("user", tag)
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn var(name: &str, v: Vec<f32>) -> (String, Var) {
    let n = v.len();
    (name.to_string(), Var::from_tensor(&Tensor::from_vec(v, n, &Device::Cpu).unwrap()).unwrap())
}

/// A 2-layer MLP on a VarMap, its variables initialized by candle from a fixed seed.
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(varmap: &VarMap) -> Mlp {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        Mlp { fc1: linear(4, 8, vb.pp("fc1")).unwrap(), fc2: linear(8, 3, vb.pp("fc2")).unwrap() }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).unwrap().relu().unwrap()).unwrap()
    }
}

fn batch(k: usize) -> (Tensor, Tensor) {
    let x: Vec<f32> = (0..32 * 4).map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin()).collect();
    let y: Vec<u32> = (0..32).map(|i| ((i + k) % 3) as u32).collect();
    (Tensor::from_vec(x, (32, 4), &Device::Cpu).unwrap(), Tensor::from_vec(y, 32, &Device::Cpu).unwrap())
}

fn train_steps(model: &Mlp, opt: &mut VarOptimizer, from: usize, to: usize) {
    for k in from..to {
        let (x, y) = batch(k);
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x), &y).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
}

fn full_config() -> OptimizerConfig {
    OptimizerConfig {
        optimizer: "adamw".into(),
        lr: Some(0.05),
        hparams: json!({"weight_decay": 0.1}),
        groups: vec![("bias".into(), json!({"weight_decay": 0.0}))],
        clip_norm: Some(0.5),
        schedule: Some(Arc::new(
            descent_core::schedule::warmup_cosine_decay(descent_core::schedule::WarmupCosineDecay {
                init_value: 0.0,
                peak_value: 1.0,
                warmup_steps: 3,
                decay_steps: 12,
                end_value: 0.0,
                exponent: 1.0,
            })
            .unwrap(),
        )),
        ..Default::default()
    }
}

#[test]
fn varmap_names_are_sorted() {
    let varmap = VarMap::new();
    let _m = Mlp::new(&varmap);
    let opt = VarOptimizer::for_varmap(&varmap, &OptimizerConfig::default()).unwrap();
    assert_eq!(opt.names(), ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
}

/// With zero gradients AdamW's only move is the decoupled decay `p ← p·(1 − lr·wd)`: the weight
/// follows it, the bias of the no-decay group stays put bit for bit.
#[test]
fn group_by_name_keeps_bias_out_of_weight_decay() {
    let (lr, wd) = (0.1f64, 0.5f64);
    let w0 = vec![1.0f32, -2.0, 0.5];
    let b0 = vec![0.25f32, -0.75];
    let vars = vec![var("fc.bias", b0.clone()), var("fc.weight", w0.clone()), var("other", vec![3.0])];
    let cfg = OptimizerConfig {
        lr: Some(lr),
        hparams: json!({"weight_decay": wd}),
        groups: vec![("bias".into(), json!({"weight_decay": 0.0}))],
        ..Default::default()
    };
    let mut opt = VarOptimizer::for_vars(vars.clone(), &cfg).unwrap();
    let steps = 4;
    for _ in 0..steps {
        // Only `other` is in the loss: the weight and the bias get zero gradients.
        let loss = vars[2].1.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let bias = values(&vars[0].1);
    for (a, b) in bias.iter().zip(&b0) {
        assert_eq!(a.to_bits(), b.to_bits(), "bias moved: {a} vs {b}");
    }
    let factor = (1.0 - lr * wd).powi(steps);
    for (a, b) in values(&vars[1].1).iter().zip(&w0) {
        let want = *b as f64 * factor;
        assert!((*a as f64 - want).abs() <= 1e-6 * want.abs(), "weight {a}, expected {want}");
    }
    // Without the group the bias decays as the weight does.
    let vars2 = vec![var("fc.bias", b0.clone())];
    let mut opt2 = VarOptimizer::for_vars(vars2.clone(), &OptimizerConfig { groups: vec![], ..cfg }).unwrap();
    for _ in 0..steps {
        let zero = (vars2[0].1.as_tensor() * 0.0).unwrap().sum_all().unwrap();
        opt2.step(&zero.backward().unwrap()).unwrap();
    }
    for (a, b) in values(&vars2[0].1).iter().zip(&b0) {
        let want = *b as f64 * factor;
        assert!((*a as f64 - want).abs() <= 1e-6 * want.abs(), "bias {a}, expected {want}");
    }
}

#[test]
fn group_pattern_that_matches_nothing_is_an_error() {
    let varmap = VarMap::new();
    let _m = Mlp::new(&varmap);
    let cfg = OptimizerConfig { groups: vec![("biases".into(), json!({"weight_decay": 0.0}))], ..Default::default() };
    let e = VarOptimizer::for_varmap(&varmap, &cfg).err().expect("an unmatched pattern must be refused").to_string();
    assert!(e.contains("`biases`") && e.contains("fc1.bias"), "{e}");
    // A pattern whose parameters an earlier group already took selects nothing either.
    let cfg = OptimizerConfig {
        groups: vec![("fc1".into(), json!({"lr": 0.1})), ("fc1.bias".into(), json!({"weight_decay": 0.0}))],
        ..Default::default()
    };
    let e = VarOptimizer::for_varmap(&varmap, &cfg).err().expect("a shadowed pattern must be refused").to_string();
    assert!(e.contains("`fc1.bias`") && e.contains("`fc1`"), "{e}");
    // Unknown keyword arguments in a group are refused too.
    let cfg = OptimizerConfig { groups: vec![("bias".into(), json!({"weight_dcay": 0.0}))], ..Default::default() };
    assert!(VarOptimizer::for_varmap(&varmap, &cfg).is_err());
}

/// SGD with lr 1 on `loss = Σ c·w`: the step is the gradient `c`, scaled down to norm `clip`.
#[test]
fn clip_norm_bounds_the_step() {
    let c = [3.0f32, 4.0, 0.0, 12.0]; // norm 13
    let vars = vec![var("w", vec![0.0; 4])];
    let cfg = OptimizerConfig { optimizer: "sgd".into(), lr: Some(1.0), clip_norm: Some(2.6), ..Default::default() };
    let mut opt = VarOptimizer::for_vars(vars.clone(), &cfg).unwrap();
    let ct = Tensor::new(&c, &Device::Cpu).unwrap();
    let loss = (vars[0].1.as_tensor() * &ct).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!((opt.grad_norm(&grads).unwrap() - 13.0).abs() < 1e-9);
    opt.step(&grads).unwrap();
    let got = values(&vars[0].1);
    for (g, c) in got.iter().zip(&c) {
        assert!((g + c * 0.2).abs() < 1e-6, "{got:?}");
    }
    let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 2.6).abs() < 1e-5, "{norm}");
    assert!(VarOptimizer::for_vars(vars, &OptimizerConfig { clip_norm: Some(-1.0), ..Default::default() }).is_err());
}

/// The schedule multiplies the learning rate at each step; without one the loop sets it.
#[test]
fn schedule_and_manual_multiplier() {
    let vars = vec![var("w", vec![0.0])];
    let grad = |v: &Var| v.as_tensor().sum_all().unwrap().backward().unwrap(); // gradient 1
    let cfg = OptimizerConfig {
        optimizer: "sgd".into(),
        lr: Some(1.0),
        schedule: Some(Arc::new(|t: u64| 0.5f64.powi(t as i32))),
        ..Default::default()
    };
    let mut opt = VarOptimizer::for_vars(vars.clone(), &cfg).unwrap();
    for _ in 0..3 {
        opt.step(&grad(&vars[0].1)).unwrap();
    }
    assert_eq!(values(&vars[0].1), [-1.75]);
    assert_eq!(opt.lr_scale(), 0.125);
    assert!(opt.set_lr_scale(1.0).is_err(), "the schedule owns the multiplier");

    let vars = vec![var("w", vec![0.0])];
    let manual = OptimizerConfig { schedule: None, ..cfg };
    let mut opt = VarOptimizer::for_vars(vars.clone(), &manual).unwrap();
    opt.step(&grad(&vars[0].1)).unwrap();
    opt.set_lr_scale(0.25).unwrap();
    opt.step(&grad(&vars[0].1)).unwrap();
    assert_eq!(values(&vars[0].1), [-1.25]);
    assert!(opt.set_lr_scale(f64::NAN).is_err());

    // The multiplier set by hand is part of the state: a restored optimizer keeps it.
    let saved = opt.state_dict().unwrap();
    let vars2 = vec![var("w", vec![-1.25])];
    let mut again = VarOptimizer::for_vars(vars2.clone(), &manual).unwrap();
    again.load_state_dict(&saved).unwrap();
    assert_eq!(again.lr_scale(), 0.25);
    again.step(&grad(&vars2[0].1)).unwrap();
    opt.step(&grad(&vars[0].1)).unwrap();
    assert_eq!(values(&vars2[0].1), values(&vars[0].1));
    assert_eq!(values(&vars2[0].1), [-1.5]);
}

/// A learning rate given to an optimizer that has none of its own (a composition whose rate is a
/// link's argument, a bare transformation) is refused, as the libraries refuse the keyword; so is
/// a second, different rate in its arguments.
#[test]
fn a_rate_the_optimizer_cannot_take_is_refused() {
    let vars = vec![var("w", vec![0.0; 3])];
    for (optimizer, hparams) in [
        ("po.lookahead", json!({"optimizer": "torch.adamw"})),
        ("scale_by_adam", json!({})),
        ("optax.chain", json!({"links": [["scale_by_adam", {}], ["scale", {"step_size": -1e-3}]]})),
    ] {
        let cfg = OptimizerConfig {
            optimizer: optimizer.into(),
            lr: Some(3e-4),
            hparams: hparams.clone(),
            ..Default::default()
        };
        let err = VarOptimizer::for_vars(vars.clone(), &cfg).err().expect(optimizer).to_string();
        assert!(err.contains("takes no learning rate"), "{optimizer}: {err}");
        let cfg = OptimizerConfig { lr: None, ..cfg };
        VarOptimizer::for_vars(vars.clone(), &cfg).unwrap();
    }
    let cfg = OptimizerConfig {
        optimizer: "torch.adamw".into(),
        lr: Some(3e-4),
        hparams: json!({"lr": 1e-3}),
        ..Default::default()
    };
    let err = VarOptimizer::for_vars(vars.clone(), &cfg).err().unwrap().to_string();
    assert!(err.contains("same setting"), "{err}");
    let same = OptimizerConfig { hparams: json!({"lr": 3e-4}), ..cfg };
    VarOptimizer::for_vars(vars.clone(), &same).unwrap();
    // So for an optimizer that evaluates the objective itself.
    let lbfgs = OptimizerConfig { optimizer: "torch.lbfgs".into(), hparams: json!({"lr": 1.0}), ..same };
    let err = VarOptimizer::for_vars(vars.clone(), &lbfgs).err().unwrap().to_string();
    assert!(err.contains("same setting"), "{err}");
    // And SAM's base rate, which the run's rate would replace.
    let sam = OptimizerConfig {
        optimizer: "descent.sam".into(),
        hparams: json!({"rho": 0.05, "base": ["torch.adamw", {"lr": 0.1}]}),
        ..lbfgs
    };
    let err = VarOptimizer::for_vars(vars.clone(), &sam).err().unwrap().to_string();
    assert!(err.contains("same setting"), "{err}");
    VarOptimizer::for_vars(vars, &OptimizerConfig { lr: Some(0.1), ..sam }).unwrap();
}

/// Ten steps straight equal five, a checkpoint file, a fresh model loading it, and five more:
/// bit for bit, with groups, clipping and a schedule.
#[test]
fn checkpoint_round_trip_continues_bit_identically() {
    let dir = tmpdir("roundtrip");
    let path = dir.join("ck.safetensors");

    let varmap = VarMap::new();
    let model = Mlp::new(&varmap);
    let mut opt = VarOptimizer::for_varmap(&varmap, &full_config()).unwrap();
    train_steps(&model, &mut opt, 0, 5);
    opt.save_checkpoint(&path).unwrap();
    train_steps(&model, &mut opt, 5, 10);
    let straight: Vec<Vec<f32>> = opt.vars().iter().map(|(_, v)| values(v)).collect();

    // Another process would build the model afresh (other initial weights) and load.
    let varmap2 = VarMap::new();
    let model2 = Mlp::new(&varmap2);
    let mut opt2 = VarOptimizer::for_varmap(&varmap2, &full_config()).unwrap();
    let ck = opt2.load_checkpoint(&path).unwrap();
    assert_eq!(ck.steps, 5);
    assert_eq!(opt2.steps(), 5);
    let names: Vec<&str> = ck.weights.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
    train_steps(&model2, &mut opt2, 5, 10);
    let resumed: Vec<Vec<f32>> = opt2.vars().iter().map(|(_, v)| values(v)).collect();
    for (a, b) in straight.iter().flatten().zip(resumed.iter().flatten()) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
    }

    // A checkpoint of another model is refused whole: nothing changes.
    let other = vec![var("w", vec![1.0, 2.0])];
    let mut opt3 = VarOptimizer::for_vars(other.clone(), &OptimizerConfig { groups: vec![], ..full_config() }).unwrap();
    let e = opt3.load_checkpoint(&path).unwrap_err().to_string();
    assert!(e.contains("`w`"), "{e}");
    assert_eq!(values(&other[0].1), [1.0, 2.0]);
    assert_eq!(opt3.steps(), 0);
    std::fs::remove_dir_all(&dir).ok();
}

/// `loss = Σ w ⊙ p²` with fixed weights `w`, the gradient `2 w ⊙ p` computed as candle does.
fn weighted_square(p: &Tensor, w: &[f32]) -> Tensor {
    let wt = Tensor::new(w, &Device::Cpu).unwrap();
    (p.sqr().unwrap() * wt).unwrap().sum_all().unwrap()
}

/// A closure-driven optimizer on candle variables moves them as the core optimizer moves plain
/// buffers under the same objective, bit for bit: SAM evaluates twice per step, at the
/// parameters and at the perturbed point, and the variables end at the base optimizer's step.
#[test]
fn step_closure_equals_the_core_closure_step() {
    use descent_core::closure::build_closure_optimizer;
    let w = [1.0f32, 3.0, 0.5, 2.0];
    let p0 = vec![0.5f32, -1.0, 2.0, 0.25];
    let h = json!({"base": ["sgd", {"momentum": 0.9}], "lr": 0.05, "rho": 0.1, "adaptive": true});
    let vars = vec![var("p", p0.clone())];
    let cfg = OptimizerConfig { optimizer: "sam".into(), hparams: h.clone(), ..Default::default() };
    let mut opt = VarOptimizer::for_vars(vars.clone(), &cfg).unwrap();
    assert_eq!(opt.closure_optimizer(), Some("descent.sam"));
    let mut core = build_closure_optimizer("descent", "sam", &h, &[vec![4]]).unwrap();
    let mut plain = vec![p0.clone()];
    let mut objective = |params: &[Vec<f32>], grads: &mut [Vec<f32>]| {
        for ((g, &p), &w) in grads[0].iter_mut().zip(&params[0]).zip(&w) {
            *g = 2.0 * w * p;
        }
        Ok(params[0].iter().zip(&w).map(|(p, w)| w * p * p).sum::<f32>())
    };
    let mut evals = 0;
    for _ in 0..5 {
        opt.step_closure_with(
            || Ok(weighted_square(vars[0].1.as_tensor(), &w)),
            |e| {
                evals += 1;
                assert_eq!(e.flat_grads.len(), 1);
                Ok(())
            },
        )
        .unwrap();
        core.step(&mut plain, &mut objective).unwrap();
    }
    assert_eq!(evals, 10, "SAM evaluates twice per step");
    assert_eq!(opt.steps(), 5);
    for (a, b) in values(&vars[0].1).iter().zip(&plain[0]) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
    }
    // Gradients alone are refused, naming the optimizer and the way to step it.
    let e = opt.step(&weighted_square(vars[0].1.as_tensor(), &w).backward().unwrap()).unwrap_err().to_string();
    assert!(e.contains("descent.sam") && e.contains("step_closure"), "{e}");
}

/// L-BFGS (torch's, with its strong-Wolfe search) minimizes a quadratic bowl in one step of its
/// 20 iterations, evaluating the closure many times on the same objective.
#[test]
fn lbfgs_minimizes_a_bowl_through_step_closure() {
    let w = [1.0f32, 3.0, 0.5, 2.0];
    let vars = vec![var("p", vec![0.5, -1.0, 2.0, 0.25])];
    let cfg = OptimizerConfig {
        optimizer: "lbfgs".into(),
        hparams: json!({"line_search_fn": "strong_wolfe"}),
        ..Default::default()
    };
    let mut opt = VarOptimizer::for_vars(vars.clone(), &cfg).unwrap();
    let mut evals = 0;
    let first = opt
        .step_closure_with(
            || Ok(weighted_square(vars[0].1.as_tensor(), &w)),
            |_| {
                evals += 1;
                Ok(())
            },
        )
        .unwrap();
    assert!((first - 5.375).abs() < 1e-5, "the loss the step started from: {first}");
    assert!(evals > 2, "{evals} evaluations");
    for x in values(&vars[0].1) {
        assert!(x.abs() < 1e-4, "{:?}", values(&vars[0].1));
    }
}

/// A gradient optimizer steps on the closure's gradients: the same as `step` on a backward pass.
#[test]
fn step_closure_of_a_gradient_optimizer_is_its_step() {
    let w = [1.0f32, 3.0, 0.5, 2.0];
    let p0 = vec![0.5f32, -1.0, 2.0, 0.25];
    let cfg = OptimizerConfig { lr: Some(0.1), hparams: json!({"weight_decay": 0.1}), ..Default::default() };
    let (a, b) = (vec![var("p", p0.clone())], vec![var("p", p0)]);
    let mut oa = VarOptimizer::for_vars(a.clone(), &cfg).unwrap();
    let mut ob = VarOptimizer::for_vars(b.clone(), &cfg).unwrap();
    assert_eq!(oa.closure_optimizer(), None);
    for _ in 0..3 {
        let loss = oa.step_closure(|| Ok(weighted_square(a[0].1.as_tensor(), &w))).unwrap();
        let lb = weighted_square(b[0].1.as_tensor(), &w);
        assert_eq!(loss, lb.to_scalar::<f32>().unwrap());
        ob.step(&lb.backward().unwrap()).unwrap();
    }
    assert_eq!(values(&a[0].1), values(&b[0].1));
    assert_eq!(oa.steps(), 3);
}

/// A closure optimizer's checkpoint (weights, its state, its step count) continues bit for bit,
/// with a schedule setting its rate at each step; clipping and groups are refused, not ignored.
#[test]
fn closure_optimizer_checkpoint_round_trip_and_refusals() {
    let dir = tmpdir("closure-roundtrip");
    let path = dir.join("ck.safetensors");
    let cfg = || OptimizerConfig {
        optimizer: "sam".into(),
        lr: Some(0.05),
        hparams: json!({"base": "adamw", "rho": 0.05}),
        schedule: Some(Arc::new(
            descent_core::schedule::warmup_cosine_decay(descent_core::schedule::WarmupCosineDecay {
                init_value: 0.0,
                peak_value: 1.0,
                warmup_steps: 3,
                decay_steps: 12,
                end_value: 0.0,
                exponent: 1.0,
            })
            .unwrap(),
        )),
        ..Default::default()
    };
    let steps = |model: &Mlp, opt: &mut VarOptimizer, from: usize, to: usize| {
        for k in from..to {
            let (x, y) = batch(k);
            opt.step_closure(|| Ok(candle_nn::loss::cross_entropy(&model.forward(&x), &y)?)).unwrap();
        }
    };
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap);
    let mut opt = VarOptimizer::for_varmap(&varmap, &cfg()).unwrap();
    steps(&model, &mut opt, 0, 5);
    opt.save_checkpoint(&path).unwrap();
    steps(&model, &mut opt, 5, 10);
    let straight: Vec<Vec<f32>> = opt.vars().iter().map(|(_, v)| values(v)).collect();

    let varmap2 = VarMap::new();
    let model2 = Mlp::new(&varmap2);
    let mut opt2 = VarOptimizer::for_varmap(&varmap2, &cfg()).unwrap();
    assert_eq!(opt2.load_checkpoint(&path).unwrap().steps, 5);
    assert_eq!(opt2.steps(), 5);
    steps(&model2, &mut opt2, 5, 10);
    for (a, b) in straight.iter().flatten().zip(opt2.vars().iter().flat_map(|(_, v)| values(v))) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
    }
    // A gradient optimizer's checkpoint does not fit it, nor the other way round.
    let mut adamw = VarOptimizer::for_varmap(&varmap2, &OptimizerConfig::default()).unwrap();
    assert!(adamw.load_checkpoint(&path).is_err());
    adamw.save_checkpoint(dir.join("adamw.safetensors")).unwrap();
    assert!(opt2.load_checkpoint(dir.join("adamw.safetensors")).is_err());
    assert_eq!(opt2.steps(), 10);

    for (bad, needle) in [
        (OptimizerConfig { clip_norm: Some(1.0), ..cfg() }, "gradient clipping"),
        (OptimizerConfig { clip_value: Some(1.0), ..cfg() }, "gradient clipping"),
        (OptimizerConfig { groups: vec![("bias".into(), json!({}))], ..cfg() }, "parameter groups"),
    ] {
        let e = VarOptimizer::for_varmap(&varmap, &bad).err().unwrap().to_string();
        assert!(e.contains(needle) && e.contains("descent.sam") && !e.contains('\n'), "{e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Schedule-free AdamW steps `y` and evaluates the average `x = (y − (1−b1)·z)/b1` (optax's
/// `schedule_free_eval_params`): `with_eval_weights` shows the model `x` and gives `y` back bit
/// for bit; an optimizer without separate evaluation weights shows the variables as they are.
#[test]
fn schedule_free_evaluates_its_average_and_restores_the_training_weights() {
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap);
    let b1 = 0.9f32;
    let cfg = OptimizerConfig {
        optimizer: "optax.contrib.schedule_free_adamw".into(),
        lr: Some(0.05),
        hparams: json!({"b1": b1}),
        ..Default::default()
    };
    let mut opt = VarOptimizer::for_varmap(&varmap, &cfg).unwrap();
    train_steps(&model, &mut opt, 0, 5);
    let vars = opt.vars();
    let y: Vec<Vec<f32>> = vars.iter().map(|(_, v)| values(v)).collect();
    let state = opt.state_dict().unwrap();
    let z: Vec<&Vec<f32>> = state.buffers.iter().filter(|(k, _)| k.contains("z.")).map(|(_, v)| v).collect();
    assert_eq!(z.len(), y.len(), "one z per parameter in {:?}", state.buffers.keys().collect::<Vec<_>>());
    let seen: Vec<Vec<f32>> = opt.with_eval_weights(|| Ok(vars.iter().map(|(_, v)| values(v)).collect())).unwrap();
    let mut moved = false;
    for ((y, z), x) in y.iter().zip(&z).zip(&seen) {
        for ((&y, &z), &x) in y.iter().zip(z.iter()).zip(x) {
            assert_eq!(x.to_bits(), ((y - (1.0 - b1) * z) / b1).to_bits());
            moved |= x != y;
        }
    }
    assert!(moved, "after 5 steps the average differs from the training point");
    for ((_, v), y) in vars.iter().zip(&y) {
        assert_eq!(&values(v), y, "training weights restored");
    }

    let varmap = VarMap::new();
    let model = Mlp::new(&varmap);
    let mut opt = VarOptimizer::for_varmap(&varmap, &OptimizerConfig::default()).unwrap();
    train_steps(&model, &mut opt, 0, 2);
    let vars = opt.vars();
    let before: Vec<Vec<f32>> = vars.iter().map(|(_, v)| values(v)).collect();
    let seen: Vec<Vec<f32>> = opt.with_eval_weights(|| Ok(vars.iter().map(|(_, v)| values(v)).collect())).unwrap();
    assert_eq!(seen, before);
}
