//! The README's "From `cargo add` to a trained model" is the `quickstart` example, which
//! `cargo test` runs: the two copies stay the same.

#[test]
fn the_readme_quickstart_is_the_quickstart_example() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let readme = std::fs::read_to_string(format!("{root}README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}crates/descent-train/examples/quickstart.rs")).unwrap();
    let (start, end) = ("// README: start\n", "// README: end");
    let code = &example[example.find(start).unwrap() + start.len()..example.find(end).unwrap()];
    let section = &readme[readme.find("## From `cargo add` to a trained model").expect("the README's quickstart")..];
    let block = section.split("```rust\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    assert_eq!(block, code, "the README's quickstart differs from examples/quickstart.rs");
}
