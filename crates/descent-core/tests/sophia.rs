//! optax `contrib.sophia` (Sophia-H): the Hessian-vector products it takes from the objective,
//! the clipped Newton step it makes on a quadratic with a known diagonal Hessian, its seeded
//! Rademacher vectors, the estimate's schedule, weight decay with its mask, and resume.

use descent_core::closure::{build_closure_optimizer, finite_difference_hvp, ClosureOptimizer, Objective};
use descent_core::state::StateDict;
use descent_core::Result;
use serde_json::{json, Value};

/// `½ Σ_j h_j (x_j − c_j)²` over two parameters: a diagonal Hessian `h`, counting evaluations.
struct Diagonal {
    h: Vec<Vec<f32>>,
    c: Vec<Vec<f32>>,
    evaluations: usize,
}

impl Diagonal {
    fn new() -> Self {
        let h = vec![vec![1.0, 4.0, 0.25, 2.0, 8.0, 0.5], vec![3.0, 0.1, 1.0]];
        let c = vec![vec![0.5, -1.0, 2.0, 0.0, 0.25, -0.5], vec![1.0, -2.0, 0.75]];
        Diagonal { h, c, evaluations: 0 }
    }
}

impl Objective for Diagonal {
    fn value_and_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32> {
        self.evaluations += 1;
        let mut loss = 0.0f64;
        for (((p, g), h), c) in params.iter().zip(grads.iter_mut()).zip(&self.h).zip(&self.c) {
            for (((&x, g), &h), &c) in p.iter().zip(g.iter_mut()).zip(h).zip(c) {
                let e = x as f64 - c as f64;
                loss += 0.5 * h as f64 * e * e;
                *g = (h as f64 * e) as f32;
            }
        }
        Ok(loss as f32)
    }
}

/// `½ xᵀAx − bᵀx` with a dense symmetric positive definite `A` over one parameter of 5.
fn dense(params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32> {
    let n = 5;
    let a = |i: usize, j: usize| if i == j { 3.0 + i as f64 } else { 0.5 / (1.0 + (i + j) as f64) };
    let x: Vec<f64> = params[0].iter().map(|&v| v as f64).collect();
    let mut loss = 0.0;
    for i in 0..n {
        let ax: f64 = (0..n).map(|j| a(i, j) * x[j]).sum();
        let b = 1.0 - 0.3 * i as f64;
        loss += 0.5 * x[i] * ax - b * x[i];
        grads[0][i] = (ax - b) as f32;
    }
    Ok(loss as f32)
}

fn sophia(h: Value, shapes: &[Vec<usize>]) -> Box<dyn ClosureOptimizer> {
    build_closure_optimizer("optax", "contrib.sophia", &h, shapes).unwrap()
}

fn diag_shapes() -> Vec<Vec<usize>> {
    vec![vec![2, 3], vec![3]]
}

fn diag_init() -> Vec<Vec<f32>> {
    vec![vec![1.5, 0.0, -1.0, 0.7, 2.0, 0.5], vec![-1.0, 1.0, 0.0]]
}

#[test]
fn the_default_hvp_is_the_hessian_times_the_vector_on_a_quadratic() {
    let mut f = Diagonal::new();
    let v = vec![vec![1.0, -1.0, 1.0, 1.0, -1.0, -1.0], vec![-1.0, 1.0, 1.0]];
    let mut out = vec![vec![0.0; 6], vec![0.0; 3]];
    finite_difference_hvp(&mut f, &diag_init(), &v, &mut out).unwrap();
    for ((o, h), v) in out.iter().flatten().zip(f.h.iter().flatten()).zip(v.iter().flatten()) {
        assert!((o - h * v).abs() <= 1e-3 * h.abs(), "{o} vs {}", h * v);
    }
    assert_eq!(f.evaluations, 2);
}

/// With `b1 = b2 = 0` and an estimate every step, Hutchinson's estimate of a diagonal Hessian is
/// exact (`z ⊙ Hz = h` for signs `z`), so from the second step on Sophia's update is the clipped
/// Newton step `clip(e/γ, −τ, τ)` for the error `e = x − c`; the first step, with no estimate
/// yet, is `τ·sign(e)`.
#[test]
fn on_a_diagonal_quadratic_sophia_makes_the_clipped_newton_step() {
    let (lr, gamma, tau) = (0.5f64, 1.0f64, 0.3f64);
    let h = json!({"learning_rate": lr, "b1": 0.0, "b2": 0.0, "gamma": gamma, "clip_threshold": tau,
                   "update_interval": 1, "weight_decay": 0.0, "seed": 11});
    let mut opt = sophia(h, &diag_shapes());
    let mut f = Diagonal::new();
    let mut x = diag_init();
    let mut e: Vec<f64> = x.iter().flatten().zip(f.c.iter().flatten()).map(|(&x, &c)| x as f64 - c as f64).collect();
    for t in 0..60 {
        opt.step(&mut x, &mut f).unwrap();
        for e in e.iter_mut() {
            let u = if t == 0 { tau * e.signum() } else { (*e / gamma).clamp(-tau, tau) };
            *e -= lr * u;
        }
        let got: Vec<f64> = x.iter().flatten().zip(f.c.iter().flatten()).map(|(&x, &c)| x as f64 - c as f64).collect();
        for (g, w) in got.iter().zip(&e) {
            assert!((g - w).abs() <= 1e-4, "step {t}: error {g}, predicted {w}");
        }
    }
    // Three evaluations a step: the gradient, and two for the Hessian-vector product.
    assert_eq!(f.evaluations, 180);
    assert!(e.iter().all(|e| e.abs() < 1e-5));
}

#[test]
fn the_estimate_is_made_every_update_interval_steps_and_decays_by_b2() {
    let mut opt = sophia(json!({"learning_rate": 0.01, "update_interval": 4}), &diag_shapes());
    let mut f = Diagonal::new();
    let mut x = diag_init();
    let mut evaluations = vec![];
    for _ in 0..9 {
        let before = f.evaluations;
        opt.step(&mut x, &mut f).unwrap();
        evaluations.push(f.evaluations - before);
    }
    // Steps 0, 4 and 8 (optax: `count % update_interval == 0` before the increment).
    assert_eq!(evaluations, vec![3, 1, 1, 1, 3, 1, 1, 1, 3]);
    let state = opt.state_dict().unwrap();
    assert_eq!(state.counters["count"], 9);
    // h after three estimates of the exact diagonal: (1 − b2)(1 + b2 + b2²)·h.
    let b2 = 0.99f64;
    let factor = (1.0 - b2) * (1.0 + b2 + b2 * b2);
    for (i, h) in f.h.iter().enumerate() {
        for (got, &h) in state.buffers[&format!("nu.{i}")].iter().zip(h) {
            let want = factor * h as f64;
            assert!((*got as f64 - want).abs() <= 1e-3 * want, "{got} vs {want}");
        }
    }
}

#[test]
fn weight_decay_follows_its_mask() {
    // First step: no estimate yet, so u = τ·sign(g); x ← x − lr·(u + wd·x) where the mask allows.
    let (lr, wd, tau) = (0.1f32, 0.5f32, 1.0f32);
    let h = json!({"learning_rate": lr, "weight_decay": wd, "weight_decay_mask": [true, false]});
    let mut opt = sophia(h, &diag_shapes());
    let mut f = Diagonal::new();
    let x0 = diag_init();
    let mut x = x0.clone();
    let mut g = vec![vec![0.0; 6], vec![0.0; 3]];
    f.value_and_grad(&x0, &mut g).unwrap();
    opt.step(&mut x, &mut f).unwrap();
    for i in 0..2 {
        for j in 0..x0[i].len() {
            let u = if g[i][j] == 0.0 { 0.0 } else { tau * g[i][j].signum() };
            let decay = if i == 0 { wd * x0[i][j] } else { 0.0 };
            let want = x0[i][j] + -lr * (u + decay);
            assert_eq!(x[i][j], want, "param {i}[{j}]");
        }
    }
    // No clipping at all with `clip_threshold: null`: the first step is lr·m̂/ε = 100·g.
    let mut opt = sophia(json!({"learning_rate": 1e-6, "clip_threshold": null, "weight_decay": 0.0}), &diag_shapes());
    let mut x = x0.clone();
    opt.step(&mut x, &mut f).unwrap();
    assert!((x[0][0] - x0[0][0]).abs() > 10.0, "{} → {}", x0[0][0], x[0][0]);
}

#[test]
fn rademacher_vectors_are_seeded_and_resume_exactly() {
    let shapes = vec![vec![5]];
    let h = |seed: u64| json!({"learning_rate": 0.05, "update_interval": 2, "seed": seed, "mu_dtype": "bfloat16"});
    let x0 = vec![vec![0.3f32, -0.2, 0.9, 0.0, -1.1]];
    let go = |seed: u64, stop_at: Option<usize>| -> (Vec<u32>, StateDict) {
        let mut opt = sophia(h(seed), &shapes);
        let mut x = x0.clone();
        for t in 0..9 {
            if Some(t) == stop_at {
                let text = opt.state_dict().unwrap().to_json().unwrap();
                opt = sophia(h(seed), &shapes);
                opt.load_state_dict(&StateDict::from_json(&text).unwrap()).unwrap();
            }
            opt.step(&mut x, &mut dense).unwrap();
        }
        (x[0].iter().map(|v| v.to_bits()).collect(), opt.state_dict().unwrap())
    };
    let (a, sa) = go(1, None);
    assert_eq!(go(1, None), (a.clone(), sa.clone()));
    // A dense Hessian: the estimate depends on the signs drawn.
    let (b, sb) = go(2, None);
    assert_ne!(sa.buffers["nu.0"], sb.buffers["nu.0"]);
    assert_ne!(a, b);
    for k in [1, 2, 5, 8] {
        assert_eq!(go(1, Some(k)), (a.clone(), sa.clone()), "resumed after step {k}");
    }
}

#[test]
fn bad_arguments_are_refused_naming_them() {
    for (h, needle) in [
        (json!({}), "learning_rate"),
        (json!({"learning_rate": 0.1, "b1": 1.5}), "b1"),
        (json!({"learning_rate": 0.1, "b2": -0.1}), "b2"),
        (json!({"learning_rate": 0.1, "eps": -1.0}), "eps"),
        (json!({"learning_rate": 0.1, "gamma": -1.0}), "gamma"),
        (json!({"learning_rate": 0.1, "clip_threshold": -1.0}), "clip_threshold"),
        (json!({"learning_rate": 0.1, "update_interval": 0}), "update_interval"),
        (json!({"learning_rate": 0.1, "weight_decay_mask": [true]}), "weight_decay_mask"),
        (json!({"learning_rate": 0.1, "hessian_diagonal_fn": "exact"}), "hessian_diagonal_fn"),
        (json!({"learning_rate": 0.1, "mu_dtype": "float16"}), "mu_dtype"),
        (json!({"learning_rate": 0.1, "verbose": true}), "print_win_rate_every_n_steps"),
        (json!({"learning_rate": 0.1, "update_hessian_every": 3}), "update_hessian_every"),
    ] {
        let e = build_closure_optimizer("optax", "contrib.sophia", &h, &diag_shapes())
            .err()
            .unwrap_or_else(|| panic!("{h} accepted"))
            .to_string();
        assert!(e.contains(needle), "{h}: {e}");
    }
}
