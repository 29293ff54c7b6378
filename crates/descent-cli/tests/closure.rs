//! `descent train` with the optimizers that evaluate the objective themselves: SAM's two passes
//! around AdamW on the MLP, L-BFGS on the whole regression set at once, exact resume, and the
//! flags and commands that cannot take them refused in one line.

mod common;

use std::path::Path;

use common::{csv_rows, one_line_error, run_ok, s};
use descent_train::data::Dataset;
use descent_train::rng::Rng;

/// The losses of steps.csv, in order.
fn step_losses(dir: &Path) -> Vec<f64> {
    csv_rows(&dir.join("steps.csv")).iter().map(|r| r[2].parse().unwrap()).collect()
}

/// The issue's command: SAM (ρ = 0.05) around AdamW, two forward/backward passes per step, on a
/// few hundred MNIST samples: the batch loss falls. With ρ = 0 and no dropout the perturbed point
/// is the point itself, and the run is AdamW's, bit for bit.
#[test]
fn sam_adamw_trains_the_mlp() {
    let dir = common::out("closure-sam");
    let (sam, sam0, adamw) = (dir.join("sam"), dir.join("sam0"), dir.join("adamw"));
    let common = ["train", "--model", "mlp", "--validation", "500", "--threads", "2"];
    let sam_args = ["--optimizer", "sam", "--hparams", r#"{"rho": 0.05, "base": "adamw"}"#, "--steps", "20"];
    let text = run_ok(&[&common[..], &sam_args, &["--out", s(&sam)]].concat());
    assert!(text.contains("with sam (lr 0.001,"), "AdamW's default rate: {text}");
    let losses = step_losses(&sam);
    assert_eq!(losses.len(), 20);
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[15..]));
    assert!(last < first - 0.15, "the loss did not fall: {first} → {last} ({losses:?})");

    let five = ["--steps", "5", "--dropout", "0"];
    run_ok(
        &[
            &common[..],
            &five,
            &["--optimizer", "sam", "--hparams", r#"{"rho": 0, "base": "adamw"}"#, "--out", s(&sam0)],
        ]
        .concat(),
    );
    run_ok(&[&common[..], &five, &["--optimizer", "adamw", "--out", s(&adamw)]].concat());
    let read = |d: &Path| std::fs::read_to_string(d.join("steps.csv")).unwrap();
    assert_eq!(read(&sam0), read(&adamw));
    std::fs::remove_dir_all(&dir).ok();
}

/// Least squares `y ≈ w·x + b` on the whole set, in f64.
fn least_squares(x: &[f32], y: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().map(|&v| v as f64).sum::<f64>() / n, y.iter().map(|&v| v as f64).sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(&a, &b)| (a as f64 - mx) * (b as f64 - my)).sum();
    let sxx: f64 = x.iter().map(|&a| (a as f64 - mx).powi(2)).sum();
    let w = sxy / sxx;
    (w, my - w * mx)
}

/// L-BFGS (torch's, fixed step 1, 20 iterations per step) on all 10 000 samples at once: one
/// step lands on the least-squares line of the training set (slope ≈ 2.009; SGD's noisy
/// iterate ends at 1.986), with its line search too.
#[test]
fn lbfgs_fits_linear_regression_full_batch() {
    // The training set the run draws: the first 10 000 samples of the seed's generator.
    let train = Dataset::regression(10_000, &mut Rng::new(0)).unwrap();
    let x = train.x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let y = train.y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (w, b) = least_squares(&x, &y);
    assert!((w - 2.0).abs() < 0.02, "{w}");
    let dir = common::out("closure-lbfgs");
    for (k, extra) in [vec![], vec!["--hparams", r#"{"line_search_fn": "strong_wolfe"}"#]].iter().enumerate() {
        let out = dir.join(k.to_string());
        let args = ["train", "--model", "linear", "--optimizer", "lbfgs", "--batch-size", "10000", "--out", s(&out)];
        let text = run_ok(&[&args[..], extra].concat());
        assert!(text.contains("with lbfgs (lr 1,"), "torch LBFGS's default rate: {text}");
        let last = text.lines().find(|l| l.starts_with("test loss:")).unwrap();
        let got = |key: &str| -> f64 {
            last.split(key).nth(1).unwrap().split([',', ')']).next().unwrap().trim().parse().unwrap()
        };
        assert!((got("weight = ") - w).abs() < 1e-4, "{last}: least squares gives slope {w}");
        assert!((got("bias = ") - b).abs() < 1e-4, "{last}: least squares gives bias {b}");
        assert_eq!(step_losses(&out).len(), 1, "one step per epoch");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A run of closure-driven optimizers stopped after an epoch, or inside one, and resumed ends
/// where the uninterrupted run does, with the same metrics and step records bit for bit: their
/// state (L-BFGS's history, SAM's base momentum, Polyak's count) is in the checkpoint.
#[test]
fn closure_optimizers_resume_bit_exact() {
    let dir = common::out("closure-resume");
    for (k, opt) in [
        vec!["--optimizer", "torch.lbfgs", "--hparams", r#"{"line_search_fn": "strong_wolfe", "max_iter": 4}"#],
        vec!["--optimizer", "sam", "--hparams", r#"{"base": ["sgd", {"momentum": 0.9}], "adaptive": true}"#],
        vec!["--optimizer", "polyak_sgd", "--hparams", r#"{"max_learning_rate": 0.5}"#],
    ]
    .iter()
    .enumerate()
    {
        let (a, b) = (dir.join(format!("{k}a")), dir.join(format!("{k}b")));
        let base = ["train", "--model", "linear", "--batch-size", "1000", "--lr", "0.05", "--epochs", "3"];
        let full = run_ok(&[&base[..], opt, &["--out", s(&a)]].concat());
        // Stopped inside the second epoch (10 steps an epoch), then after it, then to the end.
        run_ok(&[&base[..], opt, &["--steps", "14", "--out", s(&b)]].concat());
        run_ok(&["train", "--resume", s(&b), "--steps", "20"]);
        let resumed = run_ok(&["train", "--resume", s(&b), "--steps", "30"]);
        let last = |t: &str| t.lines().find(|l| l.starts_with("test loss:")).unwrap().to_string();
        assert_eq!(last(&full), last(&resumed), "{opt:?}");
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read(&a, "steps.csv"), read(&b, "steps.csv"), "{opt:?}");
        let losses = |d: &Path| {
            read(d, "metrics.csv")
                .lines()
                .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
                .collect::<Vec<_>>()
        };
        assert_eq!(losses(&a), losses(&b), "{opt:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// What a closure-driven optimizer cannot take is refused in one line naming the flag or command
/// and the optimizer, before any run folder is made.
#[test]
fn what_a_closure_optimizer_cannot_take_is_refused_in_one_line() {
    let dir = common::out("closure-refused");
    let d = s(&dir);
    let train =
        |extra: &[&'static str]| -> Vec<&str> { [&["train", "--model", "linear", "--out", d][..], extra].concat() };
    one_line_error(&train(&["--optimizer", "lbfgs", "--clip-norm", "1"]), &["--clip-norm", "torch.lbfgs"]);
    one_line_error(&train(&["--optimizer", "optax.lbfgs", "--clip-value", "1"]), &["--clip-value", "optax.lbfgs"]);
    one_line_error(
        &train(&["--optimizer", "sam", "--hparams", r#"{"base": "sgd"}"#, "--group", "bias={}"]),
        &["--group", "descent.sam"],
    );
    one_line_error(&train(&["--optimizer", "sam"]), &["descent.sam", "`base`", "missing"]);
    one_line_error(
        &train(&["--optimizer", "sam", "--hparams", r#"{"base": "lbfgs"}"#]),
        &["descent.sam", "torch.lbfgs", "evaluates the objective itself"],
    );
    // Sophia's finite-difference Hessian-vector product under dropout (the MLP's default 0.2, an
    // explicit rate on the gpt): each gradient would draw its own mask.
    let sophia = ["--optimizer", "optax.contrib.sophia"];
    for extra in [&["--model", "mlp"][..], &["--model", "gpt", "--dropout", "0.1"][..]] {
        let args: Vec<&str> = [&["train", "--out", d][..], &sophia[..], extra].concat();
        one_line_error(&args, &["--dropout", "optax.contrib.sophia", "--dropout 0"]);
    }
    assert!(!dir.exists(), "a refused run left its folder behind");
    // The commands that step on gradients alone.
    one_line_error(&["bench", "step", "--optimizer", "lbfgs", "--params", "100"], &["torch.lbfgs", "bench step"]);
    one_line_error(&["bench", "train", "--model", "linear", "--optimizer", "momo"], &["optax.contrib.momo", "closure"]);
    one_line_error(
        &["landscape", "--run", "polyak_sgd:lr=0.1", "--out", d],
        &["optax.polyak_sgd", "evaluates the objective itself"],
    );
    assert!(!dir.exists(), "a refused landscape left its folder behind");
}

/// The run's rate reaches a closure-driven optimizer's own `learning_rate`: optax's
/// `contrib.sophia` requires one, and takes it from `--lr` or from `--hparams` (which the front
/// end moves to `--lr`); the banner names it.
#[test]
fn sophia_takes_the_runs_learning_rate() {
    let dir = common::out("closure-sophia-lr");
    for (k, rate) in [["--lr", "0.1"], ["--hparams", r#"{"learning_rate": 0.1}"#]].iter().enumerate() {
        let out = dir.join(k.to_string());
        let args =
            ["train", "--model", "linear", "--steps", "3", "--optimizer", "optax.contrib.sophia", "--out", s(&out)];
        let text = run_ok(&[&args[..], &rate[..]].concat());
        assert!(text.contains("lr 0.1"), "{text}");
        assert_eq!(step_losses(&out).len(), 3, "{text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
