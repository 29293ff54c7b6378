//! The README's tables of optimizers come from the registry: every registry name is in them, and
//! every `library.name` they show is one the registry accepts.

use std::collections::BTreeSet;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

/// The text of the section that starts with `heading`, up to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text.find(heading).unwrap_or_else(|| panic!("the README has no section {heading}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn the_readme_lists_every_registry_name_and_no_other() {
    let text = readme();
    let table = section(&text, "## Supported optimizers");
    let names: BTreeSet<String> = descent_core::spec::registry_names().into_iter().collect();
    let missing: Vec<&String> = names.iter().filter(|n| !table.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "registry names missing from the README's table: {missing:?}");
    // Every `torch.x`, `optax.x`, `po.x` or `descent.x` in backticks there is a registry name.
    let mut unknown = vec![];
    for quoted in table.split('`').skip(1).step_by(2) {
        let lib = quoted.split('.').next().unwrap_or("");
        let plain = quoted.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
        if plain
            && ["torch", "optax", "po", "descent"].contains(&lib)
            && quoted.contains('.')
            && !names.contains(quoted)
        {
            unknown.push(quoted.to_string());
        }
    }
    assert!(unknown.is_empty(), "the README names optimizers the registry does not know: {unknown:?}");
}
