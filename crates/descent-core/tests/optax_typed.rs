//! The typed optax API (`descent_core::optax`) and the registry's keyword arguments build the same
//! optimizers: every alias's `Default` against the registry name given no arguments (or only the
//! ones optax requires, with the value the `Default` documents), over a few random steps, bit for
//! bit.

use descent_core::optax::{self, contrib};
use descent_core::spec::build_optimizer;
use descent_core::{Optimizer, Transform};
use serde_json::{json, Value};

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![4, 3], vec![5], vec![2, 3]]
}

/// A small deterministic generator of values in [-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn bufs(&mut self, shapes: &[Vec<usize>]) -> Vec<Vec<f32>> {
        shapes.iter().map(|s| (0..s.iter().product::<usize>()).map(|_| self.next()).collect()).collect()
    }
}

/// The parameters after each of `steps` steps of `tx` from the same start and gradients.
fn trajectory(tx: Box<dyn Transform>, steps: usize) -> Vec<Vec<Vec<f32>>> {
    let shapes = shapes();
    let mut rng = Lcg(7);
    let mut params = rng.bufs(&shapes);
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let mut opt = Optimizer::new(tx, shapes.clone(), &views).unwrap();
    let mut out = vec![];
    for _ in 0..steps {
        let grads = rng.bufs(&shapes);
        opt.step_vecs(&mut params, &grads).unwrap();
        out.push(params.clone());
    }
    out
}

fn bits(t: &[Vec<Vec<f32>>]) -> Vec<Vec<Vec<u32>>> {
    t.iter().map(|ps| ps.iter().map(|p| p.iter().map(|x| x.to_bits()).collect()).collect()).collect()
}

fn same(name: &str, kwargs: Value, typed: Box<dyn Transform>) {
    let built = build_optimizer("optax", name, &kwargs, None, &shapes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (a, b) = (trajectory(built, 6), trajectory(typed, 6));
    assert!(a.last().unwrap().iter().flatten().all(|x| x.is_finite()), "{name}: {a:?}");
    assert_eq!(bits(&a), bits(&b), "optax.{name} {kwargs}: the typed constructor's trajectory differs");
}

#[test]
fn every_typed_alias_with_its_default_is_the_registrys() {
    use optax::*;
    let lr = json!({ "learning_rate": optax::DEFAULT_LEARNING_RATE });
    let none = json!({});
    same("adabelief", lr.clone(), adabelief(Adabelief::default()));
    same("adadelta", none.clone(), adadelta(Adadelta::default()));
    same("adafactor", none.clone(), optax::adafactor(optax::Adafactor::default()));
    same("adagrad", lr.clone(), adagrad(Adagrad::default()));
    same("adam", lr.clone(), adam(Adam::default()));
    same("adamax", lr.clone(), adamax(Adamax::default()));
    same("adamaxw", lr.clone(), adamaxw(AdamaxW::default()));
    same("adamw", lr.clone(), adamw(AdamW::default()));
    same("adan", lr.clone(), adan(Adan::default()));
    same("amsgrad", lr.clone(), amsgrad(Amsgrad::default()));
    same("fromage", lr.clone(), fromage(Fromage::default()));
    same("lamb", lr.clone(), lamb(Lamb::default()));
    same("lars", lr.clone(), lars(Lars::default()));
    same("lion", lr.clone(), lion(Lion::default()));
    same("nadam", lr.clone(), nadam(Nadam::default()));
    same("nadamw", lr.clone(), nadamw(NadamW::default()));
    same("novograd", lr.clone(), novograd(Novograd::default()));
    same("optimistic_adam", lr.clone(), optimistic_adam(OptimisticAdam::default()));
    same("optimistic_adam_v2", lr.clone(), optimistic_adam_v2(OptimisticAdamV2::default()));
    same("optimistic_gradient_descent", lr.clone(), optimistic_gradient_descent(OptimisticGradientDescent::default()));
    same("radam", lr.clone(), radam(Radam::default()));
    same("rmsprop", lr.clone(), rmsprop(Rmsprop::default()));
    same("rprop", lr.clone(), rprop(Rprop::default()));
    same("sgd", lr.clone(), sgd(Sgd::default()));
    same("sign_sgd", lr.clone(), sign_sgd(SignSgd::default()));
    same("signum", lr.clone(), signum(Signum::default()));
    same("sm3", lr.clone(), sm3(Sm3::default()));
    same("yogi", lr.clone(), yogi(Yogi::default()));
}

#[test]
fn every_typed_contrib_alias_with_its_default_is_the_registrys() {
    use contrib::*;
    let lr = json!({ "learning_rate": optax::DEFAULT_LEARNING_RATE });
    let none = json!({});
    same("contrib.acprop", lr.clone(), acprop(Acprop::default()));
    same("contrib.ademamix", lr.clone(), ademamix(Ademamix::default()));
    same("contrib.adopt", lr.clone(), adopt(Adopt::default()));
    same("contrib.cocob", none.clone(), cocob(Cocob::default()));
    same("contrib.dadapt_adamw", none.clone(), dadapt_adamw(DadaptAdamW::default()));
    same("contrib.dog", none.clone(), dog(Dog::default()));
    same("contrib.dowg", none.clone(), dowg(Dowg::default()));
    same("contrib.madgrad", lr.clone(), madgrad(Madgrad::default()));
    let base = || optax::sgd(optax::Sgd { learning_rate: 0.1.into(), ..Default::default() });
    same(
        "contrib.mechanize",
        json!({"base_optimizer": ["sgd", {"learning_rate": 0.1}]}),
        mechanize(Mechanize::new(base())).unwrap(),
    );
    // optax requires Muon's rate; the default here is 0.02.
    same("contrib.muon", json!({"learning_rate": 0.02}), muon(Muon::default()));
    same("contrib.prodigy", none.clone(), prodigy(Prodigy::default()));
    same("contrib.schedule_free_adamw", none.clone(), schedule_free_adamw(ScheduleFreeAdamW::default()));
    same("contrib.schedule_free_sgd", none.clone(), schedule_free_sgd(ScheduleFreeSgd::default()));
    same("contrib.simplified_ademamix", lr.clone(), simplified_ademamix(SimplifiedAdemamix::default()));
}

/// The arguments that are not defaults reach the same fields: a mask, a momentum, a schedule.
#[test]
fn typed_fields_are_the_keyword_arguments() {
    same(
        "adamw",
        json!({"learning_rate": 0.01, "b1": 0.8, "weight_decay": 0.1, "mask": [true, false, true], "nesterov": true}),
        optax::adamw(optax::AdamW {
            learning_rate: 0.01.into(),
            b1: 0.8,
            weight_decay: 0.1.into(),
            mask: Some(vec![true, false, true]),
            nesterov: true,
            ..Default::default()
        }),
    );
    same(
        "rmsprop",
        json!({"learning_rate": 0.01, "centered": true, "momentum": 0.5, "nesterov": true}),
        optax::rmsprop(optax::Rmsprop {
            learning_rate: 0.01.into(),
            centered: true,
            momentum: Some(0.5),
            nesterov: true,
            ..Default::default()
        }),
    );
    same(
        "contrib.muon",
        json!({"learning_rate": 0.05, "adam_learning_rate": 0.001, "weight_decay": 0.1, "nesterov": false}),
        contrib::muon(contrib::Muon {
            learning_rate: 0.05.into(),
            adam_learning_rate: Some(0.001.into()),
            weight_decay: 0.1.into(),
            nesterov: false,
            ..Default::default()
        }),
    );
    same(
        "adam",
        json!({"learning_rate": {"schedule": "linear_schedule", "init_value": 0.02, "end_value": 0.0, "transition_steps": 4}}),
        optax::adam(optax::Adam {
            learning_rate: descent_core::schedule::linear(descent_core::schedule::Linear {
                init_value: 0.02,
                end_value: 0.0,
                transition_steps: 4,
                transition_begin: 0,
            })
            .into(),
            ..Default::default()
        }),
    );
    same(
        "contrib.mechanize",
        json!({"base_optimizer": ["adam", {"learning_rate": 0.1}], "num_betas": 3}),
        contrib::mechanize(contrib::Mechanize {
            num_betas: 3,
            ..contrib::Mechanize::new(optax::adam(optax::Adam { learning_rate: 0.1.into(), ..Default::default() }))
        })
        .unwrap(),
    );
    assert!(contrib::mechanize(contrib::Mechanize {
        num_betas: 0,
        ..contrib::Mechanize::new(optax::sgd(Default::default()))
    })
    .is_err());
}

/// A mask has one entry per parameter, as the keyword-argument path checks: a typed config's
/// mask of another length is refused when the parameters are known, a uniform one too (it would
/// otherwise turn weight decay on or off for every parameter whatever their count).
#[test]
fn a_typed_mask_of_another_length_is_refused_at_init() {
    let shapes = shapes();
    let params: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.5; s.iter().product()]).collect();
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    for mask in [vec![false], vec![true, true], vec![], vec![true, false, true, false], vec![true; 4]] {
        let tx = optax::adamw(optax::AdamW { mask: Some(mask.clone()), ..Default::default() });
        let e = Optimizer::new(tx, shapes.clone(), &views).err().map(|e| e.to_string());
        assert!(e.is_some(), "mask {mask:?} for 3 parameters was accepted");
    }
    let tx = optax::adamw(optax::AdamW { mask: Some(vec![true; 3]), ..Default::default() });
    assert!(Optimizer::new(tx, shapes.clone(), &views).is_ok());
}

/// A transformation stepped directly (optax style, without [`Optimizer`]) with updates that do
/// not match the parameters gets an error, not a panic.
#[test]
fn a_direct_update_with_mismatched_buffers_is_an_error() {
    let shapes = shapes();
    let params: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.5; s.iter().product()]).collect();
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let mut tx = optax::adam(optax::Adam::default());
    tx.init(&shapes, &views).unwrap();
    let mut short = vec![vec![0.1f32; 12]];
    assert!(tx.update(&mut short, &views).is_err());
    let mut longer: Vec<Vec<f32>> = params.iter().map(|p| vec![0.1; p.len() + 1]).collect();
    assert!(tx.update(&mut longer, &views).is_err());
}

/// Parameters of other sizes than `init` was given (both the updates and the parameters), or an
/// update before `init`: an error naming the mismatch, not an index out of the state's range.
#[test]
fn an_update_of_other_parameters_than_init_is_an_error() {
    let mut tx = optax::adam(optax::Adam::default());
    let p = [0.0f32; 4];
    let mut u = vec![vec![0.1f32; 4]];
    let e = tx.update(&mut u, &[&p]).unwrap_err().to_string();
    assert!(e.contains("before init"), "{e}");
    tx.init(&[vec![3]], &[&[0.0; 3]]).unwrap();
    let e = tx.update(&mut u, &[&p]).unwrap_err().to_string();
    assert!(e.contains("4 elements") && e.contains("expected 3"), "{e}");
    let mut u3 = vec![vec![0.1f32; 3]];
    tx.update(&mut u3, &[&[0.0; 3]]).unwrap();
    // The optimizer's evaluated weights, of parameters that are not its own.
    let opt = descent_core::Optimizer::new(
        optax::adamw(optax::AdamW { mask: Some(vec![true, false]), ..Default::default() }),
        vec![vec![2, 3], vec![3]],
        &[&[0.0; 6], &[0.0; 3]],
    )
    .unwrap();
    assert!(opt.eval_params(&[vec![0.0; 6]]).is_err());
    assert!(opt.eval_params(&[vec![0.0; 6], vec![0.0; 3]]).unwrap().is_none());
}
