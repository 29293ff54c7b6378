//! The further pytorch_optimizer optimizers (`po.ademamix`, `po.prodigy`, `po.lookahead`, …):
//! resume, maximize and parameter groups on their reference cases, the arguments they refuse, and
//! the options their cases do not reach checked against the classes' update rules in `f64`.

mod common;

use descent_core::replay::{collect_case_files, load_case, Case, OptimCase};
use descent_core::spec::build_optimizer;
use descent_core::state::StateDict;
use descent_core::Optimizer;
use serde_json::{json, Value};

const FAMILIES: &[&str] = &[
    "ademamix",
    "adopt",
    "aggmo",
    "dadaptadam",
    "lookahead",
    "madgrad",
    "novograd",
    "prodigy",
    "ranger21",
    "schedulefreeradam",
    "spam",
];

/// The reference-r2 cases of this family.
fn cases() -> Vec<OptimCase> {
    let files = collect_case_files(&[common::shared_dir("reference-r2")]).unwrap();
    let ours = |f: &std::path::PathBuf| {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        FAMILIES.iter().any(|fam| name.starts_with(&format!("po.{fam}.")))
    };
    let cases: Vec<OptimCase> = files
        .iter()
        .filter(|f| ours(f))
        .filter_map(|f| match load_case(f).unwrap() {
            Case::Optim(c) if c.library == "po" && FAMILIES.contains(&c.optimizer.as_str()) => Some(c),
            _ => None,
        })
        .collect();
    assert!(cases.len() >= 13, "only {} cases", cases.len());
    cases
}

/// The parameters after every step, the optimizer built from `hparams` (and `groups`); with
/// `stop_at`, saved through JSON there and resumed in a fresh optimizer.
fn run(c: &OptimCase, hparams: &Value, groups: Option<&Value>, stop_at: Option<usize>, negate: bool) -> Vec<Vec<f32>> {
    let build = || {
        let tx = build_optimizer("po", &c.optimizer, hparams, groups, &c.shapes).unwrap();
        let views: Vec<&[f32]> = c.init.iter().map(|v| v.as_slice()).collect();
        Optimizer::new(tx, c.shapes.clone(), &views).unwrap()
    };
    let mut opt = build();
    let mut params = c.init.clone();
    let mut out = vec![];
    for (t, g) in c.grads.iter().enumerate() {
        if Some(t) == stop_at {
            let text = opt.state_dict().unwrap().to_json().unwrap();
            opt = build();
            opt.load_state_dict(&StateDict::from_json(&text).unwrap()).unwrap();
        }
        let g: Vec<Vec<f32>> =
            if negate { g.iter().map(|v| v.iter().map(|x| -x).collect()).collect() } else { g.clone() };
        opt.step_vecs(&mut params, &g).unwrap();
        out.extend(params.iter().cloned());
    }
    out
}

fn assert_same_bits(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: {x} vs {y}");
    }
}

#[test]
fn resume_is_bit_exact() {
    for c in cases() {
        let full = run(&c, &c.hparams, None, None, false);
        for k in [1, c.grads.len() / 2, c.grads.len() - 1] {
            assert_same_bits(&full, &run(&c, &c.hparams, None, Some(k), false), &format!("{} resumed at {k}", c.id));
        }
    }
}

#[test]
fn maximize_ascends_the_negated_gradients_exactly() {
    for c in cases().into_iter().filter(|c| c.optimizer != "lookahead") {
        let mut h = c.hparams.clone();
        h["maximize"] = json!(true);
        assert_same_bits(&run(&c, &c.hparams, None, None, false), &run(&c, &h, None, None, true), &c.id);
    }
}

#[test]
fn groups_with_the_constructor_arguments_change_nothing() {
    let groups = json!([{"params": [0]}, {"params": [1, 2], "hparams": {}}]);
    for c in cases() {
        if ["dadaptadam", "prodigy", "ranger21"].contains(&c.optimizer.as_str()) {
            // Their steps couple all parameters: groups are refused.
            let e = build_optimizer("po", &c.optimizer, &c.hparams, Some(&groups), &c.shapes).err().unwrap();
            assert!(e.to_string().contains("param_groups"), "{e}");
            continue;
        }
        let one = run(&c, &c.hparams, None, None, false);
        assert_same_bits(&one, &run(&c, &c.hparams, Some(&groups), None, false), &c.id);
    }
}

#[test]
fn the_learning_rate_is_live() {
    for c in cases() {
        let tx = build_optimizer("po", &c.optimizer, &c.hparams, None, &c.shapes).unwrap();
        let views: Vec<&[f32]> = c.init.iter().map(|v| v.as_slice()).collect();
        let mut opt = Optimizer::new(tx, c.shapes.clone(), &views).unwrap();
        assert!(!opt.learning_rates().is_empty(), "{}", c.id);
        let mut p = c.init.clone();
        for g in &c.grads[..8] {
            opt.step_vecs(&mut p, g).unwrap();
        }
        let mut q = p.clone();
        let mut other = Optimizer::new(
            build_optimizer("po", &c.optimizer, &c.hparams, None, &c.shapes).unwrap(),
            c.shapes.clone(),
            &views,
        )
        .unwrap();
        other.load_state_dict(&opt.state_dict().unwrap()).unwrap();
        other.set_learning_rate(opt.learning_rate().unwrap() * 0.5).unwrap();
        opt.step_vecs(&mut p, &c.grads[8]).unwrap();
        other.step_vecs(&mut q, &c.grads[8]).unwrap();
        assert_ne!(p, q, "{}: setting the rate changed nothing", c.id);
    }
}

fn build_err(name: &str, h: Value) -> String {
    match build_optimizer("po", name, &h, None, &[vec![2, 3], vec![3]]) {
        Ok(_) => panic!("po.{name} {h} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn arguments_not_reproduced_or_out_of_range_are_refused() {
    for (name, h, needle) in [
        ("spam", json!({"density": 0.5}), "density"),
        ("spam", json!({"update_proj_gap": 0}), "update_proj_gap"),
        ("ademamix", json!({"adanorm": true}), "adanorm"),
        ("ademamix", json!({"betas": [0.9, 0.999]}), "betas"),
        ("ademamix", json!({"t_alpha_beta3": 0.0}), "t_alpha_beta3"),
        ("adopt", json!({"clip_lambda": 1.0}), "clip_lambda"),
        ("adopt", json!({"lr": -0.1}), "learning rate"),
        ("aggmo", json!({"betas": [0.9]}), "betas"),
        ("aggmo", json!({"betas": [0.0, 1.0]}), "beta2"),
        ("prodigy", json!({"d0": 0.0}), "d0"),
        ("prodigy", json!({"beta3": 1.5}), "beta3"),
        ("madgrad", json!({"momentum": 1.0}), "momentum"),
        ("novograd", json!({"eps": -1.0}), "eps"),
        ("dadaptadam", json!({"weight_decay": -1.0}), "weight_decay"),
        ("ranger21", json!({}), "num_iterations"),
        ("ranger21", json!({"num_iterations": 10, "beta0": 1.0}), "beta0"),
        ("schedulefreeradam", json!({"betas": [0.0, 0.999]}), "beta1"),
        ("lookahead", json!({"k": 5}), "inner"),
        ("lookahead", json!({"inner": ["torch.optim.SGD", {"lr": 0.1}], "alpha": 1.0}), "alpha"),
        ("lookahead", json!({"inner": ["torch.optim.SGD", {"lr": 0.1}], "pullback_momentum": "x"}), "pullback"),
    ] {
        let e = build_err(name, h.clone());
        assert!(e.contains(needle), "po.{name} {h}: {e}");
    }
    // The library's None for its Optional arguments.
    for (name, h) in [
        ("adopt", json!({"clip_lambda": null})),
        ("prodigy", json!({"eps": null, "beta3": null})),
        ("ranger21", json!({"num_iterations": 10, "num_warm_up_iterations": null})),
        ("ademamix", json!({"t_alpha_beta3": null, "foreach": null})),
    ] {
        build_optimizer("po", name, &h, None, &[vec![2, 3]]).unwrap_or_else(|e| panic!("po.{name} {h}: {e}"));
    }
}

/// A few steps of `name` with `hparams` on one vector parameter.
fn steps(name: &str, hparams: Value, p0: &[f32], grads: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let shapes = vec![vec![p0.len()]];
    let tx = build_optimizer("po", name, &hparams, None, &shapes).unwrap();
    let mut opt = Optimizer::new(tx, shapes, &[p0]).unwrap();
    let mut p = vec![p0.to_vec()];
    grads
        .iter()
        .map(|g| {
            opt.step_vecs(&mut p, std::slice::from_ref(g)).unwrap();
            p[0].clone()
        })
        .collect()
}

fn grads(n: usize, len: usize) -> Vec<Vec<f32>> {
    (0..n).map(|t| (0..len).map(|j| (((t * 7 + j * 5) % 13) as f32 - 6.0) / 4.0).collect()).collect()
}

fn close(ours: &[Vec<f32>], want: &[Vec<f64>], tol: f64, what: &str) {
    for (t, (a, b)) in ours.iter().zip(want).enumerate() {
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() <= tol * y.abs().max(1.0), "{what} step {t}: {x} vs {y}");
        }
    }
}

/// Lookahead around torch SGD with dampened momentum: `reset` zeroes the momentum at each slow
/// update (a zero buffer, not a fresh one), `pullback` interpolates it toward a slow momentum.
#[test]
fn lookahead_resets_or_pulls_back_the_inner_momentum() {
    let p0 = [0.5f32, -1.0, 2.0];
    let g = grads(9, 3);
    let (lr, mu, damp, k, alpha) = (0.1, 0.9, 0.3, 2usize, 0.4);
    for mode in ["none", "reset", "pullback"] {
        let h = json!({"k": k, "alpha": alpha, "pullback_momentum": mode,
            "inner": ["torch.optim.SGD", {"lr": lr, "momentum": mu, "dampening": damp}]});
        let ours = steps("lookahead", h, &p0, &g);
        let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
        let (mut slow, mut buf, mut slow_m) = (p.clone(), vec![0.0f64; 3], vec![0.0f64; 3]);
        let mut want = vec![];
        for (t, gt) in g.iter().enumerate() {
            for j in 0..3 {
                let gj = gt[j] as f64;
                buf[j] = if t == 0 { gj } else { mu * buf[j] + (1.0 - damp) * gj };
                p[j] -= lr * buf[j];
            }
            if (t + 1) % k == 0 {
                for j in 0..3 {
                    p[j] += (1.0 - alpha) * (slow[j] - p[j]);
                    slow[j] = p[j];
                    match mode {
                        "reset" => buf[j] = 0.0,
                        "pullback" => {
                            buf[j] += (1.0 - alpha) * (slow_m[j] - buf[j]);
                            slow_m[j] = buf[j];
                        }
                        _ => {}
                    }
                }
            }
            want.push(p.clone());
        }
        close(&ours, &want, 1e-5, mode);
    }
}

/// AggMo keys its buffers by decay: a decay listed twice is one buffer updated twice a step.
#[test]
fn aggmo_shares_the_buffer_of_a_repeated_decay() {
    let p0 = [0.5f32, -1.0];
    let g = grads(6, 2);
    let ours = steps("aggmo", json!({"lr": 0.1, "betas": [0.5, 0.9, 0.5]}), &p0, &g);
    let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
    let (mut b5, mut b9) = ([0.0f64; 2], [0.0f64; 2]);
    let mut want = vec![];
    for gt in &g {
        for j in 0..2 {
            let gj = gt[j] as f64;
            for beta in [0.5, 0.9, 0.5] {
                let b = if beta == 0.5 { &mut b5[j] } else { &mut b9[j] };
                *b = beta * *b + gj;
                p[j] -= 0.1 / 3.0 * *b;
            }
        }
        want.push(p.clone());
    }
    close(&ours, &want, 1e-5, "aggmo");
}

/// Prodigy with `eps=None` steps by `atan2(m, √v)`, with decoupled decay scaled by `d·lr`;
/// checked in `f64` against the class's rule.
#[test]
fn prodigy_atan2_step_with_decoupled_decay() {
    let p0 = [0.5f32, -1.0, 2.0];
    let g = grads(6, 3);
    let (lr, wd, d0) = (1.0, 0.1, 1e-3);
    let ours = steps("prodigy", json!({"lr": lr, "eps": null, "weight_decay": wd, "d0": d0}), &p0, &g);
    let (b1, b2) = (0.9f64, 0.999f64);
    let b3 = b2.sqrt();
    let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
    let x0 = p.clone();
    let (mut m, mut v, mut s) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
    let (mut d, mut d_max, mut num) = (d0, d0, 0.0f64);
    let mut want = vec![];
    for gt in &g {
        let d_lr = d * lr;
        num *= b3;
        let mut den = 0.0;
        for j in 0..3 {
            let gj = gt[j] as f64;
            num += (d / d0) * d_lr * gj * (x0[j] - p[j]);
            m[j] = b1 * m[j] + d * (1.0 - b1) * gj;
            v[j] = b2 * v[j] + d * d * (1.0 - b2) * gj * gj;
            s[j] = b3 * s[j] + (d / d0) * d_lr * gj;
            den += s[j].abs();
        }
        let d_hat = num / den;
        if d == d0 {
            d = d.max(d_hat);
        }
        d_max = d_max.max(d_hat);
        d = d_max.min(d * f64::INFINITY);
        for j in 0..3 {
            p[j] *= 1.0 - wd * d_lr;
            p[j] -= d_lr * m[j].atan2(v[j].sqrt());
        }
        want.push(p.clone());
    }
    close(&ours, &want, 1e-4, "prodigy");
}
