//! The pytorch_optimizer reference set (`shared/reference-po`), replayed through descent under the
//! pass rule of `shared/reference/README.md`.

mod common;

/// Case families (id prefixes) that do not pass, with the reason. Must shrink to empty.
const NOT_IMPLEMENTED: &[(&str, &str)] = &[(
    "po.soap",
    "implemented; its first eigenbasis of a tall matrix is not unique and the case follows LAPACK rounding (tests/po_matrix.rs)",
)];

#[test]
fn pytorch_optimizer_reference_set_passes_where_implemented() {
    common::replay_folder("reference-po", 12, NOT_IMPLEMENTED);
}
