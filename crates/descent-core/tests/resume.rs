//! Save / load / resume is exact: for every optimizer of the reference set, a run stopped after
//! step k, saved (through JSON text), loaded into a freshly built optimizer and continued gives
//! bit-for-bit the parameters of an uninterrupted run.

mod common;

use descent_core::replay::{Case, OptimCase};
use descent_core::state::StateDict;

fn run(case: &OptimCase, stop_at: Option<usize>) -> Vec<Vec<f32>> {
    let mut opt = case.optimizer().unwrap();
    let mut params = case.init.clone();
    for (t, g) in case.grads.iter().enumerate() {
        if Some(t) == stop_at {
            let text = opt.state_dict().unwrap().to_json().unwrap();
            drop(opt);
            opt = case.optimizer().unwrap();
            opt.load_state_dict(&StateDict::from_json(&text).unwrap()).unwrap();
        }
        opt.step_vecs(&mut params, g).unwrap();
    }
    opt.eval_params(&params).unwrap().unwrap_or(params)
}

#[test]
fn resume_is_bit_exact_for_every_optimizer() {
    let mut checked = 0;
    for case in common::all_cases() {
        let Case::Optim(c) = case else { continue };
        let full = run(&c, None);
        for k in [1, c.grads.len() / 2, c.grads.len() - 1] {
            let resumed = run(&c, Some(k));
            for (a, b) in full.iter().flatten().zip(resumed.iter().flatten()) {
                assert_eq!(a.to_bits(), b.to_bits(), "{}: resumed after step {k} differs ({a} vs {b})", c.id);
            }
        }
        checked += 1;
    }
    assert!(checked >= 61, "only {checked} optimizer cases checked");
}

/// `Optimizer::reset` (each transformation's `init` called again) leaves nothing of the steps
/// before it: a run reset after k steps continues exactly as a freshly built optimizer.
#[test]
fn reset_is_a_fresh_start_for_every_optimizer() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files = descent_core::replay::collect_case_files(&[dir]).unwrap();
    for set in ["reference", "reference-po", "reference-r2"] {
        files.extend(descent_core::replay::collect_case_files(&[common::shared_dir(set)]).unwrap());
    }
    let mut checked = 0;
    let mut failed = vec![];
    for f in &files {
        let Case::Optim(c) = descent_core::replay::load_case(f).unwrap() else { continue };
        if c.sparse_grads.is_some() {
            continue;
        }
        let Ok(mut fresh) = c.optimizer() else { continue };
        let fresh_state = fresh.state_dict().unwrap().to_json().unwrap();
        let mut reset = c.optimizer().unwrap();
        let mut p0 = c.init.clone();
        let mut p1 = c.init.clone();
        let k = c.grads.len().min(5);
        for g in &c.grads[..k] {
            reset.step_vecs(&mut p1, g).unwrap();
        }
        let views: Vec<&[f32]> = c.init.iter().map(|v| v.as_slice()).collect();
        reset.reset(&views).unwrap();
        // Every entry of the state as built (counters and scalars included), then the same steps.
        let mut same = reset.state_dict().unwrap().to_json().unwrap() == fresh_state;
        let mut p1 = c.init.clone();
        for g in &c.grads {
            fresh.step_vecs(&mut p0, g).unwrap();
            reset.step_vecs(&mut p1, g).unwrap();
            same &= p0.iter().flatten().zip(p1.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits());
        }
        if !same {
            failed.push(c.id.clone());
        }
        checked += 1;
    }
    assert!(failed.is_empty(), "{} of {checked} optimizers carry state across a reset: {failed:?}", failed.len());
    assert!(checked >= 500, "only {checked} optimizer cases checked");
}

/// A state whose values the optimizer refuses while loading them (a bfloat16 moment holding a
/// value bfloat16 cannot, an L-BFGS history index past its size) leaves the optimizer as it was.
#[test]
fn a_state_refused_midway_leaves_the_optimizer_untouched() {
    use descent_core::closure::build_closure_optimizer;
    use descent_core::optimizer::Optimizer;
    use descent_core::spec::build_optimizer;
    use serde_json::json;
    let shapes = vec![vec![4], vec![3]];
    let init = [vec![0.5f32; 4], vec![-0.25f32; 3]];
    let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
    let h = json!({"learning_rate": 0.1, "mu_dtype": "bfloat16"});
    let mut opt =
        Optimizer::new(build_optimizer("optax", "adamw", &h, None, &shapes).unwrap(), shapes.clone(), &views).unwrap();
    let mut p = init.to_vec();
    opt.step_vecs(&mut p, &[vec![0.3; 4], vec![-0.7; 3]]).unwrap();
    let before = opt.state_dict().unwrap();
    let mut bad = before.clone();
    let key = bad.buffers.keys().filter(|k| k.contains("mu_bf16")).max().unwrap().clone();
    bad.buffers.get_mut(&key).unwrap()[0] = 0.1;
    // An entry loaded before the refused one changes too: it must be put back.
    let first = bad.buffers.keys().filter(|k| k.contains("mu_bf16")).min().unwrap().clone();
    assert_ne!(first, key);
    bad.buffers.get_mut(&first).unwrap()[0] = 0.5;
    let e = opt.load_state_dict(&bad).unwrap_err().to_string();
    assert!(e.contains("not bfloat16"), "{e}");
    assert_eq!(opt.state_dict().unwrap(), before, "the buffers loaded before the refused one are put back");

    let mut lbfgs = build_closure_optimizer("torch", "lbfgs", &json!({"lr": 0.5}), &shapes).unwrap();
    let before = lbfgs.state_dict().unwrap();
    let mut bad = before.clone();
    bad.counters.insert("history_start".into(), 1000);
    bad.buffers.get_mut("d").unwrap()[0] = 7.0;
    assert!(lbfgs.load_state_dict(&bad).is_err());
    assert_eq!(lbfgs.state_dict().unwrap(), before);
}

#[test]
fn state_of_another_optimizer_is_refused_whole() {
    let cases: Vec<OptimCase> = common::all_cases()
        .into_iter()
        .filter_map(|c| match c {
            Case::Optim(o) => Some(o),
            _ => None,
        })
        .collect();
    let adam = cases.iter().find(|c| c.id == "torch.adam.default").unwrap();
    let sgd = cases.iter().find(|c| c.id == "torch.sgd.momentum").unwrap();
    let mut a = adam.optimizer().unwrap();
    let mut params = adam.init.clone();
    a.step_vecs(&mut params, &adam.grads[0]).unwrap();
    let before = a.state_dict().unwrap();
    let mut s = sgd.optimizer().unwrap();
    let sgd_state = s.state_dict().unwrap();
    let err = a.load_state_dict(&sgd_state).unwrap_err().to_string();
    assert!(err.starts_with("state:"), "{err}");
    assert_eq!(a.state_dict().unwrap(), before, "a refused state must leave the optimizer untouched");
}

/// pytorch_optimizer's shared options keep state of their own (AdaNorm's running norm of each
/// tensor): resumed runs of the recorded option cases are bit-exact too.
#[test]
fn resume_is_bit_exact_with_pytorch_optimizer_options() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/options");
    let files = descent_core::replay::collect_case_files(&[dir]).unwrap();
    let mut checked = 0;
    for f in files.iter().filter(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".opt_"))) {
        let Case::Optim(c) = descent_core::replay::load_case(f).unwrap() else { continue };
        let full = run(&c, None);
        for k in [1, c.grads.len() / 2] {
            let resumed = run(&c, Some(k));
            for (a, b) in full.iter().flatten().zip(resumed.iter().flatten()) {
                assert_eq!(a.to_bits(), b.to_bits(), "{}: resumed after step {k} differs ({a} vs {b})", c.id);
            }
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} option cases checked");
}

/// A state holding NaN and infinities (a diverged run's) round-trips through JSON exactly.
#[test]
fn a_non_finite_state_round_trips_through_json() {
    let mut d = StateDict::default();
    d.buffers.insert("m.0".into(), vec![1.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.1]);
    d.scalars.insert("d".into(), f64::NEG_INFINITY);
    d.scalars.insert("e".into(), 1e-300);
    d.counters.insert("step".into(), 3);
    let text = d.to_json().unwrap();
    assert!(text.contains("\"NaN\"") && text.contains("\"-inf\""), "{text}");
    let back = StateDict::from_json(&text).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back.buffers["m.0"]), bits(&d.buffers["m.0"]));
    assert_eq!(back.scalars, d.scalars);
    assert_eq!(back.counters, d.counters);
    let e = StateDict::from_json(r#"{"buffers": {"m.0": [1, "nan"]}, "scalars": {}, "counters": {}}"#).unwrap_err();
    assert!(e.to_string().contains("`m.0`"), "{e}");
}
