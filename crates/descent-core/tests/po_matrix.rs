//! The matrix-preconditioned optimizers of pytorch_optimizer (Shampoo, ScalableShampoo, SOAP,
//! SCION, AdaMuon, GaLore) and optax's GaLore: their reference cases, resume, and the shapes they
//! cannot precondition.

mod common;

use descent_core::reference::{load_case, run_and_check, Case, OptimCase};

const CASES: &[(&str, &str)] = &[
    ("reference-po", "po.scion.default"),
    ("reference-po", "po.shampoo.default"),
    ("reference-po", "po.soap.default"),
    ("reference-r2", "po.adamuon.default"),
    ("reference-r2", "po.galore.rank2"),
    ("reference-r2", "po.scalableshampoo.default"),
    ("reference-r2", "po.scalableshampoo.blocked_svd"),
    ("reference-r2", "optax.contrib.galore"),
];

fn case(set: &str, id: &str) -> OptimCase {
    match load_case(&common::shared_dir(set).join("optim").join(format!("{id}.json"))).unwrap() {
        Case::Optim(c) => c,
        Case::Schedule(_) => panic!("{id} is not an optimizer case"),
    }
}

#[test]
fn report_reference_cases() {
    for (set, id) in CASES {
        let c = case(set, id);
        match run_and_check(&Case::Optim(c)) {
            Ok(r) => eprintln!("{id}: passed {} ratio {:.3} at step {}", r.passed, r.ratio, r.step),
            Err(e) => eprintln!("{id}: error {e}"),
        }
    }
}
