//! Every file of the reference set, replayed through descent under the README's pass rule.

mod common;

use descent_core::replay::run_and_check;

/// Cases that do not pass yet, with the reason. Must shrink to empty.
const KNOWN_FAILING: &[(&str, &str)] = &[];

#[test]
fn every_reference_case_passes() {
    let cases = common::all_cases();
    assert!(cases.len() >= 82, "expected the whole reference set, found {} cases", cases.len());
    let mut failures = vec![];
    let mut unexpectedly_passing = vec![];
    for case in &cases {
        let known = KNOWN_FAILING.iter().any(|(id, _)| *id == case.id());
        match run_and_check(case) {
            Ok(r) if r.passed => {
                if known {
                    unexpectedly_passing.push(case.id().to_string());
                }
            }
            Ok(r) => {
                if !known {
                    failures.push(format!("{}: error {:.3}x tolerance at step {}", case.id(), r.ratio, r.step));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.id())),
        }
    }
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
    assert!(unexpectedly_passing.is_empty(), "now passing, remove from KNOWN_FAILING: {unexpectedly_passing:?}");
}
