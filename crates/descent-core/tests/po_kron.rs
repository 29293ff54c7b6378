//! pytorch_optimizer `Kron` (PSGD with Kronecker-factored preconditioners). torch's random
//! numbers cannot be reproduced, so the tests check properties rather than a recorded trajectory:
//! the preconditioner applied to a gradient against torch's einsum written out index by index, a
//! step with no preconditioner update against a hand computation, the factors' kinds, and on a
//! quadratic and the reference problems: the loss falls as Adam's does, seeded runs repeat bit for
//! bit, and a resumed run continues bit for bit.

mod common;

use descent_core::closure::{Objective, Problem};
use descent_core::po::matrix::kron::{
    diagonal_axes, precondition, update_factors, KronConfig, KronFactor, MemorySaveMode,
};
use descent_core::replay::{collect_case_files, load_case, Case};
use descent_core::spec::build_optimizer;
use descent_core::state::StateDict;
use descent_core::Optimizer;
use serde_json::{json, Value};

/// A small deterministic generator for the tests' fixed numbers (not the optimizer's).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// A factor as torch would hold it: upper triangular with a dominant diagonal, or a diagonal.
fn factor(n: usize, diagonal: bool, rng: &mut Lcg) -> KronFactor {
    if diagonal {
        KronFactor::Diagonal((0..n).map(|_| (1.0 + 0.5 * rng.next()) as f32).collect())
    } else {
        let mut q = vec![0.0f32; n * n];
        for i in 0..n {
            for j in i..n {
                q[i * n + j] = if i == j { (1.0 + 0.3 * rng.next()) as f32 } else { (0.4 * rng.next()) as f32 };
            }
        }
        KronFactor::Triangular(q)
    }
}

/// `Mᵢ[b, c] = Σₐ Qᵢ[a, b]·Qᵢ[a, c]` (torch's `ab,ac` pieces), or `q[b]²·δ(b, c)` for a diagonal.
fn gram(f: &KronFactor, n: usize, b: usize, c: usize) -> f64 {
    match f {
        KronFactor::Diagonal(q) => {
            if b == c {
                q[b] as f64 * q[b] as f64
            } else {
                0.0
            }
        }
        KronFactor::Triangular(q) => (0..n).map(|a| q[a * n + b] as f64 * q[a * n + c] as f64).sum(),
    }
}

/// torch's `get_precondition_grad` einsum written out: `out[b] = Σ_c Πᵢ Mᵢ[bᵢ, cᵢ]·g[c]`, over
/// every pair of multi-indices.
fn einsum_precondition(factors: &[KronFactor], shape: &[usize], g: &[f64]) -> Vec<f64> {
    let total: usize = shape.iter().product();
    let index = |mut flat: usize| {
        let mut idx = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            idx[k] = flat % shape[k];
            flat /= shape[k];
        }
        idx
    };
    (0..total)
        .map(|bf| {
            let b = index(bf);
            (0..total)
                .map(|cf| {
                    let c = index(cf);
                    let w: f64 = factors.iter().enumerate().map(|(i, f)| gram(f, shape[i], b[i], c[i])).product();
                    w * g[cf]
                })
                .sum()
        })
        .collect()
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-10 * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
    }
}

#[test]
fn the_preconditioner_is_torch_s_einsum_for_1d_2d_and_3d_tensors() {
    let mut rng = Lcg(7);
    // (shape, which axes are diagonal)
    let cases: &[(&[usize], &[bool])] = &[
        (&[5], &[true]),
        (&[5], &[false]),
        (&[4, 3], &[false, false]),
        (&[4, 3], &[true, false]),
        (&[4, 3], &[false, true]),
        (&[3, 1, 4], &[false, true, false]),
        (&[2, 3, 4], &[false, false, true]),
        (&[2, 3, 4], &[true, true, true]),
    ];
    for (shape, diag) in cases {
        let factors: Vec<KronFactor> = shape.iter().zip(*diag).map(|(&n, &d)| factor(n, d, &mut rng)).collect();
        let n: usize = shape.iter().product();
        let g: Vec<f64> = (0..n).map(|_| rng.next()).collect();
        let got = precondition(&factors, shape, &g);
        close(&got, &einsum_precondition(&factors, shape, &g), &format!("{shape:?} {diag:?}"));
    }
    // A scalar is a tensor of one element: q²·g.
    let got = precondition(&[KronFactor::Diagonal(vec![1.5])], &[], &[2.0]);
    close(&got, &[4.5], "scalar");
}

/// `update_precondition` on diagonal factors of a matrix, written out: `A = h·diag` products,
/// `B = v / diag` products, the terms are the sums of squares of A and B over the other axis.
#[test]
fn a_diagonal_fit_is_update_precondition_s() {
    let mut rng = Lcg(3);
    let (r, c) = (3, 4);
    let q0: Vec<f32> = (0..r).map(|_| (1.0 + 0.3 * rng.next()) as f32).collect();
    let q1: Vec<f32> = (0..c).map(|_| (1.0 + 0.3 * rng.next()) as f32).collect();
    let h: Vec<f64> = (0..r * c).map(|_| rng.next()).collect();
    let v: Vec<f64> = (0..r * c).map(|_| rng.next()).collect();
    let lr = 0.1;
    let mut factors = vec![KronFactor::Diagonal(q0.clone()), KronFactor::Diagonal(q1.clone())];
    update_factors(&mut factors, &[r, c], &v, &h, lr);
    let a = |i: usize, j: usize| q0[i] as f64 * q1[j] as f64 * h[i * c + j];
    let b = |i: usize, j: usize| v[i * c + j] / (q0[i] as f64 * q1[j] as f64);
    let eps = 1.1754943508222875e-38;
    let fit = |q: &[f32], t1: Vec<f64>, t2: Vec<f64>| -> Vec<f64> {
        let norm = t1.iter().zip(&t2).map(|(x, y)| (x + y).abs()).fold(0.0, f64::max);
        q.iter().zip(t1.iter().zip(&t2)).map(|(&q, (x, y))| q as f64 - (x - y) * lr * q as f64 / (norm + eps)).collect()
    };
    let want0 = fit(
        &q0,
        (0..r).map(|i| (0..c).map(|j| a(i, j).powi(2)).sum()).collect(),
        (0..r).map(|i| (0..c).map(|j| b(i, j).powi(2)).sum()).collect(),
    );
    let want1 = fit(
        &q1,
        (0..c).map(|j| (0..r).map(|i| a(i, j).powi(2)).sum()).collect(),
        (0..c).map(|j| (0..r).map(|i| b(i, j).powi(2)).sum()).collect(),
    );
    for (f, want) in factors.iter().zip([want0, want1]) {
        let KronFactor::Diagonal(got) = f else { panic!("diagonal") };
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w.abs(), "{g} vs {w}");
        }
    }
}

#[test]
fn factor_kinds_follow_initialize_q_expressions() {
    let d = KronConfig::default();
    assert_eq!(diagonal_axes(&[], &d), vec![true]);
    assert_eq!(diagonal_axes(&[7], &d), vec![true], "one axis < min_ndim_triangular");
    assert_eq!(diagonal_axes(&[7, 1, 3], &d), vec![false, true, false], "a length-1 axis");
    let small = KronConfig { max_size_triangular: 5, ..d };
    assert_eq!(diagonal_axes(&[7, 5], &small), vec![true, false]);
    let one = KronConfig { min_ndim_triangular: 1, ..d };
    assert_eq!(diagonal_axes(&[7], &one), vec![false]);
    let mode = |m| KronConfig { memory_save_mode: Some(m), ..d };
    assert_eq!(diagonal_axes(&[4, 9, 9], &mode(MemorySaveMode::OneDiag)), vec![false, false, true]);
    assert_eq!(diagonal_axes(&[4, 9, 9], &mode(MemorySaveMode::SmartOneDiag)), vec![false, false, false]);
    assert_eq!(diagonal_axes(&[4, 9, 3], &mode(MemorySaveMode::SmartOneDiag)), vec![false, true, false]);
    assert_eq!(diagonal_axes(&[4, 9], &mode(MemorySaveMode::AllDiag)), vec![true, true]);
}

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![4, 3], vec![3], vec![2, 3, 2], vec![]]
}

fn init() -> Vec<Vec<f32>> {
    shapes()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.iter().product();
            (0..n).map(|j| 0.3 - 0.07 * ((i + 2 * j) % 9) as f32).collect()
        })
        .collect()
}

/// An ill-conditioned quadratic `½ Σ s_j (x_j − c_j)²` over all parameters.
fn quadratic(params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> descent_core::Result<f32> {
    let mut loss = 0.0f64;
    for (i, (p, g)) in params.iter().zip(grads.iter_mut()).enumerate() {
        for (j, (&x, gv)) in p.iter().zip(g.iter_mut()).enumerate() {
            let c = 0.1 * ((i + j) % 5) as f32 - 0.2;
            let s = [0.1f32, 1.0, 10.0][(i + 2 * j) % 3];
            loss += 0.5 * (s * (x - c) * (x - c)) as f64;
            *gv = s * (x - c);
        }
    }
    Ok(loss as f32)
}

fn kron(h: Value, shapes: &[Vec<usize>], params: &[Vec<f32>]) -> Optimizer {
    let tx = build_optimizer("po", "kron", &h, None, shapes).unwrap();
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    Optimizer::new(tx, shapes.to_vec(), &views).unwrap()
}

fn grads_of(params: &[Vec<f32>], f: &mut dyn Objective) -> (f32, Vec<Vec<f32>>) {
    let mut g: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let loss = f.value_and_grad(params, &mut g).unwrap();
    (loss, g)
}

/// Runs `steps` steps; returns the parameters and the losses seen.
fn run(opt: &mut Optimizer, params: &mut [Vec<f32>], f: &mut dyn Objective, steps: usize) -> Vec<f32> {
    let mut losses = vec![];
    for _ in 0..steps {
        let (loss, g) = grads_of(params, f);
        losses.push(loss);
        opt.step_vecs(params, &g).unwrap();
    }
    losses
}

#[test]
fn a_step_without_a_preconditioner_update_is_the_hand_computed_one() {
    let (lr, beta, wd) = (0.02f64, 0.9f64, 0.1f64);
    let base = json!({"lr": lr, "momentum": beta, "weight_decay": wd, "balance_prob": 0.5, "seed": 3,
                      "pre_conditioner_update_probability": 1.0});
    let mut params = init();
    let mut a = kron(base.clone(), &shapes(), &params);
    run(&mut a, &mut params, &mut quadratic, 3);
    let saved = a.state_dict().unwrap();
    // The same optimizer with update probability 0 from here on: nothing random is used.
    let mut frozen = base.clone();
    frozen["pre_conditioner_update_probability"] = json!(0.0);
    let mut b = kron(frozen, &shapes(), &params);
    b.load_state_dict(&saved).unwrap();
    let (_, g) = grads_of(&params, &mut quadratic);
    let before = params.clone();
    b.step_vecs(&mut params, &g).unwrap();
    let after = b.state_dict().unwrap();
    let find = |d: &StateDict, suffix: &str| -> Vec<f32> {
        let hits: Vec<&String> = d.buffers.keys().filter(|k| k.ends_with(suffix)).collect();
        assert_eq!(hits.len(), 1, "{suffix}: {hits:?}");
        d.buffers[hits[0]].clone()
    };
    let bc = 1.0 - beta.powi(4);
    for (i, s) in shapes().iter().enumerate() {
        let eff: Vec<usize> = if s.is_empty() { vec![1] } else { s.clone() };
        let kinds = diagonal_axes(s, &KronConfig::default());
        let factors: Vec<KronFactor> = kinds
            .iter()
            .enumerate()
            .map(|(ax, &d)| {
                let q = find(&saved, &format!("Q.{i}.{ax}"));
                assert_eq!(q, find(&after, &format!("Q.{i}.{ax}")), "a factor moved without an update");
                if d {
                    KronFactor::Diagonal(q)
                } else {
                    KronFactor::Triangular(q)
                }
            })
            .collect();
        let m0 = find(&saved, &format!("momentum_buffer.{i}"));
        let m: Vec<f32> = m0.iter().zip(&g[i]).map(|(&m, &g)| m * beta as f32 + (1.0 - beta) as f32 * g).collect();
        assert_eq!(m, find(&after, &format!("momentum_buffer.{i}")));
        let mhat: Vec<f64> = m.iter().map(|&x| (x as f64 / bc) as f32 as f64).collect();
        let pre = einsum_precondition(&factors, &eff, &mhat);
        let rms = (pre.iter().map(|x| x * x).sum::<f64>() / pre.len() as f64).sqrt();
        let scale = (1.1 / (rms + 1e-6)).min(1.0);
        for (j, (&p0, &p1)) in before[i].iter().zip(&params[i]).enumerate() {
            let mut u = pre[j] * scale;
            if s.len() >= 2 {
                u += wd * p0 as f64;
            }
            let want = p0 as f64 - lr * u;
            assert!((p1 as f64 - want).abs() <= 2e-6 * (1.0 + want.abs()), "param {i}[{j}]: {p1} vs {want}");
        }
    }
}

/// An objective with its name, initial point and parameter shapes.
type Named = (String, Box<dyn Objective>, Vec<Vec<f32>>, Vec<Vec<usize>>);

/// The reference problems (softmax regression, Rosenbrock) with their initial points.
fn problems() -> Vec<(String, Problem, Vec<Vec<f32>>)> {
    let mut out = vec![];
    for f in collect_case_files(&[common::shared_dir("reference-r2")]).unwrap() {
        if let Case::Problem(c) = load_case(&f).unwrap() {
            if !out.iter().any(|(k, _, _): &(String, Problem, Vec<Vec<f32>>)| k == c.problem.kind()) {
                out.push((c.problem.kind().to_string(), c.problem.clone(), c.init.clone()));
            }
        }
    }
    assert_eq!(out.len(), 2, "{:?}", out.iter().map(|o| &o.0).collect::<Vec<_>>());
    out
}

#[test]
fn the_loss_falls_as_with_adam_on_a_quadratic_and_the_reference_problems() {
    let mut objectives: Vec<Named> = vec![("quadratic".into(), Box::new(quadratic), init(), shapes())];
    for (k, p, x0) in problems() {
        let s = p.shapes();
        objectives.push((k, Box::new(p), x0, s));
    }
    for (name, mut f, x0, shapes) in objectives {
        let steps = 300;
        let mut pk = x0.clone();
        let mut k = kron(json!({"lr": 0.01, "seed": 1}), &shapes, &pk);
        let lk = run(&mut k, &mut pk, f.as_mut(), steps);
        let mut pa = x0.clone();
        let tx = build_optimizer("torch", "adam", &json!({"lr": 0.01}), None, &shapes).unwrap();
        let views: Vec<&[f32]> = pa.iter().map(|p| p.as_slice()).collect();
        let mut adam = Optimizer::new(tx, shapes.clone(), &views).unwrap();
        let la = run(&mut adam, &mut pa, f.as_mut(), steps);
        let (k0, kn, an) = (lk[0], *lk.last().unwrap(), *la.last().unwrap());
        eprintln!("{name}: loss {k0} → Kron {kn}, Adam {an}");
        assert!(kn.is_finite() && kn < 0.5 * k0, "{name}: Kron {k0} → {kn}");
        assert!(kn <= 2.0 * an + 1e-3 * k0, "{name}: Kron {kn} vs Adam {an}");
    }
}

#[test]
fn seeded_runs_repeat_bit_for_bit_and_resume_exactly() {
    let h = |seed: u64| {
        json!({"lr": 0.01, "seed": seed, "balance_prob": 0.5, "weight_decay": 0.01,
               "pre_conditioner_update_probability": {"flat_start": 2, "decay": 0.5, "min_prob": 0.3}})
    };
    let steps = 12;
    let go = |seed: u64, stop_at: Option<usize>| {
        let mut params = init();
        let mut opt = kron(h(seed), &shapes(), &params);
        for t in 0..steps {
            if Some(t) == stop_at {
                let text = opt.state_dict().unwrap().to_json().unwrap();
                opt = kron(h(seed), &shapes(), &params);
                opt.load_state_dict(&StateDict::from_json(&text).unwrap()).unwrap();
            }
            let (_, g) = grads_of(&params, &mut quadratic);
            opt.step_vecs(&mut params, &g).unwrap();
        }
        (params, opt.state_dict().unwrap())
    };
    let (a, sa) = go(5, None);
    let (b, sb) = go(5, None);
    assert_eq!(sa, sb);
    let bits = |p: &[Vec<f32>]| p.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b), "the same seed gave another run");
    let (c, _) = go(6, None);
    assert_ne!(bits(&a), bits(&c), "another seed gave the same run");
    assert!(sa.counters.keys().any(|k| k.ends_with("rng")), "{:?}", sa.counters);
    for k in [1, 3, steps / 2, steps - 1] {
        let (r, sr) = go(5, Some(k));
        assert_eq!(bits(&a), bits(&r), "resumed after step {k}");
        assert_eq!(sa, sr, "state after resuming at {k}");
    }
}

#[test]
fn options_and_bad_arguments() {
    let s = shapes();
    let p = init();
    for h in [
        json!({"memory_save_mode": "one_diag"}),
        json!({"memory_save_mode": "smart_one_diag", "weight_decouple": false, "weight_decay": 0.1}),
        json!({"memory_save_mode": "all_diag", "maximize": true}),
        json!({"mu_dtype": "bfloat16", "momentum_into_precondition_update": false}),
        json!({"max_size_triangular": 3, "min_ndim_triangular": 1, "precondition_dtype": "float32"}),
    ] {
        let mut params = p.clone();
        let mut opt = kron(h.clone(), &s, &params);
        let losses = run(&mut opt, &mut params, &mut quadratic, 20);
        assert!(losses.iter().all(|l| l.is_finite()), "{h}: {losses:?}");
        // Maximizing climbs the quadratic.
        if h.get("maximize").is_some() {
            assert!(losses[19] > losses[0], "{h}: {losses:?}");
        } else {
            assert!(losses[19] < losses[0], "{h}: {losses:?}");
        }
    }
    for (h, needle) in [
        (json!({"momentum": 1.0}), "momentum"),
        (json!({"lr": -1.0}), "learning rate"),
        (json!({"weight_decay": -0.1}), "weight_decay"),
        (json!({"memory_save_mode": "some_diag"}), "memory_save_mode"),
        (json!({"mu_dtype": "float16"}), "mu_dtype"),
        (json!({"precondition_dtype": "bfloat16"}), "precondition_dtype"),
        (json!({"pre_conditioner_update_probability": "often"}), "pre_conditioner_update_probability"),
        (json!({"pre_conditioner_update_probability": {"halflife": 3}}), "halflife"),
        (json!({"seed": -1}), "seed"),
        (json!({"betas": [0.9, 0.99]}), "betas"),
    ] {
        let e = build_optimizer("po", "kron", &h, None, &s).err().unwrap_or_else(|| panic!("{h} accepted")).to_string();
        assert!(e.contains(needle), "{h}: {e}");
    }
    // The constructor drops the preconditioner's rate and initial scale; a group's are read, and
    // one group holds every parameter.
    for key in ["precondition_lr", "precondition_init_scale"] {
        let e = build_optimizer("po", "kron", &json!({ key: 0.5 }), None, &s).err().expect(key).to_string();
        assert!(e.contains(key) && e.contains("dropped by pytorch_optimizer's Kron constructor"), "{e}");
    }
    let all: Vec<usize> = (0..s.len()).collect();
    // The group's rate of the preconditioner fit is read: another value, another run (and the
    // library's default, 0.1, the run without it).
    let grouped_run = |group: Value| {
        let groups = json!([{"params": all, "hparams": group}]);
        let mut params = p.clone();
        let tx = build_optimizer("po", "kron", &json!({"pre_conditioner_update_probability": 1.0}), Some(&groups), &s)
            .unwrap();
        let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        let mut opt = Optimizer::new(tx, s.to_vec(), &views).unwrap();
        let losses = run(&mut opt, &mut params, &mut quadratic, 20);
        assert!(losses[19] < losses[0], "{group}: {losses:?}");
        params
    };
    let default = grouped_run(json!({}));
    assert_eq!(default, grouped_run(json!({"precondition_lr": 0.1})));
    assert_ne!(default, grouped_run(json!({"precondition_lr": 0.5})));
    assert_ne!(default, grouped_run(json!({"precondition_init_scale": 2.0})));
    for groups in [
        json!([{"params": [0, 1]}, {"params": [2, 3]}]),
        json!([{"params": [0, 1, 2]}]),
        json!([{"params": all, "lr": 0.1}]),
    ] {
        assert!(build_optimizer("po", "kron", &json!({}), Some(&groups), &s).is_err(), "{groups}");
    }
}
