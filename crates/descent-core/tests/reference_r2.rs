//! The second reference set (`shared/reference-r2`), replayed through descent under the pass rule
//! of `shared/reference/README.md`, family by family as they are implemented.

mod common;

/// Case families (id prefixes) of the second set that descent does not implement yet, with what
/// is missing. Every other case must pass; one of these that passes must come off the list.
const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    ("optax.contrib.momo", "problem cases (an objective instead of gradients)"),
    ("optax.contrib.momo_adam", "problem cases"),
    ("optax.contrib.sam", "problem cases"),
    ("optax.lbfgs", "problem cases"),
    ("optax.polyak_sgd", "problem cases"),
    ("po.adabelief", "optimizer"),
    ("po.adafactor", "optimizer"),
    ("po.adan", "optimizer"),
    ("po.ademamix", "optimizer"),
    ("po.adopt", "optimizer"),
    ("po.aggmo", "optimizer"),
    ("po.dadaptadam", "optimizer"),
    ("po.diffgrad", "optimizer"),
    ("po.lamb", "optimizer"),
    ("po.lion", "optimizer"),
    ("po.lookahead", "optimizer"),
    ("po.madgrad", "optimizer"),
    ("po.novograd", "optimizer"),
    ("po.prodigy", "optimizer"),
    ("po.ranger21", "optimizer"),
    ("po.sam", "problem cases"),
    ("po.schedulefreeradam", "optimizer"),
    ("po.sgdp", "optimizer"),
    ("po.spam", "optimizer"),
    ("po.yogi", "optimizer"),
    ("torch.lbfgs", "problem cases"),
];

#[test]
fn second_reference_set_passes_where_implemented() {
    common::replay_folder("reference-r2", 75, NOT_IMPLEMENTED);
}
