//! The residual CNN against PyTorch (every `resnet*` file of shared/reference-nn-r2/models: logits,
//! loss, every gradient and the running statistics after the forward), its batch norm buffers in
//! checkpoints, evaluation and early stopping, and a few hundred MNIST samples it learns from.
//! Pass rule as tests/reference_nn_r2.rs: `max|ours − ref| ≤ rel·max|ref| + abs`, 1e-4 and 1e-6
//! unless the file's `tolerance` says otherwise for the field; the loss to 1e-5 relative.

mod common;
mod scratch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::mnist;
use descent_train::model::{cross_entropy, Init, Mode, Model};
use descent_train::resnet::{CnnConfig, PlainCnn, ResNet};
use descent_train::rng::Rng;
use descent_train::train::{evaluate, optimizer_for, train_from, EpochEnd, EpochMetrics, Loss, Stop, TrainConfig};
use serde_json::Value;

use common::{tensor, values, Check};

fn reference_dir() -> PathBuf {
    common::reference_nn_r2().join("models")
}

fn mnist() -> &'static mnist::Mnist {
    static M: OnceLock<mnist::Mnist> = OnceLock::new();
    M.get_or_init(|| mnist::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap())
}

/// Samples `start..start + count` of a split, pixels `x/255`.
fn slice(split: &mnist::Split, start: usize, count: usize) -> Dataset {
    let px = split.rows * split.cols;
    let x: Vec<f32> = split.images[start * px..(start + count) * px].iter().map(|&v| v as f32 / 255.0).collect();
    let y: Vec<u32> = split.labels[start..start + count].iter().map(|&l| l as u32).collect();
    Dataset {
        x: Tensor::from_vec(x, (count, 1, split.rows, split.cols), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, count, &Device::Cpu).unwrap(),
    }
}

fn bits(vars: &[(String, Var)]) -> Vec<(String, Vec<u32>)> {
    vars.iter().map(|(n, v)| (n.clone(), values(v.as_tensor()).iter().map(|x| x.to_bits()).collect())).collect()
}

/// The layout of a reference file's model, from its parameters' names and shapes: the stem's
/// channels, the stages (`layer{s}`), the blocks per stage (`layer{s}.{i}` when more than one),
/// the classes.
fn config_of(params: &serde_json::Map<String, Value>) -> CnnConfig {
    let dims = |n: &str| -> Vec<usize> {
        params[n]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()
    };
    let stem = dims("conv1.weight");
    let mut stages = BTreeSet::new();
    let mut blocks = BTreeSet::new();
    for n in params.keys() {
        if let Some(rest) = n.strip_prefix("layer") {
            let mut parts = rest.split('.');
            let s: usize = parts.next().unwrap().parse().unwrap();
            stages.insert(s);
            if let Some(i) = parts.next().and_then(|p| p.parse::<usize>().ok()) {
                if s == 1 {
                    blocks.insert(i);
                }
            }
        }
    }
    assert_eq!(stages.iter().copied().collect::<Vec<_>>(), (1..=stages.len()).collect::<Vec<_>>());
    CnnConfig {
        in_channels: stem[1],
        width: stem[0],
        stages: stages.len(),
        blocks: blocks.len().max(1),
        classes: dims("fc.weight")[0],
    }
}

/// Sets each of `vars` from the recorded tensors of the same name; the names must be the same.
fn load(vars: &[(String, Var)], recorded: &Value, what: &str) {
    let rec = recorded.as_object().unwrap();
    let ours: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let theirs: BTreeSet<&str> = rec.keys().map(String::as_str).collect();
    assert_eq!(ours, theirs, "{what}: names");
    for (n, v) in vars {
        let t = tensor(&rec[n]);
        assert_eq!(v.dims(), t.dims(), "{what} {n}: shape");
        v.set(&t).unwrap();
    }
}

/// One `resnet*` reference file: logits, loss, every gradient and the buffers after the forward.
fn check_file(name: &str) -> (Vec<String>, (f64, String)) {
    let case: Value = serde_json::from_str(&std::fs::read_to_string(reference_dir().join(name)).unwrap()).unwrap();
    let bn = &case["bn"];
    assert_eq!(bn["momentum"].as_f64(), Some(0.1), "{name}: batch norm momentum");
    assert_eq!(bn["eps"].as_f64(), Some(1e-5), "{name}: batch norm eps");
    assert_eq!(case["loss_fn"].as_str(), Some("cross_entropy(mean)"), "{name}: loss");
    let config = config_of(case["params"].as_object().unwrap());
    let model = ResNet::with_config(config, Init::TorchDefault, &mut Rng::new(0), &Device::Cpu).unwrap();
    load(&model.named_vars(), &case["params"], "params");
    load(&model.named_buffers(), &case["buffers"], "buffers");

    let b = &case["batch"];
    assert_eq!(b["file"].as_str(), Some("train-images-idx3-ubyte.gz"), "{name}: batch file");
    assert_eq!(b["scale"].as_str(), Some("x/255"), "{name}: batch scaling");
    let (start, count) = (b["start"].as_u64().unwrap() as usize, b["count"].as_u64().unwrap() as usize);
    let data = slice(&mnist().train, start, count);
    let labels: Vec<u32> = b["labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as u32).collect();
    assert_eq!(data.y.to_vec1::<u32>().unwrap(), labels, "{name}: the batch's labels are MNIST's");

    let logits = model.forward(&data.x, Mode::Train, &mut Rng::new(0)).unwrap();
    let loss = cross_entropy(&logits, &data.y).unwrap();
    let mut k = Check::new(name, &case);
    k.close("logits", None, &logits);
    let (ours, theirs) = (loss.to_scalar::<f32>().unwrap() as f64, case["loss"].as_f64().unwrap());
    eprintln!("loss: {ours} against {theirs}, relative error {:.3e}", (ours - theirs).abs() / theirs.abs());
    if (ours - theirs).abs() > 1e-5 * theirs.abs() {
        k.failures.push(format!("loss {ours}, recorded {theirs}"));
    }
    let grads = loss.backward().unwrap();
    let vars = model.named_vars();
    assert_eq!(case["grads"].as_object().unwrap().len(), vars.len(), "{name}: gradients");
    for (n, v) in &vars {
        k.close("grads", Some(n), grads.get(v.as_tensor()).unwrap());
    }
    let buffers = model.named_buffers();
    assert_eq!(case["buffers_after"].as_object().unwrap().len(), buffers.len(), "{name}: buffers after");
    for (n, v) in &buffers {
        k.close("buffers_after", Some(n), v.as_tensor());
    }
    (k.failures, k.worst)
}

#[test]
fn every_resnet_reference_file_matches_pytorch() {
    let mut files: Vec<String> = std::fs::read_dir(reference_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("resnet") && n.ends_with(".json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no resnet reference files");
    let mut failures = vec![];
    for f in &files {
        let (fails, worst) = check_file(f);
        eprintln!("{f}: worst {worst:?}");
        failures.extend(fails.into_iter().map(|e| format!("{f} {e}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Depth counts the stem, two convolutions per block and the classifier; deeper ones name their
/// blocks `layer{s}.{i}` as a PyTorch `Sequential` would, and the plain CNN has the same
/// convolutions with biases and no batch norm.
#[test]
fn depth_stacks_blocks_and_the_plain_cnn_matches_it() {
    let dev = Device::Cpu;
    assert!(ResNet::new(7, 16, Init::TorchDefault, &mut Rng::new(0), &dev).is_err());
    assert!(PlainCnn::new(2, 16, Init::TorchDefault, &mut Rng::new(0), &dev).is_err());
    let small = ResNet::new(6, 16, Init::TorchDefault, &mut Rng::new(0), &dev).unwrap();
    assert_eq!(small.named_vars().len(), 20);
    assert_eq!(small.named_buffers().len(), 12);
    let deep = ResNet::new(14, 8, Init::KaimingNormal, &mut Rng::new(0), &dev).unwrap();
    assert_eq!(deep.config.depth(), 14);
    let names: Vec<String> = deep.named_vars().into_iter().map(|(n, _)| n).collect();
    let convs = |names: &[String]| names.iter().filter(|n| n.contains("conv") && n.ends_with("weight")).count();
    assert_eq!(convs(&names), 13);
    for n in ["layer1.2.conv2.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias"] {
        assert!(names.iter().any(|m| m == n), "{n} missing from {names:?}");
    }
    assert!(!names.iter().any(|m| m.starts_with("layer2.1.downsample")));
    let plain = PlainCnn::new(14, 8, Init::KaimingNormal, &mut Rng::new(0), &dev).unwrap();
    let pnames: Vec<String> = plain.named_vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(convs(&pnames), 13);
    assert!(pnames.iter().all(|n| !n.contains("bn") && !n.contains("downsample")));
    assert!(plain.named_buffers().is_empty());
    let x = slice(&mnist().test, 0, 3).x;
    for m in [&deep as &dyn Model, &plain] {
        assert_eq!(m.forward(&x, Mode::Train, &mut Rng::new(0)).unwrap().dims(), [3, 10]);
    }
}

/// Evaluation normalizes with the running statistics and leaves them alone; training moves them.
#[test]
fn eval_mode_leaves_the_buffers_unchanged() {
    let model = ResNet::new(6, 8, Init::TorchDefault, &mut Rng::new(1), &Device::Cpu).unwrap();
    let x = slice(&mnist().test, 0, 16).x;
    let before = bits(&model.named_buffers());
    let e1 = values(&model.forward(&x, Mode::Eval, &mut Rng::new(0)).unwrap());
    assert_eq!(bits(&model.named_buffers()), before);
    // The whole-dataset evaluation of the training loop too.
    evaluate(&model, &slice(&mnist().test, 0, 40), &Loss::CrossEntropy).unwrap();
    assert_eq!(bits(&model.named_buffers()), before);
    let e2 = values(&model.forward(&x, Mode::Eval, &mut Rng::new(0)).unwrap());
    assert_eq!(e1, e2);
    let t = values(&model.forward(&x, Mode::Train, &mut Rng::new(0)).unwrap());
    assert_ne!(t, e1, "training mode normalizes with the batch's statistics");
    let after = bits(&model.named_buffers());
    assert!(before.iter().zip(&after).all(|(a, b)| a != b), "every running statistic moves in training");
}

fn tmpdir(tag: &str) -> scratch::Scratch {
    scratch::Scratch::new("resnet", tag)
}

/// A run cut by its step limit inside an epoch, saved and resumed in a fresh model, ends with
/// the weights and running statistics of a run never stopped, bit for bit; the checkpoint holds
/// the statistics (under the checksum), and one without a buffer the model has is refused.
#[test]
fn checkpoint_round_trip_keeps_the_running_statistics() {
    let data = slice(&mnist().train, 0, 160);
    let test = slice(&mnist().test, 0, 64);
    let mut c = TrainConfig::new("adamw", Some(2e-3), 3, 32, Loss::CrossEntropy);
    c.seed = 4;
    let new_model = || ResNet::new(6, 8, Init::TorchDefault, &mut Rng::new(9), &Device::Cpu).unwrap();
    let mut c8 = c.clone();
    c8.max_steps = Some(8);
    let full = new_model();
    let (_, stop) = train_from(&full, &data, &test, &c8, None, |_: &EpochMetrics, _: &mut EpochEnd| Ok(())).unwrap();
    assert_eq!(stop, Stop::Steps);

    let dir = tmpdir("ck");
    let path = dir.join("resnet.safetensors");
    let first = new_model();
    let mut c3 = c.clone();
    c3.max_steps = Some(3);
    let mut saved = None;
    train_from(&first, &data, &test, &c3, None, |_: &EpochMetrics, end: &mut EpochEnd| {
        let ck = end.checkpoint()?;
        ck.save(&path)?;
        saved = Some(ck);
        Ok(())
    })
    .unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(Some(&ck), saved.as_ref());
    assert!(ck.mid_epoch());
    let stored: BTreeMap<&str, &Vec<f32>> = ck.buffers.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
    assert_eq!(stored.len(), 12);
    for (n, v) in first.named_buffers() {
        assert_eq!(stored[n.as_str()], &values(v.as_tensor()), "{n}");
    }
    // Not the initial values: the statistics moved during the three steps.
    assert!(stored["bn1.running_var"].iter().all(|&v| v != 1.0));

    let resumed = new_model();
    let (_, stop) =
        train_from(&resumed, &data, &test, &c8, Some(&ck), |_: &EpochMetrics, _: &mut EpochEnd| Ok(())).unwrap();
    assert_eq!(stop, Stop::Steps);
    assert_eq!(bits(&resumed.named_vars()), bits(&full.named_vars()));
    assert_eq!(bits(&resumed.named_buffers()), bits(&full.named_buffers()));
    let e = |m: &ResNet| evaluate(m, &test, &Loss::CrossEntropy).unwrap().0.to_bits();
    assert_eq!(e(&resumed), e(&full));

    // A buffer's bytes changed in the file: the checksum catches it.
    let bytes = std::fs::read(&path).unwrap();
    let at = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("buffers/layer2.bn1.running_mean").unwrap();
        t.data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    let mut bad = bytes.clone();
    bad[at] ^= 1;
    let err = Checkpoint::from_bytes(&path, &bad).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");

    // A checkpoint without a buffer the model has, or with one it lacks, is refused, and the
    // model is left as it was.
    let target = new_model();
    let mut opt = optimizer_for(&target, &c).unwrap();
    let (vars0, bufs0) = (bits(&target.named_vars()), bits(&target.named_buffers()));
    let mut missing = ck.clone();
    missing.buffers.retain(|(n, _, _)| n != "layer1.bn2.running_var");
    let err = missing.apply(&target, &mut opt).unwrap_err().to_string();
    assert!(err.contains("no buffer") && err.contains("layer1.bn2.running_var"), "{err}");
    let mut extra = ck.clone();
    extra.buffers.push(("bn9.running_mean".into(), vec![8], vec![0.0; 8]));
    let err = extra.apply(&target, &mut opt).unwrap_err().to_string();
    assert!(err.contains("bn9.running_mean"), "{err}");
    assert_eq!((bits(&target.named_vars()), bits(&target.named_buffers())), (vars0, bufs0));
    // A model without buffers refuses a checkpoint that has them.
    let err = ck.apply_vars(&target.named_vars(), &mut opt).unwrap_err().to_string();
    assert!(err.contains("does not have"), "{err}");
    ck.apply(&target, &mut opt).unwrap();
    assert_eq!(bits(&target.named_buffers()), bits(&first.named_buffers()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Early stopping restores the best epoch's running statistics with its weights.
#[test]
fn early_stopping_restores_the_buffers() {
    let data = slice(&mnist().train, 0, 64);
    let mut c = TrainConfig::new("adam", Some(1e-3), 4, 32, Loss::CrossEntropy);
    // No epoch after the first improves by that much: it stays the best.
    c.patience = Some(1);
    c.min_delta = 1e9;
    let model = ResNet::new(6, 8, Init::TorchDefault, &mut Rng::new(2), &Device::Cpu).unwrap();
    let mut epochs = vec![];
    let (h, stop) = train_from(&model, &data, &data, &c, None, |_: &EpochMetrics, end: &mut EpochEnd| {
        epochs.push(end.checkpoint()?);
        Ok(())
    })
    .unwrap();
    assert_eq!((stop, h.len()), (Stop::EarlyStopping { best_epoch: 1 }, 2));
    let now = Checkpoint::capture(&model, &mut optimizer_for(&model, &c).unwrap(), 0, 0, 0).unwrap();
    assert_eq!(now.weights, epochs[0].weights);
    assert_eq!(now.buffers, epochs[0].buffers);
    assert_ne!(now.buffers, epochs[1].buffers);
}

/// A few hundred MNIST samples: the ResNet's loss on them falls, epoch after epoch.
#[test]
fn resnet_learns_a_few_hundred_samples() {
    let data = slice(&mnist().train, 0, 256);
    let model = ResNet::new(6, 16, Init::TorchDefault, &mut Rng::new(3), &Device::Cpu).unwrap();
    let (before, _) = evaluate(&model, &data, &Loss::CrossEntropy).unwrap();
    let c = TrainConfig::new("adam", Some(1e-2), 4, 16, Loss::CrossEntropy);
    let (h, _) = train_from(&model, &data, &data, &c, None, |_: &EpochMetrics, _: &mut EpochEnd| Ok(())).unwrap();
    let losses: Vec<f64> = h.iter().map(|m| m.train_loss).collect();
    eprintln!("loss before {before:.3}, training losses {losses:.3?}, evaluation {:.3}", h[3].test_loss);
    // About 0.7 of the first epoch's loss, and of the evaluation loss before training (the
    // evaluation normalizes with the running statistics).
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
    assert!(losses[3] < 0.8 * losses[0], "{losses:?}");
    assert!(h[3].test_loss < 0.8 * before, "evaluation loss {} from {before}", h[3].test_loss);
}

/// An optimizer that evaluates the objective several times a step (SAM at the perturbed point,
/// L-BFGS along its search) moves the running statistics with the step's first evaluation only:
/// as one training-mode forward at the weights the step starts from.
#[test]
fn closure_steps_move_the_running_statistics_once() {
    let data = slice(&mnist().train, 0, 1);
    for (name, h) in [
        ("sam", serde_json::json!({"base": ["sgd", {"momentum": 0.9}], "rho": 0.05})),
        ("torch.lbfgs", serde_json::json!({"max_iter": 3})),
    ] {
        let mut c = TrainConfig::new(name, Some(0.01), 1, 1, Loss::CrossEntropy);
        c.hparams = h;
        let model = ResNet::new(6, 8, Init::TorchDefault, &mut Rng::new(4), &Device::Cpu).unwrap();
        let twin = ResNet::new(6, 8, Init::TorchDefault, &mut Rng::new(4), &Device::Cpu).unwrap();
        let weights = bits(&model.named_vars());
        let mut evals = 0;
        let (h, _) = train_from(&model, &data, &data, &c, None, |_: &EpochMetrics, end: &mut EpochEnd| {
            evals += 1;
            assert!(end.state_bytes() > 0, "{name}: no state in its checkpoint");
            Ok(())
        })
        .unwrap();
        assert_eq!((h.len(), h[0].steps, evals), (1, 1, 1));
        assert_ne!(bits(&model.named_vars()), weights, "{name}: the step moved nothing");
        twin.forward(&data.x, Mode::Train, &mut Rng::new(0)).unwrap();
        assert_eq!(bits(&model.named_buffers()), bits(&twin.named_buffers()), "{name}");
    }
}
