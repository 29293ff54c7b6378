//! The second reference set (`shared/reference-r2`), replayed through descent under the pass rule
//! of `shared/reference/README.md`, family by family as they are implemented.

mod common;

/// Case families (id prefixes) of the second set that descent does not implement yet, with what
/// is missing. Every other case must pass; one of these that passes must come off the list.
const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    ("optax.contrib.galore", "optimizer"),
    ("optax.contrib.momo", "problem cases (an objective instead of gradients)"),
    ("optax.contrib.momo_adam", "problem cases"),
    ("optax.contrib.sam", "problem cases"),
    ("optax.lbfgs", "problem cases"),
    ("optax.polyak_sgd", "problem cases"),
    ("po.adamuon", "optimizer"),
    ("po.ademamix", "optimizer"),
    ("po.adopt", "optimizer"),
    ("po.aggmo", "optimizer"),
    ("po.dadaptadam", "optimizer"),
    ("po.galore", "optimizer"),
    ("po.lookahead", "optimizer"),
    ("po.madgrad", "optimizer"),
    ("po.novograd", "optimizer"),
    ("po.prodigy", "optimizer"),
    ("po.ranger21", "optimizer"),
    ("po.sam", "problem cases"),
    ("po.scalableshampoo", "optimizer"),
    ("po.schedulefreeradam", "optimizer"),
    ("po.spam", "optimizer"),
    ("torch.lbfgs", "problem cases"),
];

#[test]
fn second_reference_set_passes_where_implemented() {
    common::replay_folder("reference-r2", 75, NOT_IMPLEMENTED);
}
