//! `descent bench step`: the table, one JSON line per optimizer with the figures the README
//! names, and clear errors for bad settings.

mod common;

use common::{run_err, run_ok};

#[test]
fn bench_step_prints_a_row_and_a_json_line_per_optimizer() {
    let text =
        run_ok(&["bench", "step", "--optimizer", "adamw", "--params", "20000", "--tensors", "3", "--steps", "2"]);
    assert!(text.contains("of roofline"), "{text}");
    let lines: Vec<serde_json::Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    let r = &lines[0];
    assert!(r["optimizer"].as_str().unwrap().starts_with("torch.adamw"), "{r}");
    assert_eq!(r["tensors"], 3);
    assert_eq!(r["bytes_per_param"], 28.0);
    for key in ["ns_per_param", "params_per_s", "gb_per_s", "roofline_params_per_s", "fraction_of_roofline"] {
        let x = r[key].as_f64().unwrap_or(-1.0);
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
}

#[test]
fn bench_step_refuses_bad_settings() {
    let e = run_err(&["bench", "step", "--optimizer", "adamw", "--params", "0"]);
    assert!(e.contains("--params"), "{e}");
    let e = run_err(&["bench", "step", "--optimizer", "adamw", "--params", "10", "--tensors", "11"]);
    assert!(e.contains("--tensors"), "{e}");
    let e = run_err(&["bench", "step", "--optimizer", "nosuch", "--params", "100"]);
    assert!(e.contains("nosuch"), "{e}");
}
